"""``hiercell quantize``: make the int8 OpenVINO trunk of a bundle (``hiercell[fast]``)."""

from __future__ import annotations

import click

from .options import echo_err, load_model, load_samples, model_option, seed_option


@click.command()
@click.argument("data", type=click.Path(exists=True))
@model_option
@click.option("--split-csv", type=click.Path(exists=True, dir_okay=False),
              help="CSV with path,split columns (default: DATA/splits.csv if present).")
@click.option("--images", "n_images", default=300, show_default=True, type=click.IntRange(8),
              help="Training images to calibrate on (drawn at random from the train split).")
@seed_option
def quantize(data, model_path, split_csv, n_images, seed):
    """Quantize the bundle's VGG16 trunk to int8 (OpenVINO + NNCF), calibrated on
    training images of DATA; afterwards 'hiercell classify --precision int8' uses it.

    Stored under $HIERCELL_CACHE (default ~/.cache/hiercell), keyed by the trunk's digest.
    """
    import numpy as np

    from ..fast import quantize_trunk

    samples = [s for s in load_samples(data, split_csv, seed) if s.split == "train"]
    if not samples:
        raise click.UsageError(f"no training images (split 'train') in {data}")
    rng = np.random.default_rng(seed)
    chosen = [samples[i].path for i in sorted(rng.choice(len(samples), min(n_images, len(samples)),
                                                         replace=False))]
    model = load_model(model_path, "float32")
    try:
        folder = quantize_trunk(model, chosen)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    echo_err(f"int8 trunk calibrated on {len(chosen)} training images: {folder}")
