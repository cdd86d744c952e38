"""The results file of a classification run: writers, and reading it back for ``--resume``.

Rows are streamed to a temporary file next to ``out`` and moved into place
with :func:`os.replace` when the job ends (:meth:`ResultsSink.commit`), so
``out`` is always either its previous version or the complete new one. If the
job is interrupted, the rows done so far go to ``<out>.partial``
(:meth:`ResultsSink.abort`, same format, also atomic). :func:`previous_ok`
reads both to resume. (A hard kill, e.g. SIGKILL, can leave a stray
``.<out>.*.tmp`` file behind; it is never read.)

Formats: ``csv`` (columns :data:`~hiercell.records.RECORD_COLUMNS`) and
``json`` (``{"results": [...], "summary": {...}}``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .atomic import atomic_write_text, temp_file_next_to
from .differential import summarize
from .fileutil import json_text
from .records import RECORD_COLUMNS, Prediction

FORMATS = ("csv", "json")


class ResumeError(ValueError):
    """An existing results file cannot be read to resume from."""


def partial_path(out) -> Path:
    """Where an interrupted job keeps its finished rows: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def image_key(path) -> str:
    """The identity of an image file across runs: its resolved absolute path."""
    return str(Path(path).expanduser().resolve())


# --------------------------------------------------------------------------- writers


class ResultsSink:
    """Writes records to ``out``: ``write`` per batch, then ``commit`` or ``abort``."""

    def __init__(self, out):
        self.out = Path(out)

    def write(self, records):
        """Add ``records`` (streamed where the format allows)."""

    def commit(self, records, summary):
        """All done: put the complete file at ``out``."""
        raise NotImplementedError

    def abort(self, records):
        """Interrupted: keep the finished ``records`` in ``<out>.partial``."""
        raise NotImplementedError


class CsvSink(ResultsSink):
    """Streams rows to a temp file; ``commit`` moves it to ``out``, ``abort`` to ``.partial``."""

    def __init__(self, out):
        super().__init__(out)
        self.fh, self.tmp = temp_file_next_to(self.out)
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


class JsonSink(ResultsSink):
    """Collects nothing itself: the whole document is written atomically at the end."""

    def __init__(self, out):
        super().__init__(out)
        # Fail now (not after an hour of work) if the folder is not writable.
        fh, tmp = temp_file_next_to(self.out)
        fh.close()
        tmp.unlink()

    @staticmethod
    def _text(records, summary):
        return json_text({"results": [r.to_json() for r in records], "summary": summary})

    def commit(self, records, summary):
        atomic_write_text(self.out, self._text(records, summary))

    def abort(self, records):
        atomic_write_text(partial_path(self.out), self._text(records, summarize(records)))


def open_sink(out, fmt: str = "csv") -> ResultsSink:
    """The writer of format ``fmt`` for ``out`` (its folder is created)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return (CsvSink if fmt == "csv" else JsonSink)(out)


# --------------------------------------------------------------------------- reading back


def read_results(path, fmt: str = "csv") -> list:
    """The records of a results file written by :func:`hiercell.classify.classify_folder`.

    Rows that cannot be parsed (e.g. the last line of a file cut by a hard
    kill) are skipped. Files from before the ``top3`` -> ``top_k`` rename are read too.
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
            rec = Prediction.from_row(row)
        except (TypeError, ValueError, AttributeError):
            continue
        if rec.path:
            records.append(rec)
    return records


def previous_ok(out, fmt: str = "csv") -> list:
    """Status-ok records of ``out`` and ``<out>.partial``, one per image (last wins)."""
    out = Path(out)
    kept = {}
    for source in (out, partial_path(out)):
        if source.is_file():
            for rec in read_results(source, fmt):
                if rec.status == "ok":
                    kept[image_key(rec.path)] = rec
    return list(kept.values())
