"""Fit a model to a new lab from a few labelled cells (``hiercell adapt``).

A bundle trained with :func:`hiercell.training.train_bundle` carries, per
stage, a compact sample of its training cells: the block5 output after global
average pooling (512 numbers per cell, float16) and the label
(``stageN/source.npz``, see :func:`source_sample`). Adaptation then needs no
copy of the training data:

1. the new lab's labelled cells go through the trunk as the bundle sees them
   (its canonical frame) and as ``views`` augmented views;
2. per stage with labels for it, the dense layers of the head (Dense(1024),
   Dense(512), softmax) are trained further on the source sample plus the new
   cells, each domain weighing the same in the loss (within the source sample every
   class the same, within the new cells each class by the square root of its count);
   then block5 and the dense layers are fine-tuned on the new cells' trunk maps
   (``block5_epochs``; 0 keeps block5);
3. the SVM is refit on the new Dense(1024) embeddings of both (the bundle's
   ``C``; new cells weighted like the whole source sample); the adapted stage's
   probabilities are the mean of the new SVM's and the new head's own softmax
   (:data:`NETWORK_WEIGHT`); without subclass labels stage 2 stays the base's, and
   it no longer moves the lab's cells between neutrophil and ig
   (``stage2_crossing``, :class:`hiercell.hierarchy.HierarchicalClassifier`);
4. the review scorer takes the new cells into its reference, so the lab's
   normal cells are no longer "novel"; :func:`calibrate_review` then gives its
   flag a threshold of the lab's own from :func:`cross_val_predict`'s held-out
   answers (``hiercell adapt`` does both);
5. a domain gate (:class:`hiercell.domain.DomainGate`, fit on the trunk
   descriptors of the base's reference cells against the new lab's) sends each
   cell to the adapted stages or to the base model, which the adapted bundle
   keeps: images like the base's training lab keep the base's answers.

:func:`cross_validate` measures what it buys: k folds (grouped by
``Sample.group`` when the data has groups, e.g. patients), adapting on the
rest and scoring the held-out cells before and after.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from .backbone import DENSE_LAYERS, predict_batches
from .taxonomy import MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUBCLASSES

#: Cells per class kept in a bundle's source sample (per view).
SOURCE_PER_CLASS = 250
#: Epochs of fine-tuning block5 + dense layers on the new lab's cells (0: dense layers only).
BLOCK5_EPOCHS = 6
#: Batch size and learning rate of the dense-layer refit on pooled features (batch 256 at
#: 1e-3 took 41-44 s per adaptation against 47-65 s for 64 at 3e-4, same accuracy within
#: the spread over draws: bench/bench_adapt.py).
DENSE_BATCH, DENSE_LR = 256, 1e-3
#: Epochs of that refit (20 instead of 40: faster, and ``bench/bench_adapt.py --per-class
#: 20`` gave 0.775 / 0.848 on bccd351 / jtsc300 against 0.760 / 0.847 with 40).
DENSE_EPOCHS = 20
#: Batch size of the block5 fine-tune on the new lab's maps (64: ``hiercell adapt``'s
#: cross-validation on 200 Jiangxi cells of the natural mix fell from 0.85 to 0.69).
BLOCK5_BATCH = 32
#: Weight of an adapted stage's network head in its probabilities (the rest: its SVM;
#: :class:`hiercell.stage.StageClassifier` ``network_weight``). On 20 labelled cells per
#: class the adapted head alone beat the refit SVM on the lab's other cells, and the mean of
#: the two did as well as the head (bench/bench_adapt.py --network-weight 0 against 0.5).
NETWORK_WEIGHT = 0.5
#: Batches per call into the compiled training graph (Python overhead per step is a large
#: part of the dense refit's small steps).
STEPS_PER_EXECUTION = 8
#: Class weighting of the new lab's cells in every refit (:func:`_balanced_weights`): with
#: 0.5 a class of n cells weighs sqrt(n) in all (1.0: every class the same; the SVM's own
#: class_weight="balanced" acts on top, over source and new rows together). With the
#: natural mix of 200 Jiangxi cells (110 neutrophils, 1 basophil) full balancing pushed
#: neutrophils into rarer classes (``hiercell adapt``'s cross-validation 0.69 with 20
#: dense epochs, 0.85 with 40); square-root weighting with 20 epochs: 0.85.
TARGET_CLASS_POWER = 0.5
#: Whether the adapted stages work on lab-aligned trunk maps (:mod:`hiercell.alignment`):
#: off, since it did worse (20 cells per class, 3 draws: bccd351 0.693 against 0.760,
#: jtsc300 0.827 against 0.847; ``bench/bench_adapt.py --align``).
ALIGN = False
#: Whether a base with an in-lab stage 1 (:attr:`hiercell.hierarchy.HierarchicalClassifier.
#: inlab`) has that network adapted too, the adapted stage 1 answering with the mean of the
#: two (:class:`hiercell.ensemble.StageEnsemble`). 20 labelled cells per class, 3 draws
#: (``docs/experiments/adapt_ensemble.py``): bccd351 0.802 from the main stage 1 alone,
#: 0.725 from the in-lab one alone, 0.811 the pair (in-lab network fine-tuned for
#: :data:`INLAB_BLOCK5_EPOCHS`); jtsc300 0.853, 0.905 and 0.894.
ENSEMBLE = True
#: Epochs of block5 fine-tuning for the in-lab network of that pair (at most the main
#: stage's ``block5_epochs``): 2 kept the pair as good as 6 (bccd351 0.811 against 0.798,
#: jtsc300 0.894 against 0.900) in less time, which keeps ``hiercell adapt`` on 200 cells
#: under 5 minutes (6: 6 min 9 s); 0 gave 0.800 / 0.882.
INLAB_BLOCK5_EPOCHS = 2
#: Cross-validation folds of ``hiercell adapt`` (each fold one more adaptation): 2 since
#: the pair above, whose time on 200 cells was 5 min 3 s with 3 folds (the adaptation
#: itself does not depend on it; the held-out answers come from models adapted on half the
#: cells, so the figures and the lab's review threshold err on the cautious side).
FOLDS = 2


def gap_model(head):
    """``head`` cut after block5's global average pooling: trunk maps -> (n, 512)."""
    import keras

    return keras.Model(head.input, head.get_layer("gap").output)


def source_sample(stage, X_views, rows, y, per_class=SOURCE_PER_CLASS, seed=0) -> dict:
    """The compact training sample a bundle carries for adaptation: for up to
    ``per_class`` cells per class, the pooled block5 output of each view in
    ``X_views`` (arrays of trunk maps; ``rows`` are the cells' rows in them, labelled
    ``y``). Returns ``{"gap": (m, 512) float16, "y": (m,) str}``."""
    y = np.asarray(y)
    rows = np.asarray(rows)
    rng = np.random.default_rng(seed)
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                   for c in np.unique(y)]))
    model = gap_model(stage.head_)
    gap = np.concatenate([predict_batches(model, X[rows[pick]], 256) for X in X_views])
    return {"gap": gap.astype(np.float16), "y": np.tile(y[pick], len(X_views)).astype(str)}


def stage_labels(samples, stage: int):
    """``(indices, labels)`` of ``samples`` usable by stage ``stage``: stage 1 every cell
    with a main class; stage 2 the cells with a subclass, plus the cells of non-routed
    main classes as ``Others``."""
    if stage == 1:
        idx = [i for i, s in enumerate(samples) if s.main is not None]
        return np.array(idx, dtype=int), np.array([samples[i].main for i in idx], dtype=object)
    idx, lab = [], []
    for i, s in enumerate(samples):
        if s.sub in SUBCLASSES:
            idx.append(i)
            lab.append(s.sub)
        elif s.main is not None and s.main not in ROUTED_MAIN:
            idx.append(i)
            lab.append(OTHERS)
    return np.array(idx, dtype=int), np.array(lab, dtype=object)


def _balanced_weights(y, total, power=1.0):
    """Per-row weights summing to ``total``; a class of ``n`` rows weighs ``n ** (1 -
    power)`` in all: ``power`` 1 gives every class of ``y`` the same share, 0.5 the
    square root of its count (:data:`TARGET_CLASS_POWER`)."""
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    per = {c: float(n) ** -power for c, n in zip(classes, counts)}
    w = np.array([per[v] for v in y], dtype=np.float64)
    return (w * total / w.sum()).astype(np.float32)


def adapt_stage(stage, target_maps, target_y, epochs=DENSE_EPOCHS, lr=DENSE_LR,
                block5_epochs=0, block5_lr=1e-4, seed=0, verbose=0,
                network_weight=NETWORK_WEIGHT):
    """A copy of ``stage`` whose dense layers and SVM are refit on its source sample plus
    ``target_maps`` (trunk maps, all views stacked) labelled ``target_y``; with
    ``block5_epochs``, block5 and the dense layers are fine-tuned on ``target_maps`` in
    between (:func:`_finetune_on_target`). Its probabilities mix the new SVM's and the
    new head's (``network_weight``: the head's share).

    Target classes the stage does not know are dropped; the stage keeps its classes.
    """
    import keras

    from .stage import StageClassifier

    if getattr(stage, "source_sample_", None) is None:
        raise ValueError("this model carries no training sample to adapt with "
                         "(bundles trained before hiercell 0.2); retrain it with hiercell train")
    target_y = np.asarray(target_y).astype(str)
    known = np.isin(target_y, stage.classes_.astype(str))
    target_maps, target_y = target_maps[known], target_y[known]
    src_gap = stage.source_sample_["gap"].astype(np.float32)
    src_y = stage.source_sample_["y"].astype(str)
    tgt_gap = predict_batches(gap_model(stage.head_), target_maps, 256)
    gap = np.concatenate([src_gap, tgt_gap])
    y = np.concatenate([src_y, target_y])
    y_idx = np.searchsorted(stage.classes_.astype(str), y)
    weight = np.concatenate([_balanced_weights(src_y, len(src_y)),
                             _balanced_weights(target_y, len(src_y), TARGET_CLASS_POWER)])

    new = StageClassifier.from_fitted_state(stage.fitted_state(), stage.svm_,
                                            stage.head_.get_weights())
    new.source_sample_ = stage.source_sample_
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(gap.shape[1],))
    x, nodes = inputs, {}
    for name in DENSE_LAYERS:
        x = nodes[name] = new.head_.get_layer(name)(x)
    top = keras.Model(inputs, x)
    top.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                steps_per_execution=STEPS_PER_EXECUTION)
    top.fit(gap, y_idx, sample_weight=weight / weight.mean(), batch_size=DENSE_BATCH,
            epochs=epochs, shuffle=True, verbose=verbose)
    if block5_epochs:
        _finetune_on_target(new, target_maps, y_idx[len(src_y):], block5_epochs, block5_lr, seed)
        gap = np.concatenate([src_gap, predict_batches(gap_model(new.head_), target_maps, 256)])
    emb = predict_batches(keras.Model(inputs, nodes["embedding"]), gap, 512)
    best = stage.svm_best_params_ or {}
    new.set_params(svm_C=(best.get("svc__C", 1.0),), svm_gamma=(best.get("svc__gamma", "scale"),),
                   svm_max_per_class=None, network_weight=network_weight)
    new.fit_svm_embeddings(emb, y, sample_weight=weight / weight.mean())
    return new


def _finetune_on_target(stage, maps, y_idx, epochs, lr, seed):
    """Fine-tune ``stage``'s whole head (block5 + dense layers) on the new lab's trunk
    maps, in the training precision, with random flips / rotations; the weights go back
    into ``stage.head_`` (float32)."""
    from .backbone import (augment_feature_maps, build_head, fit_keras,
                           precision_policy, set_block5_trainable, tensor_dataset,
                           training_precision)

    n = len(stage.classes_)
    with precision_policy(training_precision("auto")):
        head = build_head(n, stage.feature_shape_, dropout=stage.dropout, seed=seed)
        head.set_weights(stage.head_.get_weights())
        set_block5_trainable(head, True)
        train = tensor_dataset(maps, y_idx, BLOCK5_BATCH, shuffle_seed=seed).map(augment_feature_maps)
        w = _balanced_weights(y_idx, len(y_idx), TARGET_CLASS_POWER)
        weights = {c: float(w[np.argmax(y_idx == c)]) if np.any(y_idx == c) else 0.0
                   for c in range(n)}
        fit_keras(head, train, None, epochs, lr, weights, 0, 0,
                  steps_per_execution=STEPS_PER_EXECUTION)
    stage.head_.set_weights([w.astype(np.float32) for w in head.get_weights()])


def check_adaptable(model) -> None:
    """``ValueError`` saying why ``model`` cannot be adapted: it is adapted already, or
    its stage 1 carries no training sample (bundles older than hiercell 0.2)."""
    if getattr(model.hierarchy, "gate", None) is not None:
        raise ValueError("this model is already adapted to a lab; adapt its base model "
                         f"({(model.info.get('adaptation') or {}).get('base_model', 'see its card')}) "
                         "with all your labelled cells instead")
    if getattr(model.hierarchy.stage1, "source_sample_", None) is None:
        raise ValueError("this model carries no training sample to adapt with "
                         "(bundles trained before hiercell 0.2); retrain it with hiercell train")


def adapt_model(model, maps, samples, seed=0, block5_epochs=BLOCK5_EPOCHS, log=None,
                align=ALIGN, network_weight=NETWORK_WEIGHT, ensemble=ENSEMBLE):
    """A copy of ``model`` (an :class:`~hiercell.model.ImageClassifier`) adapted to the
    cells ``samples`` whose trunk maps (all views) are ``maps`` ``(v, n, h, w, 512)``;
    with ``align`` (and a model that has a training-lab reference), the adapted stages
    work on maps shifted onto that reference by the cells' own mean
    (:mod:`hiercell.alignment`); with ``ensemble`` (and a model with an in-lab stage 1)
    the in-lab network is adapted too (block5 fine-tuned for at most
    :data:`INLAB_BLOCK5_EPOCHS`) and the adapted stage 1 is the pair (:data:`ENSEMBLE`)."""
    from .alignment import LabAlignment
    from .domain import DomainGate
    from .ensemble import StageEnsemble
    from .hierarchy import HierarchicalClassifier
    from .review import trunk_descriptor

    check_adaptable(model)
    new = copy.copy(model)
    new.hierarchy = copy.copy(model.hierarchy)
    new.info = copy.deepcopy(model.info)
    new.info.pop("alignment", None)  # an aligned base's shift is not kept (below)
    raw_view0 = maps[0]
    alignment = model.hierarchy.alignment
    if alignment is not None:  # with ``align``, the adapted stages learn the shifted maps
        alignment = alignment.unfitted()
        if align and len(raw_view0) >= LabAlignment.MIN_CELLS:
            alignment.fit(raw_view0)  # overall mean: the labelled cells' mix is not the lab's
            maps = np.stack([alignment.transform(view) for view in maps])
        new.hierarchy.alignment = alignment
    for number, attr in ((1, "stage1"), (2, "stage2")):
        stage = getattr(model.hierarchy, attr)
        if stage is None:
            continue
        idx, y = stage_labels(samples, number)
        classes = set(np.unique(y)) - ({OTHERS} if number == 2 else set())
        if number == 2 and len(classes) < 1:
            if log:
                log("stage 2 kept: the adaptation data has no subclass labels (BNE, SNE, MY, MMY, "
                    "PMY); it gives the subclass but no longer moves the lab's cells between "
                    "neutrophil and ig")
            new.hierarchy.stage2_crossing = False
            continue
        t0 = time.time()
        target = maps[:, idx].reshape((-1,) + maps.shape[2:])
        starts = [(stage, block5_epochs)]  # each network with its block5 epochs
        inlab = model.hierarchy.inlab
        if number == 1 and ensemble and getattr(inlab, "source_sample_", None) is not None:
            starts.append((inlab, min(block5_epochs, INLAB_BLOCK5_EPOCHS)))
        adapted = [adapt_stage(start, target, np.tile(y, maps.shape[0]), block5_epochs=epochs,
                               seed=seed, network_weight=network_weight)
                   for start, epochs in starts]
        setattr(new.hierarchy, attr, adapted[0] if len(adapted) == 1 else StageEnsemble(adapted))
        if log:
            log(f"stage {number}: adapted on {len(idx)} cells x {maps.shape[0]} views "
                + ("" if len(adapted) == 1 else "from its main and in-lab networks ")
                + f"in {time.time() - t0:.0f}s")
    reviewer = model.hierarchy.reviewer
    if reviewer is not None:
        target = trunk_descriptor(raw_view0)
        new.hierarchy.reviewer = reviewer.with_reference(target, [s.main for s in samples])
        new.hierarchy.gate = DomainGate().fit(reviewer.reference_, target)
        new.hierarchy.base = HierarchicalClassifier(model.hierarchy.stage1, model.hierarchy.stage2)
    return new


def _folds(samples, k, seed):
    """Fold number per sample: grouped by ``group`` when every sample has one, else
    stratified by main class."""
    rng = np.random.default_rng(seed)
    groups = [s.group for s in samples]
    if all(g is not None for g in groups) and len(set(groups)) >= 2:
        names = rng.permutation(sorted(set(groups)))
        fold_of = {g: i % min(k, len(names)) for i, g in enumerate(names)}
        return np.array([fold_of[g] for g in groups]), "group"
    fold = np.zeros(len(samples), dtype=int)
    mains = np.array([s.main or "" for s in samples])
    for c in np.unique(mains):
        members = rng.permutation(np.flatnonzero(mains == c))
        fold[members] = np.arange(len(members)) % k
    return fold, "stratified"


def cross_val_predict(model, maps, samples, k=FOLDS, seed=0, block5_epochs=BLOCK5_EPOCHS,
                      progress=None, network_weight=NETWORK_WEIGHT, ensemble=ENSEMBLE) -> dict:
    """Out-of-fold answers on the labelled cells: k folds (:func:`_folds`), each scored
    by the base ``model`` and by the model adapted on the other folds.

    Returns a dict of arrays, one entry per sample: ``fold``; ``before`` and ``after``
    (stage-1 answers); ``uncertain`` (the adapted model's stage 2 answered
    ``Others``); ``novel`` (beyond the review scorer's novelty gate); ``wrongness``
    (the adapted model's review wrongness,
    :meth:`~hiercell.review.ReviewScorer.wrongness`, NaN where the cell went to the
    base model or the model has no learned review scorer); and ``fold_kind``.
    """
    from .progress import tracker
    from .review import review_inputs, trunk_descriptor

    fold, kind = _folds(samples, k, seed)
    k = int(fold.max()) + 1
    n = len(samples)
    before, after = np.empty(n, dtype=object), np.empty(n, dtype=object)
    wrongness = np.full(n, np.nan)
    uncertain = np.zeros(n, dtype=bool)
    novel = np.zeros(n, dtype=bool)
    with tracker(progress, k, "cross-validation folds") as update:
        for f in range(k):
            test = np.flatnonzero(fold == f)
            train = np.flatnonzero(fold != f)
            adapted = adapt_model(model, maps[:, train], [samples[i] for i in train], seed,
                                  block5_epochs, network_weight=network_weight,
                                  ensemble=ensemble)
            before[test] = [r.main_class for r in model.hierarchy.predict_records(maps[0, test])]
            hierarchy = adapted.hierarchy
            _, decisions = hierarchy.decide(maps[0, test])
            after[test] = [d.main for d in decisions]
            uncertain[test] = [d.uncertain for d in decisions]
            reviewer = hierarchy.reviewer
            if reviewer is not None and reviewer.learned:
                own = hierarchy.adapted_rows(maps[0, test])
                u, percentile = reviewer.wrongness_and_novelty(
                    trunk_descriptor(maps[0, test]), own_lab=own, **review_inputs(decisions))
                wrongness[test] = np.where(own, u, np.nan)
                novel[test] = percentile > reviewer.novel_gate
            update(1)
    return {"fold": fold, "fold_kind": kind, "before": before, "after": after,
            "wrongness": wrongness, "uncertain": uncertain, "novel": novel}


def cv_summary(samples, predictions) -> dict:
    """Stage-1 accuracy before and after adapting, overall and per class, from
    :func:`cross_val_predict`'s ``predictions``. JSON-ready dict."""
    truth = np.array([s.main for s in samples], dtype=object)
    before, after = predictions["before"], predictions["after"]
    ok = truth != None  # noqa: E711 - object array
    per_class = {c: {"n": int(np.sum(truth == c)),
                     "before": float(np.mean(before[truth == c] == c)),
                     "after": float(np.mean(after[truth == c] == c))}
                 for c in MAIN_CLASSES if np.any(truth == c)}
    return {"folds": int(predictions["fold"].max()) + 1, "fold_kind": predictions["fold_kind"],
            "n": int(ok.sum()),
            "stage1_accuracy_before": float(np.mean(before[ok] == truth[ok])),
            "stage1_accuracy_after": float(np.mean(after[ok] == truth[ok])),
            "per_class": per_class}


def cross_validate(model, maps, samples, k=FOLDS, seed=0, block5_epochs=BLOCK5_EPOCHS,
                   progress=None) -> dict:
    """Stage-1 accuracy (overall and per class) on held-out folds, before and after
    adapting on the other folds (:func:`cross_val_predict`, :func:`cv_summary`)."""
    return cv_summary(samples, cross_val_predict(model, maps, samples, k, seed, block5_epochs,
                                                 progress))


#: Fewest out-of-fold cells of the new lab that set its own review threshold.
MIN_REVIEW_CELLS = 20


def calibrate_review(adapted, samples, predictions):
    """Give the adapted model's review flag a threshold of the new lab's own, from
    :func:`cross_val_predict`'s out-of-fold answers (:meth:`~hiercell.review.
    ReviewScorer.calibrate_own_lab`: it flags about as many of the lab's cells as the
    cross-validation got wrong; without subclass labels in ``samples`` stage 2 stayed
    the base's, and its ``Others`` no longer forces the flag on the lab's cells). Returns the JSON-ready summary, or ``None`` (threshold
    left as it was) without a learned scorer or with fewer than
    :data:`MIN_REVIEW_CELLS` scored cells."""
    reviewer = adapted.hierarchy.reviewer
    u = predictions["wrongness"]
    truth = np.array([s.main for s in samples], dtype=object)
    rows = np.isfinite(u) & (truth != None)  # noqa: E711 - object array
    if reviewer is None or not reviewer.learned or rows.sum() < MIN_REVIEW_CELLS:
        return None
    subclass_labels = any(s.sub in SUBCLASSES for s in samples)  # else stage 2 is the base's
    return reviewer.calibrate_own_lab(u[rows], predictions["after"][rows] != truth[rows],
                                      predictions["uncertain"][rows],
                                      lift_uncertain=subclass_labels,
                                      novel=predictions["novel"][rows])


def label_check(samples, predictions) -> list[dict]:
    """The labelled cells that :func:`cross_val_predict` answered as another main class
    when they were held out, by path: ``{"path", "label", "main_class", "held_out_answer"}``
    each. A wrong label in a few dozen cells teaches the adapted model the mistake, and
    such cells land here (with the model's own errors): the first labels to re-check."""
    after = predictions["after"]
    rows = [{"path": str(s.path), "label": s.raw_label, "main_class": s.main,
             "held_out_answer": str(after[i])}
            for i, s in enumerate(samples) if s.main is not None and after[i] != s.main]
    return sorted(rows, key=lambda r: r["path"])


def label_check_csv(rows) -> str:
    """:func:`label_check`'s rows as CSV text (header ``path,label,main_class,
    held_out_answer``)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["path", "label", "main_class", "held_out_answer"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def distinct_images(samples):
    """``(kept, repeats)``: ``samples`` with each image content once, the first of its
    copies kept; ``repeats`` lists ``(copy, kept)`` pairs. A copy would sit on both
    sides of the cross-validation and count twice in its figures. ``ValueError`` naming
    both files when two copies carry different main classes or subclasses. Files that
    cannot be read are kept (the trunk pass names them)."""
    from .fileutil import display, file_digest

    first, kept, repeats = {}, [], []
    for s in samples:
        try:
            key = file_digest(s.path, "sha256")
        except OSError:
            kept.append(s)
            continue
        if key not in first:
            first[key] = s
            kept.append(s)
            continue
        other = first[key]
        if (other.main, other.sub) != (s.main, s.sub):
            raise ValueError(f"{display(s.path)} ({s.raw_label}) is the same image as "
                             f"{display(other.path)} ({other.raw_label}); give it one label")
        repeats.append((s, other))
    return kept, repeats


def data_digest(samples) -> str:
    """SHA-256 over the adaptation images' contents and labels (order-independent)."""
    import hashlib

    from .fileutil import file_digest

    lines = sorted(f"{file_digest(s.path, 'sha256')} {s.raw_label}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def adaptation_record(samples, cv: dict, base: str, base_info: dict, digest: str,
                      data: str, settings: dict | None = None) -> dict:
    """What ``bundle.json`` says about an adaptation (key ``adaptation``); ``settings``:
    the options it ran with (views, dense and block5 epochs, folds, seed)."""
    from collections import Counter

    return {"base_model": base, "base_model_name": base_info.get("name"),
            "base_training_data": (base_info.get("training_data") or {}).get("source"),
            "data": data, "data_digest": "sha256:" + digest, "n_images": len(samples),
            "counts": dict(sorted(Counter(s.fine or s.main for s in samples).items())),
            "settings": settings or {}, "cross_validation": cv}


def model_card(record: dict, base_info: dict) -> str:
    """A short Markdown card for an adapted bundle."""
    import json

    cv = record["cross_validation"]
    rows = "\n".join(f"| {c} | {v['n']} | {v['before']:.3f} | {v['after']:.3f} |"
                      for c, v in cv["per_class"].items())
    counts = ", ".join(f"{c} {n}" for c, n in record["counts"].items())
    review = cv.get("review")
    if review:
        unflagged = review["accuracy_unflagged"]
        review_text = (
            f"The review flag has a threshold of this lab's own, set on the held-out "
            f"answers to flag as many cells as were wrong ({review['target_flag_rate']:.1%}, "
            f"at least {review['min_flag_rate']:.0%}): there it flagged {review['flagged']:.1%} of {review['n']} cells, "
            f"accuracy of the unflagged "
            f"{'n/a' if unflagged is None else format(unflagged, '.3f')}, AUROC wrong vs "
            f"right {'n/a' if review['auroc_wrong_vs_right'] is None else review['auroc_wrong_vs_right']}."
            + ("" if review["uncertain_flagged"] else
               " Stage 2's 'Others' (uncertain) on this lab's cells does not by itself "
               "flag them: that stage was not adapted."))
    else:
        review_text = "The review flag keeps the base model's threshold."
    if any(c in SUBCLASSES for c in record["counts"]):
        stages_text = "Both stages were adapted (the data has subclass labels)."
    else:
        stages_text = ("Stage 1 was adapted; stage 2 is the base's (the data has no subclass "
                       "labels): it names the subclass of the lab's neutrophils and IGs but "
                       "no longer moves a cell between the two, as the base's stage 2 may; a "
                       "subclass of the other class makes the cell uncertain instead.")
    if (record.get("settings") or {}).get("ensemble"):
        stages_text += (" The base's two stage-1 networks (its main stage 1 and its in-lab "
                        "one) were both adapted; the adapted stage 1 answers with the mean "
                        "of the two.")
    return f"""# Adapted model

Adapted by `hiercell adapt` from **{record['base_model']}** (trained on
{record['base_training_data'] or 'its own data'}) with {record['n_images']} labelled cells
of the new lab: {counts}. Data: `{record['data']}`, {record['data_digest']}.

## Before / after (stage 1, cross-validation on the adaptation data)

{cv['folds']} folds ({cv['fold_kind']}): adapting on the other folds, scoring the held-out one.
Stage-1 accuracy **{cv['stage1_accuracy_before']:.3f} before, {cv['stage1_accuracy_after']:.3f} after**
(n = {cv['n']}).

| class | n | before | after |
|---|---|---|---|
{rows}

The adapted bundle keeps its base model: a domain gate (logistic regression
on frozen trunk statistics) sends each cell that looks like the base's
training lab to the base model, and the new lab's cells to the adapted
stages. {stages_text} {review_text} Settings: {json.dumps(record.get('settings', {}))}.

{_label_check_text(record)}These figures come from the adaptation data itself (held-out folds): check
the adapted model on cells of the new lab that were not used here before
relying on it. The base model's own card describes its training and limits.
"""


def _label_check_text(record: dict) -> str:
    n = record["cross_validation"].get("labels_to_check")
    if n is None:
        return ""
    if n == 0:
        return ("When held out, every labelled cell was answered as its label says "
                "(`label_check.csv` lists none).\n\n")
    return (f"When held out, {n} of the {record['n_images']} labelled cells were answered "
            "as another main class (`label_check.csv` lists them): the model's errors, "
            "and any wrong labels, which adapting on teaches it. Check those labels first.\n\n")
