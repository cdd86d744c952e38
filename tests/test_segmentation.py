"""Tests of hiercell.segmentation and the ``hiercell segment`` command on
synthetic smears: a pale background, pinkish red-cell discs, and "cells"
(lilac cytoplasm disc with a dark violet nucleus) whose masks are known."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hiercell.cli import main
from hiercell.segmentation import masks
from hiercell.segmentation import (
    REASONS,
    SegmentationResult,
    apply_mask,
    cell_mask,
    draw_overlay,
    nucleus_mask,
    segment,
)

BACKGROUND = (250, 226, 202)
RED_CELL = (212, 168, 166)
PALLOR = (228, 192, 182)
CYTOPLASM = (196, 164, 196)
NUCLEUS = (88, 42, 136)


def scene(size=256, cells=((0.5, 0.5),), cell_r=0.15, nuc_r=0.075, rbc=True, seed=0,
          colours=None):
    """(rgb, cell_masks, nucleus_masks) of a synthetic smear of side ``size``;
    positions and radii are fractions of the side (drawn at 4x and reduced, so
    the scene is the same at every size); ``colours``: another stain's
    background, red_cell, pallor, cytoplasm and nucleus RGB."""
    c = {"background": BACKGROUND, "red_cell": RED_CELL, "pallor": PALLOR,
         "cytoplasm": CYTOPLASM, "nucleus": NUCLEUS, **(colours or {})}
    rng = np.random.default_rng(seed)
    big = size * 4
    img = np.empty((big, big, 3), np.uint8)
    img[:] = c["background"]
    cells_px = [(cx * big, cy * big) for cx, cy in cells]
    r_cell, r_nuc, r_rbc = cell_r * big, nuc_r * big, 0.07 * big
    if rbc:
        for _ in range(90):  # scattered red cells, some touching/under the white cells
            x, y = rng.uniform(0, big, 2)
            if all(np.hypot(x - cx, y - cy) > r_cell + 0.5 * r_rbc for cx, cy in cells_px):
                cv2.circle(img, (int(x), int(y)), int(r_rbc), c["red_cell"], -1, cv2.LINE_AA)
                cv2.circle(img, (int(x), int(y)), int(r_rbc * 0.4), c["pallor"], -1, cv2.LINE_AA)
    cms, nms = [], []
    for cx, cy in cells_px:
        cm = np.zeros((big, big), np.uint8)
        nm = np.zeros((big, big), np.uint8)
        cv2.circle(cm, (int(cx), int(cy)), int(r_cell), 1, -1)
        # an off-centre, elongated nucleus
        cv2.ellipse(nm, (int(cx - 0.2 * r_nuc), int(cy + 0.1 * r_nuc)),
                    (int(r_nuc * 1.2), int(r_nuc * 0.85)), 30, 0, 360, 1, -1)
        img[cm > 0] = c["cytoplasm"]
        img[nm > 0] = c["nucleus"]
        cms.append(cv2.resize(cm * 255, (size, size), interpolation=cv2.INTER_AREA) > 127)
        nms.append(cv2.resize(nm * 255, (size, size), interpolation=cv2.INTER_AREA) > 127)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    noise = rng.normal(0, 3, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img, cms, nms


def iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


# ------------------------------------------------------------ accuracy
@pytest.mark.parametrize("size", [256, 360, 575])
def test_single_cell_masks_match_truth(size):
    rgb, (cm,), (nm,) = scene(size)
    res = segment(rgb)
    assert isinstance(res, SegmentationResult)
    assert res.ok and res.reason == ""
    assert iou(res.cell_mask, cm) >= 0.9
    assert iou(res.nucleus_mask, nm) >= 0.9
    assert res.cell_area == pytest.approx(cm.mean(), rel=0.1)
    assert res.nucleus_area == pytest.approx(nm.mean(), rel=0.15)
    assert res.centre_offset < 0.02


def test_scale_invariance_256_vs_575():
    small, (cm_s,), _ = scene(256, seed=3)
    large, (cm_l,), _ = scene(575, seed=3)
    rs, rl = segment(small), segment(large)
    assert rs.ok and rl.ok
    assert rs.cell_area == pytest.approx(rl.cell_area, rel=0.05)
    assert rs.nucleus_area == pytest.approx(rl.nucleus_area, rel=0.1)
    assert iou(rl.cell_mask, cm_l) >= 0.9 and iou(rs.cell_mask, cm_s) >= 0.9


def test_small_platelet_like_cell_is_ok():
    # a platelet covers ~1.5-2 % of a PBC image; it must not be "too small"
    rgb, (cm,), _ = scene(256, cell_r=0.07, nuc_r=0.04, seed=5)
    res = segment(rgb)
    assert res.ok, res.reason
    assert iou(res.cell_mask, cm) >= 0.85


def test_red_cells_are_not_the_cell():
    # red cells touch the white cell here: nothing beyond a 2 px blur band
    rgb, (cm,), _ = scene(256, seed=7)
    res = segment(rgb)
    assert res.ok
    band = cv2.dilate(cm.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert not np.logical_and(res.cell_mask, ~band).any()
    assert not np.logical_and(cm, ~res.cell_mask).sum() > 0.01 * cm.sum()


# A rapid stain (Jiangxi Tecom's): yellow field, neutrophil cytoplasm and
# nucleus in the median colours of that set's expert-masked neutrophils, red
# cells of the cytoplasm's hue (same blue/green density ratio) at a quarter of
# its density, so the blue-excess feature sees neither
RAPID = {"background": (255, 255, 166), "red_cell": (241, 224, 151), "pallor": (248, 239, 158),
         "cytoplasm": (202, 152, 112), "nucleus": (102, 28, 88)}


def test_cell_grows_into_dense_cytoplasm_as_pink_as_red_cells(monkeypatch):
    rgb, (cm,), (nm,) = scene(256, cell_r=0.3, nuc_r=0.15, colours=RAPID, seed=11)
    res = segment(rgb)
    assert res.ok, res.reason
    assert iou(res.cell_mask, cm) >= 0.9  # the whole cell, not just its nucleus
    assert iou(res.nucleus_mask, nm) >= 0.9
    # the grown cell did not take in the red cells around it
    band = cv2.dilate(cm.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert np.logical_and(res.cell_mask, ~band).sum() < 0.02 * cm.sum()
    # without the growth the blue-excess feature stops at the nucleus
    monkeypatch.setattr(masks, "DENSE_RING", np.inf)
    assert iou(segment(rgb).cell_mask, cm) < 0.5


def test_pale_cytoplasm_ring_does_not_grow_the_cell():
    # the usual stain: the cell's edge meets background and red cells, whose density
    # is far below the dense-cytoplasm level, so the mask is the drawn cell
    rgb, (cm,), _ = scene(256, seed=7)
    work = masks._to_work(rgb)
    od, _ = masks._optical_density(work)
    cell = masks._segment_work(work)[0]
    assert masks._grow_into_dense_cytoplasm(cell, od, 256.0) is cell


def test_masked_image_is_zero_outside_cell():
    rgb, _, _ = scene(256)
    res = segment(rgb)
    assert res.masked_image.dtype == np.uint8 and res.masked_image.shape == rgb.shape
    assert not res.masked_image[~res.cell_mask].any()
    assert np.array_equal(res.masked_image[res.cell_mask], rgb[res.cell_mask])


# ------------------------------------------------------------ flags
def _flat(colour, size=256):
    img = np.empty((size, size, 3), np.uint8)
    img[:] = colour
    return img


@pytest.mark.parametrize("rgb", [_flat(BACKGROUND), _flat((18, 10, 30)), _flat((0, 0, 0)),
                                 _flat((255, 255, 255))], ids=["blank", "dark", "black", "white"])
def test_empty_images_are_flagged_empty(rgb):
    res = segment(rgb)
    assert not res.ok and res.reason == "empty"
    assert not res.cell_mask.any()
    assert np.isnan(res.centre_offset)
    assert np.array_equal(res.masked_image, rgb)  # returned unmasked


def test_off_centre_cell_is_flagged():
    rgb, _, _ = scene(256, cells=((0.18, 0.2),), cell_r=0.1, nuc_r=0.05)
    res = segment(rgb)
    assert not res.ok and res.reason == "no_central_object"
    assert np.array_equal(res.masked_image, rgb)


@pytest.mark.parametrize("dx", [0.2, 0.14], ids=["apart", "touching"])
def test_two_equally_central_cells_compete(dx):
    rgb, _, _ = scene(256, cells=((0.5 - dx, 0.5), (0.5 + dx, 0.5)), cell_r=0.14, nuc_r=0.07)
    res = segment(rgb)
    assert not res.ok and res.reason == "competing_objects"


def test_second_cell_further_out_is_not_competing():
    rgb, (cm, _), _ = scene(256, cells=((0.5, 0.5), (0.85, 0.15)), cell_r=0.12, nuc_r=0.06)
    res = segment(rgb)
    assert res.ok, res.reason
    assert iou(res.cell_mask, cm) >= 0.9


def test_huge_object_is_too_large():
    rgb, _, _ = scene(256, cell_r=0.46, nuc_r=0.2, rbc=False)
    assert segment(rgb).reason == "area_too_large"


def test_tiny_object_is_too_small():
    rgb, _, _ = scene(256, cell_r=0.025, nuc_r=0.015)
    assert segment(rgb).reason == "area_too_small"


def test_object_along_the_border_is_flagged():
    rgb = _flat(BACKGROUND)
    rgb[:, :40] = CYTOPLASM  # an L along two sides, near enough to the centre
    rgb[-40:, :] = CYTOPLASM
    res = segment(rgb)
    assert res.reason == "touches_border"


def test_reason_codes_are_documented():
    assert set(REASONS) == {"empty", "no_central_object", "area_too_small", "area_too_large",
                            "touches_border", "competing_objects"}


# ------------------------------------------------------------ API contract
def test_shapes_and_dtypes_kept_for_non_square_images():
    rgb, _, _ = scene(300)
    rgb = np.ascontiguousarray(rgb[20:280, :])  # 260 x 300
    res = segment(rgb)
    for m in (res.cell_mask, res.nucleus_mask, cell_mask(rgb), nucleus_mask(rgb)):
        assert m.dtype == bool and m.shape == rgb.shape[:2]
    assert res.masked_image.shape == rgb.shape and res.masked_image.dtype == np.uint8
    assert isinstance(res.ok, bool) and isinstance(res.cell_area, float)
    assert not np.logical_and(res.nucleus_mask, ~res.cell_mask).any()


def test_functions_agree_with_segment():
    rgb, _, _ = scene(256, seed=11)
    res = segment(rgb)
    assert np.array_equal(cell_mask(rgb), res.cell_mask)
    assert np.array_equal(nucleus_mask(rgb), res.nucleus_mask)
    assert iou(nucleus_mask(rgb, cell=res.cell_mask), res.nucleus_mask) >= 0.95


def test_input_not_modified_and_result_frozen():
    rgb, _, _ = scene(256)
    before = rgb.copy()
    res = segment(rgb)
    assert np.array_equal(rgb, before)
    with pytest.raises(AttributeError):
        res.ok = False  # type: ignore[misc]


@pytest.mark.parametrize("bad", [
    np.zeros((64, 64), np.uint8),
    np.zeros((64, 64, 4), np.uint8),
    np.zeros((64, 64, 3), np.float32),
    np.zeros((8, 8, 3), np.uint8),
    [[0, 0, 0]],
])
def test_bad_input_raises_value_error(bad):
    for fn in (segment, cell_mask, nucleus_mask):
        with pytest.raises(ValueError):
            fn(bad)


def test_apply_mask_fill_scalar_and_triple():
    rgb = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    out = apply_mask(rgb, mask, fill=7)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert (out[mask] == 100).all() and (out[~mask] == 7).all()
    out = apply_mask(rgb, mask, fill=(1, 2, 3))
    assert (out[~mask] == (1, 2, 3)).all()
    with pytest.raises(ValueError):
        apply_mask(rgb, mask[:-1])
    with pytest.raises(ValueError):
        apply_mask(rgb, mask, fill=(1, 2))
    with pytest.raises(ValueError):
        apply_mask(rgb, mask, fill=300)


def test_overlay_draws_contours_and_keeps_shape():
    rgb, _, _ = scene(256)
    res = segment(rgb)
    over = draw_overlay(rgb, res.cell_mask, res.nucleus_mask)
    assert over.shape == rgb.shape and over.dtype == np.uint8
    assert (over != rgb).any(axis=2).sum() > 100


# ------------------------------------------------------------ CLI
def _write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_segment_command(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _write(src / "a.png", scene(256, seed=1)[0])
    _write(src / "b.jpg", scene(256, cells=((0.2, 0.2),), cell_r=0.1, nuc_r=0.05)[0])
    _write(src / "sub" / "c.png", scene(200, seed=2)[0])
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "out"

    r = CliRunner().invoke(main, ["segment", str(src), "--out", str(out), "--recursive",
                                  "--overlay"])
    assert r.exit_code == 3, r.output
    with open(out / "segmentation.csv", newline="") as fh:
        rows = {row["path"].replace("\\", "/").rsplit("/in/", 1)[1]: row
                for row in csv.DictReader(fh)}
    assert list(next(iter(rows.values())).keys()) == ["path", "ok", "reason", "cell_area",
                                                       "nucleus_area", "centre_offset",
                                                       "segmentation_version"]
    from hiercell.segmentation import VERSION

    assert {row["segmentation_version"] for row in rows.values()} == {str(VERSION)}
    assert set(rows) == {"a.png", "b.jpg", "sub/c.png", "broken.jpg"}
    assert rows["a.png"]["ok"] == "True" and rows["a.png"]["reason"] == ""
    assert 0.05 < float(rows["a.png"]["cell_area"]) < 0.1
    assert rows["b.jpg"]["ok"] == "False" and rows["b.jpg"]["reason"] == "no_central_object"
    assert rows["sub/c.png"]["ok"] == "True"
    assert rows["broken.jpg"]["ok"] == "False"
    assert rows["broken.jpg"]["reason"].startswith("unreadable: ")
    for stem in ("a", "b", "sub/c"):
        for kind in ("cell", "nucleus", "masked", "overlay"):
            assert (out / f"{stem}.{kind}.png").is_file(), (stem, kind)
    cell = cv2.imread(str(out / "a.cell.png"), cv2.IMREAD_UNCHANGED)
    assert cell.shape == (256, 256) and set(np.unique(cell)) <= {0, 255}
    assert not list(out.glob(".*tmp"))  # no temp files left behind

    # without the broken file: exit code 0, no overlays unless asked for
    (src / "broken.jpg").unlink()
    out2 = tmp_path / "out2"
    r = CliRunner().invoke(main, ["segment", str(src), "--out", str(out2)])
    assert r.exit_code == 0, r.output
    assert (out2 / "a.cell.png").is_file() and not (out2 / "a.overlay.png").exists()
    assert not (out2 / "sub").exists()  # not recursive


def test_segment_command_keeps_same_named_files_from_two_folders_apart(tmp_path):
    for k, folder in enumerate(("d1", "d2")):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder / "a.png", scene(128, seed=k)[0])
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["segment", str(tmp_path / "d1"), str(tmp_path / "d2"),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "a.cell.png").is_file() and (out / "a-2.cell.png").is_file()


def test_any_memory_layout_gives_the_same_masks_and_overlays():
    rgb, _, _ = scene(size=96)
    res = segment(rgb)
    for view in (np.asfortranarray(rgb), rgb.transpose(1, 0, 2).transpose(1, 0, 2).copy(order="F")):
        again = segment(view)
        assert np.array_equal(again.cell_mask, res.cell_mask)
        assert np.array_equal(apply_mask(view, res.cell_mask), apply_mask(rgb, res.cell_mask))
        assert np.array_equal(draw_overlay(view, res.cell_mask, res.nucleus_mask),
                              draw_overlay(rgb, res.cell_mask, res.nucleus_mask))
    flipped = rgb.transpose(1, 0, 2)  # a transposed view, not a copy
    assert np.array_equal(apply_mask(flipped, res.cell_mask.T),
                          apply_mask(np.ascontiguousarray(flipped), res.cell_mask.T))


def test_draw_overlay_checks_its_image_and_masks_like_the_others():
    rgb, _, _ = scene(size=96)
    res = segment(rgb)
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(rgb / 255.0, res.cell_mask)
    with pytest.raises(ValueError, match="cell has shape"):
        draw_overlay(rgb, res.cell_mask[:10])
    with pytest.raises(ValueError, match="nucleus has shape"):
        draw_overlay(rgb, res.cell_mask, res.nucleus_mask[:, :10])
