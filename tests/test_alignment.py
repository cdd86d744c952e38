"""hiercell align: the lab alignment of trunk features, in the library, bundles and the CLI."""

import copy
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import hiercell.alignment as auto
from hiercell.alignment import LabAlignment, align_model
from hiercell.bundle import load, replace_arrays, verify_bundle
from hiercell.cli import main
from hiercell.taxonomy import MAIN_CLASSES

from conftest import FIXTURES, rgb_images


def ref_shape(model):
    return model.stage1.feature_shape_


def _maps(n=30, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(5.0, 10.0, size=(n, 2, 2, 4)) + shift).astype(np.float32)


def test_fit_transform_moves_the_lab_mean_onto_the_reference():
    ref = LabAlignment.reference(_maps(seed=1))
    lab = _maps(seed=2, shift=3.0)
    alignment = LabAlignment(ref).fit(lab)
    assert alignment.n_cells_ == 30
    np.testing.assert_allclose(alignment.transform(lab).mean(axis=(0, 1, 2)), ref, rtol=1e-5)
    # a per-channel constant: differences between cells are kept
    out = alignment.transform(lab)
    np.testing.assert_allclose(out[1] - out[0], lab[1] - lab[0], rtol=1e-5, atol=1e-5)


def test_fit_compares_the_lab_at_its_own_class_mix():
    rng = np.random.default_rng(0)
    # two classes far apart in every channel; the training lab has both, the new lab's
    # folder only class "b", moved by a stain shift
    a = rng.uniform(1.0, 2.0, size=(40, 2, 2, 4)).astype(np.float32)
    b = a + 20.0
    trained = LabAlignment.from_training(np.concatenate([a, b]), np.arange(80),
                                         ["a"] * 40 + ["b"] * 40)
    np.testing.assert_allclose(trained.class_means[1], LabAlignment.reference(b), rtol=1e-6)
    lab = b + 3.0

    def all_b(maps):
        return np.tile([0.0, 1.0], (len(maps), 1))

    fitted = trained.unfitted().fit(lab, all_b)
    np.testing.assert_allclose(fitted.class_mix_, [0.0, 1.0])
    np.testing.assert_allclose(fitted.transform(lab), b, atol=1e-4)  # the stain shift undone
    # without the class mix, the folder would be moved onto the two-class mean
    plain = trained.unfitted().fit(lab)
    assert plain.class_mix_ is None
    np.testing.assert_allclose(plain.transform(lab).mean(axis=(0, 1, 2)),
                               trained.reference_mean, rtol=1e-5)
    round_trip = LabAlignment.from_arrays(fitted.to_arrays())
    np.testing.assert_allclose(round_trip.transform(lab), fitted.transform(lab))
    assert list(round_trip.classes) == ["a", "b"]


def test_class_means_must_match_classes():
    with pytest.raises(ValueError, match="class_means"):
        LabAlignment(np.zeros(4), np.zeros((2, 4)), None)
    with pytest.raises(ValueError, match="class_means"):
        LabAlignment(np.zeros(4), np.zeros((2, 3)), ["a", "b"])


def test_transform_clips_at_zero_and_unfitted_is_identity():
    lab = _maps(shift=20.0)
    alignment = LabAlignment(np.zeros(4, np.float32))
    assert alignment.transform(lab) is lab
    assert alignment.fit(lab).transform(lab).min() == 0.0


def test_fit_refuses_too_few_cells_and_wrong_channels():
    alignment = LabAlignment(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="too few"):
        alignment.fit(_maps(n=LabAlignment.MIN_CELLS - 1))
    with pytest.raises(ValueError, match="shape"):
        alignment.fit(np.zeros((30, 2, 2, 3), np.float32))


def test_reference_by_chunks_equals_the_mean_of_the_rows():
    maps = _maps(n=50)
    rows = np.arange(3, 47, 2)
    np.testing.assert_allclose(LabAlignment.reference(maps, rows, chunk=4),
                               maps[rows].mean(axis=(0, 1, 2)), rtol=1e-6)
    with pytest.raises(ValueError):
        LabAlignment.reference(maps, [])


def test_arrays_round_trip_fitted_and_not():
    ref = np.arange(4, dtype=np.float32)
    blank = LabAlignment.from_arrays(LabAlignment(ref).to_arrays())
    assert not blank.fitted
    fitted = LabAlignment.from_arrays(LabAlignment(ref).fit(_maps()).to_arrays())
    assert fitted.fitted and fitted.n_cells_ == 30
    np.testing.assert_array_equal(fitted.reference_mean, ref)


def test_trained_bundle_carries_the_reference_unfitted(tiny_model):
    alignment = tiny_model.hierarchy.alignment
    assert alignment is not None and not alignment.fitted
    assert set(alignment.classes) <= set(tiny_model.stage1.classes_.astype(str))
    assert alignment.class_means.shape == (len(alignment.classes), len(alignment.reference_mean))
    one = rgb_images([next(FIXTURES.glob("*/*.jpg"))])
    assert alignment.reference_mean.shape == (tiny_model.features(one).shape[-1],)


def test_aligned_model_shifts_the_stages_input_not_the_review(tiny_model):
    paths = sorted(FIXTURES.glob("*/*.jpg"))
    X = tiny_model.features(rgb_images(paths))
    lab = np.concatenate([X] * (LabAlignment.MIN_CELLS // len(X) + 1)) * 1.5 + 0.5
    aligned = align_model(tiny_model, lab)
    assert tiny_model.hierarchy.alignment.lab_mean_ is None  # the original is untouched
    shifted = aligned.hierarchy.alignment.transform(X)
    assert not np.allclose(shifted, X)
    mix = aligned.hierarchy.alignment.class_mix_  # estimated by stage 1
    assert mix is not None and abs(float(mix.sum()) - 1.0) < 1e-5
    np.testing.assert_allclose(aligned.hierarchy.stage_proba(1, X),
                               tiny_model.stage1.predict_proba(shifted), rtol=1e-6)
    # the novelty (review score, domain check) reads the features unshifted
    np.testing.assert_allclose(aligned.hierarchy.review_scores(X)[2],
                               tiny_model.hierarchy.review_scores(X)[2], rtol=1e-6)


def test_the_class_mix_is_estimated_by_the_calibrated_svm(tiny_model):
    import copy

    X = tiny_model.features(rgb_images(sorted(FIXTURES.glob("*/*.jpg"))))
    lab = np.concatenate([X] * (LabAlignment.MIN_CELLS // len(X) + 1)) * 1.5 + 0.5
    mixed = copy.copy(tiny_model)
    mixed.hierarchy = copy.copy(tiny_model.hierarchy)
    mixed.hierarchy.stage1 = copy.copy(tiny_model.stage1)
    mixed.hierarchy.stage1.network_weight = 1.0  # answers with the network head alone
    plain, both = align_model(tiny_model, lab), align_model(mixed, lab)
    assert tiny_model.stage1.network_weight == 0.0
    np.testing.assert_allclose(both.hierarchy.alignment.class_mix_,
                               plain.hierarchy.alignment.class_mix_, rtol=1e-5)
    shifted = both.hierarchy.alignment.transform(X)
    np.testing.assert_allclose(both.hierarchy.stage_proba(1, X),
                               tiny_model.stage1.network_proba(shifted), atol=1e-5)


def test_align_model_refuses_models_without_reference_or_adapted(tiny_model):
    bare = copy.copy(tiny_model)
    bare.hierarchy = copy.copy(tiny_model.hierarchy)
    bare.hierarchy.alignment = None
    with pytest.raises(ValueError, match="reference"):
        align_model(bare, _maps())
    adapted = copy.copy(tiny_model)
    adapted.hierarchy = copy.copy(tiny_model.hierarchy)
    adapted.hierarchy.gate, adapted.hierarchy.base = object(), tiny_model.hierarchy
    with pytest.raises(ValueError, match="adapted"):
        align_model(adapted, _maps())
    strange = copy.copy(tiny_model)
    strange.hierarchy = copy.copy(tiny_model.hierarchy)
    ref = tiny_model.hierarchy.alignment
    strange.hierarchy.alignment = LabAlignment(ref.reference_mean, ref.class_means[:1], ["blast"])
    with pytest.raises(ValueError, match="blast"):
        align_model(strange, np.ones((30, *ref_shape(tiny_model)), np.float32))


def test_align_cli_writes_a_bundle_aligned_to_the_images(tiny_bundle, tiny_data, tmp_path):
    out = tmp_path / "aligned"
    result = CliRunner().invoke(main, ["align", str(tiny_data), "--out", str(out),
                                       "--model", str(tiny_bundle), "--precision", "float32"])
    assert result.exit_code == 0, result.output
    verify_bundle(out)
    model = load(out, precision="float32")
    n_images = len(list(tiny_data.glob("*.jpg")))
    assert model.hierarchy.alignment.n_cells_ == n_images
    assert model.info["alignment"]["n_images"] == n_images
    assert model.info["alignment"]["data_digest"].startswith("sha256:")
    base = load(tiny_bundle, precision="float32")
    np.testing.assert_allclose(model.hierarchy.alignment.reference_mean,
                               base.hierarchy.alignment.reference_mean)
    assert (out / "MODEL_CARD.md").is_file()
    # the domain check on the images is recorded; they are the training lab's own, so it
    # does not warn, and the command says that classify would not have aligned them
    check = model.info["alignment"]["domain_check"]
    assert check["n"] == n_images and check["warning"] is False
    assert "would not align them" in result.output and "keep their unshifted" in result.output


def test_align_cli_needs_enough_images(tiny_bundle, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for src in sorted(FIXTURES.glob("*/*.jpg"))[:3]:
        shutil.copy(src, few / src.name)
    result = CliRunner().invoke(main, ["align", str(few), "--out", str(tmp_path / "b"),
                                       "--model", str(tiny_bundle)])
    assert result.exit_code == 2
    assert "3 image(s) found" in result.output


def test_replace_arrays_adds_a_file_to_the_manifest(tiny_bundle, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_bundle, out)
    replace_arrays(out, "alignment.npz", LabAlignment(np.ones(512, np.float32)).to_arrays())
    verify_bundle(out)
    assert load(out, precision="float32").hierarchy.alignment.reference_mean[0] == 1.0


def test_align_cli_skips_unreadable_images_and_names_them(tiny_bundle, tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    for src in sorted(FIXTURES.glob("*/*.jpg"))[:LabAlignment.MIN_CELLS]:
        shutil.copy(src, lab / src.name)
    (lab / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "aligned"
    result = CliRunner().invoke(main, ["align", str(lab), "--out", str(out),
                                       "--model", str(tiny_bundle), "--precision", "float32"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.png" in result.output
    assert load(out, precision="float32").hierarchy.alignment.n_cells_ == LabAlignment.MIN_CELLS
    (lab / sorted(lab.glob("*.jpg"))[0].name).write_bytes(b"")  # now one readable too few
    again = CliRunner().invoke(main, ["align", str(lab), "--out", str(tmp_path / "again"),
                                      "--model", str(tiny_bundle), "--precision", "float32"])
    assert again.exit_code == 1 and "too few" in again.output
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("case", ["base", "inside input", "not a bundle", "int8"])
def test_align_cli_refuses_a_bad_out_or_precision_before_any_work(tiny_bundle, tiny_data,
                                                                  tmp_path, case):
    out = {"base": tiny_bundle, "inside input": tiny_data / "model",
           "not a bundle": tmp_path, "int8": tmp_path / "new"}[case]
    extra = ["--precision", "int8"] if case == "int8" else []
    before = sorted(p.name for p in tiny_bundle.iterdir())
    result = CliRunner().invoke(main, ["align", str(tiny_data), "--out", str(out),
                                       "--model", str(tiny_bundle), *extra])
    assert result.exit_code == 2, result.output
    assert {"base": "base model itself", "inside input": "overlaps the input",
            "not a bundle": "not a model bundle", "int8": "int8"}[case] in result.output
    assert sorted(p.name for p in tiny_bundle.iterdir()) == before
    assert not (tiny_data / "model").exists()


def test_align_cli_hints_at_recursive(tiny_bundle, tmp_path):
    (tmp_path / "lab" / "sub").mkdir(parents=True)
    for src in sorted(FIXTURES.glob("*/*.jpg"))[:LabAlignment.MIN_CELLS]:
        shutil.copy(src, tmp_path / "lab" / "sub" / src.name)
    result = CliRunner().invoke(main, ["align", str(tmp_path / "lab"), "--out",
                                       str(tmp_path / "b"), "--model", str(tiny_bundle)])
    assert result.exit_code == 2 and "--recursive" in result.output


def test_alignment_arrays_of_the_first_plain_mean_version_still_load():
    ref = np.arange(4, dtype=np.float32)
    old = {"reference_mean": ref, "lab_mean": ref + 1, "n_cells": np.array(30)}
    loaded = LabAlignment.from_arrays(old)
    np.testing.assert_allclose(loaded.transform(np.full((1, 1, 1, 4), 5.0, np.float32))[0, 0, 0],
                               [4.0, 4.0, 4.0, 4.0])


def _warns(flag):
    def domain_shift(novelty, *args, **kwargs):
        return {"score": 1.0 if flag else 0.0, "expected": 0.05, "warning": flag,
                "n": len(novelty), "message": "patched"}
    return domain_shift


@pytest.fixture(scope="module")
def lab_maps(tiny_model, tiny_data):
    paths = sorted(tiny_data.glob("*.jpg"))
    assert len(paths) >= auto.AUTO_MIN_CELLS
    return tiny_model.features(rgb_images(paths))


def test_auto_align_only_when_the_domain_check_warns(tiny_model, lab_maps, monkeypatch):
    import hiercell.review

    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(False))
    same, record = auto.auto_align(tiny_model, lab_maps)
    assert same is tiny_model and not record["applied"] and "look like" in record["message"]
    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(True))
    aligned, record = auto.auto_align(tiny_model, lab_maps)
    assert record["applied"] and record["n_cells"] == len(lab_maps)
    assert (record["domain_score"], record["domain_expected"], record["domain_warning"]) \
        == (1.0, 0.05, True)
    assert aligned.hierarchy.alignment.fitted and not tiny_model.hierarchy.alignment.fitted
    assert abs(sum(record["estimated_class_mix"].values()) - 1.0) < 1e-3
    few, record = auto.auto_align(tiny_model, lab_maps[:auto.AUTO_MIN_CELLS - 1])
    assert few is tiny_model and "fewer than 20" in record["message"]
    # a folder of 20 cells is aligned: as few as an alignment can be fit on
    small, record = auto.auto_align(tiny_model, lab_maps[:20])
    assert record["applied"] and small.hierarchy.alignment.fitted and record["n_cells"] == 20
    again, record = auto.auto_align(aligned, lab_maps)  # an aligned model is left alone
    assert again is aligned and not record["applied"]


def test_auto_align_set_aligns_on_the_rows_classify_would_draw(tiny_model, lab_maps,
                                                                monkeypatch):
    import hiercell.review

    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(True))
    monkeypatch.setattr(auto, "AUTO_SAMPLE", 25)  # fewer drawn than given
    paths = [f"/lab/cell{i:03d}.png" for i in range(len(lab_maps))]
    drawn = [paths.index(p) for p in auto.auto_sample(paths)]
    assert len(drawn) == 25 < len(paths)
    want, want_record = auto.auto_align(tiny_model, lab_maps[drawn])
    order = np.random.default_rng(1).permutation(len(paths))  # any order of the set
    got, record = auto.auto_align_set(tiny_model, lab_maps[order], [paths[i] for i in order])
    assert record == want_record and record["n_cells"] == 25
    np.testing.assert_allclose(got.hierarchy.aligned(lab_maps), want.hierarchy.aligned(lab_maps),
                               atol=1e-6)
    with pytest.raises(ValueError, match="distinct paths"):
        auto.auto_align_set(tiny_model, lab_maps, paths[:-1] + paths[:1])


def test_auto_sample_is_a_fixed_draw_whatever_the_order():
    paths = [f"/lab/cell{i:03d}.png" for i in range(300)]
    drawn = auto.auto_sample(paths)
    assert len(drawn) == auto.AUTO_SAMPLE and len(set(drawn)) == auto.AUTO_SAMPLE
    assert auto.auto_sample(paths[::-1]) == drawn
    assert auto.auto_sample(paths[:10]) == sorted(paths[:10])


def test_classify_folder_auto_aligns_every_share_alike(tiny_bundle, tiny_data, tmp_path,
                                                       monkeypatch):
    import hiercell.review
    from hiercell.classify import classify_folder

    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(True))
    n_images = len(list(tiny_data.glob("*.jpg")))
    shares = [classify_folder(tiny_data, model=tiny_bundle, out=tmp_path / f"s{k}.csv",
                              shard=f"{k}/2", progress=False, precision="float32")
              for k in (1, 2)]
    records = [s.summary["alignment"] for s in shares]
    assert all(r["applied"] and r["n_cells"] == min(n_images, auto.AUTO_SAMPLE) for r in records)
    assert records[0]["estimated_class_mix"] == records[1]["estimated_class_mix"]
    off = classify_folder(tiny_data, model=tiny_bundle, out=tmp_path / "off.csv",
                          progress=False, precision="float32", auto_align=False)
    assert off.summary["alignment"] is None


def test_classify_folder_reuses_the_pre_pass_trunk_features(tiny_model, tiny_data, tmp_path,
                                                             monkeypatch):
    """The automatic alignment's pre-pass runs the trunk on the drawn images once; the
    main pass reuses those features (every image through the trunk exactly once), and
    the answers are those of the model aligned on the same draw beforehand."""
    import hiercell.review
    from hiercell.classify import classify_folder

    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(True))
    monkeypatch.setattr(auto, "AUTO_SAMPLE", 60)
    paths = sorted(tiny_data.glob("*.jpg"))
    assert len(paths) > 60
    seen = []
    for name in ("features", "prepared_features"):
        original = getattr(tiny_model, name)

        def counted(batch, *args, _original=original, **kwargs):
            seen.append(len(batch))
            return _original(batch, *args, **kwargs)
        monkeypatch.setattr(tiny_model, name, counted)
    result = classify_folder(tiny_data, model=tiny_model, progress=False)
    assert result.summary["alignment"]["applied"] and result.summary["alignment"]["n_cells"] == 60
    assert sum(seen) == len(paths)
    drawn = auto.auto_sample(paths, 60)
    aligned = auto.align_model(tiny_model, tiny_model.features(rgb_images(drawn)))
    again = classify_folder(tiny_data, model=aligned, progress=False, auto_align=False)
    assert [(r.path, r.label) for r in result.records] == [(r.path, r.label) for r in again.records]
    np.testing.assert_allclose([r.probability for r in result.records],
                               [r.probability for r in again.records], atol=1e-5)


def test_a_folder_left_unaligned_reuses_the_pre_pass_answers(tiny_model, tiny_data,
                                                             monkeypatch):
    """When the domain check does not warn, the model is unchanged: the pre-pass's
    records of the drawn images are the main pass's, the others are made as before,
    and every record equals what a run without the pre-pass gives."""
    import hiercell.review
    from hiercell.classify import classify_folder

    checked = []

    def check(novelty, classes=None, class_rates=None, **kwargs):
        checked.append((list(novelty), list(classes), class_rates))
        return _warns(False)(novelty)
    monkeypatch.setattr(hiercell.review, "domain_shift", check)
    monkeypatch.setattr(auto, "AUTO_SAMPLE", 60)
    paths = sorted(tiny_data.glob("*.jpg"))
    drawn = tiny_model.features(rgb_images(auto.auto_sample(paths, 60)))
    novelty, classes = auto.folder_novelty(tiny_model, drawn)  # what the check must read
    original = tiny_model.hierarchy.predict_records
    made = []

    def counted(X, *args, **kwargs):
        made.append(len(X))
        return original(X, *args, **kwargs)
    monkeypatch.setattr(tiny_model.hierarchy, "predict_records", counted)
    result = classify_folder(tiny_data, model=tiny_model, progress=False, top_k=2)
    assert result.summary["alignment"]["applied"] is False
    assert made[0] == 60 and sum(made) == len(paths)  # each image answered once
    seen_novelty, seen_classes, rates = checked[0]  # the pre-pass's check, from the records
    assert seen_classes == classes and rates == tiny_model.hierarchy.reviewer.novel_rates()
    np.testing.assert_allclose(seen_novelty, novelty, atol=1e-6)
    monkeypatch.setattr(tiny_model.hierarchy, "predict_records", original)
    plain = classify_folder(tiny_data, model=tiny_model, progress=False, top_k=2,
                            auto_align=False)
    def row(r):
        return (r.path, r.label, r.main_class, r.review, len(r.top), r.model, r.precision)
    assert [row(r) for r in result.records] == [row(r) for r in plain.records]
    for name in ("probability", "review_score", "novelty"):
        np.testing.assert_allclose([getattr(r, name) for r in result.records],
                                   [getattr(r, name) for r in plain.records], atol=1e-5)


def test_a_bad_image_in_the_pre_pass_costs_only_itself(tiny_model, tiny_data, tmp_path,
                                                      monkeypatch):
    """An image the trunk fails on in the automatic alignment's pre-pass is left out of
    the alignment, the rest of its batch is kept, and the main pass reports it."""
    import hiercell.classify
    import hiercell.review
    from hiercell.classify import classify_folder

    folder = tmp_path / "cells"
    shutil.copytree(tiny_data, folder)
    shutil.copy(sorted(folder.glob("*.jpg"))[0], folder / "poison.jpg")
    monkeypatch.setattr(hiercell.review, "domain_shift", _warns(True))
    monkeypatch.setattr(auto, "AUTO_SAMPLE", 10_000)  # every image drawn
    original = hiercell.classify._features

    def failing(model, images, paths, *args, **kwargs):
        if any("poison" in str(p) for p in paths):
            raise RuntimeError("trunk failed")
        return original(model, images, paths, *args, **kwargs)
    monkeypatch.setattr(hiercell.classify, "_features", failing)
    result = classify_folder(folder, model=tiny_model, progress=False, batch_size=8)
    n = len(list(folder.glob("*.jpg")))
    assert result.summary["alignment"]["applied"]
    assert result.summary["alignment"]["n_cells"] == n - 1
    bad = [r for r in result.records if r.status != "ok"]
    assert [r.path.rsplit("/", 1)[-1] for r in bad] == ["poison.jpg"]
    assert "trunk failed" in bad[0].error and result.n_ok == n - 1


def test_auto_align_checks_the_answers_against_the_models_class_rates(tiny_model, lab_maps,
                                                                       monkeypatch):
    import hiercell.review

    rates = tiny_model.hierarchy.reviewer.novel_rates()  # a trained bundle knows them
    assert rates and set(rates) <= set(MAIN_CLASSES) and all(0 < v < 1 for v in rates.values())
    seen = {}

    def check(novelty, classes=None, class_rates=None, **kwargs):
        seen.update(novelty=novelty, classes=classes, class_rates=class_rates)
        return {"score": 0.0, "expected": 0.05, "warning": False, "n": len(novelty),
                "message": "patched"}

    monkeypatch.setattr(hiercell.review, "domain_shift", check)
    auto.auto_align(tiny_model, lab_maps)
    answers = [d.main for d in tiny_model.hierarchy.decide(lab_maps)[1]]
    assert seen["classes"] == answers and seen["class_rates"] == rates
    assert len(seen["novelty"]) == len(lab_maps)
