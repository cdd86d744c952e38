#!/usr/bin/env python
"""Adaptation to a new lab from a few labelled cells: accuracy against cells per class.

    python bench/bench_adapt.py --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv --pbc ../shared/data/pbc \
        [--model BUNDLE] [--per-class 5,10,20,50] [--seeds 3] [--align] [--exclude FILE]

For each external labelled set and each n in --per-class, over --seeds random
draws: adapt the bundle (default: the bundled model) on n labelled cells per
class of the set (all of a class when it has fewer than 2n; at least one
cell of every class is left for testing) exactly as ``hiercell adapt`` does,
and score stage-1 accuracy on the set's other cells, before and after; also
the adapted model's stage-1 accuracy on the PBC test split (it must not fall
by more than a point). Prints mean and spread (min-max) over the draws, the
seconds one adaptation took, and the share of PBC test cells and of the set's
other cells that the adapted bundle's domain gate sends to its adapted
stages, and in how many draws the folder domain check still warns on the
set's other cells after adapting, and the share of them flagged for review.
As ``hiercell adapt`` does, each draw is also cross-validated (``--folds``,
each fold one more adaptation) to give the review flag a threshold of the
lab's own (:func:`hiercell.adapt.calibrate_review`); the flag is then scored
on the set's other cells: share flagged, accuracy of the unflagged cells,
AUROC of ``review_score`` for wrong against right answers (``--folds 0``
skips this and keeps the base's threshold). ``crossing``: the same adapted model's
accuracy had its kept stage 2 still moved cells between neutrophil and ig (the rule
before ``stage2_crossing``; equal to ``after`` when stage 2 was adapted). A second line
per row gives each class's stage-1 recall on the set's other cells, before and after
(mean of the draws), and how many of them are left.
``--exclude FILE`` leaves the images named in FILE out of the external sets
(e.g. ``bench/bccd351_eosinophils_without_granules.txt``: cells whose label
is doubted). Trunk features are cached in --cache.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import hiercell
from sklearn.metrics import roc_auc_score

from hiercell.adapt import (BLOCK5_EPOCHS, FOLDS, NETWORK_WEIGHT, adapt_model, calibrate_review,
                            cross_val_predict)
from hiercell.alignment import folder_check
from hiercell.data import read_dataset
from hiercell.features import model_features, trunk_views
from hiercell.review import records_novelty
from hiercell.taxonomy import MAIN_CLASSES


def draw(samples, n, rng):
    """Indices of n cells per class (keeping at least one of each class for testing)."""
    mains = np.array([s.main for s in samples])
    pick = []
    for c in np.unique(mains):
        members = rng.permutation(np.flatnonzero(mains == c))
        pick += members[:min(n, len(members) - 1)].tolist()
    return np.sort(pick)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", required=True)
    ap.add_argument("--pbc", default=None, help="PBC folder: also score the PBC test split")
    ap.add_argument("--model", default=None)
    ap.add_argument("--per-class", default="5,10,20,50")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--block5-epochs", type=int, default=BLOCK5_EPOCHS)
    ap.add_argument("--network-weight", type=float, default=NETWORK_WEIGHT,
                    help="the adapted head's share of the stage probabilities (0: the SVM alone)")
    ap.add_argument("--align", action="store_true",
                    help="adapt on lab-aligned trunk maps (hiercell.alignment; not the default)")
    ap.add_argument("--folds", type=int, default=FOLDS,
                    help="cross-validation folds per draw for the review threshold (0: none)")
    ap.add_argument("--no-ensemble", action="store_true",
                    help="adapt the main stage 1 only (hiercell adapt --no-ensemble)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--exclude", default=None,
                    help="file of image names (one per line, # comments) to leave out of "
                         "the external sets, e.g. cells whose label is doubted")
    a = ap.parse_args()
    excluded = set()
    if a.exclude:
        try:
            text = Path(a.exclude).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            ap.error(f"--exclude {a.exclude}: cannot read it ({exc.__class__.__name__}: {exc})")
        lines = (ln.strip() for ln in text.splitlines())
        excluded = {ln for ln in lines if ln and not ln.startswith("#")}
    matched = set()
    model = hiercell.load(a.model, precision="auto")
    X_pbc = y_pbc = None
    if a.pbc:
        test = [s for s in read_dataset(a.pbc) if s.split == "test" and s.main is not None]
        res = model_features(model, [s.path for s in test], cache_dir=a.cache)
        X_pbc = res.features
        y_pbc = np.array([s.main for s in res.kept(test)])
        base_pbc = np.mean(model.hierarchy.predict_stage(1, X_pbc) == y_pbc)
        print(f"PBC test stage-1 accuracy, base model: {base_pbc:.4f} (n={len(y_pbc)})")
    for ext in a.external:
        samples = [s for s in read_dataset(ext) if s.main is not None]
        left_out = {Path(s.path).name for s in samples} & excluded
        matched |= left_out
        samples = [s for s in samples if Path(s.path).name not in left_out]
        if excluded:
            print(f"{ext}: {len(left_out)} images left out (--exclude)")
        maps, ok, _ = trunk_views(model, [s.path for s in samples], a.views, cache_dir=a.cache)
        samples = [s for s, good in zip(samples, ok) if good]
        truth = np.array([s.main for s in samples])
        base = np.array([r.main_class for r in model.hierarchy.predict_records(maps[0])])
        print(f"\n== {ext}: n={len(samples)}, base stage-1 accuracy {np.mean(base == truth):.4f}")
        print(f"{'per class':>9s} {'n adapt':>7s} {'before':>16s} {'after':>22s} {'PBC test after':>24s} "
              f"{'s':>5s} {'gate: PBC->adapted':>18s} {'rest->adapted':>13s} {'warned':>6s} {'flagged':>7s} "
              f"{'acc unflagged':>13s} {'AUROC':>6s} {'crossing':>22s}")
        for n in [int(v) for v in a.per_class.split(",")]:
            rows, recalls = [], []
            for seed in range(a.seeds):
                rng = np.random.default_rng(seed)
                train = draw(samples, n, rng)
                rest = np.setdiff1d(np.arange(len(samples)), train)
                t0 = time.time()
                adapted = adapt_model(model, maps[:, train], [samples[i] for i in train], seed=seed,
                                      block5_epochs=a.block5_epochs, align=a.align,
                                      network_weight=a.network_weight,
                                      ensemble=not a.no_ensemble)
                sec = time.time() - t0
                if a.folds:
                    picked = [samples[i] for i in train]
                    oof = cross_val_predict(model, maps[:, train], picked, k=a.folds, seed=seed,
                                            block5_epochs=a.block5_epochs,
                                            network_weight=a.network_weight,
                                            ensemble=not a.no_ensemble)
                    calibrate_review(adapted, picked, oof)
                recs = adapted.hierarchy.predict_records(maps[0, rest])
                after = np.array([r.main_class for r in recs])
                kept, adapted.hierarchy.stage2_crossing = adapted.hierarchy.stage2_crossing, True
                crossing = np.array([d.main for d in adapted.hierarchy.decide(maps[0, rest])[1]])
                adapted.hierarchy.stage2_crossing = kept
                warned = folder_check(adapted, None, records_novelty(recs))["warning"]
                review = np.array([r.review for r in recs])
                wrong = after != truth[rest]
                unflagged = np.mean(~wrong[~review]) if (~review).any() else float("nan")
                auroc = (roc_auc_score(wrong, [r.review_score for r in recs])
                         if 0 < wrong.sum() < len(wrong) else float("nan"))
                pbc = (np.mean(adapted.hierarchy.predict_stage(1, X_pbc) == y_pbc)
                       if X_pbc is not None else float("nan"))
                gated = (np.mean(adapted.hierarchy.adapted_rows(X_pbc)) if X_pbc is not None
                         else float("nan"))
                recalls.append({c: (np.mean(base[rest][truth[rest] == c] == c),
                                    np.mean(after[truth[rest] == c] == c),
                                    int(np.sum(truth[rest] == c)))
                                for c in MAIN_CLASSES if np.any(truth[rest] == c)})
                rows.append((np.mean(base[rest] == truth[rest]), np.mean(after == truth[rest]), pbc,
                             sec, len(train), gated,
                             np.mean(adapted.hierarchy.adapted_rows(maps[0, rest])), warned,
                             review.mean(), unflagged, auroc,
                             np.mean(crossing == truth[rest])))
            r = np.array(rows)
            f = lambda col: f"{r[:, col].mean():.3f} [{r[:, col].min():.3f}-{r[:, col].max():.3f}]"
            print(f"{n:9d} {int(r[:, 4].mean()):7d} {f(0):>16s} {f(1):>22s} {f(2):>24s} "
                  f"{r[:, 3].mean():5.0f} {r[:, 5].mean():18.4f} {r[:, 6].mean():13.4f} "
                  f"{int(r[:, 7].sum())}/{len(r)} {r[:, 8].mean():7.3f} {r[:, 9].mean():13.3f} "
                  f"{r[:, 10].mean():6.3f} {f(11):>22s}")
            print(f"{'':9s} per class, before -> after (mean of draws; n left): " + ", ".join(
                f"{c} {np.mean([d[c][0] for d in recalls]):.2f} -> "
                f"{np.mean([d[c][1] for d in recalls]):.2f} ({recalls[0][c][2]})"
                for c in recalls[0] if all(c in d for d in recalls)))
    if excluded - matched:
        print(f"--exclude: {len(excluded - matched)} names matched no image, e.g. "
              f"{sorted(excluded - matched)[0]}")


if __name__ == "__main__":
    main()
