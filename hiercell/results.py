"""The results file of a classification run: writers, and reading it back for ``--resume``.

While a job runs, its rows are **appended to** ``<out>.partial`` -- the file a
``--resume`` reads -- which is flushed and ``fsync``-ed after every batch
(:meth:`ResultsSink.write`). At the end (:meth:`ResultsSink.commit`) the
complete file replaces ``out`` with :func:`os.replace`, so ``out`` is always
either its previous version or the complete new one. Whatever ends the job
-- an exception, Ctrl-C, SIGTERM, ``kill -9``, a full disk -- the batches
finished so far are in ``<out>.partial`` (a batch cut by a hard kill or a
write error leaves at most one torn row, which :func:`read_results` drops).
The partial file is first assembled in a temporary file (header and the rows
kept from an earlier run) and moved into place, so resuming never destroys
earlier rows.

Formats: ``csv`` (columns :data:`~hiercell.records.RECORD_COLUMNS`; text
cells escaped by :func:`hiercell.fileutil.csv_cell`: spreadsheet formulas
and file names that are not UTF-8) and ``json`` (``{"results": [...],
"summary": {...}}``; its partial file holds one JSON record per line).

Reading back (:func:`read_results`) validates every row: a row with missing
or extra cells, an unknown status, class or flag, or a probability that is
not a number in [0, 1] is dropped, so ``--resume`` classifies that image again.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .atomic import (atomic_write_text, clean_stale_temps, fsync_file, named_error,
                     output_target, temp_file_next_to)
from .fileutil import csv_cell, from_csv_cell, json_text, to_jsonable
from .io import image_key
from .records import RECORD_COLUMNS, Prediction
from .taxonomy import FINE_CLASSES, MAIN_CLASSES, OTHERS, SUB_TO_MAIN, SUBCLASSES

FORMATS = ("csv", "json")


class ResumeError(ValueError):
    """An existing results file cannot be read to resume from."""


def partial_path(out) -> Path:
    """Where a job appends its finished rows until it ends: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


__all__ = ["FORMATS", "ResumeError", "partial_path", "image_key", "open_sink", "read_results",
           "previous_ok", "clean_stale_temps"]


# --------------------------------------------------------------------------- writers


class ResultsSink:
    """Appends records to ``<out>.partial`` (``write`` per batch), then ``commit`` moves the
    complete file to ``out``; ``abort`` leaves the partial file for ``--resume``."""

    def __init__(self, out, previous=()):
        self.out = output_target(out)  # through a symbolic link; never a device
        self.part = partial_path(self.out)
        self.fh = None
        fh, tmp = temp_file_next_to(self.part, like=self.out)
        try:
            with fh:
                self._header(fh)
                self._rows(fh, previous)
                fsync_file(fh)
            os.replace(tmp, self.part)
            self.fh = open(self.part, "a", encoding="utf-8", newline="")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise named_error(exc, self.out) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _header(self, fh):
        pass

    def _rows(self, fh, records):
        raise NotImplementedError

    def write(self, records):
        """Append ``records`` and put them on disk."""
        try:
            self._rows(self.fh, records)
            fsync_file(self.fh)
        except OSError as exc:
            raise named_error(exc, self.part) from None

    def _close(self):
        if self.fh is not None and not self.fh.closed:
            try:
                fsync_file(self.fh)
            finally:
                self.fh.close()

    def commit(self, records, summary):
        """All done: put the complete file at ``out`` (the partial file goes)."""
        try:
            self._close()
            os.replace(self.part, self.out)
        except OSError as exc:
            raise named_error(exc, self.part) from None

    def abort(self, records=None):
        """Interrupted: keep the finished rows in ``<out>.partial``."""
        self._close()


class CsvSink(ResultsSink):
    """CSV rows, streamed; ``commit`` renames the partial file to ``out``."""

    def _header(self, fh):
        csv.writer(fh).writerow(RECORD_COLUMNS)

    def _rows(self, fh, records):
        writer = csv.writer(fh)
        for rec in records:
            row = rec.to_row()
            writer.writerow([csv_cell(row[c]) for c in RECORD_COLUMNS])


class JsonSink(ResultsSink):
    """JSON lines in the partial file; ``commit`` writes the whole document atomically."""

    def _rows(self, fh, records):
        for rec in records:
            fh.write(json.dumps(to_jsonable(rec.to_json())) + "\n")

    def commit(self, records, summary):
        atomic_write_text(self.out, json_text({"results": [r.to_json() for r in records],
                                               "summary": summary}))
        self._close()
        self.part.unlink(missing_ok=True)


def open_sink(out, fmt: str = "csv", previous=()) -> ResultsSink:
    """The writer of format ``fmt`` for ``out`` (its folder is created); ``previous``
    records (kept from an earlier run) are in the partial file before it replaces any
    earlier one."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_error(exc, Path(out).parent) from None
    return (CsvSink if fmt == "csv" else JsonSink)(out, previous)


# --------------------------------------------------------------------------- reading back


def read_results(path, fmt: str = "csv", rejected: list | None = None,
                 summary: dict | None = None) -> list:
    """The valid records of a results file written by
    :func:`hiercell.classify.classify_folder` (or of its partial file).

    Rows that fail :func:`check_row` (e.g. the last line of a file cut by a hard
    kill) are skipped, and appended to ``rejected`` as ``(row number, reason)``
    when it is a list. A JSON file's own ``summary`` is copied into ``summary`` when
    that is a dict. Files from before the ``top3`` -> ``top_k`` rename are read too.
    """
    path = Path(path)
    records = []
    if fmt == "json":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path}: cannot read results to resume from ({exc})") from exc
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "results" in doc:
            rows = doc["results"] if isinstance(doc["results"], list) else []
            if summary is not None and isinstance(doc.get("summary"), dict):
                summary.update(doc["summary"])
        else:  # a partial file: JSON lines
            rows = []
            for line in text.splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    rows.append(None)
    else:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ResumeError(f"{path}: not a hiercell results CSV (no 'path' column)")
                rows = [{k: from_csv_cell(v) if isinstance(v, str) else v
                         for k, v in row.items()} for row in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ResumeError(f"{path}: cannot read results to resume from ({exc})") from exc
    for number, row in enumerate(rows, 2 if fmt == "csv" else 1):
        try:
            rec = check_row(row, csv_row=fmt == "csv")
        except (TypeError, ValueError, AttributeError) as exc:
            if rejected is not None:
                rejected.append((number, str(exc)))
            continue
        records.append(rec)
    return records


_STAGE2_CLASSES = set(SUBCLASSES) | {OTHERS}
_LABELS = set(FINE_CLASSES) | set(MAIN_CLASSES)


def _probability(name, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is not a probability: {value!r}")


def check_row(row, csv_row: bool = True) -> Prediction:
    """The record of one read-back row, or a ``ValueError`` saying why it cannot be
    trusted: missing or extra cells (a torn row), unknown status, class or flag values,
    probabilities that are not numbers in [0, 1], an ok row without a label or top-k."""
    if not isinstance(row, dict):
        raise ValueError("not a record")
    if None in row:
        raise ValueError("more cells than columns")
    torn = [k for k, v in row.items() if v is None] if csv_row else []
    if torn:
        raise ValueError(f"row cut short (no {', '.join(torn)})")
    if csv_row:
        for column in ("uncertain", "review"):
            if column in row and row[column] not in ("True", "False"):
                raise ValueError(f"{column} is {row[column]!r}, not True/False")
    rec = Prediction.from_row(row)
    if not rec.path:
        raise ValueError("no path")
    if rec.status not in ("ok", "error"):
        raise ValueError(f"unknown status {rec.status!r}")
    if rec.status == "error":
        if not rec.error:
            raise ValueError("error row without a reason")
        return rec
    if rec.label not in _LABELS:
        raise ValueError(f"unknown label {rec.label!r}")
    if rec.main_class not in MAIN_CLASSES:
        raise ValueError(f"unknown main class {rec.main_class!r}")
    if rec.subclass is not None and rec.subclass not in _STAGE2_CLASSES:
        raise ValueError(f"unknown subclass {rec.subclass!r}")
    if rec.subclass in SUB_TO_MAIN:  # the columns must tell one story (an edited row does not)
        if rec.label != rec.subclass or rec.main_class != SUB_TO_MAIN[rec.subclass]:
            raise ValueError(f"label {rec.label!r}, main class {rec.main_class!r} and subclass "
                             f"{rec.subclass!r} disagree")
    elif rec.label != rec.main_class:
        raise ValueError(f"label {rec.label!r} and main class {rec.main_class!r} disagree")
    _probability("probability", rec.probability)
    _probability("main_probability", rec.main_probability)
    _probability("subclass_probability", rec.subclass_probability, optional=True)
    _probability("review_score", getattr(rec, "review_score", None), optional=True)
    _probability("novelty", getattr(rec, "novelty", None), optional=True)
    if not rec.top:
        raise ValueError("no top-k classes")
    for c, p in rec.top:
        if c not in _LABELS:
            raise ValueError(f"unknown class {c!r} in top_k")
        _probability("top_k probability", p)
    return rec


def previous_ok(out, fmt: str = "csv", rejected: list | None = None) -> list:
    """Valid status-ok records of ``out`` and ``<out>.partial``, one per image (the
    partial file, newer, wins); images are matched by :func:`hiercell.io.image_key`."""
    out = Path(out)
    kept = {}
    for source in (out, partial_path(out)):
        if source.is_file():
            bad = []
            for rec in read_results(source, fmt, bad):
                if rec.status == "ok":
                    kept[image_key(rec.path)] = rec
            if rejected is not None:
                rejected.extend((source, n, why) for n, why in bad)
    return list(kept.values())
