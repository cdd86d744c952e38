"""Datasets as lists of :class:`Sample`: readers for folders and CSV manifests, and splits.

Readers never open the images (the loader reports bad files later, one by
one); they only find files and map labels with :mod:`hiercell.taxonomy`.
Labels outside the taxonomy are kept with ``main=None`` so that they can be
counted (:func:`summarize`) and excluded deliberately.

Supported layouts:

* PBC-style: the label is the file-name prefix (``BNE_1234.jpg``), at any depth
  (:func:`read_pbc_folder`);
* class-per-folder: ``root/<label>/**/<image>`` (:func:`read_class_folders`),
  e.g. Raabin-WBC or Munich AML-Cytomorphology_LMU;
* a CSV manifest ``path,label[,split]`` such as the PBC ``splits.csv``
  ``path,folder,label,split`` (:func:`read_manifest`).

:func:`read_dataset` picks the reader from what it is given.
"""

from __future__ import annotations

import csv
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .fileutil import display
from .io import image_key, list_images
from .taxonomy import fine_label, map_label, pbc_label_from_filename, Label

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One image: its path, the label as written in the dataset, its mapped classes."""

    path: Path
    raw_label: str
    main: str | None
    sub: str | None
    split: str | None = None
    group: str | None = None  # e.g. the patient or slide, from a manifest's group column

    @property
    def label(self) -> Label | None:
        """The mapped :class:`~hiercell.taxonomy.Label`, ``None`` if unmapped."""
        return Label(self.main, self.sub) if self.main is not None else None

    @property
    def fine(self) -> str | None:
        """The end-to-end class (one of FINE_CLASSES) or ``None``."""
        return fine_label(self.label)


def make_sample(path, raw_label: str, source: str = "auto", split: str | None = None,
                group: str | None = None) -> Sample:
    """A :class:`Sample` with ``raw_label`` mapped through ``source``'s table."""
    label = map_label(raw_label, source)
    return Sample(Path(path), raw_label,
                  label.main if label else None, label.sub if label else None, split, group)


# --------------------------------------------------------------------------- #
# Readers

def read_pbc_folder(root) -> list[Sample]:
    """Every image under ``root`` (recursively), labelled by its file-name prefix.

    A file without a ``PREFIX_`` name gets ``raw_label=""`` and ``main=None``.
    """
    root = _existing_dir(root)
    return [make_sample(p, pbc_label_from_filename(p.name) or "", "pbc")
            for p in list_images(root, recursive=True)]


def read_class_folders(root, source: str = "auto") -> list[Sample]:
    """Images in ``root/<class>/`` (sub-folders included), labelled by ``<class>``.

    ``source`` selects the label table: ``"raabin"`` (``Neutrophil``, ...),
    ``"munich"`` (``NGS``, ``MYB``, ...), ``"pbc"`` or ``"auto"``. Images lying
    directly in ``root`` are ignored (and logged); hidden folders are skipped.
    """
    root = _existing_dir(root)
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        samples += [make_sample(p, folder.name, source)
                    for p in list_images(folder, recursive=True)]
    loose = list_images(root, recursive=False)
    if loose:
        log.warning("%s: %d image(s) outside class folders ignored", root, len(loose))
    return samples


def read_manifest(csv_path, root=None, source: str = "auto") -> list[Sample]:
    """Samples listed in a CSV file with a header: ``path,label[,split][,group]``.

    ``group`` (optional: patient, slide, ...) keeps related cells together in
    cross-validation (``hiercell adapt``). Other columns are ignored, so the PBC ``splits.csv``
    (``path,folder,label,split``) is read as is. Relative paths are resolved
    against ``root``, or against the CSV's folder when ``root`` is None. Splits
    must be train/val/test (``validation``, ``valid``, ``dev`` -> val) or empty.
    Files are not checked for existence. A row that repeats an earlier one (the same
    image, :func:`hiercell.io.image_key`, label, split and group) is dropped, with a warning: a repeated cell would
    count twice in a figure and sit on both sides of a cross-validation. Raises
    ``ValueError`` with the line number on a malformed row, on a path listed again
    with another label, split or group, and on a file that is not UTF-8 text.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    try:
        return _read_manifest_rows(csv_path, base, source)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "save it as UTF-8") from None


def _read_manifest_rows(csv_path: Path, base: Path, source: str) -> list[Sample]:
    samples, first, repeats = [], {}, []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        missing = [c for c in ("path", "label") if c not in fields]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}"
                             f" (header must contain path,label[,split])")
        for row in reader:
            line = reader.line_num
            rel = (row.get(fields["path"]) or "").strip()
            if not rel:
                raise ValueError(f"{csv_path}:{line}: empty path")
            label = (row.get(fields["label"]) or "").strip()
            split = _parse_split(row.get(fields["split"]) if "split" in fields else None,
                                 f"{csv_path}:{line}")
            path = Path(rel)
            group = (row.get(fields["group"]) or "").strip() or None if "group" in fields else None
            path = path if path.is_absolute() else base / path
            key = image_key(path)
            if key in first:
                line0, row0 = first[key]
                if row0 != (label, split, group):
                    raise ValueError(f"{csv_path}:{line}: {display(path)} is listed again with "
                                     f"{_row_text(label, split, group)} (line {line0}: "
                                     f"{_row_text(*row0)})")
                repeats.append(line)
                continue
            first[key] = (line, (label, split, group))
            samples.append(make_sample(path, label, source, split, group))
    if repeats:
        log.warning("%s: %d row(s) repeat an earlier row and were left out (line%s %s)",
                    csv_path, len(repeats), "s" if len(repeats) > 1 else "",
                    ", ".join(map(str, repeats[:5])) + (", ..." if len(repeats) > 5 else ""))
    return samples


def _row_text(label, split, group) -> str:
    return ", ".join([f"label {label!r}"] + ([f"split {split!r}"] if split else [])
                     + ([f"group {group!r}"] if group else []))


def read_dataset(path, split_csv=None, source: str | None = None) -> list[Sample]:
    """Read a dataset from a CSV manifest or a folder, choosing the reader.

    * ``path`` is a file: a manifest (:func:`read_manifest`).
    * ``path`` is a folder: PBC-style if ``source == "pbc"``, or if ``source``
      is None and at least 90% of the file-name prefixes are PBC labels; class folders
      otherwise (:func:`read_class_folders` with ``source`` or ``"auto"``).
      Splits then come from ``split_csv`` (a CSV with ``path`` and ``split``
      columns, paths relative to ``path``) or, if not given, from
      ``path/splits.csv`` when it exists. Images the CSV does not list get
      ``split=None``. A manifest with ``split_csv`` is refused (it has a split column).

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError``
    if it holds no images. Unmapped labels are logged (see :func:`summarize`).
    """
    path = Path(path)
    if path.is_file():
        if split_csv is not None:
            raise ValueError(f"{path}: a manifest gives its splits in its own 'split' column; "
                             f"a split file ({split_csv}) applies to a folder of images")
        samples = read_manifest(path, source=source or "auto")
    elif path.is_dir():
        if source is None:
            source = "pbc" if _looks_pbc(path) else "auto"
        samples = read_pbc_folder(path) if source == "pbc" else read_class_folders(path, source)
        if split_csv is None and (path / "splits.csv").is_file():
            split_csv = path / "splits.csv"
        if split_csv is not None:
            samples = _apply_split_csv(samples, path, Path(split_csv))
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not samples:
        raise ValueError(f"{path}: no images found")
    unmapped = Counter(s.raw_label for s in samples if s.main is None)
    if unmapped:
        log.warning("%s: %d image(s) with labels outside the taxonomy: %s", path,
                    sum(unmapped.values()),
                    ", ".join(f"{k or '<none>'} ({v})" for k, v in sorted(unmapped.items())))
    return samples


def summarize(samples) -> dict:
    """Counts: ``{"total", "main", "sub", "fine", "unmapped", "split"}``.

    ``main``/``sub``/``fine`` count mapped samples per class, ``unmapped``
    counts raw labels outside the taxonomy, ``split`` counts samples per split
    (``None`` for unassigned).
    """
    samples = list(samples)
    return {
        "total": len(samples),
        "main": dict(Counter(s.main for s in samples if s.main is not None)),
        "sub": dict(Counter(s.sub for s in samples if s.sub is not None)),
        "fine": dict(Counter(s.fine for s in samples if s.fine is not None)),
        "unmapped": dict(Counter(s.raw_label for s in samples if s.main is None)),
        "split": dict(Counter(s.split for s in samples)),
    }


# --------------------------------------------------------------------------- #
# Splits

def stratified_split(labels, fractions=(0.7, 0.1, 0.2), seed: int = 0,
                     keys=None) -> np.ndarray:
    """Assign each item to ``"train"``, ``"val"`` or ``"test"``, stratified by label.

    Within each label the items are ordered by ``keys`` (e.g. file paths;
    default: their position), shuffled by a generator seeded from ``seed`` and
    the label, and cut by ``fractions`` (rounded by largest remainder). With
    ``keys`` the result does not depend on the input order, and a label's
    assignment does not depend on the other labels. Every label with at least
    as many items as there are non-zero fractions gets one in each such part.
    Returns an array of strings, one per item.
    """
    labels = [str(x) for x in labels]
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(labels)
    if keys is None:
        keys = range(n)
    keys = list(keys)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} labels")
    if len(set(keys)) != n:
        raise ValueError("keys must be unique")

    out = np.empty(n, dtype="<U5")
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    for lab, idx in groups.items():
        idx = sorted(idx, key=lambda i: keys[i])
        rng = np.random.default_rng([seed, zlib.crc32(lab.encode("utf-8"))])
        order = [idx[j] for j in rng.permutation(len(idx))]
        counts = _allocate(len(idx), frac)
        out[order] = np.repeat(np.array(SPLITS), counts)
    return out


def assign_splits(samples, fractions=(0.7, 0.1, 0.2), seed: int = 0,
                  overwrite: bool = False) -> list[Sample]:
    """Samples with ``split`` set by :func:`stratified_split` on their raw labels.

    Samples that already have a split keep it unless ``overwrite``; the
    others are split among themselves, keyed by path.
    """
    samples = list(samples)
    todo = [i for i, s in enumerate(samples) if overwrite or s.split is None]
    if todo:
        parts = stratified_split([samples[i].raw_label for i in todo], fractions, seed,
                                 keys=[samples[i].path.as_posix() for i in todo])
        for i, part in zip(todo, parts):
            samples[i] = replace(samples[i], split=str(part))
    return samples


def subset(samples, split) -> list[Sample]:
    """The samples whose split is ``split`` (a name or a collection of names)."""
    wanted = {split} if split is None or isinstance(split, str) else set(split)
    return [s for s in samples if s.split in wanted]


def limit_per_class(samples, n, seed=0) -> list[Sample]:
    """At most ``n`` samples per (raw label, split), chosen with ``seed`` (``n`` falsy: all)."""
    if not n:
        return list(samples)
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.raw_label, s.split), []).append(i)
    keep = sorted(i for idx in groups.values()
                  for i in (rng.permutation(idx)[:n] if len(idx) > n else idx))
    return [samples[i] for i in keep]


def load_samples(data, split_csv=None, seed: int = 0, limit: int | None = None) -> list[Sample]:
    """The mapped samples of dataset ``data``, each with a split (the CSV's, else a seeded
    stratified 70/10/20 one), at most ``limit`` per label and split.

    Raises ``FileNotFoundError`` / ``ValueError`` as :func:`read_dataset` does.
    """
    samples = [s for s in read_dataset(data, split_csv=split_csv) if s.main is not None]
    return limit_per_class(assign_splits(samples, seed=seed), limit, seed)


# --------------------------------------------------------------------------- #
# Helpers

def _allocate(n: int, frac: np.ndarray) -> np.ndarray:
    """Split ``n`` items by ``frac``: largest remainder, then >= 1 per non-zero part."""
    raw = n * frac
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    if rest:
        # Empty parts first, then largest remainder, then larger fraction.
        order = sorted(range(3), key=lambda k: (counts[k] > 0 or frac[k] == 0,
                                                -round(raw[k] - counts[k], 9), -frac[k], k))
        for k in order[:rest]:
            counts[k] += 1
    positive = np.flatnonzero(frac > 0)
    if n >= len(positive):
        for k in positive:
            if counts[k] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[k] += 1
    return counts


def _parse_split(value, where: str) -> str | None:
    value = (value or "").strip().lower()
    if not value:
        return None
    if value not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {value!r} (expected train, val or test)")
    return _SPLIT_ALIASES[value]


def _existing_dir(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    return root


def _looks_pbc(root: Path, min_fraction: float = 0.9) -> bool:
    """True if most images under ``root`` have a PBC label as file-name prefix."""
    images = list_images(root, recursive=True)
    hits = sum(map_label(pbc_label_from_filename(p.name), "pbc") is not None for p in images)
    return bool(images) and hits >= min_fraction * len(images)


def _apply_split_csv(samples, root: Path, split_csv: Path) -> list[Sample]:
    """Set each sample's split from a CSV with ``path`` and ``split`` columns."""
    splits = {}
    with open(split_csv, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        if "path" not in fields or "split" not in fields:
            raise ValueError(f"{split_csv}: a split file needs 'path' and 'split' columns")
        for row in reader:
            rel = Path((row.get(fields["path"]) or "").strip())
            key = (rel if rel.is_absolute() else root / rel).as_posix()
            splits[key] = _parse_split(row.get(fields["split"]), f"{split_csv}:{reader.line_num}")
    out = [replace(s, split=splits.get(s.path.as_posix())) for s in samples]
    n_missing = sum(s.split is None for s in out)
    if out and n_missing == len(out):
        # nothing matched: the CSV's paths are probably relative to another folder;
        # falling back to a random split could leak test images into training
        raise ValueError(f"{split_csv}: none of its paths matches an image under {root} "
                         f"(paths are read relative to {root})")
    if n_missing:
        log.warning("%s: %d of %d image(s) have no split", split_csv, n_missing, len(out))
    return out
