"""``hiercell train`` and ``hiercell evaluate``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..progress import progress_bar

_CACHE_HELP = ("Feature cache folder (default: $HIERCELL_CACHE or ~/.cache/hiercell). "
               "Features are keyed by image content, size, masking and weights, so reruns "
               "and resumed runs skip the VGG16 pass.")


def default_cache_dir() -> Path:
    """``$HIERCELL_CACHE`` or ``~/.cache/hiercell``."""
    import os

    return Path(os.environ.get("HIERCELL_CACHE") or Path.home() / ".cache" / "hiercell")


def load_samples(data, split_csv, seed, limit=None):
    """Samples of ``data`` with a split for each (the CSV's, else a stratified one)."""
    from ..data import assign_splits, read_dataset
    from ..training import limit_per_class

    try:
        samples = read_dataset(data, split_csv=split_csv)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    samples = [s for s in samples if s.main is not None]
    samples = assign_splits(samples, seed=seed)
    return limit_per_class(samples, limit, seed)


def extract(paths, settings, cache, label):
    """Trunk features with a progress bar; unreadable images are reported and dropped."""
    from ..training import trunk_features

    with progress_bar(len(paths), label) as bar:
        res = trunk_features(paths, settings, cache, progress=bar.update)
    for path, reason in res.errors.items():
        click.echo(f"skipped {path}: {reason}", err=True)
    return res


def parse_stages(text, require_stage1=False):
    """``"1,2"`` -> ``(1, 2)``; a click error for anything else."""
    try:
        stage_set = tuple(sorted({int(s) for s in text.split(",")}))
    except ValueError:
        stage_set = ()
    if not stage_set or not set(stage_set) <= {1, 2} or (require_stage1 and 1 not in stage_set):
        need = "1 or 1,2" if require_stage1 else "1, 2 or 1,2"
        raise click.BadParameter(f"{text!r}: expected {need}", param_hint="--stages")
    return stage_set


def training_options(func):
    """The options ``train`` and ``ablate`` share (data split, backbone, recipe, cache)."""
    options = [
        click.option("--split-csv", type=click.Path(exists=True, dir_okay=False),
                     help="CSV with path,split columns (default: DATA/splits.csv if present, "
                          "else a stratified 70/10/20 split with --seed)."),
        click.option("--image-size", default=160, show_default=True, type=click.IntRange(32, 512),
                     callback=_multiple_of_32,
                     help="Side of the square image VGG16 sees (a multiple of 32)."),
        click.option("--backbone-weights", default=None,
                     help="VGG16 ImageNet weights: a path to Keras' *_notop.h5, 'imagenet' "
                          "(download), or 'none' (random). Default: $HIERCELL_VGG16_WEIGHTS, "
                          "the Keras cache, then 'imagenet'."),
        click.option("--head-epochs", default=30, show_default=True, type=click.IntRange(0),
                     help="Epochs of the dense head with block5 frozen (early stopping on val)."),
        click.option("--finetune-epochs", default=4, show_default=True, type=click.IntRange(0),
                     help="Epochs with block5 fine-tuned at lr 1e-4 (early stopping on val)."),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1)),
        click.option("--others-per-class", default=150, show_default=True, type=click.IntRange(0),
                     help="Stage-2 'Others' images per non-routed main class."),
        click.option("--limit-per-class", default=None, type=click.IntRange(1),
                     help="Use at most N images per label and split (quick runs)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--cache", type=click.Path(file_okay=False), help=_CACHE_HELP),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _multiple_of_32(ctx, param, value):
    if value % 32:
        raise click.BadParameter("must be a multiple of 32")
    return value


def settings_from_options(masked=False, **opts):
    """A :class:`~hiercell.training.TrainSettings` from the shared options."""
    from ..training import TrainSettings

    return TrainSettings(input_size=opts["image_size"], masked=masked,
                         backbone_weights=opts["backbone_weights"], seed=opts["seed"],
                         others_per_class=opts["others_per_class"],
                         head_epochs=opts["head_epochs"], finetune_epochs=opts["finetune_epochs"],
                         batch_size=opts["batch_size"], limit_per_class=opts["limit_per_class"])


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=click.Path(), help="Bundle folder to write.")
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
    from ..bundle import save_bundle
    from ..data import summarize
    from ..training import evaluate_hierarchy, fit_hierarchy, headline, save_metrics

    stage_set = parse_stages(stages, require_stage1=True)
    if gpu_recipe and click.get_current_context().get_parameter_source("image_size").name == "DEFAULT":
        opts["image_size"] = 224
    settings = settings_from_options(masked, **opts)
    split_csv, seed, others_per_class = opts["split_csv"], opts["seed"], opts["others_per_class"]
    cache = Path(opts["cache"]) if opts["cache"] else default_cache_dir()
    samples = load_samples(data, split_csv, seed, settings.limit_per_class)
    t0 = time.time()
    try:
        if masked:
            samples, excluded = drop_mask_failures(samples)
        else:
            excluded = {}
        used = [s for s in samples if s.split in ("train", "val", "test")]
        click.echo(f"{len(used)} images: " + json.dumps(summarize(used)["split"]), err=True)
        if gpu_recipe:
            from ..gpu_recipe import train_gpu_recipe

            model = train_gpu_recipe(used, settings, stages=stage_set)
            X = None
        else:
            res = extract([s.path for s in used], settings, cache, "VGG16 trunk features")
            used = [s for s, ok in zip(used, res.ok) if ok]
            X = res.features
            model = fit_hierarchy(X, used, settings, stages=stage_set, verbose=0 if quiet else 2,
                                  log=lambda m: click.echo(m, err=True))
    except (BackboneWeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    train_seconds = time.time() - t0
    meta = {"training_data": {"source": str(data), "split_csv": str(split_csv) if split_csv else None,
                              "counts": summarize(used), "excluded_by_mask": excluded,
                              "seconds": round(train_seconds, 1)}}
    # the model is saved first: a failure while evaluating must not lose hours of training
    save_bundle(model, out, meta)
    test = [s for s in used if s.split == "test"]
    if test:
        if X is None:  # the image-space recipe keeps no features: compute the test ones
            res = extract([s.path for s in test], settings, cache, "test-split features")
            X_test, test = res.features, [s for s, ok in zip(test, res.ok) if ok]
        else:
            X_test = X[[i for i, s in enumerate(used) if s.split == "test"]]
        metrics = evaluate_hierarchy(model, X_test, test, others_per_class, seed)
        out_dir = Path(out).parent / (Path(out).name + "-evaluation")
        save_metrics(metrics, out_dir)
        meta["metrics"] = {"split": "test", **headline(metrics)}
        save_bundle(model, out, meta)
        click.echo(json.dumps(meta["metrics"], indent=2))
        click.echo(f"test-split metrics and confusion matrices: {out_dir}", err=True)
    click.echo(f"bundle written to {out} ({train_seconds / 60:.1f} min)", err=True)


def drop_mask_failures(samples):
    """Samples whose mask the segmentation module accepts, and the per-class count of the rest."""
    from ..training import segmentation_flags

    flags = segmentation_flags([s.path for s in samples])
    excluded: dict = {}
    kept = []
    for s, (ok, reason) in zip(samples, flags):
        if ok:
            kept.append(s)
        else:
            excluded[s.raw_label] = excluded.get(s.raw_label, 0) + 1
    if excluded:
        click.echo(f"masked: {sum(excluded.values())} images excluded (mask flagged): "
                   + json.dumps(excluded), err=True)
    return kept, excluded


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              help="Bundle folder (default: the bundled model).")
@click.option("--split-csv", type=click.Path(exists=True, dir_okay=False),
              help="CSV with path,split columns (default: DATA/splits.csv if present).")
@click.option("--subset", default="test", show_default=True,
              help="Which split to evaluate ('all' for every image).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json and confusion-matrix PNGs.")
@click.option("--others-per-class", default=150, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cache", type=click.Path(file_okay=False), help=_CACHE_HELP)
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "auto"]), default="float32",
              show_default=True, help="VGG16 trunk precision at inference.")
def evaluate(data, model_path, split_csv, subset, out, others_per_class, seed, cache, precision):
    """Evaluate a bundle on DATA: stage 1, stage 2 and end to end."""
    from ..bundle import load
    from ..features import FeatureCache, TrunkConfig, extract_trunk_features
    from ..training import evaluate_hierarchy, headline, save_metrics

    try:
        model = load(model_path, precision)
    except Exception as exc:  # noqa: BLE001 - a damaged or incompatible bundle
        where = model_path or "the bundled model"
        raise click.ClickException(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
    samples = load_samples(data, split_csv, seed)
    if subset != "all":
        samples = [s for s in samples if s.split == subset]
    if not samples:
        raise click.UsageError(f"no labelled images in subset {subset!r} of {data}")
    config = TrunkConfig(model.input_size, model.masked,
                         f"{model.info['trunk_sha256']}:{model.info['precision']}")
    fc = FeatureCache(Path(cache) if cache else default_cache_dir(), config)
    with progress_bar(len(samples), "VGG16 trunk features") as bar:
        res = extract_trunk_features([s.path for s in samples], model.trunk, config, fc,
                                     progress=bar.update)
    for path, reason in res.errors.items():
        click.echo(f"skipped {path}: {reason}", err=True)
    samples = [s for s, ok in zip(samples, res.ok) if ok]
    metrics = evaluate_hierarchy(model, res.features, samples, others_per_class, seed)
    path = save_metrics(metrics, out)
    click.echo(json.dumps({"split": subset, **headline(metrics)}, indent=2))
    click.echo(f"written: {path}", err=True)
    sys.exit(3 if res.errors else 0)
