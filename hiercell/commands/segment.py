"""``hiercell segment``: cell and nucleus masks for every image in a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import OutputPath, echo_err, interrupt_on_sigterm, os_error_message

EXIT_SOME_UNREADABLE = 3
EXIT_INTERRUPTED = 130


@click.command("segment")
@click.argument("paths", nargs=-1, required=True, metavar="DIR...",
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True,
              type=OutputPath(file_okay=False, path_type=Path),
              help="Output folder (created if missing).")
@click.option("--recursive", "-r", is_flag=True, help="Also search sub-folders.")
@click.option("--overlay", is_flag=True,
              help="Also write each image with the cell (green) and nucleus (blue) contours.")
@click.option("--resume", is_flag=True,
              help="Keep the rows of an existing OUT/segmentation.csv (or of the .partial file "
                   "a killed run left) whose masks exist, and segment only the other images.")
def segment(paths, out, recursive, overlay, resume):
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

    Ctrl-C or SIGTERM writes segmentation.csv for the images finished so far
    (exit 130); --resume then segments the rest.

    Exit status: 0 all images read; 3 some could not be read (or processed);
    2 usage error (e.g. no images found); 1 the output cannot be written;
    130 interrupted.
    """
    from ..fileutil import display
    from ..io import image_key
    from ..segment_files import CSV_NAME, folder_jobs, segment_folder

    listing_errors = []
    try:
        jobs = folder_jobs(paths, recursive, out, listing_errors)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise click.UsageError(str(exc)) from None
    if not jobs and not listing_errors:
        inside = [p for p in paths if Path(image_key(p)).is_relative_to(image_key(out))]
        if inside:  # every image there is skipped as an earlier run's output
            raise click.UsageError(f"{', '.join(map(display, inside))} is the --out folder or "
                                   "inside it; write the masks to another folder")
        raise click.UsageError("no images found in " + ", ".join(map(display, paths))
                               + ("" if recursive else " (use --recursive for sub-folders)"))
    interrupt_on_sigterm()
    try:
        res = segment_folder(paths, out, recursive, overlay, progress=True, jobs=jobs,
                             resume=resume, listing_errors=listing_errors)
    except OSError as exc:
        raise click.ClickException(os_error_message(exc)) from None
    except KeyboardInterrupt:
        echo_err(f"\nInterrupted. {display(out / CSV_NAME)} lists the finished images; run "
                 "again with --resume to continue.")
        sys.exit(EXIT_INTERRUPTED)

    reasons = res.reasons.copy()
    n_ok = reasons.pop("ok", 0)
    flagged = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    echo_err(f"Segmented {len(res.rows)} images: {n_ok} ok, {sum(reasons.values())} flagged"
             + (f" ({flagged})" if flagged else "") + f", {len(res.failed)} unreadable.")
    echo_err(f"Wrote {display(res.csv_path)}")
    if res.failed:
        for src, why in res.failed[:10]:
            echo_err(f"  {display(src)}: {display(why)}")
        if len(res.failed) > 10:
            echo_err(f"  ... and {len(res.failed) - 10} more (see {display(res.csv_path)})")
        sys.exit(EXIT_SOME_UNREADABLE)
