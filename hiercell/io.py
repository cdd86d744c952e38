"""Image loading: any supported file -> RGB ``uint8`` array of shape ``(H, W, 3)``.

Decoding is done by OpenCV (``cv2.imdecode`` on the file's bytes, so non-ASCII
paths work everywhere). Before decoding, the file header is read to identify
the format, reject images with too many pixels (decompression bombs) and
detect truncated JPEG/PNG/BMP/WebP files, which some decoders would otherwise
return half grey: a JPEG needs its end-of-image marker (``FF D9``) after the
start of scan (bytes after it, such as padding, are ignored, as libjpeg does),
a PNG its ``IEND`` chunk, a BMP/WebP the data size its header gives; a cut TIFF
makes libtiff fail. **Not detected**: bytes corrupted *inside* a JPEG's
compressed data (the file keeps its length and markers) -- libjpeg only prints
a "Corrupt JPEG data" warning on stderr, which OpenCV's API does not report
(checked with OpenCV 5.0), so such an image decodes with damaged blocks. (A
PNG's chunk checksums make libpng fail on such damage.) A **multi-page TIFF**
is refused with its page count, since OpenCV would decode only the first page
(not counted: reduced-resolution previews after the image, flagged so or at most
half its size, as Exif thumbnails are; directories that hold no image; and a
broken link after page 1, which libtiff ignores too). Likewise an
**animated** PNG (APNG), WebP or GIF of more than one frame is refused with its
frame count, since OpenCV would decode only one frame; a GIF is read to its
trailer, so a cut one is reported as truncated. Conversions:

* grayscale and palette images -> three identical/looked-up channels;
* 16-bit images -> 8-bit by rounding ``v * 255 / 65535`` (full range kept,
  not truncated); floating-point images are taken as ``[0, 1]`` and clipped;
* an alpha channel is composited onto a **white** background (a transparent
  pixel becomes white, like the bright background of a blood smear) and then
  dropped;
* the orientation tag is applied, so the array is upright as an image viewer
  shows it. For JPEG (EXIF) and PNG (``eXIf`` chunk) this is done here, from
  the header, because OpenCV skips it when decoding with ``IMREAD_UNCHANGED``
  (which is needed to keep the alpha channel and the 16-bit depth); for TIFF
  OpenCV's decoder applies the tag itself (checked for all eight values, 8 and
  16 bit, with OpenCV 5.0). WebP/AVIF orientation metadata is ignored.

Every failure raises :class:`ImageLoadError` with the path and a reason.

**Bounded memory per image.** The file size is checked before the file is
read (``max_bytes``), the pixel count from the header before decoding
(``max_pixels``); a JPEG much larger than ``max_side`` is decoded at 1/2, 1/4
or 1/8 scale by libjpeg (``cv2.IMREAD_REDUCED_COLOR_*``), and any image larger
than ``max_side`` is scaled down (aspect kept, ``INTER_AREA``) before the
colour conversion. Decoding threads share a byte budget
(:data:`DECODE_BUDGET_BYTES`, estimated from the header), so several huge
images are never decoded at once. **Degenerate images** (a side under
:data:`MIN_SIDE` pixels, or sides more than :data:`MAX_ASPECT` to 1) are
refused with the reason.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from pathlib import Path

import cv2
import numpy as np

#: File name extensions treated as images by :func:`list_images` (lower case).
#: Files with other extensions (e.g. ``.heic``) still get a row, with the loader's reason
#: when OpenCV cannot decode them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib",
                    ".tif", ".tiff", ".webp", ".gif", ".jp2", ".j2k", ".avif",
                    ".heic", ".heif", ".pbm", ".pgm", ".ppm", ".pnm")

#: Default limit on ``width * height`` (50 megapixels, ~150 MB as RGB uint8).
DEFAULT_MAX_PIXELS = 50_000_000
#: Default limit on the file size, checked before the file is read (64 MiB).
DEFAULT_MAX_BYTES = 64 * 2**20
#: Decoded images with a longer side are scaled down to it (aspect ratio kept).
DEFAULT_MAX_SIDE = 1024
#: Smallest accepted image side, in pixels (the segmentation module's minimum too).
MIN_SIDE = 16
#: Largest accepted ratio of the longer to the shorter side.
MAX_ASPECT = 10.0
#: Bytes that concurrent decodes may hold together (estimated from the headers).
DECODE_BUDGET_BYTES = 512 * 2**20


class ImageLoadError(ValueError):
    """A file could not be read as an image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_image(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = DEFAULT_MAX_BYTES,
               max_side: int | None = DEFAULT_MAX_SIDE, min_side: int | None = MIN_SIDE,
               max_aspect: float | None = MAX_ASPECT) -> np.ndarray:
    """Read ``path`` as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Supports JPEG, PNG, BMP, TIFF, WebP and GIF (and whatever else the installed
    OpenCV decodes). Files over ``max_bytes`` are refused before they are
    read, images with more than ``max_pixels`` pixels before they are decoded;
    images with a side over ``max_side`` are scaled down to it; images with a
    side under ``min_side`` or an aspect ratio over ``max_aspect`` are refused
    (``None`` disables each). Raises :class:`ImageLoadError` on any failure.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageLoadError(path, "broken symbolic link (its target does not exist)") from None
        raise ImageLoadError(path, "no such file") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot access file ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(path, "not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageLoadError(path, f"file too large: {st.st_size:,} bytes (limit {max_bytes:,});"
                                   " not read")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1 if max_bytes is not None else -1)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror})") from None
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise ImageLoadError(path, f"file too large: over {max_bytes:,} bytes")
    return decode_image(data, path, max_pixels=max_pixels, max_side=max_side,
                        min_side=min_side, max_aspect=max_aspect)


def try_load_image(path, **kwargs):
    """``(rgb, None)``, or ``(None, reason)`` when ``path`` cannot be read as an image.

    The one "load an image or say why not" helper: a batch job records the
    reason and goes on with the next file.
    """
    try:
        return load_image(path, **kwargs), None
    except ImageLoadError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a batch
        return None, f"cannot read image ({type(exc).__name__}: {exc})"


def decode_image(data: bytes, path="<bytes>", *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_side: int | None = DEFAULT_MAX_SIDE, min_side: int | None = MIN_SIDE,
                 max_aspect: float | None = MAX_ASPECT) -> np.ndarray:
    """Decode the bytes of an image file to RGB ``uint8`` ``(H, W, 3)``.

    ``path`` is only used in error messages. See :func:`load_image`.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    if len(data) == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    info = _probe(data, path)
    fmt = info.fmt or "image"
    flags, scale = cv2.IMREAD_UNCHANGED, 1
    if info.size is not None:
        _check_pixels(path, *info.size, max_pixels)
        check_shape(path, info.size[1], info.size[0], min_side, max_aspect)
        if info.fmt == "JPEG" and max_side:  # libjpeg decodes at 1/2, 1/4, 1/8 directly
            for scale, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2), (1, None)):
                if min(info.size) // scale >= max(min_side or 1, 1) \
                        and max(info.size) // scale >= max_side:
                    break
            if flag is not None:
                flags = flag | cv2.IMREAD_IGNORE_ORIENTATION
    need = _decode_bytes_estimate(info, scale)
    with _DECODE_BUDGET.hold(need):
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error as exc:
            raise ImageLoadError(path, f"cannot decode {fmt} data ({_cv_message(exc)})") from None
        if img is None:
            if info.fmt is None:
                raise ImageLoadError(path, "not an image: unrecognised file format"
                                           f" (starts with {bytes(data[:8])!r})")
            raise ImageLoadError(path, f"corrupt or unsupported {fmt} data (decoder failed)")
        if info.size is None:
            _check_pixels(path, img.shape[1], img.shape[0], max_pixels)
            check_shape(path, img.shape[0], img.shape[1], min_side, max_aspect)
        img = _shrink(img, max_side)
        rgb = _to_rgb8(img, path)
    return _apply_orientation(rgb, info.orientation)


def check_shape(path, height: int, width: int, min_side: int | None = MIN_SIDE,
                max_aspect: float | None = MAX_ASPECT) -> None:
    """Raise :class:`ImageLoadError` for a degenerate image size: a side under
    ``min_side`` pixels or sides more than ``max_aspect`` to 1."""
    if min_side is not None and min(height, width) < min_side:
        raise ImageLoadError(path, f"image too small: {width}x{height} pixels (need at least "
                                   f"{min_side}x{min_side})")
    if max_aspect is not None and max(height, width) > max_aspect * max(min(height, width), 1):
        raise ImageLoadError(path, f"degenerate image: {width}x{height} pixels, aspect ratio "
                                   f"over {max_aspect:g}:1")


def _shrink(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """``img`` (any depth/channels) scaled down so that its longer side is ``max_side``."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if img.dtype not in (np.uint8, np.uint16, np.float32) or img.ndim == 3 and img.shape[2] > 4:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _decode_bytes_estimate(info, scale: int) -> int:
    """Upper bound of the memory a decode of ``info``'s image holds (16-bit RGBA, and the
    colour conversion); 64 MiB when the header gives no size."""
    if info.size is None:
        return 64 * 2**20
    w, h = info.size
    per_pixel = 3 if info.fmt == "JPEG" else 8
    return int(w * h * per_pixel / (scale * scale)) + (1 << 20)


class _ByteBudget:
    """Decoding threads hold estimated bytes from a shared budget; one image larger than the
    whole budget waits until it decodes alone."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self.cond = threading.Condition()

    def hold(self, n: int):
        budget = self

        class _Held:
            def __enter__(self_inner):
                self_inner.n = min(n, budget.total)
                with budget.cond:
                    while budget.used and budget.used + self_inner.n > budget.total:
                        budget.cond.wait()
                    budget.used += self_inner.n

            def __exit__(self_inner, *exc):
                with budget.cond:
                    budget.used -= self_inner.n
                    budget.cond.notify_all()
                return False

        return _Held()


_DECODE_BUDGET = _ByteBudget(DECODE_BUDGET_BYTES)


def image_key(path) -> str:
    """What "the same image" means everywhere (listing, results, ``--resume``): the
    absolute path with every symbolic link resolved. A symlink and its target are one
    image; a folder given relative and absolute is one folder."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def list_images(paths, recursive: bool = False, errors: list | None = None) -> list[Path]:
    """Image files named by ``paths`` (a path or an iterable of files and folders).

    Files given explicitly are kept whatever their extension (the loader will
    say if they are not images); folders contribute every entry whose
    extension is in :data:`IMAGE_EXTENSIONS` (any case) and is not a folder --
    broken symbolic links included, so that the loader names them --
    descending into sub-folders if ``recursive``. Hidden files and folders
    (name starting with ``.``, e.g. ``.DS_Store``) are skipped. Paths are made
    absolute (symbolic links kept as named); entries that are the same image
    (:func:`image_key`) are listed once, the first in sorted order. Returns a
    sorted list.

    A folder that cannot be read, or a symbolic link that loops back to a
    folder being listed, is appended to ``errors`` as ``(path, reason)`` when
    ``errors`` is a list (the rest is listed) and raises ``OSError``
    otherwise. Raises ``FileNotFoundError`` for a path that does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = {}

    def bad(path, reason, exc_type=OSError):
        if errors is None:
            raise exc_type(f"{path}: {reason}")
        errors.append((path, reason))

    for p in map(Path, paths):
        if p.is_dir():
            for f in _scan_dir(p, recursive, set(), bad):
                found.setdefault(image_key(f), f)
        elif p.exists() or p.is_symlink():
            found.setdefault(image_key(p), p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return sorted(found.values())


def _scan_dir(root: Path, recursive: bool, active: set, bad):
    try:
        st = os.stat(root)
        ident = (st.st_dev, st.st_ino)
        if ident in active:
            bad(root, "symbolic link loop (the folder contains itself); skipped")
            return
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        bad(root, f"cannot read folder ({exc.strerror or exc}); skipped")
        return
    active = active | {ident}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = root / entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop: ELOOP
            is_dir = False
        if is_dir:
            if recursive:
                yield from _scan_dir(path, recursive, active, bad)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            yield path


def check_rgb_image(rgb, what: str = "image") -> None:
    """The one check of an in-memory image: an RGB ``uint8`` array ``(H, W, 3)`` of a
    usable size (:func:`check_shape`). Raises ``TypeError``/``ValueError`` saying what is
    wrong (float images, NaN, 0x0, wrong channels...)."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"{what} must be an RGB uint8 numpy array (H, W, 3), "
                        f"got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        hint = (" (float images are not accepted: scale to 0-255 and convert with "
                ".astype(np.uint8))" if rgb.dtype.kind == "f" else "")
        raise ValueError(f"{what} must be RGB uint8, got dtype {rgb.dtype}{hint}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3), got {rgb.shape}")
    try:
        check_shape(what, rgb.shape[0], rgb.shape[1])
    except ImageLoadError as exc:
        raise ValueError(f"{what}: {exc.reason}") from None


# --------------------------------------------------------------------------- #
# Pixel conversion

def _to_rgb8(img: np.ndarray, path) -> np.ndarray:
    """OpenCV's BGR/BGRA/gray array of any depth -> RGB uint8 (H, W, 3)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ImageLoadError(path, f"unsupported channel layout {img.shape}")
    n = img.shape[2]
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    elif img.dtype in (np.float32, np.float64):
        scale = 1.0
    else:
        raise ImageLoadError(path, f"unsupported pixel type {img.dtype}")

    has_alpha = n in (2, 4)
    color = img[:, :, : n - 1] if has_alpha else img
    if has_alpha:
        # Composite onto white in [0, 1] floats: c * a + 1 * (1 - a).
        a = img[:, :, n - 1:].astype(np.float32) / np.float32(scale)
        c = color.astype(np.float32) / np.float32(scale)
        out = np.clip(c * a + (1.0 - a), 0.0, 1.0) * 255.0
        color = np.rint(out).astype(np.uint8)
    elif img.dtype == np.uint16:
        # round(v * 255 / 65535) == round(v / 257), exactly, in integers.
        color = ((color.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        color = np.rint(np.clip(np.nan_to_num(color), 0.0, 1.0) * 255.0).astype(np.uint8)

    if color.shape[2] == 1:
        return cv2.cvtColor(color, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(color, cv2.COLOR_BGR2RGB)


def _apply_orientation(rgb: np.ndarray, orientation: int | None) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1..8) upright."""
    if orientation is None or orientation == 1 or not 2 <= orientation <= 8:
        return rgb
    ops = {
        2: lambda a: a[:, ::-1],                    # mirror horizontal
        3: lambda a: a[::-1, ::-1],                 # rotate 180
        4: lambda a: a[::-1, :],                    # mirror vertical
        5: lambda a: a.transpose(1, 0, 2),          # transpose
        6: lambda a: np.rot90(a, -1),               # rotate 90 clockwise
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # transverse
        8: lambda a: np.rot90(a, 1),                # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](rgb))


def _check_pixels(path, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"invalid image size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            path, f"image too large: {width}x{height} = {width * height:,} pixels"
                  f" (limit {max_pixels:,})")


def _cv_message(exc: cv2.error) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else "OpenCV error"


# --------------------------------------------------------------------------- #
# Header probing: format, size and orientation without decoding the pixels

class _Info:
    __slots__ = ("fmt", "size", "orientation")

    def __init__(self, fmt=None, size=None, orientation=None):
        self.fmt = fmt                  # "JPEG", "PNG", ... or None if unknown
        self.size = size                # (width, height) or None if unknown
        self.orientation = orientation  # EXIF orientation 1..8 or None


def _probe(data: bytes, path) -> _Info:
    head = bytes(data[:16])
    try:
        if head.startswith(b"\xff\xd8"):
            return _probe_jpeg(data, path)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _probe_png(data, path)
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _probe_tiff(data, path)
        if head.startswith(b"BM"):
            return _probe_bmp(data, path)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _probe_webp(data, path)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _probe_gif(data, path)
    except (struct.error, IndexError, OverflowError):  # overflow: an offset of 2**63 or more
        raise ImageLoadError(path, "truncated or corrupt image header") from None
    return _Info()


def _probe_jpeg(data: bytes, path) -> _Info:
    n = len(data)
    pos, size, orientation = 2, None, None
    while True:
        # Markers are 0xFF (possibly repeated as fill) then a code.
        while pos < n and data[pos] != 0xFF:
            pos += 1  # tolerate stray bytes between segments
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise ImageLoadError(path, "truncated JPEG file (no image data)")
        code = data[pos]
        pos += 1
        if code == 0xD8 or 0xD0 <= code <= 0xD7 or code == 0x01:
            continue  # stand-alone markers
        if code == 0xD9:
            raise ImageLoadError(path, "corrupt JPEG file (no image data before end marker)")
        if pos + 2 > n:
            raise ImageLoadError(path, "truncated JPEG file (incomplete header)")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise ImageLoadError(path, "truncated JPEG file (incomplete header)")
        seg = pos + 2
        if code == 0xE1 and orientation is None and data[seg:seg + 6] == b"Exif\x00\x00":
            try:
                _, orientation = _read_tiff(data[seg + 6:pos + length], 0, want_size=False)
            except (struct.error, IndexError, OverflowError, ValueError):
                orientation = None  # a broken EXIF block does not break the image
        elif code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                      0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF) and size is None:
            height, width = struct.unpack_from(">HH", data, seg + 1)
            size = (width, height) if height else None  # 0 = defined later (DNL)
        elif code == 0xDA:  # start of scan: entropy-coded data follows
            if data.find(b"\xff\xd9", pos + length) < 0:
                raise ImageLoadError(path, "truncated JPEG file (no end-of-image marker)")
            return _Info("JPEG", size, orientation)
        pos += length


#: How the animated formats are refused (after "holds N frames").
_ONE_IMAGE = "hiercell reads one cell image per file (save each frame as its own file)"


def _probe_png(data: bytes, path) -> _Info:
    """Size and EXIF orientation; the file must end with ``IEND``. An animated PNG (an
    ``acTL`` chunk before the first ``IDAT``) of more than one frame is refused, and so
    is one whose frame is stored apart (``fdAT``) from the default image, since OpenCV
    decodes only the default image."""
    n, pos = len(data), 8
    size = orientation = frames = None
    idat = fdat = False
    while True:
        if pos + 8 > n:
            raise ImageLoadError(path, "truncated PNG file (no IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if size is None and ctype != b"IHDR":
            raise ImageLoadError(path, "corrupt PNG file (IHDR chunk missing)")
        if ctype == b"IHDR":
            if pos + 16 > n:
                raise ImageLoadError(path, "truncated PNG file (incomplete header)")
            size = struct.unpack_from(">II", data, pos + 8)
        elif ctype == b"eXIf" and pos + 8 + length <= n:
            try:
                _, orientation = _read_tiff(data[pos + 8:pos + 8 + length], 0, want_size=False)
            except (struct.error, IndexError, OverflowError, ValueError):
                orientation = None
        elif ctype == b"acTL" and not idat and length >= 8 and pos + 12 <= n:
            (frames,) = struct.unpack_from(">I", data, pos + 8)
        elif ctype == b"IDAT":
            idat = True
        elif ctype == b"fdAT":
            fdat = True
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if frames is not None and frames > 1:
        raise ImageLoadError(path, f"animated PNG: holds {frames:,} frames; {_ONE_IMAGE}")
    if frames is not None and fdat:
        raise ImageLoadError(path, "animated PNG: its frame is stored apart from the default"
                                   f" image, which OpenCV would read instead; {_ONE_IMAGE}")
    return _Info("PNG", size, orientation)


def _probe_bmp(data: bytes, path) -> _Info:
    if len(data) < 26:
        raise ImageLoadError(path, "truncated BMP file (incomplete header)")
    (offset,) = struct.unpack_from("<I", data, 10)
    (hsize,) = struct.unpack_from("<I", data, 14)
    if hsize == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        if len(data) < 34:
            raise ImageLoadError(path, "truncated BMP file (incomplete header)")
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    width, height = abs(width), abs(height)
    if compression in (0, 3, 6):  # uncompressed / bit fields: size is known
        row = ((bpp * width + 31) // 32) * 4
        if offset + row * height > len(data):
            raise ImageLoadError(path, "truncated BMP file (pixel data incomplete)")
    return _Info("BMP", (width, height))


def _probe_webp(data: bytes, path) -> _Info:
    """Size from the first chunk; the file must hold the RIFF size. An animated WebP (the
    ``VP8X`` animation flag, or ``ANIM``/``ANMF`` chunks) of more than one frame is refused
    with its count of ``ANMF`` chunks, since OpenCV decodes only the first frame."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 > len(data):
        raise ImageLoadError(path, "truncated WebP file")
    chunk = bytes(data[12:16])
    size = None
    if chunk in (b"VP8X", b"ANIM", b"ANMF"):  # an extended file: may be animated
        flagged = chunk == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)
        _check_webp_frames(data, riff_size + 8, path, flagged)
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        size = (w, h)
    elif chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    elif chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", data, 26)
        size = (w & 0x3FFF, h & 0x3FFF)
    return _Info("WebP", size)


def _check_webp_frames(data: bytes, end: int, path, flagged: bool) -> None:
    """Walk the chunks of an extended WebP (up to byte ``end``); if it is animated (the
    animation flag, ``flagged``, or ``ANIM``/``ANMF`` chunks), refuse it unless it holds
    exactly one frame (``ANMF`` chunk)."""
    pos, frames, animated, cut = 12, 0, flagged, False
    while pos + 8 <= end:
        ctype, length = struct.unpack_from("<4sI", data, pos)
        if pos + 8 + length > end:
            cut = True
            break
        animated = animated or ctype in (b"ANIM", b"ANMF")
        if ctype == b"ANMF":
            frames += 1
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    if not animated or frames == 1 and not cut:
        return
    if frames > 1:
        more = "at least " if cut else ""
        raise ImageLoadError(path, f"animated WebP: holds {more}{frames:,} frames; {_ONE_IMAGE}")
    if cut:
        raise ImageLoadError(path, "truncated or corrupt animated WebP file (a chunk runs past"
                                   " the end of the file)")
    raise ImageLoadError(path, "animated WebP" + (" (animation flag set)" if flagged else "")
                               + f" without any frame; {_ONE_IMAGE}")


def _probe_gif(data: bytes, path) -> _Info:
    """Size from the logical screen descriptor; the blocks are walked to the trailer
    (extensions and image data skipped by their sub-blocks), counting the images. A GIF
    of several images (an animation) is refused, since OpenCV decodes only the first."""
    n = len(data)
    if n < 13:
        raise ImageLoadError(path, "truncated GIF file (incomplete header)")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    images = 0
    while True:
        if pos >= n:
            raise ImageLoadError(path, "truncated GIF file (no trailer)")
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: introducer, label, sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor, local colour table, LZW code size, sub-blocks
            images += 1
            if pos + 10 > n:
                raise ImageLoadError(path, "truncated GIF file (incomplete image descriptor)")
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
        else:
            raise ImageLoadError(path, f"corrupt GIF file (unknown block 0x{block:02X} at"
                                       f" byte {pos})")
        while pos < n and data[pos]:  # sub-blocks, up to the empty one
            pos += 1 + data[pos]
        pos += 1
    if images > 1:
        raise ImageLoadError(path, f"animated GIF: holds {images:,} frames; {_ONE_IMAGE}")
    return _Info("GIF", (width, height))


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8
#: A TIFF's page chain is followed this far (enough to say "holds N pages"), reading at
#: most this many directory entries in all (a crafted chain of large directories stays
#: cheap).
_MAX_TIFF_PAGES = 1000
_MAX_TIFF_ENTRIES = 20000
#: NewSubfileType, SubfileType, width, height, StripOffsets, TileOffsets.
_TIFF_PAGE_TAGS = (254, 255, 256, 257, 273, 324)


def _read_tiff(data: bytes, base: int, want_size: bool):
    """((width, height) or None, orientation or None) from a TIFF's first IFD."""
    order, ifd, layout = _tiff_header(data, base)
    tags, _ = _tiff_ifd(data, base, ifd, order, layout, (256, 257, 274))
    size = (tags[256], tags[257]) if want_size and 256 in tags and 257 in tags else None
    return size, tags.get(274)


def _tiff_header(data: bytes, base: int):
    """``(byte order, offset of the first IFD, layout)`` of the TIFF structure at ``base``;
    ``layout`` is ``(count format, entry size, value size, next-offset format)``."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[base:base + 2]))
    if order is None:
        raise ValueError("not a TIFF structure")
    (magic,) = struct.unpack_from(order + "H", data, base + 2)
    if magic == 42:
        (ifd,) = struct.unpack_from(order + "I", data, base + 4)
        return order, ifd, ("H", 12, 4, "I")
    if magic == 43:  # BigTIFF
        (ifd,) = struct.unpack_from(order + "Q", data, base + 8)
        return order, ifd, ("Q", 20, 8, "Q")
    raise ValueError("bad TIFF magic number")


def _tiff_ifd(data: bytes, base: int, ifd: int, order: str, layout, wanted, want_next=False):
    """``({tag: value}, next IFD offset or None)`` for the single-valued SHORT/LONG tags in
    ``wanted`` of the IFD at ``base + ifd``; the next offset is read if ``want_next``."""
    count_fmt, entry_size, value_size, next_fmt = layout
    (count,) = struct.unpack_from(order + count_fmt, data, base + ifd)
    first = base + ifd + struct.calcsize(count_fmt)
    tags = {}
    for i in range(min(count, 4096)):
        entry = first + i * entry_size
        tag, typ = struct.unpack_from(order + "HH", data, entry)
        if tag in wanted and typ in _TIFF_TYPES:
            fmt = _TIFF_TYPES[typ][0]
            value_at = entry + 4 + value_size  # after tag, type and count
            (tags[tag],) = struct.unpack_from(order + fmt, data, value_at)
    if not want_next:
        return tags, None
    (nxt,) = struct.unpack_from(order + next_fmt, data, first + count * entry_size)
    return tags, nxt


def _probe_tiff(data: bytes, path) -> _Info:
    """Size of the first page; a file of several full-resolution pages is refused, since
    OpenCV would silently decode only the first. A later directory counts as a page when
    it describes an image (width, height, strip or tile offsets) that is not a
    reduced-resolution one: ``NewSubfileType`` bit 0, old-style ``SubfileType`` 2, or at
    most half of page 1's width and height (an Exif-style thumbnail). The chain after page
    1 is followed while it can be read, as libtiff reads page 1 whatever follows: a
    directory out of the file, a loop or the entry budget ends it."""
    order, ifd, layout = _tiff_header(data, 0)
    first, nxt = _tiff_ifd(data, 0, ifd, order, layout, _TIFF_PAGE_TAGS, want_next=True)
    size = (first[256], first[257]) if 256 in first and 257 in first else None
    full = [] if _tiff_reduced(first, None) else [1]  # the full-resolution pages
    previews, seen, more, budget = 0, {ifd}, "", _MAX_TIFF_ENTRIES
    while nxt and nxt not in seen:
        if len(seen) >= _MAX_TIFF_PAGES or budget <= 0:
            more = "at least "  # the chain goes on: not followed further
            break
        seen.add(nxt)
        try:
            (count,) = struct.unpack_from(order + layout[0], data, nxt)
            tags, nxt = _tiff_ifd(data, 0, nxt, order, layout, _TIFF_PAGE_TAGS, want_next=True)
        except (struct.error, IndexError, OverflowError):
            break  # a link to nowhere: page 1 is still what is read
        budget -= min(count, 4096)
        if not (256 in tags and 257 in tags and (273 in tags or 324 in tags)):
            continue  # not an image (e.g. a directory of other data)
        if _tiff_reduced(tags, size):
            previews += 1
        else:
            full.append(len(seen))
    if len(full) > 1:
        extra = (f" (and {previews} reduced-resolution preview{'s' * (previews > 1)})"
                 if previews else "")
        raise ImageLoadError(path, f"multi-page TIFF: holds {more}{len(full):,} pages{extra};"
                                   " hiercell reads one cell image per file (save each page"
                                   " as its own file)")
    if full and full[0] != 1:
        raise ImageLoadError(path, f"multi-page TIFF: page 1 is a reduced-resolution preview"
                                   f" and the image is page {full[0]}; hiercell reads only"
                                   " page 1 (save the image as its own file)")
    return _Info("TIFF", size)  # OpenCV's TIFF decoder applies orientation


def _tiff_reduced(tags: dict, first_size) -> bool:
    """Whether a TIFF directory's image is a reduced-resolution one: flagged so, or (a
    later page) at most half of page 1's size ``first_size`` both ways."""
    if tags.get(254, 0) & 1 or tags.get(255) == 2:
        return True
    return (first_size is not None and 256 in tags and 257 in tags
            and 2 * tags[256] <= first_size[0] and 2 * tags[257] <= first_size[1])
