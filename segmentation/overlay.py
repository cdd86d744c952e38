"""Contour overlays of cell and nucleus masks, for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import _check_mask, _check_rgb

#: RGB colours of the drawn contours.
CELL_COLOUR = (0, 200, 0)
NUCLEUS_COLOUR = (0, 0, 255)


def draw_overlay(rgb: np.ndarray, cell: np.ndarray, nucleus: np.ndarray | None = None,
                 thickness: int | None = None) -> np.ndarray:
    """Copy of RGB uint8 ``(H, W, 3)`` ``rgb`` with the outlines of ``cell``
    (green) and ``nucleus`` (blue; bool ``(H, W)`` masks) drawn on it.

    ``thickness`` defaults to ~1 % of the image side (at least 1 px). Raises
    ``ValueError`` on an image that is not RGB uint8 or a mask of another shape."""
    _check_rgb(rgb)
    cell = _check_mask(cell, rgb.shape[:2], "cell")
    nucleus = None if nucleus is None else _check_mask(nucleus, rgb.shape[:2], "nucleus")
    out = np.array(rgb, dtype=np.uint8, order="C")  # a copy
    if thickness is None:
        thickness = max(1, round(max(rgb.shape[:2]) / 128))
    for mask, colour in ((cell, CELL_COLOUR), (nucleus, NUCLEUS_COLOUR)):
        if mask is None:
            continue
        cs, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, colour, thickness, lineType=cv2.LINE_AA)
    return out
