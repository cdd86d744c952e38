"""Image -> network input: the one place every path goes through.

:func:`prepare_batch` turns decoded RGB images of any size into the square
``uint8`` batch the VGG16 trunk sees: optional masking by the segmentation
module, then padding to a square and resizing to ``input_size``. Classifying,
:meth:`~hiercell.model.ImageClassifier.predict`, evaluation, both training
recipes, the ablation and Grad-CAM all call it, so a change here (e.g. a
per-bundle colour normalisation) reaches all of them.

``config`` is the bundle's ``"preprocess"`` entry of ``bundle.json`` (a dict);
``None`` or ``{}`` is the behaviour of every bundle so far. No option is
defined yet: the hook exists so that one can be added in one place.
"""

from __future__ import annotations

import cv2
import numpy as np

from .io import check_rgb_image


def to_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pad ``rgb`` (H, W, 3) to a square by edge replication, then resize to ``size``."""
    h, w = rgb.shape[:2]
    if h != w:
        d = abs(h - w)
        a, b = d // 2, d - d // 2
        pad = ((a, b), (0, 0)) if h < w else ((0, 0), (a, b))
        rgb = cv2.copyMakeBorder(rgb, *pad[0], *pad[1], cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def check_config(config) -> dict:
    """The preprocessing options of ``config`` (``None`` -> ``{}``); unknown keys are an error."""
    config = dict(config or {})
    if config:
        raise ValueError(f"unknown preprocessing options {sorted(config)}; this hiercell "
                         "version defines none")
    return config


def prepare_batch(images, input_size: int, masked: bool = False, config=None) -> np.ndarray:
    """RGB uint8 images (a list of ``(H, W, 3)`` of any sizes, or an ``(n, H, W, 3)`` array)
    -> ``(n, input_size, input_size, 3)`` uint8: masked if ``masked``, square, resized.

    Raises ``TypeError``/``ValueError`` for an input that is not an RGB uint8 image of a
    usable size (:func:`hiercell.io.check_rgb_image`).
    """
    check_config(config)
    out = np.zeros((len(images), input_size, input_size, 3), np.uint8)
    for i, rgb in enumerate(images):
        check_rgb_image(rgb, f"image {i}")
        if masked:
            from .segmentation import segment

            rgb = segment(rgb).masked_image
        out[i] = to_square(rgb, input_size)
    return out
