"""The bundled default model, end to end on the committed fixture images.

These are the user's first steps: ``hiercell classify`` on a folder with the
model that ships in ``models/``, including a folder with broken files.
"""

import csv
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import hiercell
from hiercell.bundle import default_bundle_path, verify_bundle
from hiercell.cli import main
from hiercell.records import RECORD_COLUMNS
from hiercell.taxonomy import FINE_CLASSES, MAIN_CLASSES

from conftest import FIXTURES

GOOD = sorted(FIXTURES.glob("*/*.jpg"))[::4]  # one image per class folder


@pytest.fixture(scope="module")
def model():
    return hiercell.load()


def test_default_bundle_is_installed_and_verified():
    info = verify_bundle(default_bundle_path())
    assert info["stages"]["stage1"]["classes"] == sorted(MAIN_CLASSES)
    assert info["metrics"]["split"] == "test"


def test_bundled_model_is_lab_independent_and_knows_when_it_does_not_know(model):
    assert verify_bundle(default_bundle_path())["format_version"] == 2
    assert model.preprocess["framing"] == "canonical"
    assert model.hierarchy.reviewer is not None
    assert model.hierarchy.reviewer.learned  # refit by tools/refit_review.py
    assert model.stage1.source_sample_["gap"].shape[1] == 512  # what hiercell adapt needs
    records = model.predict_records([str(p) for p in GOOD])
    assert all(0 <= r.review_score <= 1 and 0 <= r.novelty <= 1 for r in records)
    # the domain check knows which classes are often novel in-lab (tools/refit_review.py
    # --answers-only): erythroblasts and platelets, not neutrophils
    rates = model.hierarchy.reviewer.novel_rates()
    assert set(rates) == set(MAIN_CLASSES)
    assert min(rates["erythroblast"], rates["platelet"]) > 0.1 > 0.02 > rates["neutrophil"]


def test_bundled_model_predicts_records_for_paths_and_arrays(model):
    records = model.predict_records([str(p) for p in GOOD])
    assert [r.path for r in records] == [str(p) for p in GOOD]
    for r in records:
        assert r.status == "ok" and r.label in FINE_CLASSES + MAIN_CLASSES
        assert 0 <= r.probability <= 1 and len(r.top) == 3
    images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in GOOD])
    proba = model.predict_proba(images)
    assert proba.shape == (len(GOOD), len(FINE_CLASSES))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert list(model.predict(images)) == [r.label for r in records]


def test_bundled_model_gets_most_fixture_cells_right(model):
    paths = sorted(FIXTURES.glob("*/*.jpg"))
    records = model.predict_records(paths)
    folder_of = {str(p): p.parent.name for p in paths}
    right = [r.main_class == folder_of[r.path] for r in records]
    assert np.mean(right) >= 0.8, [(r.path, r.main_class) for r in records]


def test_gradcam_is_a_heat_map_on_the_image_grid(model):
    rgb = cv2.cvtColor(cv2.imread(str(GOOD[0])), cv2.COLOR_BGR2RGB)
    heat = model.gradcam(rgb)
    assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)  # not an all-zero map
    assert 0.01 < heat.mean() < 0.9 and heat.std() > 0.05


def _write_bad_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    data = (FIXTURES / "basophil").glob("*.jpg").__next__().read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    rgba = np.dstack([np.full((64, 64, 3), 200, np.uint8), np.full((64, 64), 255, np.uint8)])
    cv2.imwrite(str(folder / "rgba.tif"), rgba)
    cv2.imwrite(str(folder / "deep.png"), np.full((64, 64, 3), 40000, np.uint16))
    cv2.imwrite(str(folder / "gray.png"), np.full((64, 64), 128, np.uint8))


def test_classify_command_with_bad_files(tmp_path, monkeypatch):
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in GOOD:
        (folder / p.name).write_bytes(p.read_bytes())
    _write_bad_files(folder)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["classify", str(folder), "--out", "r.csv",
                                       "--summary", "s.json", "--report", "r.html"])
    assert result.exit_code == 3, result.output
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == RECORD_COLUMNS
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert len(rows) == len(GOOD) + 6
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg"):
        assert by_name[name]["status"] == "error" and by_name[name]["error"]
    for name in ["rgba.tif", "deep.png", "gray.png"] + [p.name for p in GOOD]:
        assert by_name[name]["status"] == "ok", by_name[name]
    summary = json.loads((tmp_path / "s.json").read_text())
    total = sum(v["percent"] for v in summary["main_classes"].values())
    assert abs(total - 100) < 1e-6
    html = (tmp_path / "r.html").read_text()
    # a thumbnail and a Grad-CAM overlay for every classified cell, none failed
    assert "Grad-CAM failed" not in html and "Grad-CAM gave up" not in html
    assert html.count("data:image/jpeg") == 2 * sum(r["status"] == "ok" for r in rows)


def test_classify_with_a_review_rate_flags_more_cells(tmp_path, monkeypatch):
    folder = tmp_path / "cells"
    folder.mkdir()
    for p in sorted(FIXTURES.glob("*/*.jpg")):
        (folder / p.name).write_bytes(p.read_bytes())
    monkeypatch.chdir(tmp_path)
    runs = {}
    for rate in (None, "0.5"):
        args = ["classify", str(folder), "--out", f"r{rate}.csv", "--summary", f"s{rate}.json"]
        result = CliRunner().invoke(main, args + ([] if rate is None else ["--review-rate", rate]))
        assert result.exit_code == 0, result.output
        runs[rate] = json.loads((tmp_path / f"s{rate}.json").read_text())
    default, wide = runs[None], runs["0.5"]
    assert default["review_rate"] is None and wide["review_rate"] == 0.5
    assert wide["review_threshold"] < default["review_threshold"]
    assert wide["n_review"] > default["n_review"]
    extra = sorted(FIXTURES.glob("*/*.jpg"))[0]
    (folder / f"new_{extra.name}").write_bytes(extra.read_bytes())
    again = CliRunner().invoke(main, ["classify", str(folder), "--out", "r0.5.csv", "--resume",
                                      "--summary", "again.json", "--review-rate", "0.5"])
    assert again.exit_code == 0, again.output
    resumed = json.loads((tmp_path / "again.json").read_text())
    assert resumed["n_images"] == default["n_images"] + 1
    assert resumed["review_rate"] == 0.5 and resumed["review_threshold"] is None  # kept rows
    bad = CliRunner().invoke(main, ["classify", str(folder), "--review-rate", "1.5"])
    assert bad.exit_code == 2 and "--review-rate" in bad.output


def test_bundled_model_gives_in_lab_cells_to_its_in_lab_stage_1(model):
    from hiercell.gradcam import gradcam_map

    hier = model.hierarchy
    assert hier.inlab is not None and verify_bundle(default_bundle_path())["inlab_gate"] == 0.95
    paths = sorted(FIXTURES.glob("*/*.jpg"))  # PBC cells: nearly all of them in-lab
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    X = model.features(images)
    rows = hier.inlab_rows(X)
    assert rows.mean() >= 0.8, rows
    np.testing.assert_allclose(hier.stage_proba(1, X[rows]), hier.inlab.predict_proba(X[rows]),
                               atol=1e-6)
    # shrunk and tinted like another lab's camera: the augmented stage 1 answers
    other = [cv2.resize(np.clip(im * [1.0, 0.85, 0.6], 0, 255).astype(np.uint8), (90, 90))
             for im in images]
    X_other = model.features(other)
    assert hier.inlab_rows(X_other).mean() < rows.mean()
    # aligned to such a lab (as classify does with a folder of them), the in-lab stage 1
    # still answers the cells that pass its gate, on their unshifted maps, and the aligned
    # main stage 1 the others
    from hiercell.alignment import align_model

    aligned = align_model(model, X_other).hierarchy
    both = np.concatenate([X, X_other])
    gated = aligned.inlab_rows(both)
    np.testing.assert_array_equal(gated, hier.inlab_rows(both))
    assert gated.any() and not gated.all(), gated
    shifted = aligned.aligned(both[~gated])
    assert not np.allclose(shifted, both[~gated])  # the alignment moves the maps
    np.testing.assert_allclose(aligned.stage_proba(1, both[gated]),
                               hier.inlab.predict_proba(both[gated]), atol=1e-6)
    np.testing.assert_allclose(aligned.stage_proba(1, both[~gated]),
                               aligned.stage1.predict_proba(shifted), atol=1e-6)
    # stage 2 reads them the same way: the in-lab cells unshifted, the others aligned
    np.testing.assert_allclose(aligned.stage_proba(2, both),
                               np.where(gated[:, None], hier.stage2.predict_proba(both),
                                        aligned.stage2.predict_proba(aligned.aligned(both))),
                               atol=1e-6)
    assert not np.allclose(aligned.stage2.predict_proba(aligned.aligned(both[gated])),
                           hier.stage2.predict_proba(both[gated]), atol=1e-3)
    # Grad-CAM explains the stage 1 that answered the cell
    i = int(np.flatnonzero(rows)[0])
    expected = gradcam_map(hier.inlab.head_, hier.inlab.classes_, X[i:i + 1], images[i].shape,
                           None)
    np.testing.assert_allclose(model.gradcam(images[i]), expected, atol=1e-5)
    # the report hands it one image's row of features, (h, w, c), as well as (1, h, w, c)
    for given in (X[i], X[i:i + 1]):
        np.testing.assert_allclose(model.gradcam(images[i], features=given), expected, atol=1e-5)
