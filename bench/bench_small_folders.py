#!/usr/bin/env python
"""Small folders: does the automatic alignment fire, and what does it do, on folders of
20-49 cells (below the earlier minimum of 50)?

    python bench/bench_small_folders.py --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv --pbc ../shared/data/pbc \
        [--model BUNDLE] [--sizes 20,30,49] [--draws 15] [--pbc-draws 40] [--cache DIR] \
        [--one-class erythroblast,platelet]

A folder is a random draw of n cells of a set (PBC: its test split); each goes through
:func:`hiercell.alignment.auto_align` exactly as ``hiercell classify`` sends a folder
(the domain check on its cells, then the alignment when it warns), and is scored at stage
1 on its own cells, before and after. Per set and n: the share of folders aligned and the
mean [min-max] accuracy. On PBC also folders of one class alone (--one-class: the classes
whose cells are most often novel in-lab), the worst case for a false alarm, and, after
the table, the share of each class's PBC test cells that the domain check counts as novel. Labels
are used only to score and to draw those folders. Trunk features are cached in --cache.
"""

from __future__ import annotations

import argparse

import numpy as np

import hiercell
import hiercell.alignment as alignment
from hiercell.data import load_samples
from hiercell.features import model_features
from hiercell.review import trunk_descriptor


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", default=[])
    ap.add_argument("--pbc", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="20,30,49")
    ap.add_argument("--draws", type=int, default=15)
    ap.add_argument("--pbc-draws", type=int, default=40)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--one-class", default="erythroblast,platelet")
    args = ap.parse_args()
    model = hiercell.load(args.model)
    sizes = [int(n) for n in args.sizes.split(",")]
    if min(sizes) < alignment.LabAlignment.MIN_CELLS:
        ap.error(f"--sizes: the alignment needs at least {alignment.LabAlignment.MIN_CELLS} cells")
    alignment.AUTO_MIN_CELLS = min(sizes)  # measure them all
    sets = [(path, None, None, args.draws) for path in args.external]
    if args.pbc:
        sets.append((args.pbc, "test", None, args.pbc_draws))
        sets += [(args.pbc, "test", c, args.pbc_draws) for c in args.one_class.split(",") if c]
    novel_share = {}
    print("| set | cells per folder | folders aligned | stage 1 before | stage 1 after (mean [min-max]) |")
    print("|---|---|---|---|---|")
    for path, split, only, draws in sets:
        samples = [s for s in load_samples(path) if s.main is not None
                   and (split is None or s.split == split) and (only is None or s.main == only)]
        res = model_features(model, [s.path for s in samples], cache_dir=args.cache)
        X = res.features.astype(np.float32)
        y = np.array([s.main for s in res.kept(samples)])
        if split == "test" and only is None:
            novel = model.hierarchy.reviewer.novelty_percentile(trunk_descriptor(X)) > 0.95
            novel_share = {c: float(novel[y == c].mean()) for c in sorted(set(y))}
        right_before = model.hierarchy.predict_stage(1, X) == y  # each cell on its own
        rng = np.random.default_rng(0)
        for n in sizes:
            aligned, before, after = [], [], []
            for _ in range(draws):
                rows = np.sort(rng.choice(len(y), n, replace=False))
                folder_model, record = alignment.auto_align(model, X[rows])
                aligned.append(record["applied"])
                before.append(np.mean(right_before[rows]))
                after.append(np.mean(folder_model.hierarchy.predict_stage(1, X[rows]) == y[rows]))
            name = path if only is None else f"{path}, {only} only"
            print(f"| {name} | {n} | {sum(aligned)} of {draws} | {np.mean(before):.3f} | "
                  f"{np.mean(after):.3f} [{np.min(after):.3f}-{np.max(after):.3f}] |", flush=True)
    if novel_share:
        print("PBC test cells above the 95th in-lab novelty percentile, per class: "
              + ", ".join(f"{c} {v:.3f}" for c, v in novel_share.items()))


if __name__ == "__main__":
    main()
