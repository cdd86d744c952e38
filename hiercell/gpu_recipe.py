"""The study's recipe end to end on images (``hiercell train --gpu-recipe``).

Where the default (CPU) path trains the head on cached trunk features with
feature-map augmentation, this path streams images through the frozen trunk
on every step, with the study's image augmentation (rotation, shifts, zoom,
flips), at 224 px by default, in mixed precision when a GPU is present:

1. block5 frozen: the dense head trains (``head_epochs``, Adam 1e-3);
2. block5 unfrozen: fine-tuning at 1e-4 (``finetune_epochs``);
3. the SVM is tuned and fit on the Dense(1024) embeddings (train + val).

The result is the same kind of :class:`~hiercell.hierarchy.HierarchicalClassifier`
and bundle as the CPU path. It runs on a CPU too, only slowly.
"""

from __future__ import annotations

import numpy as np

from .training import TrainSettings, block5_imagenet_weights, stage_targets


def _image_dataset(paths, labels, settings: TrainSettings, training: bool):
    """tf.data pipeline: decode, (mask), square-resize, VGG preprocessing; batched."""
    import tensorflow as tf

    from .backbone import preprocess
    from .features import prepare_image
    from .io import load_image

    size = settings.input_size

    def load(path):
        img = prepare_image(load_image(path.decode()), size, settings.masked)
        return preprocess(img[None])[0]

    ds = tf.data.Dataset.from_tensor_slices((np.array([str(p) for p in paths]), labels.astype(np.int32)))
    if training:
        ds = ds.shuffle(len(paths), seed=settings.seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda p, y: (tf.ensure_shape(tf.numpy_function(load, [p], tf.float32), (size, size, 3)), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(settings.batch_size).prefetch(tf.data.AUTOTUNE)


def _augmenter(seed):
    import keras

    layers = keras.layers
    return keras.Sequential([
        layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
    ], name="augment")


def fit_stage_on_images(paths, y, val_paths, y_val, trunk, settings: TrainSettings, block5):
    """A :class:`~hiercell.stage.StageClassifier` whose head trained on augmented images."""
    import keras

    from .backbone import build_head, set_block5_trainable
    from .stage import StageClassifier, _fit_keras, _set_block5, balanced_class_weight

    stage = StageClassifier(**settings.stage_params(block5, verbose=2))
    stage.classes_ = np.unique(y)
    y_idx = np.searchsorted(stage.classes_, y)
    yv_idx = np.searchsorted(stage.classes_, y_val)
    stage.feature_shape_ = tuple(int(d) for d in trunk.output.shape[1:])
    head = build_head(len(stage.classes_), stage.feature_shape_, dropout=stage.dropout,
                      seed=settings.seed)
    if block5 is not None:
        _set_block5(head, block5)
    inputs = keras.Input(shape=(settings.input_size, settings.input_size, 3))
    full = keras.Model(inputs, head(trunk(_augmenter(settings.seed)(inputs), training=False)))
    train_ds = _image_dataset(paths, y_idx, settings, training=True)
    val_ds = _image_dataset(val_paths, yv_idx, settings, training=False) if len(val_paths) else None
    class_weight = balanced_class_weight(y_idx, len(stage.classes_))
    stage.history_ = {}
    for phase, epochs, lr, trainable in (("head", stage.head_epochs, stage.head_lr, False),
                                         ("finetune", stage.finetune_epochs, stage.finetune_lr, True)):
        if epochs > 0:
            set_block5_trainable(head, trainable)
            stage.history_[phase] = _fit_keras(full, train_ds, val_ds, epochs, lr, class_weight,
                                               stage.patience, stage.verbose)
    stage.head_ = head
    return stage


def train_gpu_recipe(samples, settings: TrainSettings, stages=(1, 2)):
    """Both stages with the image-space recipe; returns a HierarchicalClassifier."""
    import keras
    import tensorflow as tf

    from .hierarchy import HierarchicalClassifier

    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    block5, trunk, wid = block5_imagenet_weights(settings)
    split = np.array([s.split for s in samples])
    paths = np.array([str(s.path) for s in samples])
    fitted = {1: None, 2: None}
    for stage in stages:
        idx, y = stage_targets(samples, stage, settings.others_per_class, settings.seed)
        tr, va = split[idx] == "train", split[idx] == "val"
        clf = fit_stage_on_images(paths[idx[tr]], y[tr], paths[idx[va]], y[va], trunk, settings, block5)
        keep = tr | va if settings.svm_on_train_and_val else tr
        X = _trunk_forward(trunk, paths[idx[keep]], settings)
        clf.fit_svm(X, y[keep])
        fitted[stage] = clf
    keras.mixed_precision.set_global_policy("float32")
    info = {"backbone": {"name": "VGG16", "weights": wid, "trunk_layer": "block4_pool"},
            "training": {"recipe": "gpu (images, image augmentation)"}}
    return HierarchicalClassifier(trunk, fitted[1], fitted[2], input_size=settings.input_size,
                                  masked=settings.masked, info=info)


def _trunk_forward(trunk, paths, settings):
    from .stage import _predict

    ds = _image_dataset(paths, np.zeros(len(paths)), settings, training=False)
    return np.concatenate([_predict(trunk, x.numpy(), settings.batch_size) for x, _ in ds])
