"""Does the stage-1 SVM's own opinion of the answer help the review score?

    python docs/experiments/review_svm_signal.py --pbc ../shared/data/pbc --cache CACHE \
        --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv [--model BUNDLE]

The bundled main stage 1 answers with its network head alone (``network_weight`` 1), so
the review score's "probability" and "network probability" signals are one signal; the
SVM fit on the same embedding no longer takes part. This script fits the review
scorer as ``tools/refit_review.py`` does (PBC validation cells and 3 shifted views of
them; other labs' images never used), then the same logistic regression with extra
columns read from the answering stage's calibrated SVM (the main stage 1's, or the
in-lab stage 1's for the cells it answers):

* ``svm``: log of the SVM's probability of the answered class;
* ``svm+agree``: that, plus whether the SVM's own top class is the answer.

Printed: AUROC of the learned wrongness (what ranks the cells inside and outside the
flagged band) for wrong against right stage-1 answers on the PBC test split and each
external set, unaligned and aligned as ``hiercell classify`` aligns a folder by itself.
"""

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import hiercell
from hiercell.alignment import auto_align_set
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.review import fit_reviewer, reference_draw, review_inputs, trunk_descriptor
from hiercell.taxonomy import MAIN_CLASSES


def maps(model, samples, cache, view=0):
    res = model_features(model, [s.path for s in samples], view, cache, progress=True,
                         label=f"trunk features, view {view}")
    return res.features, res.kept(samples)


def svm_columns(hier, X, answers):
    """``(n, 2)``: log SVM probability of each answer and whether the SVM's top class is
    it, from the stage that answers the row (main stage 1 on aligned maps, or in-lab)."""
    inlab = hier.inlab_rows(X)
    p = np.empty((len(X), len(MAIN_CLASSES)))
    for rows, stage, aligned in ((~inlab, hier.stage1, True), (inlab, hier.inlab, False)):
        if rows.any():
            q = stage.svm_proba(hier.aligned(X[rows]) if aligned else X[rows])
            order = [list(map(str, stage.classes_)).index(c) for c in MAIN_CLASSES]
            p[rows] = q[:, order]
    idx = np.array([MAIN_CLASSES.index(a) for a in answers])
    own = p[np.arange(len(X)), idx]
    return np.column_stack([np.log(np.clip(own, 0, 1) + 1e-4), p.argmax(1) == idx])


def signals(hier, X, truth):
    """``(base signals, svm columns, wrong)`` of trunk maps ``X`` under ``hier``."""
    _, decisions = hier.decide(X)
    given = review_inputs(decisions)
    base = hier.reviewer.signals(trunk_descriptor(X), **given)
    return base, svm_columns(hier, X, given["answers"]), given["answers"] != np.asarray(truth)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--external", action="append", default=[])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--views", type=int, default=3)
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    samples = [s for s in read_dataset(a.pbc) if s.main is not None]
    # the 4,000 training cells fit_reviewer draws as its reference (seed 0), and val
    train_samples = [s for s in samples if s.split == "train"]
    fit_samples = ([train_samples[i] for i in reference_draw(len(train_samples))]
                   + [s for s in samples if s.split == "val"])
    X, fit_samples = maps(model, fit_samples, a.cache)
    split = np.array([s.split for s in fit_samples])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    val_samples = [fit_samples[i] for i in val]
    shifted = [maps(model, val_samples, a.cache, v)[0] for v in range(1, a.views + 1)]
    hier = model.hierarchy
    hier.reviewer = fit_reviewer(hier, X, train, val, labels=[s.main for s in fit_samples],
                                 shifted=shifted)
    truth_val = [s.main for s in val_samples]
    fit_sets = [signals(hier, m, truth_val) for m in [X[val], *shifted]]

    variants = {"bundle (6 signals)": 0, "svm": 1, "svm+agree": 2}
    fitted = {}
    for name, extra in variants.items():
        S = np.vstack([np.column_stack([b, s[:, :extra]]) for b, s, _ in fit_sets])
        y = np.concatenate([w for _, _, w in fit_sets])
        mu, sd = S.mean(0), S.std(0) + 1e-9
        lr = LogisticRegression(C=hier.reviewer.C, max_iter=1000).fit((S - mu) / sd, y)
        fitted[name] = (extra, mu, sd, lr)
        names = list(hier.reviewer.signals_) + ["log_svm_probability", "svm_agrees"][:extra]
        print(f"{name}: weights " + ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, lr.coef_[0])))

    test = [s for s in samples if s.split == "test"]
    X_test, test = maps(model, test, a.cache)
    evaluate = [("PBC test", model, X_test, [s.main for s in test])]
    for ext in a.external:
        ext_samples = [s for s in read_dataset(ext) if s.main is not None]
        X_ext, ext_samples = maps(model, ext_samples, a.cache)
        truth = [s.main for s in ext_samples]
        evaluate.append((ext, model, X_ext, truth))
        aligned, record = auto_align_set(model, X_ext, [smp.path for smp in ext_samples])
        if record["applied"]:
            evaluate.append((f"{ext}, aligned", aligned, X_ext, truth))
    print("\nAUROC of the learned wrongness, wrong vs right stage-1 answers:")
    print("| set | accuracy | " + " | ".join(variants) + " |")
    for name, m, Xs, truth in evaluate:
        m.hierarchy.reviewer = hier.reviewer
        base, svm, wrong = signals(m.hierarchy, Xs, truth)
        cells = []
        for extra, mu, sd, lr in fitted.values():
            z = lr.decision_function((np.column_stack([base, svm[:, :extra]]) - mu) / sd)
            cells.append(f"{roc_auc_score(wrong, z):.3f}")
        print(f"| {name} | {1 - wrong.mean():.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
