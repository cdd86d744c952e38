"""One-off experiment (not part of hiercell): a per-cell in-lab specialist.

    python docs/experiments/novelty_gated_specialist.py --pbc ../shared/data/pbc \
        --specialist BUNDLE [--specialist BUNDLE ...] --external MANIFEST ... --cache CACHE

Cells whose novelty percentile (the bundled model's review scorer, read
against in-lab validation cells) is at most g go to a specialist's stage 1 (a
bundle trained for in-lab accuracy on the same frozen trunk and frame), the
others to the bundled model's stage 1. Prints stage-1 accuracy on the PBC test
split and on each external set, and the share of cells each gate gives the
specialist.
"""
import argparse

import numpy as np

import hiercell
from hiercell.data import read_dataset
from hiercell.features import model_features


def features(model, paths, cache):
    res = model_features(model, paths, cache_dir=cache)
    return res.features, res.ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--specialist", action="append", required=True)
    ap.add_argument("--external", action="append", default=[])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--gates", default="0.9,0.95,0.99")
    a = ap.parse_args()
    robust = hiercell.load(None, precision="auto")
    experts = {p: hiercell.load(p, precision="auto") for p in a.specialist}
    for e in experts.values():
        assert e.trunk_config() == robust.trunk_config(), "specialist must share trunk and frame"
    sets = {"PBC test": [s for s in read_dataset(a.pbc) if s.split == "test" and s.main]}
    for m in a.external:
        sets[m] = [s for s in read_dataset(m) if s.main]
    for name, samples in sets.items():
        X, ok = features(robust, [s.path for s in samples], a.cache)
        truth = np.array([s.main for s, g in zip(samples, ok) if g])
        novelty = robust.hierarchy.review_scores(X)[2]
        base = robust.hierarchy.predict_stage(1, X)
        print(f"\n{name}: n={len(truth)}, bundled stage 1 {np.mean(base == truth):.4f}")
        for path, expert in experts.items():
            own = expert.hierarchy.predict_stage(1, X)
            print(f"  {path}: alone {np.mean(own == truth):.4f}")
            for g in (float(v) for v in a.gates.split(",")):
                use = novelty <= g
                mixed = np.where(use, own, base)
                print(f"    gate {g:.2f}: to specialist {use.mean():.3f}, "
                      f"stage 1 {np.mean(mixed == truth):.4f}")


if __name__ == "__main__":
    main()
