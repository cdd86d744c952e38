"""The two-stage classifier: stage 1 over 8 main classes, stage 2 for neutrophils and IGs.

Routing rules (:meth:`HierarchicalClassifier.decide`):

* stage 1 (8 main classes) runs on every cell;
* stage 2 (BNE, SNE, MY, MMY, PMY, Others) runs only where stage 1 says
  ``neutrophil`` or ``ig``;
* a stage-2 subclass is the cell's label, and its main class follows from it
  (BNE/SNE -> neutrophil, MY/MMY/PMY -> ig): stage 2 is the specialist for the
  neutrophil/IG boundary, so it may move a cell across it;
* stage 2 answering ``Others`` hands the decision back to stage 1: the label
  is stage 1's main class and the cell is marked ``uncertain``.

End-to-end probabilities over the 11 fine classes (:data:`FINE_CLASSES`):
non-routed main classes keep their stage-1 probability; the stage-1 mass of
neutrophil + ig is shared among the five subclasses in proportion to stage 2's
probabilities renormalised without ``Others``.
"""

from __future__ import annotations

import numpy as np

from .records import Prediction
from .taxonomy import FINE_CLASSES, MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUB_TO_MAIN


class HierarchicalClassifier:
    """Trunk + stage 1 + stage 2.

    ``predict`` and ``predict_proba`` take image paths or RGB ``uint8`` images
    (an ``(n, H, W, 3)`` array or a list of ``(H, W, 3)`` arrays of any size);
    the ``*_features`` methods take trunk features ``(n, h, w, 512)``.

    Parameters
    ----------
    trunk : keras.Model
        Frozen VGG16 blocks 1-4 (input ``(input_size, input_size, 3)``).
    stage1, stage2 : StageClassifier
        Fitted stages; ``stage2`` may be ``None`` (then no subclasses).
    input_size : int
        Side of the square image the trunk sees.
    masked : bool
        Whether the stages were trained on masked images (the default at predict time).
    """

    def __init__(self, trunk, stage1, stage2=None, input_size=160, masked=False, info=None):
        self.trunk = trunk
        self.stage1 = stage1
        self.stage2 = stage2
        self.input_size = input_size
        self.masked = masked
        self.info = dict(info or {})

    def get_params(self, deep=False):
        """Constructor parameters (scikit-learn convention)."""
        return {"trunk": self.trunk, "stage1": self.stage1, "stage2": self.stage2,
                "input_size": self.input_size, "masked": self.masked, "info": self.info}

    @property
    def classes_(self):
        """The end-to-end classes: 6 main classes + 5 subclasses (the 8 main
        classes for a model without stage 2)."""
        return np.array(FINE_CLASSES if self.stage2 is not None else MAIN_CLASSES)

    # -- on trunk features ----------------------------------------------------
    def stage_probas(self, X):
        """``(p1, p2)``: stage-1 probabilities over :data:`MAIN_CLASSES` and stage-2
        probabilities (rows of NaN where stage 2 did not run)."""
        p1 = _reorder(self.stage1.predict_proba(X), self.stage1.classes_, MAIN_CLASSES)
        s2_classes = tuple(self.stage2.classes_) if self.stage2 is not None else ()
        p2 = np.full((len(X), len(s2_classes)), np.nan)
        if self.stage2 is not None:
            routed = np.isin(np.asarray(MAIN_CLASSES)[p1.argmax(1)], ROUTED_MAIN)
            if routed.any():
                p2[routed] = self.stage2.predict_proba(X[routed])
        return p1, p2

    def predict_proba_features(self, X):
        """End-to-end probabilities over :attr:`classes_`, ``(n, 11)``, from trunk features."""
        return self.fine_proba(*self.stage_probas(X))

    def fine_proba(self, p1, p2):
        """Combine stage probabilities into end-to-end probabilities (see module doc)."""
        if self.stage2 is None:
            return p1
        out = np.zeros((len(p1), len(FINE_CLASSES)))
        main_idx = {c: i for i, c in enumerate(MAIN_CLASSES)}
        routed_mass = sum(p1[:, main_idx[c]] for c in ROUTED_MAIN)
        s2 = list(self.stage2.classes_) if self.stage2 is not None else []
        ran = ~np.isnan(p2).any(1) if p2.size else np.zeros(len(p1), bool)
        subs = [c for c in s2 if c != OTHERS]
        sub_p = p2[:, [s2.index(c) for c in subs]] if subs else np.zeros((len(p1), 0))
        denom = sub_p.sum(1, keepdims=True)
        for j, c in enumerate(FINE_CLASSES):
            if c in main_idx:
                out[:, j] = p1[:, main_idx[c]]
        for k, c in enumerate(subs):
            share = np.where(ran, sub_p[:, k] / np.maximum(denom[:, 0], 1e-12), 0.0)
            out[:, FINE_CLASSES.index(c)] = routed_mass * share
        # cells where stage 2 did not run: split the routed mass by the prior
        # of each parent evenly over its subclasses (keeps rows summing to 1)
        for parent in ROUTED_MAIN:
            kids = [c for c in subs if SUB_TO_MAIN[c] == parent]
            if not kids:
                continue
            for c in kids:
                out[~ran, FINE_CLASSES.index(c)] = p1[~ran, main_idx[parent]] / len(kids)
        return out

    def decide(self, p1, p2):
        """Apply the routing rules; returns a list of dicts (main, sub, uncertain, ...)."""
        s2 = list(self.stage2.classes_) if self.stage2 is not None else []
        decisions = []
        for i in range(len(p1)):
            m = int(p1[i].argmax())
            main, main_p = MAIN_CLASSES[m], float(p1[i, m])
            sub, sub_p, uncertain = None, None, False
            if main in ROUTED_MAIN and s2 and not np.isnan(p2[i]).any():
                k = int(p2[i].argmax())
                sub_p = float(p2[i, k])
                if s2[k] == OTHERS:
                    uncertain = True
                    sub = OTHERS
                else:
                    sub = s2[k]
                    main = SUB_TO_MAIN[sub]
                    main_p = float(p1[i, MAIN_CLASSES.index(main)])
            decisions.append({"main": main, "main_p": main_p, "sub": sub, "sub_p": sub_p,
                              "uncertain": uncertain})
        return decisions

    def predict_features(self, X):
        """Finest decided label per row of trunk features (a subclass, or a main class)."""
        p1, p2 = self.stage_probas(X)
        return np.array([_finest(d) for d in self.decide(p1, p2)], dtype=object)

    def records_from_features(self, X, paths=None, top_k=3):
        """:class:`~hiercell.records.Prediction` per row of trunk features.

        ``probability`` is the end-to-end probability of ``label`` when it is a
        subclass, and stage 1's probability of the main class otherwise
        (which is also its end-to-end probability).
        """
        p1, p2 = self.stage_probas(X)
        fine = self.fine_proba(p1, p2)
        classes = list(self.classes_)
        paths = list(paths) if paths is not None else [None] * len(X)
        out = []
        for i, d in enumerate(self.decide(p1, p2)):
            label = _finest(d)
            order = np.argsort(-fine[i])[:top_k]
            prob = fine[i, classes.index(label)] if label == d["sub"] else d["main_p"]
            out.append(Prediction(
                path=None if paths[i] is None else str(paths[i]), label=label,
                probability=float(prob),
                main_class=d["main"], main_probability=d["main_p"],
                subclass=d["sub"], subclass_probability=d["sub_p"],
                top=[(classes[j], float(fine[i, j])) for j in order],
                uncertain=d["uncertain"]))
        return out

    # -- on images ------------------------------------------------------------
    def trunk_features(self, images, masked=None, batch_size=32):
        """Trunk features of RGB uint8 images (any size), ``(n, h, w, 512)``."""
        from .backbone import preprocess
        from .features import prepare_image
        from .stage import _predict

        masked = self.masked if masked is None else masked
        x = np.stack([prepare_image(im, self.input_size, masked) for im in images]) if len(images) else \
            np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        return _predict(self.trunk, preprocess(x), batch_size)

    def predict_images(self, images, paths=None, top_k=3, masked=None):
        """Classify RGB uint8 images; one :class:`Prediction` per image."""
        return self.records_from_features(self.trunk_features(images, masked), paths, top_k)

    def predict(self, X, top_k=3, masked=None, batch_size=32):
        """One :class:`~hiercell.records.Prediction` per image of ``X``.

        ``X``: image paths, or RGB uint8 images. A path that cannot be read
        gets a record with ``status="error"`` and the reason; the rest go on.
        """
        items = _as_items(X)
        out = []
        for k in range(0, len(items), batch_size):
            loaded = [_load(item) for item in items[k:k + batch_size]]
            good = [(img, name) for img, name, _ in loaded if img is not None]
            try:
                records = self.predict_images([g[0] for g in good], [g[1] for g in good],
                                              top_k, masked) if good else []
            except Exception:  # noqa: BLE001 - find the image at fault, keep the others
                records = [self._predict_one(img, name, top_k, masked) for img, name in good]
            records = iter(records)
            for img, name, error in loaded:
                out.append(next(records) if img is not None else Prediction.failed(name, error))
        return out

    def _predict_one(self, img, name, top_k, masked):
        try:
            return self.predict_images([img], [name], top_k, masked)[0]
        except Exception as exc:  # noqa: BLE001
            return Prediction.failed(name, f"cannot classify: {type(exc).__name__}: {exc}")

    def predict_proba(self, X, masked=None):
        """End-to-end probabilities ``(n, 11)`` over :attr:`classes_` of images or paths
        (unreadable paths raise :class:`~hiercell.io.ImageLoadError`)."""
        from .io import load_image

        images = [item if isinstance(item, np.ndarray) else load_image(item) for item in _as_items(X)]
        return self.predict_proba_features(self.trunk_features(images, masked))

    def gradcam(self, rgb, class_name=None, masked=None):
        """Grad-CAM heat map ``(H, W)`` float32 in [0, 1] of stage 1's network head
        for ``class_name`` (default: its top class), on the input image's grid."""
        from .gradcam import gradcam_map

        return gradcam_map(self, rgb, class_name, self.masked if masked is None else masked)


def _as_items(X):
    """A list of paths (str/Path) or RGB arrays from any accepted input."""
    import os

    if isinstance(X, (str, os.PathLike)):
        return [X]
    if isinstance(X, np.ndarray):
        if X.ndim == 3:
            return [X]
        if X.ndim != 4:
            raise ValueError(f"expected images of shape (n, H, W, 3), got {X.shape}")
        return list(X)
    return list(X)


def _load(item):
    """``(rgb, name, error)`` for a path or an array; a path that cannot be used gets an error."""
    from .io import ImageLoadError, load_image

    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ValueError(f"images must be RGB uint8 (H, W, 3), got {item.dtype} {item.shape}")
        return item, None, None
    try:
        return load_image(item), str(item), None
    except ImageLoadError as exc:
        return None, str(item), exc.reason


def _finest(decision):
    sub = decision["sub"]
    return sub if sub not in (None, OTHERS) else decision["main"]


def _reorder(proba, have, want):
    """Columns of ``proba`` (ordered as ``have``) rearranged to ``want`` (missing -> 0)."""
    have = list(have)
    out = np.zeros((len(proba), len(want)))
    for j, c in enumerate(want):
        if c in have:
            out[:, j] = proba[:, have.index(c)]
    return out
