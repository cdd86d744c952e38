"""``hiercell segment``: cell and nucleus masks for every image in a folder."""

from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from pathlib import Path

import click

from ..atomic import atomic_open, atomic_write_bytes

EXIT_SOME_UNREADABLE = 3
CSV_NAME = "segmentation.csv"
CSV_FIELDS = ("path", "ok", "reason", "cell_area", "nucleus_area", "centre_offset")


def _write_png(path: Path, img) -> None:
    """Write a uint8 (H, W) or RGB (H, W, 3) array as PNG, atomically."""
    import cv2

    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def _jobs(paths, recursive, out: Path):
    """(input file, output stem relative to OUT) for every image under ``paths``
    (files already inside ``out``, e.g. from an earlier run, are skipped)."""
    from ..io import list_images

    out = out.resolve()
    jobs = {}
    for p in paths:
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


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


@click.command("segment")
@click.argument("paths", nargs=-1, required=True, metavar="DIR...",
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if missing).")
@click.option("--recursive", "-r", is_flag=True, help="Also search sub-folders.")
@click.option("--overlay", is_flag=True,
              help="Also write each image with the cell (green) and nucleus (blue) contours.")
def segment(paths, out, recursive, overlay):
    """Segment the centred cell and its nucleus in every image of DIR.

    For an input DIR/sub/x.jpg it writes OUT/sub/x.cell.png and x.nucleus.png
    (masks, 0/255), x.masked.png (zero outside the cell; the image unchanged
    when the segmentation is flagged), with --overlay x.overlay.png, and one
    row per image to OUT/segmentation.csv: path, ok, reason, cell_area,
    nucleus_area (fractions of the image) and centre_offset (cell centroid to
    image centre, fraction of the shorter side).  Flagged images have ok=False
    and a reason (empty, no_central_object, area_too_small, area_too_large,
    touches_border, competing_objects); a file that cannot be read gets
    ok=False and reason "unreadable: ..." and the batch goes on.

    Exit status: 0 all images read; 3 some could not be read (or processed);
    2 usage error (e.g. no images found).
    """
    from ..io import ImageLoadError, load_image
    from ..progress import progress_bar
    from ..segmentation import draw_overlay, segment as segment_image

    try:
        jobs = _jobs(paths, recursive, out)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise click.UsageError(str(exc)) from None
    if not jobs:
        raise click.UsageError("no images found in " + ", ".join(map(str, paths))
                               + ("" if recursive else " (use --recursive for sub-folders)"))
    out.mkdir(parents=True, exist_ok=True)

    rows, reasons, failed = [], Counter(), []
    with progress_bar(len(jobs), "Segmenting") as bar:
        for src, key in jobs:
            try:
                rgb = load_image(src)
                res = segment_image(rgb)
            except ImageLoadError as exc:
                rows.append((str(src), False, f"unreadable: {exc.reason}", None, None, None))
                failed.append((src, exc.reason))
                bar.update(1)
                continue
            except ValueError as exc:  # read, but not a usable image (e.g. too small)
                rows.append((str(src), False, f"unreadable: {exc}", None, None, None))
                failed.append((src, str(exc)))
                bar.update(1)
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
            rows.append((str(src), res.ok, res.reason, res.cell_area, res.nucleus_area,
                         res.centre_offset))
            reasons[res.reason or "ok"] += 1
            bar.update(1)

    csv_path = out / CSV_NAME
    with atomic_open(csv_path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for path, ok, reason, ca, na, off in rows:
            w.writerow((path, ok, reason, _fmt(ca), _fmt(na), _fmt(off)))

    n_ok = reasons.pop("ok", 0)
    flagged = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    click.echo(f"Segmented {len(rows)} images: {n_ok} ok, {sum(reasons.values())} flagged"
               + (f" ({flagged})" if flagged else "") + f", {len(failed)} unreadable.",
               err=True)
    click.echo(f"Wrote {csv_path}", err=True)
    if failed:
        for src, why in failed[:10]:
            click.echo(f"  {src}: {why}", err=True)
        if len(failed) > 10:
            click.echo(f"  ... and {len(failed) - 10} more (see {csv_path})", err=True)
        sys.exit(EXIT_SOME_UNREADABLE)
