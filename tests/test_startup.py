"""Start-up: what runs without TensorFlow, and the OpenVINO engine (:mod:`hiercell.ovnet`)
against the Keras one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hiercell.bundle import load

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "openvino", "sklearn")


def modules_after(code: str, cwd) -> dict:
    """Run ``code`` in a fresh interpreter (engine chosen as by default: no
    ``HIERCELL_ENGINE``); which of :data:`HEAVY` it imported."""
    script = (f"import sys, json\n{code}\n"
              f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    env = {k: v for k, v in os.environ.items() if k != "HIERCELL_ENGINE"}
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                         text=True, env={**env, "PYTHONPATH": str(ROOT),
                                         "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(args) -> str:
    return ("from hiercell.cli import main\n"
            f"try:\n    main({list(args)!r})\nexcept SystemExit as e:\n    assert not e.code, e")


def test_help_merge_and_reading_results_import_no_tensorflow(tmp_path):
    from hiercell.records import Prediction
    from hiercell.results import open_sink

    rec = Prediction("a.png", "basophil", 0.9, "basophil", 0.9, top=[("basophil", 0.9)],
                     precision="float32", shard="1/1")
    sink = open_sink(tmp_path / "r.csv")
    sink.write([rec])
    sink.commit([rec], {})
    for code in (cli(["--help"]), cli(["classify", "--help"]),
                 cli(["merge", "r.csv", "--out", "m.csv"]),
                 "from hiercell.results import read_results\nread_results('r.csv')"):
        seen = modules_after(code, tmp_path)
        assert not seen["tensorflow"] and not seen["keras"], code


def test_classify_on_openvino_imports_no_tensorflow(tmp_path):
    pytest.importorskip("openvino")
    seen = modules_after(cli(["classify", str(sorted(FIXTURES.glob("*/*.jpg"))[0]), "--out", "r.csv",
                              "--precision", "float32"]), tmp_path)
    assert seen["openvino"] and not seen["tensorflow"] and not seen["keras"]
    assert "float32" in (tmp_path / "r.csv").read_text()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_openvino_engine_matches_keras(tiny_bundle, precision):
    pytest.importorskip("openvino")
    from hiercell.backbone import native_bf16

    if precision == "bfloat16" and not native_bf16():
        pytest.skip("no native bf16 on this CPU")
    keras_model = load(tiny_bundle, precision=precision, engine="keras")
    ov_model = load(tiny_bundle, precision=precision, engine="openvino")
    assert (keras_model.info["engine"], ov_model.info["engine"]) == ("keras", "openvino")
    assert ov_model.trunk_config().key != keras_model.trunk_config().key  # never share a cache
    images = [np.asarray(np.random.default_rng(i).integers(0, 256, (40 + i, 48, 3)), np.uint8)
              for i in range(5)]
    fk, fo = keras_model.features(images), ov_model.features(images)
    ek, eo = keras_model.stage1.transform(fk), ov_model.stage1.transform(fk)
    if precision == "float32":
        np.testing.assert_allclose(fo, fk, rtol=1e-4, atol=1e-4 * np.abs(fk).max())
        np.testing.assert_allclose(eo, ek, rtol=1e-4, atol=1e-4 * np.abs(ek).max())
        np.testing.assert_allclose(ov_model.predict_proba(images),
                                   keras_model.predict_proba(images), atol=1e-4)
    else:  # bfloat16 roundings differ between the two engines
        assert np.abs(fo - fk).mean() < 0.05 * np.abs(fk).mean()
        assert np.abs(eo - ek).mean() < 0.05 * np.abs(ek).mean()


def test_openvino_engine_keeps_the_keras_head_for_training_and_gradcam(tiny_bundle):
    pytest.importorskip("openvino")
    model = load(tiny_bundle, precision="float32", engine="openvino")
    stage = model.stage1
    assert "_fast_embedder" in stage.__dict__ and "_head" not in stage.__dict__
    weights = [w.copy() for w in stage.head_.get_weights()]  # the Keras head, float32
    assert stage.head_.get_layer("block5_conv1").dtype_policy.name == "float32"
    assert [w.shape for w in model.trunk.get_weights()][:2] == [(3, 3, 3, 64), (64,)]
    stage.head_ = stage.head_  # new weights: the OpenVINO embedder must not serve them
    assert "_fast_embedder" not in stage.__dict__
    assert all(np.array_equal(a, b) for a, b in zip(weights, stage.head_.get_weights()))


def test_engine_is_checked(tiny_bundle, monkeypatch):
    with pytest.raises(ValueError, match="engine"):
        load(tiny_bundle, precision="float32", engine="onnx")
    monkeypatch.setenv("HIERCELL_ENGINE", "keras")
    assert load(tiny_bundle, precision="float32").info["engine"] == "keras"


@pytest.mark.parametrize("given, expected", [(None, "2"), ("0", "0")])
def test_the_command_line_quiets_tensorflows_notes_unless_asked(monkeypatch, tmp_path,
                                                                given, expected):
    import logging

    from click.testing import CliRunner

    from hiercell.cli import main

    if given is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", given)
    logger = logging.getLogger("tensorflow")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "missing.csv"), "--out",
                                       str(tmp_path / "all.csv")])
    assert result.exit_code != 0  # the command itself fails; the group ran first
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == expected
    assert logger.level == logging.ERROR


def test_openvino_model_predicts_from_several_threads_at_once(tiny_bundle):
    pytest.importorskip("openvino")
    import threading

    model = load(tiny_bundle, precision="float32", engine="openvino")
    images = [np.asarray(np.random.default_rng(i).integers(0, 256, (48, 48, 3)), np.uint8)
              for i in range(40)]
    expected = model.predict_proba(images, batch_size=40)
    results, errors = [None] * 4, []
    start = threading.Barrier(4)

    def run(i):
        try:
            start.wait()
            results[i] = model.predict_proba(images, batch_size=40)
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)
