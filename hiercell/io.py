"""Image loading: any supported file -> RGB uint8 array (placeholder, extended by the data layer)."""

from __future__ import annotations

import os

import cv2
import numpy as np


class ImageLoadError(ValueError):
    """A file could not be read as an image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_image(path) -> np.ndarray:
    """Read ``path`` as an RGB ``uint8`` array of shape ``(H, W, 3)``."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror})") from exc
    if data.size == 0:
        raise ImageLoadError(path, "empty file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageLoadError(path, "not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
