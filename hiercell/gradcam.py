"""Grad-CAM (Selvaraju et al., ICCV 2017) for stage 1's fine-tuned network head.

The heat map is the ReLU of the ``block5_conv3`` activations weighted by the
spatially averaged gradient of the class score, upsampled to the input image.
It explains the *network head* whose Dense(1024) features the SVM reads, not
the SVM itself.
"""

from __future__ import annotations

import cv2
import numpy as np

from .taxonomy import MAIN_CLASSES

TARGET_LAYER = "block5_conv3"


def gradcam_map(model, rgb: np.ndarray, class_name: str | None = None, masked: bool = False) -> np.ndarray:
    """Heat map ``(H, W)`` float32 in [0, 1] for ``class_name`` (a main class; a subclass
    maps to its main class) on RGB uint8 ``rgb`` of shape ``(H, W, 3)``.

    ``model`` is a :class:`~hiercell.hierarchy.HierarchicalClassifier`;
    default class: stage 1's network top class.
    """
    import keras
    import tensorflow as tf

    from .taxonomy import SUB_TO_MAIN

    stage = model.stage1
    head = stage.head_
    grad_model = getattr(head, "_hiercell_gradcam", None)
    if grad_model is None:
        grad_model = keras.Model(head.input, [head.get_layer(TARGET_LAYER).output, head.output])
        head._hiercell_gradcam = grad_model
    features = model.trunk_features([rgb], masked=masked)
    x = tf.constant(features, dtype=tf.float32)
    with tf.GradientTape() as tape:
        activations, probs = grad_model(x, training=False)
        classes = [str(c) for c in stage.classes_]
        if class_name is None:
            k = int(tf.argmax(probs[0]))
        else:
            name = SUB_TO_MAIN.get(class_name, class_name)
            if name not in classes:
                raise ValueError(f"unknown class {class_name!r}; expected one of {MAIN_CLASSES}")
            k = classes.index(name)
        score = probs[:, k]
    grads = tape.gradient(score, activations)[0].numpy()
    acts = activations[0].numpy()
    cam = np.maximum((acts * grads.mean(axis=(0, 1))).sum(-1), 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    h, w = rgb.shape[:2]
    side = max(h, w)
    cam = cv2.resize(cam.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    top, left = (side - h) // 2, (side - w) // 2
    return np.clip(cam[top:top + h, left:left + w], 0, 1).astype(np.float32)
