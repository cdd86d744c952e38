#!/usr/bin/env python
"""What stage 2 says about another lab's neutrophils: a false left shift, or "uncertain".

    python bench/bench_subclasses_elsewhere.py \
        --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv [--model BUNDLE]

Other labs' labelled sets name neutrophils without band / segmented, so stage 2
cannot be scored there; but a stage 2 that calls many of them bands or
immature granulocytes gives a lab a false left shift. For every cell labelled
neutrophil, this runs ``hiercell classify`` on the set's images (defaults:
the folder aligned by itself when the domain check warns) and counts the final
answers of the cells that reach stage 2 (main class neutrophil or ig): SNE,
BNE, immature (MY, MMY, PMY) and uncertain (stage 2 answered "Others").
"""

from __future__ import annotations

import argparse
import collections
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from hiercell.data import read_dataset

IMMATURE = ("MY", "MMY", "PMY")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", required=True, help="labelled set (manifest)")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    for manifest in a.external:
        samples = [s for s in read_dataset(manifest) if s.main == "neutrophil"]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.csv"
            cmd = [sys.executable, "-m", "hiercell", "classify", str(Path(manifest).parent / "images"),
                   "--out", str(out)] + (["--model", a.model] if a.model else [])
            subprocess.run(cmd, check=True, capture_output=True)
            rows = {Path(r["path"]).resolve(): r for r in csv.DictReader(open(out))}
        answers = [rows[Path(s.path).resolve()] for s in samples]
        routed = [r for r in answers if r["main_class"] in ("neutrophil", "ig")]
        kinds = collections.Counter(
            "uncertain" if r["uncertain"] == "True" else
            "immature" if r["label"] in IMMATURE else r["label"] for r in routed)
        n = max(len(routed), 1)
        print(f"{manifest}: {len(samples)} neutrophils, {len(routed)} reach stage 2: "
              + ", ".join(f"{k} {kinds[k]} ({kinds[k] / n:.1%})"
                          for k in ("SNE", "BNE", "immature", "uncertain")))


if __name__ == "__main__":
    main()
