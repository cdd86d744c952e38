"""VGG16 backbone: weights resolution, the frozen trunk and the trainable head.

The network is split in two at ``block4_pool``:

* the **trunk** (blocks 1-4, ImageNet weights, always frozen) maps an RGB
  image to a ``(S/16, S/16, 512)`` feature map; its outputs are cached on disk;
* the **head** (block5 convolutions, global average pooling, Dense(1024),
  Dropout, Dense(512), Dropout, softmax) is what each stage trains: first with
  block5 frozen, then with block5 fine-tuned at a learning rate of 1e-4.

The SVM of each stage is fit on the Dense(1024) activations of its head.

It also holds the Keras toolbox the rest of the package uses (all public):
:func:`predict_batches`, :func:`fit_keras`, :func:`tensor_dataset`,
:func:`augment_feature_maps`, :func:`class_weights`, :func:`training_precision`,
:func:`precision_policy` and :func:`vgg_input`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from .fileutil import file_digest

WEIGHTS_ENV = "HIERCELL_VGG16_WEIGHTS"
KERAS_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
TRUNK_OUTPUT = "block4_pool"
BLOCK5_LAYERS = ("block5_conv1", "block5_conv2", "block5_conv3")
EMBEDDING_LAYER = "embedding"  # the Dense(1024) layer the SVM reads
DENSE_LAYERS = (EMBEDDING_LAYER, "dropout_1024", "dense_512", "dropout_512", "softmax")


class BackboneWeightsError(RuntimeError):
    """The ImageNet VGG16 weights could not be found or loaded."""


def _keras():
    import keras  # imported lazily: TensorFlow start-up costs seconds

    return keras


def resolve_weights(weights: str | os.PathLike | None = None) -> str | None:
    """Return what to pass to ``keras.applications.VGG16(weights=...)``.

    ``weights`` may be a path to Keras' ``*_notop.h5`` file, ``"imagenet"``
    (the standard Keras download, needs internet the first time) or ``"none"``
    (random initialisation). When it is ``None`` the environment variable
    ``HIERCELL_VGG16_WEIGHTS`` is used, then the Keras cache, then ``"imagenet"``.
    """
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or None
    if weights is None:
        cached = Path.home() / ".keras" / "models" / KERAS_NOTOP_FILE
        return str(cached) if cached.is_file() else "imagenet"
    weights = str(weights)
    if weights.lower() == "none":
        return None
    if weights.lower() == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise BackboneWeightsError(
            f"VGG16 weights file not found: {weights}. Pass the path of Keras' "
            f"{KERAS_NOTOP_FILE} (option --backbone-weights or ${WEIGHTS_ENV}), "
            "'imagenet' to download it, or 'none' to start from random weights."
        )
    return weights


def weights_id(weights: str | None) -> str:
    """A short stable identifier of a weights choice (file digest or keyword)."""
    if weights is None:
        return "random"
    if weights == "imagenet":
        return "imagenet-keras"
    return "sha256:" + file_digest(weights, "sha256")[:16]


def build_vgg16(input_size: int, weights: str | None, seed: int = 0):
    """Keras VGG16 without its top, at ``input_size`` px, with resolved ``weights``."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    try:
        return keras.applications.VGG16(
            include_top=False, weights=weights, input_shape=(input_size, input_size, 3)
        )
    except Exception as exc:  # download failure, bad file
        raise BackboneWeightsError(
            f"could not load VGG16 weights {weights!r}: {exc}. Without internet, pass "
            f"the path of {KERAS_NOTOP_FILE} via --backbone-weights or ${WEIGHTS_ENV}."
        ) from exc


def build_trunk(vgg):
    """The frozen part of ``vgg``: input image -> ``block4_pool`` feature map."""
    keras = _keras()
    trunk = keras.Model(vgg.input, vgg.get_layer(TRUNK_OUTPUT).output, name="trunk")
    trunk.trainable = False
    return trunk


def vgg16_trunk(input_size: int):
    """The trunk alone (VGG16 blocks 1-4, the layers and weight order of
    :func:`build_trunk`), unweighted: what a bundle's ``trunk.npz`` is loaded into,
    without building block5."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(input_size, input_size, 3))
    x = inputs
    for block, (n_convs, filters) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512)), 1):
        for i in range(1, n_convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              name=f"block{block}_conv{i}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    trunk = keras.Model(inputs, x, name="trunk")
    trunk.trainable = False
    return trunk


def build_head(n_classes: int, feature_shape, block5_weights=None, dropout: float = 0.2,
               seed: int = 0):
    """block5 + GAP + Dense(1024) + Dropout + Dense(512) + Dropout + softmax.

    ``feature_shape`` is the trunk's output shape ``(h, w, 512)``. ``block5_weights``
    (from :func:`block5_weights`, e.g. ImageNet's) is where block5 starts; ``None``
    leaves it randomly initialised.
    """
    keras = _keras()
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(feature_shape), name="trunk_features")
    x = inputs
    for name in BLOCK5_LAYERS:
        x = layers.Conv2D(512, 3, padding="same", activation="relu", name=name)(x)
    x = layers.MaxPooling2D(2, name="block5_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(1024, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout_1024")(x)
    x = layers.Dense(512, activation="relu", name="dense_512")(x)
    x = layers.Dropout(dropout, name="dropout_512")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="softmax")(x)
    head = keras.Model(inputs, outputs, name="head")
    if block5_weights is not None:
        for name, w in zip(BLOCK5_LAYERS, block5_weights):
            head.get_layer(name).set_weights(w)
    return head


def block5_weights(vgg) -> list:
    """The block5 convolution weights of a VGG16 (or of a head), to start a head from."""
    return [vgg.get_layer(name).get_weights() for name in BLOCK5_LAYERS]


def set_block5_trainable(head, trainable: bool) -> None:
    """Freeze or unfreeze the block5 convolutions of a head."""
    for name in BLOCK5_LAYERS:
        head.get_layer(name).trainable = trainable


def embedding_model(head):
    """``head`` cut at the Dense(1024) layer: trunk features -> 1024-d embedding."""
    keras = _keras()
    return keras.Model(head.input, head.get_layer(EMBEDDING_LAYER).output)


def vgg_input(images: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(n, S, S, 3)`` (from :func:`hiercell.preprocess.prepare_batch`) -> VGG16
    input (BGR, ImageNet mean removed), float32."""
    x = images[..., ::-1].astype(np.float32)
    x -= np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return x


def run_trunk(trunk, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Trunk features ``(n, h, w, 512)`` float32 of a prepared uint8 batch (a Keras trunk,
    or one with ``predict_batch``, such as :class:`hiercell.fast.Int8Trunk`)."""
    if hasattr(trunk, "predict_batch"):
        out = [trunk.predict_batch(vgg_input(batch[k:k + batch_size]))
               for k in range(0, len(batch), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *trunk_output_shape(trunk)),
                                                        np.float32)
    return predict_batches(trunk, vgg_input(batch), batch_size)


def trunk_output_shape(trunk) -> tuple:
    """``(h, w, 512)``: the shape of one image's trunk features."""
    shape = trunk.output.shape if hasattr(trunk, "output") else trunk.output_shape
    return tuple(int(d) for d in shape[1:])


# --------------------------------------------------------------------------- Keras toolbox


def predict_batches(model, X, batch_size: int = 256) -> np.ndarray:
    """``model(X)`` in float32, batch by batch, through one cached ``tf.function``."""
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


def fit_keras(model, train_ds, val_ds, epochs, lr, class_weight, patience, verbose,
              steps_per_execution=1) -> dict:
    """Adam + cross-entropy; early stopping on val loss (best weights kept). Returns history.
    ``steps_per_execution`` batches run per call into the compiled graph (fewer Python
    round trips for short steps)."""
    keras = _keras()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    callbacks = []
    if val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True))
    # the tf.data sets shuffle themselves (shuffle=True would only make Keras warn)
    hist = model.fit(train_ds, epochs=epochs, validation_data=val_ds, class_weight=class_weight,
                     callbacks=callbacks, verbose=verbose, shuffle=False)
    return {k: [float(v) for v in vs] for k, vs in hist.history.items()}


def tensor_dataset(X, y_idx, batch_size, shuffle_seed=None):
    """A batched ``tf.data`` set of ``(float32 X, int32 y)``; shuffled when a seed is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((X, y_idx.astype(np.int32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(X), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(lambda x, t: (tf.cast(x, tf.float32), t)).prefetch(2)


def multiview_dataset(views, y_idx, batch_size, seed=0):
    """A ``tf.data`` set of ``(float32 x, int32 y)`` batches over ``len(y_idx)`` images,
    each epoch visiting every image once (shuffled) through one of ``views`` (arrays
    of the same shape, e.g. trunk features of augmented views) drawn at random."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = len(y_idx)
    shape = tuple(int(d) for d in views[0].shape[1:])

    def batches():
        order = rng.permutation(n)
        pick = rng.integers(0, len(views), n)
        for k in range(0, n, batch_size):
            sel = order[k:k + batch_size]
            x = np.stack([views[pick[j]][j] for j in sel]).astype(np.float32)
            yield x, y_idx[sel].astype(np.int32)

    spec = (tf.TensorSpec((None,) + shape, tf.float32), tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    # a generator's length is unknown to Keras, which then finds the epoch's end by running
    # out of data and warns that it did ("Your input ran out of data") on every fit
    n_batches = -(-n // batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def augment_feature_maps(x, y):
    """A random flip and 90-degree rotation per sample of (b, h, w, c) square maps."""
    import tensorflow as tf

    rotations = tf.stack([tf.image.rot90(x, k) for k in range(4)], axis=1)  # (b, 4, h, w, c)
    k = tf.random.uniform((tf.shape(x)[0],), 0, 4, dtype=tf.int32)
    x = tf.gather(rotations, k, batch_dims=1)
    flip = tf.random.uniform((tf.shape(x)[0], 1, 1, 1)) < 0.5
    return tf.where(flip, tf.reverse(x, axis=[2]), x), y


def class_weights(y_idx, n_classes) -> dict:
    """Keras ``class_weight`` (index -> weight) making every class weigh the same in the loss."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y_idx)
    weights = compute_class_weight("balanced", classes=present, y=y_idx)
    out = dict.fromkeys(range(n_classes), 0.0)
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_gpu_device() -> bool:
    """Whether this machine shows a GPU device node (NVIDIA or AMD): checked without
    TensorFlow, which then tells whether it can use it."""
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/kfd"))


def training_precision(precision="auto") -> str:
    """The Keras dtype policy name that ``precision`` stands for on this machine.

    ``"auto"``: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bf16,
    float32 otherwise; any other value is returned as given.
    """
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if native_bf16() else "float32"


#: Trunk precisions at inference, and the Keras dtype policy of each.
INFERENCE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
                      "float16": "mixed_float16", "int8": None}  # int8: OpenVINO (hiercell.fast)


def inference_precision(precision="auto") -> str:
    """``"float32"``/``"bfloat16"``/``"float16"``/``"int8"``/``"auto"`` -> the trunk's precision.

    ``"auto"``: mixed float16 on a GPU, bfloat16 on a CPU with native bf16
    (AVX512-BF16 / AMX), float32 otherwise. bfloat16 changed no test-split figure by
    more than 0.1 point on the bundled model (``bench/bench_precision.py``). ``"int8"``
    (never chosen by ``"auto"``) is the OpenVINO trunk of :mod:`hiercell.fast`.
    """
    if precision == "auto":  # no GPU device node: decided without importing TensorFlow
        precision = (training_precision("auto").replace("mixed_", "") if has_gpu_device()
                     else "bfloat16" if native_bf16() else "float32")
    if precision not in INFERENCE_POLICIES:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_POLICIES)} or 'auto', "
                         f"not {precision!r}")
    return precision


@contextlib.contextmanager
def precision_policy(name):
    """Temporarily set Keras' global dtype policy (``"float32"``, ``"mixed_bfloat16"``, ...)."""
    keras = _keras()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
