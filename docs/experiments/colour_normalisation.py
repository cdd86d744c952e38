#!/usr/bin/env python
"""Colour normalisation of other labs' images before the model, re-checked.

    python docs/experiments/colour_normalisation.py --pbc ../shared/data/pbc \\
        --external .../bccd351/manifest.csv --external .../jtsc300/manifest.csv [--model B]

Each image is transformed before ``model.features`` (which frames and white-balances it
as always), then stage 1 is scored unaligned and aligned on the set's own cells
(``hiercell.alignment.auto_align``, as ``hiercell evaluate`` aligns):

* ``reinhard-image``: Reinhard transfer in LAB, the image's mean and spread onto the
  mean of 200 PBC validation images';
* ``reinhard-dark``: the same on the darkest 35 % of pixels (the cells);
* ``reinhard-folder``: the set's pooled mean and spread onto PBC's;
* ``grey``: luminance only.

Measured (bundled model, OpenVINO bfloat16; stage-1 accuracy unaligned / aligned;
lymphocytes right when aligned):

| transform | bccd351 | jtsc300 |
|---|---|---|
| none | 0.348 / **0.607** (0 of 33 lymphocytes) | 0.423 / **0.567** (13 %) |
| reinhard-image | 0.544 / 0.593 | 0.303 / 0.557 |
| reinhard-dark | 0.302 / 0.467 | 0.270 / 0.400 |
| reinhard-folder | 0.490 / 0.573 | 0.360 / 0.563 |
| grey | 0.348 / 0.499 | 0.513 / 0.513 |

(The first row's aligned BCCD figure, 0.607, is on all its cells; ``hiercell evaluate``
aligns on a fixed draw of up to 200 and gives 0.604.) Colour transfer helps the
unaligned model on one set and hurts it on the other, and nothing beats the lab
alignment without it: as the round's findings said for a CellaVision set, colour is not
what the model misses. Both sets' lymphocytes stay wrong (called monocyte, ig or
erythroblast) whatever the colour.
"""

from __future__ import annotations

import argparse
import random

import cv2
import numpy as np

import hiercell
from hiercell.alignment import auto_align
from hiercell.data import read_dataset


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def lab_pixels(rgb, darkest=None):
    """LAB pixels of ``rgb`` (``(n, 3)`` float32); only the ``darkest`` fraction by L."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return lab if darkest is None else lab[lab[:, 0] <= np.percentile(lab[:, 0], 100 * darkest)]


def stats(images, darkest=None):
    """Mean and spread of LAB pixels: per image, averaged (``darkest``: pooled cell pixels)."""
    if darkest is None:
        pixels = [lab_pixels(i) for i in images]
        return np.mean([p.mean(0) for p in pixels], 0), np.mean([p.std(0) for p in pixels], 0)
    pooled = np.concatenate([lab_pixels(i, darkest) for i in images])
    return pooled.mean(0), pooled.std(0)


def reinhard(rgb, mean, std, target_mean, target_std):
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab = (lab - mean) / np.maximum(std, 1e-3) * target_std + target_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--external", action="append", required=True)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    val = [s for s in read_dataset(a.pbc) if s.split == "val"]
    reference = [read_rgb(s.path) for s in random.Random(0).sample(val, 200)]
    image_ref, dark_ref = stats(reference), stats(reference, 0.35)
    for ext in a.external:
        samples = [s for s in read_dataset(ext) if s.main is not None]
        images = [read_rgb(s.path) for s in samples]
        truth = np.array([s.main for s in samples])
        folder = stats(images)
        transforms = {
            "none": lambda i: i,
            "reinhard-image": lambda i: reinhard(i, *stats([i]), *image_ref),
            "reinhard-dark": lambda i: reinhard(i, *stats([i], 0.35), *dark_ref),
            "reinhard-folder": lambda i: reinhard(i, *folder, *image_ref),
            "grey": lambda i: np.repeat(cv2.cvtColor(i, cv2.COLOR_RGB2GRAY)[..., None], 3, 2),
        }
        for name, transform in transforms.items():
            X = model.features([transform(i) for i in images]).astype(np.float32)
            plain = np.mean(model.hierarchy.predict_stage(1, X) == truth)
            aligned, _ = auto_align(model, X)
            answers = aligned.hierarchy.predict_stage(1, X)
            lymph = truth == "lymphocyte"
            print(f"{ext}: {name:16s} unaligned {plain:.3f}, aligned {np.mean(answers == truth):.3f}"
                  f" (lymphocytes {np.mean(answers[lymph] == 'lymphocyte'):.2f})", flush=True)


if __name__ == "__main__":
    main()
