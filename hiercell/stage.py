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
orientation).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_class_weight

from .backbone import DENSE_LAYERS, build_head, embedding_model, set_block5_trainable


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
        Initial block5 weights (from ImageNet VGG16); ``None`` = random.
    patience : int
        Early-stopping patience on the validation loss (when validation data is given).
    precision : {"auto", "float32", "mixed_bfloat16", "mixed_float16"}
        Compute precision while training (variables stay float32). ``"auto"``:
        mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bf16
        (AVX512-BF16 / AMX), float32 otherwise. Inference is always float32.
    random_state : int
    verbose : int
    """

    def __init__(self, head_epochs=30, finetune_epochs=4, head_lr=1e-3, finetune_lr=1e-4,
                 batch_size=64, dropout=0.2, augment=True, svm_C=(0.3, 1.0, 3.0, 10.0),
                 svm_gamma=("scale",), svm_include_val=True, block5_weights=None, patience=3,
                 precision="auto", random_state=0, verbose=1):
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

    # -- training -----------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None):
        """Train head, fine-tune block5, then tune the SVM on the embeddings."""
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.feature_shape_ = tuple(int(d) for d in X.shape[1:])
        y_idx = np.searchsorted(self.classes_, y)
        val = None
        if X_val is not None and len(X_val):
            y_val = np.asarray(y_val)
            known = np.isin(y_val, self.classes_)
            val = (X_val[known], np.searchsorted(self.classes_, y_val[known]))
        class_weight = balanced_class_weight(y_idx, len(self.classes_))

        self.precision_ = training_precision(self.precision)
        self.history_ = {}
        t0 = time.time()
        with precision_policy(self.precision_):
            head = build_head(len(self.classes_), X.shape[1:], dropout=self.dropout,
                              seed=self.random_state)
            if self.block5_weights is not None:
                _set_block5(head, self.block5_weights)
            if self.head_epochs > 0:
                self._fit_frozen_phase(head, X, y_idx, val, class_weight)
            if self.finetune_epochs > 0:
                set_block5_trainable(head, True)
                self.history_["finetune"] = _fit_keras(
                    head, self._dataset(X, y_idx, training=True),
                    self._dataset(*val, training=False) if val else None,
                    self.finetune_epochs, self.finetune_lr, class_weight, self.patience,
                    self.verbose)
        # inference (and the SVM's embeddings) always run in float32
        self.head_ = build_head(len(self.classes_), X.shape[1:], dropout=self.dropout)
        self.head_.set_weights([w.astype(np.float32) for w in head.get_weights()])
        self.train_seconds_ = {"network": time.time() - t0}
        if self.svm_include_val and val is not None:
            X_svm = np.concatenate([X, val[0]])
            y_svm = np.concatenate([y, self.classes_[val[1]]])
        else:
            X_svm, y_svm = X, y
        self.fit_svm(X_svm, y_svm)
        return self

    def _fit_frozen_phase(self, head, X, y_idx, val, class_weight):
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
        P = _predict(pooled, X, 256)
        P_val = (_predict(pooled, val[0], 256), val[1]) if val is not None else None
        train_ds = _tensor_dataset(P, y_idx, self.batch_size, shuffle_seed=self.random_state)
        val_ds = _tensor_dataset(*P_val, self.batch_size) if P_val is not None else None
        self.history_["head"] = _fit_keras(top, train_ds, val_ds, self.head_epochs, self.head_lr,
                                           class_weight, self.patience, self.verbose)


    def fit_svm(self, X, y):
        """(Re)tune and fit the SVM on the embeddings of ``X`` (the head is kept).

        ``GridSearchCV`` (3-fold stratified, balanced accuracy) picks ``C`` and
        ``gamma``; the winner is refit with sigmoid (Platt) calibration.
        """
        t0 = time.time()
        y = np.asarray(y)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2 or counts.min() < 3:
            raise ValueError(
                "the SVM needs at least 2 classes with 3 or more images each (3-fold search); "
                f"got {dict(zip(classes.tolist(), counts.tolist()))}")
        emb = self.transform(X)
        search = GridSearchCV(
            make_pipeline(StandardScaler(), SVC(kernel="rbf", class_weight="balanced")),
            {"svc__C": list(self.svm_C), "svc__gamma": list(self.svm_gamma)},
            cv=StratifiedKFold(3, shuffle=True, random_state=self.random_state),
            scoring="balanced_accuracy", n_jobs=2, refit=False)
        search.fit(emb, y)
        self.svm_best_params_ = search.best_params_
        self.svm_cv_score_ = float(search.best_score_)
        best = SVC(kernel="rbf", class_weight="balanced", C=search.best_params_["svc__C"],
                   gamma=search.best_params_["svc__gamma"])
        self.svm_ = make_pipeline(
            StandardScaler(),
            CalibratedClassifierCV(best, method="sigmoid", cv=int(min(5, counts.min())),
                                   ensemble=False, n_jobs=2))
        self.svm_.fit(emb, y)
        self.train_seconds_ = {**getattr(self, "train_seconds_", {}), "svm": time.time() - t0}
        return self

    def _dataset(self, X, y_idx, training):
        ds = _tensor_dataset(X, y_idx, self.batch_size,
                             shuffle_seed=self.random_state if training else None)
        if training and self.augment:
            ds = ds.map(_augment_batch)
        return ds

    # -- inference ----------------------------------------------------------
    def transform(self, X, batch_size=256):
        """Dense(1024) embeddings of trunk features, ``(n, 1024)`` float32."""
        model = getattr(self, "_embedder", None)
        if model is None or model.input is not self.head_.input:
            model = self._embedder = embedding_model(self.head_)
        return _predict(model, X, batch_size)

    def network_proba(self, X, batch_size=256):
        """Softmax probabilities of the network head itself (before the SVM)."""
        return _predict(self.head_, X, batch_size)

    def predict_proba(self, X):
        """Calibrated class probabilities from the SVM, ``(n, n_classes)``."""
        return self.svm_.predict_proba(self.transform(X))

    def predict(self, X):
        """Most probable class per row (by the SVM's decision)."""
        return self.svm_.predict(self.transform(X))

    def __getstate__(self):  # keras models are saved by the bundle, not pickled
        state = self.__dict__.copy()
        state.pop("_embedder", None)
        state.pop("head_", None)
        state["block5_weights"] = None  # only the starting point; the trained weights are in head_
        return state


def balanced_class_weight(y_idx, n_classes) -> dict:
    """Keras ``class_weight`` (index -> weight) making every class weigh the same in the loss."""
    present = np.unique(y_idx)
    weights = compute_class_weight("balanced", classes=present, y=y_idx)
    out = dict.fromkeys(range(n_classes), 0.0)
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def training_precision(precision="auto") -> str:
    """The Keras dtype policy name that ``precision`` stands for on this machine."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        flags = ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


@contextlib.contextmanager
def precision_policy(name):
    """Temporarily set Keras' global dtype policy."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _tensor_dataset(X, y_idx, batch_size, shuffle_seed=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((X, y_idx.astype(np.int32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(X), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(lambda x, t: (tf.cast(x, tf.float32), t)).prefetch(2)


def _fit_keras(model, train_ds, val_ds, epochs, lr, class_weight, patience, verbose):
    """Adam + cross-entropy; early stopping on val loss (best weights kept). Returns history."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = []
    if val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True))
    hist = model.fit(train_ds, epochs=epochs, validation_data=val_ds, class_weight=class_weight,
                     callbacks=callbacks, verbose=verbose)
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def _predict(model, X, batch_size):
    import tensorflow as tf

    out = []
    fn = getattr(model, "_hiercell_forward", None)
    if fn is None:
        fn = model._hiercell_forward = tf.function(
            lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
    for k in range(0, len(X), batch_size):
        out.append(fn(tf.constant(np.asarray(X[k:k + batch_size], dtype=np.float32))).numpy())
    if not out:
        return np.zeros((0,) + tuple(int(d) for d in model.output.shape[1:]), dtype=np.float32)
    return np.concatenate(out)


def _augment_batch(x, y):
    """A random flip and 90-degree rotation per sample of (b, h, w, c) square maps."""
    import tensorflow as tf

    rotations = tf.stack([tf.image.rot90(x, k) for k in range(4)], axis=1)  # (b, 4, h, w, c)
    k = tf.random.uniform((tf.shape(x)[0],), 0, 4, dtype=tf.int32)
    x = tf.gather(rotations, k, batch_dims=1)
    flip = tf.random.uniform((tf.shape(x)[0], 1, 1, 1)) < 0.5
    return tf.where(flip, tf.reverse(x, axis=[2]), x), y


def _set_block5(head, weights):
    from .backbone import BLOCK5_LAYERS

    for name, w in zip(BLOCK5_LAYERS, weights):
        head.get_layer(name).set_weights(w)
