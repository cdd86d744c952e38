"""Lab-independent framing of a cell image: scale, centre and white balance.

Other labs' cameras frame a cell differently (PBC: the cell's diameter is
about 0.39 of the image side; BCCD crops 0.7; Jiangxi Tecom 0.5-0.6) and
light the smear differently (white, beige, yellow backgrounds). The network
should see every cell the same way, so every image -- in training and at
prediction -- is put in a *canonical frame* before the VGG16 trunk:

* the central cell is found with :func:`hiercell.segmentation.cell_mask`'s
  machinery (:func:`hiercell.segmentation.segment`), and the image is scaled
  so that the cell's equivalent diameter is ``target_diameter`` of the output
  side, centred on the cell (zoom factor clipped to ``zoom_range``; where no
  central cell is found the image is only resized);
* what the zoom-out uncovers is filled with the image's background colour;
* the background colour is mapped to :data:`REFERENCE_BACKGROUND` (a diagonal
  white balance), so a yellow or blue-grey field looks like PBC's.

All functions are pure functions on RGB ``uint8`` arrays ``(H, W, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Background (plasma) colour of PBC images, RGB: white balance maps every
#: image's background to it.
REFERENCE_BACKGROUND = np.array([250.0, 226.0, 204.0], dtype=np.float32)
#: Equivalent diameter of the central cell in the canonical frame, as a
#: fraction of the side (the median over PBC's classes).
TARGET_DIAMETER = 0.40
#: Limits of the zoom factor (output scale / input scale).
ZOOM_RANGE = (0.35, 3.0)


@dataclass(frozen=True)
class Framing:
    """Where the cell is and how to frame it: centre ``(x, y)`` in pixels,
    equivalent ``diameter`` in pixels (``nan`` when no central cell was found),
    ``background`` RGB float32."""

    centre: tuple
    diameter: float
    background: np.ndarray


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The plasma/background colour of an RGB ``uint8`` image, ``(3,)`` float32.

    The median colour of the brightest 15 % of pixels (by the sum of the
    channels), on a 64x64 thumbnail.
    """
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA).reshape(-1, 3).astype(np.float32)
    lum = small.sum(1)
    bright = small[lum >= np.percentile(lum, 85)]
    return np.median(bright, axis=0).astype(np.float32)


def locate_cell(rgb: np.ndarray, seg=None) -> Framing:
    """Centre, equivalent diameter and background colour of the image's central cell;
    ``seg``: ``segment(rgb)`` when the caller already has it."""
    from .segmentation import segment

    h, w = rgb.shape[:2]
    bg = background_colour(rgb)
    seg = seg if seg is not None else segment(rgb)
    mask = seg.cell_mask
    area = float(np.count_nonzero(mask))
    if seg.reason in ("empty", "no_central_object") or area < 16:
        return Framing(((w - 1) / 2.0, (h - 1) / 2.0), float("nan"), bg)
    ys, xs = np.nonzero(mask)
    return Framing((float(xs.mean()), float(ys.mean())), float(2.0 * np.sqrt(area / np.pi)), bg)


def frame_matrix(framing: Framing, shape, size: int, target_diameter=TARGET_DIAMETER,
                 zoom_range=ZOOM_RANGE, zoom_jitter=1.0, angle=0.0, shift=(0.0, 0.0)) -> np.ndarray:
    """The 2x3 affine matrix mapping the input image to the ``size`` x ``size`` canonical frame.

    ``zoom_jitter``, ``angle`` (degrees) and ``shift`` (fractions of ``size``)
    are for augmentation; the defaults give the canonical frame.
    """
    h, w = shape[:2]
    side = float(max(h, w))
    if np.isfinite(framing.diameter) and framing.diameter > 0:
        zoom = np.clip(target_diameter * side / framing.diameter, *zoom_range)
        cx, cy = framing.centre
    else:
        zoom, (cx, cy) = 1.0, ((w - 1) / 2.0, (h - 1) / 2.0)
    scale = zoom * zoom_jitter * size / side
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += (size - 1) / 2.0 - cx + shift[0] * size
    m[1, 2] += (size - 1) / 2.0 - cy + shift[1] * size
    return m


def white_balance(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Scale each channel so that ``background`` becomes :data:`REFERENCE_BACKGROUND`; uint8 out."""
    gain = REFERENCE_BACKGROUND / np.maximum(np.asarray(background, np.float32), 1.0)
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain[None, :], 0, 255).astype(np.uint8)
    out = np.empty(rgb.shape, np.uint8)
    for c in range(3):
        out[..., c] = lut[rgb[..., c], c]
    return out


def canonical_view(rgb: np.ndarray, size: int, framing: Framing | None = None, **kwargs) -> np.ndarray:
    """RGB ``uint8`` ``(H, W, 3)`` -> the ``(size, size, 3)`` canonical frame (uint8).

    ``kwargs`` go to :func:`frame_matrix` (augmentation only).
    """
    framing = framing if framing is not None else locate_cell(rgb)
    m = frame_matrix(framing, rgb.shape, size, **kwargs)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.8:  # shrink with area averaging first: warpAffine alone would alias
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[0, :2] *= w / small.shape[1]
        m[1, :2] *= h / small.shape[0]
        rgb = small
    border = tuple(float(v) for v in framing.background)
    out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return white_balance(out, framing.background)
