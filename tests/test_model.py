"""The two-stage model: estimator API, routing rules, training command, bundles.

Everything runs the real code paths on a randomly initialised VGG16 at 32 px
(``--backbone-weights none``), trained for one epoch per phase on copies of the
fixture images: fast, and no ImageNet weights needed.
"""

import copy
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone

from hiercell.bundle import BundleError, load, load_bundle, save_bundle, verify_bundle
from hiercell.cli import main
from hiercell.hierarchy import combine_probabilities, route
from hiercell.records import Prediction
from hiercell.stage import StageClassifier
from hiercell.taxonomy import FINE_CLASSES, MAIN_CLASSES, STAGE2_CLASSES

from conftest import FIXTURES, TINY, rehash_bundle, rgb_images

S2 = sorted(STAGE2_CLASSES)


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


def test_the_heads_softmax_from_embeddings_is_the_networks_own(tiny_model, tiny_data):
    # the review signals read the head's softmax and energy from the embedding the SVM
    # gets (numpy, no second block5 pass): the softmax must be what the Keras head gives
    X = tiny_model.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:6]))
    stage = tiny_model.stage1
    svm, network, energy = stage.predict_outputs(X)
    np.testing.assert_allclose(network, stage.network_proba(X), atol=2e-3)
    np.testing.assert_allclose(svm, stage.predict_proba(X), atol=1e-6)
    # the energy from the Keras head's own layers: Dense(512) output, softmax layer's kernel
    import keras

    head = stage.head_
    hidden = keras.Model(head.input, head.get_layer("dense_512").output).predict(X, verbose=0)
    kernel, bias = head.get_layer("softmax").get_weights()
    logits = hidden.astype(float) @ kernel + bias
    np.testing.assert_allclose(energy, -np.log(np.exp(logits).sum(1)), atol=2e-3)
    _, decisions = tiny_model.hierarchy.decide(X)
    classes = [str(c) for c in stage.classes_]
    assert [d.network_p for d in decisions] == pytest.approx(
        [network[i, classes.index(d.main)] for i, d in enumerate(decisions)], abs=1e-6)
    assert [d.network_energy for d in decisions] == pytest.approx(list(energy), abs=1e-6)


def test_network_energy_is_minus_the_log_sum_exp_of_the_logits_without_overflow():
    from hiercell.stage import _softmax_and_energy

    proba, energy = _softmax_and_energy(np.array([[0.0, 0.0], [1000.0, 0.0], [-5.0, -5.0]]))
    np.testing.assert_allclose(proba, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]], atol=1e-12)
    np.testing.assert_allclose(energy, [-np.log(2), -1000.0, 5 - np.log(2)], atol=1e-9)


def test_network_weight_mixes_the_heads_softmax_into_the_stage_probabilities(tiny_model, tiny_data):
    X = tiny_model.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:8]))
    stage = tiny_model.stage1
    svm, network, energy = stage.predict_outputs(X)
    assert stage.network_weight == 0 and not np.allclose(svm, network, atol=1e-3)
    try:
        stage.set_params(network_weight=0.25)
        mixed, same_network, same_energy = stage.predict_outputs(X)
        np.testing.assert_allclose(mixed, 0.75 * svm + 0.25 * network, atol=1e-6)
        np.testing.assert_allclose(same_network, network, atol=1e-6)
        np.testing.assert_allclose(same_energy, energy, atol=1e-6)
        np.testing.assert_allclose(stage.predict_proba(X), mixed, atol=1e-6)
        assert list(stage.predict(X)) == list(stage.classes_[mixed.argmax(1)])
    finally:
        stage.set_params(network_weight=0.0)


def test_a_copied_stage_keeps_its_head_and_its_own_parameters(tiny_bundle, tiny_data):
    model = load(tiny_bundle)  # heads not built yet: built once, then shared
    X = model.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:4]))
    stage = model.stage1
    assert "_head" not in stage.__dict__
    twin = copy.copy(stage)
    np.testing.assert_allclose(twin.predict_outputs(X).network_proba,
                               stage.predict_outputs(X).network_proba, atol=1e-6)
    twin.set_params(network_weight=0.5)
    assert stage.network_weight == 0.0 and twin.head_ is stage.head_


def test_training_a_stage_does_not_make_keras_warn(recwarn):
    # every Keras fit gets self-shuffling tf.data sets of known length: its own shuffle
    # must be off, and the multi-view sets must say how many batches they hold, or each
    # fit prints a UserWarning that a user of train/adapt takes for a problem
    rng = np.random.default_rng(1)
    X, y = _features(24, rng, ["a", "b"])
    views = [X[:18] + 0.01 * rng.standard_normal(X[:18].shape).astype(X.dtype)]
    StageClassifier(head_epochs=2, finetune_epochs=2, batch_size=8, verbose=0,
                    svm_C=(1.0,)).fit(X[:18], y[:18], X[18:], y[18:], X_views=views)
    keras_warnings = [str(w.message) for w in recwarn
                      if "shuffle" in str(w.message) or "ran out of data" in str(w.message)]
    assert keras_warnings == []


def test_multiview_batches_have_a_known_count():
    from hiercell.backbone import multiview_dataset

    views = [np.zeros((19, 2, 2, 3), np.float32), np.ones((19, 2, 2, 3), np.float32)]
    ds = multiview_dataset(views, np.zeros(19, int), batch_size=8)
    assert int(ds.cardinality()) == 3
    assert [len(y) for _, y in ds] == [8, 8, 3]


def test_tensor_dataset_gives_float32_batches_in_order_or_reshuffled_every_epoch():
    from hiercell.backbone import tensor_dataset

    X = np.arange(10, dtype=np.float16)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float16)
    y = np.arange(10)
    in_order = tensor_dataset(X, y, batch_size=4)
    xs, ys = zip(*[(x.numpy(), t.numpy()) for x, t in in_order])
    assert xs[0].dtype == np.float32 and [len(t) for t in ys] == [4, 4, 2]
    assert np.concatenate(ys).tolist() == list(range(10))
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0, 0, 0], np.arange(10))
    shuffled = tensor_dataset(X, y, batch_size=4, shuffle_seed=0)
    epochs = [np.concatenate([t.numpy() for _, t in shuffled]) for _ in range(2)]
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert epochs[0].tolist() != list(range(10)) and epochs[0].tolist() != epochs[1].tolist()
    x, t = next(iter(shuffled))
    np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], t.numpy())  # rows keep their labels


def _p1(main, p=0.9):
    row = np.full(len(MAIN_CLASSES), (1 - p) / (len(MAIN_CLASSES) - 1))
    row[MAIN_CLASSES.index(main)] = p
    return row[None]


def _p2(cls, p=0.8):
    classes = S2
    row = np.full(len(classes), (1 - p) / (len(classes) - 1))
    row[classes.index(cls)] = p
    return row[None]


def test_routing_non_routed_main_class_skips_stage2():
    d = route(_p1("lymphocyte"), np.full((1, 6), np.nan), S2)[0]
    assert d.main == "lymphocyte" and d.sub is None and not d.uncertain
    assert d.label == "lymphocyte"


def test_routing_subclass_sets_label_and_main():
    d = route(_p1("neutrophil"), _p2("BNE"), S2)[0]
    assert (d.main, d.sub, d.uncertain, d.label) == ("neutrophil", "BNE", False, "BNE")
    # stage 2 may move a cell across the neutrophil / ig boundary
    d = route(_p1("neutrophil"), _p2("MMY"), S2)[0]
    assert (d.main, d.sub) == ("ig", "MMY")


def test_routing_without_crossing_keeps_stage1_main_class_and_marks_uncertain():
    # stage 2 says myelocyte for a cell stage 1 calls neutrophil: where stage 2 may not
    # cross (an adapted lab's cells, stage 2 not adapted), stage 1's class stands
    given = {"BNE": 0.1, "SNE": 0.05, "MY": 0.7, "MMY": 0.1, "PMY": 0.05, "Others": 0.0}
    p2 = np.array([[given[c] for c in S2]])
    d = route(_p1("neutrophil"), p2, S2, crossing=np.array([False]))[0]
    assert (d.main, d.sub, d.uncertain, d.label) == ("neutrophil", "Others", True, "neutrophil")
    assert d.sub_p == pytest.approx(0.85)  # stage 2's mass outside BNE + SNE
    d = route(_p1("neutrophil"), p2, S2, crossing=np.array([True]))[0]
    assert (d.main, d.sub, d.uncertain) == ("ig", "MY", False)
    # a subclass of stage 1's own class is kept either way
    d = route(_p1("neutrophil"), _p2("SNE"), S2, crossing=np.array([False]))[0]
    assert (d.main, d.sub, d.uncertain) == ("neutrophil", "SNE", False)
    # end-to-end probabilities: each main class's stage-1 mass stays with its subclasses
    p1 = _p1("neutrophil")
    fine = combine_probabilities(p1, p2, S2, crossing=np.array([False]))
    np.testing.assert_allclose(fine.sum(1), 1, atol=1e-9)
    neutrophil = p1[0, MAIN_CLASSES.index("neutrophil")]
    got = {c: fine[0, FINE_CLASSES.index(c)] for c in ("BNE", "SNE", "MY")}
    assert got["BNE"] == pytest.approx(neutrophil * 0.1 / 0.15)
    assert got["SNE"] == pytest.approx(neutrophil * 0.05 / 0.15)
    assert FINE_CLASSES[fine[0].argmax()] == "BNE"
    crossed = combine_probabilities(p1, p2, S2)
    assert FINE_CLASSES[crossed[0].argmax()] == "MY"


def test_routing_others_falls_back_to_stage1_and_marks_uncertain():
    d = route(_p1("ig"), _p2("Others"), S2)[0]
    assert (d.main, d.sub, d.uncertain, d.label) == ("ig", "Others", True, "ig")


def test_fine_probabilities_sum_to_one():
    p1 = np.concatenate([_p1("ig"), _p1("monocyte")])
    p2 = np.concatenate([_p2("PMY"), np.full((1, 6), np.nan)])
    fine = combine_probabilities(p1, p2, S2)
    assert fine.shape == (2, len(FINE_CLASSES))
    np.testing.assert_allclose(fine.sum(1), 1, atol=1e-9)
    assert FINE_CLASSES[fine[0].argmax()] == "PMY"
    assert FINE_CLASSES[fine[1].argmax()] == "monocyte"


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


def test_bundle_round_trip_predicts_the_same(tiny_model, tiny_data, tmp_path):
    model = tiny_model
    images = rgb_images(sorted(tiny_data.glob("*.jpg"))[:10])
    records = model.predict_records(images)
    assert len(records) == 10 and all(isinstance(r, Prediction) for r in records)
    for r in records:
        assert r.label in FINE_CLASSES + MAIN_CLASSES
        assert r.main_class in MAIN_CLASSES
        assert len(r.top) == 3 and r.top == sorted(r.top, key=lambda t: -t[1])
    assert list(model.predict(images)) == [r.label for r in records]
    save_bundle(model, tmp_path / "again")
    again = load_bundle(tmp_path / "again", precision="float32")  # as tiny_model
    X = model.features(images)
    np.testing.assert_allclose(again.hierarchy.predict_proba(X), model.hierarchy.predict_proba(X),
                               atol=1e-6)
    assert list(again.hierarchy.predict(X)) == list(model.hierarchy.predict(X))


def test_hierarchical_classifier_has_scikit_learn_meanings(tiny_model, tiny_data):
    clf = tiny_model.hierarchy
    X = tiny_model.features(rgb_images(sorted(tiny_data.glob("*.jpg"))[:6]))
    labels = clf.predict(X)
    proba = clf.predict_proba(X)
    assert labels.shape == (6,) and proba.shape == (6, len(clf.classes_))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert [r.label for r in clf.predict_records(X)] == list(labels)
    deep = clf.get_params(deep=True)
    assert deep["stage1__head_epochs"] == clf.stage1.head_epochs
    assert "stage1__head_epochs" not in clf.get_params(deep=False)
    assert clone(clf).stage2.get_params() == clf.stage2.get_params()


def test_format2_bundle_pickles_only_scikit_learn_objects(tiny_bundle):
    info = json.loads((tiny_bundle / "bundle.json").read_text())
    assert info["format_version"] == 2
    for stage in ("stage1", "stage2"):
        data = (tiny_bundle / stage / "svm.joblib").read_bytes()
        assert b"hiercell" not in data  # moving hiercell's classes cannot break a bundle
        assert info["stages"][stage]["params"]["head_epochs"] == 2
        assert info["stages"][stage]["feature_shape_"] == [2, 2, 512]


def test_unknown_bundle_keys_pass_through(tiny_bundle, tmp_path):
    again = tmp_path / "extra"
    shutil.copytree(tiny_bundle, again)
    model = load(again)
    model.info["review"] = {"threshold": 0.5}
    save_bundle(model, again)
    model = load(again)
    assert model.info["review"] == {"threshold": 0.5}
    assert model.preprocess == load(tiny_bundle).preprocess
    saved = json.loads((again / "bundle.json").read_text())
    assert saved["review"] == {"threshold": 0.5}
    # what describes the loaded model, not the bundle, is never saved: a bundle loaded
    # with one engine or precision and saved again must not claim it for later loads
    assert model.info["engine"] and model.info["precision"] and model.info["trunk_sha256"]
    assert not {"engine", "precision", "trunk_sha256"} & set(saved)


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
    assert set(metrics) == {"stage1", "stage2", "end_to_end", "alignment"}
    for name in ("stage1", "stage2", "end_to_end"):
        assert {"accuracy", "macro_f1", "per_class"} <= set(metrics[name])
    assert metrics["alignment"]["n_cells"] == min(200, len(list(tiny_data.glob("*.jpg"))))
    assert (out / "confusion_end_to_end.png").is_file()


def test_missing_backbone_weights_file_is_a_clear_error(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(tmp_path / "b"),
                                       "--backbone-weights", str(tmp_path / "nope.h5")])
    assert result.exit_code != 0
    assert "nope.h5" in result.output and "HIERCELL_VGG16_WEIGHTS" in result.output


def test_gpu_recipe_trains_on_images_and_skips_unreadable_ones(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    per_label = {}
    for p in sorted(tiny_data.glob("*.jpg")):
        label = p.name.split("_")[0]
        if per_label.setdefault(label, 0) < 6:
            per_label[label] += 1
            shutil.copy(p, data / p.name)
    (data / "BA_999999_broken.jpg").write_text("not an image")
    out = tmp_path / "gpu"
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--gpu-recipe",
                                       "--cache", str(tmp_path / "cache"), *TINY, "--head-epochs", "1",
                                       "--stages", "1"])  # the loop is shared: one stage is enough
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "BA_999999_broken.jpg" in result.output
    info = json.loads((out / "bundle.json").read_text())
    assert info["input_size"] == 32 and info["training"]["recipe"].startswith("gpu")
    assert info["stages"]["stage1"]["history_"]["finetune"]
    model = load(out)
    assert model.predict_records(sorted(data.glob("*.jpg"))[:2])[0].status == "ok"


def test_model_without_stage2_gives_main_class_probabilities(tiny_bundle, tiny_data):
    model = load(tiny_bundle)
    model.hierarchy.stage2 = None
    assert list(model.classes_) == list(MAIN_CLASSES)
    images = rgb_images(sorted(tiny_data.glob("*.jpg"))[:4])
    np.testing.assert_allclose(model.predict_proba(np.stack(images)).sum(1), 1, atol=1e-6)
    for r in model.predict_records(images):
        assert r.subclass is None and r.label in MAIN_CLASSES and r.top[0][0] == r.label


def test_predict_keeps_going_past_bad_paths(tiny_model, tiny_data, tmp_path):
    model = tiny_model
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = sorted(tiny_data.glob("*.jpg"))[:2]
    records = model.predict_records([good[0], bad, good[1]])
    assert [r.status for r in records] == ["ok", "error", "ok"]
    assert "not an image" in records[1].error and records[1].path == str(bad)


def test_save_bundle_refuses_to_overwrite_a_non_bundle_folder(tiny_model, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(BundleError, match="not a model bundle"):
        save_bundle(tiny_model, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_format1_bundles_still_load(tiny_bundle, tiny_model, tmp_path):
    """hiercell 0.1 wrote format 1: ``svm.joblib`` pickled the whole StageClassifier."""
    import joblib

    old = tmp_path / "format1"
    shutil.copytree(tiny_bundle, old)
    for name, stage in (("stage1", tiny_model.stage1), ("stage2", tiny_model.stage2)):
        joblib.dump(stage, old / name / "svm.joblib")  # __getstate__ drops the Keras head
    info = json.loads((old / "bundle.json").read_text())
    info["format_version"] = 1
    (old / "bundle.json").write_text(json.dumps(info))
    rehash_bundle(old)
    model = load(old, precision="float32")
    images = sorted(FIXTURES.glob("*/*.jpg"))[:6]
    np.testing.assert_allclose(model.predict_proba(images), tiny_model.predict_proba(images),
                               atol=1e-6)


class _FixedStage:
    """A stage that answers one main class for every cell (for routing tests)."""

    def __init__(self, answer):
        from hiercell.stage import StageOutputs

        self.classes_ = np.array(MAIN_CLASSES)
        self._out = StageOutputs
        self.answer = answer

    def predict_outputs(self, X):
        p = np.tile(_p1(self.answer)[0], (len(X), 1))
        return self._out(p, p, np.zeros(len(X)))


class _Novelty:
    """A reviewer stand-in whose novelty percentile is the maps' first value."""

    def novelty_percentile(self, descriptors):
        return self.values


class _Gate:
    def __init__(self, own):
        self.own = own

    def predict(self, descriptors):
        return self.own


def _inlab_model(monkeypatch, **kwargs):
    """``(X, hierarchy, novelty stand-in)``: 4 cells of novelty percentiles 0.1, 0.95, 0.96 and 1.0, and
    a model whose main stage 1 calls every cell monocyte and its in-lab stage 1 (gate
    0.95) lymphocyte."""
    from hiercell import review
    from hiercell.hierarchy import HierarchicalClassifier

    novelty = _Novelty()
    novelty.values = np.array([0.1, 0.95, 0.96, 1.0])
    monkeypatch.setattr(review, "trunk_descriptor", lambda maps: np.zeros((len(maps), 2)))
    hier = HierarchicalClassifier(_FixedStage("monocyte"), None, novelty,
                                  inlab=_FixedStage("lymphocyte"), inlab_gate=0.95, **kwargs)
    return np.zeros((4, 2, 2, 3), dtype=np.float32), hier, novelty


def test_inlab_stage1_answers_the_cells_like_the_training_labs(monkeypatch):
    from hiercell.hierarchy import HierarchicalClassifier

    X, hier, novelty = _inlab_model(monkeypatch)
    assert list(hier.inlab_rows(X)) == [True, True, False, False]
    assert list(hier.predict(X)) == ["lymphocyte", "lymphocyte", "monocyte", "monocyte"]
    hier.inlab_gate = None  # the default gate, INLAB_GATE
    from hiercell.hierarchy import INLAB_GATE
    assert list(hier.inlab_rows(X)) == list(novelty.values <= INLAB_GATE)
    # without a reviewer no cell can be told in-lab: the main stage 1 answers all
    assert list(HierarchicalClassifier(_FixedStage("monocyte"), None, None,
                                       inlab=_FixedStage("lymphocyte")).predict(X)) == ["monocyte"] * 4
    # adapted: the new lab's cells (gate: own) get the adapted stage 1 whatever their
    # novelty; among the base's cells the in-lab ones get the in-lab stage 1
    adapted = HierarchicalClassifier(_FixedStage("eosinophil"), None, novelty,
                                     base=HierarchicalClassifier(_FixedStage("monocyte")),
                                     gate=_Gate(np.array([True, False, True, False])),
                                     inlab=_FixedStage("lymphocyte"), inlab_gate=0.95)
    assert list(adapted.predict(X)) == ["eosinophil", "lymphocyte", "eosinophil", "monocyte"]


class _Alignment:
    """A lab alignment stand-in that adds 1 to the maps once fitted (as
    :class:`hiercell.alignment.LabAlignment`, the identity until then)."""

    def __init__(self, fitted):
        self.fitted = fitted

    def transform(self, X):
        return X + 1.0 if self.fitted else X


class _SeenStage(_FixedStage):
    """A :class:`_FixedStage` that keeps the maps it was given."""

    def predict_outputs(self, X):
        self.seen = np.array(X)
        return super().predict_outputs(X)


def test_a_model_aligned_to_another_lab_keeps_its_in_lab_stage1_for_in_lab_cells(monkeypatch):
    X, hier, _ = _inlab_model(monkeypatch, alignment=_Alignment(fitted=False))
    assert list(hier.predict(X)) == ["lymphocyte", "lymphocyte", "monocyte", "monocyte"]
    hier.alignment = _Alignment(fitted=True)
    hier.stage1, hier.inlab = _SeenStage("monocyte"), _SeenStage("lymphocyte")
    assert list(hier.inlab_rows(X)) == [True, True, False, False]
    assert list(hier.predict(X)) == ["lymphocyte", "lymphocyte", "monocyte", "monocyte"]
    # the in-lab cells unshifted, the others aligned
    np.testing.assert_array_equal(hier.inlab.seen, X[:2])
    np.testing.assert_array_equal(hier.stage1.seen, X[2:] + 1.0)
    # adapted (on aligned maps): the cells its gate hands to the base are not aligned,
    # so the in-lab ones among them keep the in-lab stage 1
    from hiercell.hierarchy import HierarchicalClassifier

    X, adapted, _ = _inlab_model(monkeypatch, alignment=_Alignment(fitted=True),
                                 base=HierarchicalClassifier(_FixedStage("eosinophil")),
                                 gate=_Gate(np.array([False, False, True, True])))
    assert list(adapted.predict(X)) == ["lymphocyte", "lymphocyte", "monocyte", "monocyte"]


def test_pickling_says_to_use_a_bundle_instead_of_failing_later(tiny_model, tiny_data):
    import pickle

    with pytest.raises(TypeError, match="save_bundle"):
        pickle.dumps(tiny_model)
    assert copy.copy(tiny_model).hierarchy is tiny_model.hierarchy  # copies still work
    X = tiny_model.features([np.full((40, 40, 3), 128, np.uint8)])
    hierarchy = pickle.loads(pickle.dumps(tiny_model.hierarchy))
    with pytest.raises(AttributeError, match="copied by pickle.*hiercell.load"):
        hierarchy.predict_proba(X)


def test_predict_labels_are_classes_or_the_main_class_of_an_uncertain_cell(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(30)]
    labels = tiny_model.predict(images)
    records = tiny_model.predict_records(images)
    assert list(labels) == [r.label for r in records]
    classes = {str(c) for c in tiny_model.classes_}
    for label, rec in zip(labels, records):
        assert label in classes or (rec.uncertain and label == rec.main_class
                                    and label in ("neutrophil", "ig"))


def test_hierarchy_refuses_features_that_are_not_finite_trunk_maps(tiny_model):
    X = tiny_model.features([np.full((40, 40, 3), 128, np.uint8)] * 2)
    h = tiny_model.hierarchy
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    for method in (h.predict, h.predict_proba, h.predict_records, lambda X: h.predict_stage(1, X)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            method(bad)
        for wrong in (X[0], X[:, :1]):  # no batch axis; another spatial size
            with pytest.raises(ValueError, match=r"expected trunk features of shape \(n, "):
                method(wrong)
    assert len(h.predict(X)) == 2


def test_a_network_weight_outside_0_1_is_refused_at_prediction(tiny_model):
    X = tiny_model.features([np.full((40, 40, 3), 128, np.uint8)])
    for bad in (float("nan"), -0.1, 1.5):
        stage = copy.copy(tiny_model.hierarchy.stage1).set_params(network_weight=bad)
        for method in (stage.predict_proba, stage.predict):
            with pytest.raises(ValueError, match="network_weight must be between 0 and 1"):
                method(X)
