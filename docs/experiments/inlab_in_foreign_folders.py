"""Who should answer, in a folder of another lab's images, the cells that pass the in-lab
gate: the in-lab stage 1 or the main (augmented) stage 1 aligned to the folder?

    python docs/experiments/inlab_in_foreign_folders.py ../shared/data/pbc \
        .../external/bccd351/manifest.csv .../external/jtsc300/manifest.csv --cache CACHE

Per data set (PBC: its test split), with the folder aligned as ``hiercell evaluate``
aligns it (its fixed draw of up to 200 cells; nothing when it looks like the training
data), and per novelty gate (the cells at or below that in-lab percentile): how many
cells pass, and the stage-1 accuracy on them of the in-lab stage 1 (unshifted maps, as it
answers), the main stage 1 unshifted, and the main stage 1 as aligned.
"""
import argparse

import numpy as np

from hiercell import load
from hiercell.alignment import auto_align_set
from hiercell.data import load_samples
from hiercell.features import model_features
from hiercell.review import trunk_descriptor


def accuracy(stage, X, y):
    pred = np.asarray(stage.classes_)[stage.predict_proba(X).argmax(1)]
    return float((pred == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--gates", default="0.95,0.99,1.0")
    args = ap.parse_args()
    model = load(args.model)
    if model.hierarchy.inlab is None or model.hierarchy.reviewer is None:
        ap.error(f"{args.model or 'the bundled model'} has no in-lab stage 1 (and review "
                 "scorer) to compare")
    for data in args.data:
        samples = load_samples(data)
        if any(s.split == "test" for s in samples) and not data.endswith(".csv"):
            samples = [s for s in samples if s.split == "test"]
        samples = [s for s in samples if s.main is not None]
        res = model_features(model, [s.path for s in samples], cache_dir=args.cache)
        samples = res.kept(samples)
        X, y = res.features.astype(np.float32), np.array([s.main for s in samples])
        aligned, record = auto_align_set(model, X, [s.path for s in samples])
        h = aligned.hierarchy
        novelty = h.reviewer.novelty_percentile(trunk_descriptor(X))
        print(f"{data}: {len(y)} cells, {'aligned' if record['applied'] else 'not aligned'}")
        for gate in map(float, args.gates.split(",")):
            rows = novelty <= gate
            if not rows.any():
                print(f"  gate {gate}: no cell")
                continue
            print(f"  gate {gate}: {rows.sum()} cells; in-lab stage 1 "
                  f"{accuracy(h.inlab, X[rows], y[rows]):.3f}, main stage 1 "
                  f"{accuracy(h.stage1, X[rows], y[rows]):.3f}, main stage 1 aligned "
                  f"{accuracy(h.stage1, h.aligned(X[rows]), y[rows]):.3f}")


if __name__ == "__main__":
    main()
