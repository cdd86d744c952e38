"""Batch classification of image files and folders (``hiercell classify``): the runner.

:func:`classify_folder` lists images, decodes them in background threads
(:func:`hiercell.prefetch.ordered_map`) while the model classifies the previous
batch, and streams one record per image to the results file
(:mod:`hiercell.results`). One unreadable or unclassifiable file gives a
``status="error"`` record with the reason; the batch goes on. The
differential count comes from :mod:`hiercell.differential`; the HTML report
(:mod:`hiercell.report`) is fed with the images and features of each batch.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text, check_writable, clean_stale_temps
from .differential import summarize
from .fileutil import display, json_text
from .io import image_key, list_images, try_load_image
from .model import check_masking, check_positive_int
from .prefetch import chunks, default_workers, ordered_map
from .progress import tracker
from .records import Prediction, stamp
from .results import FORMATS, open_sink, partial_path, previous_ok
from .review import records_novelty


class NoImagesError(ValueError):
    """The given paths hold no image files."""


class ModelLoadError(RuntimeError):
    """The model bundle could not be loaded."""


class ReviewRateError(ValueError):
    """A review rate was asked of a model without a review scorer."""


class OutputPathError(ValueError):
    """An output path is an input image (or folder) or another output: refused before
    anything is written."""


def check_output_paths(outputs: dict, inputs) -> None:
    """``outputs`` (name -> path or None) must differ from each other and from every
    input (paths, compared by :func:`hiercell.io.image_key`); else :class:`OutputPathError`."""
    seen = {}
    for name, path in outputs.items():
        if path is None:
            continue
        key = image_key(path)
        if key in seen:
            raise OutputPathError(f"{name} {display(path)} is the same file as {seen[key]}; "
                                  "refusing to overwrite it")
        seen[key] = name
    input_keys = {image_key(p) for p in inputs}
    for name, path in outputs.items():
        if path is not None and image_key(path) in input_keys:
            raise OutputPathError(f"{name} {display(path)} is one of the inputs; refusing "
                                  "to overwrite it")


def writable_output(name: str, path) -> Path | None:
    """``path`` as written to (:func:`hiercell.atomic.check_writable`: symbolic links
    resolved), checked before any work; :class:`OutputPathError` naming it when it is
    empty, a folder, a device or pipe, or in a folder that cannot be written."""
    if path is None:
        return None
    try:
        return check_writable(path)
    except ValueError as exc:
        raise OutputPathError(f"{name}: {exc}") from None
    except OSError as exc:
        raise OutputPathError(f"{name} {display(exc.filename or path)}: "
                              f"{exc.strerror or exc}") from None


@dataclass
class ClassifyResult:
    """What :func:`classify_folder` did.

    ``records`` holds every image of the output (resumed rows first, then the
    ones classified in this run, in listing order); ``n_resumed`` of them were
    taken from an earlier run without being classified again.
    """

    records: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    n_ok: int = 0
    n_error: int = 0
    n_resumed: int = 0
    out: Path | None = None
    #: rows of the earlier results that were not kept: ``(file, row, reason)``
    rejected: list = field(default_factory=list)
    #: earlier ok rows for images that are not part of this run (not copied to ``out``)
    n_dropped: int = 0
    #: earlier ok rows written by another model or segmentation version (classified again)
    n_stale: int = 0

    @property
    def errors(self) -> list:
        """The records with ``status == "error"``."""
        return [r for r in self.records if r.status != "ok"]


def _features(model, images, paths, masked, prepared=None, known=None) -> np.ndarray:
    """Trunk features of decoded ``images`` (``prepared``: their network inputs, when the
    loader threads made them; ``known``: trunk features already computed, by path, e.g.
    by the automatic alignment's pre-pass)."""
    have = [None if not known else known.get(str(p)) for p in paths]
    todo = [i for i, f in enumerate(have) if f is None]
    if todo:
        ready = None if prepared is None else [prepared[i] for i in todo]
        if ready is not None and all(p is not None for p in ready):
            computed = model.prepared_features(np.stack(ready))
        else:
            computed = model.features([images[i] for i in todo], masked=masked)
        for i, f in zip(todo, computed):
            have[i] = f
    return np.stack(have)


def _classify(model, images, paths, top_k, masked, prepared=None, known=None, answered=None):
    """``(records, features)`` for decoded ``images`` (:func:`_features`); ``answered``:
    records already made by this model, by path (the automatic alignment's pre-pass,
    when it left the model as it was)."""
    feats = _features(model, images, paths, masked, prepared, known)
    have = [None if not answered else answered.get(str(p)) for p in paths]
    todo = [i for i, rec in enumerate(have) if rec is None]
    if todo:
        made = list(model.hierarchy.predict_records(feats[todo], [str(paths[i]) for i in todo],
                                                    top_k))
        if len(made) != len(todo):
            raise RuntimeError(f"model returned {len(made)} predictions for {len(todo)} images")
        for i, rec in zip(todo, made):
            have[i] = rec
    return stamp(have, getattr(model, "info", None)), list(feats)


def _model_tag(model):
    """The ``model`` tag of the rows ``model`` (an object, a bundle path or ``None``: the
    bundled model) writes; ``None`` where it cannot be told (a model not from a bundle,
    or a bundle that cannot be read, which loading it reports)."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return (getattr(model, "info", None) or {}).get("tag")
    from .bundle import bundle_tag

    try:
        return bundle_tag(model)
    except (OSError, ValueError):
        return None


def _batch_or_one_by_one(run, items, failed) -> list:
    """``run(items)``, one result per item; when it raises, ``run`` on each item alone,
    with ``failed(item, exc)`` as the result of an item that fails by itself, so that one
    bad image costs only its own result."""
    try:
        return list(run(items))
    except Exception:  # noqa: BLE001 - find the offending item(s) one at a time
        out = []
        for item in items:
            try:
                out += list(run([item]))
            except Exception as exc:  # noqa: BLE001
                out.append(failed(item, exc))
        return out


def classify_batch(model, loaded, top_k=3, masked=None, known=None, answered=None):
    """Records and trunk features for one batch of ``(path, rgb | None, reason[, prepared])``,
    in order (features ``None`` where an image failed; ``prepared``: the image's network
    input made by a loader thread, see :func:`load_and_prepare`; ``known``: trunk features
    already computed, by path string; ``answered``: records too, see :func:`_classify`).
    A batch the model fails on is retried one image at a time, so that only the image at
    fault gets an error record."""
    loaded = [(*item, None)[:4] for item in loaded]
    records = [Prediction.failed(p, reason) if rgb is None else None
               for p, rgb, reason, _ in loaded]
    features = [None] * len(loaded)
    good = [i for i, item in enumerate(loaded) if item[1] is not None]
    if not good:
        return records, features

    def run(items):
        recs, feats = _classify(model, [it[1] for it in items], [it[0] for it in items],
                                top_k, masked, [it[3] for it in items], known, answered)
        return zip(recs, feats)

    def failed(item, exc):
        reason = f"classification failed ({type(exc).__name__}: {exc})"
        return Prediction.failed(item[0], reason), None

    results = _batch_or_one_by_one(run, [loaded[i] for i in good], failed)
    for i, (rec, feat) in zip(good, results):
        records[i], features[i] = rec, feat
    return records, features


def load_and_prepare(model, masked=None, known=()):
    """The loader threads' job: ``path -> (path, rgb | None, reason, prepared | None)``.

    ``prepared`` is the network input (:func:`hiercell.preprocess.prepare_batch`:
    masking, framing, resizing) when ``model`` has ``prepare`` and
    ``prepared_features``, so that this per-image work runs in the decoding threads,
    overlapping inference, not in the thread that runs the network. An image that fails
    to prepare gets ``None`` and is retried (and reported) by :func:`classify_batch`.
    Paths in ``known`` (their trunk features are already computed) are not prepared.
    """
    prepare = getattr(model, "prepare", None)
    if not (callable(prepare) and callable(getattr(model, "prepared_features", None))):
        prepare = None

    def load(path):
        rgb, reason = try_load_image(path)
        prepared = None
        if rgb is not None and prepare is not None and str(path) not in known:
            try:
                prepared = prepare([rgb], masked)[0]
            except Exception:  # noqa: BLE001 - classify_batch reports it
                prepared = None
        return path, rgb, reason, prepared

    return load


def _auto_align(model, images, progress, masked=None, batch_size=32, workers=None,
                top_k=3):
    """:func:`hiercell.alignment.auto_align` on a fixed draw of ``images``: ``(model,
    record, known, answered)``, ``known`` the drawn images' trunk features by path
    string, computed as the main pass computes them (the trunk is the same aligned or
    not, so the main pass reuses them instead of running the trunk on those images
    again), ``answered`` their records when the model was left as it was (the domain
    check read them: the main pass reuses them too), else empty."""
    from .alignment import AUTO_MIN_CELLS, auto_align, auto_sample, can_align

    if not can_align(model) or len(images) < AUTO_MIN_CELLS:
        return (*auto_align(model, []), {}, {})
    drawn = auto_sample(images)
    known = {}
    with tracker(True if progress is True else None, len(drawn),
                 "checking the images against the training lab") as update:
        loaded = ordered_map(load_and_prepare(model, masked), drawn,
                             workers=workers or default_workers(), ahead=2 * batch_size)
        with closing(loaded):
            for chunk in chunks(loaded, batch_size):
                good = [item for item in chunk if item[1] is not None]
                feats = _batch_or_one_by_one(  # an image at fault: the main pass reports it
                    lambda items: _features(model, [g[1] for g in items], [g[0] for g in items],
                                            masked, [g[3] for g in items]),
                    good, lambda item, exc: None) if good else []
                known.update((str(g[0]), f) for g, f in zip(good, feats) if f is not None)
                update(len(chunk))
    if not known:
        return (*auto_align(model, []), known, {})
    maps = np.stack(list(known.values())).astype(np.float32)
    records = list(model.hierarchy.predict_records(maps, list(known), top_k))
    if len(records) != len(maps):
        raise RuntimeError(f"model returned {len(records)} predictions for {len(maps)} images")
    aligned, record = auto_align(model, maps, records_novelty(records))
    return aligned, record, known, ({} if aligned is not model else dict(zip(known, records)))


def classify_folder(paths, model=None, out=None, fmt: str = "csv", masked: bool | None = None,
                    top_k: int = 3, recursive: bool = False, batch_size: int = 32,
                    resume: bool = False, summary_path=None, report_path=None,
                    progress=True, workers: int | None = None,
                    report_gradcam: bool = True, precision: str = "auto",
                    shard=None, auto_align: bool = True,
                    review_rate: float | None = None) -> ClassifyResult:
    """Classify every image under ``paths`` (files and folders, mixed).

    Parameters
    ----------
    paths : path or list of paths
        Image files and/or folders (``recursive`` descends into sub-folders).
    model : ImageClassifier, path or None
        A loaded model (anything with ``features(images, masked=)``,
        ``hierarchy.predict_records(features, paths, top_k)`` and, for the
        report's Grad-CAM, ``gradcam``), or the path of a model bundle for
        :func:`hiercell.bundle.load`; default the bundled model. A bundle is loaded only
        once images were found, with the trunk precision ``precision``
        ("auto", the default, "float32", "bfloat16" or "float16"; see
        :func:`hiercell.load`).
    out : path, optional
        Results file (``fmt`` "csv" with :data:`~hiercell.records.RECORD_COLUMNS`,
        or "json" ``{"results": [...], "summary": {...}}``); written atomically
        (see :mod:`hiercell.results`). ``None`` writes nothing.
    masked : bool, optional
        Segment the cell first; ``None`` = the model's default.
    resume : bool
        Keep the status-ok rows of an existing ``out`` (and ``<out>.partial``
        from an interrupted run), skip those images (matched by resolved path)
        and classify only the rest, earlier errors included. Rows whose
        ``model`` is not this model's (another bundle, or one written with other
        segmentation masks: :func:`hiercell.bundle.bundle_tag`) are classified
        again (``n_stale``).
    summary_path, report_path : path, optional
        Also write the differential count as JSON / an HTML report.
    progress : bool or callable
        See :mod:`hiercell.progress`: ``True`` a bar on stderr, a callable gets
        ``(done, total)``.
    workers : int, optional
        Image-decoding threads (default ``min(4, cpu_count)``).
    report_gradcam : bool
        Put Grad-CAM overlays in the report (one backward pass per image).
    shard : str or Shard, optional
        ``"K/N"``: classify only share K of N of the images (see :mod:`hiercell.shard`;
        the shares of N runs are disjoint and cover every image, and ``hiercell merge``
        combines their results). Every record and the summary record it.
    auto_align : bool
        When the images look unlike the training data (the folder domain check on a
        fixed draw of up to 200 of them, at least 20 readable), align the model to
        them first (:func:`hiercell.alignment.auto_align`; no labels; a pre-pass over
        the draw, whose trunk features the main pass reuses, and its answers too when
        the model is left as it is; every share of a sharded run draws the same
        images). The
        summary's ``alignment`` says what was done; ``None`` when not asked.
    review_rate : float, optional
        Flag for review about this share (0 < rate < 1) of the training lab's
        validation cells instead of the model's default (5 % for the bundled model):
        :meth:`hiercell.model.ImageClassifier.with_review_rate` (in a model adapted to
        a lab, that lab's cells keep the adaptation's threshold). The summary's
        ``review_rate`` is this rate (``None``: the model's default) and
        ``review_threshold`` the threshold used (``None`` without a review scorer, or
        when rows were kept by ``resume``: they keep the flag they were written with).

    The summary gets ``precision`` (the trunk precision(s) of the classified rows)
    and ``shard``, and every record its ``precision`` and ``shard``.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    NoImagesError
        No image files were found.
    ResumeError
        ``resume`` and ``out`` (or ``<out>.partial``) cannot be read.
    OutputPathError
        ``out``, its partial file, ``summary_path`` or ``report_path`` is an input
        or another output, empty, a folder, a device or pipe, or cannot be written
        (a symbolic link is written through: its target is replaced).
    MaskingError
        ``masked`` asks for the masking the model was not trained for.
    ModelLoadError
        The model bundle could not be loaded.

    "The same image" is one notion everywhere (listing, ``resume``, output checks):
    :func:`hiercell.io.image_key`, the absolute path with symbolic links resolved.
    The ``path`` column holds the absolute path as listed (a symbolic link keeps its
    own name). Every entry under a folder that looks like an image gets a row,
    broken symbolic links included; a sub-folder that cannot be read, or a symbolic
    link loop, gets an error row and the rest is classified.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    batch_size = check_positive_int("batch_size", batch_size)
    if review_rate is not None and not 0.0 < float(review_rate) < 1.0:
        raise ValueError(f"review_rate must be between 0 and 1, got {review_rate!r}")
    top_k = check_positive_int("top_k", top_k)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(os.path.abspath(p)) for p in paths]  # rows name absolute paths
    missing = [display(p) for p in paths if not (p.exists() or p.is_symlink())]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    listing_errors = []
    images = list_images(paths, recursive=recursive, errors=listing_errors)
    listed = images  # all shares of a sharded run align on the same draw
    if not images and not listing_errors:
        raise NoImagesError(f"no image files found in {', '.join(display(p) for p in paths)}"
                            + ("" if recursive else " (use recursive=True / --recursive "
                                                    "to search sub-folders)"))
    if shard is not None:  # an empty share is not an error: its job in an array just ends
        from .shard import parse_shard, select

        shard = parse_shard(shard)
        images = select(images, paths, shard)
        listing_errors = [(p, reason) for p, reason in listing_errors
                          if p in select([p], paths, shard)]

    out = writable_output("the results file (out)", out)
    summary_path = writable_output("the summary (summary_path)", summary_path)
    report_path = writable_output("the report (report_path)", report_path)
    check_output_paths({"the results file (out)": out,
                        "the partial results file": partial_path(out) if out else None,
                        "the summary (summary_path)": summary_path,
                        "the report (report_path)": report_path}, [*paths, *images])
    if model is not None and not isinstance(model, (str, os.PathLike)):
        check_masking(model, masked)
    if out is not None:
        for f in (out, partial_path(out), summary_path, report_path):
            if f is not None:
                clean_stale_temps(f)
    rejected = []
    previous = previous_ok(out, fmt, rejected) if (resume and out is not None) else []
    wanted = {image_key(p) for p in images}
    n_before = len(previous)
    previous = [r for r in previous if image_key(r.path) in wanted]  # only images of this run
    n_dropped = n_before - len(previous)
    tag = _model_tag(model) if previous else None
    n_stale = sum(r.model != tag for r in previous) if tag is not None else 0
    if n_stale:  # another model's (or masks') answers must not pass for this one's
        previous = [r for r in previous if r.model == tag]
    done_keys = {image_key(r.path) for r in previous}
    todo = [p for p in images if image_key(p) not in done_keys]

    needs_model = bool(todo) or (report_path is not None and report_gradcam)
    if (model is None or isinstance(model, (str, os.PathLike))) and needs_model:
        from .bundle import load

        try:
            model = load(model, precision=precision)
        except Exception as exc:  # noqa: BLE001 - re-raised with the bundle named
            where = "the bundled model" if model is None else str(model)
            raise ModelLoadError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
    if isinstance(model, (str, os.PathLike)):
        model = None
    if model is not None:
        check_masking(model, masked)
        if review_rate is not None:
            try:
                model = model.with_review_rate(review_rate)
            except ValueError as exc:
                raise ReviewRateError(f"review_rate: {exc}") from None
    alignment, known, answered = None, {}, {}
    if auto_align and model is not None and todo:
        model, alignment, known, answered = _auto_align(model, listed, progress, masked,
                                                        batch_size, workers, top_k)
        wanted = {str(p) for p in todo}  # done (--resume) or other shares' images: not reused
        known = {p: f for p, f in known.items() if p in wanted}
        answered = {p: r for p, r in answered.items() if p in wanted}

    report = None
    if report_path is not None:
        from .report import ReportWriter

        report = ReportWriter(report_path, model, masked=masked, gradcam=report_gradcam)
    unlisted = [Prediction.failed(str(p), reason) for p, reason in listing_errors]
    for rec in unlisted if shard is not None else ():
        rec.shard = str(shard)
    sink = open_sink(out, fmt, previous) if out is not None else None
    records = list(previous)
    try:
        if report is not None and previous:
            report.add(previous)
        if unlisted:
            records.extend(unlisted)
            if sink is not None:
                sink.write(unlisted)
        with tracker(progress, len(todo), "Classifying") as update:
            loaded = ordered_map(load_and_prepare(model, masked, known), todo,
                                 workers=workers or default_workers(),
                                 ahead=2 * batch_size)
            with closing(loaded):  # stop the loader threads at once on an error
                for chunk in chunks(loaded, batch_size):
                    chunk_records, feats = classify_batch(model, chunk, top_k, masked, known,
                                                          answered)
                    if shard is not None:
                        for rec in chunk_records:
                            rec.shard = str(shard)
                    records.extend(chunk_records)
                    if sink is not None:
                        sink.write(chunk_records)
                    if report is not None:
                        report.add(chunk_records, [item[1] for item in chunk], feats)
                    update(len(chunk))
    except BaseException:
        if sink is not None:
            try:
                sink.abort(records)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise

    reviewer = getattr(getattr(model, "hierarchy", None), "reviewer", None)
    summary = summarize(records, aligned=bool(alignment and alignment["applied"]),
                        class_rates=None if reviewer is None else reviewer.novel_rates())
    summary["precision"] = ",".join(sorted({r.precision for r in records if r.precision})) or None
    summary["shard"] = None if shard is None else str(shard)
    summary["alignment"] = alignment
    summary["review_rate"] = None if review_rate is None else float(review_rate)
    summary["review_threshold"] = (None if reviewer is None or previous  # kept rows: unknown
                                   else float(reviewer.threshold_))
    if sink is not None:
        sink.commit(records, summary)
    if summary_path is not None:
        atomic_write_text(summary_path, json_text(summary))
    if report is not None:
        report.close(summary)
    n_ok = sum(r.status == "ok" for r in records)
    return ClassifyResult(records=records, summary=summary, n_ok=n_ok,
                          n_error=len(records) - n_ok, n_resumed=len(previous), out=out,
                          rejected=rejected, n_dropped=n_dropped, n_stale=n_stale)
