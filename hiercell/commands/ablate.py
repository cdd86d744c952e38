"""``hiercell ablate``: masked versus unmasked on the same split, seed and images."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (cache_dir, echo_err, load_samples, parse_stages, settings_from_options,
                      training_options)


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for ablation.json, ablation.md and confusion PNGs.")
@click.option("--stages", default="1,2", show_default=True, help="Stages to compare: 1, 2 or 1,2.")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100),
              help="Bootstrap resamples for the 95 % intervals.")
@training_options
def ablate(data, out, stages, n_boot, **opts):
    """Train and evaluate each stage on masked and on unmasked images, and compare.

    Both arms use the same split, seed and images; images the segmentation
    module flags are left out of both and counted per class. Writes
    ablation.json, ablation.md (per-class P/R/F1 side by side, accuracy and
    macro-F1 with 95 % bootstrap intervals, McNemar's test) and confusion PNGs.
    """
    from ..ablation import run
    from ..ablation_report import conclusion
    from ..backbone import BackboneWeightsError

    stage_set = parse_stages(stages)
    settings = settings_from_options(False, **opts)
    samples = load_samples(data, opts["split_csv"], settings.seed, settings.limit_per_class)
    try:
        result = run(samples, out, settings, stages=stage_set, cache_dir=cache_dir(opts["cache"]),
                     n_boot=n_boot, progress=True, log=echo_err)
    except BackboneWeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, stage in result["stages"].items():
        click.echo(f"stage {key}: {conclusion(stage)}")
    echo_err(f"report: {Path(out) / 'ablation.md'}")
