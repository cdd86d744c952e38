#!/usr/bin/env python
"""Two cheap stage-2 levers on the CPU: the network head's share, and a second stage 2.

    python docs/experiments/stage2_levers.py --pbc ../shared/data/pbc --cache CACHE \\
        [--model BUNDLE] [--other OTHER_BUNDLE]

* the bundled stage 2 answering with ``(1 - w) x`` its SVM's probabilities ``+ w x`` its
  network head's softmax (``StageClassifier.network_weight``, as the stage 1s do), for w
  in 0, 0.25, 0.5, 0.75, 1: stage-2 macro-F1 (stage 2 alone, as ``hiercell evaluate``
  scores it) and end-to-end accuracy on PBC val and test;
* with ``--other``: the mean of this stage 2 and another bundle's (same trunk), SVMs
  and heads. The previous release's unaugmented CPU stage 2 is in the git history:
  ``git archive f2942b8 models/pbc-robust-vgg16-svm | tar -x -C /tmp/f2942b8``, then
  ``--other /tmp/f2942b8/models/pbc-robust-vgg16-svm``.

Measured (bundled model, OpenVINO bfloat16; the SVMs were fit on train + val, so their
val figures are in-sample and favour the SVM):

| stage 2 | val macro-F1 | test macro-F1 | test end to end |
|---|---|---|---|
| SVM (w 0, the bundle) | 0.8338 | 0.8039 | 0.9118 |
| w 0.25 | 0.8338 | 0.8045 | 0.9121 |
| w 0.5 | 0.8288 | 0.7989 | 0.9106 |
| w 0.75 | 0.8007 | 0.7981 | 0.9103 |
| head (w 1) | 0.7754 | 0.7992 | 0.9106 |
| mean of the two SVMs (with f2942b8's) | 0.8279 | 0.8022 | |
| mean of the two heads | 0.7875 | 0.8043 | |
| mean of all four | 0.8171 | 0.8106 | |

Neither is taken: nothing beats the SVM alone on val, and on test the best (all four,
+0.7 point) would cost a second block5 pass for every routed cell. Stage 2 stays at
0.804 against the 0.85 goal; the lever left is a better network (block4, on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

import hiercell
from hiercell.features import trunk_views
from hiercell.data import read_dataset
from hiercell.training import evaluate_hierarchy, stage_targets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network_weight import with_weight  # noqa: E402  (the same copy, for stage 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pbc", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--other", default=None, help="a bundle whose stage 2 to average with")
    a = ap.parse_args()
    model = hiercell.load(a.model, precision="auto")
    other = hiercell.load(a.other, precision="auto").hierarchy.stage2 if a.other else None
    pbc = read_dataset(a.pbc)
    for split in ("val", "test"):
        samples = [s for s in pbc if s.split == split]
        maps, ok, _ = trunk_views(model, [s.path for s in samples], 0, cache_dir=a.cache)
        samples = [s for s, good in zip(samples, ok) if good]
        X = maps[0].astype(np.float32)
        for w in (0.0, 0.25, 0.5, 0.75, 1.0):
            r = evaluate_hierarchy(with_weight(model, w, "stage2"), X, samples)
            print(f"{split} w={w:<4} stage-2 macro-F1 {r['stage2']['macro_f1']:.4f}, end to end "
                  f"{r['end_to_end']['accuracy']:.4f}", flush=True)
        if other is None:
            continue
        own = model.hierarchy.stage2
        if [str(c) for c in own.classes_] != [str(c) for c in other.classes_]:
            raise SystemExit("the two stage 2s have different classes")
        idx, y = stage_targets(samples, 2, 150, 0)
        a_out, b_out = own.predict_outputs(X[idx]), other.predict_outputs(X[idx])
        names = np.array([str(c) for c in own.classes_])
        for name, p in (("mean of the SVMs", a_out.proba + b_out.proba),
                        ("mean of the heads", a_out.network_proba + b_out.network_proba),
                        ("mean of all four", a_out.proba + b_out.proba + a_out.network_proba
                         + b_out.network_proba)):
            print(f"{split} {name}: stage-2 macro-F1 "
                  f"{f1_score(y, names[p.argmax(1)], average='macro'):.4f}", flush=True)


if __name__ == "__main__":
    main()
