#!/usr/bin/env python
"""Seed ensembles of the GPU networks: the bundled model's stage 2 and in-lab stage 1,
each alone or as the mean of networks trained with other seeds.

    python docs/experiments/seed_ensembles.py --pbc ../shared/data/pbc \\
        --stage2-from B1 --stage2-from B2 [--inlab-from B3] [--cache CACHE]

``--stage2-from`` / ``--inlab-from``: bundles made with ``tools/torch_recipe.py
bundle`` from heads of ``tools/torch_recipe.py train`` with other ``--seed`` s (their
stage 2, their stage 1; bundle a stage-2 head together with a stage-1 head of the same
size: ``bundle`` refuses a stage-2 head alone since this measurement, whose stage-2
bundles were made that way and still read here); an in-lab member answers with the
bundled in-lab stage's network weight. Each variant is the bundled model with that stage swapped for the
member or for :class:`hiercell.ensemble.StageEnsemble` of the bundled one and the
others; PBC val (to choose on) and test, as ``hiercell evaluate`` scores them.

Measured (an H100 call, ``docs/gpu-runs/2026-11-27-call3.log``: ``train
.gpujob --stages 2 --sizes 160 --seed S --minutes 0.9`` for S = 1, 2 (the bundled
stage 2's recipe, seed 0) and ``--stages 1 --plateau 3 --patience 8 --finetune-epochs 80
--seed 1 --minutes 2.0`` (the in-lab stage 1's recipe); each bundled here with
``tools/torch_recipe.py bundle ... --cache CACHE``; OpenVINO bfloat16):

| variant | val stage 1 | val stage-2 macro-F1 | test stage 1 | test stage-2 macro-F1 | test end to end |
|---|---|---|---|---|---|
| bundled (stage 2 seed 0, in-lab seed 0) | 0.9825 | 0.8338 | 0.9781 | 0.8039 | 0.9118 |
| stage 2 seed 1 alone | | 0.8065 | | 0.7998 | 0.9139 |
| stage 2 seed 2 alone | | 0.8267 | | 0.8124 | 0.9165 |
| stage 2 seeds 0+1 | | **0.8362** | | 0.8063 | 0.9136 |
| stage 2 seeds 0+1+2 | | 0.8291 | | 0.8116 | 0.9171 |
| in-lab seed 1 alone | 0.9819 | | 0.9760 | | 0.9109 |
| in-lab seeds 0+1 | **0.9830** | | 0.9789 | | 0.9121 |

(Empty cells: as the bundled row.) Averaging seeds moves val by at most a quarter of a
point (stage-2 macro-F1 +0.24, stage 1 +0.05, one cell in 1,710) and test by at most
0.8 point (stage 2, three seeds, which val ranks below two): not a lever for the goals
(0.985 / 0.85), and each member costs a block5 pass and about 30 MB of bundle, so
the bundled model keeps its single networks. The spread between seeds (stage-2 macro-F1
0.807-0.834 on val) is as large as anything averaging buys.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path


def stage_of(path, name, precision, engine):
    """Stage ``name`` ("stage1" or "stage2") of the bundle at ``path``, digests checked;
    a stage-2-only bundle (what older tools/torch_recipe.py bundle wrote from a stage-2
    head alone) reads too."""
    from hiercell.bundle import _load_stage_v2, _load_stages, verify_bundle

    from hiercell.bundle import BundleError

    try:
        verify_bundle(path)
    except BundleError as exc:
        if "must map stage1" not in str(exc):  # a stage-2-only bundle: digests fine
            raise
    info = json.loads((Path(path) / "bundle.json").read_text())
    return _load_stages(Path(path), info["stages"], _load_stage_v2, precision, engine)[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--stage2-from", action="append", default=[])
    ap.add_argument("--inlab-from", action="append", default=[])
    ap.add_argument("--cache", default=None)
    a = ap.parse_args()

    import hiercell
    from hiercell.data import read_dataset
    from hiercell.ensemble import StageEnsemble
    from hiercell.features import model_features
    from hiercell.training import evaluate_hierarchy

    base = hiercell.load(None, precision="auto")
    H, prec, eng = base.hierarchy, base.info["precision"], base.info["engine"]
    s2 = [H.stage2] + [stage_of(p, "stage2", prec, eng) for p in a.stage2_from]
    s1 = [H.inlab] + [stage_of(p, "stage1", prec, eng) for p in a.inlab_from]
    for member in s1[1:]:
        member.network_weight = H.inlab.network_weight

    def variant(stage2=None, inlab=None):
        m = copy.copy(base)
        m.hierarchy = copy.copy(H)
        m.hierarchy.stage2 = stage2 or H.stage2
        m.hierarchy.inlab = inlab or H.inlab
        return m

    variants = {"bundled": variant()}
    for k, (path, member) in enumerate(zip(a.stage2_from, s2[1:]), 1):
        variants[f"stage 2 from {path}"] = variant(stage2=member)
        variants[f"stage 2 bundled + {k} more"] = variant(stage2=StageEnsemble(s2[:k + 1]))
    for k, (path, member) in enumerate(zip(a.inlab_from, s1[1:]), 1):
        variants[f"in-lab from {path}"] = variant(inlab=member)
        variants[f"in-lab bundled + {k} more"] = variant(inlab=StageEnsemble(s1[:k + 1]))
    data = read_dataset(a.pbc)
    for split in ("val", "test"):
        samples = [s for s in data if s.split == split]
        res = model_features(base, [s.path for s in samples], cache_dir=a.cache)
        if not res.ok.all():
            raise SystemExit(f"{(~res.ok).sum()} {split} images could not be read")
        for name, model in variants.items():
            r = evaluate_hierarchy(model, res.features, samples)
            print(f"{split:5s} {name:40s} stage 1 {r['stage1']['accuracy']:.4f}  stage 2 "
                  f"macro-F1 {r['stage2']['macro_f1']:.4f}  end to end "
                  f"{r['end_to_end']['accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
