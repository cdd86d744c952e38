"""``hiercell ablate`` end to end on fixture images (tiny random VGG16 at 32 px)."""

import csv
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hiercell import ablation
from hiercell.cli import main
from hiercell.data import load_samples, read_dataset
from hiercell.segment_files import exclude_mask_failures
from hiercell.training import stage_targets
from hiercell.taxonomy import MAIN_CLASSES

from conftest import FIXTURES, TINY


def test_ablate_runs_both_arms_on_the_same_images(tiny_data, tmp_path):
    out = tmp_path / "ablation"
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(main, ["ablate", str(tiny_data), "--out", str(out), "--cache",
                                       str(tmp_path / "cache"), "--limit-per-class", "4",
                                       "--n-boot", "200", *args, "--head-epochs", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablation.json").read_text())
    setup = report["setup"]
    assert {"excluded_by_mask_per_class", "images_per_split", "seed", "image_size"} <= set(setup)
    assert set(report["stages"]) == {"1", "2"}
    # the test images both arms must be scored on, worked out independently:
    # the seeded split, minus the images whose mask the segmentation module flags
    samples, excluded, _ = exclude_mask_failures(load_samples(tiny_data, None, 0, 4))
    assert setup["excluded_by_mask_per_class"] == excluded
    test = [s for s in samples if s.split == "test"]
    expected = {"1": sorted(str(s.path) for s in test),
                "2": sorted(str(test[i].path) for i in stage_targets(test, 2, 3, 0)[0])}
    for key, stage in report["stages"].items():
        assert set(stage["arms"]) == {"unmasked", "masked"}
        assert {"summary", "per_class", "difference", "mcnemar", "items"} <= set(stage)
        items = stage["items"]
        assert sorted(items["paths"]) == expected[key] and stage["n"] == len(expected[key])
        for arm in ("unmasked", "masked"):  # each arm has a prediction for each of them
            assert len(items["y_pred"][arm]) == stage["n"]
            assert stage["summary"][arm]["n"] == stage["n"]
    stage1 = report["stages"]["1"]
    assert [row["label"] for row in stage1["per_class"]][:len(MAIN_CLASSES)] == list(MAIN_CLASSES)
    md = (out / "ablation.md").read_text()
    assert "McNemar" in md and "masked" in md
    assert (out / "confusion_1_unmasked.png").is_file() and (out / "confusion_2_masked.png").is_file()
    assert "stage 1:" in result.output


@pytest.fixture(scope="module")
def other_lab(tmp_path_factory):
    """Another 'lab' (as ``new_lab`` in test_adapt): the fixture cells tinted yellow and
    shrunk, in a CSV manifest with main-class labels, plus one smear without a cell (the
    segmentation flags it) and one row with a label hiercell does not map."""
    root = tmp_path_factory.mktemp("otherlab")
    rows = []
    for k, src in enumerate(sorted(FIXTURES.glob("*/*.jpg"))):
        label = src.name.split("_")[0]
        label = {"BNE": "NEUTROPHIL", "SNE": "NEUTROPHIL", "MY": "IG", "MMY": "IG",
                 "PMY": "IG"}.get(label, label)
        img = cv2.imread(str(src)).astype(np.float32)
        img[..., 0] *= 0.7  # less blue: a yellow cast
        out = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (120, 120))
        cv2.imwrite(str(root / f"cell{k}.png"), out)
        rows.append({"path": f"cell{k}.png", "label": label})
    blank = np.full((120, 120, 3), (200, 205, 230), np.uint8)  # background only
    cv2.imwrite(str(root / "empty.png"), blank)
    rows.append({"path": "empty.png", "label": "LY"})
    cv2.imwrite(str(root / "smudge.png"), cv2.imread(str(root / "cell0.png")))
    rows.append({"path": "smudge.png", "label": "SMUDGE"})  # not a class hiercell knows
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_ablate_scores_both_arms_on_an_external_set(tiny_data, other_lab, tmp_path, monkeypatch):
    # which images each arm's trunk sees, in which preprocessing
    calls = []
    real = ablation.trunk_features

    def spy(paths, settings, *args, **kwargs):
        calls.append((settings.masked, settings.framing, sorted(str(p) for p in paths)))
        return real(paths, settings, *args, **kwargs)

    monkeypatch.setattr(ablation, "trunk_features", spy)
    # a second "external" set: the test split's own images (marked train in the manifest:
    # an external set is scored whatever its split); each arm must predict them as it
    # does on the test split, which pins the external preprocessing to the arm's own
    pbc, _, _ = exclude_mask_failures(load_samples(tiny_data, None, 0, 3))
    test = [s for s in pbc if s.split == "test"]
    same = tmp_path / "same" / "manifest.csv"
    same.parent.mkdir()
    same.write_text("path,label,split\n" + "".join(f"{s.path},{s.raw_label},train\n" for s in test))
    out = tmp_path / "ablation"
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(main, ["ablate", str(tiny_data), "--out", str(out), "--cache",
                                       str(tmp_path / "cache"), "--limit-per-class", "3",
                                       "--n-boot", "200", "--stages", "1", "--external",
                                       str(other_lab), "--external", str(same), *args,
                                       "--head-epochs", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablation.json").read_text())
    name = other_lab.parent.name
    assert set(report["stages"]) == {"1"} and list(report["external"]) == [name, "same"]
    on_test, on_same = report["stages"]["1"]["items"], report["external"]["same"]["stage1"]["items"]
    assert on_same["paths"] == [str(s.path) for s in test] and on_test["paths"] == on_same["paths"]
    assert on_same["y_pred"] == on_test["y_pred"]  # both arms
    ext = report["external"][name]

    # worked out independently: the mapped rows, minus those the segmentation flags
    mapped = [s for s in read_dataset(other_lab) if s.main is not None]
    kept, excluded, reasons = exclude_mask_failures(mapped)
    assert str(other_lab.parent / "empty.png") not in {str(s.path) for s in kept}
    assert excluded.get("LY", 0) >= 1  # the empty smear, counted under its label
    assert ext["excluded_by_mask_per_class"] == excluded
    assert ext["excluded_by_mask_reasons"] == reasons
    assert ext["images_given"] == len(mapped) and ext["images_scored"] == len(kept)
    assert ext["unmapped_labels_left_out"] == 1

    stage = ext["stage1"]
    assert stage["stage"] == 1 and stage["arms"] == ["unmasked", "masked"]
    assert stage["items"]["paths"] == [str(s.path) for s in kept]  # both arms, same images
    assert stage["items"]["y_true"] == [s.main for s in kept]
    for arm in ("unmasked", "masked"):
        assert len(stage["items"]["y_pred"][arm]) == len(kept)
        assert set(stage["items"]["y_pred"][arm]) <= set(MAIN_CLASSES)
    right = [sum(t == p for t, p in zip(stage["items"]["y_true"], stage["items"]["y_pred"][arm]))
             for arm in ("unmasked", "masked")]
    assert stage["mcnemar"]["table"][0][0] + stage["mcnemar"]["table"][0][1] == right[0]
    diff = (right[1] - right[0]) / len(kept)
    assert stage["difference"]["accuracy"]["diff"] == pytest.approx(diff)

    # each arm computed the external set's features in its own masking, the same framing
    ext_paths = sorted(str(s.path) for s in kept)
    ext_calls = [(masked, framing) for masked, framing, paths in calls if paths == ext_paths]
    assert ext_calls == [(False, True), (True, True)]

    md = (out / "ablation.md").read_text()
    assert f"## External set {name}: stage 1" in md and f"External set {name}, stage 1:" in md
    assert f"{len(kept)} images of {name}" in md
    assert (out / f"confusion_ext_{name}_unmasked.png").is_file()
    assert (out / f"confusion_ext_{name}_masked.png").is_file()
    flagged = sum(excluded.values())
    assert f"external {name} (stage 1, {len(kept)} images, {flagged} flagged" in result.output


def test_ablate_external_needs_stage1_and_a_usable_set(tiny_data, tmp_path):
    args = ["ablate", str(tiny_data), "--out", str(tmp_path / "a"), "--cache",
            str(tmp_path / "cache"), "--limit-per-class", "2",
            *[a for a in TINY if a != "--quiet"]]
    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "empty.png"), np.full((120, 120, 3), (200, 205, 230), np.uint8))
    (blank / "manifest.csv").write_text("path,label\nempty.png,LY\n")
    result = CliRunner().invoke(main, [*args, "--stages", "2", "--external",
                                       str(blank / "manifest.csv")])
    assert result.exit_code == 2 and "--stages" in result.output
    # every image flagged: refused before any training, nothing written
    result = CliRunner().invoke(main, [*args, "--external", str(blank / "manifest.csv")])
    assert result.exit_code == 2 and "flags all 1 images" in result.output
    assert not (tmp_path / "a" / "ablation.json").exists()


def test_external_names_are_short_and_distinct(tmp_path):
    manifest = tmp_path / "bccd351" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n")
    assert ablation.external_name(manifest) == "bccd351"
    assert ablation.external_name(manifest, {"bccd351"}) == "bccd351-2"
    assert ablation.external_name(manifest, {"bccd351", "bccd351-2"}) == "bccd351-3"
    other = tmp_path / "lab two.csv"
    other.write_text("path,label\n")
    assert ablation.external_name(other) == "lab_two"
    assert ablation.external_name(tmp_path / "bccd351") == "bccd351"


def test_ablate_arms_train_on_the_augmented_views_asked_for(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = ablation.fit_hierarchy

    def spy(X, samples, settings, **kwargs):
        views = list(kwargs.get("X_views", ()))
        train = [i for i, s in enumerate(samples) if s.split == "train"]
        seen.append((settings.masked, len(views),
                     views[0][train].shape == (len(train),) + X.shape[1:] if views else None))
        return real(X, samples, settings, **kwargs)

    monkeypatch.setattr(ablation, "fit_hierarchy", spy)
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(main, ["ablate", str(tiny_data), "--out", str(tmp_path / "a"),
                                       "--cache", str(tmp_path / "cache"), "--limit-per-class",
                                       "4", "--n-boot", "100", "--stages", "1", *args,
                                       "--augment-views", "2"])
    assert result.exit_code == 0, result.output
    assert [s[:2] for s in seen] == [(False, 2), (True, 2)]
    assert all(s[2] for s in seen)  # one view row per training image, shaped like X
