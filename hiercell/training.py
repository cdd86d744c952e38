"""Training and evaluation of the two-stage model from a dataset on disk.

The pieces, each usable alone from a research script:

* :func:`stage_targets` - which samples each stage trains on, with which label;
* :func:`exclude_mask_failures` - the images the segmentation module flags, left out;
* :func:`trunk_features` - cached VGG16 trunk features for a list of samples;
* :func:`fit_hierarchy` - both stages, either recipe, in one loop;
* :func:`evaluate_hierarchy` - stage-1, stage-2 and end-to-end metrics;
* :func:`train_bundle` - all of it as ``hiercell train`` does it, writing a bundle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .fileutil import json_text, to_jsonable
from .segment_files import exclude_mask_failures
from .taxonomy import FINE_CLASSES, MAIN_CLASSES, OTHERS, ROUTED_MAIN, STAGE2_CLASSES, SUBCLASSES

RECIPES = ("features", "images", "weights")
_RECIPE_INFO = {"features": "features (cached trunk features, feature-map augmentation)",
                "images": "gpu (images, image augmentation)",
                "weights": "images (image augmentation on the fly, networks trained elsewhere: "
                           "tools/torch_recipe.py)"}


@dataclass
class TrainSettings:
    """Everything that decides what a training run produces."""

    input_size: int = 160
    masked: bool = False
    backbone_weights: str | None = None  # path, "imagenet", "none" or None (auto)
    seed: int = 0
    others_per_class: int = 150  # stage-2 "Others": images per non-routed main class
    head_epochs: int = 30
    finetune_epochs: int = 4
    batch_size: int = 64
    svm_C: tuple = (0.3, 1.0, 3.0, 10.0)
    svm_gamma: tuple = ("scale",)
    limit_per_class: int | None = None
    svm_on_train_and_val: bool = True
    precision: str = "auto"  # training compute precision (see StageClassifier)
    framing: bool = True  # the canonical frame (hiercell.framing) before the trunk
    augment_views: int = 4  # augmented image-space views per training image (0: none)
    svm_max_per_class: int | None = 1500  # cap on the SVM's rows per class

    @property
    def preprocess(self) -> dict | None:
        """The ``preprocess`` options these settings give a bundle."""
        from .preprocess import CANONICAL

        return dict(CANONICAL) if self.framing else None

    def stage_params(self, block5_weights, verbose=1) -> dict:
        """Keyword arguments for :class:`~hiercell.stage.StageClassifier`."""
        return dict(head_epochs=self.head_epochs, finetune_epochs=self.finetune_epochs,
                    batch_size=self.batch_size, svm_C=tuple(self.svm_C),
                    svm_gamma=tuple(self.svm_gamma), svm_include_val=self.svm_on_train_and_val,
                    block5_weights=block5_weights, precision=self.precision,
                    svm_max_per_class=self.svm_max_per_class,
                    random_state=self.seed, verbose=verbose)


def stage_targets(samples, stage: int, others_per_class: int = 150, seed: int = 0):
    """``(indices, labels)`` of the samples stage ``stage`` uses.

    Stage 1: every sample with a main class. Stage 2: samples with a subclass
    (generic NEUTROPHIL / IG images have none and are left out), plus up to
    ``others_per_class`` samples of each non-routed main class labelled
    ``"Others"`` (chosen with ``seed``, per split so val/test get their share).
    """
    if stage == 1:
        idx = [i for i, s in enumerate(samples) if s.main is not None]
        return np.array(idx, dtype=int), np.array([samples[i].main for i in idx])
    if stage != 2:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    rng = np.random.default_rng(seed)
    idx = [i for i, s in enumerate(samples) if s.sub in SUBCLASSES]
    labels = [samples[i].sub for i in idx]
    groups: dict = {}
    for i, s in enumerate(samples):
        if s.main is not None and s.main not in ROUTED_MAIN:
            groups.setdefault((s.main, s.split), []).append(i)
    for key in sorted(groups, key=str):
        members = groups[key]
        chosen = sorted(rng.permutation(members)[:others_per_class].tolist())
        idx += chosen
        labels += [OTHERS] * len(chosen)
    order = np.argsort(idx, kind="stable")
    return np.array(idx, dtype=int)[order], np.array(labels)[order]


# --------------------------------------------------------------------------- data preparation


def starting_backbone(settings: TrainSettings):
    """``(trunk, block5 weights or None, weights id)`` of the VGG16 training starts from.

    The trunk computes in the training precision (bfloat16 on a CPU with native
    bf16: twice as fast, the same test-split figures as float32).
    """
    from .backbone import (block5_weights, build_trunk, build_vgg16, precision_policy,
                           resolve_weights, training_precision, weights_id)

    weights = resolve_weights(settings.backbone_weights)
    with precision_policy(training_precision(settings.precision)):
        vgg = build_vgg16(settings.input_size, weights, seed=settings.seed)
        trunk = build_trunk(vgg)
    return trunk, (None if weights is None else block5_weights(vgg)), weights_id(weights)


def _trunk_id(settings: TrainSettings) -> str:
    """The feature-cache id of the starting trunk: weights and compute precision."""
    from .backbone import resolve_weights, training_precision, weights_id

    policy = training_precision(settings.precision)
    wid = weights_id(resolve_weights(settings.backbone_weights))
    return wid if policy == "float32" else f"{wid}:{policy}"


def trunk_features(paths, settings: TrainSettings, cache_dir=None, progress=None, trunk=None,
                   label="VGG16 trunk features", view=0):
    """Trunk features of ``paths`` (:class:`~hiercell.features.ExtractionResult`), cached in
    ``cache_dir`` (default :func:`~hiercell.features.default_cache_dir`); ``view`` k > 0:
    of the k-th augmented view of each image."""
    from .features import FeatureCache, TrunkConfig, default_cache_dir, extract_trunk_features

    config = TrunkConfig(settings.input_size, settings.masked, _trunk_id(settings),
                         preprocess=settings.preprocess, view=view)
    cache = FeatureCache(cache_dir or default_cache_dir(), config)
    if trunk is None:
        trunk = starting_backbone(settings)[0]
    return extract_trunk_features(paths, trunk, config, cache, progress=progress, label=label)


# --------------------------------------------------------------------------- fitting


def fit_hierarchy(X, samples, settings: TrainSettings, stages=(1, 2), recipe="features",
                  verbose=1, log=print, backbone=None, X_views=(), head_weights=None):
    """Fit both stages on ``samples`` (with ``split`` set) whose trunk features are ``X``.

    ``recipe``: ``"features"`` trains each head on ``X`` (feature-map augmentation);
    ``"images"`` on the images themselves (:mod:`hiercell.gpu_recipe`). Either way the
    networks train on ``train`` with early stopping on ``val``, the SVMs are tuned and
    fit on ``train`` + ``val`` embeddings when ``settings.svm_on_train_and_val`` (the
    test split is never used), and stage 2 is skipped (with a message) when the
    training split has fewer than two subclasses. ``backbone``: the result of
    :func:`starting_backbone`, if already built. ``X_views``: trunk features of
    augmented views, arrays shaped like ``X`` (rows of other splits are ignored;
    not for the ``"images"`` recipe). ``"weights"``: the networks were trained elsewhere (e.g.
    ``tools/torch_recipe.py`` on a GPU machine without TensorFlow); ``head_weights``
    maps each stage number to ``{"weights": [arrays in Keras order], "classes": [...],
    "history": ..., "settings": ...}`` (the last two are recorded in the stage's
    ``history_``) and only the SVMs are fit here. Returns an
    :class:`~hiercell.model.ImageClassifier`.
    """
    from .hierarchy import HierarchicalClassifier
    from .model import ImageClassifier
    from .stage import StageClassifier

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    trunk, block5, wid = backbone or starting_backbone(settings)
    split = np.array([s.split for s in samples])
    paths = np.array([str(s.path) for s in samples])
    fitted = {1: None, 2: None}
    for stage in stages:
        idx, y = stage_targets(samples, stage, settings.others_per_class, settings.seed)
        tr, va = split[idx] == "train", split[idx] == "val"
        if stage == 2 and len(set(y[tr]) - {OTHERS}) < 2:
            log("stage 2 skipped: the training split has fewer than two of the subclasses "
                f"{', '.join(SUBCLASSES)} (a data set without them gets a stage-1-only model)")
            continue
        if not tr.any():
            raise ValueError("no training samples (split 'train') for stage %d" % stage)
        log(f"stage {stage}: {tr.sum()} train / {va.sum()} val images, classes {sorted(set(y))}")
        clf = StageClassifier(**settings.stage_params(block5, verbose))
        t0 = time.time()
        if recipe == "features":
            clf.fit(X[idx[tr]], y[tr], X[idx[va]], y[va], [v[idx[tr]] for v in X_views])
        elif recipe == "weights":
            _fit_stage_on_weights(clf, head_weights[stage], X[idx[tr]], y[tr], X[idx[va]], y[va],
                                  [v[idx[tr]] for v in X_views])
        else:
            from .gpu_recipe import fit_stage_on_images

            fit_stage_on_images(clf, X[idx[tr]], y[tr], X[idx[va]], y[va], paths[idx[tr]],
                                paths[idx[va]], trunk, settings.input_size, settings.masked)
        log(f"stage {stage}: fitted in {time.time() - t0:.0f}s; SVM {clf.svm_best_params_}")
        fitted[stage] = clf
    info = {"backbone": {"name": "VGG16", "weights": wid, "trunk_layer": "block4_pool"},
            "training": {"recipe": _RECIPE_INFO[recipe], "settings": to_jsonable(asdict(settings))}}
    return ImageClassifier(trunk, HierarchicalClassifier(fitted[1], fitted[2]),
                           input_size=settings.input_size, masked=settings.masked,
                           preprocess=settings.preprocess, info=info)


def _fit_stage_on_weights(clf, trained: dict, X, y, X_val, y_val, X_views=()):
    """Fit ``clf``'s SVM on the embeddings of a head trained elsewhere (``trained``:
    weights in Keras order, its class order, its training history); ``X_views`` as in
    :meth:`~hiercell.stage.StageClassifier.finish`."""
    from .backbone import precision_policy

    clf.start(y, X.shape[1:], y_val)
    if [str(c) for c in clf.classes_] != list(trained["classes"]):
        raise ValueError(f"the trained head's classes {list(trained['classes'])} are not this "
                         f"stage's {[str(c) for c in clf.classes_]}")
    with precision_policy("float32"):
        head = clf.new_head()
    head.set_weights(trained["weights"])
    clf.history_ = {"external": trained.get("history"),
                    "external_settings": trained.get("settings")}
    return clf.finish(head, X, y, X_val, y_val, X_views)


def attach_review_and_sources(model, X, samples, settings: TrainSettings, X_views=(), log=print):
    """Give a freshly fitted ``model`` what a bundle carries besides its weights: per stage
    a compact sample of its training cells for ``hiercell adapt``
    (:func:`hiercell.adapt.source_sample`) and a review scorer fit and calibrated on
    the validation split (:func:`hiercell.review.fit_reviewer`; ``X_views`` cover the
    training split only, so no shifted views: ``tools/refit_review.py`` adds them), and
    the training cells' mean trunk features for ``hiercell align``
    (:class:`hiercell.alignment.LabAlignment`)."""
    from .adapt import source_sample
    from .alignment import LabAlignment
    from .review import fit_reviewer

    split = np.array([s.split for s in samples])
    for number, stage in ((1, model.stage1), (2, model.stage2)):
        if stage is None:
            continue
        idx, y = stage_targets(samples, number, settings.others_per_class, settings.seed)
        tr = idx[split[idx] == "train"]
        stage.source_sample_ = source_sample(stage, [X, *list(X_views)[:1]], tr,
                                             y[split[idx] == "train"], seed=settings.seed)
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    labelled = [i for i in train if samples[i].main is not None]
    if labelled:
        model.hierarchy.alignment = LabAlignment.from_training(
            X, labelled, [samples[i].main for i in labelled])
    if len(val) and model.stage1 is not None:
        model.hierarchy.reviewer = fit_reviewer(model.hierarchy, X, train, val,
                                                seed=settings.seed,
                                                labels=[s.main for s in samples])
        kind = "learned" if model.hierarchy.reviewer.learned else "legacy rule"
        log(f"review scorer ({kind}): threshold {model.hierarchy.reviewer.threshold_:.3f} "
            f"(flags {model.hierarchy.reviewer.target_rate:.0%} of validation cells)")
    else:
        log("no validation split: the model gets no review scorer")


# --------------------------------------------------------------------------- evaluation


def evaluate_hierarchy(model, X, samples, others_per_class=150, seed=0) -> dict:
    """Stage-1, stage-2 and end-to-end metrics on trunk features ``X`` of ``samples``.

    ``model``: an :class:`~hiercell.model.ImageClassifier` or a
    :class:`~hiercell.hierarchy.HierarchicalClassifier`. Returns a JSON-ready dict
    with ``stage1`` (8 main classes, every mapped sample), ``stage2`` (stage 2
    alone on samples with a subclass plus an ``Others`` sample, as it was
    trained) and ``end_to_end`` (routed predictions over the 11 fine classes,
    samples with a fine label), each with ``y_true``/``y_pred``/``paths`` kept
    for paired comparisons. A data set without any subclass label (e.g. another
    lab's set labelled at main-class level) gets ``stage1`` only.
    """
    from .metrics import classification_summary

    clf = getattr(model, "hierarchy", model)
    out = {}
    idx1 = np.array([i for i, s in enumerate(samples) if s.main is not None], dtype=int)
    if clf.stage1 is not None and len(idx1):
        y1_pred = [str(c) for c in clf.predict_stage(1, X[idx1])]
        y1_true = [samples[i].main for i in idx1]
        out["stage1"] = {**classification_summary(y1_true, y1_pred, list(MAIN_CLASSES)),
                         "y_true": y1_true, "y_pred": y1_pred, "paths": _paths(samples, idx1)}
    has_subclasses = any(s.sub is not None for s in samples)
    if clf.stage2 is not None and has_subclasses:
        idx2, y2 = stage_targets(samples, 2, others_per_class, seed)
        if len(idx2):
            y2_pred = [str(c) for c in clf.predict_stage(2, X[idx2])]
            out["stage2"] = {**classification_summary(list(y2), y2_pred, list(STAGE2_CLASSES)),
                             "y_true": list(y2), "y_pred": y2_pred, "paths": _paths(samples, idx2)}
    idx3 = np.array([i for i, s in enumerate(samples) if s.fine is not None], dtype=int)
    if clf.stage1 is not None and clf.stage2 is not None and has_subclasses and len(idx3):
        records = clf.predict_records(X[idx3])
        y3_pred = [r.label for r in records]
        y3_true = [samples[i].fine for i in idx3]
        # an uncertain routed cell is predicted as its main class (neutrophil / ig):
        # those columns exist for predictions only; macro-F1 averages the 11 fine classes
        summary = classification_summary(y3_true, y3_pred, list(FINE_CLASSES) + list(ROUTED_MAIN))
        f1 = [summary["per_class"][c]["f1"] for c in FINE_CLASSES
              if summary["per_class"][c]["support"] > 0]
        summary["macro_f1"] = float(np.mean(f1)) if f1 else 0.0
        out["end_to_end"] = {**summary,
                             "uncertain_share": float(np.mean([r.uncertain for r in records])),
                             "y_true": y3_true, "y_pred": y3_pred, "paths": _paths(samples, idx3)}
    return out


def _paths(samples, idx):
    return [str(samples[i].path) for i in idx]


def headline(metrics: dict) -> dict:
    """The few numbers worth a line: accuracy and macro-F1 of each evaluation."""
    return {k: {"accuracy": round(v["accuracy"], 4), "macro_f1": round(v["macro_f1"], 4),
                "n": v["n"]} for k, v in metrics.items()}


def save_metrics(metrics: dict, out_dir, prefix="", extra: dict | None = None) -> Path:
    """Write ``metrics.json`` and one confusion-matrix PNG per evaluation into ``out_dir``;
    ``extra``: more top-level keys of ``metrics.json`` (e.g. ``alignment``)."""
    from .atomic import atomic_write_text
    from .metrics import confusion_matrix_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, m in metrics.items():
        confusion_matrix_png(m["confusion_matrix"], m["labels"], out_dir / f"{prefix}confusion_{name}.png",
                             title=f"{name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    slim = {k: {kk: vv for kk, vv in v.items() if kk not in ("y_true", "y_pred", "paths")}
            for k, v in metrics.items()}
    slim.update(extra or {})
    path = out_dir / f"{prefix}metrics.json"
    atomic_write_text(path, json_text(slim, indent=2))
    return path


# --------------------------------------------------------------------------- the whole job


def augmented_views(X, samples, settings: TrainSettings, cache_dir=None, progress=None,
                    trunk=None) -> list:
    """Trunk features of ``settings.augment_views`` augmented views of the training-split
    rows of ``samples`` (whose features are ``X``), as :class:`~hiercell.features.RowView`
    arrays addressed by the rows of ``X`` (no copy per stage; rows of other splits
    point at row 0 and are never used)."""
    from .features import RowView

    train_rows = np.flatnonzero([s.split == "train" for s in samples])
    position = np.zeros(len(samples), dtype=np.int64)
    position[train_rows] = np.arange(len(train_rows))
    views = []
    for view in range(1, settings.augment_views + 1):
        vres = trunk_features([samples[i].path for i in train_rows], settings, cache_dir,
                              progress, trunk=trunk, view=view,
                              label=f"augmented view {view}/{settings.augment_views}")
        V = np.empty((len(train_rows),) + X.shape[1:], dtype=X.dtype)
        V[vres.ok] = vres.features
        # a view that failed (it cannot, once the image itself was read) repeats X
        V[~vres.ok] = X[train_rows[~vres.ok]]
        views.append(RowView(V, position))
    return views


def train_bundle(samples, settings: TrainSettings, out, stages=(1, 2), recipe="features",
                 cache_dir=None, source=None, split_csv=None, verbose=1, log=print,
                 progress=None, head_weights=None):
    """What ``hiercell train`` does: train on ``samples`` (splits set), write the bundle
    ``out``, then evaluate the test split into ``<out>-evaluation/`` and record the
    headline in the bundle. Returns ``(model, metrics)`` (``metrics`` empty without a
    test split).

    With ``settings.masked``, images the segmentation module flags are left out (and
    counted in ``bundle.json``). Unreadable images are reported through ``log`` and
    left out, for both recipes.
    """
    from .bundle import save_bundle
    from .data import summarize

    if 1 not in stages:  # a bundle without stage 1 could be written but never loaded
        raise ValueError(f"stages {tuple(stages)}: a model bundle needs stage 1 (stage 2 "
                         "only answers the cells stage 1 calls neutrophil or ig)")
    t0 = time.time()
    excluded = {}
    if settings.masked:
        samples, excluded, _ = exclude_mask_failures(samples, progress)
        if excluded:
            log(f"masked: {sum(excluded.values())} images excluded (mask flagged): {excluded}")
    used = [s for s in samples if s.split in ("train", "val", "test")]
    log(f"{len(used)} images: {summarize(used)['split']}")
    backbone = starting_backbone(settings)
    res = trunk_features([s.path for s in used], settings, cache_dir, progress, trunk=backbone[0])
    for path, reason in res.errors.items():
        log(f"skipped {path}: {reason}")
    used = [s for s, ok in zip(used, res.ok) if ok]
    X = res.features
    X_views = (augmented_views(X, used, settings, cache_dir, progress, backbone[0])
               if recipe in ("features", "weights") else [])
    model = fit_hierarchy(X, used, settings, stages, recipe, verbose, log, backbone, X_views,
                          head_weights)
    attach_review_and_sources(model, X, used, settings, X_views, log)
    del X_views
    meta = {"name": Path(out).name,
            "training_data": {"source": None if source is None else str(source),
                              "split_csv": None if split_csv is None else str(split_csv),
                              "counts": summarize(used), "excluded_by_mask": excluded,
                              "seconds": round(time.time() - t0, 1)}}
    # the model is saved first: a failure while evaluating must not lose hours of training
    save_bundle(model, out, meta)
    test = [i for i, s in enumerate(used) if s.split == "test"]
    metrics = {}
    if test:
        metrics = evaluate_hierarchy(model, X[test], [used[i] for i in test],
                                     settings.others_per_class, settings.seed)
        out_dir = Path(out).parent / (Path(out).name + "-evaluation")
        save_metrics(metrics, out_dir)
        meta["metrics"] = {"split": "test", **headline(metrics)}
        save_bundle(model, out, meta)
        log(f"test-split metrics and confusion matrices: {out_dir}")
    return model, metrics
