"""Training and evaluation of the two-stage model from a dataset on disk.

The pieces, each usable alone from a research script:

* :func:`stage_targets` - which samples each stage trains on, with which label;
* :func:`trunk_features` - cached VGG16 trunk features for a list of samples;
* :func:`fit_hierarchy` - both stages on train (early stopping on val);
* :func:`evaluate_hierarchy` - stage-1, stage-2 and end-to-end metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .taxonomy import FINE_CLASSES, MAIN_CLASSES, OTHERS, ROUTED_MAIN, STAGE2_CLASSES, SUBCLASSES


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
    extra: dict = field(default_factory=dict)

    def stage_params(self, block5_weights, verbose=1) -> dict:
        """Keyword arguments for :class:`~hiercell.stage.StageClassifier`."""
        return dict(head_epochs=self.head_epochs, finetune_epochs=self.finetune_epochs,
                    batch_size=self.batch_size, svm_C=tuple(self.svm_C),
                    svm_gamma=tuple(self.svm_gamma), svm_include_val=self.svm_on_train_and_val,
                    block5_weights=block5_weights,
                    random_state=self.seed, verbose=verbose)


def limit_per_class(samples, n, seed=0):
    """At most ``n`` samples per (raw label, split), chosen with ``seed``."""
    if not n:
        return list(samples)
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.raw_label, s.split), []).append(i)
    keep = sorted(i for idx in groups.values()
                  for i in (rng.permutation(idx)[:n] if len(idx) > n else idx))
    return [samples[i] for i in keep]


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


def trunk_features(paths, settings: TrainSettings, cache_dir, progress=None):
    """Trunk features of ``paths`` (:class:`~hiercell.features.ExtractionResult`), cached."""
    from .backbone import build_trunk, build_vgg16, resolve_weights, weights_id
    from .features import FeatureCache, TrunkConfig, extract_trunk_features

    weights = resolve_weights(settings.backbone_weights)
    config = TrunkConfig(settings.input_size, settings.masked, weights_id(weights))
    cache = FeatureCache(cache_dir, config)
    trunk = build_trunk(build_vgg16(settings.input_size, weights))
    return extract_trunk_features(paths, trunk, config, cache, progress=progress)


def segmentation_flags(paths, threads: int = 2):
    """``(ok, reason)`` of the segmentation module for each image (unreadable -> not ok)."""
    from concurrent.futures import ThreadPoolExecutor

    from .io import ImageLoadError, load_image
    from .segmentation import segment

    def one(path):
        try:
            result = segment(load_image(path))
        except ImageLoadError as exc:
            return False, f"unreadable: {exc.reason}"
        except ValueError as exc:  # e.g. smaller than the segmentation's minimum size
            return False, f"cannot segment: {exc}"
        return bool(result.ok), result.reason

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, paths))


def block5_imagenet_weights(settings: TrainSettings):
    """The block5 weights of the starting VGG16, and the trunk model, and a weights id."""
    from .backbone import BLOCK5_LAYERS, build_trunk, build_vgg16, resolve_weights, weights_id

    weights = resolve_weights(settings.backbone_weights)
    vgg = build_vgg16(settings.input_size, weights, seed=settings.seed)
    block5 = None if weights is None else [vgg.get_layer(n).get_weights() for n in BLOCK5_LAYERS]
    return block5, build_trunk(vgg), weights_id(weights)


def fit_hierarchy(X, samples, settings: TrainSettings, stages=(1, 2), verbose=1, log=print):
    """Fit both stages on trunk features ``X`` of ``samples`` (with ``split`` set).

    The networks train on ``train`` with early stopping on ``val``; the SVMs are
    tuned and fit on ``train`` + ``val`` embeddings when
    ``settings.svm_on_train_and_val`` (the test split is never used).
    Returns a :class:`~hiercell.hierarchy.HierarchicalClassifier`.
    """
    from .hierarchy import HierarchicalClassifier
    from .stage import StageClassifier

    block5, trunk, wid = block5_imagenet_weights(settings)
    split = np.array([s.split for s in samples])
    fitted = {}
    for stage in (1, 2):
        if stage not in stages:
            fitted[stage] = None
            continue
        idx, y = stage_targets(samples, stage, settings.others_per_class, settings.seed)
        tr, va = split[idx] == "train", split[idx] == "val"
        if stage == 2 and len(set(y[tr]) - {OTHERS}) < 2:
            log("stage 2 skipped: the training split has fewer than two of the subclasses "
                f"{', '.join(SUBCLASSES)} (a data set without them gets a stage-1-only model)")
            fitted[stage] = None
            continue
        if not tr.any():
            raise ValueError("no training samples (split 'train') for stage %d" % stage)
        log(f"stage {stage}: {tr.sum()} train / {va.sum()} val images, classes {sorted(set(y))}")
        clf = StageClassifier(**settings.stage_params(block5, verbose))
        t0 = time.time()
        clf.fit(X[idx[tr]], y[tr], X[idx[va]], y[va])
        log(f"stage {stage}: fitted in {time.time() - t0:.0f}s; SVM {clf.svm_best_params_}")
        fitted[stage] = clf
    info = {"backbone": {"name": "VGG16", "weights": wid, "trunk_layer": "block4_pool"},
            "training": {"settings": _settings_json(settings)}}
    return HierarchicalClassifier(trunk, fitted[1], fitted[2], input_size=settings.input_size,
                                  masked=settings.masked, info=info)


def evaluate_hierarchy(model, X, samples, others_per_class=150, seed=0) -> dict:
    """Stage-1, stage-2 and end-to-end metrics on trunk features ``X`` of ``samples``.

    Returns a JSON-ready dict with ``stage1`` (8 main classes, every mapped
    sample), ``stage2`` (stage 2 alone on samples with a subclass plus an
    ``Others`` sample, as it was trained) and ``end_to_end`` (routed
    predictions over the 11 fine classes, samples with a fine label), each
    with ``y_true``/``y_pred``/``paths`` kept for paired comparisons.
    """
    from .metrics import classification_summary

    out = {}
    if model.stage2 is not None:
        idx2, y2 = stage_targets(samples, 2, others_per_class, seed)
        if len(idx2):
            y2_pred = list(model.stage2.predict(X[idx2]))
            out["stage2"] = {**classification_summary(list(y2), y2_pred, list(STAGE2_CLASSES)),
                             "y_true": list(y2), "y_pred": y2_pred, "paths": _paths(samples, idx2)}
    idx1 = np.array([i for i, s in enumerate(samples) if s.main is not None], dtype=int)
    if model.stage1 is None or not len(idx1):
        return out
    p1, p2 = model.stage_probas(X[idx1])
    y1_pred = np.asarray(MAIN_CLASSES)[p1.argmax(1)]
    y1_true = [samples[i].main for i in idx1]
    out = {"stage1": {**classification_summary(y1_true, list(y1_pred), list(MAIN_CLASSES)),
                      "y_true": y1_true, "y_pred": list(y1_pred), "paths": _paths(samples, idx1)},
           **out}
    idx3 = np.array([i for i, s in enumerate(samples) if s.fine is not None], dtype=int)
    if model.stage2 is not None and len(idx3):
        pos = {i: k for k, i in enumerate(idx1)}
        rows = [pos[i] for i in idx3]
        decisions = model.decide(p1[rows], p2[rows])
        y3_pred = [d["sub"] if d["sub"] not in (None, OTHERS) else d["main"] for d in decisions]
        y3_true = [samples[i].fine for i in idx3]
        # an uncertain routed cell is predicted as its main class (neutrophil / ig):
        # those columns exist for predictions only; macro-F1 averages the 11 fine classes
        summary = classification_summary(y3_true, y3_pred, list(FINE_CLASSES) + list(ROUTED_MAIN))
        f1 = [summary["per_class"][c]["f1"] for c in FINE_CLASSES
              if summary["per_class"][c]["support"] > 0]
        summary["macro_f1"] = float(np.mean(f1)) if f1 else 0.0
        out["end_to_end"] = {**summary,
                             "uncertain_share": float(np.mean([d["uncertain"] for d in decisions])),
                             "y_true": y3_true, "y_pred": y3_pred, "paths": _paths(samples, idx3)}
    return out


def _paths(samples, idx):
    return [str(samples[i].path) for i in idx]


def headline(metrics: dict) -> dict:
    """The few numbers worth a line: accuracy and macro-F1 of each evaluation."""
    return {k: {"accuracy": round(v["accuracy"], 4), "macro_f1": round(v["macro_f1"], 4),
                "n": v["n"]} for k, v in metrics.items()}


def _settings_json(settings):
    d = asdict(settings)
    d["svm_C"] = list(settings.svm_C)
    d["svm_gamma"] = list(settings.svm_gamma)
    return json.loads(json.dumps(d, default=str))


def save_metrics(metrics: dict, out_dir, prefix="") -> Path:
    """Write ``metrics.json`` and one confusion-matrix PNG per evaluation into ``out_dir``."""
    from .atomic import atomic_write_bytes
    from .metrics import confusion_matrix_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, m in metrics.items():
        confusion_matrix_png(m["confusion_matrix"], m["labels"], out_dir / f"{prefix}confusion_{name}.png",
                             title=f"{name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    slim = {k: {kk: vv for kk, vv in v.items() if kk not in ("y_true", "y_pred", "paths")}
            for k, v in metrics.items()}
    path = out_dir / f"{prefix}metrics.json"
    atomic_write_bytes(path, json.dumps(slim, indent=2).encode())
    return path
