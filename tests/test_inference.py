"""The image-level model: masking reaches the network and Grad-CAM, the bfloat16 trunk."""

import numpy as np
import pytest

from hiercell.backbone import run_trunk
from hiercell.bundle import load
from hiercell.model import MaskingError
from hiercell.preprocess import prepare_batch

from conftest import FIXTURES, rgb_images

IMAGES = rgb_images(sorted(FIXTURES.glob("*/*.jpg"))[::8])  # 256 px cells that segment


def test_masking_reaches_the_network(tiny_model):
    model = tiny_model
    size = model.input_size
    masked = model.features(IMAGES, masked=True)
    plain = model.features(IMAGES, masked=False)
    np.testing.assert_allclose(masked, run_trunk(model.trunk, prepare_batch(IMAGES, size, True, model.preprocess)),
                               atol=1e-5)
    np.testing.assert_allclose(plain, run_trunk(model.trunk, prepare_batch(IMAGES, size, False, model.preprocess)),
                               atol=1e-5)
    assert np.abs(masked - plain).mean() > 1e-3 * np.abs(plain).mean()
    # predictions on the masking the stages were not trained for are refused (issue 11)
    with pytest.raises(MaskingError):
        model.predict_records(IMAGES, masked=True)
    assert not model.masked  # and the model's default is what it was trained with
    np.testing.assert_allclose(model.features(IMAGES), plain, atol=1e-6)


def test_prepare_batch_masks_before_resizing():
    batch = prepare_batch(IMAGES[:1], 64, masked=True)
    assert batch.shape == (1, 64, 64, 3) and batch.dtype == np.uint8
    assert (batch[0, 0, 0] == 0).all()  # outside the cell is black
    assert (prepare_batch(IMAGES[:1], 64)[0, 0, 0] > 0).any()
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare_batch([IMAGES[0].astype(np.float32)], 64)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        prepare_batch(IMAGES[:1], 64, config={"white_balance": True})


def test_gradcam_is_not_empty_and_follows_the_masking(tiny_model):
    rgb = IMAGES[0]
    heat = tiny_model.gradcam(rgb, masked=False)
    assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0 and heat.std() > 0.01
    masked = tiny_model.gradcam(rgb, masked=True)
    given = tiny_model.gradcam(rgb, features=tiny_model.features([rgb], masked=True))
    np.testing.assert_allclose(masked, given, atol=1e-5)
    assert np.abs(masked - heat).mean() > 1e-3


def test_bfloat16_trunk(tiny_bundle, tiny_model):
    fast = load(tiny_bundle, precision="bfloat16", engine="keras")  # Keras: its dtype policies
    assert fast.info["precision"] == "bfloat16"
    assert fast.trunk.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert fast.stage1.head_.get_layer("block5_conv1").dtype_policy.name == "mixed_bfloat16"
    assert tiny_model.stage1.head_.get_layer("block5_conv1").dtype_policy.name == "float32"
    assert fast.trunk_config().key != tiny_model.trunk_config().key  # never share a cache
    f32, bf16 = tiny_model.features(IMAGES), fast.features(IMAGES)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).mean() < 0.05 * np.abs(f32).mean()
    np.testing.assert_allclose(fast.predict_proba(IMAGES).sum(1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="precision"):
        load(tiny_bundle, precision="int4")


def test_int8_without_a_quantized_trunk_says_how_to_make_one(tiny_bundle, tmp_path, monkeypatch):
    from hiercell.fast import Int8TrunkMissing

    monkeypatch.setenv("HIERCELL_CACHE", str(tmp_path))
    with pytest.raises(Int8TrunkMissing, match="hiercell quantize"):
        load(tiny_bundle, precision="int8")


def test_auto_precision_is_the_default_and_recorded(tiny_bundle):
    from hiercell.backbone import inference_precision, native_bf16

    import tensorflow as tf

    expected = "bfloat16" if native_bf16() else "float32"
    if tf.config.list_physical_devices("GPU"):
        expected = "float16"
    assert inference_precision("auto") == expected
    assert load(tiny_bundle).info["precision"] == expected
