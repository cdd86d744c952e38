"""The image-level model: what :func:`hiercell.load` returns.

:class:`ImageClassifier` = the frozen VGG16 trunk + a
:class:`~hiercell.hierarchy.HierarchicalClassifier` over its features, with the
bundle's input size, masking and preprocessing. Its calls take image paths or
RGB ``uint8`` images; every image reaches the network through
:func:`hiercell.preprocess.prepare_batch`.
"""

from __future__ import annotations

import os

import numpy as np

from .backbone import run_trunk
from .features import TrunkConfig
from .io import check_rgb_image, load_image, try_load_image
from .preprocess import prepare_batch
from .records import Prediction, stamp
from .taxonomy import SUB_TO_MAIN


class MaskingError(ValueError):
    """Images were asked for with a masking the model was not trained for."""


def masking_message(trained_masked: bool) -> str:
    """One line: the model's masking, and what to use instead."""
    if trained_masked:
        return ("this model was trained on masked images: drop --no-masked (masked=False), "
                "or use a model trained without --masked (e.g. the bundled default)")
    return ("this model was trained on unmasked images and gives wrong answers on masked "
            "ones: drop --masked (masked=True), or train a masked model with "
            "'hiercell train DATA --masked --out BUNDLE' and pass --model BUNDLE")


def check_masking(model, masked):
    """``masked`` resolved against ``model.masked`` (``None`` = as trained); a
    :class:`MaskingError` when it asks for the other masking."""
    trained = getattr(model, "masked", None)
    if masked is None or trained is None:
        return trained if masked is None else bool(masked)
    if bool(masked) != bool(trained):
        raise MaskingError(masking_message(bool(trained)))
    return bool(masked)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class ImageClassifier:
    """Trunk + hierarchical classifier, on images.

    ``predict`` (labels), ``predict_proba`` (end-to-end probabilities over
    :attr:`classes_`) and ``predict_records`` (one
    :class:`~hiercell.records.Prediction` per image) take image paths or RGB
    uint8 images (an ``(n, H, W, 3)`` array or a list of ``(H, W, 3)`` arrays of
    any size). :meth:`features` gives the trunk features that
    :attr:`hierarchy` works on.

    Parameters
    ----------
    trunk : keras.Model or hiercell.ovnet.Trunk (anything with ``predict_batch``)
        Frozen VGG16 blocks 1-4 (input ``(input_size, input_size, 3)``).
    hierarchy : HierarchicalClassifier
    input_size : int
        Side of the square image the trunk sees.
    masked : bool
        Whether the stages were trained on masked images (the default at predict time).
    preprocess : dict or None
        The bundle's preprocessing options (see :mod:`hiercell.preprocess`).
    info : dict
        The rest of ``bundle.json`` (backbone, training data, metrics, versions and
        any other key), plus ``trunk_sha256`` and ``precision`` when loaded.
    """

    def __copy__(self):
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self):
        raise TypeError("an ImageClassifier is not pickled (its networks are Keras or "
                        "OpenVINO objects): save it with hiercell.bundle.save_bundle(model, "
                        "folder) and load it with hiercell.load(folder)")

    def __init__(self, trunk, hierarchy, input_size=160, masked=False, preprocess=None,
                 info=None):
        self.trunk = trunk
        self.hierarchy = hierarchy
        self.input_size = int(input_size)
        self.masked = bool(masked)
        self.preprocess = preprocess
        self.info = dict(info or {})

    @property
    def classes_(self):
        """The end-to-end classes (see :attr:`HierarchicalClassifier.classes_`)."""
        return self.hierarchy.classes_

    @property
    def stage1(self):
        return self.hierarchy.stage1

    @property
    def stage2(self):
        return self.hierarchy.stage2

    def trunk_config(self) -> TrunkConfig:
        """What this model's trunk features depend on (the feature-cache key)."""
        weights = f"{self.info.get('trunk_sha256', 'unsaved')}:{self.info.get('precision', 'float32')}"
        if self.info.get("engine") == "openvino" and self.info.get("precision") != "int8":
            weights += ":openvino"  # other rounding than Keras': never share a cache
        return TrunkConfig(self.input_size, self.masked, weights, preprocess=self.preprocess)

    def with_review_rate(self, rate) -> "ImageClassifier":
        """A copy whose review flag flags ``rate`` of the training lab's validation cells
        (the bundle's default: its scorer's ``target_rate``, 0.05); see
        :meth:`hiercell.review.ReviewScorer.at_rate`. ``ValueError`` without a review
        scorer or for a rate outside (0, 1)."""
        import copy

        reviewer = getattr(self.hierarchy, "reviewer", None)
        if reviewer is None:
            raise ValueError("this model has no review scorer: a review rate cannot be set")
        new = copy.copy(self)
        new.hierarchy = copy.copy(self.hierarchy)
        new.hierarchy.reviewer = reviewer.at_rate(rate)
        return new

    # -- images -> features ----------------------------------------------------
    def prepare(self, images, masked=None) -> np.ndarray:
        """The uint8 batch the trunk sees (see :func:`hiercell.preprocess.prepare_batch`).

        Either masking is allowed here and in :meth:`features` (research use: the frozen
        trunk is the same); the predicting methods refuse the masking the stages were not
        trained for (:class:`MaskingError`)."""
        masked = self.masked if masked is None else masked
        return prepare_batch(images, self.input_size, masked, self.preprocess)

    def features(self, images, masked=None, batch_size=32) -> np.ndarray:
        """Trunk features ``(n, h, w, 512)`` of RGB uint8 images (any size);
        ``masked=None``: as the model was trained."""
        return self.prepared_features(self.prepare(images, masked), batch_size)

    def prepared_features(self, batch, batch_size=32) -> np.ndarray:
        """Trunk features of a batch :meth:`prepare` made (``(n, S, S, 3)`` uint8)."""
        return run_trunk(self.trunk, batch, batch_size)

    # -- predictions -----------------------------------------------------------
    def predict_records(self, X, top_k=3, masked=None, batch_size=32) -> list:
        """One :class:`~hiercell.records.Prediction` per image of ``X`` (paths or images).

        A path that cannot be read, or an image that cannot be classified, gets a
        record with ``status="error"`` and the reason; the rest go on.
        """
        items = _as_items(X)
        top_k = check_positive_int("top_k", top_k)
        batch_size = check_positive_int("batch_size", batch_size)
        check_masking(self, masked)
        out = []
        for k in range(0, len(items), batch_size):
            loaded = [_load(item) for item in items[k:k + batch_size]]
            good = [(img, name) for img, name, _ in loaded if img is not None]
            try:
                records = self._records([g[0] for g in good], [g[1] for g in good],
                                        top_k, masked) if good else []
            except Exception:  # noqa: BLE001 - find the image at fault, keep the others
                records = [self._record_or_error(img, name, top_k, masked) for img, name in good]
            records = iter(records)
            for img, name, error in loaded:
                out.append(next(records) if img is not None else Prediction.failed(name, error))
        return out

    def _records(self, images, names, top_k, masked):
        return stamp(self.hierarchy.predict_records(self.features(images, masked), names, top_k),
                     self.info)

    def _record_or_error(self, img, name, top_k, masked):
        try:
            return self._records([img], [name], top_k, masked)[0]
        except Exception as exc:  # noqa: BLE001
            return Prediction.failed(name, f"cannot classify: {type(exc).__name__}: {exc}")

    def _batched(self, method, X, masked, batch_size):
        items = _as_items(X)
        batch_size = check_positive_int("batch_size", batch_size)
        check_masking(self, masked)
        return [method(self.features(_images(items[k:k + batch_size]), masked))
                for k in range(0, len(items), batch_size)]

    def predict_proba(self, X, masked=None, batch_size=32):
        """End-to-end probabilities ``(n, 11)`` over :attr:`classes_` of images or paths,
        ``batch_size`` images at a time (an unreadable path raises
        :class:`~hiercell.io.ImageLoadError`)."""
        return np.concatenate(self._batched(self.hierarchy.predict_proba, X, masked, batch_size))

    def predict(self, X, masked=None, batch_size=32):
        """The finest decided label per image, ``batch_size`` images at a time (an
        unreadable path raises :class:`~hiercell.io.ImageLoadError`): a member of
        :attr:`classes_`, or ``neutrophil`` / ``ig`` for a cell whose subclass stage 2
        left open (see :meth:`HierarchicalClassifier.predict`)."""
        return np.concatenate(self._batched(self.hierarchy.predict, X, masked, batch_size))

    def gradcam(self, rgb, class_name=None, masked=None, features=None):
        """Grad-CAM heat map ``(H, W)`` float32 in [0, 1] of stage 1's network head (the
        in-lab stage 1's for a cell it answers, :attr:`HierarchicalClassifier.inlab`; in
        an adapted model the base's for a cell its domain gate hands to the base, and for
        the others the mean of the two heads' maps of an adapted pair,
        :mod:`hiercell.ensemble`) for
        ``class_name`` (a main class, or a subclass meaning its main class; default: the
        head's top class), on the grid of the RGB uint8 image ``rgb``.

        ``features``: the image's trunk features when already computed, ``(h, w, c)`` or
        ``(1, h, w, c)`` (they must come from the same masking, unshifted as
        :meth:`features` gives them: an aligned model shifts them here); otherwise they
        are computed with ``masked``.
        """
        if features is None:
            check_rgb_image(rgb)
            features = self.features([rgb], masked)
        features = np.asarray(features)
        if features.ndim == 3:  # one image's row, as the report passes it
            features = features[None]
        hierarchy = self.hierarchy  # the stage 1 that answers this cell:
        own = hierarchy.adapted_rows(features)  # (all True but in an adapted model)
        if hierarchy.inlab_rows(features, own)[0]:
            stage = hierarchy.inlab
        elif not own[0]:  # an adapted model's domain gate hands it to the base model
            stage = hierarchy.base.stage1
        else:
            stage, features = self.stage1, hierarchy.aligned(features)
        name = SUB_TO_MAIN.get(class_name, class_name)
        from .gradcam import gradcam_map

        members = getattr(stage, "members", [stage])  # an adapted pair: the mean of its maps
        return np.mean([gradcam_map(m.head_, m.classes_, features, rgb.shape, name)
                        for m in members], axis=0).astype(np.float32)


def _as_items(X):
    """A list of paths (str/Path) or RGB arrays from any accepted input: the one input
    check of every entry point (``predict``, ``predict_proba``, ``predict_records``).
    Raises ``TypeError``/``ValueError`` naming what is wrong."""
    if X is None:
        raise TypeError("X must be image paths or RGB uint8 images, got None")
    if isinstance(X, (bytes, bytearray, memoryview)):
        raise TypeError("X is bytes: pass image paths, or decode file contents first with "
                        "hiercell.io.decode_image")
    if isinstance(X, (str, os.PathLike)):
        items = [X]
    elif isinstance(X, np.ndarray):
        if X.ndim == 3:
            items = [X]
        elif X.ndim == 4:
            items = list(X)
        else:
            raise ValueError(f"expected images of shape (n, H, W, 3), got {X.shape}")
    else:
        try:
            items = list(X)
        except TypeError:
            raise TypeError(f"X must be image paths or RGB uint8 images, got "
                            f"{type(X).__name__}") from None
    if not items:
        raise ValueError("no images given (X is empty)")
    for i, item in enumerate(items):
        if isinstance(item, (bytes, bytearray, memoryview)):
            raise TypeError(f"image {i} is bytes: pass a path (str or pathlib.Path), or decode "
                            "file contents first with hiercell.io.decode_image")
        if not isinstance(item, (str, os.PathLike, np.ndarray)):
            raise TypeError(f"image {i} must be an image path or an RGB uint8 numpy array "
                            f"(H, W, 3), got {type(item).__name__}")
        if isinstance(item, np.ndarray):
            check_rgb_image(item, f"image {i}")
    return items


def _images(X):
    return [item if isinstance(item, np.ndarray) else load_image(item) for item in _as_items(X)]


def _load(item):
    """``(rgb, name, error)`` for a path or an array."""
    if isinstance(item, np.ndarray):
        return item, None, None
    rgb, reason = try_load_image(item)
    return rgb, str(item), reason
