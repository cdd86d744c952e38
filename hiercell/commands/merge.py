"""``hiercell merge``: combine the results of ``hiercell classify --shard K/N`` runs."""

from __future__ import annotations

from pathlib import Path

import click

from .options import OutputPath, echo_err


@click.command()
@click.argument("shard_results", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=OutputPath(dir_okay=False, path_type=Path),
              help="Merged results file (CSV, or JSON if it ends in .json).")
@click.option("--summary", "summary_path", type=OutputPath(dir_okay=False, path_type=Path),
              default=None, help="Also write the merged differential count as JSON here.")
@click.option("--allow-missing", is_flag=True,
              help="Merge even if some shares have no results file (they are listed).")
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              default=None,
              help="The bundle the shares were classified with: the domain check then "
                   "expects its in-lab share of novel cells per class (CSV shares carry "
                   "none; JSON shares do).")
def merge(shard_results, out, summary_path, allow_missing, model_path):
    """Merge the results files of 'hiercell classify --shard K/N' runs into one results
    file and one differential count.

    Refuses files of different N, a share given twice and an image in two files, and
    names the shares no file covers; with --model, rows written by another model.
    """
    from ..atomic import atomic_write_text
    from ..differential import format_summary
    from ..fileutil import json_text
    from ..results import ResumeError, open_sink
    from ..shard import ShardError, merge_results

    _check_outputs(shard_results, out, summary_path)
    rates = None if model_path is None else _class_rates(model_path)
    try:
        result = merge_results(list(shard_results), allow_missing=allow_missing,
                               class_rates=rates)
    except (ShardError, ResumeError) as exc:
        raise click.ClickException(str(exc)) from None
    if model_path is not None:
        _check_model(result.records, model_path)
    sink = open_sink(out, "json" if out.suffix.lower() == ".json" else "csv")
    sink.write(result.records)
    sink.commit(result.records, result.summary)
    if summary_path is not None:
        atomic_write_text(summary_path, json_text(result.summary))
    click.echo(format_summary(result.summary))
    echo_err(f"Merged {len(result.shares)} of {result.count} shares, {len(result.records)} rows "
             f"into {out}." + (f" Missing: {', '.join(f'{k}/{result.count}' for k in result.missing)}"
                               if result.missing else ""))


def _check_outputs(inputs, out, summary_path):
    """Refuse, before reading anything, outputs that are a share's file, each other,
    or not a file that can be written: classify's checks
    (:func:`hiercell.classify.writable_output`, :func:`~hiercell.classify.check_output_paths`)."""
    from ..classify import OutputPathError, check_output_paths, writable_output
    from ..results import partial_path

    try:
        out = writable_output("--out", out)
        summary_path = writable_output("--summary", summary_path)
        check_output_paths({"--out": out, "the partial file of --out": partial_path(out),
                            "--summary": summary_path}, inputs)
    except OutputPathError as exc:
        raise click.UsageError(str(exc)) from None


def _class_rates(model_path):
    """The bundle's in-lab novel share per answered class (``None`` without them)."""
    from ..bundle import BundleError, load_reviewer

    try:
        reviewer = load_reviewer(model_path)
    except (BundleError, OSError, ValueError) as exc:
        raise click.ClickException(f"--model {model_path}: {exc}") from None
    return None if reviewer is None else reviewer.novel_rates()


def _check_model(records, model_path):
    """Refuse rows that name another model than ``model_path`` (rows of older files that
    name none pass)."""
    from ..bundle import bundle_tag

    tag = bundle_tag(model_path)
    named = {r.model.rsplit("/seg", 1)[0] for r in records if r.model}
    other = sorted(named - {tag.rsplit("/seg", 1)[0]})
    if other:
        raise click.ClickException(f"rows were written by {', '.join(other)}, not by --model "
                                   f"{model_path} ({tag}); give the shares' own model")
