"""Test-time augmentation by flipping and rotating: does averaging stage 1's probabilities
over symmetries of the square help on other labs' cells?

    python docs/experiments/feature_map_tta.py --pbc ../shared/data/pbc --cache CACHE \
        --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv [--model BUNDLE]

First the cached ``block4_pool`` maps of each cell are flipped / rotated (no second trunk
pass); then, with ``--images``, the prepared images themselves (the canonical frame,
flipped horizontally, vertically and both: one trunk pass each, not cached). The
networks were trained on images rotated and flipped at random. Stage 1's probabilities
over MAIN_CLASSES are averaged over the transforms. Printed: stage-1 accuracy of the
argmax on PBC val (maps only), each external set as it is and aligned as ``hiercell
classify`` aligns a folder by itself.
"""

import argparse

import numpy as np

import hiercell
from hiercell.alignment import auto_align_set
from hiercell.data import read_dataset
from hiercell.backbone import run_trunk
from hiercell.features import load_prepared, model_features
from hiercell.taxonomy import MAIN_CLASSES

TRANSFORMS = {
    "identity": lambda x: x,
    "flip h": lambda x: x[:, :, ::-1],
    "flip v": lambda x: x[:, ::-1],
    "rot 180": lambda x: x[:, ::-1, ::-1],
    "transpose": lambda x: x.transpose(0, 2, 1, 3),
    "rot 90": lambda x: x.transpose(0, 2, 1, 3)[:, ::-1],
    "rot 270": lambda x: x.transpose(0, 2, 1, 3)[:, :, ::-1],
    "anti-transpose": lambda x: x.transpose(0, 2, 1, 3)[:, ::-1, ::-1],
}


def maps(model, samples, cache):
    res = model_features(model, [s.path for s in samples], cache_dir=cache, progress=True)
    return res.features, res.kept(samples)


def accuracies(model, X, truth):
    truth = np.asarray(truth)
    probas = [model.hierarchy.decide(np.ascontiguousarray(t(X)))[0] for t in TRANSFORMS.values()]
    acc = lambda p: float((np.asarray(MAIN_CLASSES)[p.argmax(1)] == truth).mean())
    return acc(probas[0]), acc(np.mean(probas[:4], 0)), acc(np.mean(probas, 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--external", action="append", default=[])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--images", action="store_true",
                    help="also flip the prepared images (external sets only)")
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    sets, external_paths = [], {}
    val = [s for s in read_dataset(a.pbc) if s.split == "val" and s.main is not None]
    X, val = maps(model, val, a.cache)
    sets.append(("PBC val", model, X, [s.main for s in val]))
    for ext in a.external:
        samples = [s for s in read_dataset(ext) if s.main is not None]
        X, samples = maps(model, samples, a.cache)
        truth = [s.main for s in samples]
        external_paths[ext] = [s.path for s in samples]
        sets.append((ext, model, X, truth))
        aligned, record = auto_align_set(model, X, [smp.path for smp in samples])
        if record["applied"]:
            sets.append((f"{ext}, aligned", aligned, X, truth))
    print("| set | as is | 4 flips / rotations of 180 | all 8 symmetries |")
    for name, m, X, truth in sets[1:]:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in accuracies(m, X, truth)) + " |",
              flush=True)
    if not a.images:
        return
    print("\nflipped images: | set | as is | mean over 4 flips |")
    for name, m, X, truth in sets[1:]:
        paths = external_paths[name.split(",")[0]]
        probas = [m.hierarchy.decide(X)[0]]
        for flip in (lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: x[::-1, ::-1]):
            images = np.stack([flip(load_prepared(p, model.trunk_config())[0]) for p in paths])
            probas.append(m.hierarchy.decide(run_trunk(model.trunk, np.ascontiguousarray(images)))[0])
        acc = lambda p: float((np.asarray(MAIN_CLASSES)[p.argmax(1)] == np.asarray(truth)).mean())
        print(f"| {name} | {acc(probas[0]):.3f} | {acc(np.mean(probas, 0)):.3f} |", flush=True)


if __name__ == "__main__":
    main()
