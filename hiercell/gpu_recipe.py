"""The study's recipe on images (``hiercell train --gpu-recipe``): one stage's network.

Where the default recipe trains the head on cached trunk features with
feature-map augmentation (:meth:`StageClassifier.fit`), this one streams images
through the frozen trunk on every step, with the study's image augmentation
(rotation, shifts, zoom, flips), at 224 px by default:

1. block5 frozen: the dense head trains (``head_epochs``, Adam 1e-3);
2. block5 unfrozen: fine-tuning at 1e-4 (``finetune_epochs``);
3. the SVM is tuned and fit on the Dense(1024) embeddings of the (cached)
   trunk features, train + val.

:func:`hiercell.training.fit_hierarchy` runs the stages of both recipes in one
loop (same data selection, unreadable-image policy, precision and "stage 2
skipped" guard). It runs on a CPU too, only slowly.
"""

from __future__ import annotations

import numpy as np

from .backbone import (build_trunk, build_vgg16, fit_keras, precision_policy,
                       set_block5_trainable, vgg_input)
from .io import load_image
from .preprocess import prepare_batch


def image_dataset(paths, labels, input_size, masked, batch_size, shuffle_seed=None,
                  preprocess=None):
    """tf.data pipeline: decode, prepare (:func:`~hiercell.preprocess.prepare_batch`),
    VGG input; batched. Every path must be readable (the caller checked)."""
    import tensorflow as tf

    def load(path):
        batch = prepare_batch([load_image(path.decode())], input_size, masked, preprocess)
        return vgg_input(batch)[0]

    ds = tf.data.Dataset.from_tensor_slices(
        (np.array([str(p) for p in paths]), np.asarray(labels).astype(np.int32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    shape = (input_size, input_size, 3)
    ds = ds.map(lambda p, y: (tf.ensure_shape(tf.numpy_function(load, [p], tf.float32), shape), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def augmenter(seed):
    """The study's image augmentation: rotation, shifts, zoom, flips."""
    import keras

    layers = keras.layers
    return keras.Sequential([
        layers.RandomRotation(0.1, fill_mode="reflect", seed=seed),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
    ], name="augment")


def fit_stage_on_images(stage, X, y, X_val, y_val, paths, val_paths, trunk, input_size,
                        masked=False, preprocess=None):
    """Fit ``stage`` (an unfitted :class:`~hiercell.stage.StageClassifier`) with its
    network trained on augmented images ``paths``/``val_paths``; ``X``/``X_val`` are the
    trunk features of the same images, for the SVM. Returns ``stage``."""
    import keras

    y_idx, yv_idx, known, class_weight = stage.start(y, X.shape[1:], y_val)
    seed = stage.random_state
    train_ds = image_dataset(paths, y_idx, input_size, masked, stage.batch_size, seed, preprocess)
    val_ds = (image_dataset(np.asarray(val_paths)[known], yv_idx, input_size, masked,
                            stage.batch_size, None, preprocess) if yv_idx is not None else None)
    with precision_policy(stage.precision_):
        head = stage.new_head()
        frozen = build_trunk(build_vgg16(input_size, weights=None))
        frozen.set_weights(trunk.get_weights())
        inputs = keras.Input(shape=(input_size, input_size, 3))
        full = keras.Model(inputs, head(frozen(augmenter(seed)(inputs), training=False)))
        for phase, epochs, lr, trainable in (("head", stage.head_epochs, stage.head_lr, False),
                                             ("finetune", stage.finetune_epochs,
                                              stage.finetune_lr, True)):
            if epochs > 0:
                set_block5_trainable(head, trainable)
                stage.history_[phase] = fit_keras(full, train_ds, val_ds, epochs, lr,
                                                  class_weight, stage.patience, stage.verbose)
    return stage.finish(head, X, y, X_val, y_val)
