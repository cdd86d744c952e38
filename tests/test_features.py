"""The trunk-feature cache: hits, torn files, and what its key depends on."""

import hashlib
import json

import numpy as np
import pytest

import hiercell.features as features
from hiercell.backbone import build_trunk, build_vgg16
from hiercell.features import FeatureCache, TrunkConfig, extract_trunk_features

from conftest import FIXTURES, rgb_images

PATHS = sorted(FIXTURES.glob("*/*.jpg"))[:6]


@pytest.fixture(scope="module")
def trunk():
    return build_trunk(build_vgg16(32, None))


@pytest.fixture
def counted(monkeypatch):
    """Count the images that go through the trunk."""
    seen = []
    real = features.run_trunk

    def run(trunk, batch, batch_size=32):
        seen.append(len(batch))
        return real(trunk, batch, batch_size)

    monkeypatch.setattr(features, "run_trunk", run)
    return seen


def test_cache_hit_skips_the_trunk(trunk, tmp_path, counted):
    config = TrunkConfig(32, False, "random")
    cache = FeatureCache(tmp_path, config)
    first = extract_trunk_features(PATHS, trunk, config, cache)
    assert sum(counted) == len(PATHS) and first.ok.all()
    again = extract_trunk_features(PATHS, trunk, config, cache)
    assert sum(counted) == len(PATHS)  # nothing recomputed
    np.testing.assert_array_equal(again.features, first.features)


def test_torn_cache_file_is_recomputed(trunk, tmp_path, counted):
    config = TrunkConfig(32, False, "random")
    cache = FeatureCache(tmp_path, config)
    first = extract_trunk_features(PATHS[:2], trunk, config, cache)
    digest = features.file_digest(PATHS[0], "sha1")
    torn = cache._path(digest)
    torn.write_bytes(torn.read_bytes()[:40])  # a write cut short by a killed run
    assert cache.get(digest) is None
    again = extract_trunk_features(PATHS[:2], trunk, config, cache)
    assert counted == [2, 1]
    np.testing.assert_allclose(again.features, first.features)
    assert cache.get(digest) is not None  # repaired


def test_cache_key_changes_with_size_masking_weights_and_preprocessing(tmp_path):
    base = TrunkConfig(160, False, "sha256:abc")
    others = [TrunkConfig(224, False, "sha256:abc"), TrunkConfig(160, True, "sha256:abc"),
              TrunkConfig(160, False, "sha256:def"),
              TrunkConfig(160, False, "sha256:abc", preprocess={"x": 1})]
    keys = {base.key, *(c.key for c in others)}
    assert len(keys) == 5
    dirs = {FeatureCache(tmp_path, c).dir for c in [base, *others]}
    assert len(dirs) == 5
    # no preprocessing keeps the key caches were written with before the option existed
    old = {"input_size": 160, "masked": False, "weights_id": "sha256:abc", "layer": "block4_pool"}
    expected = hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert base.key == TrunkConfig(160, False, "sha256:abc", preprocess={}).key == expected


def test_cache_key_of_masked_or_framed_images_names_the_segmentation_version(monkeypatch):
    """A change of the masks must not serve features cached with the previous masks;
    plain resized images do not depend on them and keep their key."""
    import hiercell.segmentation as segmentation

    framed = {"framing": "canonical"}
    configs = [TrunkConfig(160, True, "w"), TrunkConfig(160, False, "w", preprocess=framed)]
    plain = TrunkConfig(160, False, "w")
    now = [c.key for c in configs]
    plain_key = plain.key
    monkeypatch.setattr(segmentation, "VERSION", segmentation.VERSION + 1)
    assert all(c.key != k for c, k in zip(configs, now))
    assert plain.key == plain_key


def test_masked_features_differ_and_unreadable_files_are_reported(trunk, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    plain = extract_trunk_features([*PATHS[:2], bad], trunk, TrunkConfig(32, False, "random"))
    masked = extract_trunk_features(PATHS[:2], trunk, TrunkConfig(32, True, "random"))
    assert list(plain.ok) == [True, True, False] and "not an image" in plain.errors[str(bad)]
    assert np.abs(plain.features.astype(np.float32) - masked.features).mean() > 1e-3


def test_progress_convention(trunk):
    seen = []
    extract_trunk_features(PATHS[:3], trunk, TrunkConfig(32, False, "random"), batch_size=2,
                           progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3) and all(t == 3 for _, t in seen)


def test_model_features_reads_each_view_through_its_own_cache(tiny_model, tmp_path, counted):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [PATHS[0], bad, PATHS[1]]
    first = features.model_features(tiny_model, paths, cache_dir=tmp_path / "cache")
    assert first.ok.tolist() == [True, False, True] and list(first.errors) == [str(bad)]
    assert first.kept(["a", "b", "c"]) == ["a", "c"]
    assert counted == [2]
    again = features.model_features(tiny_model, paths, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.features, first.features)
    assert counted == [2]  # from the cache
    view = features.model_features(tiny_model, paths, view=1, cache_dir=tmp_path / "cache")
    assert counted == [2, 2]  # a view has a cache of its own
    assert not np.array_equal(view.features, first.features)
    plain = tiny_model.features(rgb_images([PATHS[0], PATHS[1]]))
    np.testing.assert_allclose(first.features.astype(np.float32), plain, rtol=1e-2, atol=1e-2)


def test_trunk_views_stacks_the_image_and_its_views(tiny_model):
    maps, ok, errors = features.trunk_views(tiny_model, PATHS[:3], views=2)
    assert maps.shape[:2] == (3, 3) and ok.all() and errors == {}
    np.testing.assert_array_equal(
        maps[1], features.model_features(tiny_model, PATHS[:3], view=1).features)
