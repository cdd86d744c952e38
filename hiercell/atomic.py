"""Atomic file writes: write a temporary file next to the target, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the previous
version (or nothing) in place. Temporary files get ordinary permissions
(``0666 & ~umask``), not ``mkstemp``'s 0600, and are named
``.<name>.<pid>.<random>.tmp``; :func:`clean_stale_temps` removes those whose
process is gone (left by a hard kill). Text is written as UTF-8, with file
names that are not valid UTF-8 written back as their original bytes
(``surrogateescape``). An ``OSError`` while writing (full disk, file size
limit) names the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise named_error(exc, path) from None
    os.chmod(tmp, 0o666 & ~_UMASK)
    if "b" in mode:
        return os.fdopen(fd, mode), Path(tmp)
    return os.fdopen(fd, mode, encoding="utf-8", errors="surrogateescape", newline=""), Path(tmp)


def named_error(exc: OSError, path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (a failed ``write`` names
    no file: 'File too large', 'No space left on device')."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def fsync_file(fh) -> None:
    """Flush ``fh`` and ask the OS to put it on disk."""
    fh.flush()
    os.fsync(fh.fileno())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def clean_stale_temps(path, older_than: float = 3600.0) -> list:
    """Remove the temporary files of ``path`` (``.<name>.<pid>.*.tmp``) whose process no
    longer runs, and unnamed ones older than ``older_than`` seconds; returns them."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        tag = name[len(prefix):].split(".", 1)[0]
        tmp = path.parent / name
        try:
            if tag.isdigit():
                if int(tag) == os.getpid() or _alive(int(tag)):
                    continue
            elif time.time() - tmp.stat().st_mtime < older_than:
                continue
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """Context manager: a file that replaces ``path`` on a clean exit and vanishes on error."""
    fh, tmp = temp_file_next_to(path, mode)
    try:
        try:
            with fh:
                yield fh
                fsync_file(fh)
            os.replace(tmp, path)
        except OSError as exc:
            raise named_error(exc, path) from None
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
