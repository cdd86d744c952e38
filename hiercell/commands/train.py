"""``hiercell train``: train the two-stage model and write a bundle."""

from __future__ import annotations

import json
import time

import click

from .options import (OutputPath, cache_dir, echo_err, load_samples, parse_stages,
                      settings_from_options, training_options)


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=OutputPath(), help="Bundle folder to write.")
@click.option("--masked/--no-masked", default=False, show_default=True,
              help="Train on images masked by the segmentation module.")
@click.option("--stages", default="1,2", show_default=True, help="Stages to train: 1 or 1,2.")
@click.option("--gpu-recipe", is_flag=True,
              help="The study's recipe end to end on images (image augmentation; 224 px unless "
                   "--image-size says otherwise); meant for a GPU.")
@click.option("--quiet", is_flag=True, help="No per-epoch output.")
@training_options
def train(data, out, masked, stages, gpu_recipe, quiet, **opts):
    """Train the two-stage model on DATA and write a bundle to --out.

    DATA is a PBC-style folder (labels from file-name prefixes), a
    class-per-folder tree, or a CSV manifest (path,label[,split]). The
    networks train on the train split with early stopping on val; the SVMs
    are tuned by 3-fold GridSearchCV on train+val; the test split, if any, is
    only evaluated (metrics.json and confusion matrices beside the bundle).
    """
    from ..backbone import BackboneWeightsError
    from ..training import headline, train_bundle

    stage_set = parse_stages(stages, require_stage1=True)
    if gpu_recipe and click.get_current_context().get_parameter_source("image_size").name == "DEFAULT":
        opts["image_size"] = 224
    settings = settings_from_options(masked, **opts)
    samples = load_samples(data, opts["split_csv"], settings.seed, settings.limit_per_class)
    t0 = time.time()
    try:
        _, metrics = train_bundle(samples, settings, out, stage_set,
                                  "images" if gpu_recipe else "features",
                                  cache_dir(opts["cache"]), source=data,
                                  split_csv=opts["split_csv"], verbose=0 if quiet else 2,
                                  log=echo_err, progress=True)
    except (BackboneWeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if metrics:
        click.echo(json.dumps({"split": "test", **headline(metrics)}, indent=2))
    echo_err(f"bundle written to {out} ({(time.time() - t0) / 60:.1f} min)")
