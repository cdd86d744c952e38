"""The segmentation module over many files: a folder's masks on disk
(:func:`segment_folder`, ``hiercell segment``) and the mask check of a data set
(:func:`segmentation_flags`, :func:`exclude_mask_failures`, used by masked
training and the ablation)."""

from __future__ import annotations

import csv
import math
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_open, atomic_write_bytes
from .io import list_images, try_load_image
from .prefetch import ordered_map
from .progress import tracker
from .segmentation import draw_overlay, segment

CSV_NAME = "segmentation.csv"
CSV_FIELDS = ("path", "ok", "reason", "cell_area", "nucleus_area", "centre_offset")


# --------------------------------------------------------------------------- data-set checks


def _flag(path):
    rgb, reason = try_load_image(path)
    if rgb is None:
        return False, f"unreadable: {reason}"
    try:
        result = segment(rgb)
    except ValueError as exc:  # e.g. smaller than the segmentation's minimum size
        return False, f"cannot segment: {exc}"
    return bool(result.ok), result.reason


def segmentation_flags(paths, progress=None) -> list:
    """``(ok, reason)`` of the segmentation module for each image (unreadable -> not ok)."""
    out = []
    with tracker(progress, len(paths), "Checking masks") as update, \
            closing(ordered_map(_flag, paths, workers=2)) as flags:
        for flag in flags:
            out.append(flag)
            update(1)
    return out


def exclude_mask_failures(samples, progress=None):
    """``(kept, excluded, reasons)``: the samples whose mask the segmentation module
    accepts, the per-raw-label count of the others and their count per reason."""
    flags = segmentation_flags([s.path for s in samples], progress)
    kept = [s for s, (ok, _) in zip(samples, flags) if ok]
    excluded = Counter(s.raw_label for s, (ok, _) in zip(samples, flags) if not ok)
    reasons = Counter(reason for ok, reason in flags if not ok)
    return kept, dict(sorted(excluded.items())), dict(sorted(reasons.items()))


# --------------------------------------------------------------------------- folder job


@dataclass
class SegmentFolderResult:
    """What :func:`segment_folder` did: one row per image, counts, unreadable files."""

    csv_path: Path
    rows: list = field(default_factory=list)  # (path, ok, reason, cell, nucleus, offset)
    reasons: Counter = field(default_factory=Counter)  # "ok" or flag reason -> count
    failed: list = field(default_factory=list)  # (path, why) of files that could not be read


def _write_png(path: Path, img) -> None:
    """Write a uint8 (H, W) or RGB (H, W, 3) array as PNG, atomically."""
    import cv2

    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def folder_jobs(paths, recursive, out: Path):
    """(input file, output stem relative to OUT) for every image under ``paths``
    (files already inside ``out``, e.g. from an earlier run, are skipped)."""
    out = Path(out).resolve()
    jobs = {}
    for p in map(Path, paths):
        for f in list_images(p, recursive=recursive):
            if f.resolve().is_relative_to(out):
                continue
            jobs.setdefault(f, f.relative_to(p) if p.is_dir() else Path(f.name))
    # the same relative name from two inputs (DIR1/a.jpg, DIR2/a.jpg): number the later ones
    seen = Counter()
    numbered = []
    for f, rel in jobs.items():
        seen[rel] += 1
        numbered.append((f, rel if seen[rel] == 1 else rel.with_stem(f"{rel.stem}-{seen[rel]}")))
    # a.jpg and a.png in one folder would share the stem "a": keep their full names
    stems = Counter(rel.with_suffix("") for _, rel in numbered)
    return [(f, rel.with_suffix("") if stems[rel.with_suffix("")] == 1 else rel)
            for f, rel in numbered]


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


def _segment_one(src):
    rgb, reason = try_load_image(src)
    if rgb is None:
        return rgb, None, reason
    try:
        return rgb, segment(rgb), None
    except ValueError as exc:  # read, but not a usable image (e.g. too small)
        return rgb, None, str(exc)


def segment_folder(paths, out, recursive: bool = False, overlay: bool = False,
                   progress=None, jobs=None) -> SegmentFolderResult:
    """Segment every image under ``paths``; write masks, masked images (and overlays)
    under ``out`` and one row per image to ``out/segmentation.csv``.

    For an input DIR/sub/x.jpg: OUT/sub/x.cell.png and x.nucleus.png (0/255),
    x.masked.png, with ``overlay`` x.overlay.png. A file that cannot be read gets
    ``ok=False`` and reason ``"unreadable: ..."``; the batch goes on. ``jobs``:
    the result of :func:`folder_jobs`, if already listed.
    """
    out = Path(out)
    jobs = folder_jobs(paths, recursive, out) if jobs is None else jobs
    out.mkdir(parents=True, exist_ok=True)
    result = SegmentFolderResult(out / CSV_NAME)
    with tracker(progress, len(jobs), "Segmenting") as update, \
            closing(ordered_map(lambda job: (*job, *_segment_one(job[0])), jobs, workers=2,
                                ahead=8)) as done:
        for src, key, rgb, res, why in done:
            if res is None:
                result.rows.append((str(src), False, f"unreadable: {why}", None, None, None))
                result.failed.append((src, why))
                update(1)
                continue
            dest = out / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            base = dest.name
            _write_png(dest.with_name(base + ".cell.png"), res.cell_mask.astype("uint8") * 255)
            _write_png(dest.with_name(base + ".nucleus.png"),
                       res.nucleus_mask.astype("uint8") * 255)
            _write_png(dest.with_name(base + ".masked.png"), res.masked_image)
            if overlay:
                _write_png(dest.with_name(base + ".overlay.png"),
                           draw_overlay(rgb, res.cell_mask, res.nucleus_mask))
            result.rows.append((str(src), res.ok, res.reason, res.cell_area, res.nucleus_area,
                                res.centre_offset))
            result.reasons[res.reason or "ok"] += 1
            update(1)
    with atomic_open(result.csv_path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for path, ok, reason, ca, na, off in result.rows:
            w.writerow((path, ok, reason, _fmt(ca), _fmt(na), _fmt(off)))
    return result
