"""Cell and nucleus masks for single blood-cell images (prototype)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 256

T_LO = 0.05
NOISE_AREA = 0.0003
MIN_AREA = 0.003
MAX_AREA = 0.4
CENTRE_TOL = 0.1
BORDER_FRAC = 0.5
NUC_FLOOR = 1.0
CORE_LEVELS = (0.3, 0.4, 0.5, 0.6)
CORE_DYNAMIC = 0.1
CUT_DEPTH = 0.15
CUT_MAX = 1.4
PART_MIN = 0.15
COMPETE_AREA = 0.5
COMPETE_MARGIN = 0.05


def _check_rgb(rgb):
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected shape (H, W, 3), got {rgb.shape}")
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise ValueError(f"image too small: {rgb.shape[:2]} (need at least 16 x 16)")


def _fill_holes(mask):
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    cv2.floodFill(pad, None, (0, 0), 2)
    return (pad[1:-1, 1:-1] != 2).astype(np.uint8)


def _disk(r):
    r = max(1, int(round(r)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def features(rgb):
    """Return (od, fe, k) at working resolution."""
    blur = cv2.GaussianBlur(rgb, (5, 5), 0)
    sub = blur[::2, ::2].reshape(-1, 3)
    s = sub.astype(np.int32).sum(1)
    bright = sub[s >= np.percentile(s, 85)]
    i0 = np.maximum(np.median(bright, axis=0), 1.0)
    lut = np.empty((256, 3), np.float32)
    v = np.maximum(np.arange(256, dtype=np.float32), 1.0)
    for c in range(3):
        lut[:, c] = np.maximum(np.log(i0[c] / v), 0.0)
    od = cv2.LUT(blur, lut.reshape(256, 1, 3))
    ods = od[::2, ::2].reshape(-1, 3)
    tot = ods.sum(1)
    m = (tot > 0.25) & (tot < 1.2) & (ods[:, 1] > 0.1)
    k = float(np.median(ods[m, 2] / ods[m, 1])) if m.sum() > 200 else 0.63
    k = min(max(k, 0.45), 0.85)
    fe = k * od[..., 1] - od[..., 2]
    fe = cv2.GaussianBlur(fe, (0, 0), 1.5)
    return od, fe, k


@dataclass(frozen=True)
class SegmentationResult:
    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    masked_image: np.ndarray
    ok: bool
    reason: str
    cell_area: float
    nucleus_area: float
    centre_offset: float


def _edge_dist(cen, area, c):
    dist = np.hypot(cen[:, 0] - c[0], cen[:, 1] - c[1])
    return np.maximum(dist - np.sqrt(area / np.pi), 0)


def _nearest_part(cell, core, lab, ids):
    """Label every pixel of ``cell`` with the nearest of the ``core`` blobs;
    ``ids`` maps labels of ``lab`` (on core pixels) to part numbers 1..k."""
    _, nearest = cv2.distanceTransformWithLabels(1 - core, cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    lut = np.zeros(nearest.max() + 1, np.int32)
    yy, xx = np.nonzero(core)
    lut[nearest[yy, xx]] = ids[lab[yy, xx]]
    return lut[nearest] * cell


def _split_neck(cell):
    """Split a blob into round parts joined by narrow necks: (labels, count).

    The distance transform of the blob is cut at a few levels; the first level
    that leaves two or more "cores" rising clearly above it (peak at least
    ``CORE_DYNAMIC`` of the global peak higher) and whose nearest-core parts
    each hold ``PART_MIN`` of the blob separates it.
    """
    pad = cv2.copyMakeBorder(cell, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dt = cv2.distanceTransform(pad, cv2.DIST_L2, 3)[1:-1, 1:-1]
    top = float(dt.max())
    for frac in CORE_LEVELS:
        n, lab, st, _ = cv2.connectedComponentsWithStats((dt > frac * top).astype(np.uint8))
        if n < 3:
            continue
        peaks = np.array([dt[y:y + hh, x:x + ww][lab[y:y + hh, x:x + ww] == j].max()
                          for j, (x, y, ww, hh, _) in enumerate(st[1:], start=1)])
        good = np.flatnonzero(peaks >= (frac + CORE_DYNAMIC) * top) + 1
        if len(good) < 2:
            continue
        ids = np.zeros(n, np.int32)
        ids[good] = np.arange(1, len(good) + 1)
        parts = _nearest_part(cell, (ids[lab] > 0).astype(np.uint8), lab, ids)
        sizes = np.bincount(parts.ravel(), minlength=len(good) + 1)[1:]
        if sizes.min() >= PART_MIN * sizes.sum():
            return parts, len(good)
    return cell.astype(np.int32), 1


def _split_cut(cell, nuc):
    """Cut a blob made of two touching cells along the line joining its two
    deepest concavities: (labels, count).

    The cut is kept only when both concavities are deep (>= ``CUT_DEPTH`` of
    the blob's equivalent radius), the cut runs inside the blob, and each side
    holds at least ``PART_MIN`` of the blob and of its nucleus pixels.
    """
    cs, _ = cv2.findContours(cell, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    one = (cell.astype(np.int32), 1)
    if not cs:
        return one
    cnt = max(cs, key=cv2.contourArea)
    if len(cnt) < 8:
        return one
    hull = cv2.convexHull(cnt, returnPoints=False)
    try:
        defects = cv2.convexityDefects(cnt, hull)
    except cv2.error:  # self-intersecting hull indices on odd contours
        return one
    if defects is None or len(defects) < 2:
        return one
    area = float(cell.sum())
    r_eq = np.sqrt(area / np.pi)
    d = defects.reshape(-1, 4)
    deep = d[d[:, 3] / 256.0 >= CUT_DEPTH * r_eq]
    if len(deep) < 2:
        return one
    deep = deep[np.argsort(-deep[:, 3])][:2]
    p, q = cnt[deep[0, 2], 0], cnt[deep[1, 2], 0]
    length = float(np.hypot(*(p - q)))
    if length > CUT_MAX * r_eq:
        return one
    t = np.linspace(0, 1, max(int(length), 2))
    xs = np.round(p[0] + t * (q[0] - p[0])).astype(int)
    ys = np.round(p[1] + t * (q[1] - p[1])).astype(int)
    if cell[ys, xs].mean() < 0.9:
        return one
    cut = cell.copy()
    cv2.line(cut, tuple(int(v) for v in p), tuple(int(v) for v in q), 0, 2)
    n, lab = cv2.connectedComponents(cut, connectivity=4)
    if n < 3:
        return one
    sizes = np.bincount(lab.ravel(), minlength=n)[1:]
    nsz = np.bincount(lab[nuc > 0], minlength=n)[1:]
    big = np.argsort(-sizes)[:2]
    if sizes[big].min() < PART_MIN * area or nsz[big].min() < PART_MIN * max(nsz.sum(), 1):
        return one
    # give the pixels of the cut line (and crumbs) to the nearest big part
    ids = np.zeros(n, np.int32)
    ids[big + 1] = (1, 2)
    return _nearest_part(cell, (ids[lab] > 0).astype(np.uint8), lab, ids), 2


def _pick(parts, npart, c):
    """The part nearest ``c`` as a uint8 mask, and (edge distance, area) of the rest."""
    lab = parts.ravel()
    pa = np.bincount(lab, minlength=npart + 1)[1:].astype(np.float64)
    ys, xs = np.indices(parts.shape)
    cx = np.bincount(lab, weights=xs.ravel(), minlength=npart + 1)[1:] / np.maximum(pa, 1)
    cy = np.bincount(lab, weights=ys.ravel(), minlength=npart + 1)[1:] / np.maximum(pa, 1)
    pe = _edge_dist(np.stack([cx, cy], 1), pa, c)
    sel = int(np.argmin(pe))
    rest = [(pe[j], pa[j]) for j in range(npart) if j != sel]
    return (parts == sel + 1).astype(np.uint8), rest


def _segment_work(rgb):
    h, w = rgb.shape[:2]
    npx = float(h * w)
    side = float(max(h, w))
    od, fe, k = features(rgb)
    info = {"k": k}
    empty = np.zeros((h, w), bool)
    weak = (fe > T_LO).astype(np.uint8)
    weak = cv2.morphologyEx(weak, cv2.MORPH_OPEN, _disk(2 * side / 256))
    weak = _fill_holes(weak)
    n, lab, st, cen = cv2.connectedComponentsWithStats(weak, connectivity=8)
    area = st[1:, cv2.CC_STAT_AREA].astype(np.float64)
    keep = area >= NOISE_AREA * npx
    if not keep.any():
        return empty, empty, "empty", info
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    edge = np.where(keep, _edge_dist(cen[1:], area, c), np.inf)
    i = int(np.argmin(edge))
    info["edge"] = edge[i] / side
    if edge[i] > CENTRE_TOL * side:
        return empty, empty, "no_central_object", info
    cell = (lab == (i + 1)).astype(np.uint8)
    cell = _fill_holes(cv2.morphologyEx(cell, cv2.MORPH_CLOSE, _disk(4 * side / 256)))
    odg = od[..., 1]
    nuc0 = (odg > NUC_FLOOR).astype(np.uint8) & cell
    others = [(edge[j], area[j]) for j in range(len(area)) if keep[j] and j != i]
    for splitter in (_split_neck, lambda m: _split_cut(m, nuc0 & m)):
        parts, npart = splitter(cell)
        if npart > 1:
            cell, rest = _pick(parts, npart, c)
            others += rest
            info["split"] = info.get("split", 0) + 1
    a = cell.sum() / npx
    info["area"] = a
    odg = od[..., 1]
    vals = odg[cell > 0]
    t = cv2.threshold(np.clip(vals * 100, 0, 255).astype(np.uint8).reshape(-1, 1), 0, 255,
                      cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] / 100
    t = min(max(t, 0.9), 1.4)
    nuc = (cell > 0) & (odg > t)
    cell = cell > 0
    border = np.concatenate([cell[0], cell[-1], cell[1:-1, 0], cell[1:-1, -1]]).mean()
    ce = _edge_dist(np.array([np.argwhere(cell)[:, ::-1].mean(0)]), np.array([cell.sum()]), c)[0]
    reason = ""
    if a < MIN_AREA:
        reason = "area_too_small"
    elif a > MAX_AREA:
        reason = "area_too_large"
    elif border > BORDER_FRAC:
        reason = "touches_border"
    elif any(e <= ce + COMPETE_MARGIN * side and ar >= COMPETE_AREA * cell.sum() for e, ar in others):
        reason = "competing_objects"
    return cell, nuc, reason, info
