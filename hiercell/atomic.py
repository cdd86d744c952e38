"""Atomic file writes: write a temporary file next to the target, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the previous
version (or nothing) in place. Temporary files get ordinary permissions
(``0666 & ~umask``), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def temp_file_next_to(path, mode: str = "w"):
    """``(file object, temp path)``: an open temporary file in ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)
    if "b" in mode:
        return os.fdopen(fd, mode), Path(tmp)
    return os.fdopen(fd, mode, encoding="utf-8", newline=""), Path(tmp)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """Context manager: a file that replaces ``path`` on a clean exit and vanishes on error."""
    fh, tmp = temp_file_next_to(path, mode)
    try:
        with fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)
