"""Masked versus unmasked: the same split, seed and images for both arms.

:func:`run` trains and evaluates the unmasked and the masked variant of each
stage and compares them on the paired test predictions
(:mod:`hiercell.ablation_report`: bootstrap intervals, McNemar's test).
Images the segmentation module flags are excluded from *both* arms, and
their count is reported per class.

Other labs' labelled sets (``external``) are scored too, at stage 1 (their
labels are main classes): each arm's trunk features of every external image are
computed in that arm's preprocessing (masked or not, the same framing), its
stage 1 predicts them, and the two arms are compared on the same images as on
the test split. An external image the segmentation module flags is left out of
both arms and counted, as on the training data.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .ablation_report import ArmResult, compare_arms, write_ablation_report
from .taxonomy import MAIN_CLASSES, STAGE2_CLASSES
from .training import (TrainSettings, augmented_views, evaluate_hierarchy, exclude_mask_failures,
                       fit_hierarchy, starting_backbone, trunk_features)

ARMS = ("unmasked", "masked")


class ExternalSetError(ValueError):
    """An external set the ablation cannot score (no labelled or no usable image)."""


def external_name(path, taken=()) -> str:
    """A short file-name-safe name of the external set at ``path``: a folder's name, a
    manifest's name (its folder's for ``manifest.csv``), with ``-2``, ``-3`` ... added
    when ``taken`` already holds it."""
    path = Path(path)
    if path.is_file() or path.suffix.lower() == ".csv":
        name = path.parent.name if path.stem.lower() == "manifest" else path.stem
    else:
        name = path.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "external"
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}-{k}"
    return out


def _features(paths, settings, cache_dir, progress, trunk, label):
    res = trunk_features(paths, settings, cache_dir, progress, trunk=trunk, label=label)
    if not res.ok.all():
        raise RuntimeError(f"{len(res.errors)} images could not be read: "
                           + "; ".join(f"{p}: {r}" for p, r in list(res.errors.items())[:5]))
    return res.features


def run(samples, out_dir, settings: TrainSettings | None = None, stages=(1, 2), cache_dir=None,
        n_boot: int = 2000, progress=None, log=print, external=None) -> dict:
    """Run the ablation on ``samples`` (with splits) and write the report to ``out_dir``.

    ``settings`` gives everything but ``masked`` (set per arm); ``cache_dir`` defaults
    to :func:`~hiercell.features.default_cache_dir`; ``progress``: see
    :mod:`hiercell.progress`. ``external``: ``{name: samples}`` of other labs' labelled
    sets (every sample with a main class is scored, whatever its split; needs stage 1).
    Returns ``{"setup": ..., "stages": ..., "external": ...}`` as written to
    ``ablation.json`` (``"external"`` only when some were given).
    """
    settings = settings or TrainSettings()
    external = dict(external or {})
    if external and 1 not in stages:
        raise ExternalSetError("external sets are scored at stage 1: include stage 1")
    samples = [s for s in samples if s.main is not None and s.split in ("train", "val", "test")]
    log(f"checking masks of {len(samples)} images")
    samples, excluded, reasons = exclude_mask_failures(samples, progress)

    # the external sets' mask checks come first: an unusable set fails before the training
    ext_sets = {}
    for name, ext in external.items():
        given = [s for s in ext if s.main is not None]
        if not given:
            raise ExternalSetError(f"external set {name!r}: no image with a main-class label")
        log(f"external {name}: checking masks of {len(given)} images")
        kept, ext_excluded, ext_reasons = exclude_mask_failures(given, progress)
        if not kept:
            raise ExternalSetError(f"external set {name!r}: the segmentation module flags all "
                             f"{len(given)} images")
        ext_sets[name] = {"samples": kept, "given": len(given), "excluded": ext_excluded,
                          "reasons": ext_reasons, "unmapped": len(ext) - len(given)}

    evaluations, seconds = {}, {}
    ext_evaluations = {name: {} for name in ext_sets}
    ext_seconds = {name: {} for name in ext_sets}
    backbone = None
    for arm in ARMS:
        arm_settings = replace(settings, masked=(arm == "masked"))
        t0 = time.time()
        backbone = backbone or starting_backbone(arm_settings)  # masking does not change it
        X = _features([s.path for s in samples], arm_settings, cache_dir, progress,
                      backbone[0], f"{arm}: VGG16 trunk features")
        log(f"{arm}: training stages {stages}")
        views = augmented_views(X, samples, arm_settings, cache_dir, progress, backbone[0])
        model = fit_hierarchy(X, samples, arm_settings, stages=stages, verbose=0,
                              log=log, backbone=backbone, X_views=views)
        del views
        test = [i for i, s in enumerate(samples) if s.split == "test"]
        evaluations[arm] = evaluate_hierarchy(model, X[test], [samples[i] for i in test],
                                              settings.others_per_class, settings.seed)
        seconds[arm] = round(time.time() - t0, 1)
        del X
        for name, ext in ext_sets.items():
            t1 = time.time()
            Xe = _features([s.path for s in ext["samples"]], arm_settings, cache_dir, progress,
                           backbone[0], f"{arm}: {name} trunk features")
            log(f"{arm}: scoring stage 1 on {name} ({len(ext['samples'])} images)")
            ext_evaluations[name][arm] = evaluate_hierarchy(model, Xe, ext["samples"],
                                                            settings.others_per_class,
                                                            settings.seed)["stage1"]
            ext_seconds[name][arm] = round(time.time() - t1, 1)

    result_stages = {}
    for stage, key, labels in ((1, "stage1", MAIN_CLASSES), (2, "stage2", STAGE2_CLASSES)):
        if stage not in stages:
            continue
        arms = []
        for arm in ARMS:
            ev = evaluations[arm][key]
            arms.append(ArmResult(arm, stage, list(labels), ev["y_true"], ev["y_pred"], ev["paths"]))
        result_stages[str(stage)] = compare_arms(*arms, n_boot=n_boot, seed=settings.seed)

    result_external = {}
    for name, ext in ext_sets.items():
        evs = ext_evaluations[name]
        arms = [ArmResult(arm, 1, list(MAIN_CLASSES), evs[arm]["y_true"], evs[arm]["y_pred"],
                          evs[arm]["paths"]) for arm in ARMS]
        result_external[name] = {
            "images_given": ext["given"],
            "images_scored": len(ext["samples"]),
            "images_per_class": dict(sorted(Counter(s.main for s in ext["samples"]).items())),
            "excluded_by_mask_per_class": ext["excluded"],
            "excluded_by_mask_reasons": ext["reasons"],
            "unmapped_labels_left_out": ext["unmapped"],
            "seconds_per_arm": ext_seconds[name],
            "stage1": compare_arms(*arms, n_boot=n_boot, seed=settings.seed),
        }

    counts = Counter((s.raw_label, s.split) for s in samples)
    setup = {
        "images_per_split": dict(Counter(s.split for s in samples)),
        "images_per_class_and_split": {lab: {sp: counts.get((lab, sp), 0) for sp in ("train", "val", "test")}
                                       for lab in sorted({s.raw_label for s in samples})},
        "excluded_by_mask_per_class": excluded,
        "excluded_by_mask_reasons": reasons,
        "seed": settings.seed,
        "image_size": settings.input_size,
        "framing": settings.framing,
        "limit_per_class": settings.limit_per_class,
        "head_epochs": settings.head_epochs,
        "finetune_epochs": settings.finetune_epochs,
        "others_per_class": settings.others_per_class,
        "seconds_per_arm": seconds,
    }
    result = {"setup": setup, "stages": result_stages}
    if result_external:
        result["external"] = result_external
    write_ablation_report(result, out_dir)
    return result
