#!/usr/bin/env python
"""Lab alignment from unlabelled cells (``hiercell align``): stage-1 accuracy before and after.

    python bench/bench_align.py --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv --pbc ../shared/data/pbc \
        [--model BUNDLE] [--sizes 20,50,100,200] [--seeds 5] [--cache DIR]

For each external labelled set (its labels are used only to score):

* ``before``: the model as it is, on every cell;
* ``all``: aligned on all the set's images, scored on all of them;
* per size m: aligned on m random cells of one half of the set, scored on the
  other half (the cells aligned on are never scored), over --seeds draws
  (mean [min-max]); ``before`` on the same halves beside it;
* ``one class``: aligned on the set's neutrophils alone (the worst class mix a
  careless user could give), scored on all cells.

On PBC (the training lab): the test split aligned on the validation split (stage 1,
and stage-2 macro-F1 and end-to-end accuracy before and after), and
on 50 random test cells (--seeds draws): what aligning a model to its own
lab costs; and 200 test cells of one class aligned on themselves: what a
folder of one kind of cell does to the shift (the class mix the alignment
estimates is what keeps it small), with the domain check on those cells
(which decides whether classify aligns a folder by itself).
Trunk features are cached in --cache.
"""

from __future__ import annotations

import argparse

import numpy as np

import hiercell
from hiercell.features import trunk_views
from hiercell.alignment import align_model, folder_check
from hiercell.data import read_dataset
from hiercell.training import evaluate_hierarchy, headline


def accuracy(model, X, y):
    return float(np.mean(model.hierarchy.predict_stage(1, X) == y))


def spread(values):
    v = np.asarray(values)
    return f"{v.mean():.3f} [{v.min():.3f}-{v.max():.3f}]"


def load(model, samples, cache):
    samples = [s for s in samples if s.main is not None]
    maps, ok, _ = trunk_views(model, [s.path for s in samples], 0, cache_dir=cache)
    return maps[0].astype(np.float32), np.array([s.main for s, good in zip(samples, ok) if good])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", required=True)
    ap.add_argument("--pbc", default=None, help="PBC folder: also the training lab's figures")
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="20,50,100,200")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache", default=None)
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    print(f"model: {a.model or 'bundled default'} ({model.info.get('engine')}, "
          f"{model.info.get('precision')})")
    for ext in a.external:
        X, y = load(model, read_dataset(ext), a.cache)
        print(f"\n== {ext}: n={len(y)}")
        print(f"before {accuracy(model, X, y):.3f}   aligned on all its images "
              f"{accuracy(align_model(model, X), X, y):.3f}")
        neutrophils = np.flatnonzero(y == "neutrophil")
        if len(neutrophils) >= 20:
            print(f"aligned on its {len(neutrophils)} neutrophils alone, scored on all: "
                  f"{accuracy(align_model(model, X[neutrophils]), X, y):.3f}")
        print(f"{'m aligned':>9s} {'before (other half)':>22s} {'after (other half)':>22s}")
        for m in [int(v) for v in a.sizes.split(",")]:
            before, after = [], []
            for seed in range(a.seeds):
                order = np.random.default_rng(seed).permutation(len(y))
                half, rest = order[:len(y) // 2], order[len(y) // 2:]
                if m > len(half):
                    break
                aligned = align_model(model, X[half[:m]])
                before.append(accuracy(model, X[rest], y[rest]))
                after.append(accuracy(aligned, X[rest], y[rest]))
            if after:
                print(f"{m:9d} {spread(before):>22s} {spread(after):>22s}")
    if a.pbc:
        pbc = [s for s in read_dataset(a.pbc) if s.split in ("val", "test")]
        X_val, _ = load(model, [s for s in pbc if s.split == "val"], a.cache)
        test = [s for s in pbc if s.split == "test" and s.main is not None]
        X_test, y_test = load(model, test, a.cache)
        on_val = align_model(model, X_val)
        print(f"\n== PBC test: n={len(y_test)}\nbefore {accuracy(model, X_test, y_test):.4f}   "
              f"aligned on PBC val {accuracy(on_val, X_test, y_test):.4f}")
        if len(y_test) == len(test):  # every image read: rows match the samples
            for name, m in (("before", model), ("aligned on PBC val", on_val)):
                h = headline(evaluate_hierarchy(m, X_test, test))
                print(f"{name}: stage-2 macro-F1 {h['stage2']['macro_f1']:.4f}, end to end "
                      f"{h['end_to_end']['accuracy']:.4f}")
        else:
            print(f"stage 2 and end to end not scored: {len(test) - len(y_test)} test images "
                  "could not be read")
        small = [accuracy(align_model(model, X_test[np.random.default_rng(s).permutation(
            len(y_test))[:50]]), X_test, y_test) for s in range(a.seeds)]
        print(f"aligned on 50 random test cells: {spread(small)}")
        print("aligned on 200 test cells of one class (a folder of one kind of cell), "
              "scored on them: before -> after (domain check on them)")
        for c in np.unique(y_test):
            rows = np.random.default_rng(0).permutation(np.flatnonzero(y_test == c))[:200]
            warned = folder_check(model, X_test[rows])
            print(f"  {c:12s} {accuracy(model, X_test[rows], y_test[rows]):.3f} -> "
                  f"{accuracy(align_model(model, X_test[rows]), X_test[rows], y_test[rows]):.3f}"
                  f"   (domain check: score {warned['score']:.2f}, "
                  f"{'warns' if warned['warning'] else 'no warning'})")


if __name__ == "__main__":
    main()
