"""hiercell adapt, evaluate on another lab's labelled set, and what a trained bundle carries."""

import copy
import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hiercell.adapt import (NETWORK_WEIGHT, _balanced_weights, adapt_stage, label_check,
                            label_check_csv, stage_labels)
from hiercell.bundle import load
from hiercell.cli import main
from hiercell.data import read_dataset
from hiercell.hierarchy import HierarchicalClassifier
from hiercell.taxonomy import MAIN_CLASSES

from conftest import FIXTURES, rehash_bundle, rgb_images


@pytest.fixture(scope="module")
def new_lab(tmp_path_factory):
    """Another 'lab': the fixture cells tinted yellow and shrunk, as a CSV manifest with
    main-class labels (neutrophils without band/segmented) and a group column."""
    root = tmp_path_factory.mktemp("newlab")
    rows = []
    for k, src in enumerate(sorted(FIXTURES.glob("*/*.jpg"))):
        label = src.name.split("_")[0]
        if label in ("BNE", "SNE", "NEUTROPHIL"):
            label = "NEUTROPHIL"
        elif label in ("MY", "MMY", "PMY", "IG"):
            label = "IG"
        img = cv2.imread(str(src)).astype(np.float32)
        img[..., 0] *= 0.7  # less blue: a yellow cast
        for v in range(2):
            out = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (120 + 20 * v, 120 + 20 * v))
            name = f"cell{k}_{v}.png"
            cv2.imwrite(str(root / name), out)
            rows.append({"path": name, "label": label, "group": f"patient{k % 3}"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_trained_bundle_carries_review_scorer_and_source_samples(tiny_model):
    assert tiny_model.hierarchy.reviewer is not None
    for stage in (tiny_model.stage1, tiny_model.stage2):
        sample = stage.source_sample_
        assert sample["gap"].shape == (len(sample["y"]), 512)
        assert set(sample["y"]) <= set(stage.classes_.astype(str))
    assert tiny_model.preprocess["framing"] == "canonical"
    recs = tiny_model.predict_records(sorted(FIXTURES.glob("*/*.jpg"))[:4])
    assert all(0.0 <= r.review_score <= 1.0 and 0.0 <= r.novelty <= 1.0 for r in recs)
    assert all(r.review == (r.review_score >= tiny_model.hierarchy.reviewer.threshold_)
               for r in recs)


def test_replace_reviewer_rewrites_only_review_npz(tiny_bundle, tmp_path):
    from hiercell.bundle import BundleError, replace_reviewer, verify_bundle

    out = tmp_path / "copy"
    shutil.copytree(tiny_bundle, out)
    reviewer = copy.copy(load(out).hierarchy.reviewer)
    reviewer.target_rate = 0.2
    reviewer._calibrate()
    before = {ln.split()[1]: ln.split()[0] for ln in (out / "SHA256SUMS").read_text().splitlines()}
    replace_reviewer(out, reviewer)
    verify_bundle(out)
    after = {ln.split()[1]: ln.split()[0] for ln in (out / "SHA256SUMS").read_text().splitlines()}
    assert {k for k in before if before[k] != after[k]} == {"review.npz"}
    again = load(out).hierarchy.reviewer
    assert again.target_rate == 0.2 and again.threshold_ == pytest.approx(reviewer.threshold_)
    (out / "review.npz").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="review.npz"):
        replace_reviewer(out, reviewer)


def test_adapt_writes_a_loadable_bundle_with_its_record(tiny_bundle, new_lab, tmp_path):
    out = tmp_path / "adapted"
    result = CliRunner().invoke(main, ["adapt", str(new_lab), "--out", str(out), "--model",
                                       str(tiny_bundle), "--views", "1", "--folds", "3",
                                       "--block5-epochs", "1"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout[result.stdout.index("{"):])
    assert figures["fold_kind"] == "group" and figures["folds"] == 3
    info = json.loads((out / "bundle.json").read_text())
    record = info["adaptation"]
    assert record["base_model"] == str(tiny_bundle)
    assert record["counts"]["neutrophil"] == 2 * len(list(FIXTURES.glob("neutrophil/*.jpg")))
    assert record["data_digest"].startswith("sha256:")
    assert 0 <= record["cross_validation"]["stage1_accuracy_after"] <= 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "Before / after" in card
    assert "stage 2 is the base's" in card and "no longer moves a cell" in card
    # the labelled cells answered otherwise when held out, listed for a second look
    listed = list(csv.DictReader((out / "label_check.csv").open()))
    assert len(listed) == figures["labels_to_check"] == record["cross_validation"]["labels_to_check"]
    assert all(r["held_out_answer"] != r["main_class"] for r in listed)
    assert f"{len(listed)} of the {record['n_images']} labelled cells" in card
    base, adapted = load(tiny_bundle), load(out)
    # these "lab" cells are the base's own training images, tinted: the gate hands most
    # held-out cells to the base, too few are left to set a review threshold of the
    # lab's own (test_calibrate_review_... covers that), and the record says so
    review = record["cross_validation"]["review"]
    assert review is None and figures["review"] is None
    assert adapted.hierarchy.reviewer.own_threshold_ is None
    assert "keeps the base model's threshold" in card
    # stage 1 changed, stage 2 kept (no subclass labels), the lab joined the reference
    assert not all(np.array_equal(a, b) for a, b in
                   zip(base.stage1.head_.get_weights(), adapted.stage1.head_.get_weights()))
    assert all(np.array_equal(a, b) for a, b in
               zip(base.stage2.head_.get_weights(), adapted.stage2.head_.get_weights()))
    # the adapted stage mixes its SVM and its head (hiercell.adapt.NETWORK_WEIGHT); the
    # kept stage 2 and the base stay the SVM alone; the bundle and its card say so
    assert adapted.stage1.network_weight == NETWORK_WEIGHT > 0
    assert adapted.stage2.network_weight == base.stage1.network_weight == 0
    assert record["settings"]["network_weight"] == NETWORK_WEIGHT
    assert record["settings"]["ensemble"] is False  # the tiny base has no in-lab stage 1
    n_lab = len(read_dataset(new_lab))
    assert len(adapted.hierarchy.reviewer.reference_) == len(base.hierarchy.reviewer.reference_) + n_lab
    if adapted.hierarchy.reviewer.learned:  # the lab's cells joined with their classes
        assert adapted.hierarchy.reviewer.reference_labels_[-1] in MAIN_CLASSES
    assert adapted.predict_records([new_lab.parent / "cell0_0.png"])[0].status == "ok"
    # the domain gate: each cell is answered by the adapted stages or by the base model
    # (kept whole in the bundle), as the gate decides
    assert info["base_stages"].keys() == info["stages"].keys()
    hier = adapted.hierarchy
    X = adapted.features(rgb_images(sorted(FIXTURES.glob("*/*.jpg"))))
    # the adapted stages learn the lab's own (unshifted) maps: hiercell.adapt.ALIGN
    assert not hier.alignment.fitted
    # the kept stage 2 no longer moves the lab's cells between neutrophil and ig; the
    # bundle says so, and the base's cells are routed as the base routes them
    assert info["stage2_crossing"] is False and hier.stage2_crossing is False
    assert base.hierarchy.stage2_crossing is True
    assert "stage2_crossing" not in json.loads((tiny_bundle / "bundle.json").read_text())
    own_stages = HierarchicalClassifier(hier.stage1, hier.stage2, alignment=hier.alignment,
                                        stage2_crossing=False)
    answers = {name: [(r.label, r.probability) for r in clf.predict_records(X)]
               for name, clf in (("base", base.hierarchy), ("adapted", own_stages))}
    assert answers["base"] != answers["adapted"]
    gate = hier.gate
    try:
        for threshold, expected in ((1.01, "base"), (0.0, "adapted")):
            gate.threshold = threshold
            assert [(r.label, r.probability) for r in hier.predict_records(X)] == answers[expected]
        gate.threshold = 0.5
        own = hier.adapted_rows(X)
        mixed = [(r.label, r.probability) for r in hier.predict_records(X)]
        expected = [answers["adapted" if o else "base"][i] for i, o in enumerate(own)]
        assert [m[0] for m in mixed] == [e[0] for e in expected]  # subsets batch differently:
        np.testing.assert_allclose([m[1] for m in mixed], [e[1] for e in expected], atol=1e-3)
    finally:
        gate.threshold = 0.5
    # an adapted bundle is not adapted again (its base is, with all the cells)
    again = CliRunner().invoke(main, ["adapt", str(new_lab), "--out", str(tmp_path / "again"),
                                      "--model", str(out), "--views", "0", "--folds", "3"])
    assert again.exit_code != 0 and "already adapted" in again.output


def test_calibrate_review_sets_the_labs_threshold_from_held_out_answers(tiny_model):
    """Out-of-fold answers of the cells the adapted stages took (finite wrongness) set the
    lab's own review threshold; with fewer than MIN_REVIEW_CELLS of them it is left."""
    from types import SimpleNamespace

    from hiercell.adapt import MIN_REVIEW_CELLS, calibrate_review

    from hiercell.review import ReviewScorer

    rng = np.random.default_rng(0)
    # a learned scorer of its own: whether the tiny model's is learned depends on how many
    # of its few validation answers are wrong, which the machine's numerics can change
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    classes = np.array(["lymphocyte", "monocyte"] * 30)
    proba = rng.uniform(0.3, 1.0, 60)
    base = ReviewScorer(k=5).fit(unit(rng.random((60, 8))), unit(rng.random((60, 8))), proba,
                                 classes, classes, proba, proba < 0.6)
    adapted = copy.copy(tiny_model)
    adapted.hierarchy = copy.copy(tiny_model.hierarchy)
    adapted.hierarchy.reviewer = copy.copy(base)
    assert adapted.hierarchy.reviewer.learned
    n = 60
    samples = [SimpleNamespace(main="lymphocyte", sub=None)] * n
    after = np.array(["lymphocyte"] * 40 + ["monocyte"] * 20, dtype=object)
    wrongness = np.where(after == "monocyte", rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.6, n))
    wrongness[:n - MIN_REVIEW_CELLS + 1] = np.nan  # went to the base model
    predictions = {"after": after, "wrongness": wrongness, "uncertain": np.arange(n) % 10 == 0,
                   "novel": np.zeros(n, bool)}
    assert calibrate_review(adapted, samples, predictions) is None
    assert adapted.hierarchy.reviewer.own_threshold_ is None
    wrongness[:30] = rng.uniform(0.0, 0.6, 30)
    summary = calibrate_review(adapted, samples, predictions)
    finite = np.isfinite(wrongness)
    assert summary["n"] == finite.sum() == 30 + MIN_REVIEW_CELLS - 1
    assert summary["wrong"] == np.sum(finite & (after == "monocyte")) == 19
    assert summary["target_flag_rate"] == pytest.approx(19 / 49, abs=1e-4)
    assert summary["auroc_wrong_vs_right"] > 0.8
    assert adapted.hierarchy.reviewer.own_threshold_ is not None
    assert base.own_threshold_ is None and tiny_model.hierarchy.reviewer.own_threshold_ is None
    # main-class labels only: stage 2 stayed the base's, its "Others" does not force the flag
    assert summary["uncertain"] == 4 and not summary["uncertain_flagged"]  # rows 0, 10, 20, 50
    assert not adapted.hierarchy.reviewer.own_lifts_uncertain_
    fine = [SimpleNamespace(main="neutrophil", sub="SNE")] + samples[1:]
    assert calibrate_review(adapted, fine, predictions)["uncertain_flagged"]
    assert adapted.hierarchy.reviewer.own_lifts_uncertain_


def test_adapt_stage_needs_a_source_sample(tiny_model):
    stage = copy.copy(tiny_model.stage1)
    stage.source_sample_ = None
    with pytest.raises(ValueError, match="no training sample"):
        adapt_stage(stage, np.zeros((2, 1, 1, 512), np.float32), ["neutrophil", "neutrophil"])


def test_stage_labels_route_subclasses_and_others(new_lab):
    samples = read_dataset(new_lab)
    idx, y = stage_labels(samples, 2)
    assert set(y) == {"Others"}  # main-class labels only: no subclass to learn
    idx1, y1 = stage_labels(samples, 1)
    assert len(idx1) == len(samples)


def test_evaluate_on_an_external_set_scores_stage_1_only(tiny_bundle, new_lab, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(new_lab), "--model", str(tiny_bundle),
                                       "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout[result.stdout.index("{"):])
    assert figures["split"] == "all"
    assert set(figures) == {"split", "stage1", "aligned"}
    record = json.loads((tmp_path / "ev" / "metrics.json").read_text())["alignment"]
    assert record["applied"] == figures["aligned"] and record["n_cells"] == len(read_dataset(new_lab))
    assert figures["stage1"]["n"] == len(read_dataset(new_lab))


def test_domain_gate_separates_labs_and_round_trips():
    from hiercell.domain import DomainGate

    rng = np.random.default_rng(0)
    source = rng.normal(0.0, 1.0, (300, 16))
    target = rng.normal(0.0, 1.0, (40, 16)) + 1.5
    gate = DomainGate().fit(source, target)
    assert gate.predict(source).mean() < 0.05 and gate.predict(target).mean() > 0.95
    again = DomainGate.from_arrays(gate.to_arrays())
    np.testing.assert_array_equal(again.predict_proba(target), gate.predict_proba(target))
    with pytest.raises(ValueError, match="both labs"):
        DomainGate().fit(source, target[:0])


def test_adapt_on_unreadable_images_says_so(tiny_bundle, tmp_path, monkeypatch):
    import hiercell.backbone as backbone

    rows = ["path,label"]
    for i in range(8):
        (tmp_path / f"c{i}.png").write_text(f"not an image ({i})")  # no two alike
        rows.append(f"c{i}.png,LY")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    args = ["adapt", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "out"),
            "--model", str(tiny_bundle), "--views", "0", "--folds", "3"]
    # where block5 would train in float32 (no GPU, no native bfloat16), a note says it is
    # slow and how to skip it; not with bfloat16, nor with --block5-epochs 0
    for precision, extra, noted in (("float32", [], True), ("mixed_bfloat16", [], False),
                                    ("float32", ["--block5-epochs", "0"], False)):
        monkeypatch.setattr(backbone, "training_precision", lambda p="auto": precision)
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 2
        assert "0 readable labelled image(s)" in result.output and "c0.png" in result.output
        assert not (tmp_path / "out").exists()
        assert ("trains in float32, about 5 times slower" in result.output) is noted
        assert ("--block5-epochs 0 skips" in result.output) is noted


def test_adapt_with_align_fits_the_shift_on_the_lab_cells(tiny_model, new_lab):
    from hiercell.adapt import adapt_model
    from hiercell.features import trunk_views

    samples = read_dataset(new_lab)
    maps, ok, _ = trunk_views(tiny_model, [s.path for s in samples], views=0)
    assert ok.all()
    adapted = adapt_model(tiny_model, maps, samples, block5_epochs=0, align=True)
    alignment = adapted.hierarchy.alignment
    assert alignment.fitted and alignment.n_cells_ == len(samples)
    np.testing.assert_allclose(alignment.lab_mean_,
                               maps[0].astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-5)
    assert not tiny_model.hierarchy.alignment.fitted  # the base model is untouched


def test_model_card_states_the_labs_review_threshold():
    from hiercell.adapt import model_card

    cv = {"folds": 3, "fold_kind": "stratified", "n": 80, "stage1_accuracy_before": 0.3,
          "stage1_accuracy_after": 0.8, "per_class": {"neutrophil": {"n": 80, "before": 0.3,
                                                                      "after": 0.8}},
          "review": {"n": 80, "wrong": 16, "min_flag_rate": 0.05, "target_flag_rate": 0.2,
                     "uncertain": 3, "uncertain_flagged": False, "novel": 1, "flagged": 0.2,
                     "accuracy_unflagged": 0.9, "auroc_wrong_vs_right": 0.85}}
    record = {"base_model": "base", "base_training_data": "PBC", "n_images": 80,
              "counts": {"neutrophil": 80}, "data": "lab.csv", "data_digest": "sha256:0",
              "settings": {}, "cross_validation": cv}
    card = model_card(record, {})
    assert "(20.0%, at least 5%)" in card and "flagged 20.0% of 80 cells" in card
    assert "unflagged 0.900" in card and "0.85" in card and "does not by itself flag" in card
    cv["review"] = None
    assert "keeps the base model's threshold" in model_card(record, {})
    assert "label_check.csv" not in model_card(record, {})  # records from before the check
    cv["labels_to_check"] = 16
    assert "16 of the 80 labelled cells were answered as another" in model_card(record, {})
    cv["labels_to_check"] = 0
    card = model_card(record, {})
    assert "lists none" in card and "Check those labels" not in card
    assert "stage 2 is the base's" in card
    record["counts"] = {"neutrophil": 40, "SNE": 40}
    card = model_card(record, {})
    assert "Both stages were adapted" in card and "stage 2 is the base's" not in card
    assert "two stage-1 networks" not in card
    record["settings"] = {"ensemble": True}
    assert "two stage-1 networks" in model_card(record, {})


def test_class_weights_balance_fully_or_by_the_square_root_of_the_count():
    y = np.array(["N"] * 100 + ["E"] * 25 + ["B"])
    full = _balanced_weights(y, 300)
    assert full.sum() == pytest.approx(300)
    assert [full[y == c].sum() for c in "NEB"] == pytest.approx([100, 100, 100])
    root = _balanced_weights(y, 300, power=0.5)
    assert root.sum() == pytest.approx(300)
    shares = np.array([root[y == c].sum() for c in "NEB"])
    np.testing.assert_allclose(shares / shares.sum(), np.array([10, 5, 1]) / 16, rtol=1e-6)
    assert root[y == "B"][0] > root[y == "N"][0]  # a rare cell still weighs more than a common one


def test_label_check_lists_the_cells_answered_otherwise_when_held_out(new_lab):
    samples = read_dataset(new_lab)[:6]
    after = np.array([s.main for s in samples], dtype=object)
    after[[1, 4]] = ["basophil" if samples[i].main != "basophil" else "platelet" for i in (1, 4)]
    rows = label_check(samples, {"after": after})
    assert [r["path"] for r in rows] == sorted(str(samples[i].path) for i in (1, 4))
    assert {r["held_out_answer"] for r in rows} <= {"basophil", "platelet"}
    assert [r["label"] for r in rows] == [s.raw_label for s in sorted(
        (samples[1], samples[4]), key=lambda s: str(s.path))]
    text = label_check_csv(rows)
    assert text.splitlines()[0] == "path,label,main_class,held_out_answer"
    assert list(csv.DictReader(text.splitlines())) == rows
    assert label_check(samples, {"after": np.array([s.main for s in samples])}) == []


def _with_inlab_stage(model):
    """A copy of ``model`` with a second, in-lab stage 1: its stage 1 with other head
    weights (so that adapting it gives another network), carrying the same sample."""
    from hiercell.stage import StageClassifier

    stage = model.hierarchy.stage1
    rng = np.random.default_rng(0)
    weights = [w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype) * (np.std(w) + 1e-3)
               for w in stage.head_.get_weights()]
    other = StageClassifier.from_fitted_state(stage.fitted_state(), stage.svm_, weights)
    other.source_sample_ = stage.source_sample_
    new = copy.copy(model)
    new.hierarchy = copy.copy(model.hierarchy)
    new.hierarchy.inlab, new.hierarchy.inlab_gate = other, 0.95
    return new


def test_adapting_a_model_with_an_inlab_stage_adapts_both_networks(tiny_model, new_lab,
                                                                   tmp_path, monkeypatch):
    """hiercell.adapt.ENSEMBLE: both stage-1 networks adapted (the in-lab one's block5 for
    at most INLAB_BLOCK5_EPOCHS), the adapted stage 1 answering with the mean of the pair;
    the bundle keeps both (format 3) and loads them back."""
    import hiercell.adapt as adapt_module
    from hiercell.adapt import adapt_model
    from hiercell.features import trunk_views
    from hiercell.bundle import BundleError, save_bundle, verify_bundle
    from hiercell.ensemble import StageEnsemble
    from hiercell.stage import StageClassifier

    base = _with_inlab_stage(tiny_model)
    samples = read_dataset(new_lab)
    maps, ok, _ = trunk_views(base, [s.path for s in samples], views=0)
    assert ok.all()
    finetuned = []
    real_finetune = adapt_module._finetune_on_target

    def finetune(stage, maps, y_idx, epochs, lr, seed):
        finetuned.append(epochs)
        return real_finetune(stage, maps, y_idx, epochs, lr, seed)

    monkeypatch.setattr(adapt_module, "_finetune_on_target", finetune)
    monkeypatch.setattr(adapt_module, "INLAB_BLOCK5_EPOCHS", 1)  # fewer epochs, same rule
    adapted = adapt_model(base, maps, samples, block5_epochs=2)
    assert finetuned == [2, 1]  # main, then in-lab (at most INLAB_BLOCK5_EPOCHS)
    pair = adapted.hierarchy.stage1
    assert isinstance(pair, StageEnsemble) and len(pair.members) == 2
    assert all(isinstance(m, StageClassifier) and m.network_weight == NETWORK_WEIGHT
               for m in pair.members)
    X = maps[0]
    outs = [m.predict_outputs(X) for m in pair.members]
    assert not np.allclose(outs[0].proba, outs[1].proba, atol=1e-3)
    mean = pair.predict_outputs(X)
    for k in range(3):
        np.testing.assert_allclose(mean[k], (outs[0][k] + outs[1][k]) / 2, atol=1e-6)
    np.testing.assert_array_equal(pair.predict(X), pair.classes_[mean.proba.argmax(1)])
    # Grad-CAM explains the stage 1 that answered: the pair (the mean of its two heads'
    # maps) for the lab's cells, the base's for a cell the domain gate hands back
    from hiercell.gradcam import gradcam_map

    rgb = cv2.cvtColor(cv2.imread(str(samples[0].path)), cv2.COLOR_BGR2RGB)
    hier = adapted.hierarchy
    hier.inlab_gate = -1.0  # no cell to the in-lab stage here (its own test: test_model)
    for threshold, heads in ((0.0, pair.members), (1.01, [base.hierarchy.stage1])):
        hier.gate.threshold = threshold
        expected = np.mean([gradcam_map(m.head_, m.classes_, X[:1], rgb.shape, "neutrophil")
                            for m in heads], axis=0)
        np.testing.assert_allclose(adapted.gradcam(rgb, "SNE", features=X[0]), expected,
                                   atol=1e-6)
    hier.gate.threshold, hier.inlab_gate = 0.5, 0.95
    # the in-lab stage itself stays the base's (it answers the cells the gate hands back)
    assert adapted.hierarchy.inlab is base.hierarchy.inlab
    # without ensemble (or without an in-lab stage), one adapted stage as before
    finetuned.clear()
    single = adapt_model(base, maps, samples, block5_epochs=0, ensemble=False)
    assert isinstance(single.hierarchy.stage1, StageClassifier) and finetuned == []
    assert isinstance(adapt_model(tiny_model, maps, samples, block5_epochs=0).hierarchy.stage1,
                      StageClassifier)
    # the bundle: member 0 in stage1/, the other in ensemble/1/stage1/, format 3
    out = save_bundle(adapted, tmp_path / "pair")
    info = json.loads((out / "bundle.json").read_text())
    assert info["format_version"] == 3 and len(info["stage1_ensemble"]) == 1
    assert (out / "ensemble" / "1" / "stage1" / "head.npz").is_file()
    again = load(out, precision="float32").hierarchy.stage1
    assert isinstance(again, StageEnsemble) and len(again.members) == 2
    for saved, kept in zip(pair.members, again.members):  # weights stored as float16
        for a, b in zip(saved.head_.get_weights(), kept.head_.get_weights()):
            np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-4)
        assert kept.network_weight == saved.network_weight
        np.testing.assert_array_equal(kept.svm_.classes_, saved.svm_.classes_)
    np.testing.assert_allclose(again.predict_proba(X),
                               np.mean([m.predict_proba(X) for m in again.members], axis=0),
                               atol=1e-6)
    # format and members go together: either one alone is refused
    for key, value in (("format_version", 2), ("stage1_ensemble", None)):
        bad = tmp_path / f"bad-{key}"
        shutil.copytree(out, bad)
        broken = dict(info)
        if value is None:
            broken.pop(key)
        else:
            broken[key] = value
        (bad / "bundle.json").write_text(json.dumps(broken))
        rehash_bundle(bad)
        with pytest.raises(BundleError, match="format 3 goes with stage1_ensemble"):
            verify_bundle(bad)


def test_a_stage_ensemble_needs_members_with_the_same_classes(tiny_model):
    from hiercell.ensemble import StageEnsemble

    with pytest.raises(ValueError, match="at least one member"):
        StageEnsemble([])
    with pytest.raises(ValueError, match="share their classes"):
        StageEnsemble([tiny_model.hierarchy.stage1, tiny_model.hierarchy.stage2])


def test_adapt_refuses_a_bad_out_or_an_adapted_base_before_any_work(tiny_bundle, new_lab,
                                                                    tmp_path, monkeypatch):
    import hiercell.features

    def no_trunk(*args, **kwargs):
        raise AssertionError("the trunk ran before the refusal")

    monkeypatch.setattr(hiercell.features, "trunk_views", no_trunk)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    for out, says in ((taken, "is not a model bundle"), (tiny_bundle, "the model it starts from")):
        result = CliRunner().invoke(main, ["adapt", str(new_lab), "--out", str(out),
                                           "--model", str(tiny_bundle)])
        assert result.exit_code == 2 and says in result.output, result.output
    assert (taken / "notes.txt").read_text() == "keep me"


def test_adapt_warns_when_one_class_is_labelled(tiny_bundle, new_lab, tmp_path):
    with open(new_lab, newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    label = max({r["label"] for r in rows}, key=lambda c: sum(r["label"] == c for r in rows))
    one = tmp_path / "one.csv"
    with open(one, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label"])
        writer.writeheader()
        writer.writerows({"path": str(new_lab.parent / r["path"]), "label": label}
                         for r in rows if r["label"] == label)
    result = CliRunner().invoke(main, ["adapt", str(one), "--out", str(tmp_path / "b"), "--model",
                                       str(tiny_bundle), "--views", "0", "--folds", "2",
                                       "--block5-epochs", "0", "--no-ensemble"])
    assert result.exit_code == 0, result.output
    assert "labels one class only" in result.output


def test_evaluate_refuses_an_unknown_subset_and_a_set_with_nothing_readable(tiny_bundle, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nmissing_a.png,LY\nmissing_b.png,MO\n")
    result = CliRunner().invoke(main, ["evaluate", str(manifest), "--model", str(tiny_bundle),
                                       "--out", str(tmp_path / "ev")])
    assert result.exit_code == 1 and "none of the 2 image(s)" in result.output, result.output
    assert not (tmp_path / "ev" / "metrics.json").exists()
    result = CliRunner().invoke(main, ["evaluate", str(manifest), "--model", str(tiny_bundle),
                                       "--out", str(tmp_path / "ev"), "--subset", "bogus"])
    assert result.exit_code == 2 and "'train', 'val', 'test', 'all'" in result.output


def test_copies_of_a_labelled_image_are_left_out_and_contradictions_refused(tmp_path):
    from hiercell.adapt import distinct_images
    from hiercell.data import make_sample

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one image")
    b.write_bytes(b"another image")
    shutil.copy(a, tmp_path / "a_copy.png")
    samples = [make_sample(tmp_path / n, lab) for n, lab in
               (("a.png", "LY"), ("b.png", "MO"), ("a_copy.png", "LY"), ("gone.png", "LY"))]
    kept, repeats = distinct_images(samples)
    assert [p.path.name for p in kept] == ["a.png", "b.png", "gone.png"]
    assert [(c.path.name, k.path.name) for c, k in repeats] == [("a_copy.png", "a.png")]
    samples[2] = make_sample(tmp_path / "a_copy.png", "MO")
    with pytest.raises(ValueError, match=r"a_copy\.png \(MO\) is the same image as .*a\.png \(LY\)"):
        distinct_images(samples)
