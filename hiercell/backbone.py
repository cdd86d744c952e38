"""VGG16 backbone: weights resolution, the frozen trunk and the trainable head.

The network is split in two at ``block4_pool``:

* the **trunk** (blocks 1-4, ImageNet weights, always frozen) maps an RGB
  image to a ``(S/16, S/16, 512)`` feature map; its outputs are cached on disk;
* the **head** (block5 convolutions, global average pooling, Dense(1024),
  Dropout, Dense(512), Dropout, softmax) is what each stage trains: first with
  block5 frozen, then with block5 fine-tuned at a learning rate of 1e-4.

The SVM of each stage is fit on the Dense(1024) activations of its head.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

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
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


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


def build_head(n_classes: int, feature_shape, vgg=None, dropout: float = 0.2, seed: int = 0):
    """block5 + GAP + Dense(1024) + Dropout + Dense(512) + Dropout + softmax.

    ``feature_shape`` is the trunk's output shape ``(h, w, 512)``. When ``vgg``
    is given, block5 starts from its (ImageNet) weights.
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
    if vgg is not None:
        for name in BLOCK5_LAYERS:
            head.get_layer(name).set_weights(vgg.get_layer(name).get_weights())
    return head


def set_block5_trainable(head, trainable: bool) -> None:
    """Freeze or unfreeze the block5 convolutions of a head."""
    for name in BLOCK5_LAYERS:
        head.get_layer(name).trainable = trainable


def embedding_model(head):
    """``head`` cut at the Dense(1024) layer: trunk features -> 1024-d embedding."""
    keras = _keras()
    return keras.Model(head.input, head.get_layer(EMBEDDING_LAYER).output)


def preprocess(images: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(n, S, S, 3)`` -> VGG16 input (BGR, ImageNet mean removed), float32."""
    x = images[..., ::-1].astype(np.float32)
    x -= np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return x
