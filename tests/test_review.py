"""The review scorer (hiercell.review) on synthetic descriptors and trunk maps."""

import numpy as np
import pytest

from hiercell.review import ReviewScorer, domain_shift, knn_distance, trunk_descriptor


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
    assert not domain_shift([0.99, 0.99, 0.5])["warning"]  # too few cells to tell
    assert domain_shift([None, None])["score"] is None
