"""``hiercell ablate`` end to end on fixture images (tiny random VGG16 at 32 px)."""

import json

from click.testing import CliRunner

from hiercell.cli import main
from hiercell.taxonomy import MAIN_CLASSES

from conftest import TINY


def test_ablate_runs_both_arms_on_the_same_images(tiny_data, tmp_path):
    out = tmp_path / "ablation"
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(main, ["ablate", str(tiny_data), "--out", str(out), "--cache",
                                       str(tmp_path / "cache"), "--limit-per-class", "5",
                                       "--n-boot", "200", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablation.json").read_text())
    setup = report["setup"]
    assert {"excluded_by_mask_per_class", "images_per_split", "seed", "image_size"} <= set(setup)
    assert set(report["stages"]) == {"1", "2"}
    for stage in report["stages"].values():
        assert set(stage["arms"]) == {"unmasked", "masked"}
        assert {"summary", "per_class", "difference", "mcnemar", "items"} <= set(stage)
        items = stage["items"]
        # both arms were scored on exactly the same test images
        assert len(items["paths"]) == len(set(items["paths"])) == stage["n"]
    stage1 = report["stages"]["1"]
    assert [row["label"] for row in stage1["per_class"]][:len(MAIN_CLASSES)] == list(MAIN_CLASSES)
    md = (out / "ablation.md").read_text()
    assert "McNemar" in md and "masked" in md
    assert (out / "confusion_1_unmasked.png").is_file() and (out / "confusion_2_masked.png").is_file()
    assert "stage 1:" in result.output
