"""``hiercell merge``: combine the results of ``hiercell classify --shard K/N`` runs."""

from __future__ import annotations

from pathlib import Path

import click

from .options import echo_err


@click.command()
@click.argument("shard_results", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Merged results file (CSV, or JSON if it ends in .json).")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the merged differential count as JSON here.")
@click.option("--allow-missing", is_flag=True,
              help="Merge even if some shares have no results file (they are listed).")
def merge(shard_results, out, summary_path, allow_missing):
    """Merge the results files of 'hiercell classify --shard K/N' runs into one results
    file and one differential count.

    Refuses files of different N, a share given twice and an image in two files, and
    names the shares no file covers.
    """
    from ..atomic import atomic_write_text
    from ..differential import format_summary
    from ..fileutil import json_text
    from ..results import ResumeError, open_sink
    from ..shard import ShardError, merge_results

    try:
        result = merge_results(list(shard_results), allow_missing=allow_missing)
    except (ShardError, ResumeError) as exc:
        raise click.ClickException(str(exc)) from None
    sink = open_sink(out, "json" if out.suffix.lower() == ".json" else "csv")
    sink.write(result.records)
    sink.commit(result.records, result.summary)
    if summary_path is not None:
        atomic_write_text(summary_path, json_text(result.summary))
    click.echo(format_summary(result.summary))
    echo_err(f"Merged {len(result.shares)} of {result.count} shares, {len(result.records)} rows "
             f"into {out}." + (f" Missing: {', '.join(f'{k}/{result.count}' for k in result.missing)}"
                               if result.missing else ""))
