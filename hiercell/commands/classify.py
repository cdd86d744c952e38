"""``hiercell classify``: classify image files and folders into a CSV/JSON table."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import (OutputPath, echo_err as _echo_err, interrupt_on_sigterm,
                      os_error_message, precision_option)

DEFAULT_OUT_STEM = "hiercell_results"
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130
_MAX_LISTED_ERRORS = 10


@click.command("classify")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Results file. [default: hiercell_results.csv (hiercell_results.json with "
                   "--format json) in the current directory]")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default=None,
              help="Results format. [default: json if --out ends in .json, else csv]")
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path),
              default=None, help="Model bundle to use. [default: the bundled model]")
@click.option("--masked/--no-masked", default=None,
              help="Segment the cell before classifying. [default: as the model was trained]")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Number of most probable classes listed per image.")
@click.option("--recursive", "-r", is_flag=True, help="Also search sub-folders.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per network batch.")
@click.option("--report", "report_path", type=OutputPath(dir_okay=False, path_type=Path),
              default=None, help="Also write a self-contained HTML report here.")
@click.option("--gradcam/--no-gradcam", default=True, show_default=True,
              help="Grad-CAM overlays in the --report (one backward pass per image).")
@click.option("--summary", "summary_path", type=OutputPath(dir_okay=False, path_type=Path),
              default=None, help="Also write the differential count as JSON here.")
@click.option("--resume", is_flag=True,
              help="Keep the successful rows of an existing --out (or of the .partial file "
                   "an interrupted run left) and classify only the other images.")
@precision_option
@click.option("--shard", default=None, metavar="K/N",
              help="Classify only share K of N (1 <= K <= N) of the images: a deterministic "
                   "split by each image's path relative to the given folder, so N jobs (e.g. "
                   "a SLURM job array) cover every image once; combine with 'hiercell merge'.")
@click.option("--auto-align/--no-auto-align", default=True, show_default=True,
              help="When the images look unlike the training data (at least 20 of them), "
                   "align the model to them first, without labels (see 'hiercell align').")
@click.option("--review-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None,
              help="Flag for review about this share of the training lab's validation cells "
                   "(e.g. 0.10; higher flags more cells and leaves fewer errors unflagged; "
                   "in a model adapted to a lab, that lab's cells keep the adaptation's "
                   "threshold). [default: the model's, 0.05 for the bundled model]")
def classify(paths, out, fmt, model_path, masked, top_k, recursive, batch_size, report_path,
             gradcam, summary_path, resume, precision, shard, auto_align, review_rate):
    """Classify the cell images in PATH... (image files and/or folders).

    Writes one row per image (label, probability, main class, subclass,
    top-k, uncertain flag, review score and flag, status/error) and prints the
    differential count, with and without the cells that need review; warns
    (on stderr) when the images look unlike the training data.
    An unreadable image gets status=error with the reason; the others are
    still classified.

    Exit status: 0 all images classified; 3 some images could not be read or
    classified; 2 usage error (bad option, missing path, no images found);
    1 other failure (e.g. the model cannot be loaded); 130 interrupted (the
    finished rows are kept in OUT.partial for --resume).
    """
    from ..classify import (ModelLoadError, NoImagesError, OutputPathError, ReviewRateError,
                            classify_folder)
    from ..differential import format_summary
    from ..fileutil import display
    from ..model import MaskingError
    from ..results import ResumeError
    from ..shard import ShardError, parse_shard

    try:
        shard = None if shard is None else parse_shard(shard)
    except ShardError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None

    if fmt is None:
        fmt = "json" if (out is not None and out.suffix.lower() == ".json") else "csv"
    if out is None:
        out = Path(f"{DEFAULT_OUT_STEM}.{fmt}")

    interrupt_on_sigterm()
    try:
        result = classify_folder(
            list(paths), model=model_path, out=out, fmt=fmt, masked=masked, top_k=top_k,
            recursive=recursive, batch_size=batch_size, resume=resume,
            summary_path=summary_path, report_path=report_path, progress=True,
            report_gradcam=gradcam, precision=precision, shard=shard, auto_align=auto_align,
            review_rate=review_rate)
    except (NoImagesError, ResumeError, OutputPathError, MaskingError, ReviewRateError) as exc:
        raise click.UsageError(str(exc)) from None
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        part = _partial_file(out)
        raise click.ClickException(
            os_error_message(exc) + (f" (finished rows kept in {display(part)}; run again with "
                                     "--resume to continue)" if part.exists() else "")) from None
    except KeyboardInterrupt:
        part = _partial_file(out)
        _echo_err("\nInterrupted." + (f" Finished rows kept in {display(part)}; run again with "
                                       "--resume to continue." if part.exists() else ""))
        sys.exit(EXIT_INTERRUPTED)

    if result.rejected:
        _echo_err(f"--resume: {len(result.rejected)} earlier row(s) were incomplete or invalid "
                  "and their images were classified again.")
    if result.n_stale:
        _echo_err(f"--resume: {result.n_stale} earlier row(s) were written by another model "
                  "or segmentation version (column 'model') and their images were "
                  "classified again.")
    if result.n_dropped:
        _echo_err(f"--resume: {result.n_dropped} earlier row(s) name images that are not part "
                  f"of this run; they are not in the new {display(out)}.")
    click.echo(format_summary(result.summary))
    alignment = result.summary.get("alignment") or {}
    if alignment.get("applied"):
        _echo_err(alignment["message"])
    shift = result.summary.get("domain_shift") or {}
    if shift.get("warning"):
        _echo_err(f"warning: {shift['message']}")
    done = f"{result.n_ok} classified, {result.n_error} errors"
    if result.summary.get("precision"):
        done += f", trunk precision {result.summary['precision']}"
    if shard is not None:
        done += f", share {shard}"
    if result.n_resumed:
        done += f" ({result.n_resumed} kept from the earlier run)"
    _echo_err(f"Wrote {len(result.records)} rows to {display(out)}: {done}.")
    if summary_path is not None:
        _echo_err(f"Summary: {display(summary_path)}")
    if report_path is not None:
        _echo_err(f"Report: {display(report_path)}")
    if result.n_error:
        _echo_err(f"{result.n_error} image(s) could not be classified:")
        for rec in result.errors[:_MAX_LISTED_ERRORS]:
            _echo_err(f"  {display(rec.path)}: {display(rec.error)}")
        if result.n_error > _MAX_LISTED_ERRORS:
            _echo_err(f"  ... and {result.n_error - _MAX_LISTED_ERRORS} more "
                      f"(rows with status=error in {display(out)})")
        sys.exit(EXIT_SOME_FAILED)


def _partial_file(out):
    """Where the finished rows of an interrupted run are: next to ``out``'s target."""
    from ..atomic import output_target
    from ..results import partial_path

    try:
        return partial_path(output_target(out))
    except (OSError, ValueError):
        return partial_path(out)
