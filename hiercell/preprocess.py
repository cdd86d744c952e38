"""Image -> network input: the one place every path goes through.

:func:`prepare_batch` turns decoded RGB images of any size into the square
``uint8`` batch the VGG16 trunk sees: optional masking by the segmentation
module, then padding to a square and resizing to ``input_size``. Classifying,
:meth:`~hiercell.model.ImageClassifier.predict`, evaluation, both training
recipes, the ablation and Grad-CAM all call it, so a change here (e.g. a
per-bundle colour normalisation) reaches all of them.

``config`` is the bundle's ``"preprocess"`` entry of ``bundle.json`` (a dict);
``None`` or ``{}`` is the behaviour of bundles before the canonical frame. Options:

* ``"framing": "canonical"`` -- scale, centre and white-balance every cell the
  same way whatever the camera (:mod:`hiercell.framing`), with
  ``"target_diameter"`` (fraction of the side) and ``"zoom_range"``;
  without it the image is padded to a square and resized.

``augment_view`` (training only) draws one augmented view of an image in the
same frame (:mod:`hiercell.augment`).
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


#: The options of the canonical frame (what ``hiercell train --framing`` records).
CANONICAL = {"framing": "canonical", "target_diameter": 0.40, "zoom_range": [0.35, 3.0]}
_KNOWN = {"framing": ("canonical",), "target_diameter": None, "zoom_range": None}


def check_config(config) -> dict:
    """The preprocessing options of ``config`` (``None`` -> ``{}``); unknown keys or values
    are an error (a model must never run without the preprocessing it was trained with)."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(_KNOWN))
    if unknown:
        raise ValueError(f"unknown preprocessing options {unknown}; this hiercell version "
                         f"knows {sorted(_KNOWN)}")
    if "framing" in config and config["framing"] not in _KNOWN["framing"]:
        raise ValueError(f"unknown framing {config['framing']!r}; this hiercell version "
                         f"knows {_KNOWN['framing']}")
    return config


def _frame_kwargs(config) -> dict:
    return {"target_diameter": float(config.get("target_diameter", CANONICAL["target_diameter"])),
            "zoom_range": tuple(config.get("zoom_range", CANONICAL["zoom_range"]))}


def _framed_input(rgb, masked):
    """``(framing, image)``: where the cell is, and the image itself or its masked
    version; the segmentation runs once for both."""
    from .framing import locate_cell

    seg = None
    if masked:
        from .segmentation import segment

        seg = segment(rgb)
    return locate_cell(rgb, seg), (seg.masked_image if masked else rgb)


def prepare_image(rgb: np.ndarray, input_size: int, masked: bool = False, config=None) -> np.ndarray:
    """One RGB uint8 image ``(H, W, 3)`` -> the ``(input_size, input_size, 3)`` uint8 network input."""
    config = check_config(config)
    check_rgb_image(rgb, "image")
    if config.get("framing") == "canonical":
        from .framing import canonical_view

        framing, rgb = _framed_input(rgb, masked)
        return canonical_view(rgb, input_size, framing, **_frame_kwargs(config))
    if masked:
        from .segmentation import segment

        rgb = segment(rgb).masked_image
    return to_square(rgb, input_size)


def augment_view(rgb: np.ndarray, input_size: int, seed, masked: bool = False,
                 config=None) -> np.ndarray:
    """One augmented training view (uint8, ``(input_size, input_size, 3)``) of ``rgb``
    in the frame ``config`` asks for; ``seed`` seeds :func:`numpy.random.default_rng`."""
    from .augment import random_view

    config = check_config(config)
    check_rgb_image(rgb, "image")
    framing, rgb = _framed_input(rgb, masked)
    if config.get("framing") != "canonical":
        framing = framing.__class__(framing.centre, float("nan"), framing.background)
    return random_view(rgb, framing, input_size, np.random.default_rng(seed),
                       **_frame_kwargs(config))


def prepare_batch(images, input_size: int, masked: bool = False, config=None) -> np.ndarray:
    """RGB uint8 images (a list of ``(H, W, 3)`` of any sizes, or an ``(n, H, W, 3)`` array)
    -> ``(n, input_size, input_size, 3)`` uint8 (see :func:`prepare_image`).

    Raises ``TypeError``/``ValueError`` for an input that is not an RGB uint8 image of a
    usable size (:func:`hiercell.io.check_rgb_image`).
    """
    check_config(config)
    out = np.zeros((len(images), input_size, input_size, 3), np.uint8)
    for i, rgb in enumerate(images):
        check_rgb_image(rgb, f"image {i}")
        out[i] = prepare_image(rgb, input_size, masked, config)
    return out
