"""The network in OpenVINO, built from a bundle's own weights: inference without TensorFlow.

When OpenVINO is installed (``pip install "hiercell[fast]"``), :func:`hiercell.load`
runs the VGG16 trunk (blocks 1-4) and each stage's embedding (block5, pooling,
GAP, Dense(1024)) through OpenVINO graphs made here, op by op, from the arrays of
``trunk.npz`` and ``stageN/head.npz``; nothing imports TensorFlow, so a run starts
in about half the time. The layers and weight order are those of
:func:`hiercell.backbone.vgg16_trunk` and :func:`hiercell.backbone.build_head`.

Precisions: ``float32`` (``INFERENCE_PRECISION_HINT`` f32) and ``bfloat16`` (bf16,
on CPUs with native bf16); Keras stays the engine for float16 (GPUs) and training.
"""

from __future__ import annotations

import os

import numpy as np

#: OpenVINO's inference precision hint for each hiercell precision it runs.
HINTS = {"float32": "f32", "bfloat16": "bf16"}
ENGINES = ("auto", "keras", "openvino")
INSTALL_HINT = 'OpenVINO is not installed: pip install "hiercell[fast]"'
#: The engine :func:`hiercell.load` uses when none is given (default ``auto``).
ENGINE_ENV = "HIERCELL_ENGINE"
_TRUNK_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512))


def available() -> bool:
    """Whether OpenVINO can be imported (without importing it)."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def resolve_engine(engine: str | None, precision: str) -> str:
    """``"keras"`` or ``"openvino"``: what runs ``precision`` for ``engine`` (``None``:
    ``$HIERCELL_ENGINE``, else ``"auto"``).

    ``"auto"``: OpenVINO where it is installed, the machine shows no GPU and it runs
    that precision (float32, bfloat16); Keras otherwise. ``"openvino"`` asked for a
    precision it does not run is an error."""
    engine = engine or os.environ.get(ENGINE_ENV) or "auto"
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "openvino":
        if precision not in HINTS:
            raise ValueError(f"the OpenVINO engine runs {' and '.join(HINTS)}, not {precision}")
        if not available():
            raise ImportError(INSTALL_HINT)
        return engine
    from .backbone import has_gpu_device

    if engine == "auto" and precision in HINTS and available() and not has_gpu_device():
        return "openvino"
    return "keras"


def _ops():
    import openvino as ov
    import openvino.opset13 as ops

    return ov, ops


def _conv_relu(ops, x, kernel, bias):
    """3x3 'same' convolution + bias + ReLU on NCHW; ``kernel`` in Keras' HWIO order."""
    w = ops.constant(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), np.float32))
    y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    b = ops.constant(np.asarray(bias, np.float32).reshape(1, -1, 1, 1))
    return ops.relu(ops.add(y, b))


def _pool(ops, x):
    return ops.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], rounding_type="floor").output(0)


def trunk_graph(weights: list, input_size: int):
    """OpenVINO model: VGG16 input ``(n, S, S, 3)`` float32 (``vgg_input``) ->
    ``block4_pool`` features ``(n, S/16, S/16, 512)``, from the trunk's weight list."""
    ov, ops = _ops()
    x_in = ops.parameter([-1, input_size, input_size, 3], np.float32, name="image")
    x = ops.transpose(x_in, ops.constant(np.array([0, 3, 1, 2], np.int64)))
    it = iter(weights)
    for n_convs, _ in _TRUNK_BLOCKS:
        for _ in range(n_convs):
            x = _conv_relu(ops, x, next(it), next(it))
        x = _pool(ops, x)
    out = ops.transpose(x, ops.constant(np.array([0, 2, 3, 1], np.int64)))
    return ov.Model([out], [x_in], "trunk")


def embedding_graph(weights: list, feature_shape):
    """OpenVINO model: trunk features ``(n, h, w, 512)`` -> the Dense(1024) embedding
    (block5, block5_pool, GAP, Dense + ReLU), from a head's weight list."""
    ov, ops = _ops()
    x_in = ops.parameter([-1, *(int(d) for d in feature_shape)], np.float32, name="features")
    x = ops.transpose(x_in, ops.constant(np.array([0, 3, 1, 2], np.int64)))
    for i in range(3):
        x = _conv_relu(ops, x, weights[2 * i], weights[2 * i + 1])
    x = ops.reduce_mean(_pool(ops, x), ops.constant(np.array([2, 3], np.int64)), False)
    y = ops.matmul(x, ops.constant(np.asarray(weights[6], np.float32)), False, False)
    y = ops.relu(ops.add(y, ops.constant(np.asarray(weights[7], np.float32).reshape(1, -1))))
    return ov.Model([y], [x_in], "embedding")


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def compile_graph(model, precision: str):
    """``model`` compiled for the CPU in ``precision`` (float32 or bfloat16)."""
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": _threads()})


def _run(compiled, x, batch_size: int = 32) -> np.ndarray:
    """``compiled``'s output on ``x``, ``batch_size`` rows at a time, through an infer
    request of this call's own: the compiled model's implicit one is shared, so two
    threads predicting at once failed ('Infer Request is busy')."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    request = compiled.create_infer_request()
    return np.concatenate([np.array(request.infer(x[k:k + batch_size])[0], dtype=np.float32)
                           for k in range(0, len(x), batch_size)])


class Trunk:
    """The trunk in OpenVINO: ``predict_batch(vgg_input(batch))`` -> ``block4_pool``
    features; :meth:`get_weights` gives back the bundle's arrays (to save a bundle)."""

    def __init__(self, weights: list, input_size: int, precision: str):
        self.weights = weights
        self.precision = precision
        side = input_size // 16
        self.output_shape = (None, side, side, 512)
        self.compiled = compile_graph(trunk_graph(weights, input_size), precision)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return _run(self.compiled, x)

    def get_weights(self) -> list:
        return list(self.weights)


class Embedder:
    """A stage's Dense(1024) embedding in OpenVINO, built on first call from
    ``weights`` (a list of arrays, or a callable returning one)."""

    def __init__(self, weights, feature_shape, precision: str):
        self._weights = weights
        self.feature_shape = tuple(int(d) for d in feature_shape)
        self.precision = precision
        self._compiled = None

    def __call__(self, X, batch_size: int = 256) -> np.ndarray:
        if self._compiled is None:
            weights = self._weights() if callable(self._weights) else self._weights
            self._compiled = compile_graph(embedding_graph(weights, self.feature_shape),
                                           self.precision)
            self._weights = None
        if len(X) == 0:
            return np.zeros((0, 1024), np.float32)
        return _run(self._compiled, X, batch_size)
