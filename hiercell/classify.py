"""Batch classification of image files and folders (``hiercell classify``).

:func:`classify_folder` lists images, decodes them in a background thread pool
while the model classifies the previous batch, and streams one row per image to
a CSV (or collects a JSON document). One unreadable or unclassifiable file gives
a ``status="error"`` row with the reason; the batch goes on.

Files are written atomically. Rows are streamed to a temporary file next to
``out`` and moved into place with :func:`os.replace` when the job ends, so
``out`` is always either its previous version or the complete new one. If the
job is interrupted (Ctrl-C, or any exception), the rows done so far are moved to
``<out>.partial`` (same format as ``out``, also atomically) and ``out`` is left
untouched; ``resume=True`` reads both ``out`` and ``<out>.partial``, so an
interrupted job continues where it stopped. A successful run removes
``<out>.partial``. (A hard kill, e.g. SIGKILL, can leave a stray
``.<out>.*.tmp`` file behind; it is never read.)

:func:`summarize` turns the records into the differential count (per main class,
and per maturation stage within neutrophil + ig); :func:`format_summary` renders
it as a plain-text table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text, temp_file_next_to
from .io import ImageLoadError, list_images, load_image
from .records import RECORD_COLUMNS, Prediction
from .taxonomy import MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUBCLASSES

#: Subclass bucket for routed cells whose stage 2 answered "Others".
UNSPECIFIED = "unspecified"

FORMATS = ("csv", "json")


class NoImagesError(ValueError):
    """The given paths hold no image files."""


class ResumeError(ValueError):
    """An existing results file cannot be read to resume from."""


class ModelLoadError(RuntimeError):
    """The model bundle could not be loaded."""


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

    @property
    def errors(self) -> list:
        """The records with ``status == "error"``."""
        return [r for r in self.records if r.status != "ok"]


# --------------------------------------------------------------------------- helpers


def partial_path(out) -> Path:
    """Where an interrupted job keeps its finished rows: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def ordered_map(fn, items, workers: int = 4, ahead: int = 64):
    """Yield ``fn(item)`` for ``items`` in order, computing up to ``ahead`` of them
    in a background thread pool (I/O and decoding overlap with the consumer)."""
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hiercell-load")
    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            future = pending.popleft()
            for item in items:  # top up by one
                pending.append(pool.submit(fn, item))
                break
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load(path):
    """``(path, rgb, None)`` or ``(path, None, reason)``."""
    try:
        rgb = load_image(path)
    except ImageLoadError as exc:
        return path, None, exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        return path, None, f"cannot read image ({type(exc).__name__}: {exc})"
    return path, rgb, None


def _predict(model, images, paths, top_k, masked):
    preds = model.predict_images(images, paths=[str(p) for p in paths], top_k=top_k, masked=masked)
    preds = list(preds)
    if len(preds) != len(images):
        raise RuntimeError(f"model returned {len(preds)} predictions for {len(images)} images")
    for pred, path in zip(preds, paths):
        pred.path = str(path)
    return preds


def _classify_chunk(model, loaded, top_k, masked) -> list:
    """Records for one chunk of ``(path, rgb | None, reason)``, in the chunk's order."""
    records = [Prediction.failed(p, reason) if rgb is None else None for p, rgb, reason in loaded]
    good = [i for i, (_, rgb, _) in enumerate(loaded) if rgb is not None]
    if not good:
        return records
    try:
        preds = _predict(model, [loaded[i][1] for i in good], [loaded[i][0] for i in good],
                         top_k, masked)
    except Exception:  # noqa: BLE001 - find the offending image(s) one at a time
        preds = []
        for i in good:
            path, rgb, _ = loaded[i]
            try:
                preds.extend(_predict(model, [rgb], [path], top_k, masked))
            except Exception as exc:  # noqa: BLE001
                reason = f"classification failed ({type(exc).__name__}: {exc})"
                preds.append(Prediction.failed(path, reason))
    for i, pred in zip(good, preds):
        records[i] = pred
    return records


def _chunks(iterable, n):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _key(path) -> str:
    """The identity of an image file across runs: its resolved absolute path."""
    return str(Path(path).expanduser().resolve())


# --------------------------------------------------------------------------- reading back


def _opt_float(value):
    if value is None or value == "":
        return None
    return float(value)


def _opt_str(value):
    return None if value is None or value == "" else str(value)


def _parse_top(value) -> list:
    if not value:
        return []
    if isinstance(value, str):
        pairs = [item.rsplit(":", 1) for item in value.split(";") if item]
    else:
        pairs = value
    return [(str(c), float(p)) for c, p in pairs]


def _to_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def prediction_from_row(row: dict) -> Prediction:
    """Rebuild a :class:`Prediction` from a CSV row or a JSON ``results`` item."""
    return Prediction(
        path=_opt_str(row.get("path")), label=_opt_str(row.get("label")),
        probability=_opt_float(row.get("probability")),
        main_class=_opt_str(row.get("main_class")),
        main_probability=_opt_float(row.get("main_probability")),
        subclass=_opt_str(row.get("subclass")),
        subclass_probability=_opt_float(row.get("subclass_probability")),
        top=_parse_top(row.get("top3")), uncertain=_to_bool(row.get("uncertain", False)),
        status=_opt_str(row.get("status")) or "ok", error=_opt_str(row.get("error")),
    )


def read_results(path, fmt: str = "csv") -> list:
    """The records of a results file written by :func:`classify_folder`.

    Rows that cannot be parsed (e.g. the last line of a file cut by a hard
    kill) are skipped.
    """
    path = Path(path)
    records = []
    if fmt == "json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path}: cannot read results to resume from ({exc})") from exc
        rows = doc.get("results", []) if isinstance(doc, dict) else []
    else:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ResumeError(f"{path}: not a hiercell results CSV (no 'path' column)")
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResumeError(f"{path}: cannot read results to resume from ({exc})") from exc
    for row in rows:
        try:
            rec = prediction_from_row(row)
        except (TypeError, ValueError, AttributeError):
            continue
        if rec.path:
            records.append(rec)
    return records


def _previous_ok(out: Path, fmt: str) -> list:
    """Status-ok records of ``out`` and ``<out>.partial``, one per image (last wins)."""
    kept = {}
    for source in (out, partial_path(out)):
        if source.is_file():
            for rec in read_results(source, fmt):
                if rec.status == "ok":
                    kept[_key(rec.path)] = rec
    return list(kept.values())


# --------------------------------------------------------------------------- writers


class _CsvSink:
    """Streams rows to a temp file; ``commit`` moves it to ``out``, ``abort`` to ``.partial``."""

    def __init__(self, out: Path):
        self.out = out
        self.fh, self.tmp = temp_file_next_to(out)
        self.writer = csv.DictWriter(self.fh, fieldnames=RECORD_COLUMNS)
        self.writer.writeheader()

    def write(self, records):
        for rec in records:
            self.writer.writerow(rec.to_row())
        self.fh.flush()

    def commit(self, records, summary):
        self.fh.close()
        os.replace(self.tmp, self.out)

    def abort(self, records):
        self.fh.close()
        os.replace(self.tmp, partial_path(self.out))


class _JsonSink:
    """Collects records in memory; written atomically at the end."""

    def __init__(self, out: Path):
        self.out = out
        # Fail now (not after an hour of work) if the folder is not writable.
        fh, tmp = temp_file_next_to(out)
        fh.close()
        tmp.unlink()

    def write(self, records):
        pass

    @staticmethod
    def _text(records, summary):
        doc = {"results": [r.to_json() for r in records], "summary": summary}
        return json.dumps(doc, indent=1, default=_json_default) + "\n"

    def commit(self, records, summary):
        atomic_write_text(self.out, self._text(records, summary))

    def abort(self, records):
        atomic_write_text(partial_path(self.out), self._text(records, summarize(records)))


# --------------------------------------------------------------------------- main entry


def _progress_callback(progress, total, label="Classifying"):
    """``(update(n), close())`` for ``progress`` = bool or a callable ``(done, total)``."""
    if callable(progress):
        done = [0]

        def update(n):
            done[0] += n
            progress(done[0], total)

        return update, lambda: None
    if progress:
        import click

        bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                show_pos=True)
        bar.__enter__()
        closed = []

        def close():
            if not closed:
                closed.append(True)
                bar.__exit__(None, None, None)

        return bar.update, close
    return (lambda n: None), (lambda: None)


def classify_folder(paths, model=None, out=None, fmt: str = "csv", masked: bool | None = None,
                    top_k: int = 3, recursive: bool = False, batch_size: int = 32,
                    resume: bool = False, summary_path=None, report_path=None,
                    progress=True, workers: int | None = None,
                    report_gradcam: bool = True, precision: str = "float32") -> ClassifyResult:
    """Classify every image under ``paths`` (files and folders, mixed).

    Parameters
    ----------
    paths : path or list of paths
        Image files and/or folders (``recursive`` descends into sub-folders).
    model : HierarchicalClassifier, path or None
        Anything with ``predict_images(images, paths=, top_k=, masked=)``, or
        the path of a model bundle for ``hiercell.load``; default the bundled
        model. A bundle is loaded only once images were found, with the
        trunk precision ``precision`` ("float32", "bfloat16" or "auto").
    out : path, optional
        Results file (``fmt`` "csv" with :data:`RECORD_COLUMNS`, or "json"
        ``{"results": [...], "summary": {...}}``); written atomically.
        ``None`` writes nothing.
    masked : bool, optional
        Segment the cell first; ``None`` = the model's default.
    resume : bool
        Keep the status-ok rows of an existing ``out`` (and ``<out>.partial``
        from an interrupted run), skip those images (matched by resolved path)
        and classify only the rest, earlier errors included.
    summary_path, report_path : path, optional
        Also write the differential count as JSON / an HTML report.
    progress : bool or callable
        ``True``: a progress bar on stderr; a callable gets ``(done, total)``.
    workers : int, optional
        Image-decoding threads (default ``min(4, cpu_count)``).
    report_gradcam : bool
        Put Grad-CAM overlays in the report (one extra network pass per image).

    Returns
    -------
    ClassifyResult

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    NoImagesError
        No image files were found.
    ResumeError
        ``resume`` and ``out`` (or ``<out>.partial``) cannot be read.
    ModelLoadError
        The model bundle could not be loaded.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    images = list_images(paths, recursive=recursive)
    if not images:
        raise NoImagesError(f"no image files found in {', '.join(str(p) for p in paths)}"
                            + ("" if recursive else " (use recursive=True / --recursive "
                                                    "to search sub-folders)"))

    out = Path(out) if out is not None else None
    previous = _previous_ok(out, fmt) if (resume and out is not None) else []
    wanted = {_key(p) for p in images}
    previous = [r for r in previous if _key(r.path) in wanted]  # only images of this run
    done_keys = {_key(r.path) for r in previous}
    todo = [p for p in images if _key(p) not in done_keys]

    needs_model = bool(todo) or (report_path is not None and report_gradcam)
    if (model is None or isinstance(model, (str, os.PathLike))) and needs_model:
        import hiercell

        try:
            model = hiercell.load(model, precision=precision)
        except Exception as exc:  # noqa: BLE001 - re-raised with the bundle named
            where = "the bundled model" if model is None else str(model)
            raise ModelLoadError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc

    sink = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        sink = (_CsvSink if fmt == "csv" else _JsonSink)(out)
    records = list(previous)
    update, close = _progress_callback(progress, len(todo))
    try:
        if sink is not None:
            sink.write(previous)
        loaded = ordered_map(_load, todo, workers=workers or min(4, os.cpu_count() or 1),
                             ahead=2 * batch_size)
        with closing(loaded):  # stop the loader threads at once on an error
            for chunk in _chunks(loaded, batch_size):
                chunk_records = _classify_chunk(model, chunk, top_k, masked)
                records.extend(chunk_records)
                if sink is not None:
                    sink.write(chunk_records)
                update(len(chunk))
    except BaseException:
        close()
        if sink is not None:
            try:
                sink.abort(records)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    close()

    summary = summarize(records)
    if sink is not None:
        sink.commit(records, summary)
        partial_path(out).unlink(missing_ok=True)
    if summary_path is not None:
        atomic_write_text(summary_path, json.dumps(summary, indent=1, default=_json_default) + "\n")
    if report_path is not None:
        from .report import write_report

        write_report(records, summary, report_path,
                     model=None if isinstance(model, (str, os.PathLike)) else model,
                     gradcam=report_gradcam, progress=progress)
    n_ok = sum(r.status == "ok" for r in records)
    return ClassifyResult(records=records, summary=summary, n_ok=n_ok,
                          n_error=len(records) - n_ok, n_resumed=len(previous), out=out)


# --------------------------------------------------------------------------- summary


def percentages(counts: dict, decimals: int = 1) -> dict:
    """Percentages of ``counts`` rounded to ``decimals`` places that sum to exactly 100
    (largest-remainder rounding); all zeros when the total is zero."""
    total = sum(counts.values())
    if total == 0:
        return {k: 0.0 for k in counts}
    scale = 10 ** decimals
    units = 100 * scale
    floors = {k: v * units // total for k, v in counts.items()}
    rems = {k: v * units % total for k, v in counts.items()}
    short = units - sum(floors.values())
    for k in sorted(counts, key=lambda k: rems[k], reverse=True)[:short]:
        floors[k] += 1
    return {k: round(floors[k] / scale, decimals) for k in counts}


def _table(counts: dict) -> dict:
    pct = percentages(counts)
    return {k: {"count": int(counts[k]), "percent": pct[k]} for k in counts}


def summarize(records) -> dict:
    """The differential count of ``records`` (a JSON-ready dict).

    ``main_classes``: count and percent of each main class among classified
    cells (all of :data:`MAIN_CLASSES`, zeros included; any other class a model
    answers is appended). ``subclasses``: within the neutrophil + ig cells,
    count and percent of each maturation stage, ``"unspecified"`` for cells
    whose stage 2 answered "Others". Percentages sum to 100 (one decimal).
    """
    records = list(records)
    ok = [r for r in records if r.status == "ok"]
    main = dict.fromkeys(MAIN_CLASSES, 0)
    for r in ok:
        main[r.main_class] = main.get(r.main_class, 0) + 1
    routed = [r for r in ok if r.main_class in ROUTED_MAIN]
    sub = dict.fromkeys((*SUBCLASSES, UNSPECIFIED), 0)
    for r in routed:
        name = r.subclass if r.subclass in SUBCLASSES else UNSPECIFIED
        sub[name] += 1
    n_uncertain = sum(bool(r.uncertain) for r in ok)
    return {
        "n_images": len(records),
        "n_classified": len(ok),
        "n_errors": len(records) - len(ok),
        "main_classes": _table(main),
        "subclasses": {"of": list(ROUTED_MAIN), "n_cells": len(routed), "classes": _table(sub)},
        "n_uncertain": n_uncertain,
        "uncertain_percent": round(100.0 * n_uncertain / len(ok), 1) if ok else 0.0,
    }


def _bar(percent: float, width: int = 30) -> str:
    return "#" * int(math.floor(percent / 100 * width + 0.5))


def format_summary(summary: dict) -> str:
    """``summary`` (from :func:`summarize`) as a plain-text table."""
    lines = [f"Differential count: {summary['n_classified']} of {summary['n_images']} images "
             f"classified, {summary['n_errors']} errors"]
    rows = summary["main_classes"]
    width = max(12, *(len(k) for k in rows))
    lines.append(f"  {'class':<{width}} {'count':>6} {'%':>6}")
    for name, row in rows.items():
        lines.append(f"  {name:<{width}} {row['count']:>6} {row['percent']:>6.1f}  "
                     f"{_bar(row['percent'])}".rstrip())
    sub = summary["subclasses"]
    lines.append("")
    lines.append(f"Maturation stages within {' + '.join(sub['of'])} (n = {sub['n_cells']})")
    for name, row in sub["classes"].items():
        lines.append(f"  {name:<{width}} {row['count']:>6} {row['percent']:>6.1f}  "
                     f"{_bar(row['percent'])}".rstrip())
    lines.append("")
    lines.append(f"Uncertain (stage 2 said {OTHERS}): {summary['n_uncertain']} "
                 f"({summary['uncertain_percent']:.1f} % of classified cells)")
    return "\n".join(lines)
