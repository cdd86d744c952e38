"""File digests, JSON text of objects that may hold NumPy values, and file names as
CSV cells and on a terminal (one copy of each).

**CSV cells** (:func:`csv_cell` / :func:`from_csv_cell`, reversible):

* a text cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return -- which a spreadsheet would run as a formula -- is written with a
  leading ``'`` (the OWASP CSV-injection advice); so is a cell that itself
  begins with ``'`` or ``fs:``, so that reading strips exactly one;
* a file name that is not valid UTF-8 (POSIX names are bytes; Python holds the
  undecodable ones as lone surrogates, ``os.fsdecode``) is written as ``fs:``
  followed by its bytes percent-encoded (``urllib.parse.quote``, ``/``
  kept), e.g. ``fs:/data/caf%E9.jpg`` for the Latin-1 name ``/data/café.jpg``.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
import urllib.parse
from pathlib import Path

import numpy as np


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_jsonable(obj):
    """Plain-JSON copy: numpy -> Python, tuples/sets -> lists, NaN/inf -> None,
    paths -> str, dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(obj, indent: int | None = 1) -> str:
    """``obj`` as JSON text (via :func:`to_jsonable`), newline-terminated."""
    return json.dumps(to_jsonable(obj), indent=indent) + "\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_BYTES_PREFIX = "fs:"


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def csv_cell(value):
    """``value`` as written to a CSV cell: text escaped (see the module doc), the rest as is."""
    if not isinstance(value, str):
        return value
    if _has_surrogates(value):
        raw = value.encode("utf-8", "surrogateescape")
        return _BYTES_PREFIX + urllib.parse.quote(raw, safe="/")
    if value.startswith(_FORMULA_START + ("'", _BYTES_PREFIX)):
        return "'" + value
    return value


def from_csv_cell(value):
    """The text :func:`csv_cell` was given."""
    if not isinstance(value, str):
        return value
    if value.startswith("'"):
        return value[1:]
    if value.startswith(_BYTES_PREFIX):
        raw = urllib.parse.unquote_to_bytes(value[len(_BYTES_PREFIX):])
        return raw.decode("utf-8", "surrogateescape")
    return value


def display(text) -> str:
    """``text`` (e.g. a file name) safe to print: control and format characters (terminal
    escape codes, bidirectional overrides) and undecodable bytes are shown as ``\\xNN`` /
    ``\\uNNNN`` escapes."""
    text = str(text)
    out = []
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)
