"""``hiercell evaluate``: stage-1, stage-2 and end-to-end metrics of a bundle."""

from __future__ import annotations

import json
import sys

import click

from .options import (OutputPath, cache_dir, cache_option, echo_err, load_model,
                      model_option, others_option, precision_option, seed_option)


@click.command()
@click.argument("data", type=click.Path(exists=True))
@model_option
@click.option("--split-csv", type=click.Path(exists=True, dir_okay=False),
              help="CSV with path,split columns (default: DATA/splits.csv if present).")
@click.option("--subset", default=None, type=click.Choice(["train", "val", "test", "all"]),
              help="Which split to evaluate: train, val, test or 'all'. Default: 'test' "
                   "when DATA has splits (a split column or splits.csv), else 'all' (an "
                   "external labelled set).")
@click.option("--out", "out", required=True, type=OutputPath(file_okay=False),
              help="Folder for metrics.json and confusion-matrix PNGs.")
@others_option
@seed_option
@cache_option
@precision_option
@click.option("--auto-align/--no-auto-align", default=True, show_default=True,
              help="As hiercell classify: when the images look unlike the training data, "
                   "align the model to them first (no labels used).")
def evaluate(data, model_path, split_csv, subset, out, others_per_class, seed, cache, precision,
             auto_align):
    """Evaluate a bundle on DATA: stage 1, stage 2 and end to end.

    DATA is any layout hiercell reads (PBC-style folder, class-per-folder tree,
    CSV manifest path,label[,split]), e.g. another lab's labelled set. Stage 1
    is scored on every cell with a main class (a neutrophil without band or
    segmented counts there); stage 2 and end to end only when DATA has
    subclass labels.
    """
    from ..data import assign_splits, read_dataset
    from ..features import model_features
    from ..training import evaluate_hierarchy, headline, save_metrics

    model = load_model(model_path, precision)
    try:  # read once (its warnings too); splits as the data gives them
        samples = [s for s in read_dataset(data, split_csv=split_csv) if s.main is not None]
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if subset is None:
        subset = "test" if any(s.split is not None for s in samples) else "all"
        echo_err(f"evaluating subset {subset!r}")
    if subset != "all":  # the data's splits, else a seeded stratified one
        samples = [s for s in assign_splits(samples, seed=seed) if s.split == subset]
    if not samples:
        raise click.UsageError(f"no labelled images in subset {subset!r} of {data}")
    res = model_features(model, [s.path for s in samples], cache_dir=cache_dir(cache),
                         progress=True)
    for path, reason in res.errors.items():
        echo_err(f"skipped {path}: {reason}")
    samples = res.kept(samples)
    if not samples:
        raise click.ClickException(f"none of the {len(res.ok)} image(s) of {data} could be "
                                   "read (above); nothing to evaluate")
    alignment = None
    if auto_align:  # the same fixed draw as classify's, from the images read
        from ..alignment import auto_align_set

        model, alignment = auto_align_set(model, res.features, [s.path for s in samples])
        if alignment["applied"]:
            echo_err(alignment["message"])
    metrics = evaluate_hierarchy(model, res.features, samples, others_per_class, seed)
    path = save_metrics(metrics, out, extra={"alignment": alignment})
    click.echo(json.dumps({"split": subset, **headline(metrics),
                           "aligned": bool(alignment and alignment["applied"])}, indent=2))
    echo_err(f"written: {path}")
    sys.exit(3 if res.errors else 0)
