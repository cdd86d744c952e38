#!/usr/bin/env python
"""How well the review flag and the domain check work (issue: "know when it does not know").

    python bench/bench_review.py --pbc ../shared/data/pbc \
        --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv [--model BUNDLE]

Prints, for the bundle (default: the bundled model):

1. PBC test split: share of cells flagged, stage-1 accuracy among unflagged
   and flagged cells, AUROC of ``review_score`` for wrong against right
   answers, and the folder domain check on the whole split and on 20 random
   50-image subsets (how often it fires); operating points: the thresholds
   that flag 5, 7.5, 10 and 15 % of the validation cells, applied to the test
   split (share flagged, accuracy of the unflagged);
2. each external labelled set: stage-1 accuracy, share flagged, AUROC wrong
   against right, mean top probability on right and wrong answers, the
   domain check; the same again with the model aligned to the set's own
   images as ``hiercell classify`` does by itself (:func:`hiercell.alignment.auto_align`);
3. unknown classes, simulated by holding one class out (protocol): a review
   scorer is fit as the bundle's is (:func:`hiercell.review.fit_reviewer`, the
   kind the bundle holds: learned or legacy) on ``--reference`` random training
   cells and the validation cells of the other classes (with ``--views``
   shifted views of them), and the stage-1 SVM and the network head's softmax
   layer (a multinomial logistic regression on its Dense(512) activations; the
   review score reads its probability and its energy, the latter from the
   regression's logits, scaled unlike the trained layer's) are refit without
   the class on the bundle's source sample (so is the in-lab stage 1 of a bundle
   that has one, on its own sample; which cells it answers is read from the
   bundle's scorer while the held-out scorer is fit, from that scorer's after);
   the rest of the network still saw
   the class in training, which this protocol cannot undo without
   retraining. AUROC of ``review_score`` for
   held-out-class test cells against the other classes' test cells, and share
   of them flagged.

Trunk features are cached (``--cache``) so that reruns are quick.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
from sklearn.metrics import roc_auc_score

import hiercell
from hiercell.alignment import auto_align_set, folder_check
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.review import records_novelty


def features(model, samples, cache, view=0):
    res = model_features(model, [s.path for s in samples], view, cache, progress=True)
    return res.features, res.kept(samples)


def auroc(flag_positive, score):
    flag_positive = np.asarray(flag_positive, bool)
    if flag_positive.all() or not flag_positive.any():
        return float("nan")
    return float(roc_auc_score(flag_positive, score))


def records_check(model, recs):
    """The folder domain check of the cells of records ``recs``, as ``hiercell classify``
    runs it (:func:`hiercell.alignment.folder_check` on what the records hold)."""
    return folder_check(model, None, records_novelty(recs))


def describe(name, model, X, samples):
    recs = model.hierarchy.predict_records(X)
    truth = np.array([s.main for s in samples])
    pred = np.array([r.main_class for r in recs])
    score = np.array([r.review_score for r in recs])
    flag = np.array([r.review for r in recs])
    right = pred == truth
    top = np.array([r.main_probability for r in recs])
    shift = records_check(model, recs)
    print(f"\n== {name}: n={len(samples)}")
    print(f"stage-1 accuracy {right.mean():.4f}; flagged {flag.mean():.3f}; accuracy unflagged "
          f"{right[~flag].mean() if (~flag).any() else float('nan'):.4f} "
          f"(n={int((~flag).sum())}), flagged "
          f"{right[flag].mean() if flag.any() else float('nan'):.4f}")
    print(f"AUROC review_score wrong-vs-right {auroc(~right, score):.3f}; "
          f"AUROC 1-top probability {auroc(~right, -top):.3f}; mean top probability right "
          f"{top[right].mean():.3f}, wrong {top[~right].mean() if (~right).any() else float('nan'):.3f}")
    print(f"domain check: {shift}")
    return recs


def operating_points(model, a, test_recs, test, rates=(0.05, 0.075, 0.10, 0.15)):
    """Thresholds that flag ``rates`` of the PBC validation cells, applied to the test
    split: share flagged and accuracy of the unflagged cells there."""
    val = [s for s in read_dataset(a.pbc) if s.split == "val" and s.main is not None]
    X_val, val = features(model, val, a.cache)
    val_score = np.array([r.review_score for r in model.hierarchy.predict_records(X_val)])
    score = np.array([r.review_score for r in test_recs])
    right = np.array([r.main_class for r in test_recs]) == np.array([s.main for s in test])
    print("operating points (threshold flagging a share of PBC val -> PBC test):")
    for rate in rates:
        threshold = np.quantile(val_score, 1.0 - rate)
        flag = score >= threshold
        print(f"  {rate:.3f} of val: threshold {threshold:.4f}; test "
              f"flagged {flag.mean():.4f}, accuracy unflagged {right[~flag].mean():.4f}")


def held_out(model, X_test, test, X_ref, ref, X_val, val, cls, val_views=()):
    """Review scores of the test cells with class ``cls`` held out (see module doc):
    reviewer refit on training and validation cells of the other classes, stage-1 SVM
    and the head's softmax layer refit on the bundle's source sample without ``cls``."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from hiercell.backbone import predict_batches

    hier = copy.copy(model.hierarchy)
    # every stage 1 (and the in-lab one, which answers the cells like the training lab's)
    # has its SVM and softmax swapped for the run and put back below
    stages = [s for s in (hier.stage1, getattr(hier, "inlab", None)) if s is not None]
    saved = [(stage.svm_, stage.svm_max_per_class, stage.svm_C, stage.svm_best_params_,
              stage.svm_cv_score_, stage.classes_) for stage in stages]
    try:
        for stage, kept in zip(stages, saved):
            src = getattr(stage, "source_sample_", None)
            if src is None:
                raise SystemExit("a stage 1 without its training sample (source.npz) "
                                 "cannot be refit without a class")
            keep = src["y"] != cls
            inputs = keras.Input(shape=(src["gap"].shape[1],))
            embed = keras.Model(inputs, stage.head_.get_layer("embedding")(inputs))
            emb = predict_batches(embed, src["gap"][keep].astype(np.float32), 512)
            hidden = stage.network_hidden_of_embeddings  # the head's Dense(512) activations
            softmax = LogisticRegression(max_iter=3000).fit(hidden(emb), src["y"][keep])
            stage.svm_max_per_class = None
            stage.svm_C = (kept[3]["svc__C"],)
            stage.fit_svm_embeddings(emb, src["y"][keep])
            stage.classes_ = stage.svm_.classes_
            assert list(softmax.classes_) == list(stage.classes_)
            # the refit softmax layer's logits (multinomial: its predict_proba is their
            # softmax)
            stage.network_logits_of_embeddings = (
                lambda e, softmax=softmax, hidden=hidden: softmax.decision_function(hidden(e)))
        return _held_out_scores(hier, X_test, test, X_ref, ref, X_val, val, cls, val_views,
                                learned=model.hierarchy.reviewer.learned)
    finally:
        for stage, kept in zip(stages, saved):
            stage.__dict__.pop("network_logits_of_embeddings", None)
            (stage.svm_, stage.svm_max_per_class, stage.svm_C,
             stage.svm_best_params_, stage.svm_cv_score_, stage.classes_) = kept


def _held_out_scores(hier, X_test, test, X_ref, ref, X_val, val, cls, val_views, learned):
    from hiercell.review import fit_reviewer

    ref_keep = np.array([s.main != cls for s in ref])
    val_keep = np.array([s.main != cls for s in val])
    X = np.concatenate([X_ref[ref_keep], X_val[val_keep]])
    labels = [s.main for s in ref if s.main != cls] + [s.main for s in val if s.main != cls]
    n_ref = int(ref_keep.sum())
    hier.reviewer = fit_reviewer(hier, X, np.arange(n_ref), np.arange(n_ref, len(X)),
                                 max_reference=len(X), labels=labels if learned else None,
                                 shifted=[v[val_keep] for v in val_views] if learned else ())
    recs = hier.predict_records(X_test)
    score = np.array([r.review_score for r in recs])
    flag = np.array([r.review for r in recs])
    unknown = np.array([s.main == cls for s in test])
    return auroc(unknown, score), float(flag[unknown].mean()), float(flag[~unknown].mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True, help="PBC folder with splits.csv")
    ap.add_argument("--external", action="append", default=[], help="labelled external set")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None, help="trunk-feature cache folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", type=int, default=4000,
                    help="training cells drawn as the held-out protocol's reference")
    ap.add_argument("--views", type=int, default=3,
                    help="shifted views of the validation cells for the held-out refit "
                         "(learned scorers; as tools/refit_review.py)")
    ap.add_argument("--skip-held-out", action="store_true",
                    help="only the PBC test split and the external sets")
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    if model.hierarchy.reviewer is None:
        raise SystemExit("this bundle has no review scorer")
    print(f"review scorer: {'learned' if model.hierarchy.reviewer.learned else 'legacy'}, "
          f"threshold {model.hierarchy.reviewer.threshold_:.4f}")
    test = [s for s in read_dataset(a.pbc) if s.split == "test" and s.main is not None]
    X_test, test = features(model, test, a.cache)
    recs = describe("PBC test split", model, X_test, test)
    rng = np.random.default_rng(a.seed)
    fired = [records_check(model, [recs[i] for i in rng.choice(len(recs), 50, replace=False)])
             ["warning"] for _ in range(20)]
    print(f"domain check on 20 random 50-cell subsets of the test split: fired {sum(fired)} times")
    operating_points(model, a, recs, test)
    for ext in a.external:
        samples = [s for s in read_dataset(ext) if s.main is not None]
        X, samples = features(model, samples, a.cache)
        describe(ext, model, X, samples)
        aligned, record = auto_align_set(model, X, [smp.path for smp in samples])
        if record["applied"]:
            describe(f"{ext}, aligned to its own images as classify does", aligned, X, samples)
    if a.skip_held_out:
        return
    print("\n== held-out class (protocol in the module doc)")
    everything = [s for s in read_dataset(a.pbc) if s.main is not None]
    ref = [s for s in everything if s.split == "train"]
    ref = [ref[i] for i in np.sort(rng.permutation(len(ref))[:a.reference])]
    X_ref, ref = features(model, ref, a.cache)
    X_val, val = features(model, [s for s in everything if s.split == "val"], a.cache)
    views = []
    if model.hierarchy.reviewer.learned:
        for v in range(1, a.views + 1):
            X_v, kept = features(model, val, a.cache, view=v)
            if len(kept) != len(val):
                raise SystemExit("a validation image failed in a shifted view")
            views.append(X_v)
    for cls in ("basophil", "monocyte", "eosinophil", "lymphocyte"):
        au, flagged_unknown, flagged_known = held_out(model, X_test, test, X_ref, ref, X_val,
                                                      val, cls, views)
        print(f"{cls:12s} AUROC held-out vs known {au:.3f}; flagged: held-out {flagged_unknown:.3f}, "
              f"known {flagged_known:.3f}")


if __name__ == "__main__":
    main()
