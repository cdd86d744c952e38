"""File digests and JSON text of objects that may hold NumPy values (one copy of each)."""

from __future__ import annotations

import hashlib
import json
import math
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
