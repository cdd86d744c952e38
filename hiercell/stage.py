"""One stage of the hierarchy: a fine-tuned VGG16 head feeding a tuned SVM.

:class:`StageClassifier` is a scikit-learn estimator whose input ``X`` is an
array of trunk features, ``(n, h, w, 512)`` as produced by
:func:`hiercell.features.extract_trunk_features` (VGG16 ``block4_pool``).
``fit`` follows the study's recipe on those features:

1. the head (block5 frozen with its ImageNet weights, GAP, Dense(1024),
   Dropout, Dense(512), Dropout, softmax) is trained with Adam;
2. block5 is unfrozen and the whole head fine-tuned at ``finetune_lr`` (1e-4);
   both phases keep the weights of the epoch with the best validation loss;
3. an RBF SVM is fit on the Dense(1024) activations with ``GridSearchCV``
   (3-fold, class-balanced) over ``svm_C`` and ``svm_gamma``; the best setting
   is refit inside ``CalibratedClassifierCV(method="sigmoid", cv=5,
   ensemble=False)``: Platt scaling fit on 5-fold out-of-fold decision values,
   which gives the calibrated ``predict_proba`` (``predict`` is its argmax).

Augmentation works on the cached feature maps: a random flip and 90-degree
rotation of each sample's ``(h, w)`` grid (cells have no preferred
orientation). ``fit(..., X_views=[...])`` adds image-space augmentation:
trunk features of augmented views of the same images
(:func:`hiercell.preprocess.augment_view`); each fine-tuning epoch sees every
image once, through a view drawn at random, the frozen phase sees ``X`` and
the first view, and the SVM sees ``X`` plus ``svm_view_fraction`` of the first
two views (at most ``svm_max_per_class`` rows per class, drawn at random).

The image-space recipe (:mod:`hiercell.gpu_recipe`) trains the network part
differently and uses the same three public steps: :meth:`~StageClassifier.start`,
:meth:`~StageClassifier.new_head`, :meth:`~StageClassifier.finish`.

Bundles store the fitted state as JSON (``bundle.json``), Keras weights
(``head.npz``) and the scikit-learn pipeline ``svm_`` (``svm.joblib``);
:meth:`~StageClassifier.fitted_state` / :meth:`~StageClassifier.from_fitted_state`
are the two ends of that.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from .backbone import (DENSE_LAYERS, augment_feature_maps, build_head, class_weights,
                       embedding_model, fit_keras, multiview_dataset, precision_policy,
                       predict_batches, set_block5_trainable, tensor_dataset,
                       training_precision)
from .svmpredict import predict_proba as svm_predict_proba

#: Fitted attributes kept in ``bundle.json`` (JSON-ready), besides ``classes_`` and the weights.
_STATE_KEYS = ("feature_shape_", "svm_best_params_", "svm_cv_score_", "precision_",
               "history_", "train_seconds_")


class StageOutputs(NamedTuple):
    """What a stage computes for ``n`` cells (:meth:`StageClassifier.predict_outputs`)."""

    proba: np.ndarray            #: ``(n, n_classes)``: :meth:`StageClassifier.predict_proba`
    network_proba: np.ndarray    #: ``(n, n_classes)``: the network head's own softmax
    network_energy: np.ndarray   #: ``(n,)``: minus the log-sum-exp of the head's logits


def _softmax_and_energy(logits):
    """``(softmax, energy)`` of logits ``(n, k)``: the softmax rows and the free energy
    ``-log(sum(exp(logits)))`` per row (high: no class fits; Liu et al., NeurIPS 2020)."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(1, keepdims=True)
    e = np.exp(logits - top)
    total = e.sum(1, keepdims=True)
    return e / total, -(top + np.log(total))[:, 0]


class StageClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tuned VGG16 head + SVM over trunk features.

    Parameters
    ----------
    head_epochs, finetune_epochs : int
        Epochs with block5 frozen, then with block5 trainable.
    head_lr, finetune_lr : float
        Adam learning rates of the two phases (the recipe: 1e-4 for fine-tuning).
    batch_size : int
    dropout : float
        Dropout after Dense(1024) and Dense(512).
    augment : bool
        Random flips / 90-degree rotations of the feature maps while training.
    svm_C, svm_gamma : sequence
        The ``GridSearchCV`` grid (3-fold, ``class_weight="balanced"``).
    svm_include_val : bool
        Fit the SVM on train + validation embeddings (the networks only see
        validation data for early stopping).
    block5_weights : list of arrays or None
        Initial block5 weights (from :func:`hiercell.backbone.block5_weights`,
        ImageNet's); ``None`` = random.
    patience : int
        Early-stopping patience on the validation loss (when validation data is given).
    precision : {"auto", "float32", "mixed_bfloat16", "mixed_float16"}
        Compute precision while training (variables stay float32). ``"auto"``:
        mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bf16
        (AVX512-BF16 / AMX), float32 otherwise. Inference is always float32.
    svm_view_fraction : float
        Share of the first two augmented views whose embeddings join the SVM's data.
    svm_max_per_class : int or None
        Cap on the SVM's training rows per class (RBF SVM time grows ~n^2).
    random_state : int
    verbose : int
    network_weight : float
        Weight ``w`` of the network head's softmax in :meth:`predict_proba`:
        ``(1 - w) x SVM + w x head``. 0 (the default, the study's recipe): the SVM
        alone. Stages adapted to a new lab use :data:`hiercell.adapt.NETWORK_WEIGHT`; a
        bundle records each stage's in ``bundle.json`` (``params`` of each stage under
        ``stages``, ``inlab_stages``), and its model card says why.
    """

    def __init__(self, head_epochs=30, finetune_epochs=4, head_lr=1e-3, finetune_lr=1e-4,
                 batch_size=64, dropout=0.2, augment=True, svm_C=(0.3, 1.0, 3.0, 10.0),
                 svm_gamma=("scale",), svm_include_val=True, block5_weights=None, patience=3,
                 precision="auto", svm_view_fraction=0.33, svm_max_per_class=None,
                 random_state=0, verbose=1, network_weight=0.0):
        self.network_weight = network_weight
        self.svm_view_fraction = svm_view_fraction
        self.svm_max_per_class = svm_max_per_class
        self.head_epochs = head_epochs
        self.finetune_epochs = finetune_epochs
        self.head_lr = head_lr
        self.finetune_lr = finetune_lr
        self.batch_size = batch_size
        self.dropout = dropout
        self.augment = augment
        self.svm_C = svm_C
        self.svm_gamma = svm_gamma
        self.svm_include_val = svm_include_val
        self.block5_weights = block5_weights
        self.patience = patience
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # -- training: the three steps both recipes share -------------------------
    def start(self, y, feature_shape, y_val=None):
        """Set ``classes_``, ``feature_shape_`` and the training precision; return
        ``(y_idx, y_val_idx or None, known_val_mask or None, class_weight)``."""
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.feature_shape_ = tuple(int(d) for d in feature_shape)
        self.precision_ = training_precision(self.precision)
        self.history_ = {}
        self.train_seconds_ = {}
        self._t0 = time.time()
        y_idx = np.searchsorted(self.classes_, y)
        yv_idx = known = None
        if y_val is not None and len(y_val):
            y_val = np.asarray(y_val)
            known = np.isin(y_val, self.classes_)
            yv_idx = np.searchsorted(self.classes_, y_val[known])
        return y_idx, yv_idx, known, class_weights(y_idx, len(self.classes_))

    def new_head(self):
        """A fresh head for :attr:`classes_`, block5 from ``block5_weights`` (call inside
        :func:`~hiercell.backbone.precision_policy` to train in mixed precision)."""
        return build_head(len(self.classes_), self.feature_shape_, self.block5_weights,
                          dropout=self.dropout, seed=self.random_state)

    def finish(self, head, X, y, X_val=None, y_val=None, X_views=()):
        """Keep a float32 copy of the trained ``head`` and fit the SVM on its embeddings
        of ``X`` (plus ``X_val`` when ``svm_include_val``, plus a share of the first two
        ``X_views``)."""
        self.head_ = build_head(len(self.classes_), self.feature_shape_, dropout=self.dropout)
        self.head_.set_weights([w.astype(np.float32) for w in head.get_weights()])
        self.train_seconds_["network"] = time.time() - getattr(self, "_t0", time.time())
        y = np.asarray(y)
        emb, labels = [self.transform(X)], [y]
        if self.svm_include_val and X_val is not None and len(X_val):
            known = np.isin(np.asarray(y_val), self.classes_)
            emb.append(self.transform(X_val[known]))
            labels.append(np.asarray(y_val)[known])
        rng = np.random.default_rng(self.random_state)
        for view in list(X_views)[:2]:
            pick = np.sort(rng.choice(len(y), int(self.svm_view_fraction * len(y)), replace=False))
            emb.append(self.transform(view[pick]))
            labels.append(y[pick])
        return self.fit_svm_embeddings(np.concatenate(emb), np.concatenate(labels))

    def fit(self, X, y, X_val=None, y_val=None, X_views=()):
        """Train head, fine-tune block5, then tune the SVM on the embeddings (feature recipe).

        ``X_views``: trunk features of augmented views of the rows of ``X`` (a sequence
        of arrays shaped like ``X``), see the module doc.
        """
        X_views = list(X_views)
        y_idx, yv_idx, known, class_weight = self.start(y, X.shape[1:], y_val)
        val = (X_val[known], yv_idx) if yv_idx is not None else None
        with precision_policy(self.precision_):
            head = self.new_head()
            if self.head_epochs > 0:
                self._fit_frozen_phase(head, X, y_idx, val, class_weight, X_views[:1])
            if self.finetune_epochs > 0:
                set_block5_trainable(head, True)
                train = (multiview_dataset([X] + X_views, y_idx, self.batch_size,
                                           self.random_state)
                         if X_views else self._dataset(X, y_idx, training=True))
                if X_views and self.augment:
                    train = train.map(augment_feature_maps)
                self.history_["finetune"] = fit_keras(
                    head, train, self._dataset(*val, training=False) if val else None,
                    self.finetune_epochs, self.finetune_lr, class_weight, self.patience,
                    self.verbose)
        return self.finish(head, X, y, X_val, y_val, X_views)

    def _fit_frozen_phase(self, head, X, y_idx, val, class_weight, X_views=()):
        """Train the dense layers with block5 frozen.

        block5 being frozen, its pooled output is computed once and the dense
        layers (shared with ``head``) train on it: an epoch costs milliseconds
        instead of a block5 forward pass over the data set.
        """
        import keras

        set_block5_trainable(head, False)
        pooled = keras.Model(head.input, head.get_layer("gap").output)
        inputs = keras.Input(shape=(int(pooled.output.shape[-1]),))
        x = inputs
        for name in DENSE_LAYERS:
            x = head.get_layer(name)(x)
        top = keras.Model(inputs, x)
        P = np.concatenate([predict_batches(pooled, v, 256) for v in [X, *X_views]])
        train_ds = tensor_dataset(P, np.tile(y_idx, 1 + len(X_views)), self.batch_size,
                                  shuffle_seed=self.random_state)
        val_ds = (tensor_dataset(predict_batches(pooled, val[0], 256), val[1], self.batch_size)
                  if val is not None else None)
        self.history_["head"] = fit_keras(top, train_ds, val_ds, self.head_epochs, self.head_lr,
                                          class_weight, self.patience, self.verbose)

    def fit_svm(self, X, y):
        """(Re)tune and fit the SVM on the embeddings of ``X`` (the head is kept)."""
        return self.fit_svm_embeddings(self.transform(X), y)

    def fit_svm_embeddings(self, emb, y, sample_weight=None):
        """(Re)tune and fit the SVM on Dense(1024) embeddings ``emb`` (the head is kept).

        At most ``svm_max_per_class`` rows per class are used (drawn at random).
        ``GridSearchCV`` (3-fold stratified, balanced accuracy) picks ``C`` and
        ``gamma`` (skipped when the grid holds one setting; ``svm_cv_score_`` is then
        ``None``); the winner is refit with sigmoid (Platt) calibration.
        ``sample_weight``: per-row weights of the final fit (e.g. adaptation data).
        """
        t0 = time.time()
        y = np.asarray(y)
        if self.svm_max_per_class:
            rng = np.random.default_rng(self.random_state)
            keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[
                :self.svm_max_per_class] for c in np.unique(y)]))
            emb, y = emb[keep], y[keep]
            sample_weight = None if sample_weight is None else np.asarray(sample_weight)[keep]
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2 or counts.min() < 3:
            raise ValueError(
                "the SVM needs at least 2 classes with 3 or more images each (3-fold search); "
                f"got {dict(zip(classes.tolist(), counts.tolist()))}")
        grid = {"svc__C": list(self.svm_C), "svc__gamma": list(self.svm_gamma)}
        if len(grid["svc__C"]) * len(grid["svc__gamma"]) > 1:
            search = GridSearchCV(
                make_pipeline(StandardScaler(), SVC(kernel="rbf", class_weight="balanced")),
                grid, cv=StratifiedKFold(3, shuffle=True, random_state=self.random_state),
                scoring="balanced_accuracy", n_jobs=2, refit=False)
            search.fit(emb, y)
            self.svm_best_params_ = search.best_params_
            self.svm_cv_score_ = float(search.best_score_)
        else:  # one setting: nothing to search (e.g. adaptation keeps the base's C)
            self.svm_best_params_ = {k: v[0] for k, v in grid.items()}
            self.svm_cv_score_ = None
        best = SVC(kernel="rbf", class_weight="balanced", C=self.svm_best_params_["svc__C"],
                   gamma=self.svm_best_params_["svc__gamma"])
        self.svm_ = make_pipeline(
            StandardScaler(),
            CalibratedClassifierCV(best, method="sigmoid", cv=int(min(5, counts.min())),
                                   ensemble=False, n_jobs=2))
        if sample_weight is None:
            self.svm_.fit(emb, y)
        else:
            self.svm_.fit(emb, y, calibratedclassifiercv__sample_weight=sample_weight)
        self.train_seconds_ = {**getattr(self, "train_seconds_", {}), "svm": time.time() - t0}
        return self

    def _dataset(self, X, y_idx, training):
        ds = tensor_dataset(X, y_idx, self.batch_size,
                            shuffle_seed=self.random_state if training else None)
        if training and self.augment:
            ds = ds.map(augment_feature_maps)
        return ds

    # -- inference ----------------------------------------------------------
    def transform(self, X, batch_size=256):
        """Dense(1024) embeddings of trunk features, ``(n, 1024)`` float32 (through the
        OpenVINO embedder a bundle's loader gave, else the Keras head)."""
        fast = self.__dict__.get("_fast_embedder")
        if fast is not None:
            return fast(X, batch_size)
        model = getattr(self, "_embedder", None)
        if model is None or model.input is not self.head_.input:
            model = self._embedder = embedding_model(self.head_)
        return predict_batches(model, X, batch_size)

    def network_proba(self, X, batch_size=256):
        """Softmax probabilities of the network head itself (before the SVM)."""
        return predict_batches(self.head_, X, batch_size)

    def network_hidden_of_embeddings(self, emb):
        """The head's Dense(512) activations ``(n, 512)`` (after ReLU; dropout is off at
        inference) from Dense(1024) embeddings ``(n, 1024)`` (:meth:`transform`), in
        numpy: no second pass through block5."""
        w512, b512 = self._top_weights()[:2]
        return np.maximum(np.asarray(emb, np.float32) @ w512 + b512, 0.0)

    def network_logits_of_embeddings(self, emb):
        """The network head's logits ``(n, n_classes)`` (its softmax layer's input) from
        Dense(1024) embeddings: :meth:`network_hidden_of_embeddings` and the softmax
        layer's affine map."""
        w_out, b_out = self._top_weights()[2:]
        return self.network_hidden_of_embeddings(emb) @ w_out + b_out

    def network_proba_of_embeddings(self, emb):
        """The network head's softmax ``(n, n_classes)`` from Dense(1024) embeddings."""
        return _softmax_and_energy(self.network_logits_of_embeddings(emb))[0]

    def _top_weights(self) -> list:
        """Dense(512) and softmax kernels and biases, float32: read from the Keras head
        when it is built (training changes it in place), else once from the stored
        weights (their last four arrays, in Keras order; a bundle's weights file decodes
        only those, not block5 again beside the embedder)."""
        head = self.__dict__.get("_head")
        if head is not None:
            return [np.asarray(w, np.float32) for name in ("dense_512", "softmax")
                    for w in head.get_layer(name).get_weights()]
        top = self.__dict__.get("_top")
        if top is None:
            source = self.__dict__.get("_head_source")
            read_last = getattr(source, "last", None)
            weights = (read_last(4) if read_last is not None
                       else source() if callable(source) else source)
            if not weights:
                raise AttributeError("this stage has no trained head")
            top = self._top = [np.asarray(w, np.float32) for w in weights[-4:]]
        return top

    def predict_proba(self, X):
        """Class probabilities ``(n, n_classes)``: the SVM's calibrated ones (the kernel
        as one matrix product: :func:`hiercell.svmpredict.predict_proba`), mixed with the
        network head's softmax when ``network_weight`` > 0."""
        return self.predict_outputs(X).proba

    def svm_proba(self, X):
        """The calibrated SVM's probabilities ``(n, n_classes)`` alone: :meth:`predict_proba`
        without the network head's share (the same when ``network_weight`` is 0)."""
        return svm_predict_proba(self.svm_, self.transform(X))

    def predict_outputs(self, X) -> "StageOutputs":
        """:class:`StageOutputs` of trunk features ``X`` from one pass through block5:
        :meth:`predict_proba`, the network head's softmax and its energy."""
        emb = self.transform(X)
        network, energy = _softmax_and_energy(self.network_logits_of_embeddings(emb))
        proba = svm_predict_proba(self.svm_, emb)
        w = float(self.network_weight or 0.0)
        if not 0.0 <= w <= 1.0:  # also NaN
            raise ValueError(f"network_weight must be between 0 and 1, got {self.network_weight!r}")
        if w:
            proba = (1.0 - w) * proba + w * network
        return StageOutputs(proba, network, energy)

    def predict(self, X):
        """Most probable class per row (the SVM's decision; with ``network_weight`` > 0,
        the argmax of :meth:`predict_proba`)."""
        if not self.network_weight:
            return self.svm_.predict(self.transform(X))
        return self.classes_[self.predict_proba(X).argmax(1)]

    # -- persistence (see hiercell.bundle) -----------------------------------
    def fitted_state(self) -> dict:
        """The JSON-ready part of the fitted state: parameters (without the starting
        block5 weights), classes and fit results. The head's weights and ``svm_`` are
        stored separately."""
        params = {k: v for k, v in self.get_params().items() if k != "block5_weights"}
        state = {k: getattr(self, k) for k in _STATE_KEYS if hasattr(self, k)}
        return {"params": params, "classes": [str(c) for c in self.classes_], **state}

    @classmethod
    def from_fitted_state(cls, state: dict, svm, head_weights=None) -> "StageClassifier":
        """Rebuild a fitted stage from :meth:`fitted_state`, the SVM pipeline and the
        head's weights (a list of arrays, in Keras order, or a callable returning them);
        the head is built on first use of :attr:`head_`."""
        known = cls().get_params()
        stage = cls(**{k: (tuple(v) if isinstance(v, list) else v)
                       for k, v in state.get("params", {}).items() if k in known})
        stage.classes_ = np.array(state["classes"])
        for key in _STATE_KEYS:
            if key in state:
                setattr(stage, key, state[key])
        stage.feature_shape_ = tuple(int(d) for d in stage.feature_shape_)
        stage.svm_ = svm
        # built on first use: a run whose cells never reach stage 2 never builds its head
        stage._head_source = head_weights if head_weights is not None else []
        return stage

    @property
    def head_(self):
        """The trained head (a Keras model); built from the stored weights on first use
        when the stage was loaded from a bundle."""
        head = self.__dict__.get("_head")
        if head is None and "_head_source" in self.__dict__:
            weights = self.__dict__.pop("_head_source")
            if callable(weights):
                weights = weights()
            policy = self.__dict__.get("_head_policy") or "float32"
            with precision_policy(policy):  # the loaded model's inference precision
                head = build_head(len(self.classes_), self.feature_shape_, dropout=self.dropout)
            if len(weights):
                head.set_weights(weights)
            self._head = head
        if head is None:
            if self.__dict__.get("_head_pickled_away"):
                raise AttributeError(
                    "head_: this stage was copied by pickle, which leaves its network out "
                    "(Keras models are not pickled); save a model with "
                    "hiercell.bundle.save_bundle(model, folder) and load it with "
                    "hiercell.load(folder)")
            raise AttributeError("head_")
        return head

    @head_.setter
    def head_(self, head):  # new weights: an embedder of the old ones must go
        self.__dict__.pop("_head_source", None)
        self.__dict__.pop("_fast_embedder", None)
        self.__dict__.pop("_top", None)
        self._head = head

    def __copy__(self):
        """A shallow copy that shares the head (pickling, and so the default copy, drops
        the Keras parts: :meth:`__getstate__`); a head not yet built from a bundle's
        weights is built first, so that the two do not each build their own."""
        if "_head_source" in self.__dict__:
            self.head_  # noqa: B018 - builds it
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self):  # keras models are saved by the bundle, not pickled
        state = self.__dict__.copy()
        for key in ("_embedder", "_fast_embedder", "_head", "_head_source", "_top", "_t0"):
            state.pop(key, None)
        state["block5_weights"] = None  # only the starting point; the trained weights are in head_
        if "_head" in self.__dict__ or "_head_source" in self.__dict__:
            state["_head_pickled_away"] = True  # head_ then says why it is missing
        return state
