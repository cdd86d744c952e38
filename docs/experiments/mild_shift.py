#!/usr/bin/env python
"""How the folder domain check and the automatic alignment behave on a mildly shifted
copy of the training lab's images (a synthetic stand-in for a lab between PBC and the
external sets: a stain colour cast, a contrast (gamma) change and a slight blur).

    python docs/experiments/mild_shift.py ../shared/data/pbc [--levels 0,1,2,3] [--model BUNDLE]

Per level, on the PBC test split: the domain check's score and expected share on the
whole split and how often it warns on 40 random 50-cell folders; stage-1 accuracy (the
routed main class) as classify answers an unaligned folder (in-lab stage 1 for cells
within its novelty gate), and with the model aligned on 200 of the shifted cells (as
classify does when the check warns; the in-lab stage 1 still answers the cells within
its gate, the aligned main stage 1 the others).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

import hiercell
from hiercell.alignment import align_model, folder_novelty
from hiercell.data import read_dataset
from hiercell.review import domain_shift


def shifted(rgb, level):
    """RGB uint8 with a colour cast (LAB a* up, b* down), gamma and blur growing with
    ``level`` (0: unchanged)."""
    if not level:
        return rgb
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 1] += 4 * level
    lab[..., 2] -= 3 * level
    out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    out = (255.0 * (out / 255.0) ** (1.0 + 0.1 * level)).astype(np.uint8)
    return cv2.GaussianBlur(out, (0, 0), 0.5 * level)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pbc")
    ap.add_argument("--levels", default="0,1,2,3")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model = hiercell.load(args.model, precision="auto")
    rates = model.hierarchy.reviewer.novel_rates()
    test = [s for s in read_dataset(args.pbc) if s.split == "test" and s.main is not None]
    y = np.array([s.main for s in test])
    images = [cv2.cvtColor(cv2.imread(str(s.path)), cv2.COLOR_BGR2RGB) for s in test]
    print("| level | score / expected (whole split) | 50-cell folders warned | stage 1 unaligned "
          "| stage 1 aligned on 200 |")
    print("|---|---|---|---|---|")
    for level in map(float, args.levels.split(",")):
        X = np.concatenate([model.features([shifted(im, level) for im in images[k:k + 64]])
                            for k in range(0, len(images), 64)]).astype(np.float32)
        novelty, answers = folder_novelty(model, X)
        whole = domain_shift(novelty, answers, rates)
        rng = np.random.default_rng(0)
        warned = 0
        for _ in range(40):
            rows = rng.choice(len(y), 50, replace=False)
            warned += domain_shift([novelty[i] for i in rows], [answers[i] for i in rows],
                                   rates)["warning"]
        aligned = align_model(model, X[np.sort(rng.choice(len(y), 200, replace=False))])
        after = np.array([d.main for d in aligned.hierarchy.decide(X)[1]])
        print(f"| {level:g} | {whole['score']:.3f} / {whole['expected']:.3f} "
              f"({'warns' if whole['warning'] else 'no warning'}) | {warned} of 40 | "
              f"{np.mean(np.array(answers) == y):.4f} | {np.mean(after == y):.4f} |", flush=True)


if __name__ == "__main__":
    main()
