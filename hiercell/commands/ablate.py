"""``hiercell ablate``: masked versus unmasked on the same split, seed and images."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (OutputPath, cache_dir, echo_err, load_samples, parse_stages,
                      settings_from_options, training_options)


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=OutputPath(file_okay=False),
              help="Folder for ablation.json, ablation.md and confusion PNGs.")
@click.option("--stages", default="1,2", show_default=True, help="Stages to compare: 1, 2 or 1,2.")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100),
              help="Bootstrap resamples for the 95 % intervals.")
@click.option("--external", "externals", multiple=True, type=click.Path(exists=True),
              help="Another lab's labelled set (any layout hiercell reads, e.g. a "
                   "manifest.csv), scored at stage 1 by both arms; repeatable.")
@training_options
def ablate(data, out, stages, n_boot, externals, **opts):
    """Train and evaluate each stage on masked and on unmasked images, and compare.

    Both arms use the same split, seed and images; images the segmentation
    module flags are left out of both and counted per class. Writes
    ablation.json, ablation.md (per-class P/R/F1 side by side, accuracy and
    macro-F1 with 95 % bootstrap intervals, McNemar's test) and confusion PNGs.

    Each --external set (main-class labels; every image, whatever its split) is
    scored at stage 1 by both trained arms, each in its own preprocessing, and
    compared the same way; its images the segmentation flags are left out of
    both arms and counted.
    """
    from ..ablation import ExternalSetError, external_name, run
    from ..ablation_report import conclusion
    from ..backbone import BackboneWeightsError
    from ..data import read_dataset

    stage_set = parse_stages(stages, require_stage1=bool(externals))
    settings = settings_from_options(False, **opts)
    samples = load_samples(data, opts["split_csv"], settings.seed, settings.limit_per_class)
    external = {}
    for path in externals:
        try:
            external[external_name(path, external)] = read_dataset(path)
        except (FileNotFoundError, ValueError) as exc:
            raise click.UsageError(f"--external {path}: {exc}") from exc
    try:
        result = run(samples, out, settings, stages=stage_set, cache_dir=cache_dir(opts["cache"]),
                     n_boot=n_boot, progress=True, log=echo_err, external=external)
    except ExternalSetError as exc:
        raise click.UsageError(str(exc)) from exc
    except BackboneWeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, stage in result["stages"].items():
        click.echo(f"stage {key}: {conclusion(stage)}")
    for name, ext in result.get("external", {}).items():
        flagged = sum(ext["excluded_by_mask_per_class"].values())
        click.echo(f"external {name} (stage 1, {ext['images_scored']} images, "
                   f"{flagged} flagged by the mask check): {conclusion(ext['stage1'])}")
    echo_err(f"report: {Path(out) / 'ablation.md'}")
