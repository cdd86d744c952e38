#!/usr/bin/env python
"""PBC's own cells made to look like other labs' crops: smaller, blurred, tightly cropped.

    python docs/experiments/pbc_lymphocytes_degraded.py   # paths below: ../shared as /work/shared

Companion to ``lymphocytes_colour_probe.py``: is it the other labs' image size, blur or
tight crops that loses their lymphocytes? Every 8th PBC test image (428) is
downscaled (0.6, 0.47 = Jiangxi's 120 px, 0.3), blurred (Gaussian sigma 1.5, 3) or
cropped to a square of 2.1, 1.47 or 1.2 cell diameters around the cell (Jiangxi's and
BCCD's crops are about 2.1 and 1.5); stage-1 accuracy as routed (in-lab gate and all),
the share of cells the in-lab gate passes, and the main (augmented) stage 1 alone with
its lymphocyte recall. Measured (OpenVINO bfloat16):

| change | routed accuracy | in-lab share | main stage 1 accuracy | its lymphocyte recall |
|---|---|---|---|---|
| none | 0.991 | 0.94 | 0.977 | 0.93 |
| downscaled 0.6 / 0.47 / 0.3 | 0.988 / 0.991 / 0.979 | 0.93 / 0.91 / 0.77 | 0.981 / 0.981 / 0.963 | 0.93 / 0.93 / 0.97 |
| blurred 1.5 / 3 | 0.981 / 0.860 | 0.76 / 0.03 | 0.958 / 0.855 | 0.97 / 0.90 |
| cropped 2.1 / 1.47 / 1.2 diameters | 0.984 / 0.972 / 0.960 | 0.94 / 0.57 / 0.05 | 0.981 / 0.967 / 0.960 | 0.93 / 0.93 / 0.93 |

PBC's lymphocytes stay lymphocytes (0.90-0.97) under every change, so what the model
misses about other labs' lymphocytes is neither their size, blur, crop nor colour
(``lymphocytes_colour_probe.py``): it is in the cells or stain themselves, which needs
those labs' cells to learn (``hiercell adapt``: docs/adapt.md).
"""

import numpy as np
import cv2

import hiercell
from hiercell.data import read_dataset
from hiercell.framing import locate_cell
from hiercell.hierarchy import MAIN_CLASSES
from hiercell.io import try_load_image

C = np.array(MAIN_CLASSES)


def crop(rgb, framing, k):
    """A square of ``k`` cell diameters around the cell (the image if it is smaller)."""
    if not np.isfinite(framing.diameter):
        return rgb
    side = int(round(framing.diameter * k))
    h, w = rgb.shape[:2]
    if side >= min(h, w):
        return rgb
    cx, cy = framing.centre
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return rgb[y0:y0 + side, x0:x0 + side]


def down(f):
    return lambda x, _: cv2.resize(x, (round(x.shape[1] * f), round(x.shape[0] * f)),
                                   interpolation=cv2.INTER_AREA)


def main():
    model = hiercell.load(None, precision="auto")
    H = model.hierarchy
    S = [x for x in read_dataset("/work/shared/data/pbc") if x.split == "test"][::8]
    imgs = [try_load_image(x.path)[0] for x in S]
    y = np.array([x.main for x in S])
    frames = [locate_cell(i) for i in imgs]
    changes = {"none": lambda x, _: x, "down 0.6": down(0.6), "down 0.47": down(0.47),
               "down 0.3": down(0.3),
               "blur 1.5": lambda x, _: cv2.GaussianBlur(x, (0, 0), 1.5),
               "blur 3": lambda x, _: cv2.GaussianBlur(x, (0, 0), 3),
               "crop 2.1": lambda x, f: crop(x, f, 2.1), "crop 1.47": lambda x, f: crop(x, f, 1.47),
               "crop 1.2": lambda x, f: crop(x, f, 1.2)}
    for name, change in changes.items():
        X = model.features([change(i, f) for i, f in zip(imgs, frames)])
        routed = C[H._stage_probas(X)[0].argmax(1)]
        main_stage = np.array([str(H.stage1.classes_[j])
                               for j in H.stage1.predict_outputs(X).proba.argmax(1)])
        ly = y == "lymphocyte"
        print(f"{name:10s} routed {np.mean(routed == y):.3f} in-lab {H.inlab_rows(X).mean():.2f} "
              f"main {np.mean(main_stage == y):.3f} LY {np.mean(main_stage[ly] == 'lymphocyte'):.2f}",
              flush=True)


if __name__ == "__main__":
    main()
