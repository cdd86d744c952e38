"""The review scorer (hiercell.review) on synthetic descriptors and trunk maps."""

import copy

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hiercell.review import (SIGNALS, SIGNALS_WITHOUT_NETWORK, ReviewScorer, domain_shift,
                             knn_distance, neighbour_signals, trunk_descriptor)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def scorer():
    rng = np.random.default_rng(0)
    centre = rng.random(64)
    known = lambda n: unit(centre + 0.05 * rng.standard_normal((n, 64)))
    val_top = rng.uniform(0.6, 1.0, 400)
    s = ReviewScorer(k=5).fit(known(800), known(400), val_top)
    return s, known, rng


def test_trunk_descriptor_is_unit_length_and_ignores_the_border():
    maps = np.zeros((2, 10, 10, 8), np.float32)
    maps[:, 4:6, 4:6, 0] = 1.0
    d = trunk_descriptor(maps)
    assert d.shape == (2, 16) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    moved = maps.copy()
    moved[:, 0, 0, 3] = 50.0  # the corner is outside the central 60 %
    assert np.allclose(trunk_descriptor(moved), d)


def test_knn_distance_is_zero_on_the_reference_and_grows_away_from_it():
    ref = unit(np.random.default_rng(1).random((50, 8)))
    assert np.allclose(knn_distance(ref, ref[:5], k=1), 0, atol=1e-6)
    far = unit(-ref[:5])
    assert (knn_distance(ref, far, k=3) > knn_distance(ref, ref[:5], k=3)).all()


def test_novel_cells_score_higher_and_the_threshold_flags_about_5_percent(scorer):
    s, known, rng = scorer
    in_lab, _ = s.score(known(2000), rng.uniform(0.6, 1.0, 2000))
    flagged = s.flag(in_lab).mean()
    assert 0.02 < flagged < 0.09
    novel = unit(rng.random((200, 64)) - 0.5)
    score, novelty = s.score(novel, np.full(200, 0.99))
    assert novelty.min() > 0.95 and s.flag(score).all()  # novel, even when confident
    ambiguous, _ = s.score(known(200), np.full(200, 0.3))
    assert s.flag(ambiguous).mean() > 0.9


def test_uncertain_cells_score_one(scorer):
    s, known, rng = scorer
    score, _ = s.score(known(3), np.ones(3), uncertain=[True, False, False])
    assert score[0] == 1.0 and score[1] < 1.0


def test_round_trip_and_with_reference(scorer):
    s, known, rng = scorer
    again = ReviewScorer.from_arrays(s.to_arrays())
    q = known(20)
    assert np.allclose(again.score(q, np.full(20, 0.9))[0], s.score(q, np.full(20, 0.9))[0])
    new_lab = unit(rng.random((60, 64)) - 0.5)
    before = s.score(new_lab[:10], np.full(10, 0.9))[1]
    after = s.with_reference(new_lab[10:]).score(new_lab[:10], np.full(10, 0.9))[1]
    assert before.min() > 0.95 and after.mean() < before.mean()


def test_domain_shift_fires_on_novel_folders_only():
    rng = np.random.default_rng(3)
    assert not domain_shift(rng.random(50))["warning"]
    shifted = domain_shift([0.99] * 40 + [0.5] * 10)
    assert shifted["warning"] and shifted["score"] == 0.8 and "hiercell adapt" in shifted["message"]
    assert "hiercell align" in shifted["message"]
    after = domain_shift([0.99] * 40 + [0.5] * 10, aligned=True)
    assert after["warning"] and "aligned to them" in after["message"]
    assert "hiercell adapt" in after["message"] and "hiercell align" not in after["message"]
    assert not domain_shift([0.99, 0.99, 0.5])["warning"]  # too few cells to tell
    assert domain_shift([None, None])["score"] is None


def test_domain_shift_expects_what_the_answered_classes_are_in_lab():
    # 20 cells answered erythroblast, 8 beyond the 95th percentile: alarming at the
    # 0.05 of an average in-lab cell, not at erythroblasts' own in-lab rate
    novelty = [0.99] * 8 + [0.5] * 12
    classes = ["erythroblast"] * 20
    assert domain_shift(novelty)["warning"]
    check = domain_shift(novelty, classes, {"erythroblast": 0.2, "neutrophil": 0.02})
    assert not check["warning"] and check["expected"] == 0.2 and check["score"] == 0.4
    assert "0.20 expected" in check["message"]
    # another lab's folder of the same answers still warns
    assert domain_shift([0.99] * 20, classes, {"erythroblast": 0.2})["warning"]
    # classes the rates lack expect the base 0.05; None novelties are skipped with their class
    check = domain_shift([None, 0.99, 0.5, 0.5], ["x", "platelet", "y", "erythroblast"],
                         {"erythroblast": 0.2})
    assert check["n"] == 3 and check["expected"] == pytest.approx((0.05 + 0.05 + 0.2) / 3, abs=1e-4)
    # a rarely novel class makes the check more sensitive, not less
    some = [0.99] * 5 + [0.5] * 15  # 5 of 20: P(>= 5) 0.003 at 0.05, 2e-5 at 0.01
    assert not domain_shift(some, ["x"] * 20, {"x": 0.05})["warning"]
    assert domain_shift(some, ["x"] * 20, {"x": 0.01})["warning"]
    assert not domain_shift([0.99] * 1 + [0.5] * 19, ["x"] * 20, {"x": 0.0})["warning"]  # < 0.10
    # the line: 0.10 above the expected share (docs/experiments/mild_shift.py), significant
    assert domain_shift([0.99] * 31 + [0.5] * 169)["warning"]  # 0.155 of 200
    assert not domain_shift([0.99] * 29 + [0.5] * 171)["warning"]  # 0.145 of 200


def test_novel_rates_per_answered_class(scorer):
    s, known, rng = scorer
    assert s.novel_rates() is None  # fit without the validation cells' answers
    n = len(s.val_novelty_)
    order = np.argsort(s.val_novelty_)
    answers = np.array(["neutrophil"] * n, dtype=object)
    answers[order[-40:]] = "erythroblast"  # the 40 most novel cells (10 % of 400)
    answers[order[:40]] = "platelet"
    fit = copy.copy(s)
    fit.val_answers_ = answers.astype(str)
    rates = fit.novel_rates(prior=0)
    assert rates["platelet"] == 0.0 and rates["erythroblast"] == 0.5  # 20 of 40 above 0.95
    assert rates["neutrophil"] == 0.0
    shrunk = fit.novel_rates(prior=40)
    assert shrunk["erythroblast"] == pytest.approx((20 + 2) / 80, abs=1e-4)
    again = ReviewScorer.from_arrays(fit.to_arrays())
    assert again.novel_rates() == fit.novel_rates()
    assert ReviewScorer.from_arrays(s.to_arrays()).novel_rates() is None
    with pytest.raises(ValueError, match="one class per validation cell"):
        ReviewScorer(k=5).fit(s.reference_, known(30), np.full(30, 0.9), val_answers=["a"] * 29)


# --------------------------------------------------------------------------- learned combination

CLASSES = np.array(["basophil", "lymphocyte", "monocyte"])


@pytest.fixture
def learned():
    """Three classes, each a cluster of descriptors; the answer is the true class except
    for a share of cells answered as another class (wrong, and less probable)."""
    rng = np.random.default_rng(5)
    centres = rng.random((3, 64))

    def cells(n, wrong_share=0.1, spread=0.05):
        y = rng.integers(0, 3, n)
        d = unit(centres[y] + spread * rng.standard_normal((n, 64)))
        wrong = rng.random(n) < wrong_share
        answer = np.where(wrong, (y + 1) % 3, y)
        proba = np.where(wrong, rng.uniform(0.4, 0.9, n), rng.uniform(0.6, 1.0, n))
        return d, CLASSES[answer], proba, wrong, CLASSES[y]

    ref, _, _, _, ref_y = cells(900, 0.0)
    val = cells(600)
    shifted = [cells(600, 0.3, spread=0.08)[:4]]
    s = ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=shifted,
                              val_uncertain=np.arange(600) < 6)
    return s, cells, rng


def test_learned_scorer_ranks_wrong_answers_high_and_flags_5_percent(learned):
    s, cells, _ = learned
    assert s.learned and s.coef_.shape == (4,)
    assert s.coef_[1] > 0  # answered class farther than another class: suspicious
    d, answers, proba, wrong, _ = cells(3000)
    score, novelty = s.score(d, proba, None, answers, proba)
    assert 0.03 < s.flag(score).mean() < 0.07
    assert score[wrong].mean() > score[~wrong].mean()
    assert roc_auc_score(wrong, score) > 0.9
    assert ((novelty >= 0) & (novelty <= 1)).all()


def test_learned_scorer_keeps_ranking_novel_cells_and_flags_them(learned):
    s, cells, rng = learned
    d, answers, proba, wrong, _ = cells(400, 0.5)
    far = unit(d + 0.6 * rng.standard_normal(d.shape))  # another lab: every cell novel
    score, novelty = s.score(far, proba, None, answers, proba)
    assert novelty.min() > 0.95 and s.flag(score).all()
    assert (score < 1.0).all() and len(np.unique(score)) == len(score)  # no saturation
    u = s.decision_function(s.signals(far, answers, proba))
    assert np.array_equal(np.argsort(score, kind="stable"), np.argsort(u, kind="stable"))
    assert domain_shift(novelty)["warning"]


def test_learned_scorer_flags_uncertain_cells_below_one(learned):
    s, cells, _ = learned
    d, answers, proba, _, _ = cells(50, 0.0)
    score, _ = s.score(d, proba, np.arange(50) < 25, answers, proba)
    assert s.flag(score[:25]).all() and (score[:25] < 1.0).all()
    with pytest.raises(ValueError, match="answered classes"):
        s.score(d, proba)


def test_learned_scorer_round_trip_and_old_files_stay_legacy(learned, scorer):
    s, cells, rng = learned
    again = ReviewScorer.from_arrays(s.to_arrays())
    assert again.learned and again.threshold_ == pytest.approx(s.threshold_)
    d, answers, proba, _, _ = cells(40)
    np.testing.assert_allclose(again.score(d, proba, None, answers, proba)[0],
                               s.score(d, proba, None, answers, proba)[0], atol=1e-6)
    # a review.npz from before the learned combination: its five arrays, two params
    legacy, known, _ = scorer
    old = {k: v for k, v in legacy.to_arrays().items()}
    old["params"] = old["params"][:2]
    loaded = ReviewScorer.from_arrays(old)
    assert not loaded.learned and loaded.threshold_ == pytest.approx(legacy.threshold_)
    q = known(20)
    np.testing.assert_allclose(loaded.score(q, np.full(20, 0.9))[0],
                               legacy.score(q, np.full(20, 0.9))[0])


def test_learned_scorer_with_reference_needs_the_new_cells_classes(learned):
    s, cells, rng = learned
    d, answers, proba, _, y = cells(60, 0.0)
    lab = unit(d + 0.6 * rng.standard_normal(d.shape))
    with pytest.raises(ValueError, match="labels"):
        s.with_reference(lab[10:])
    before = s.score(lab[:10], proba[:10], None, answers[:10], proba[:10])[1]
    new = s.with_reference(lab[10:], list(y[10:-1]) + [None])
    after = new.score(lab[:10], proba[:10], None, answers[:10], proba[:10])[1]
    assert len(new.reference_labels_) == len(new.reference_) and new.reference_labels_[-1] == ""
    assert before.min() > 0.95 and after.mean() < before.mean()


def test_neighbour_signals_of_a_cell_answered_against_its_neighbours():
    ref = unit(np.array([[1.0, 0.0, 0.0]] * 5 + [[0.0, 1.0, 0.0]] * 5))
    labels = ["a"] * 5 + ["b"] * 5
    q = unit(np.array([[1.0, 0.05, 0.0], [1.0, 0.05, 0.0], [0.0, 0.0, 1.0]]))
    nb = neighbour_signals(ref, labels, q, ["a", "b", "c"], k=3)
    assert nb[0, 1] < 1.0 < nb[1, 1]  # answered "b" while looking like "a"
    assert (nb[0, 2], nb[1, 2]) == (1.0, 0.0)
    assert nb[2, 1] >= 1.0 and nb[2, 2] == 0.0  # a class without reference cells


def test_a_new_labs_cells_are_novel_against_its_own_labelled_cells(learned):
    """After adapting (with_reference), cells the adapted model answers as the new lab's
    (``own_lab``) read their novelty among the lab's own cells: ordinary ones stop
    being novel and the folder stops warning."""
    s, cells, rng = learned
    d, answers, proba, _, y = cells(400, 0.0)
    lab = unit(d + 0.6 * rng.standard_normal(d.shape))
    new = s.with_reference(lab[:200], y[:200])
    rest = slice(200, None)
    args = (proba[rest], None, answers[rest], proba[rest])
    pbc_scale = new.score(lab[rest], *args)[1]
    own = new.score(lab[rest], *args, own_lab=np.ones(200, bool))
    assert domain_shift(pbc_scale)["warning"] and not domain_shift(own[1])["warning"]
    assert np.mean(own[1] > 0.95) < 0.15 < np.mean(pbc_scale > 0.95)
    assert new.flag(own[0]).mean() <= new.flag(new.score(lab[rest], *args)[0]).mean()
    # without the lab's cells in the reference, own_lab changes nothing
    np.testing.assert_array_equal(s.score(lab[rest], *args, own_lab=np.ones(200, bool))[1],
                                  s.score(lab[rest], *args)[1])


def test_a_new_labs_own_threshold_flags_as_many_cells_as_were_wrong(learned):
    """calibrate_own_lab: the lab's cells (own_lab) get a threshold of their own, set on
    out-of-fold answers to flag as many as were wrong; their scores are rescaled so that
    the bundle's threshold still decides, in the same order; PBC-side rows are untouched;
    it survives to_arrays and is reset by with_reference."""
    s, cells, rng = learned
    d, answers, proba, wrong, y = cells(600, 0.3)
    lab = unit(d + 0.3 * rng.standard_normal(d.shape))
    new = s.with_reference(lab[:100], y[:100])
    held = slice(100, 350)
    u = new.wrongness(new.signals(lab[held], answers[held], proba[held]))
    summary = new.calibrate_own_lab(u, wrong[held])
    assert summary["target_flag_rate"] == pytest.approx(max(0.05, wrong[held].mean()))
    assert summary["flagged"] == pytest.approx(summary["target_flag_rate"], abs=0.01)
    assert summary["auroc_wrong_vs_right"] > 0.7 and summary["n"] == 250
    rest = slice(350, None)
    args = (lab[rest], proba[rest], None, answers[rest], proba[rest])
    own = new.score(*args, own_lab=np.ones(250, bool))[0]
    assert new.flag(own).mean() == pytest.approx(wrong[held].mean(), abs=0.08)
    uncalibrated = copy.copy(new)
    uncalibrated.own_threshold_ = None
    before = uncalibrated.score(*args, own_lab=np.ones(250, bool))[0]
    assert np.array_equal(np.argsort(own, kind="stable"), np.argsort(before, kind="stable"))
    assert not np.array_equal(own, before)
    plain = new.score(*args)[0]
    mixed = new.score(*args, own_lab=np.arange(250) < 100)[0]
    np.testing.assert_array_equal(mixed[100:], plain[100:])
    again = ReviewScorer.from_arrays(new.to_arrays())
    assert again.own_threshold_ == pytest.approx(new.own_threshold_)
    np.testing.assert_allclose(again.score(*args, own_lab=np.ones(250, bool))[0], own, atol=1e-6)
    # uncertain cells: counted in the lab's share and flagged, or (stage 2 not adapted)
    # neither
    unsure = np.arange(250) < 50
    lifting = copy.copy(new)
    counted = lifting.calibrate_own_lab(u, wrong[held], unsure, lift_uncertain=True)
    assert counted["flagged"] == pytest.approx(summary["flagged"], abs=0.01)
    assert lifting.own_threshold_ > new.own_threshold_
    own_unsure = np.ones(250, bool)
    scored = lifting.score(*args[:2], unsure, *args[3:], own_lab=own_unsure)[0]
    assert lifting.flag(scored[:50]).all()
    ignoring = copy.copy(new)
    ignoring.calibrate_own_lab(u, wrong[held], unsure, lift_uncertain=False)
    assert ignoring.own_threshold_ == pytest.approx(new.own_threshold_)
    np.testing.assert_allclose(ignoring.score(*args[:2], unsure, *args[3:], own_lab=own_unsure)[0],
                               own)
    again = ReviewScorer.from_arrays(ignoring.to_arrays())
    assert not again.own_lifts_uncertain_
    assert new.with_reference(lab[:20], y[:20]).own_threshold_ is None
    assert ReviewScorer.from_arrays(s.to_arrays()).own_threshold_ is None
    # novel cells are flagged anyway: counted in the share; NaN is refused, nothing set
    gated = copy.copy(new)
    novel_first = gated.calibrate_own_lab(u, wrong[held], novel=np.arange(250) < 10)
    assert novel_first["novel"] == 10 and gated.own_threshold_ > new.own_threshold_
    assert novel_first["flagged"] == pytest.approx(summary["flagged"], abs=0.01)
    with pytest.raises(ValueError, match="finite"):
        gated.calibrate_own_lab(np.where(np.arange(250) == 0, np.nan, u), wrong[held])
    assert gated.own_threshold_ > new.own_threshold_
    with pytest.raises(ValueError, match="one wrongness, wrong and uncertain"):
        new.calibrate_own_lab(u, wrong[:3])


def test_a_review_rate_sets_the_share_of_in_lab_cells_flagged(learned):
    s, cells, _ = learned
    d, answers, proba, wrong, _ = cells(3000)
    wider = s.at_rate(0.15)
    assert s.target_rate == 0.05 and wider.target_rate == 0.15  # the original is untouched
    assert wider.threshold_ < s.threshold_
    score, _ = wider.score(d, proba, None, answers, proba)
    assert 0.12 < wider.flag(score).mean() < 0.18
    base, _ = s.score(d, proba, None, answers, proba)
    assert wider.flag(score)[s.flag(base)].all()  # every cell flagged at 5 % still is
    again = ReviewScorer.from_arrays(wider.to_arrays())
    assert again.threshold_ == pytest.approx(wider.threshold_)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            s.at_rate(bad)


def test_a_review_rate_keeps_an_adapted_labs_own_flag(learned):
    s, cells, rng = learned
    d, answers, proba, wrong, y = cells(300, 0.3)
    lab = s.with_reference(d[:100], y[:100])
    u, _ = lab.wrongness_and_novelty(d[100:], answers[100:], proba[100:])
    lab.calibrate_own_lab(u, wrong[100:])
    own = np.ones(200, bool)
    flag = lambda m: m.flag(m.score(d[100:], proba[100:], None, answers[100:], proba[100:],
                                    own_lab=own)[0])
    wider = lab.at_rate(0.15)
    assert wider.threshold_ < lab.threshold_
    np.testing.assert_array_equal(flag(wider), flag(lab))


@pytest.fixture
def with_network():
    """Cells whose wrong answers the network head doubts (as in the real model: AUROC
    0.944 against 0.917 without its probability on the PBC test split) and whose head
    energy is higher, and a learned scorer fit with the head's probability alone."""
    rng = np.random.default_rng(7)
    centres = rng.random((3, 64))

    def cells(n, wrong_share=0.1, looks_like="truth"):
        y = rng.integers(0, 3, n)
        wrong = rng.random(n) < wrong_share
        answer = np.where(wrong, (y + 1) % 3, y)
        near = y if looks_like == "truth" else answer  # "answer": neighbours cannot tell
        d = unit(centres[near] + 0.05 * rng.standard_normal((n, 64)))
        proba = rng.uniform(0.5, 1.0, n)  # the SVM alone says nothing here
        network = np.where(wrong, rng.uniform(0.05, 0.6, n), rng.uniform(0.4, 1.0, n))
        energy = np.where(wrong, -4.0, -7.0) + 1.5 * rng.standard_normal(n)
        return d, CLASSES[answer], proba, wrong, network, energy, CLASSES[y]

    ref, *_, ref_y = cells(900, 0.0)
    val = cells(600)
    view = cells(600, 0.3)
    s = ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=[view[:5]],
                              val_network_proba=val[4])
    return s, cells


def test_the_network_heads_probability_is_a_fifth_signal_that_finds_wrong_answers(with_network):
    s, cells = with_network
    assert s.signals_ == SIGNALS[:5] and s.coef_.shape == (5,) and s.coef_[4] < 0
    d, answers, proba, wrong, network, *_ = cells(3000)
    score, _ = s.score(d, proba, None, answers, proba, network_proba=network)
    assert roc_auc_score(wrong, score) > 0.85
    with pytest.raises(ValueError, match="network_proba"):
        s.score(d, proba, None, answers, proba)
    again = ReviewScorer.from_arrays(s.to_arrays())  # five named signals: last release's files
    assert again.signals_ == SIGNALS[:5]
    np.testing.assert_allclose(again.score(d, proba, None, answers, proba, network_proba=network)[0],
                               score, atol=1e-6)


def test_the_network_heads_energy_is_a_sixth_signal_that_adds_to_its_probability(with_network):
    _, cells = with_network
    # cells that look like their (wrong) answers: only the head's outputs can tell
    ref, *_, ref_y = cells(900, 0.0)
    val, view = cells(600, 0.1, "answer"), cells(600, 0.3, "answer")
    s = ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=[view[:6]],
                              val_network_proba=val[4], val_network_energy=val[5])
    assert s.signals_ == SIGNALS and s.coef_.shape == (6,) and s.coef_[5] > 0
    five = ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=[view[:5]],
                                 val_network_proba=val[4])
    d, answers, proba, wrong, network, energy, _ = cells(3000, 0.1, "answer")
    score, _ = s.score(d, proba, None, answers, proba, network_proba=network,
                       network_energy=energy)
    score5, _ = five.score(d, proba, None, answers, proba, network_proba=network)
    assert roc_auc_score(wrong, score) > roc_auc_score(wrong, score5) + 0.02
    with pytest.raises(ValueError, match="network_energy"):
        s.score(d, proba, None, answers, proba, network_proba=network)
    broken = energy.copy()
    broken[:3] = np.nan  # e.g. an input the head could not make sense of
    nan_score, _ = s.score(d, proba, None, answers, proba, network_proba=network,
                           network_energy=broken)
    np.testing.assert_array_equal(nan_score[:3], 1.0)
    assert s.flag(nan_score[:3]).all()
    np.testing.assert_allclose(nan_score[3:], score[3:], atol=1e-6)
    again = ReviewScorer.from_arrays(s.to_arrays())
    assert again.signals_ == SIGNALS
    np.testing.assert_allclose(
        again.score(d, proba, None, answers, proba, network_proba=network,
                    network_energy=energy)[0], score, atol=1e-6)


def test_scorers_fit_without_the_network_signal_keep_four(learned):
    s, cells, _ = learned
    assert s.signals_ == SIGNALS_WITHOUT_NETWORK
    arrays = s.to_arrays()
    del arrays["signals"]  # a review.npz written before the fifth signal
    old = ReviewScorer.from_arrays(arrays)
    assert old.signals_ == SIGNALS_WITHOUT_NETWORK
    d, answers, proba, _, _ = cells(30)
    np.testing.assert_allclose(old.score(d, proba, None, answers, proba)[0],
                               s.score(d, proba, None, answers, proba)[0], atol=1e-6)


def test_network_outputs_must_be_given_for_every_fit_set_or_none(with_network):
    _, cells = with_network
    ref, *_, ref_y = cells(300, 0.0)
    val, view = cells(200, 0.2), cells(200, 0.3)
    with pytest.raises(ValueError, match="network_proba .* every shifted view"):
        ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=[view[:4]],
                              val_network_proba=val[4])
    with pytest.raises(ValueError, match="network_energy .* every shifted view"):
        ReviewScorer(k=5).fit(ref, val[0], val[2], ref_y, *val[1:4], shifted=[view[:5]],
                              val_network_proba=val[4], val_network_energy=val[5])


def test_novel_rates_are_withheld_once_a_new_labs_cells_are_known(scorer):
    s, known, rng = scorer
    fit = copy.copy(s)
    fit.val_answers_ = np.array(["neutrophil"] * len(s.val_novelty_))
    assert fit.novel_rates() == {"neutrophil": pytest.approx(0.05, abs=0.02)}
    adapted = fit.with_reference(unit(rng.random((60, 64)) - 0.5))
    assert len(adapted.extra_novelty_) and adapted.novel_rates() is None
    with pytest.raises(ValueError, match="2 classes for 3"):
        domain_shift([0.1, 0.2, 0.3], ["a", "b"])


def test_fit_reviewer_records_the_validation_answers_without_labels_too():
    from hiercell.review import fit_reviewer

    class Hierarchy:  # stage 1 answers by the first channel's mean
        def stage_proba(self, number, X):
            p = np.clip(X[..., 0].mean((1, 2)), 0.05, 0.95)[:, None]
            return np.hstack([p, 1 - p])

        def decide(self, X):
            from hiercell.hierarchy import Decision

            p = self.stage_proba(1, X)
            return p, [Decision("lymphocyte" if q[0] > 0.5 else "monocyte", float(q.max()))
                       for q in p]

    rng = np.random.default_rng(0)
    X = rng.random((120, 8, 8, 4)).astype(np.float32)
    X[..., 0] = np.where(np.arange(120) % 2 == 0, 0.9, 0.1)[:, None, None]
    reviewer = fit_reviewer(Hierarchy(), X, np.arange(80), np.arange(80, 120))
    assert not reviewer.learned
    expected = np.where(np.arange(80, 120) % 2 == 0, "lymphocyte", "monocyte")
    assert list(reviewer.val_answers_) == list(expected)
    assert set(reviewer.novel_rates()) == {"lymphocyte", "monocyte"}
