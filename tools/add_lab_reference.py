"""Give a bundle the training lab's mean trunk features, overall and per class
(``alignment.npz``), that ``hiercell align`` shifts a new lab's features onto;
nothing else changes.

    python tools/add_lab_reference.py --pbc ../shared/data/pbc --cache .cache/features \\
        [--model models/pbc-robust-vgg16-svm] [--cells 3000]

The mean is taken over ``--cells`` random training cells (seed 0) as the model
sees them (view 0). ``hiercell train`` stores it itself; this is for bundles
trained before. Other labs' images are never read.
"""

import argparse

import numpy as np

import hiercell
from hiercell.alignment import LabAlignment
from hiercell.bundle import default_bundle_path, replace_arrays
from hiercell.data import read_dataset
from hiercell.features import model_features


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True, help="PBC folder with splits.csv")
    ap.add_argument("--model", default=None, help="bundle folder (default: the bundled model)")
    ap.add_argument("--cache", default=None, help="trunk-feature cache folder")
    ap.add_argument("--cells", type=int, default=3000, help="training cells to average")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.model = a.model or str(default_bundle_path())
    model = hiercell.load(a.model, precision="auto")
    train = [s for s in read_dataset(a.pbc) if s.main is not None and s.split == "train"]
    pick = np.random.default_rng(a.seed).permutation(len(train))[:a.cells]
    res = model_features(model, [train[i].path for i in np.sort(pick)], cache_dir=a.cache,
                         progress=True, label="training cells")
    if not res.ok.all():
        raise SystemExit(f"{(~res.ok).sum()} images could not be read: {res.errors}")
    reference = LabAlignment.from_training(res.features, np.arange(len(pick)),
                                           [train[i].main for i in np.sort(pick)])
    replace_arrays(a.model, "alignment.npz", reference.to_arrays())
    print(f"{a.model}: alignment.npz written (mean of {len(pick)} training cells)")


if __name__ == "__main__":
    main()
