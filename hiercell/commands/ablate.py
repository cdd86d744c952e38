"""``hiercell ablate``: masked versus unmasked on the same split, seed and images."""

from __future__ import annotations

from pathlib import Path

import click

from ..progress import progress_bar
from .train import _CACHE_HELP, default_cache_dir, load_samples


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for ablation.json, ablation.md and confusion PNGs.")
@click.option("--split-csv", type=click.Path(exists=True, dir_okay=False),
              help="CSV with path,split columns (default: DATA/splits.csv if present, "
                   "else a stratified 70/10/20 split with --seed).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", default=160, show_default=True, type=click.IntRange(64, 512))
@click.option("--stages", default="1,2", show_default=True, help="Stages to compare: 1, 2 or 1,2.")
@click.option("--limit-per-class", default=None, type=click.IntRange(1),
              help="At most N images per label and split (a quick run).")
@click.option("--backbone-weights", default=None,
              help="VGG16 ImageNet weights (path, 'imagenet' or 'none'); see `hiercell train`.")
@click.option("--head-epochs", default=30, show_default=True, type=click.IntRange(0))
@click.option("--finetune-epochs", default=4, show_default=True, type=click.IntRange(0))
@click.option("--others-per-class", default=150, show_default=True, type=click.IntRange(0))
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100))
@click.option("--cache", type=click.Path(file_okay=False), help=_CACHE_HELP)
def ablate(data, out, split_csv, seed, image_size, stages, limit_per_class, backbone_weights,
           head_epochs, finetune_epochs, others_per_class, n_boot, cache):
    """Train and evaluate each stage on masked and on unmasked images, and compare.

    Both arms use the same split, seed and images; images the segmentation
    module flags are left out of both and counted per class. Writes
    ablation.json, ablation.md (per-class P/R/F1 side by side, accuracy and
    macro-F1 with 95 % bootstrap intervals, McNemar's test) and confusion PNGs.
    """
    from ..ablation import run
    from ..backbone import BackboneWeightsError
    from ..training import TrainSettings

    try:
        stage_set = tuple(sorted({int(s) for s in stages.split(",")}))
    except ValueError:
        raise click.BadParameter(f"{stages!r}: expected 1, 2 or 1,2", param_hint="--stages")
    if not stage_set or not set(stage_set) <= {1, 2}:
        raise click.BadParameter(f"{stages!r}: expected 1, 2 or 1,2", param_hint="--stages")
    if image_size % 32:
        raise click.BadParameter("must be a multiple of 32", param_hint="--image-size")
    samples = load_samples(data, split_csv, seed, limit_per_class)
    settings = TrainSettings(input_size=image_size, backbone_weights=backbone_weights, seed=seed,
                             others_per_class=others_per_class, head_epochs=head_epochs,
                             finetune_epochs=finetune_epochs, limit_per_class=limit_per_class)
    try:
        result = run(samples, out, settings, stages=stage_set,
                     cache_dir=Path(cache) if cache else default_cache_dir(), n_boot=n_boot,
                     progress=progress_bar, log=lambda m: click.echo(m, err=True))
    except BackboneWeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    from ..ablation_report import conclusion

    for key, stage in result["stages"].items():
        click.echo(f"stage {key}: {conclusion(stage)}")
    click.echo(f"report: {Path(out) / 'ablation.md'}", err=True)
