"""Options and helpers shared by the sub-commands (one place for each)."""

from __future__ import annotations

from pathlib import Path

import click

CACHE_HELP = ("Feature cache folder (default: $HIERCELL_CACHE or ~/.cache/hiercell). "
              "Features are keyed by image content, size, masking and weights, so reruns "
              "and resumed runs skip the VGG16 pass.")



class OutputPath(click.Path):
    """``click.Path`` for something written: an empty value is a usage error (it would
    mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, (str, bytes)) and not value.strip():
            self.fail("an empty path names no file or folder", param, ctx)
        return super().convert(value, param, ctx)


cache_option = click.option("--cache", type=OutputPath(file_okay=False), help=CACHE_HELP)
split_csv_option = click.option(
    "--split-csv", type=click.Path(exists=True, dir_okay=False),
    help="CSV with path,split columns (default: DATA/splits.csv if present, else a "
         "stratified 70/10/20 split with --seed).")
model_option = click.option("--model", "model_path",
                            type=click.Path(exists=True, file_okay=False),
                            help="Bundle folder (default: the bundled model).")
seed_option = click.option("--seed", default=0, show_default=True, type=int)
others_option = click.option("--others-per-class", default=150, show_default=True,
                             type=click.IntRange(0),
                             help="Stage-2 'Others' images per non-routed main class.")
precision_option = click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
    default="auto",
    show_default=True, help="VGG16 trunk precision at inference. auto: bfloat16 on CPUs with "
                            "native bf16 (AVX512-BF16/AMX; about twice as fast as float32, same "
                            "test accuracy), mixed float16 on a GPU, float32 elsewhere. int8: "
                            "the OpenVINO trunk made by 'hiercell quantize' (hiercell[fast]).")


def cache_dir(value) -> Path:
    """The ``--cache`` value, or the library's default cache folder."""
    from ..features import default_cache_dir

    return Path(value) if value else default_cache_dir()


def echo_err(msg=""):
    click.echo(msg, err=True)


def interrupt_on_sigterm():
    """Treat SIGTERM/SIGHUP (timeout, batch schedulers) like Ctrl-C: keep the finished rows."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            try:
                signal.signal(getattr(signal, name), handler)
            except ValueError:  # not in the main thread (e.g. embedded use)
                pass


def os_error_message(exc: OSError) -> str:
    """One line naming the file and the reason of an ``OSError``."""
    from ..fileutil import display

    reason = exc.strerror or str(exc)
    return f"{display(exc.filename)}: {reason}" if exc.filename else f"I/O error: {reason}"


def load_samples(data, split_csv, seed, limit=None):
    """:func:`hiercell.data.load_samples`, with a usage error for a bad data set."""
    from ..data import load_samples as _load_samples

    try:
        return _load_samples(data, split_csv, seed, limit)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc


def load_model(model_path, precision="auto"):
    """:func:`hiercell.bundle.load`, with a one-line error naming the bundle."""
    from ..bundle import load

    try:
        return load(model_path, precision)
    except Exception as exc:  # noqa: BLE001 - a damaged or incompatible bundle
        where = model_path or "the bundled model"
        raise click.ClickException(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc


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


def _multiple_of_32(ctx, param, value):
    if value % 32:
        raise click.BadParameter("must be a multiple of 32")
    return value


def training_options(func):
    """The options ``train`` and ``ablate`` share (data split, backbone, recipe, cache)."""
    options = [
        split_csv_option,
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
        click.option("--framing/--no-framing", default=True, show_default=True,
                     help="Put every cell in the canonical frame (scale, centre, white balance) "
                          "before VGG16, in training and in the bundle's predictions."),
        click.option("--augment-views", default=4, show_default=True, type=click.IntRange(0),
                     help="Augmented image-space views per training image (stain, scale, "
                          "crop, blur, noise, JPEG, rotation), cached like the images."),
        click.option("--svm-max-per-class", default=1500, show_default=True,
                     type=click.IntRange(10), help="Cap on the SVM's training rows per class."),
        others_option,
        click.option("--limit-per-class", default=None, type=click.IntRange(1),
                     help="Use at most N images per label and split (quick runs)."),
        seed_option,
        cache_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from_options(masked=False, **opts):
    """A :class:`~hiercell.training.TrainSettings` from the shared options."""
    from ..training import TrainSettings

    return TrainSettings(input_size=opts["image_size"], masked=masked,
                         backbone_weights=opts["backbone_weights"], seed=opts["seed"],
                         others_per_class=opts["others_per_class"],
                         head_epochs=opts["head_epochs"], finetune_epochs=opts["finetune_epochs"],
                         batch_size=opts["batch_size"], limit_per_class=opts["limit_per_class"],
                         framing=opts["framing"], augment_views=opts["augment_views"],
                         svm_max_per_class=opts["svm_max_per_class"])
