#!/usr/bin/env python
"""Score the segmentation module against expert masks of another lab's images.

    python bench/bench_segmentation_external.py --data ../shared/data/external/jtsc300

DATA holds ``images/NAME`` and ``masks/NAME`` (PNG; nucleus 255, cytoplasm
128, background 0) and ``manifest.csv``. Prints the ok-rate, the median and
quartiles of the cell IoU (mask > 0) and nucleus IoU (mask == 255), per class
and overall, and the flag reasons -- for the images as they are and after the
white balance of :mod:`hiercell.framing` (background mapped to PBC's).
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path

import cv2
import numpy as np

from hiercell.framing import background_colour, white_balance
from hiercell.io import load_image
from hiercell.segmentation import segment


def iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    root = Path(a.data)
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    for variant in ("as is", "white-balanced"):
        per = collections.defaultdict(list)
        reasons = collections.Counter()
        for r in rows:
            rgb = load_image(root / r["path"])
            if variant != "as is":
                rgb = white_balance(rgb, background_colour(rgb))
            truth = cv2.imread(str(root / "masks" / Path(r["path"]).name), cv2.IMREAD_GRAYSCALE)
            seg = segment(rgb)
            reasons[seg.reason or "ok"] += 1
            per[r["label"]].append((seg.ok, iou(seg.cell_mask, truth > 0),
                                    iou(seg.nucleus_mask, truth == 255)))
        print(f"\n== {root.name}, images {variant}: flags {dict(reasons)}")
        print(f"{'class':12s} {'n':>4s} {'ok-rate':>8s} {'cell IoU median [q1, q3]':>26s} "
              f"{'nucleus IoU median [q1, q3]':>29s}")
        everything = [v for vs in per.values() for v in vs]
        for name, vals in sorted(per.items()) + [("all", everything)]:
            ok = np.array([v[0] for v in vals])
            cell = np.array([v[1] for v in vals])
            nuc = np.array([v[2] for v in vals])
            q = lambda x: f"{np.nanmedian(x):.3f} [{np.nanpercentile(x, 25):.3f}, {np.nanpercentile(x, 75):.3f}]"
            print(f"{name:12s} {len(vals):4d} {ok.mean():8.3f} {q(cell):>26s} {q(nuc):>29s}")


if __name__ == "__main__":
    main()
