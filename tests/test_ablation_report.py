"""Tests for hiercell.ablation_report (label arrays only)."""

import json

import cv2
import numpy as np
import pytest

from hiercell.ablation_report import ArmResult, compare_arms, conclusion, write_ablation_report

STAGE1 = ["neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte", "ig",
          "erythroblast", "platelet"]
STAGE2 = ["BNE", "SNE", "MY", "MMY", "PMY", "Others"]


def _arms(labels, n=120, acc_a=0.8, acc_b=0.8, stage=1, seed=0):
    rng = np.random.default_rng(seed)
    yt = list(rng.choice(labels[:-1], n))  # last label never occurs: support 0
    paths = [f"test/{i:04d}.jpg" for i in range(n)]

    def pred(acc):
        return [t if rng.random() < acc else str(rng.choice(labels[:-1])) for t in yt]

    a = ArmResult("unmasked", stage, labels, yt, pred(acc_a), paths)
    b = ArmResult("masked", stage, labels, yt, pred(acc_b), paths)
    return a, b


SETUP = {
    "data": "PBC (Acevedo et al. 2020)",
    "split": "test",
    "seed": 0,
    "image_size": [224, 224],
    "counts_per_class": {"train": {"neutrophil": 100, "ig": 60}, "test": {"neutrophil": 30, "ig": 12}},
    "excluded_by_mask": {"neutrophil": 3, "ig": 1},
}


def test_compare_arms_fields():
    a, b = _arms(STAGE1)
    r = compare_arms(a, b, n_boot=200, seed=1)
    assert r["stage"] == 1 and r["n"] == 120 and r["labels"] == STAGE1
    assert r["arms"] == ["unmasked", "masked"]
    for arm in r["arms"]:
        s = r["summary"][arm]
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "per_class", "confusion_matrix"):
            assert key in s
        for metric in ("accuracy", "macro_f1"):
            lo, hi = s[f"{metric}_ci"]
            assert lo <= s[metric] <= hi
    assert [row["label"] for row in r["per_class"]] == STAGE1
    assert r["per_class"][-1]["support"] == 0
    assert set(r["per_class"][0]["masked"]) == {"precision", "recall", "f1"}
    d = r["difference"]["accuracy"]
    assert d["diff"] == pytest.approx(r["summary"]["masked"]["accuracy"] - r["summary"]["unmasked"]["accuracy"])
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    assert sum(r["mcnemar"]["table"][0] + r["mcnemar"]["table"][1]) == 120
    assert r["items"]["paths"] == a.paths
    json.dumps(r)
    assert compare_arms(a, b, n_boot=200, seed=1) == r  # deterministic


def test_mismatched_arms_raise():
    a, b = _arms(STAGE1, n=20)
    shuffled = ArmResult("masked", 1, STAGE1, b.y_true[::-1], b.y_pred[::-1], b.paths[::-1])
    with pytest.raises(ValueError, match="same test paths"):
        compare_arms(a, shuffled)
    shorter = ArmResult("masked", 1, STAGE1, b.y_true[:-1], b.y_pred[:-1], b.paths[:-1])
    with pytest.raises(ValueError, match="19"):
        compare_arms(a, shorter)
    relabelled = ArmResult("masked", 1, STAGE1, ["platelet"] * 20, b.y_pred, b.paths)
    with pytest.raises(ValueError, match="true labels differ"):
        compare_arms(a, relabelled)
    with pytest.raises(ValueError, match="different stages"):
        compare_arms(a, ArmResult("masked", 2, STAGE1, b.y_true, b.y_pred, b.paths))
    with pytest.raises(ValueError, match="distinct names"):
        compare_arms(a, ArmResult("unmasked", 1, STAGE1, b.y_true, b.y_pred, b.paths))
    with pytest.raises(ValueError, match="same length"):
        ArmResult("masked", 1, STAGE1, b.y_true, b.y_pred, b.paths[:-1])


def test_write_report_two_stages(tmp_path):
    s1 = compare_arms(*_arms(STAGE1, acc_a=0.6, acc_b=0.95, n=150), n_boot=200)
    s2 = compare_arms(*_arms(STAGE2, stage=2, seed=3), n_boot=200)
    out = write_ablation_report({"setup": SETUP, "stages": {"1": s1, 2: s2}}, tmp_path / "abl")
    names = sorted(p.name for p in (tmp_path / "abl").iterdir())
    assert names == ["ablation.json", "ablation.md", "confusion_1_masked.png", "confusion_1_unmasked.png",
                     "confusion_2_masked.png", "confusion_2_unmasked.png"]  # no temp files left
    for png in out["png"]:
        assert cv2.imread(str(png)) is not None

    data = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert data["setup"]["excluded_by_mask"] == {"neutrophil": 3, "ig": 1}
    assert set(data["stages"]) == {"1", "2"}
    for st in data["stages"].values():
        for key in ("stage", "n", "labels", "arms", "alpha", "n_boot", "seed", "summary", "per_class",
                    "difference", "mcnemar", "items"):
            assert key in st
        assert {"statistic", "p_value", "method", "table"} <= set(st["mcnemar"])

    md = (tmp_path / "abl" / "ablation.md").read_text()
    for label in STAGE1 + STAGE2:
        assert f"| {label} |" in md
    for text in ("## Setup", "PBC (Acevedo et al. 2020)", "excluded by mask", "## Stage 1", "## Stage 2",
                 "McNemar", "confusion_1_masked.png", "confusion_2_unmasked.png", "**Conclusion:**"):
        assert text in md
    # stage 1: masked much better -> the conclusion names it; the JSON and the text agree
    assert s1["mcnemar"]["p_value"] < 0.05
    assert conclusion(s1).startswith("Masked is significantly more accurate than unmasked")


def test_write_report_missing_stage2_and_no_difference(tmp_path):
    a, b = _arms(STAGE1, n=60)
    b = ArmResult("masked", 1, STAGE1, a.y_true, list(a.y_pred), a.paths)  # identical predictions
    s1 = compare_arms(a, b, n_boot=100)
    text = conclusion(s1)
    assert text.startswith("No significant difference") and "p=1.00" in text and "+0.0 pp" in text
    write_ablation_report({"setup": {}, "stages": {"1": s1, "2": None}}, tmp_path)
    md = (tmp_path / "ablation.md").read_text()
    assert "## Stage 2" in md and "Not evaluated" in md
    assert not (tmp_path / "confusion_2_masked.png").exists()
    assert set(json.loads((tmp_path / "ablation.json").read_text())["stages"]) == {"1"}
    write_ablation_report({"setup": {"data": "x"}}, tmp_path / "empty")  # no stages at all
    assert "Not evaluated" in (tmp_path / "empty" / "ablation.md").read_text()


def test_write_report_with_an_external_set(tmp_path):
    s1 = compare_arms(*_arms(STAGE1, n=80), n_boot=100)
    ext = compare_arms(*_arms(STAGE1, n=90, acc_a=0.3, acc_b=0.9, seed=5), n_boot=100)
    result = {"setup": SETUP, "stages": {"1": s1},
              "external": {"lab_b": {"images_scored": 90, "excluded_by_mask_per_class": {"LY": 2},
                                     "stage1": ext}}}
    write_ablation_report(result, tmp_path)
    assert (tmp_path / "confusion_ext_lab_b_masked.png").is_file()
    assert (tmp_path / "confusion_ext_lab_b_unmasked.png").is_file()
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert data["external"]["lab_b"]["excluded_by_mask_per_class"] == {"LY": 2}
    assert data["external"]["lab_b"]["stage1"]["n"] == 90
    md = (tmp_path / "ablation.md").read_text()
    section = md[md.index("## External set lab_b: stage 1"):]
    assert "- **excluded by mask per class**: LY 2" in section
    assert "90 images of lab_b" in section and "confusion_ext_lab_b_masked.png" in section
    # the external conclusion is its own: masked far better there, not on the test split
    assert f"- External set lab_b, stage 1: {conclusion(ext)}" in md
    assert conclusion(ext).startswith("Masked is significantly more accurate")
    # a report without external sets has no such key or section
    write_ablation_report({"setup": SETUP, "stages": {"1": s1}}, tmp_path / "plain")
    assert "external" not in json.loads((tmp_path / "plain" / "ablation.json").read_text())
    assert "External set" not in (tmp_path / "plain" / "ablation.md").read_text()
