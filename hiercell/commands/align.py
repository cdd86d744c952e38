"""``hiercell align``: align a model to a new lab from its unlabelled cell images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from .options import OutputPath, echo_err, load_model, model_option, precision_option


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=OutputPath(file_okay=False),
              help="Bundle folder to write (the aligned model).")
@model_option
@click.option("--recursive", "-r", is_flag=True, help="Also search sub-folders.")
@precision_option
def align(paths, out, model_path, recursive, precision):
    """Align a model to a new lab's images: no labels needed.

    PATH... are image files and/or folders of one lab's cells (a few hundred,
    from several slides and patients, so that no one class mix dominates). The
    mean of each VGG16 block-4 channel over these cells is shifted onto the
    training lab's mean at the same mix of cell types (estimated by the model)
    before the stages (see hiercell.alignment). Writes a
    bundle for --model / hiercell.load(path); the novelty of the review score and
    the domain check still see the unshifted features. --out must be a new folder
    (or an earlier bundle), not the base model nor inside an input.
    """
    from ..alignment import LabAlignment, align_model, folder_check
    from ..bundle import BundleError, save_bundle
    from ..features import trunk_views
    from ..io import list_images

    t0 = time.time()
    if precision == "int8":
        raise click.UsageError("--precision int8 cannot write a bundle (its trunk is the "
                               "OpenVINO int8 copy); align with auto or bfloat16 and use int8 "
                               "at classify time")
    _check_out(Path(out), model_path, paths)
    listing_errors = []
    images = list_images(paths, recursive=recursive, errors=listing_errors)
    for path, reason in listing_errors:
        echo_err(f"skipped {path}: {reason}")
    if len(images) < LabAlignment.MIN_CELLS:
        hint = "" if recursive else " (use --recursive to search sub-folders)"
        raise click.UsageError(f"{len(images)} image(s) found{hint}; aligning to a lab needs "
                               f"at least {LabAlignment.MIN_CELLS} (a few hundred is better)")
    model = load_model(model_path, precision)
    maps, ok, errors = trunk_views(model, images, views=0, progress=True, label="lab images")
    for path, reason in errors.items():
        echo_err(f"skipped {path}: {reason}")
    try:
        aligned = align_model(model, maps[0])
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    check = folder_check(model, maps[0])
    if check is not None and not check["warning"]:
        echo_err(f"note: {check['message']}; `hiercell classify` would not align them. In "
                 "the aligned bundle the cells like the training lab's keep their unshifted "
                 "maps (and the in-lab stage 1, where the model has one)")
    used = [p for p, good in zip(images, ok) if good]
    fitted = aligned.hierarchy.alignment
    mix = ({} if fitted.class_mix_ is None else
           {c: round(float(v), 4) for c, v in zip(fitted.classes, fitted.class_mix_)})
    record = {"base_model": str(model_path) if model_path else "bundled default model",
              "base_model_name": model.info.get("name"),
              "data": [str(p) for p in paths], "n_images": len(used),
              "data_digest": "sha256:" + _digest(used), "estimated_class_mix": mix,
              "domain_check": None if check is None else
              {k: check[k] for k in ("score", "expected", "warning", "n")},
              "mean_abs_shift": round(float(np.abs(fitted.target_mean_
                                                   - fitted.lab_mean_).mean()), 4)}
    try:
        save_bundle(aligned, out, {"alignment": record, "name": Path(out).name},
                    extra_files={"MODEL_CARD.md": _card(record)})
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"n_images": len(used), "skipped": len(errors),
                           "mean_abs_shift": record["mean_abs_shift"],
                           "domain_check": record["domain_check"],
                           "estimated_class_mix": mix}, indent=2))
    echo_err(f"aligned bundle written to {out} ({time.time() - t0:.0f} s); use it with "
             f"hiercell classify --model {out}")


def _check_out(out: Path, model_path, paths):
    """Refuse, before any work, an --out that would overwrite the base bundle, an input,
    or a folder that is not a bundle."""
    from ..bundle import MANIFEST, default_bundle_path

    target = out.resolve()
    base = Path(model_path).resolve() if model_path else default_bundle_path().resolve()
    if target == base:
        raise click.UsageError(f"--out {out} is the base model itself; write the aligned "
                               "bundle to a new folder")
    for p in paths:
        p = Path(p).resolve()
        if target == p or p in target.parents or target in p.parents:
            raise click.UsageError(f"--out {out} overlaps the input {p}; write the aligned "
                                   "bundle elsewhere")
    if out.exists() and not (out / MANIFEST).is_file():
        raise click.UsageError(f"--out {out} exists and is not a model bundle; refusing to "
                               "overwrite it")


def _digest(paths) -> str:
    """SHA-256 over the images' contents (order-independent)."""
    import hashlib

    from ..fileutil import file_digest

    return hashlib.sha256("\n".join(sorted(file_digest(p, "sha256") for p in paths))
                          .encode()).hexdigest()


def _card(record: dict) -> str:
    return f"""# Aligned model

**{record['base_model']}** aligned by `hiercell align` to a new lab's images:
{record['n_images']} unlabelled cells ({record['data_digest']}). The mean of each
VGG16 block-4 channel over these cells is shifted onto the training lab's mean
at the same mix of cell types (estimated by the model itself:
{', '.join(f'{c} {v:.0%}' for c, v in record['estimated_class_mix'].items()) or 'not estimated'})
before the stages; nothing was retrained (see `hiercell/alignment.py`).

Measured on two other labs' sets with the bundled model
(`python bench/bench_align.py`): stage-1 accuracy rose, yet stayed well below
the training lab's. Check this model on labelled cells of your lab
(`hiercell evaluate`), and with a few dozen labelled cells per class prefer
`hiercell adapt`. The base model's card describes its training and limits.
"""
