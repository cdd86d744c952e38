"""Atomic file writes: write a temporary file next to the target, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the previous
version (or nothing) in place. Temporary files get ordinary permissions
(``0666 & ~umask``), not ``mkstemp``'s 0600, and are named
``.<name>.<pid>.<random>.tmp``; :func:`clean_stale_temps` removes those whose
process is gone (left by a hard kill). Text is written as UTF-8, with file
names that are not valid UTF-8 written back as their original bytes
(``surrogateescape``). An ``OSError`` while writing (full disk, file size
limit) names the file. Writes go through symbolic links (the link stays, its
target is replaced) and keep an existing file's permissions; a folder, a
device or a pipe is refused (:func:`output_target`), never replaced by a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def output_target(path) -> Path:
    """The file a write to ``path`` replaces: ``path`` with symbolic links resolved.

    Raises ``ValueError`` for an empty path, ``IsADirectoryError`` for a folder,
    ``NotADirectoryError`` when a folder on the way is a file, and ``OSError``
    (``EINVAL``) for an existing file that is not a regular one (a device such as
    ``/dev/null``, a pipe): replacing it would put a plain file in its place. Each
    error names ``path`` (or the file in the way)."""
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError("an output path is empty")
    real = Path(os.path.realpath(text))
    if Path(text).name in ("", ".", "..") or real.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(text))
    if real.exists() and not real.is_file():
        raise OSError(errno.EINVAL, "not a regular file (a device or a pipe): give a file path",
                      str(text))
    parent = _nearest_existing(real.parent)
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(parent))
    return real


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or the nearest of its parents that exists (what a write would create
    folders in)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path) -> Path:
    """:func:`output_target` of ``path``, and ``PermissionError`` naming ``path`` when
    its folder (or the nearest one that exists) cannot be written: checked before a
    long job rather than after it."""
    real = output_target(path)
    parent = _nearest_existing(real.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write in {parent}", os.fspath(path))
    return real


def file_mode(path) -> int:
    """The permissions a new version of ``path`` gets: the existing file's, else
    ``0666 & ~umask``."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def temp_file_next_to(path, mode: str = "w", like=None):
    """``(file object, temp path)``: an open temporary file in ``path``'s folder, with
    the permissions of ``like`` (default ``path``; :func:`file_mode`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    os.chmod(tmp, file_mode(path if like is None else like))
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
    """Context manager: a file that replaces ``path`` (:func:`output_target`: through a
    symbolic link) on a clean exit and vanishes on error."""
    path = output_target(path)
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
