"""The canonical frame, white balance and training augmentation (hiercell.framing / augment)."""

import cv2
import numpy as np
import pytest

from hiercell.augment import random_view
from hiercell.framing import (REFERENCE_BACKGROUND, background_colour, canonical_view,
                              locate_cell, white_balance)
from hiercell.preprocess import CANONICAL, augment_view, check_config, prepare_batch

from conftest import FIXTURES, rgb_images


def smear(side=256, diameter=100, background=(250, 226, 204), centre=None):
    """A flat background with one dark purple disk (a 'cell') of ``diameter`` px."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = background
    c = centre or (side // 2, side // 2)
    cv2.circle(img, c, diameter // 2, (90, 40, 140), -1)
    return img


def disk_diameter(view):
    dark = view.sum(2) < 400
    return 2 * np.sqrt(dark.sum() / np.pi)


@pytest.mark.parametrize("diameter", [60, 100, 180])
def test_canonical_view_brings_every_cell_to_the_target_diameter(diameter):
    view = canonical_view(smear(diameter=diameter), 160)
    assert view.shape == (160, 160, 3) and view.dtype == np.uint8
    assert disk_diameter(view) == pytest.approx(0.40 * 160, rel=0.08)


def test_canonical_view_centres_an_off_centre_cell():
    view = canonical_view(smear(diameter=80, centre=(150, 110)), 160)
    ys, xs = np.nonzero(view.sum(2) < 400)
    assert abs(xs.mean() - 79.5) < 3 and abs(ys.mean() - 79.5) < 3


def test_zoom_is_clipped_to_the_zoom_range():
    tiny = canonical_view(smear(diameter=12), 160, zoom_range=(0.35, 2.0))
    assert disk_diameter(tiny) == pytest.approx(12 * 2.0 * 160 / 256, rel=0.15)


def test_white_balance_maps_the_background_to_the_reference():
    yellow = smear(background=(255, 255, 180))
    bg = background_colour(yellow)
    assert np.allclose(bg, (255, 255, 180), atol=2)
    balanced = white_balance(yellow, bg)
    assert np.allclose(balanced[0, 0], REFERENCE_BACKGROUND, atol=2)
    # the canonical frame applies it too, also in what a zoom-out uncovers
    view = canonical_view(smear(side=120, diameter=100, background=(255, 255, 180)), 160)
    assert np.allclose(view[0, 0], REFERENCE_BACKGROUND, atol=3)


def test_no_central_cell_gives_a_plain_resize():
    empty = np.full((200, 200, 3), 240, np.uint8)
    assert not np.isfinite(locate_cell(empty).diameter)
    assert canonical_view(empty, 64).shape == (64, 64, 3)


def test_augmented_views_are_seeded_and_vary():
    rgb = rgb_images(sorted(FIXTURES.glob("lymphocyte/*.jpg"))[:1])[0]
    a = augment_view(rgb, 96, seed=[1, 7], config=CANONICAL)
    b = augment_view(rgb, 96, seed=[1, 7], config=CANONICAL)
    c = augment_view(rgb, 96, seed=[2, 7], config=CANONICAL)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    framing = locate_cell(rgb)
    views = [random_view(rgb, framing, 96, np.random.default_rng(s)) for s in range(8)]
    assert np.std([v.mean(axis=(0, 1)) for v in views], axis=0).max() > 2  # colours vary


def test_prepare_batch_with_framing_differs_from_plain_resize_and_checks_options():
    rgb = rgb_images(sorted(FIXTURES.glob("platelet/*.jpg"))[:1])[0]
    framed = prepare_batch([rgb], 64, config=CANONICAL)
    plain = prepare_batch([rgb], 64)
    assert framed.shape == plain.shape == (1, 64, 64, 3)
    assert not np.array_equal(framed, plain)
    with pytest.raises(ValueError, match="unknown preprocessing options"):
        check_config({"framing": "canonical", "colour": "lab"})
    with pytest.raises(ValueError, match="unknown framing"):
        check_config({"framing": "tight"})
