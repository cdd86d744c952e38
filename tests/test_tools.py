"""The maintenance scripts in tools/ that write bundles."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from hiercell.bundle import load, save_bundle

from conftest import rgb_images

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _combine(first, second, out):
    return subprocess.run([sys.executable, str(TOOLS / "combine_stages.py"), "--stage1-from",
                           str(first), "--stage2-from", str(second), "--out", str(out)],
                          capture_output=True, text=True)


def test_combine_stages_takes_stage2_from_the_second_bundle(tiny_bundle, tiny_data, tmp_path):
    from click.testing import CliRunner

    from hiercell.cli import main

    from conftest import TINY

    second = tmp_path / "second"  # shorter head training: other stages on the same trunk
    trained = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(second),
                                        "--cache", str(tmp_path / "cache"), *TINY,
                                        "--head-epochs", "1"])
    assert trained.exit_code == 0, trained.output
    done = _combine(tiny_bundle, second, tmp_path / "both")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "both" / "bundle.json").read_text())
    first_info = json.loads((tiny_bundle / "bundle.json").read_text())
    assert info["training"]["stage2"]["from"] == "second"
    assert info["training"]["settings"] == first_info["training"]["settings"]
    assert set(info["composed_from"]) == {"stage1", "stage2"}
    assert "metrics" not in info  # the first bundle's figures are not the new model's
    assert not {"engine", "precision", "trunk_sha256"} & set(info)
    assert info["name"] == "both"
    # the first bundle's review scorer read the first bundle's stage 2: not carried over
    assert not (tmp_path / "both" / "review.npz").exists()
    first, other = load(tiny_bundle, precision="float32"), load(second, precision="float32")
    both = load(tmp_path / "both", precision="float32")
    X = first.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    for stage, source in (("stage1", first), ("stage2", other)):
        np.testing.assert_allclose(getattr(both.hierarchy, stage).predict_proba(X),
                                   getattr(source.hierarchy, stage).predict_proba(X), atol=1e-6)
    assert not np.allclose(first.hierarchy.stage2.predict_proba(X),
                           other.hierarchy.stage2.predict_proba(X), atol=1e-3)


def test_combine_stages_refuses_bundles_that_cannot_share_a_trunk_pass(tiny_bundle, tiny_data,
                                                                     tmp_path):
    from click.testing import CliRunner

    from hiercell.cli import main

    from conftest import TINY

    other = load(tiny_bundle, precision="float32")
    other.preprocess = {}  # the same trunk, but images prepared another way
    save_bundle(other, tmp_path / "plain")
    done = _combine(tiny_bundle, tmp_path / "plain", tmp_path / "both")
    assert done.returncode != 0 and "differ in preprocess" in done.stderr
    done = _combine(tiny_bundle, tmp_path / "nothing", tmp_path / "both")  # one line, no traceback
    assert done.returncode != 0 and "not a model bundle" in done.stderr
    assert "Traceback" not in done.stderr
    seeded = tmp_path / "seeded"  # random weights of another seed: another trunk
    trained = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(seeded),
                                        "--cache", str(tmp_path / "cache"), *TINY, "--seed", "1"])
    assert trained.exit_code == 0, trained.output
    done = _combine(tiny_bundle, seeded, tmp_path / "both")
    assert done.returncode != 0 and "different trunks" in done.stderr
    assert not (tmp_path / "both").exists()
    aligned = tmp_path / "aligned"  # a bundle tuned to a lab is no ingredient
    shutil.copytree(tiny_bundle, aligned)
    model = load(aligned, precision="float32")
    model.info["alignment"] = {"applied": True}
    save_bundle(model, aligned)
    done = _combine(aligned, tiny_bundle, tmp_path / "both")
    assert done.returncode != 0 and "aligned to or adapted for a lab" in done.stderr
