"""Fill the trunk-feature cache for every image of a manifest (resumable).

    python tools/cache_features.py ../shared/data/pbc --cache .cache/features --size 160 [--masked]
"""

import argparse
import csv
import sys
import time
from pathlib import Path

from hiercell.training import TrainSettings, trunk_features


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--masked", action="store_true")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--split-csv", default=None)
    args = ap.parse_args()
    root = Path(args.data)
    manifest = Path(args.split_csv) if args.split_csv else root / "splits.csv"
    with open(manifest, newline="") as fh:
        paths = [root / row["path"] for row in csv.DictReader(fh)]
    settings = TrainSettings(input_size=args.size, masked=args.masked,
                             backbone_weights=args.weights)
    t0 = time.time()
    last = [0]

    def progress(done, total):  # the hiercell.progress convention
        if done - last[0] >= 512 or done == total:
            last[0] = done
            rate = done / max(time.time() - t0, 1e-9)
            print(f"{done}/{total} ({rate:.1f} img/s)", file=sys.stderr, flush=True)

    res = trunk_features(paths, settings, args.cache, progress=progress)
    print(f"done: {res.ok.sum()} ok, {len(res.errors)} errors in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
