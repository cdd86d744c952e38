#!/usr/bin/env python
"""Benchmark of ``hiercell.segmentation`` on a folder of class sub-folders (PBC).

    python bench/bench_segmentation.py --data ../shared/data/pbc --sheet bench/segmentation_sheet.png

Prints (1) the speed of ``segment()`` on one core (``cv2.setNumThreads(1)``;
images decoded beforehand, so decoding is not counted) on a random sample of
the 256 px images as they are and upsampled (bicubic) to 360 px, the size of
the PBC originals; (2) the ok-rate per class over every image (class = the
sub-folder) and the counts of the flag reasons; (3) optionally writes a
contact sheet of seeded random overlays per class (cell contour green, nucleus
blue, flagged tiles labelled with their reason).
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hiercell.io import ImageLoadError, list_images, load_image
from hiercell.segmentation import draw_overlay, segment


def _time(images, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds per image of ``segment`` over ``images``."""
    for im in images[:10]:
        segment(im)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for im in images:
            segment(im)
        best = min(best, (time.perf_counter() - t0) / len(images))
    return best


def _tile(rgb, res, label: str, size: int) -> np.ndarray:
    over = draw_overlay(rgb, res.cell_mask, res.nucleus_mask)
    tile = cv2.resize(over, (size, size), interpolation=cv2.INTER_AREA)
    text = label if res.ok else f"{label}: {res.reason}"
    for colour, width in (((255, 255, 255), 3), ((0, 0, 0), 1)):
        cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, width,
                    cv2.LINE_AA)
    return tile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of class sub-folders")
    ap.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG here")
    ap.add_argument("--per-class", type=int, default=4, help="sheet tiles per class")
    ap.add_argument("--thumb", type=int, default=128, help="sheet tile size (px)")
    ap.add_argument("--timing-n", type=int, default=500, help="images in the speed sample")
    ap.add_argument("--limit", type=int, default=None,
                    help="at most this many images per class for the ok-rate (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    rng = random.Random(args.seed)
    classes = sorted(p for p in args.data.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: list_images(c) for c in classes}
    if not any(files.values()):
        print(f"no images under {args.data}", file=sys.stderr)
        return 2

    # ---- speed
    everything = [f for fs in files.values() for f in fs]
    sample = [load_image(f) for f in rng.sample(everything, min(args.timing_n, len(everything)))]
    h, w = sample[0].shape[:2]
    t_native = _time(sample)
    up = [cv2.resize(im, (360, 360), interpolation=cv2.INTER_CUBIC) for im in sample]
    t_360 = _time(up)
    print(f"speed, 1 thread (cv2.setNumThreads(1)), {len(sample)} images, decoding excluded:")
    print(f"  {w}x{h} px:  {1 / t_native:7.1f} images/s  ({t_native * 1e3:.2f} ms/image)")
    print(f"  360x360 px: {1 / t_360:7.1f} images/s  ({t_360 * 1e3:.2f} ms/image)"
          f"  [the {w} px copies upsampled bicubically to 360]")

    # ---- ok-rate per class
    reasons = collections.Counter()
    print("\nok-rate per class (all images):")
    print(f"  {'class':<14}{'n':>6}{'ok':>7}{'ok-rate':>9}  flagged")
    sheet_rows = []
    tot_n = tot_ok = 0
    for cls, fs in files.items():
        if args.limit:
            fs = sorted(rng.sample(fs, min(args.limit, len(fs))))
        pick = set(rng.sample(range(len(fs)), min(args.per_class, len(fs))))
        counts = collections.Counter()
        tiles = []
        for i, f in enumerate(fs):
            try:
                rgb = load_image(f)
            except ImageLoadError as exc:
                counts[f"unreadable: {exc.reason}"] += 1
                continue
            res = segment(rgb)
            counts[res.reason or "ok"] += 1
            if i in pick:
                tiles.append(_tile(rgb, res, cls, args.thumb))
        n, ok = sum(counts.values()), counts.pop("ok", 0)
        tot_n, tot_ok = tot_n + n, tot_ok + ok
        reasons.update(counts)
        flagged = ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "-"
        print(f"  {cls:<14}{n:>6}{ok:>7}{ok / max(n, 1):>9.2%}  {flagged}")
        if tiles:
            while len(tiles) < args.per_class:
                tiles.append(np.full_like(tiles[0], 255))
            sheet_rows.append(np.hstack(tiles))
    print(f"  {'all':<14}{tot_n:>6}{tot_ok:>7}{tot_ok / max(tot_n, 1):>9.2%}")
    print("\nflag reasons (all classes):")
    for k, v in reasons.most_common() or [("none", 0)]:
        print(f"  {k:<22}{v:>6}")

    if args.sheet is not None and sheet_rows:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet = cv2.cvtColor(np.vstack(sheet_rows), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(args.sheet), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            print(f"could not write {args.sheet}", file=sys.stderr)
            return 1
        print(f"\ncontact sheet: {args.sheet} ({args.per_class} random images per class, "
              f"seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
