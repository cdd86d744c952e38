"""Scale-out: split one classification job into N shares, and merge the shares' results.

A batch scheduler (a SLURM job array, or any other) runs ``hiercell classify
ARCHIVE --shard K/N`` on N machines; each takes the images whose *shard key*
hashes to share K, writes its own results file (every row records ``K/N`` in
its ``shard`` column; JSON files also in their ``summary``), and ``hiercell
merge`` combines the N files into one results file and one differential count.

The shard key of an image is its path relative to the input folder it was
found in (``/mnt/a/archive/p1/cell.jpg`` given ``/mnt/a/archive`` ->
``p1/cell.jpg``; an image given as a file: its name), so machines that mount
the archive at different roots agree on who does what, and a re-run takes the
same images. The share is ``sha1(key) mod N``: stable across Python versions
and machines (unlike ``hash()``), and even.

:func:`merge_results` refuses files from different ``N``, two files of the
same share, and an image in two files; it names the shares no file covers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .differential import summarize
from .results import image_key, read_results


class ShardError(ValueError):
    """A bad ``K/N`` value, or shard results that cannot be merged."""


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (1-based, as SLURM's ``--array=1-N``) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, key: str) -> bool:
        """Whether the image with shard key ``key`` belongs to this share."""
        return shard_of(key, self.count) == self.index


def parse_shard(text) -> Shard:
    """``"K/N"`` (1 <= K <= N) -> :class:`Shard`; a :class:`Shard` passes through."""
    if isinstance(text, Shard):
        return text
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ShardError(f"shard {text!r}: expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise ShardError(f"shard {text!r}: K must be between 1 and N")
    return Shard(k, n)


def shard_of(key: str, count: int) -> int:
    """The share (1..count) of shard key ``key``."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def shard_key(image, roots) -> str:
    """``image``'s path relative to the deepest folder of ``roots`` holding it (POSIX
    separators), or its file name when it was given as a file."""
    image = Path(image)
    best = None
    for root in map(Path, roots):
        try:
            rel = image.relative_to(root)
        except ValueError:
            continue
        if root != image and (best is None or len(rel.parts) < len(best.parts)):
            best = rel
    return (best if best is not None else Path(image.name)).as_posix()


def select(images, roots, shard) -> list:
    """The images of ``images`` (found under ``roots``) that share ``shard`` takes."""
    shard = parse_shard(shard)
    return [p for p in images if shard.takes(shard_key(p, roots))]


# --------------------------------------------------------------------------- merging


@dataclass
class MergeResult:
    """What :func:`merge_results` did."""

    records: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    count: int = 0  # N
    shares: dict = field(default_factory=dict)  # K -> source file
    missing: list = field(default_factory=list)  # the K no file covers


def _agreed(summaries, key):
    """``key``'s value in every share's summary when all shares have one and agree, else
    ``None`` (CSV shares carry no summary)."""
    values = [None if s is None else s.get(key) for s in summaries]
    return values[0] if values and all(v == values[0] for v in values) else None


def _agreed_alignment(summaries):
    """The first share's ``alignment`` record when every share has one and all agree on
    whether it was applied (their figures, e.g. the estimated class mix, may differ in
    the last digits between machines of other trunk precisions), else ``None``."""
    records = [None if s is None else s.get("alignment") for s in summaries]
    if not records or not all(isinstance(r, dict) for r in records):
        return None
    return records[0] if len({bool(r.get("applied")) for r in records}) == 1 else None


def _file_shard(path, records, summary):
    """The one ``K/N`` of a shard results file (rows, else its JSON ``summary``)."""
    values = {r.shard for r in records}
    if not values:
        values = {summary.get("shard")}
    values.discard(None)
    if len(values) != 1:
        what = "no shard recorded (not written with --shard K/N?)" if not values else \
            f"rows of several shares ({', '.join(sorted(values))})"
        raise ShardError(f"{path}: {what}")
    return parse_shard(values.pop())


def merge_results(paths, allow_missing: bool = False, class_rates=None) -> MergeResult:
    """Combine the results files of ``hiercell classify --shard K/N`` runs (CSV or JSON,
    by extension) into one list of records and one differential count.

    The merged summary carries the shares' ``alignment`` (when every share is a JSON
    file that records one, all applied or all not: the shares of one run align on the
    same draw of images), ``review_rate`` and ``review_threshold`` (when every share
    records the same; and its domain check expects what the shares' model does,
    their ``domain_shift`` ``class_rates``, or ``class_rates`` when given, e.g. from the
    model for CSV shares); otherwise ``None``. Shares without images (a run of more
    shares than images) are left out of that agreement: they ran no check.

    Raises :class:`ShardError` when the files disagree on N, when two files hold the
    same share, when an image appears in two files, or (unless ``allow_missing``) when
    some shares have no file; the message names them.
    """
    if not paths:
        raise ShardError("no shard results given")
    result = MergeResult()
    seen = {}
    summaries = []  # each share's own summary (JSON files; None for CSV)
    for path in map(Path, paths):
        fmt = "json" if path.suffix.lower() == ".json" else "csv"
        rejected, summary = [], {}
        records = read_results(path, fmt, rejected, summary)
        if rejected:
            row, reason = rejected[0]
            raise ShardError(f"{path}: {len(rejected)} row(s) cannot be read (row {row}: "
                             f"{reason}); re-run that share")
        shard = _file_shard(path, records, summary)
        if result.count and shard.count != result.count:
            raise ShardError(f"{path}: share {shard} of {shard.count}, but "
                             f"{result.shares[next(iter(result.shares))]} is of {result.count}")
        result.count = shard.count
        if shard.index in result.shares:
            raise ShardError(f"share {shard} given twice: {result.shares[shard.index]} and {path}")
        result.shares[shard.index] = path
        for rec in records:
            key = image_key(rec.path)
            if key in seen:
                raise ShardError(f"{rec.path} is in both {seen[key]} and {path} (overlapping "
                                 "shares: were they run with different N or inputs?)")
            seen[key] = path
        result.records += records
        if records or fmt != "json":  # an empty share (more shares than images) ran no check
            summaries.append(summary if fmt == "json" else None)
    result.missing = [k for k in range(1, result.count + 1) if k not in result.shares]
    if result.missing and not allow_missing:
        raise ShardError(f"missing share(s) {', '.join(f'{k}/{result.count}' for k in result.missing)}"
                         f" ({len(result.shares)} of {result.count} given)")
    alignment = _agreed_alignment(summaries)  # every share aligns on the same draw
    rates = class_rates if class_rates is not None else _agreed(  # one model's: the same
        [None if s is None else s.get("domain_shift") or {} for s in summaries], "class_rates")
    result.summary = summarize(result.records, class_rates=rates,
                               aligned=bool(alignment and alignment.get("applied")))
    result.summary["alignment"] = alignment
    for key in ("review_rate", "review_threshold"):
        result.summary[key] = _agreed(summaries, key)
    precisions = sorted({r.precision for r in result.records if r.precision})
    result.summary["precision"] = ",".join(precisions) or None
    result.summary["shards"] = {"count": result.count, "merged": sorted(result.shares),
                                "missing": result.missing}
    return result
