"""Align a model to a new lab from unlabelled cells: shift the lab's trunk features.

Another lab's stain, camera and optics move the whole cloud of VGG16 block-4
features. Shifting each of the 512 channels of a lab's ``block4_pool`` maps
by a constant, so that their mean over the lab's cells equals the mean over
the training lab's cells, undoes much of that move without a label (a
domain-level mean alignment, as AdaBN does for batch-norm networks). Measured
with the bundled model (``bench/bench_align.py``): stage-1 accuracy 0.33 ->
0.53 on bccd351 and 0.35 -> 0.48 on jtsc300, PBC unchanged; 50 cells of a
lab did as well as all of them. Shifting the variances as well, or block5's
activations too, did worse.

The shift is fit once per lab, on a few hundred of its cells from several
slides (``hiercell align FOLDER --out BUNDLE``), not per folder: a folder of
one patient has its own class mix, and its mean would carry it.

:class:`LabAlignment` is a scikit-learn style transformer on trunk maps
``(n, h, w, 512)`` float32: ``fit`` learns the lab's channel means,
``transform`` shifts them onto ``reference_mean`` (and clips at 0, as the
ReLU maps are). Unfitted, it is the identity.
"""

from __future__ import annotations

import numpy as np


class LabAlignment:
    """Per-channel shift of trunk maps from a lab's mean onto the training lab's.

    Parameters
    ----------
    reference_mean : array ``(c,)``
        The training lab's mean of each trunk channel (over cells and positions).

    Attributes (after :meth:`fit`)
    ------------------------------
    lab_mean_ : ``(c,)`` float32, the new lab's channel means.
    n_cells_ : int, how many of its cells they come from.
    """

    #: Fewer cells than this give a noisy mean: :meth:`fit` refuses them.
    MIN_CELLS = 20

    def __init__(self, reference_mean):
        self.reference_mean = np.asarray(reference_mean, dtype=np.float32)
        self.lab_mean_ = None
        self.n_cells_ = 0

    @property
    def fitted(self) -> bool:
        return self.lab_mean_ is not None

    def fit(self, maps) -> "LabAlignment":
        """Learn the lab's channel means from its trunk maps ``(n, h, w, c)``."""
        maps = np.asarray(maps)
        if maps.ndim != 4 or maps.shape[-1] != len(self.reference_mean):
            raise ValueError(f"trunk maps of shape (n, h, w, {len(self.reference_mean)}) "
                             f"expected, got {maps.shape}")
        if len(maps) < self.MIN_CELLS:
            raise ValueError(f"{len(maps)} cells are too few to align to a lab; give at "
                             f"least {self.MIN_CELLS} (a few hundred from several slides)")
        self.lab_mean_ = maps.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        self.n_cells_ = int(len(maps))
        return self

    def transform(self, maps) -> np.ndarray:
        """``maps`` shifted onto the reference means (clipped at 0); unchanged when unfitted."""
        if not self.fitted:
            return maps
        shift = (self.reference_mean - self.lab_mean_).astype(np.float32)
        return np.maximum(np.asarray(maps, dtype=np.float32) + shift, 0.0)

    @staticmethod
    def reference(maps, rows=None, chunk=1024) -> np.ndarray:
        """The channel means ``(c,)`` float32 of trunk maps ``(n, h, w, c)`` (only ``rows``
        when given), a training lab's ``reference_mean``; ``chunk`` rows at a time."""
        rows = np.arange(len(maps)) if rows is None else np.asarray(rows)
        if len(rows) == 0:
            raise ValueError("no cells to take the reference mean from")
        total = np.zeros(maps.shape[-1], dtype=np.float64)
        for k in range(0, len(rows), chunk):
            total += np.asarray(maps[rows[k:k + chunk]], dtype=np.float64).sum(axis=(0, 1, 2))
        return (total / (len(rows) * maps.shape[1] * maps.shape[2])).astype(np.float32)

    # -- persistence (alignment.npz of a bundle) ---------------------------------
    def to_arrays(self) -> dict:
        out = {"reference_mean": self.reference_mean}
        if self.fitted:
            out.update(lab_mean=self.lab_mean_, n_cells=np.array(self.n_cells_))
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "LabAlignment":
        new = cls(arrays["reference_mean"])
        if "lab_mean" in arrays:
            new.lab_mean_ = np.asarray(arrays["lab_mean"], dtype=np.float32)
            new.n_cells_ = int(arrays["n_cells"])
        return new


def align_model(model, maps):
    """A copy of ``model`` (an :class:`~hiercell.model.ImageClassifier` whose hierarchy has a
    :class:`LabAlignment`) aligned to the lab whose cells have trunk maps ``maps``."""
    import copy

    alignment = getattr(model.hierarchy, "alignment", None)
    if alignment is None:
        raise ValueError("this model carries no training-lab reference to align to "
                         "(a bundle made before lab alignment); add one with "
                         "tools/add_lab_reference.py, or retrain it")
    if model.hierarchy.adapted:
        raise ValueError("this model is adapted to a lab already (hiercell adapt); align "
                         "its base model instead")
    new = copy.copy(model)
    new.hierarchy = copy.copy(model.hierarchy)
    new.hierarchy.alignment = LabAlignment(alignment.reference_mean).fit(maps)
    new.info = copy.deepcopy(model.info)
    return new
