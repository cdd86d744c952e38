#!/usr/bin/env python
"""Adapting from the main stage 1, from the in-lab network, or both (the mean of the pair).

    python docs/experiments/adapt_ensemble.py --external .../jtsc300/manifest.csv \\
        --external .../bccd351/manifest.csv [--model BUNDLE] [--block5-epochs 6,4,3] \\
        [--inlab-block5-epochs 6,2,0] [--seeds 3] [--cache CACHE]

For each set, epoch count and draw (``bench/bench_adapt.py``'s draws: 20 labelled cells
per class, seed = draw), the base model is adapted as ``hiercell adapt --no-ensemble``
does from its main stage 1 (block5 fine-tuned for each of ``--block5-epochs``), and
again from its in-lab stage 1 (the GPU run's block5 network,
``models/pbc-robust-vgg16-svm/MODEL_CARD.md``) put in its place (for each of
``--inlab-block5-epochs``; without it, as many as the main stage 1); stage-1
accuracy on the set's other cells of each, and of the mean of the two adapted stages'
probabilities (what ``hiercell adapt`` now does, :class:`hiercell.ensemble.StageEnsemble`).
No cross-validation or review calibration here (accuracy only); seconds per draw (both
adaptations) on the 2-core CPU.

Measured (bundled model, OpenVINO bfloat16; mean [min-max] over draws 0-2; the rows
at 4 and 3 epochs come from earlier versions of this script, which adapted the pair
through ``adapt_model``'s default where the main stage 1 is not listed):

| set | block5 epochs (main / in-lab) | main stage 1 | in-lab network | the pair |
|---|---|---|---|---|
| bccd351 | 6 / 6 | 0.802 [0.774-0.822] | 0.725 [0.663-0.763] | 0.798 [0.781-0.807] |
| bccd351 | **6 / 2 (default)** | 0.802 [0.774-0.822] | 0.742 [0.700-0.778] | **0.811** [0.781-0.826] |
| bccd351 | 6 / 0 | 0.802 [0.774-0.822] | 0.753 [0.719-0.789] | 0.800 [0.774-0.826] |
| bccd351 | 4 / 4 | 0.779 [0.744-0.800] | 0.779 [0.767-0.796] | 0.800 [0.796-0.807] |
| bccd351 | 3 / 3 | not run | 0.747 [0.733-0.759] | 0.785 [0.763-0.804] |
| jtsc300 | 6 / 6 | 0.853 [0.795-0.891] | 0.905 [0.891-0.918] | 0.900 [0.882-0.909] |
| jtsc300 | **6 / 2 (default)** | 0.853 [0.795-0.891] | 0.889 [0.877-0.900] | **0.894** [0.873-0.909] |
| jtsc300 | 6 / 0 | 0.853 [0.795-0.891] | 0.852 [0.845-0.855] | 0.882 [0.873-0.886] |
| jtsc300 | 4 / 4 | not run | 0.889 [0.877-0.900] | 0.885 [0.877-0.891] |
| jtsc300 | 3 / 3 | not run | 0.892 [0.882-0.909] | 0.895 [0.891-0.900] |

Two runs of the bccd351 4 / 4 draws gave the same figures to the third decimal
(the adaptation repeats on this CPU). With both networks fine-tuned for 6 epochs the
main stage 1 is the better start on BCCD (by 7.7 points) and the in-lab network on
Jiangxi (by 5.2); the pair is within 0.5 point of the better one on both, and its draws
spread less (0.026 and 0.027 against 0.048 and 0.096 for the main stage 1). Fine-tuning
the in-lab network for 2 epochs instead of 6 kept the pair as good (0.811 / 0.894
against 0.798 / 0.900) for less time (22 s against 30 s for the main stage 1's 6
epochs, one draw of 81 cells on the quiet machine), which keeps ``hiercell adapt`` on
200 cells under 5 minutes (``docs/adapt.md``, *Time*; 6 / 6 took 6 min 9 s there).
``hiercell adapt`` therefore adapts both (``hiercell.adapt.ENSEMBLE``), the in-lab
network for ``hiercell.adapt.INLAB_BLOCK5_EPOCHS`` = 2; ``bench/bench_adapt.py`` gives
the figures with cross-validation and review.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

import hiercell
from hiercell.adapt import adapt_model
from hiercell.data import read_dataset
from hiercell.features import trunk_views
from hiercell.hierarchy import _reorder
from hiercell.taxonomy import MAIN_CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_adapt import draw  # noqa: E402  (the bench's draws)


def from_inlab(model):
    """A copy of ``model`` whose stage 1 is its in-lab stage 1 (and no in-lab stage)."""
    new = copy.copy(model)
    new.hierarchy = copy.copy(model.hierarchy)
    new.hierarchy.stage1, new.hierarchy.inlab = copy.copy(model.hierarchy.inlab), None
    return new


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--external", action="append", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--block5-epochs", default="6,4,3")
    ap.add_argument("--inlab-block5-epochs", default=None,
                    help="comma-separated epochs for the in-lab network, each paired with "
                         "every --block5-epochs value (default: the same as the main's)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--cache", default=None)
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    if model.hierarchy.inlab is None:
        raise SystemExit("this model has no in-lab stage 1 to adapt from")
    starts = {"main": model, "in-lab": from_inlab(model)}
    names = np.array(MAIN_CLASSES)
    for ext in a.external:
        samples = [s for s in read_dataset(ext) if s.main is not None]
        maps, ok, _ = trunk_views(model, [s.path for s in samples], 4, cache_dir=a.cache)
        samples = [s for s, good in zip(samples, ok) if good]
        truth = np.array([s.main for s in samples])
        inlab_epochs = (None if a.inlab_block5_epochs is None
                        else [int(v) for v in a.inlab_block5_epochs.split(",")])
        for epochs in [int(v) for v in a.block5_epochs.split(",")]:
            for second in inlab_epochs or [epochs]:
                run(ext, samples, maps, truth, starts, names, epochs, second, a)


def run(ext, samples, maps, truth, starts, names, epochs, inlab_epochs, a):
    """One row: the main stage 1 adapted with ``epochs`` of block5, the in-lab network
    with ``inlab_epochs``, and their pair, over ``a.seeds`` draws."""
    rows = []
    tag = f"{Path(ext).parent.name} {epochs} / {inlab_epochs} epochs"
    for seed in range(a.seeds):
        train = draw(samples, a.per_class, np.random.default_rng(seed))
        rest = np.setdiff1d(np.arange(len(samples)), train)
        t0, proba = time.time(), []
        for start, n_epochs in zip(starts.values(), (epochs, inlab_epochs)):
            h = adapt_model(start, maps[:, train], [samples[i] for i in train], seed=seed,
                            block5_epochs=n_epochs, ensemble=False).hierarchy
            proba.append(_reorder(h.stage_proba(1, maps[0, rest]), h.stage1.classes_,
                                  MAIN_CLASSES))
        proba.append((proba[0] + proba[1]) / 2)
        rows.append([np.mean(names[p.argmax(1)] == truth[rest]) for p in proba])
        print(f"{tag}, draw {seed}: main / in-lab / pair "
              f"{' / '.join(f'{v:.3f}' for v in rows[-1])} ({time.time() - t0:.0f} s)",
              flush=True)
    r = np.array(rows)
    print(f"{tag}: " + ", ".join(
        f"{name} {r[:, j].mean():.3f} [{r[:, j].min():.3f}-{r[:, j].max():.3f}]"
        for j, name in enumerate(("main", "in-lab", "pair"))), flush=True)

if __name__ == "__main__":
    main()
