"""The two-stage model: estimator API, routing rules, training command, bundles.

Everything runs the real code paths on a randomly initialised VGG16 at 32 px
(``--backbone-weights none``), trained for one epoch per phase on copies of the
fixture images: fast, and no ImageNet weights needed.
"""

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone

from hiercell.bundle import BundleError, load, load_bundle, save_bundle, verify_bundle
from hiercell.cli import main
from hiercell.hierarchy import HierarchicalClassifier
from hiercell.records import Prediction
from hiercell.stage import StageClassifier
from hiercell.taxonomy import FINE_CLASSES, MAIN_CLASSES, STAGE2_CLASSES

from conftest import TINY


def _features(n, rng, classes):
    """Separable fake trunk features (2x2x512) for ``classes``, labels cycling."""
    y = np.array([classes[i % len(classes)] for i in range(n)])
    X = rng.normal(0, 0.1, (n, 2, 2, 512)).astype(np.float32)
    for k, c in enumerate(classes):
        X[y == c, :, :, k * 8:(k + 1) * 8] += 3.0
    return X, y


def test_stage_classifier_fit_predict_shapes():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    X, y = _features(36, rng, classes)
    clf = StageClassifier(head_epochs=5, finetune_epochs=1, batch_size=8, verbose=0,
                          svm_C=(1.0,))
    clf.fit(X[:27], y[:27], X[27:], y[27:])
    assert list(clf.classes_) == classes
    proba = clf.predict_proba(X)
    assert proba.shape == (36, 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert clf.predict(X).shape == (36,)
    assert clf.transform(X).shape == (36, 1024)
    assert (clf.predict(X) == y).mean() > 0.9
    assert clone(clf).get_params()["head_epochs"] == 5


def _model_with_stage2_classes():
    """A HierarchicalClassifier whose stages only need ``classes_`` for the routing rules."""
    s1, s2 = StageClassifier(), StageClassifier()
    s1.classes_ = np.array(sorted(MAIN_CLASSES))
    s2.classes_ = np.array(sorted(STAGE2_CLASSES))
    return HierarchicalClassifier(None, s1, s2)


def _p1(main, p=0.9):
    row = np.full(len(MAIN_CLASSES), (1 - p) / (len(MAIN_CLASSES) - 1))
    row[MAIN_CLASSES.index(main)] = p
    return row[None]


def _p2(model, cls, p=0.8):
    classes = list(model.stage2.classes_)
    row = np.full(len(classes), (1 - p) / (len(classes) - 1))
    row[classes.index(cls)] = p
    return row[None]


def test_routing_non_routed_main_class_skips_stage2():
    m = _model_with_stage2_classes()
    d = m.decide(_p1("lymphocyte"), np.full((1, 6), np.nan))[0]
    assert d["main"] == "lymphocyte" and d["sub"] is None and not d["uncertain"]


def test_routing_subclass_sets_label_and_main():
    m = _model_with_stage2_classes()
    d = m.decide(_p1("neutrophil"), _p2(m, "BNE"))[0]
    assert (d["main"], d["sub"], d["uncertain"]) == ("neutrophil", "BNE", False)
    # stage 2 may move a cell across the neutrophil / ig boundary
    d = m.decide(_p1("neutrophil"), _p2(m, "MMY"))[0]
    assert (d["main"], d["sub"]) == ("ig", "MMY")


def test_routing_others_falls_back_to_stage1_and_marks_uncertain():
    m = _model_with_stage2_classes()
    d = m.decide(_p1("ig"), _p2(m, "Others"))[0]
    assert (d["main"], d["sub"], d["uncertain"]) == ("ig", "Others", True)


def test_fine_probabilities_sum_to_one():
    m = _model_with_stage2_classes()
    p1 = np.concatenate([_p1("ig"), _p1("monocyte")])
    p2 = np.concatenate([_p2(m, "PMY"), np.full((1, 6), np.nan)])
    fine = m.fine_proba(p1, p2)
    assert fine.shape == (2, len(FINE_CLASSES))
    np.testing.assert_allclose(fine.sum(1), 1, atol=1e-9)
    assert FINE_CLASSES[fine[0].argmax()] == "PMY"
    assert FINE_CLASSES[fine[1].argmax()] == "monocyte"


@pytest.fixture(scope="module")
def tiny_bundle(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    cache = tmp_path_factory.mktemp("cache")
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--cache",
                                       str(cache), *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_bundle_with_metadata_and_test_metrics(tiny_bundle):
    info = json.loads((tiny_bundle / "bundle.json").read_text())
    assert info["input_size"] == 32 and info["masked"] is False
    assert info["backbone"]["weights"] == "random"
    assert info["stages"]["stage1"]["classes"] == sorted(MAIN_CLASSES)
    assert "Others" in info["stages"]["stage2"]["classes"]
    assert set(info["metrics"]) >= {"stage1", "stage2", "end_to_end", "split"}
    evaluation = tiny_bundle.parent / "tiny-evaluation"
    assert (evaluation / "metrics.json").is_file()
    assert (evaluation / "confusion_stage1.png").is_file()


def test_bundle_round_trip_predicts_the_same(tiny_bundle, tiny_data, tmp_path):
    model = load(tiny_bundle)
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
              for p in sorted(tiny_data.glob("*.jpg"))[:10]]
    records = model.predict_images(images, paths=[f"img{i}" for i in range(10)])
    assert len(records) == 10 and all(isinstance(r, Prediction) for r in records)
    for r in records:
        assert r.label in FINE_CLASSES + MAIN_CLASSES
        assert r.main_class in MAIN_CLASSES
        assert len(r.top) == 3 and r.top == sorted(r.top, key=lambda t: -t[1])
    save_bundle(model, tmp_path / "again")
    again = load_bundle(tmp_path / "again")
    X = model.trunk_features(images)
    np.testing.assert_allclose(again.predict_proba_features(X), model.predict_proba_features(X),
                               atol=1e-6)
    assert list(again.predict_features(X)) == list(model.predict_features(X))


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "stage1" / "svm.joblib", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="svm.joblib.*SHA-256"):
        load(bad)


def test_unlisted_or_missing_files_and_versions_are_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "extra"
    shutil.copytree(tiny_bundle, bad)
    shutil.copy(bad / "stage1" / "svm.joblib", bad / "stage1" / "evil.joblib")
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle(bad)
    gone = tmp_path / "gone"
    shutil.copytree(tiny_bundle, gone)
    (gone / "SHA256SUMS").unlink()
    with pytest.raises(BundleError, match="manifest"):
        verify_bundle(gone)


def test_bundle_from_another_format_version_fails_clearly(tiny_bundle, tmp_path):
    import hashlib

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    info = json.loads((old / "bundle.json").read_text())
    info["format_version"] = 99
    (old / "bundle.json").write_text(json.dumps(info))
    digest = hashlib.sha256((old / "bundle.json").read_bytes()).hexdigest()
    lines = [f"{digest}  bundle.json" if ln.endswith("  bundle.json") else ln
             for ln in (old / "SHA256SUMS").read_text().splitlines()]
    (old / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    with pytest.raises(BundleError, match="format 99"):
        verify_bundle(old)


def test_evaluate_command_writes_metrics(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", str(tiny_data), "--model", str(tiny_bundle),
                                       "--out", str(out), "--subset", "all", "--others-per-class",
                                       "3", "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"stage1", "stage2", "end_to_end"}
    for m in metrics.values():
        assert {"accuracy", "macro_f1", "per_class"} <= set(m)
    assert (out / "confusion_end_to_end.png").is_file()


def test_missing_backbone_weights_file_is_a_clear_error(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(tmp_path / "b"),
                                       "--backbone-weights", str(tmp_path / "nope.h5")])
    assert result.exit_code != 0
    assert "nope.h5" in result.output and "HIERCELL_VGG16_WEIGHTS" in result.output


def test_gpu_recipe_trains_on_images_and_writes_the_same_kind_of_bundle(tiny_data, tmp_path):
    out = tmp_path / "gpu"
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(out), "--gpu-recipe",
                                       "--cache", str(tmp_path / "cache"), "--limit-per-class", "4",
                                       *TINY])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "bundle.json").read_text())
    assert info["input_size"] == 32 and info["training"]["recipe"].startswith("gpu")
    model = load(out)
    assert model.predict(sorted(tiny_data.glob("*.jpg"))[:2])[0].status == "ok"


def test_model_without_stage2_gives_main_class_probabilities(tiny_bundle, tiny_data):
    model = load(tiny_bundle)
    model.stage2 = None
    assert list(model.classes_) == list(MAIN_CLASSES)
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
              for p in sorted(tiny_data.glob("*.jpg"))[:4]]
    np.testing.assert_allclose(model.predict_proba(np.stack(images)).sum(1), 1, atol=1e-6)
    for r in model.predict(images):
        assert r.subclass is None and r.label in MAIN_CLASSES and r.top[0][0] == r.label


def test_predict_keeps_going_past_bad_paths(tiny_bundle, tiny_data, tmp_path):
    model = load(tiny_bundle)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = sorted(tiny_data.glob("*.jpg"))[:2]
    records = model.predict([good[0], bad, good[1]])
    assert [r.status for r in records] == ["ok", "error", "ok"]
    assert "not an image" in records[1].error and records[1].path == str(bad)


def test_save_bundle_refuses_to_overwrite_a_non_bundle_folder(tiny_bundle, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(BundleError, match="not a model bundle"):
        save_bundle(load(tiny_bundle), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
