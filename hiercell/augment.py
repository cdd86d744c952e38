"""Image-space augmentation for training: other labs' framing, stain, optics and files.

:func:`random_view` draws one augmented canonical view of a training image
(see :mod:`hiercell.framing`): a tight crop around the cell as some exporters
make (then padded back with the background colour by the canonical frame),
scale jitter, any rotation, flips and shifts; then stain and camera changes
(hue, saturation, brightness, contrast, gamma, channel gains, grey), blur,
noise and JPEG re-compression. Pure functions of an RGB ``uint8`` array and a
``numpy.random.Generator``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .framing import Framing, canonical_view

#: Changes whenever the augmentation changes: part of the feature-cache key of views.
AUGMENT_VERSION = 1


def _tight_crop(rgb, framing: Framing, rng):
    """A square crop of side 1.05-1.7 cell diameters around the cell, and its framing."""
    h, w = rgb.shape[:2]
    if not np.isfinite(framing.diameter):
        return rgb, framing
    side = int(round(framing.diameter * rng.uniform(1.05, 1.7)))
    if side >= min(h, w) or side < 16:
        return rgb, framing
    cx, cy = framing.centre
    x0 = int(np.clip(round(cx - side / 2 + rng.uniform(-0.1, 0.1) * side), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2 + rng.uniform(-0.1, 0.1) * side), 0, h - side))
    crop = rgb[y0:y0 + side, x0:x0 + side]
    return crop, Framing((cx - x0, cy - y0), framing.diameter, framing.background)


def colour_jitter(rgb: np.ndarray, rng) -> np.ndarray:
    """Stain and camera colour changes of an RGB ``uint8`` image (uint8 out)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-25, 25)) % 180
    hsv[..., 1] *= rng.uniform(0.55, 1.6)
    hsv[..., 2] *= rng.uniform(0.85, 1.12)
    x = cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)
    x = x.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.75, 1.35)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.3) + mean
    x *= rng.uniform(0.92, 1.08, size=3)
    if rng.random() < 0.1:
        x = np.repeat(x.mean(2, keepdims=True), 3, axis=2)
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def optics_jitter(rgb: np.ndarray, rng) -> np.ndarray:
    """Resolution loss, blur, sensor noise and JPEG re-compression (each with
    probability 0.3-0.45)."""
    x = rgb
    if rng.random() < 0.3:  # a coarser camera: lose resolution, then back to size
        h, w = x.shape[:2]
        f = rng.uniform(0.35, 0.9)
        small = cv2.resize(x, (max(8, round(w * f)), max(8, round(h * f))),
                           interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.4:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.6))
    if rng.random() < 0.4:
        noise = rng.normal(0, rng.uniform(2, 9), x.shape).astype(np.float32)
        x = np.clip(x.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.45:
        ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 92))])
        x = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return x


def random_view(rgb: np.ndarray, framing: Framing, size: int, rng, **frame) -> np.ndarray:
    """One augmented ``(size, size, 3)`` uint8 canonical view of ``rgb``.

    ``frame``: ``target_diameter`` / ``zoom_range`` of :func:`~hiercell.framing.frame_matrix`.
    With a ``framing`` whose diameter is ``nan`` the view is a plain resize plus the
    same jitter.
    """
    if rng.random() < 0.5:
        rgb, framing = _tight_crop(rgb, framing, rng)
    view = canonical_view(rgb, size, framing,
                          zoom_jitter=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
                          angle=float(rng.uniform(0, 360)),
                          shift=tuple(rng.uniform(-0.04, 0.04, size=2)), **frame)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return optics_jitter(colour_jitter(np.ascontiguousarray(view), rng), rng)
