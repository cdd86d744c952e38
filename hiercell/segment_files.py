"""The segmentation module over many files: a folder's masks on disk
(:func:`segment_folder`, ``hiercell segment``) and the mask check of a data set
(:func:`segmentation_flags`, :func:`exclude_mask_failures`, used by masked
training and the ablation)."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import (atomic_write_bytes, clean_stale_temps, fsync_file, named_error,
                     temp_file_next_to)
from .fileutil import csv_cell, from_csv_cell
from .io import image_key, list_images, try_load_image
from .prefetch import ordered_map
from .progress import tracker
from .segmentation import draw_overlay, segment

CSV_NAME = "segmentation.csv"
#: ``segmentation_version``: :data:`hiercell.segmentation.VERSION` of the row's masks
#: (``--resume`` keeps only rows of the running version; older files have no column
#: and are segmented again).
CSV_FIELDS = ("path", "ok", "reason", "cell_area", "nucleus_area", "centre_offset",
              "segmentation_version")
#: Rows appended since the last ``fsync`` of the partial file, at most.
_SYNC_EVERY = 32


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


def folder_jobs(paths, recursive, out: Path, errors: list | None = None):
    """(input file, output stem relative to OUT) for every image under ``paths``
    (files already inside ``out``, e.g. from an earlier run, are skipped; one entry per
    image, :func:`hiercell.io.image_key`). Folders that cannot be listed go to ``errors``
    as ``(path, reason)`` when it is a list (see :func:`hiercell.io.list_images`)."""
    out = Path(image_key(out))
    jobs, keys = {}, set()
    for p in (Path(os.path.abspath(q)) for q in paths):
        for f in list_images(p, recursive=recursive, errors=errors):
            key = image_key(f)
            if Path(key).is_relative_to(out) or key in keys:
                continue
            keys.add(key)
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


def _row_cells(row):
    from .segmentation import VERSION

    path, ok, reason, ca, na, off = row
    return (csv_cell(str(path)), ok, csv_cell(reason), _fmt(ca), _fmt(na), _fmt(off), VERSION)


def _mask_files(out: Path, key: Path, overlay: bool):
    dest = out / key
    names = [".cell.png", ".nucleus.png", ".masked.png"] + ([".overlay.png"] if overlay else [])
    return [dest.with_name(dest.name + n) for n in names]


def _read_rows(csv_path: Path) -> list:
    """Valid rows ``(path, ok, reason, cell, nucleus, offset)`` of a segmentation.csv (or its
    partial file) written with this segmentation version; torn or invalid rows, and
    rows of other versions, are left out."""
    from .segmentation import VERSION

    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != CSV_FIELDS:
                return rows
            for cells in reader:
                if (len(cells) != len(CSV_FIELDS) or cells[1] not in ("True", "False")
                        or cells[6] != str(VERSION)):
                    continue
                try:
                    nums = [float(c) if c else None for c in cells[3:6]]
                except ValueError:
                    continue
                rows.append((from_csv_cell(cells[0]), cells[1] == "True",
                             from_csv_cell(cells[2]), *nums))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return rows


def segment_folder(paths, out, recursive: bool = False, overlay: bool = False,
                   progress=None, jobs=None, resume: bool = False,
                   listing_errors=None) -> SegmentFolderResult:
    """Segment every image under ``paths``; write masks, masked images (and overlays)
    under ``out`` and one row per image to ``out/segmentation.csv``.

    For an input DIR/sub/x.jpg: OUT/sub/x.cell.png and x.nucleus.png (0/255),
    x.masked.png, with ``overlay`` x.overlay.png. A file that cannot be read gets
    ``ok=False`` and reason ``"unreadable: ..."``; the batch goes on. ``jobs``:
    the result of :func:`folder_jobs`, if already listed (then ``listing_errors``:
    the folders it could not list).

    Rows are appended to ``segmentation.csv.partial`` as images finish (``fsync``-ed
    every 32 rows and at the end), which becomes ``segmentation.csv`` when the job
    ends -- also when it is interrupted (``KeyboardInterrupt``, which the command
    raises on SIGTERM too): the csv then lists the finished images. After a hard
    kill the partial file holds them. ``resume`` keeps the rows of both files whose
    images are part of this run and whose mask files exist, and segments the rest.
    Paths are escaped as in :func:`hiercell.fileutil.csv_cell`.
    """
    out = Path(out)
    listing_errors = [] if listing_errors is None else listing_errors
    jobs = folder_jobs(paths, recursive, out, listing_errors) if jobs is None else jobs
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_error(exc, out) from None
    result = SegmentFolderResult(out / CSV_NAME)
    part = result.csv_path.with_name(CSV_NAME + ".partial")
    for f in (result.csv_path, part):
        clean_stale_temps(f)

    previous = {}
    if resume:
        by_key = {image_key(src): (src, key) for src, key in jobs}
        for source in (result.csv_path, part):
            if source.is_file():
                for row in _read_rows(source):
                    k = image_key(row[0])
                    if k in by_key and not str(row[2]).startswith("unreadable:") and all(
                            f.is_file() for f in _mask_files(out, by_key[k][1], overlay)):
                        previous[k] = row
    for row in previous.values():
        result.rows.append(row)
        result.reasons[row[2] or "ok"] += 1
    todo = [job for job in jobs if image_key(job[0]) not in previous]
    for path, why in listing_errors:
        result.rows.append((str(path), False, f"unreadable: {why}", None, None, None))
        result.failed.append((path, why))

    fh, tmp = temp_file_next_to(part)
    try:
        with fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(CSV_FIELDS)
            for row in result.rows:
                w.writerow(_row_cells(row))
            fsync_file(fh)
        os.replace(tmp, part)
        fh = open(part, "a", encoding="utf-8", newline="")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise named_error(exc, part) from None
    writer = csv.writer(fh, lineterminator="\n")

    def add(row):
        result.rows.append(row)
        try:
            writer.writerow(_row_cells(row))
            if len(result.rows) % _SYNC_EVERY == 0:
                fsync_file(fh)
        except OSError as exc:
            raise named_error(exc, part) from None

    try:
        with tracker(progress, len(todo), "Segmenting") as update, \
                closing(ordered_map(lambda job: (*job, *_segment_one(job[0])), todo, workers=2,
                                    ahead=8)) as done:
            for src, key, rgb, res, why in done:
                if res is None:
                    result.failed.append((src, why))
                    add((str(src), False, f"unreadable: {why}", None, None, None))
                    update(1)
                    continue
                dest = out / key
                dest.parent.mkdir(parents=True, exist_ok=True)
                base = dest.name
                _write_png(dest.with_name(base + ".cell.png"),
                           res.cell_mask.astype("uint8") * 255)
                _write_png(dest.with_name(base + ".nucleus.png"),
                           res.nucleus_mask.astype("uint8") * 255)
                _write_png(dest.with_name(base + ".masked.png"), res.masked_image)
                if overlay:
                    _write_png(dest.with_name(base + ".overlay.png"),
                               draw_overlay(rgb, res.cell_mask, res.nucleus_mask))
                add((str(src), res.ok, res.reason, res.cell_area, res.nucleus_area,
                     res.centre_offset))
                result.reasons[res.reason or "ok"] += 1
                update(1)
    except BaseException as exc:
        try:
            fsync_file(fh)
            fh.close()
            if isinstance(exc, KeyboardInterrupt):  # the finished images keep their csv
                os.replace(part, result.csv_path)
        except OSError:
            pass
        raise
    try:
        fsync_file(fh)
        fh.close()
        os.replace(part, result.csv_path)
    except OSError as exc:
        raise named_error(exc, part) from None
    return result
