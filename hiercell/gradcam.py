"""Grad-CAM (Selvaraju et al., ICCV 2017) for a stage's fine-tuned network head.

The heat map is the ReLU of the ``block5_conv3`` activations weighted by the
spatially averaged gradient of the class score, upsampled to the input image.
It explains the *network head* whose Dense(1024) features the SVM reads, not
the SVM itself. It works on the trunk features of the image as the network
saw it (masked or not): :meth:`hiercell.model.ImageClassifier.gradcam` passes
them in.
"""

from __future__ import annotations

import cv2
import numpy as np

TARGET_LAYER = "block5_conv3"


def gradcam_map(head, classes, features: np.ndarray, image_shape, class_name: str | None = None
                ) -> np.ndarray:
    """Heat map ``(H, W)`` float32 in [0, 1] on an image grid of ``image_shape`` (H, W, ...).

    ``head``: a stage's Keras head; ``classes``: its class names in output order;
    ``features``: the trunk features of one image, ``(h, w, 512)`` or ``(1, h, w, 512)``;
    ``class_name``: one of ``classes`` (default: the head's top class).
    """
    import keras
    import tensorflow as tf

    classes = [str(c) for c in classes]
    grad_model = getattr(head, "_hiercell_gradcam", None)
    if grad_model is None:
        grad_model = keras.Model(head.input, [head.get_layer(TARGET_LAYER).output, head.output])
        head._hiercell_gradcam = grad_model
    x = tf.constant(np.asarray(features, np.float32).reshape((1,) + tuple(head.input.shape[1:])))
    if class_name is not None and class_name not in classes:
        raise ValueError(f"unknown class {class_name!r}; expected one of {classes}")
    with tf.GradientTape() as tape:
        activations, probs = grad_model(x, training=False)
        k = int(tf.argmax(probs[0])) if class_name is None else classes.index(class_name)
        score = probs[:, k]
    grads = tape.gradient(score, activations)[0].numpy()
    acts = activations[0].numpy()
    cam = np.maximum((acts * grads.mean(axis=(0, 1))).sum(-1), 0)
    if cam.max() > 0:
        cam = cam / cam.max()
    h, w = image_shape[:2]
    side = max(h, w)
    cam = cv2.resize(cam.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    top, left = (side - h) // 2, (side - w) // 2
    return np.clip(cam[top:top + h, left:left + w], 0, 1).astype(np.float32)
