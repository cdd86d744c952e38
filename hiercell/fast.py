"""An int8 VGG16 trunk through OpenVINO (optional: ``pip install "hiercell[fast]"``).

The trunk (VGG16 blocks 1-4, ~87 % of the network's work) is converted to
OpenVINO and quantized to int8 by NNCF's post-training quantization, calibrated
on training images (:func:`quantize_trunk`, ``hiercell quantize DATA``). On CPUs
with AMX or AVX512-VNNI int8 it runs about twice as fast as the bfloat16 trunk;
the stage heads run as ``auto`` would (:mod:`hiercell.ovnet`), the SVMs as they are.

The quantized trunk is stored under the feature cache folder, keyed by the SHA-256
of the bundle's ``trunk.npz`` (:func:`int8_dir`), so it only ever serves the trunk
it was made from; ``hiercell.load(bundle, precision="int8")`` and
``hiercell classify --precision int8`` use it, and say how to make it when it is
missing. OpenVINO is needed to run it, NNCF only to make it (from the float32 graph
of :func:`hiercell.ovnet.trunk_graph`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .fileutil import json_text

from .ovnet import INSTALL_HINT, trunk_graph


class Int8TrunkMissing(FileNotFoundError):
    """No quantized trunk has been made for this bundle's trunk yet."""


def int8_dir(trunk_sha256: str, cache_dir=None) -> Path:
    """Where the int8 trunk of the trunk with digest ``trunk_sha256`` lives."""
    from .features import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "int8" / trunk_sha256[:16]


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return openvino


class Int8Trunk:
    """The quantized trunk: ``trunk(x)`` maps a VGG16 input batch (float32, from
    :func:`hiercell.backbone.vgg_input`) to ``block4_pool`` features (float32)."""

    precision = "int8"

    def __init__(self, folder):
        ov = _openvino()
        folder = Path(folder)
        self.info = json.loads((folder / "int8.json").read_text())
        self.compiled = ov.Core().compile_model(str(folder / "trunk.xml"), "CPU",
                                                {"PERFORMANCE_HINT": "LATENCY"})
        self.output_shape = (None, *self.info["output_shape"])

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(np.ascontiguousarray(x, dtype=np.float32))[0],
                          dtype=np.float32)


def load_int8_trunk(trunk_sha256: str, cache_dir=None) -> Int8Trunk:
    folder = int8_dir(trunk_sha256, cache_dir)
    if not (folder / "trunk.xml").is_file():
        raise Int8TrunkMissing(
            f"no int8 trunk for this bundle (looked in {folder}); make one from training "
            "images with: hiercell quantize DATA --model BUNDLE")
    return Int8Trunk(folder)


def quantize_trunk(model, images, cache_dir=None, batch_size: int = 1) -> Path:
    """Quantize ``model``'s trunk (a float32 :class:`~hiercell.model.ImageClassifier`)
    to int8, calibrated on ``images`` (paths or RGB arrays; a few hundred training
    images), and store it in :func:`int8_dir`. Returns the folder."""
    ov = _openvino()
    try:
        import nncf
    except ImportError as exc:
        raise ImportError('quantizing needs NNCF: pip install "hiercell[fast]"') from exc
    from .backbone import trunk_output_shape, vgg_input
    from .io import load_image

    digest = model.info.get("trunk_sha256")
    if not digest or model.info.get("precision") != "float32":
        raise ValueError("quantize a float32 model loaded from a bundle "
                         "(hiercell.load(bundle, precision='float32'))")
    rgb = [img if isinstance(img, np.ndarray) else load_image(img) for img in images]
    calib = [vgg_input(model.prepare([img])) for img in rgb]
    float_model = trunk_graph(model.trunk.get_weights(), model.input_size)  # Keras or OpenVINO
    quantized = nncf.quantize(float_model, nncf.Dataset(calib), subset_size=len(calib),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    folder = int8_dir(digest, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(folder / "trunk.xml"))
    shape = list(trunk_output_shape(model.trunk))
    atomic_write_text(folder / "int8.json", json_text({
        "trunk_sha256": digest, "input_size": model.input_size, "output_shape": shape,
        "calibration_images": len(calib), "openvino": ov.__version__,
        "nncf": nncf.__version__}, indent=2))
    return folder
