#!/usr/bin/env python
"""What stage 2 says about another lab's neutrophils: a false left shift, or "uncertain".

    python bench/bench_subclasses_elsewhere.py \
        --external ../shared/data/external/bccd351/manifest.csv \
        --external ../shared/data/external/jtsc300/manifest.csv [--model BUNDLE]

Other labs' labelled sets name neutrophils without band / segmented, so stage 2
cannot be scored there; but a stage 2 that calls many of them bands or
immature granulocytes gives a lab a false left shift. This runs ``hiercell
classify`` on all the set's labelled images (defaults: aligned to them by
itself when the domain check warns) and, for the cells labelled neutrophil,
counts the final answers of those that reach stage 2 (main class neutrophil or
ig): SNE, BNE, immature (MY, MMY, PMY) and uncertain (stage 2 answered
"Others"); images classify could not read are counted apart.
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


def classify(paths, model=None) -> dict:
    """``hiercell classify`` rows of ``paths``, by resolved path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.csv"
        cmd = [sys.executable, "-m", "hiercell", "classify", *paths, "--out", str(out)]
        done = subprocess.run(cmd + (["--model", model] if model else []),
                              capture_output=True, text=True)
        if done.returncode not in (0, 3):  # 3: some images could not be read (rows say which)
            raise SystemExit(f"hiercell classify failed:\n{done.stderr}")
        return {Path(r["path"]).resolve(): r for r in csv.DictReader(open(out))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", required=True, help="labelled set (manifest)")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    for manifest in a.external:
        samples = list(read_dataset(manifest))
        rows = classify(sorted({str(s.path) for s in samples}), a.model)
        answers = [rows[Path(s.path).resolve()] for s in samples if s.main == "neutrophil"]
        unread = sum(r["status"] != "ok" for r in answers)
        routed = [r for r in answers if r["status"] == "ok" and r["main_class"] in ("neutrophil", "ig")]
        kinds = collections.Counter(
            "uncertain" if r["uncertain"] == "True" else
            "immature" if r["label"] in IMMATURE else r["label"] for r in routed)
        n = max(len(routed), 1)
        print(f"{manifest}: {len(answers)} neutrophils, {len(routed)} reach stage 2: "
              + ", ".join(f"{k} {kinds[k]} ({kinds[k] / n:.1%})"
                          for k in ("SNE", "BNE", "immature", "uncertain"))
              + (f"; {unread} could not be read" if unread else ""))


if __name__ == "__main__":
    main()
