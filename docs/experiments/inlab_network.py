#!/usr/bin/env python
"""Which network should answer the cells that look like the training lab's (the in-lab
stage 1), and with what share of its head's softmax: stage-1 accuracy on the PBC
validation and test splits of each candidate's stage 1 at network weights 0 / 0.5 / 1,
of the bundled model's in-lab and main stage 1, and of the mean of two candidates.

    python docs/experiments/inlab_network.py --pbc ../shared/data/pbc --cache CACHE \\
        --candidate runs/gpu160-block5-seed0 [--candidate ...] [--model BUNDLE]

Accuracy over all cells of a split and over those the bundle's gate hands to the in-lab
stage (novelty percentile at most its gate). Validation figures of an SVM are not
independent: the SVMs are fit on the training and validation cells (the network heads
only stop early on validation); the test split is the report split, never chosen on.
"""

import argparse

import numpy as np

import hiercell
from hiercell.data import read_dataset
from hiercell.features import model_features
from hiercell.hierarchy import _reorder
from hiercell.taxonomy import MAIN_CLASSES


def outputs(stage, X):
    """``(svm probabilities, head softmax)`` over MAIN_CLASSES."""
    return tuple(_reorder(p, stage.classes_, MAIN_CLASSES)
                 for p in (stage.svm_proba(X), stage.predict_outputs(X).network_proba))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--model", default=None, help="bundle with an in-lab stage (default: bundled)")
    ap.add_argument("--candidate", action="append", default=[], help="bundle whose stage 1 to try")
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    hier = model.hierarchy
    stages = {"bundle in-lab": hier.inlab, "bundle main": hier.stage1}
    stages.update({c: hiercell.load(c, precision="auto").hierarchy.stage1 for c in a.candidate})
    classes = np.array(MAIN_CLASSES)
    cells = [s for s in read_dataset(a.pbc) if s.main is not None]
    for split in ("val", "test"):
        subset = [s for s in cells if s.split == split]
        res = model_features(model, [s.path for s in subset], cache_dir=a.cache)
        X, truth = res.features, np.array([s.main for s in res.kept(subset)])
        gated = hier.inlab_rows(X)
        probas = {}
        for name, stage in stages.items():
            if stage is None:
                continue
            svm, net = outputs(stage, X)
            for w in (0.0, 0.5, 1.0):
                probas[f"{name}, weight {w}"] = (1 - w) * svm + w * net
        names = [n for n in probas if n.startswith(tuple(a.candidate))]
        mixes = {f"mean of {x} and {y}": (probas[x] + probas[y]) / 2
                 for i, x in enumerate(names) for y in names[i + 1:]
                 if x.endswith("0.5") and y.endswith("0.5")}
        inlab05 = "bundle in-lab, weight 0.5"
        for c in a.candidate:
            mixes[f"mean of {inlab05} and {c}, weight 0.5"] = (probas[inlab05]
                                                               + probas[f"{c}, weight 0.5"]) / 2
        print(f"\n== PBC {split}: {len(truth)} cells, {gated.mean():.3f} handed to the in-lab stage")
        for name, p in {**probas, **mixes}.items():
            right = classes[p.argmax(1)] == truth
            print(f"{right.mean():.4f}  in-lab cells {right[gated].mean():.4f}  {name}")


if __name__ == "__main__":
    main()
