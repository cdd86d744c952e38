"""Masks of the centred cell and its nucleus (``hiercell.segmentation``).

Pure functions on RGB ``uint8`` arrays of shape ``(H, W, 3)``; masks are
``bool`` ``(H, W)``.  See :mod:`hiercell.segmentation.masks` for the method.
"""

from .masks import (
    REASONS,
    VERSION,
    SegmentationResult,
    apply_mask,
    cell_mask,
    nucleus_mask,
    segment,
)
from .overlay import draw_overlay

__all__ = [
    "REASONS",
    "VERSION",
    "SegmentationResult",
    "apply_mask",
    "cell_mask",
    "draw_overlay",
    "nucleus_mask",
    "segment",
]
