"""``hiercell adapt``: fit a model to a new lab from a few labelled cells."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..adapt import (BLOCK5_EPOCHS, DENSE_EPOCHS, ENSEMBLE, FOLDS, INLAB_BLOCK5_EPOCHS,
                     NETWORK_WEIGHT)
from .options import (OutputPath, echo_err, load_model, model_option, precision_option,
                      seed_option)


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out", required=True, type=OutputPath(file_okay=False),
              help="Bundle folder to write (the adapted model).")
@model_option
@click.option("--views", default=4, show_default=True, type=click.IntRange(0, 16),
              help="Augmented views per labelled image.")
@click.option("--folds", default=FOLDS, show_default=True, type=click.IntRange(2, 20),
              help="Cross-validation folds for the before/after figures (grouped by the "
                   "manifest's group column when it has one); each fold is one more "
                   "adaptation, so more folds take longer.")
@click.option("--block5-epochs", default=BLOCK5_EPOCHS, show_default=True,
              type=click.IntRange(0),
              help="Epochs of fine-tuning block5 and the dense layers on the new lab's cells "
                   "(0: refit the dense layers and the SVM only; faster).")
@click.option("--ensemble/--no-ensemble", default=ENSEMBLE, show_default=True,
              help="When the base model has an in-lab stage 1 (the bundled one does), adapt "
                   f"that network too (block5 for at most {INLAB_BLOCK5_EPOCHS} epochs) and "
                   "answer with the mean "
                   "of the two adapted stage 1s (each adaptation takes about 1.7 times as "
                   "long; --no-ensemble adapts the main stage 1 only).")
@seed_option
@precision_option
def adapt(data, out, model_path, views, folds, block5_epochs, ensemble, seed, precision):
    """Adapt a model to a new lab's images from labelled cells in DATA.

    DATA is any layout hiercell reads: a PBC-style folder (labels from file-name
    prefixes), a class-per-folder tree, or a CSV manifest path,label[,group]
    (e.g. the corrections exported from the HTML report). Labels may be main
    classes (neutrophil without band/segmented is fine: stage 1 only) or
    subclasses (then stage 2 is adapted too). Writes a bundle for --model /
    hiercell.load(path), with the before/after figures of a cross-validation
    on DATA in its bundle.json and MODEL_CARD.md.
    """
    from ..backbone import training_precision
    from ..adapt import (adaptation_record, adapt_model, calibrate_review, check_adaptable,
                         cross_val_predict, cv_summary, data_digest, distinct_images,
                         label_check, label_check_csv, model_card)
    from ..bundle import BundleError, check_bundle_target, default_bundle_path, save_bundle
    from ..data import read_dataset
    from ..ensemble import StageEnsemble
    from ..features import trunk_views
    from ..fileutil import display

    t0 = time.time()
    try:
        check_bundle_target(out, base=model_path or default_bundle_path())
    except BundleError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    model = load_model(model_path, precision)
    try:
        check_adaptable(model)
    except ValueError as exc:
        raise click.UsageError(f"{model_path or 'the bundled model'}: {exc}") from None
    try:
        samples, repeats = distinct_images([s for s in read_dataset(data) if s.main is not None])
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if repeats:
        copy, kept = repeats[0]
        echo_err(f"{len(repeats)} labelled image(s) are copies of others and were left out "
                 f"(e.g. {display(copy.path)}, the same image as {display(kept.path)})")
    _check_enough(data, len(samples), folds, "labelled")
    classes = sorted({s.main for s in samples})
    if len(classes) < 2:
        echo_err(f"warning: {data} labels one class only ({classes[0]}): the adapted model "
                 "learns the lab's look from that class alone and may call other cells "
                 "by it; label a few dozen cells of every class you see")
    if block5_epochs and training_precision("auto") == "float32":
        echo_err("note: this machine has no GPU and no native bfloat16, so block5 trains in "
                 "float32, about 5 times slower (200 cells took 25 minutes on a 2-core CPU "
                 "without bfloat16, under 5 with it); --block5-epochs 0 skips that step "
                 "(faster, a few points less accurate)")
    maps, ok, errors = trunk_views(model, [s.path for s in samples], views, progress=True)
    for path, reason in errors.items():
        echo_err(f"skipped {path}: {reason}")
    samples = [s for s, good in zip(samples, ok) if good]
    _check_enough(data, len(samples), folds, "readable labelled")
    try:
        predictions = cross_val_predict(model, maps, samples, k=folds, seed=seed,
                                        block5_epochs=block5_epochs, progress=True,
                                        ensemble=ensemble)
        cv = cv_summary(samples, predictions)
        to_check = label_check(samples, predictions)
        cv["labels_to_check"] = len(to_check)
        adapted = adapt_model(model, maps, samples, seed=seed, block5_epochs=block5_epochs,
                              log=echo_err, ensemble=ensemble)
        cv["review"] = calibrate_review(adapted, samples, predictions)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    base = model_path or "bundled default model"
    record = adaptation_record(samples, cv, base, model.info, data_digest(samples), str(data),
                               {"views": views, "dense_epochs": DENSE_EPOCHS,
                                "network_weight": NETWORK_WEIGHT,
                                "block5_epochs": block5_epochs, "folds": folds, "seed": seed,
                                "ensemble": isinstance(adapted.hierarchy.stage1, StageEnsemble)})
    try:
        save_bundle(adapted, out, {"adaptation": record, "name": Path(out).name},
                    extra_files={"MODEL_CARD.md": model_card(record, model.info),
                                 "label_check.csv": label_check_csv(to_check)})
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"stage1_accuracy_before": round(cv["stage1_accuracy_before"], 4),
                           "stage1_accuracy_after": round(cv["stage1_accuracy_after"], 4),
                           "n": cv["n"], "folds": cv["folds"], "fold_kind": cv["fold_kind"],
                           "labels_to_check": len(to_check), "review": cv["review"]},
                          indent=2))
    if to_check:
        echo_err(f"{len(to_check)} of {len(samples)} labelled cells were answered as another "
                 f"class when held out: {Path(out) / 'label_check.csv'} lists them; check "
                 f"those labels first (a wrong label teaches the model the mistake)")
    echo_err(f"adapted bundle written to {out} ({time.time() - t0:.0f} s); use it with "
             f"hiercell classify --model {out}")


def _check_enough(data, n, folds, what):
    if n < 2 * folds:
        raise click.UsageError(f"{data}: {n} {what} image(s); adaptation needs at least "
                               f"{2 * folds} (a few dozen per class is better)")
