"""Cell and nucleus masks for single peripheral-blood-cell images.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)`` showing one cell near
the centre on a smear (May-Grünwald-Giemsa stain) with red cells around it.
Masks are ``bool`` arrays of shape ``(H, W)``.

Method (reimplements the idea of the source study, vectorised)
--------------------------------------------------------------
The study thresholded the ratio (R+B)/(2G), cleaned it with openings, kept the
contour nearest the image centre and filled it.  Here the same steps run on a
stain-aware feature, all at a fixed working resolution (longest side
``WORK_SIDE`` = 256 px; masks are resized back), so every size parameter is a
fraction of the image side and 256 px copies, PBC (360 px), Munich (400 px) and
Raabin (575 px) originals need no retuning:

1. Optical density ``od = log(I0 / I)`` per channel, with the background
   colour ``I0`` estimated from the brightest pixels of the image.
2. Red cells dominate the stained area, so the median blue/green density ratio
   ``k`` of the stained pixels is the red-cell colour.  ``fe = k*odG - odB`` is
   then ~0 on red cells (and on background) and positive on everything stained
   bluer than a red cell: nuclei, basophilic/granular cytoplasm, platelets.
   This is what keeps red cells, which surround everything, out of the mask
   (the raw ratio image cannot: neutrophil cytoplasm and red cells have almost
   the same (R+B)/(2G)).
3. Cell candidates: ``fe`` > ``T_LO`` (slightly blurred), or -- for the pale,
   granular cytoplasm of neutrophils -- ``fe`` > ``T_PALE`` after a wider blur
   on stained (non-background) pixels.  Opening, hole filling.
4. As in the study, the outer contour nearest the image centre is the cell
   (filled, closed).  Where the ring just outside it is densely stained
   (summed OD above ``DENSE_RING``: denser than around 99.9 % of PBC's cells),
   the contour stopped at the nucleus inside cytoplasm as pink as red cells
   (e.g. Jiangxi Tecom's rapid stain): it grows into the connected pixels
   denser than ``DENSE_FRAC`` of that ring, if the result stays round
   (``DENSE_SOLIDITY``) and not too big (``DENSE_GROW_MAX``).  If it is two
   cells touching, it is split: at narrow necks of its distance transform
   (the study's distance-transform step), or along the line joining its two
   deepest concavities when both sides hold nucleus.
5. Nucleus: the optical density in green inside the cell above an Otsu
   threshold (clipped to [``NUC_T_MIN``, ``NUC_T_MAX``]), closed then opened
   (fills chromatin gaps, drops cytoplasmic granules), small bits removed,
   holes filled.  Colour deconvolution (a haematoxylin channel) was
   considered and not used: on PBC the chromatin and the basophilic cytoplasm
   of lymphocytes/monocytes have nearly the same optical-density *direction*
   (OD ratio R:G:B ~0.65-0.77 : 1 : 0.24 for both) and differ in *density*,
   so a density threshold separates them where a stain projection cannot.
   Basophil granules hide the nucleus and are included in it; a platelet's
   "nucleus" is its dark granular centre (often empty).

Quality flags (``SegmentationResult.reason``): ``empty`` (nothing stained),
``no_central_object`` (nearest object's edge farther than ``CENTRE_TOL`` of the
side from the centre), ``area_too_small`` / ``area_too_large`` (outside
[``MIN_AREA``, ``MAX_AREA``] of the image: class-agnostic limits; platelets
cover ~1.5-6 % of a PBC image, large cells up to ~27 %), ``touches_border``
(the mask covers more than ``BORDER_FRAC`` of the image border) and
``competing_objects`` (another object at least ``COMPETE_AREA`` times as big
is about as central: within ``COMPETE_MARGIN`` of the side).  Flagged images
keep their masks for inspection, but ``masked_image`` is the input unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "VERSION",
    "SegmentationResult",
    "REASONS",
    "cell_mask",
    "nucleus_mask",
    "apply_mask",
    "segment",
]

#: Version of the masks this module draws: raised whenever a change alters any mask,
#: so that cached features of masked or framed images are recomputed (2: cells grow
#: into dense cytoplasm).
VERSION = 2

#: Longest side of the working resolution (px); all sizes below are for it.
WORK_SIDE = 256

# Stain thresholds (optical-density units).
BG_QUANTILE = 0.85  #: pixels brighter than this quantile give the background colour
K_DEFAULT, K_RANGE = 0.63, (0.45, 0.85)  #: red-cell blue/green OD ratio: default, clip
T_LO = 0.05  #: blue excess over red-cell colour, 1.5 px blur
T_PALE = 0.03  #: same, 3 px blur, for pale granular cytoplasm
T_BG = 0.2  #: summed OD above which a pixel is stained (not background)
#: Summed OD of the ring just outside a cell candidate above which it stopped at
#: the nucleus inside dense cytoplasm (stains where cytoplasm is as pink as red
#: cells but denser than them, e.g. Jiangxi Tecom's rapid stain); above the
#: 99.9th percentile of that ring over PBC (0.86), so PBC's masks never grow
DENSE_RING = 0.9
DENSE_FRAC = 0.5  #: the grown cell keeps pixels denser than this share of the ring's OD
DENSE_GROW_MAX = 4.0  #: a grown cell may be at most this many times the candidate's area
DENSE_SOLIDITY = 0.85  #: ... and must stay this convex (area / convex hull area)
NUC_T_MIN, NUC_T_MAX = 0.9, 1.4  #: clip range of the nucleus (green OD) threshold
NUC_FLOOR = 1.0  #: green OD that counts as nucleus when judging splits

# Sizes as fractions of the image side (radii) or of the image area.
OPEN_R = 2 / 256  #: opening radius removing red-cell rims and specks
CLOSE_R = 4 / 256  #: closing radius smoothing the cell outline
RING_R = 4 / 256  #: width of the ring outside a candidate that judges dense cytoplasm
DENSE_OPEN_R = 3 / 256  #: opening radius detaching red cells from grown cytoplasm
NUC_SMOOTH_R = 2 / 256  #: closing-then-opening radius smoothing the nucleus
NOISE_AREA = 0.0003  #: objects smaller than this are ignored
MIN_AREA = 0.003  #: smallest plausible cell (platelets ~0.015)
MAX_AREA = 0.4  #: largest plausible cell
NUC_MIN_PART = 0.03  #: nucleus pieces below this share of the cell are dropped
CENTRE_TOL = 0.1  #: max distance centre -> nearest object's edge, of the side
BORDER_FRAC = 0.5  #: max share of the image border covered by the cell
COMPETE_AREA = 0.5  #: a rival must be this big relative to the cell ...
COMPETE_MARGIN = 0.05  #: ... and at most this much farther from the centre

# Splitting touching cells.
CORE_LEVELS = (0.3, 0.4, 0.5, 0.6)  #: distance-transform cut levels (of its peak)
CORE_DYNAMIC = 0.1  #: a core must rise this much (of the peak) above the cut
PART_MIN = 0.15  #: each part keeps this share of the blob (and of its nucleus)
CUT_DEPTH = 0.2  #: concavity depth needed for a straight cut, of equiv. radius
CUT_MAX = 1.4  #: longest straight cut, of equivalent radius
CUT_NUC = 0.1  #: a cut may cross at most this share of nucleus pixels

#: Every non-empty ``reason`` that :func:`segment` can give.
REASONS = (
    "empty",
    "no_central_object",
    "area_too_small",
    "area_too_large",
    "touches_border",
    "competing_objects",
)


@dataclass(frozen=True)
class SegmentationResult:
    """Outcome of :func:`segment` for one image of shape ``(H, W, 3)``.

    ``cell_mask``/``nucleus_mask``: bool ``(H, W)`` (kept even when not ok).
    ``masked_image``: uint8 ``(H, W, 3)``, zero outside the cell; a copy of the
    input, unmasked, when ``ok`` is False.  ``reason``: "" when ok, else one of
    :data:`REASONS`.  ``cell_area``/``nucleus_area``: fractions of the image.
    ``centre_offset``: distance from the cell centroid to the image centre as a
    fraction of the image's shorter side (0 = centred, 0.5 = at an edge; NaN
    when the cell mask is empty).
    """

    cell_mask: np.ndarray
    nucleus_mask: np.ndarray
    masked_image: np.ndarray
    ok: bool
    reason: str
    cell_area: float
    nucleus_area: float
    centre_offset: float


# ----------------------------------------------------------------- helpers
def _check_rgb(rgb) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected an RGB uint8 numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {rgb.dtype}")
    if min(rgb.shape[:2]) < 16:
        raise ValueError(f"image too small: {rgb.shape[:2]} (need at least 16 x 16)")


def _check_mask(mask, shape, name="mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}, expected {tuple(shape)}")
    return mask.astype(bool, copy=False)


def _disk(r: float) -> np.ndarray:
    r = max(1, int(round(r)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _outer_contours(mask: np.ndarray):
    return cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]


def _filled(shape, contours) -> np.ndarray:
    """uint8 0/1 mask of the given contours, filled (so without holes)."""
    out = np.zeros(shape, np.uint8)
    if len(contours):
        cv2.drawContours(out, list(contours), -1, 1, thickness=cv2.FILLED)
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """uint8 0/1 mask with every hole filled."""
    return _filled(mask.shape, _outer_contours(mask))


def _edge_dist(cen: np.ndarray, area: np.ndarray, c) -> np.ndarray:
    """Approximate distance from point ``c`` to blobs' edges (centroid distance
    minus equivalent radius, floored at 0)."""
    dist = np.hypot(cen[:, 0] - c[0], cen[:, 1] - c[1])
    return np.maximum(dist - np.sqrt(area / np.pi), 0.0)


def _to_work(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = WORK_SIDE / max(h, w)
    if s == 1:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _to_size(mask: np.ndarray, shape) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    up = cv2.resize(mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return up > 127


_SUM = np.ones((1, 3), np.float32)


def _optical_density(rgb: np.ndarray, want_fe: bool = True):
    """Optical density of a working-size RGB image: ``(od, fe)``, float32 of
    shapes ``(h, w, 3)`` and ``(h, w)`` (``fe`` None unless ``want_fe``)."""
    blur = cv2.GaussianBlur(rgb, (5, 5), 0)
    sub = np.ascontiguousarray(blur[::2, ::2])
    gray = cv2.cvtColor(sub, cv2.COLOR_RGB2GRAY)
    cum = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    level = int(np.searchsorted(cum, BG_QUANTILE * cum[-1]))
    bright = (gray >= level).astype(np.uint8)
    i0 = np.maximum(np.array(cv2.mean(sub, mask=bright)[:3]), 1.0)  # background colour
    v = np.maximum(np.arange(256, dtype=np.float32), 1.0)
    lut = np.maximum(np.log(i0[None, :] / v[:, None]), 0.0).astype(np.float32)
    od = cv2.LUT(blur, lut.reshape(256, 1, 3))
    if not want_fe:
        return od, None
    ods = od[::2, ::2]
    tot = cv2.transform(np.ascontiguousarray(ods), _SUM)
    g, b = ods[..., 1], ods[..., 2]
    m = (tot > 0.25) & (tot < 1.2) & (g > 0.1)
    k = float(np.median(b[m] / g[m])) if np.count_nonzero(m) > 200 else K_DEFAULT
    k = min(max(k, K_RANGE[0]), K_RANGE[1])  # red-cell blue/green OD ratio
    fe = cv2.transform(od, np.array([[0.0, k, -1.0]], np.float32))
    return od, fe


def _nearest_part(cell, core, lab, ids):
    """Label each pixel of ``cell`` with its nearest ``core`` blob, numbered by
    ``ids[lab]`` (1..k)."""
    _, nearest = cv2.distanceTransformWithLabels(1 - core, cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    lut = np.zeros(int(nearest.max()) + 1, np.int32)
    yy, xx = np.nonzero(core)
    lut[nearest[yy, xx]] = ids[lab[yy, xx]]
    return lut[nearest] * cell


def _split_neck(cell, nuc):
    """Split a blob into round parts joined by narrow necks: (labels, count).

    The distance transform is cut at ``CORE_LEVELS``; the first level leaving
    two or more cores that rise ``CORE_DYNAMIC`` above it and whose
    nearest-core parts each keep ``PART_MIN`` of the blob separates it.
    """
    pad = cv2.copyMakeBorder(cell, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dt = cv2.distanceTransform(pad, cv2.DIST_L2, 3)[1:-1, 1:-1]
    top = float(dt.max())
    for frac in CORE_LEVELS:
        n, lab = cv2.connectedComponents((dt > frac * top).astype(np.uint8))
        if n < 3:
            continue
        peaks = np.zeros(n, np.float32)
        np.maximum.at(peaks, lab.ravel(), dt.ravel())
        good = np.flatnonzero(peaks[1:] >= (frac + CORE_DYNAMIC) * top) + 1
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
    """Cut a blob of two touching cells along the line joining its two deepest
    concavities: (labels, count).

    Kept only when both concavities are deep (``CUT_DEPTH``), the cut is short
    (``CUT_MAX``), runs inside the blob and not through nucleus (``CUT_NUC``),
    and each side holds ``PART_MIN`` of the blob and of its nucleus.
    """
    one = (cell.astype(np.int32), 1)
    cs = cv2.findContours(cell, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    if not cs:
        return one
    cnt = max(cs, key=cv2.contourArea)
    if len(cnt) < 8:
        return one
    try:
        defects = cv2.convexityDefects(cnt, cv2.convexHull(cnt, returnPoints=False))
    except cv2.error:  # non-monotonous hull on odd contours
        return one
    if defects is None:
        return one
    area = float(np.count_nonzero(cell))
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
    t = np.linspace(0.0, 1.0, max(int(length), 2))
    xs = np.round(p[0] + t * (q[0] - p[0])).astype(int)
    ys = np.round(p[1] + t * (q[1] - p[1])).astype(int)
    if cell[ys, xs].mean() < 0.9 or nuc[ys, xs].mean() > CUT_NUC:
        return one
    cut = cell.copy()
    cv2.line(cut, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 0, 2)
    n, lab = cv2.connectedComponents(cut, connectivity=4)
    if n < 3:
        return one
    sizes = np.bincount(lab.ravel(), minlength=n)[1:]
    nsz = np.bincount(lab[nuc > 0], minlength=n)[1:]
    big = np.argsort(-sizes)[:2]
    if sizes[big].min() < PART_MIN * area or nsz[big].min() < PART_MIN * max(nsz.sum(), 1):
        return one
    ids = np.zeros(n, np.int32)
    ids[big + 1] = (1, 2)
    return _nearest_part(cell, (ids[lab] > 0).astype(np.uint8), lab, ids), 2


def _pick(parts, npart, c):
    """The part nearest ``c`` (uint8 mask) and (edge distance, area) of the others."""
    lab = parts.ravel()
    pa = np.bincount(lab, minlength=npart + 1)[1:].astype(np.float64)
    ys, xs = np.indices(parts.shape)
    cx = np.bincount(lab, weights=xs.ravel(), minlength=npart + 1)[1:] / np.maximum(pa, 1)
    cy = np.bincount(lab, weights=ys.ravel(), minlength=npart + 1)[1:] / np.maximum(pa, 1)
    pe = _edge_dist(np.stack([cx, cy], 1), pa, c)
    sel = int(np.argmin(pe))
    return (parts == sel + 1).astype(np.uint8), [(pe[j], pa[j]) for j in range(npart) if j != sel]


def _grow_into_dense_cytoplasm(cell: np.ndarray, od: np.ndarray, side: float) -> np.ndarray:
    """``cell`` (uint8 0/1, working size) grown into the dense cytoplasm around it,
    or ``cell`` itself where the ring around it is not dense or the growth is
    implausible (see step 4 of the module notes); ``od``: optical density
    ``(h, w, 3)``."""
    def density(region):  # summed OD, blurred
        return cv2.GaussianBlur(cv2.transform(region, _SUM), (0, 0), 2.0 * side / 256,
                                borderType=cv2.BORDER_REPLICATE)

    # the ring is judged on a crop (with the blur's margin): most cells stop there
    h, w = cell.shape
    x, y, bw, bh = cv2.boundingRect(cell)
    pad = int(np.ceil((RING_R + 6 / 256) * side)) + 1
    x0, y0, x1, y1 = max(x - pad, 0), max(y - pad, 0), min(x + bw + pad, w), min(y + bh + pad, h)
    near = cell[y0:y1, x0:x1]
    ring = (cv2.dilate(near, _disk(RING_R * side)) > 0) & (near == 0)
    if np.count_nonzero(ring) < 10:
        return cell
    level = float(np.median(density(od[y0:y1, x0:x1])[ring]))
    if level < DENSE_RING:
        return cell
    tot = density(od)
    dense = ((tot > DENSE_FRAC * level) | (cell > 0)).astype(np.uint8)
    dense = cv2.morphologyEx(dense, cv2.MORPH_OPEN, _disk(DENSE_OPEN_R * side))
    _, lab = cv2.connectedComponents(dense)
    ids = np.unique(lab[cell > 0])
    grown = np.isin(lab, ids[ids > 0]).astype(np.uint8) | cell
    grown = _fill_holes(cv2.morphologyEx(grown, cv2.MORPH_CLOSE, _disk(CLOSE_R * side)))
    contours = _outer_contours(grown)
    if len(contours) != 1:  # the growth must give one cell, not pieces
        return cell
    outline = contours[0]
    hull = max(cv2.contourArea(cv2.convexHull(outline)), 1.0)
    area = np.count_nonzero(grown)
    if (area > DENSE_GROW_MAX * np.count_nonzero(cell) or area > MAX_AREA * grown.size
            or cv2.contourArea(outline) / hull < DENSE_SOLIDITY):
        return cell
    return grown


def _mostly_inside(contour, mask: np.ndarray) -> bool:
    """Whether most of ``contour``'s filled pixels lie in ``mask`` (uint8 0/1): an object
    a grown cell took in (another nucleus lobe) is no rival of it."""
    x, y, bw, bh = cv2.boundingRect(contour)
    own = _filled((bh, bw), [contour - np.array([x, y], np.int32)])
    return np.count_nonzero(own & mask[y:y + bh, x:x + bw]) > 0.5 * np.count_nonzero(own)


def _nucleus(odg: np.ndarray, cell: np.ndarray, side: float) -> np.ndarray:
    """Nucleus (uint8 0/1) inside ``cell`` (uint8 0/1) given the green optical
    density ``odg`` (same shape); ``side`` is the working image side."""
    inside = cell > 0
    n_cell = np.count_nonzero(inside)
    if n_cell == 0:
        return np.zeros_like(cell)
    vals = np.clip(odg[inside] * 100.0, 0, 255).astype(np.uint8).reshape(-1, 1)
    t = cv2.threshold(vals, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] / 100.0
    t = min(max(t, NUC_T_MIN), NUC_T_MAX)
    nuc = ((odg > t) & inside).astype(np.uint8)
    k = _disk(NUC_SMOOTH_R * side)  # close chromatin gaps, then drop granules
    nuc = cv2.morphologyEx(cv2.morphologyEx(nuc, cv2.MORPH_CLOSE, k), cv2.MORPH_OPEN, k) & cell
    pieces = [cn for cn in _outer_contours(nuc) if cv2.contourArea(cn) >= NUC_MIN_PART * n_cell]
    return _filled(nuc.shape, pieces) & cell


def _segment_work(rgb):
    """Segment a working-size image: (cell, nucleus, reason) with uint8 0/1 masks."""
    h, w = rgb.shape[:2]
    npx, side = float(h * w), float(max(h, w))
    c = ((w - 1) / 2.0, (h - 1) / 2.0)
    od, fe = _optical_density(rgb)
    none = np.zeros((h, w), np.uint8)
    fe1 = cv2.GaussianBlur(fe, (0, 0), 1.5 * side / 256, borderType=cv2.BORDER_REPLICATE)
    fe3 = cv2.GaussianBlur(fe, (0, 0), 3.0 * side / 256, borderType=cv2.BORDER_REPLICATE)
    stained = cv2.transform(od, _SUM) > T_BG
    cand = (fe1 > T_LO) | ((fe3 > T_PALE) & stained & (fe1 > T_PALE / 2))
    cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, _disk(OPEN_R * side))
    # the study's step: find contours, keep the one nearest the image centre
    contours = [cn for cn in _outer_contours(cand) if cv2.contourArea(cn) >= NOISE_AREA * npx]
    if not contours:
        return none, none, "empty"
    mom = [cv2.moments(cn) for cn in contours]
    area = np.array([m["m00"] for m in mom])
    cen = np.array([(m["m10"] / m["m00"], m["m01"] / m["m00"]) for m in mom])
    edge = _edge_dist(cen, area, c)
    inside = np.array([cv2.pointPolygonTest(cn, c, False) >= 0 for cn in contours])
    edge[inside] = 0.0
    i = int(np.lexsort((-area, edge))[0])
    if edge[i] > CENTRE_TOL * side:
        return none, none, "no_central_object"
    chosen = _filled((h, w), [contours[i]])
    grown = _grow_into_dense_cytoplasm(chosen, od, side)
    others = [(edge[j], area[j]) for j in range(len(contours))
              if j != i and not (grown is not chosen and _mostly_inside(contours[j], grown))]
    # work on a crop around the chosen object from here on
    pad = int(np.ceil(CLOSE_R * side)) + 2
    x, y, bw, bh = cv2.boundingRect(grown)
    x0, y0 = max(x - pad, 0), max(y - pad, 0)
    x1, y1 = min(x + bw + pad, w), min(y + bh + pad, h)
    cell = np.ascontiguousarray(grown[y0:y1, x0:x1])
    cell = _fill_holes(cv2.morphologyEx(cell, cv2.MORPH_CLOSE, _disk(CLOSE_R * side)))
    odg = od[y0:y1, x0:x1, 1]
    dense = (odg > NUC_FLOOR).astype(np.uint8)
    cc = (c[0] - x0, c[1] - y0)
    for splitter in (_split_neck, _split_cut):
        parts, npart = splitter(cell, dense & cell)
        if npart > 1:
            cell, rest = _pick(parts, npart, cc)
            others += rest
    nuc = _nucleus(odg, cell, side)
    m = cv2.moments(cell, binaryImage=True)
    n_cell = m["m00"]
    reason = ""
    if n_cell < MIN_AREA * npx:
        reason = "area_too_small"
    elif n_cell > MAX_AREA * npx:
        reason = "area_too_large"
    full = none.copy()
    full[y0:y1, x0:x1] = cell
    full_nuc = none.copy()
    full_nuc[y0:y1, x0:x1] = nuc
    if not reason:
        border = (np.count_nonzero(full[0]) + np.count_nonzero(full[-1])
                  + np.count_nonzero(full[1:-1, 0]) + np.count_nonzero(full[1:-1, -1]))
        ce = _edge_dist(np.array([[m["m10"] / n_cell, m["m01"] / n_cell]]),
                        np.array([n_cell]), cc)[0]
        if border > BORDER_FRAC * 2 * (h + w - 2):
            reason = "touches_border"
        elif any(e <= ce + COMPETE_MARGIN * side and a >= COMPETE_AREA * n_cell
                 for e, a in others):
            reason = "competing_objects"
    return full, full_nuc, reason


# -------------------------------------------------------------- public API
def apply_mask(rgb: np.ndarray, mask: np.ndarray, fill=0) -> np.ndarray:
    """Copy of ``rgb`` (uint8 ``(H, W, 3)``) with pixels outside ``mask``
    (bool ``(H, W)``) set to ``fill``: a scalar or an RGB triple (0-255)."""
    _check_rgb(rgb)
    mask = _check_mask(mask, rgb.shape[:2])
    fill = np.asarray(fill)
    if fill.shape not in ((), (3,)) or np.any(fill < 0) or np.any(fill > 255):
        raise ValueError(f"fill must be a scalar or an RGB triple in 0..255, got {fill.tolist()}")
    out = np.empty(rgb.shape, np.uint8)  # C order whatever ``rgb``'s strides (cv2 needs it)
    out[...] = fill.astype(np.uint8)
    cv2.copyTo(np.ascontiguousarray(rgb), np.ascontiguousarray(mask).view(np.uint8), out)
    return out


def segment(rgb: np.ndarray) -> SegmentationResult:
    """Segment the central cell and its nucleus of an RGB uint8 ``(H, W, 3)``
    image; see :class:`SegmentationResult`.  Raises ValueError on bad input."""
    _check_rgb(rgb)
    shape = rgb.shape[:2]
    cell_w, nuc_w, reason = _segment_work(_to_work(rgb))
    cell = _to_size(cell_w > 0, shape)
    nuc = _to_size(nuc_w > 0, shape) & cell
    npx = float(shape[0] * shape[1])
    m = cv2.moments(np.ascontiguousarray(cell).view(np.uint8), binaryImage=True)
    if m["m00"] > 0:
        off = np.hypot(m["m10"] / m["m00"] - (shape[1] - 1) / 2,
                       m["m01"] / m["m00"] - (shape[0] - 1) / 2) / min(shape)
    else:
        off = float("nan")
    ok = reason == ""
    return SegmentationResult(
        cell_mask=cell,
        nucleus_mask=nuc,
        masked_image=apply_mask(rgb, cell) if ok else rgb.copy(),
        ok=ok,
        reason=reason,
        cell_area=m["m00"] / npx,
        nucleus_area=np.count_nonzero(nuc) / npx,
        centre_offset=float(off),
    )


def cell_mask(rgb: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)`` mask of the cell nearest the centre of an RGB uint8
    ``(H, W, 3)`` image (all False when nothing central is found)."""
    _check_rgb(rgb)
    return _to_size(_segment_work(_to_work(rgb))[0] > 0, rgb.shape[:2])


def nucleus_mask(rgb: np.ndarray, cell: np.ndarray | None = None) -> np.ndarray:
    """Bool ``(H, W)`` nucleus mask inside ``cell`` (bool ``(H, W)``; computed
    with :func:`cell_mask` when None) of an RGB uint8 ``(H, W, 3)`` image."""
    _check_rgb(rgb)
    shape = rgb.shape[:2]
    work = _to_work(rgb)
    if cell is None:
        cell_w, nuc_w, _ = _segment_work(work)
        return _to_size(nuc_w > 0, shape) & _to_size(cell_w > 0, shape)
    cell = _check_mask(cell, shape, "cell")
    od, _ = _optical_density(work, want_fe=False)
    cell_w = _to_size(cell, work.shape[:2]).astype(np.uint8)
    nuc = _nucleus(np.ascontiguousarray(od[..., 1]), cell_w, float(max(work.shape[:2])))
    return _to_size(nuc > 0, shape) & cell
