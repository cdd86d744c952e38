"""Masked versus unmasked: the same split, seed and images for both arms.

:func:`run` trains and evaluates the unmasked and the masked variant of each
stage and compares them on the paired test predictions
(:mod:`hiercell.ablation_report`: bootstrap intervals, McNemar's test).
Images the segmentation module flags are excluded from *both* arms, and
their count is reported per class.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

from .ablation_report import ArmResult, compare_arms, write_ablation_report
from .taxonomy import MAIN_CLASSES, STAGE2_CLASSES
from .training import (TrainSettings, evaluate_hierarchy, exclude_mask_failures, fit_hierarchy,
                       starting_backbone, trunk_features)

ARMS = ("unmasked", "masked")


def run(samples, out_dir, settings: TrainSettings | None = None, stages=(1, 2), cache_dir=None,
        n_boot: int = 2000, progress=None, log=print) -> dict:
    """Run the ablation on ``samples`` (with splits) and write the report to ``out_dir``.

    ``settings`` gives everything but ``masked`` (set per arm); ``cache_dir`` defaults
    to :func:`~hiercell.features.default_cache_dir`; ``progress``: see
    :mod:`hiercell.progress`. Returns ``{"setup": ..., "stages": ...}`` as written to
    ``ablation.json``.
    """
    settings = settings or TrainSettings()
    samples = [s for s in samples if s.main is not None and s.split in ("train", "val", "test")]
    log(f"checking masks of {len(samples)} images")
    samples, excluded, reasons = exclude_mask_failures(samples, progress)

    evaluations, seconds = {}, {}
    backbone = None
    for arm in ARMS:
        arm_settings = replace(settings, masked=(arm == "masked"))
        t0 = time.time()
        backbone = backbone or starting_backbone(arm_settings)  # masking does not change it
        res = trunk_features([s.path for s in samples], arm_settings, cache_dir, progress,
                             trunk=backbone[0], label=f"{arm}: VGG16 trunk features")
        if not res.ok.all():
            raise RuntimeError(f"{len(res.errors)} images could not be read: "
                               + "; ".join(f"{p}: {r}" for p, r in list(res.errors.items())[:5]))
        log(f"{arm}: training stages {stages}")
        model = fit_hierarchy(res.features, samples, arm_settings, stages=stages, verbose=0,
                              log=log, backbone=backbone)
        test = [i for i, s in enumerate(samples) if s.split == "test"]
        evaluations[arm] = evaluate_hierarchy(model, res.features[test], [samples[i] for i in test],
                                              settings.others_per_class, settings.seed)
        seconds[arm] = round(time.time() - t0, 1)

    result_stages = {}
    for stage, key, labels in ((1, "stage1", MAIN_CLASSES), (2, "stage2", STAGE2_CLASSES)):
        if stage not in stages:
            continue
        arms = []
        for arm in ARMS:
            ev = evaluations[arm][key]
            arms.append(ArmResult(arm, stage, list(labels), ev["y_true"], ev["y_pred"], ev["paths"]))
        result_stages[str(stage)] = compare_arms(*arms, n_boot=n_boot, seed=settings.seed)

    counts = Counter((s.raw_label, s.split) for s in samples)
    setup = {
        "images_per_split": dict(Counter(s.split for s in samples)),
        "images_per_class_and_split": {lab: {sp: counts.get((lab, sp), 0) for sp in ("train", "val", "test")}
                                       for lab in sorted({s.raw_label for s in samples})},
        "excluded_by_mask_per_class": excluded,
        "excluded_by_mask_reasons": reasons,
        "seed": settings.seed,
        "image_size": settings.input_size,
        "limit_per_class": settings.limit_per_class,
        "head_epochs": settings.head_epochs,
        "finetune_epochs": settings.finetune_epochs,
        "others_per_class": settings.others_per_class,
        "seconds_per_arm": seconds,
    }
    result = {"setup": setup, "stages": result_stages}
    write_ablation_report(result, out_dir)
    return result
