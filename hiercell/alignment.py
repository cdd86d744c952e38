"""Align a model to a new lab from unlabelled cells: shift the lab's trunk features.

Another lab's stain, camera and optics move the whole cloud of VGG16 block-4
features. Shifting each of the 512 channels of a lab's ``block4_pool`` maps
by a constant undoes much of that move without a label (a domain-level mean
alignment, as AdaBN does for batch-norm networks). The constant is the
difference between the lab's mean and what the training lab's mean would be
*with the same mix of cell types*: the mix is estimated from the calibrated
SVM probabilities of the model's own stage 1 on the shifted cells, averaged, a few
rounds). Without that correction a folder of training-lab monocytes
alone was shifted onto the all-class mean and lost 12 points; with it, 1.

Measured with the bundled model (``bench/bench_align.py``, docs/align.md): stage-1
accuracy 0.348 -> 0.610 on bccd351 and 0.423 -> 0.567 on jtsc300; the PBC test split
0.978, aligned on PBC val too (its cells keep the in-lab stage 1).

The shift is fit once per lab (``hiercell align FOLDER --out BUNDLE``) on a
few hundred of its cells, and then applied to every cell alike. Shifting the
variances as well, or block5's activations too, did worse.

:class:`LabAlignment` is a scikit-learn style transformer on trunk maps
``(n, h, w, c)`` float32: ``fit`` learns the lab's shift, ``transform`` applies
it (and clips at 0, as the ReLU maps are). Unfitted, it is the identity.
"""

from __future__ import annotations

import numpy as np


class LabAlignment:
    """Per-channel shift of trunk maps from a lab's mean onto the training lab's.

    Parameters
    ----------
    reference_mean : array ``(c,)``
        The training lab's mean of each trunk channel (over cells and positions).
    class_means : array ``(k, c)`` or None
        The same per class (``classes``); with them, :meth:`fit` compares the lab
        with the training lab at the lab's own mix of cell types.
    classes : sequence of k str or None

    Attributes (after :meth:`fit`)
    ------------------------------
    lab_mean_ : ``(c,)`` float32, the new lab's channel means.
    target_mean_ : ``(c,)`` float32, the training lab's means at the lab's class mix.
    class_mix_ : ``(k,)`` float32 or None, the lab's estimated class mix.
    n_cells_ : int, how many of its cells they come from.
    """

    #: Fewer cells than this give a noisy mean: :meth:`fit` refuses them.
    MIN_CELLS = 20
    #: Rounds of re-estimating the class mix in :meth:`fit`.
    MIX_ROUNDS = 3

    def __init__(self, reference_mean, class_means=None, classes=None):
        self.reference_mean = np.asarray(reference_mean, dtype=np.float32)
        self.class_means = None if class_means is None else np.asarray(class_means, np.float32)
        self.classes = None if classes is None else np.asarray(classes).astype(str)
        if (self.class_means is None) != (self.classes is None) or (
                self.class_means is not None and self.class_means.shape
                != (len(self.classes), len(self.reference_mean))):
            raise ValueError("class_means must be (len(classes), channels), with classes")
        self.lab_mean_ = self.target_mean_ = self.class_mix_ = None
        self.n_cells_ = 0

    def unfitted(self) -> "LabAlignment":
        """A new, unfitted alignment with this one's training-lab reference."""
        return LabAlignment(self.reference_mean, self.class_means, self.classes)

    @property
    def fitted(self) -> bool:
        return self.lab_mean_ is not None

    def fit(self, maps, predict_proba=None) -> "LabAlignment":
        """Learn the lab's shift from its trunk maps ``(n, h, w, c)``.

        ``predict_proba``: shifted maps -> class probabilities ``(n, k)`` over
        :attr:`classes` (the model's stage-1 SVM's); with it and :attr:`class_means`, the
        target is the training lab's mean at the lab's estimated class mix
        (:data:`MIX_ROUNDS` rounds), else its overall mean.
        """
        maps = np.asarray(maps)
        if maps.ndim != 4 or maps.shape[-1] != len(self.reference_mean):
            raise ValueError(f"trunk maps of shape (n, h, w, {len(self.reference_mean)}) "
                             f"expected, got {maps.shape}")
        if len(maps) < self.MIN_CELLS:
            raise ValueError(f"{len(maps)} cells are too few to align to a lab; give at "
                             f"least {self.MIN_CELLS} (a few hundred from several slides)")
        self.lab_mean_ = maps.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        self.target_mean_ = self.reference_mean
        self.class_mix_ = None
        self.n_cells_ = int(len(maps))
        if self.class_means is not None and predict_proba is not None:
            for _ in range(self.MIX_ROUNDS):
                mix = np.asarray(predict_proba(self.transform(maps)), np.float64).mean(axis=0)
                self.class_mix_ = (mix / max(mix.sum(), 1e-12)).astype(np.float32)
                self.target_mean_ = (self.class_mix_ @ self.class_means).astype(np.float32)
        return self

    def transform(self, maps) -> np.ndarray:
        """``maps`` shifted by the lab's shift (clipped at 0); unchanged when unfitted."""
        if not self.fitted:
            return maps
        shift = (self.target_mean_ - self.lab_mean_).astype(np.float32)
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

    @classmethod
    def from_training(cls, maps, rows, labels) -> "LabAlignment":
        """The unfitted alignment of a model trained on ``maps[rows]`` labelled ``labels``
        (main classes): overall and per-class channel means."""
        rows, labels = np.asarray(rows), np.asarray(labels).astype(str)
        classes = np.unique(labels)
        return cls(cls.reference(maps, rows),
                   np.stack([cls.reference(maps, rows[labels == c]) for c in classes]), classes)

    # -- persistence (alignment.npz of a bundle) ---------------------------------
    def to_arrays(self) -> dict:
        out = {"reference_mean": self.reference_mean}
        if self.class_means is not None:
            out.update(class_means=self.class_means, classes=self.classes)
        if self.fitted:
            out.update(lab_mean=self.lab_mean_, target_mean=self.target_mean_,
                       n_cells=np.array(self.n_cells_))
            if self.class_mix_ is not None:
                out["class_mix"] = self.class_mix_
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "LabAlignment":
        new = cls(arrays["reference_mean"],
                  arrays["class_means"] if "class_means" in arrays else None,
                  arrays["classes"] if "classes" in arrays else None)
        if "lab_mean" in arrays:
            new.lab_mean_ = np.asarray(arrays["lab_mean"], dtype=np.float32)
            new.target_mean_ = np.asarray(  # bundles of the first, plain-mean version
                arrays["target_mean"] if "target_mean" in arrays else new.reference_mean,
                dtype=np.float32)
            new.class_mix_ = (np.asarray(arrays["class_mix"], np.float32)
                              if "class_mix" in arrays else None)
            new.n_cells_ = int(arrays["n_cells"])
        return new


def align_model(model, maps):
    """A copy of ``model`` (an :class:`~hiercell.model.ImageClassifier` whose hierarchy has a
    :class:`LabAlignment`) aligned to the lab whose cells have trunk maps ``maps``; the
    lab's class mix is estimated with the calibrated SVM of the model's stage 1 (a stage
    that mixes in its network head's sharper softmax still answers with the mix;
    estimating with it cost BCCD 1.2 points at 0.5, docs/experiments/network_weight.py)."""
    import copy

    alignment = getattr(model.hierarchy, "alignment", None)
    if alignment is None:
        raise ValueError("this model carries no training-lab reference to align to "
                         "(a bundle made before lab alignment); add one with "
                         "tools/add_lab_reference.py, or retrain it")
    if model.hierarchy.adapted:
        raise ValueError("this model is adapted to a lab already (hiercell adapt); align "
                         "its base model instead")
    stage = model.hierarchy.stage1
    proba = None
    if alignment.classes is not None:
        have = [str(c) for c in stage.classes_]
        missing = sorted(set(alignment.classes) - set(have))
        if missing:
            raise ValueError(f"the alignment reference has classes {missing} that stage 1 "
                             f"does not know")
        order = [have.index(c) for c in alignment.classes]

        def proba(shifted):  # the calibrated SVM's: the class mix is their mean
            return stage.svm_proba(shifted)[:, order]

    new = copy.copy(model)
    new.hierarchy = copy.copy(model.hierarchy)
    new.hierarchy.alignment = alignment.unfitted().fit(maps, proba)
    new.info = copy.deepcopy(model.info)
    return new


#: Automatic alignment of a folder (classify, evaluate): at least this many readable
#: cells (the fewest an alignment is fit on: on random folders of 20 of another lab's
#: cells it did as well as on 50, and no random folder of 20 PBC test cells set the
#: domain check off; bench/bench_small_folders.py), of which at most AUTO_SAMPLE (a fixed
#: draw) are checked and aligned on.
AUTO_MIN_CELLS = LabAlignment.MIN_CELLS
AUTO_SAMPLE = 200


def can_align(model) -> bool:
    """Whether ``model`` has a training-lab reference, is not aligned yet, and is not adapted."""
    hierarchy = getattr(model, "hierarchy", None)
    alignment = getattr(hierarchy, "alignment", None)
    return (alignment is not None and not alignment.fitted
            and not getattr(hierarchy, "adapted", False) and hierarchy.reviewer is not None)


def auto_sample(paths, n=None) -> list:
    """A fixed draw of at most ``n`` (default :data:`AUTO_SAMPLE`) of ``paths`` (the same
    for the same set of paths, in any order: every share of a sharded run picks the same
    cells)."""
    n = AUTO_SAMPLE if n is None else n
    keys = sorted(str(p) for p in paths)
    pick = np.sort(np.random.default_rng(0).permutation(len(keys))[:n])
    return [keys[i] for i in pick]


def auto_align_set(model, maps, paths):
    """:func:`auto_align` on the rows of trunk maps ``maps`` (one per path of ``paths``)
    that :func:`auto_sample` draws from ``paths``: how ``hiercell classify`` aligns a
    folder, for a set whose maps are already computed (``hiercell evaluate``, benches)."""
    row = {str(p): i for i, p in enumerate(paths)}
    if len(row) != len(maps):
        raise ValueError(f"{len(maps)} rows of maps for {len(row)} distinct paths")
    drawn = [row[p] for p in auto_sample(list(row))]
    return auto_align(model, np.asarray(maps)[drawn].astype(np.float32))


def folder_novelty(model, maps):
    """``(novelty percentiles, answered main classes)`` of trunk maps ``maps``: what the
    folder domain check (:func:`hiercell.review.domain_shift`) reads."""
    from .review import review_inputs

    p1, decisions = model.hierarchy.decide(maps)
    novelty = model.hierarchy.review_scores(maps, p1, decisions)[2]
    return list(novelty), list(review_inputs(decisions)["answers"])


def folder_check(model, maps, checked=None) -> dict | None:
    """The folder domain check (:func:`hiercell.review.domain_shift`) of trunk maps
    ``maps`` as classify runs it: their novelty and answers against the model's in-lab
    novel share per class; ``checked``: :func:`folder_novelty` of ``maps``, when already
    known (from the cells' records: :func:`hiercell.review.records_novelty`). ``None``
    for a model without a review scorer."""
    from .review import domain_shift

    reviewer = model.hierarchy.reviewer
    if reviewer is None:
        return None
    novelty, classes = folder_novelty(model, maps) if checked is None else checked
    return domain_shift(novelty, classes, reviewer.novel_rates())


def auto_align(model, maps, checked=None):
    """``(model, record)``: ``model`` aligned on ``maps`` (a folder's cells) when the
    folder domain check warns on them, else ``model`` itself; ``record`` (JSON-ready)
    says what was done and why. ``checked``: as :func:`folder_check` takes it."""
    record = {"applied": False, "n_cells": int(len(maps))}
    if not can_align(model):
        return model, {**record, "message": "not aligned: the model has no training-lab "
                                            "reference or is already aligned or adapted"}
    if len(maps) < AUTO_MIN_CELLS:
        return model, {**record, "message": f"not aligned: fewer than {AUTO_MIN_CELLS} "
                                            "readable images"}
    check = folder_check(model, maps, checked)  # can_align: the model has a scorer
    record.update(domain_score=check["score"], domain_expected=check["expected"],
                  domain_warning=check["warning"])
    if not check["warning"]:
        return model, {**record, "message": "not aligned: the images look like the "
                                            "training data"}
    aligned = align_model(model, maps)
    fitted = aligned.hierarchy.alignment
    mix = ({} if fitted.class_mix_ is None else
           {c: round(float(v), 4) for c, v in zip(fitted.classes, fitted.class_mix_)})
    return aligned, {**record, "applied": True, "estimated_class_mix": mix,
                     "message": f"aligned the model to these images without labels (on {len(maps)} "
                                "of them; see `hiercell align`)"}
