"""The loader on every supported format and on broken files (all made here)."""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from hiercell.io import (IMAGE_EXTENSIONS, ImageLoadError, decode_image, list_images, load_image,
                         try_load_image)

DATA = Path(__file__).parent / "data" / "pbc"
#: The pixel-conversion tests use tiny images, which the loader refuses by default.
ANY_SIZE = {"min_side": None, "max_aspect": None}


def rgb_pattern(h=24, w=40):
    """An asymmetric RGB uint8 image (orientation mistakes change it)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + 2 * y) % 256], -1).astype(np.uint8)


def write(path, ext, img, params=()):
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    Path(path).write_bytes(buf.tobytes())
    return Path(path)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the orientation tag after SOI."""
    payload = b"Exif\x00\x00" + exif_orientation_tiff(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def gray_pattern(h=24, w=40, dtype=np.uint8):
    """A grayscale image that every flip/rotation changes."""
    return (np.arange(h * w).reshape(h, w) * 7 % 251 * (257 if dtype == np.uint16 else 1)).astype(dtype)


def gray_tiff(img: np.ndarray, orientation: int) -> bytes:
    """A minimal uncompressed grayscale (8 or 16 bit) little-endian TIFF with an orientation tag."""
    h, w = img.shape
    entries = [(256, 4, w), (257, 4, h), (258, 3, img.itemsize * 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (274, 3, orientation), (277, 3, 1), (278, 4, h), (279, 4, img.nbytes)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        val = data_at if tag == 273 else val
        packed = struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    return out + struct.pack("<I", 0) + img.astype(img.dtype.newbyteorder("<")).tobytes()


def tiff_pages(pages, big=False, last_next=None) -> bytes:
    """An uncompressed little-endian 8-bit grayscale TIFF (BigTIFF if ``big``) of several
    pages, written by hand: ``pages`` holds ``(image, NewSubfileType or None)``;
    ``last_next`` replaces the last page's next-page offset (0)."""
    cfmt, nfmt, vfmt = ("Q", "Q", "<HHQ") if big else ("H", "I", "<HHI")
    head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00\x08\x00\x00\x00"
    entries = []
    for img, subfile in pages:
        h, w = img.shape
        e = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None),
             (277, 3, 1), (278, 4, h), (279, 4, img.nbytes)]
        entries.append(([(254, 4, subfile)] if subfile is not None else []) + e)
    entry_size = struct.calcsize(vfmt) + (8 if big else 4)
    ifd_at, pos = [], len(head)
    for e in entries:
        ifd_at.append(pos)
        pos += struct.calcsize("<" + cfmt) + entry_size * len(e) + struct.calcsize("<" + nfmt)
    data_at = []
    for img, _ in pages:
        data_at.append(pos)
        pos += img.nbytes
    out = head
    for k, e in enumerate(entries):
        out += struct.pack("<" + cfmt, len(e))
        for tag, typ, val in e:
            val = data_at[k] if tag == 273 else val
            value = struct.pack("<H" if typ == 3 else "<I", val).ljust(8 if big else 4, b"\x00")
            out += struct.pack(vfmt, tag, typ, 1) + value
        nxt = ifd_at[k + 1] if k + 1 < len(pages) else (last_next or 0)
        out += struct.pack("<" + nfmt, nxt)
    return out + b"".join(img.tobytes() for img, _ in pages)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def exif_orientation_tiff(orientation: int) -> bytes:
    """A big-endian TIFF structure (as in EXIF) holding only the orientation tag."""
    return (b"MM\x00\x2a" + struct.pack(">IH", 8, 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))


def palette_png(indices: np.ndarray, palette: np.ndarray, alpha=None) -> bytes:
    """A colour-type-3 (palette) PNG written by hand."""
    chunk = png_chunk
    h, w = indices.shape
    raw = b"".join(b"\x00" + indices[r].astype(np.uint8).tobytes() for r in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
    out += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if alpha is not None:
        out += chunk(b"tRNS", bytes(alpha))
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)


def animated_webp(frames, flag=True) -> bytes:
    """An animated WebP written by hand: ``VP8X`` (animation flag if ``flag``), ``ANIM`` and
    one ``ANMF`` chunk per BGR frame (lossless, at the top left of a canvas of its size)."""
    u24 = lambda v: v.to_bytes(3, "little")  # noqa: E731
    h, w = frames[0].shape[:2]
    body = riff_chunk(b"VP8X", bytes([0x02 if flag else 0, 0, 0, 0]) + u24(w - 1) + u24(h - 1))
    body += riff_chunk(b"ANIM", b"\xff\xff\xff\xff\x00\x00")
    for f in frames:
        ok, buf = cv2.imencode(".webp", f, [cv2.IMWRITE_WEBP_QUALITY, 101])
        assert ok
        header = u24(0) + u24(0) + u24(f.shape[1] - 1) + u24(f.shape[0] - 1) + u24(100) + b"\x00"
        body += riff_chunk(b"ANMF", header + buf.tobytes()[12:])  # the frame's VP8L chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def gif_frames(frames) -> bytes:
    """A GIF89a written by hand: a 2-colour global palette (black, white) and one
    uncompressed image (LZW clear codes every few pixels) per 0/1 frame, each after a
    graphic control extension and with a comment extension in front."""
    h, w = frames[0].shape
    out = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    out += b"\x21\xfe" + b"\x05hello" + b"\x00"                     # comment extension
    for f in frames:
        # min code size 2: codes are 3 bits; a clear code (4) before every 2 pixels keeps
        # the code width at 3 bits; 5 = end of information.
        codes = []
        for i, v in enumerate(f.ravel()):
            if i % 2 == 0:
                codes.append(4)
            codes.append(int(v))
        codes.append(5)
        bits = sum(c << (3 * i) for i, c in enumerate(codes))
        lzw = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
        subs = b"".join(bytes([len(lzw[i:i + 255])]) + lzw[i:i + 255]
                        for i in range(0, len(lzw), 255))
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"                # graphic control
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02" + subs + b"\x00"
    return out + b"\x3b"


ORIENT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
          4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
          6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
          8: lambda a: np.rot90(a, 1)}


# --------------------------------------------------------------------------- #
# Formats

def test_real_pbc_jpeg_matches_opencv():
    path = next(DATA.glob("basophil/*.jpg"))
    img = load_image(path)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    np.testing.assert_array_equal(img, cv2.imread(str(path))[:, :, ::-1])


@pytest.mark.parametrize("ext, params", [
    (".png", ()), (".bmp", ()), (".tif", ()), (".tiff", ()),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # > 100 = lossless
])
def test_lossless_rgb_formats_roundtrip(tmp_path, ext, params):
    rgb = rgb_pattern()
    path = write(tmp_path / f"cell{ext}", ext, rgb[:, :, ::-1], params)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_is_rgb_not_bgr(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = load_image(write(tmp_path / "red.jpg", ".jpg", red[:, :, ::-1]))
    assert out[..., 0].min() > 240 and out[..., 2].max() < 15


def test_non_ascii_path(tmp_path):
    rgb = rgb_pattern()
    path = write(tmp_path / "célula_血液.png", ".png", rgb[:, :, ::-1])
    np.testing.assert_array_equal(load_image(path), rgb)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_grayscale_becomes_three_channels(tmp_path, ext):
    gray = rgb_pattern()[:, :, 0]
    out = load_image(write(tmp_path / f"g{ext}", ext, gray))
    assert out.shape == gray.shape + (3,) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if ext != ".jpg":
        np.testing.assert_array_equal(out[..., 0], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 50, 10)                     # RGB
    rgba[0, :, 3] = (0, 255, 128)                     # transparent, opaque, half
    rgba[1, :, 3] = 255
    out = load_image(write(tmp_path / "a.png", ".png", rgba[..., [2, 1, 0, 3]]), **ANY_SIZE)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 1], (200, 50, 10))
    a = 128 / 255
    expected = np.rint(np.array([200, 50, 10]) * a + 255 * (1 - a))
    np.testing.assert_allclose(out[0, 2], expected, atol=1)
    np.testing.assert_array_equal(out[1], np.tile([200, 50, 10], (3, 1)))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_is_scaled_not_truncated(tmp_path, ext):
    values = np.array([0, 128, 129, 257, 256 * 100, 32768, 65278, 65535], np.uint16)
    rgb16 = np.stack([values, values[::-1], np.full_like(values, 65535)], -1)[None]
    out = load_image(write(tmp_path / f"deep{ext}", ext, rgb16[..., ::-1]), **ANY_SIZE)
    assert out.dtype == np.uint8
    expected = np.rint(rgb16.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, -1, 0] == 255 and out[0, 0, 0] == 0


def test_16bit_grayscale_and_rgba(tmp_path):
    g = np.array([[0, 65535], [257 * 10, 257 * 200]], np.uint16)
    out = load_image(write(tmp_path / "g16.png", ".png", g), **ANY_SIZE)
    np.testing.assert_array_equal(out[..., 1], [[0, 255], [10, 200]])
    rgba = np.zeros((1, 2, 4), np.uint16)
    rgba[..., :3] = 257 * 40
    rgba[0, :, 3] = (0, 65535)
    out = load_image(write(tmp_path / "a16.png", ".png", rgba), **ANY_SIZE)
    np.testing.assert_array_equal(out[0], [[255] * 3, [40] * 3])


def test_float_tiff_is_clipped_to_unit_range(tmp_path):
    f = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], np.float32)
    out = load_image(write(tmp_path / "f.tif", ".tif", f), **ANY_SIZE)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255, 255])


def test_palette_png(tmp_path):
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]])
    idx = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    path = tmp_path / "pal.png"
    path.write_bytes(palette_png(idx, palette))
    np.testing.assert_array_equal(load_image(path, **ANY_SIZE), palette[idx])
    # With a tRNS chunk: index 0 fully transparent -> white.
    path.write_bytes(palette_png(idx, palette, alpha=[0, 255, 255, 255]))
    out = load_image(path, **ANY_SIZE)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 1], (0, 255, 0))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation(tmp_path, orientation):
    rgb = rgb_pattern()
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(buf.tobytes())
    tagged = tmp_path / "tagged.jpg"
    tagged.write_bytes(with_exif_orientation(buf.tobytes(), orientation))
    expected = ORIENT[orientation](load_image(plain))
    out = load_image(tagged)
    np.testing.assert_array_equal(out, expected)
    # Same as OpenCV's own EXIF handling (IMREAD_COLOR applies the tag).
    np.testing.assert_array_equal(out, cv2.imread(str(tagged), cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_exif_orientation(tmp_path, orientation):
    rgb = rgb_pattern()
    png = write(tmp_path / "plain.png", ".png", rgb[:, :, ::-1]).read_bytes()
    at = 8 + 25  # after the signature and the IHDR chunk
    tagged = tmp_path / "tagged.png"
    tagged.write_bytes(png[:at] + png_chunk(b"eXIf", exif_orientation_tiff(orientation)) + png[at:])
    np.testing.assert_array_equal(load_image(tagged), ORIENT[orientation](rgb))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation(tmp_path, orientation, dtype):
    gray = gray_pattern(dtype=dtype)
    path = tmp_path / "o.tif"
    path.write_bytes(gray_tiff(gray, orientation))
    out = load_image(path)
    expected = gray if dtype == np.uint8 else (gray // 257).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], ORIENT[orientation](expected))


def test_decode_image_from_bytes():
    data = next(DATA.glob("platelet/*.jpg")).read_bytes()
    assert decode_image(data).shape == (256, 256, 3)
    assert decode_image(memoryview(data)).shape == (256, 256, 3)


# --------------------------------------------------------------------------- #
# Failures: one exception type, a clear reason

def raises(path, match, **kw):
    with pytest.raises(ImageLoadError, match=match) as info:
        load_image(path, **kw)
    assert info.value.path == str(path) and info.value.reason
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    return info.value


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.jpg", "no such file")


def test_directory(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    raises(tmp_path / "d.jpg", "directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    raises(tmp_path / "e.jpg", "empty")


def test_text_named_jpg(tmp_path):
    (tmp_path / "t.jpg").write_text("this is not an image\n")
    raises(tmp_path / "t.jpg", "not an image")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_jpeg(tmp_path, keep):
    data = next(DATA.glob("monocyte/*.jpg")).read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: int(len(data) * keep)])
    raises(tmp_path / "t.jpg", "truncated JPEG")


def test_truncated_jpeg_header(tmp_path):
    data = next(DATA.glob("monocyte/*.jpg")).read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[:40])
    raises(tmp_path / "t.jpg", "truncated JPEG")


def test_truncated_png_and_bmp(tmp_path):
    rgb = rgb_pattern(64, 64)
    for ext in (".png", ".bmp"):
        good = write(tmp_path / f"g{ext}", ext, rgb)
        data = good.read_bytes()
        (tmp_path / f"t{ext}").write_bytes(data[: len(data) // 2])
        raises(tmp_path / f"t{ext}", f"truncated {ext[1:].upper()}")


@pytest.mark.parametrize("tail", [b"\x00" * 200, b"\xff" * 16, b"camera trailer \xff\xd9 x"])
def test_jpeg_bytes_after_end_marker_are_ignored(tmp_path, tail):
    # Padding or a maker trailer after a complete image (libjpeg ignores it) is not damage.
    good = next(DATA.glob("monocyte/*.jpg"))
    data = good.read_bytes()
    assert data.endswith(b"\xff\xd9")
    (tmp_path / "t.jpg").write_bytes(data + tail)
    np.testing.assert_array_equal(load_image(tmp_path / "t.jpg"), load_image(good))


def test_truncated_progressive_jpeg(tmp_path):
    ok, buf = cv2.imencode(".jpg", rgb_pattern(64, 64), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = buf.tobytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) * 6 // 10])
    raises(tmp_path / "t.jpg", "truncated JPEG")
    assert try_load_image(tmp_path / "t.jpg") == (
        None, "truncated JPEG file (no end-of-image marker)")


def test_multi_page_tiff_is_refused_with_its_page_count(tmp_path):
    # OpenCV decodes the first page only: the other pages would be silently lost.
    pages = [rgb_pattern(), rgb_pattern()[::-1], rgb_pattern()[:, ::-1]]
    assert cv2.imwritemulti(str(tmp_path / "m.tif"), [p[:, :, ::-1].copy() for p in pages])
    err = raises(tmp_path / "m.tif", "holds 3 pages; hiercell reads one cell image per file")
    assert try_load_image(tmp_path / "m.tif") == (None, err.reason)
    assert cv2.imwritemulti(str(tmp_path / "one.tif"), [pages[0][:, :, ::-1].copy()])
    np.testing.assert_array_equal(load_image(tmp_path / "one.tif"), pages[0])


@pytest.mark.parametrize("big", [False, True], ids=["tiff", "bigtiff"])
def test_multi_page_tiff_by_hand(tmp_path, big):
    a, b = gray_pattern(32, 48), np.full((32, 48), 200, np.uint8)
    (tmp_path / "one.tif").write_bytes(tiff_pages([(a, None)], big))
    np.testing.assert_array_equal(load_image(tmp_path / "one.tif")[:, :, 0], a)
    (tmp_path / "two.tif").write_bytes(tiff_pages([(a, None), (b, 0)], big))
    raises(tmp_path / "two.tif", "multi-page TIFF: holds 2 pages;")


def test_tiff_preview_pages(tmp_path):
    a, b = gray_pattern(32, 48), np.full((32, 48), 200, np.uint8)
    thumb = np.full((16, 24), 90, np.uint8)
    # the image, then a reduced-resolution preview (NewSubfileType bit 0): the image is read
    (tmp_path / "p.tif").write_bytes(tiff_pages([(a, 0), (thumb, 1)]))
    np.testing.assert_array_equal(load_image(tmp_path / "p.tif")[:, :, 0], a)
    # the preview first: OpenCV would return the 16x24 preview instead of the image
    (tmp_path / "q.tif").write_bytes(tiff_pages([(thumb, 1), (a, 0)]))
    raises(tmp_path / "q.tif", "page 1 is a reduced-resolution preview and the image is page 2")
    (tmp_path / "r.tif").write_bytes(tiff_pages([(a, 0), (thumb, 1), (b, 2)]))
    raises(tmp_path / "r.tif", r"holds 2 pages \(and 1 reduced-resolution preview\)")


def test_a_broken_link_after_page_1_does_not_refuse_the_image(tmp_path):
    # OpenCV (libtiff) reads page 1 whatever the chain after it holds: a next page past the
    # end of the file, inside the pixel data, beyond 2**63, or back to page 1
    a = gray_pattern(32, 48)
    for name, big, nxt in [("past.tif", False, 10**6), ("pixels.tif", False, 200),
                           ("loop.tif", False, 8), ("huge.tif", True, 2**63 + 5)]:
        (tmp_path / name).write_bytes(tiff_pages([(a, None)], big=big, last_next=nxt))
        np.testing.assert_array_equal(load_image(tmp_path / name)[:, :, 0], a)


def test_a_tiff_thumbnail_or_data_directory_is_no_second_page(tmp_path):
    a, thumb = gray_pattern(32, 48), np.full((16, 24), 90, np.uint8)
    # an Exif-style thumbnail in the second directory, not flagged reduced-resolution
    (tmp_path / "thumb.tif").write_bytes(tiff_pages([(a, None), (thumb, None)]))
    np.testing.assert_array_equal(load_image(tmp_path / "thumb.tif")[:, :, 0], a)
    # a second directory that holds no image (no size, no strips): a 1-entry IFD
    data = bytearray(tiff_pages([(a, None)]))
    extra = len(data)
    data += struct.pack("<HHHII", 1, 259, 3, 1, 6) + struct.pack("<I", 0)
    next_at = 8 + 2 + 9 * 12  # after page 1's 9 entries
    struct.pack_into("<I", data, next_at, extra)
    (tmp_path / "data.tif").write_bytes(bytes(data))
    np.testing.assert_array_equal(load_image(tmp_path / "data.tif")[:, :, 0], a)
    # a second image larger than half of page 1 either way is a page
    (tmp_path / "two.tif").write_bytes(tiff_pages([(a, None), (a[:20], None)]))
    raises(tmp_path / "two.tif", "holds 2 pages")


def test_a_long_tiff_chain_is_followed_within_an_entry_budget(tmp_path, monkeypatch):
    import hiercell.io

    a = gray_pattern(32, 48)
    (tmp_path / "many.tif").write_bytes(tiff_pages([(a, 2)] * 4))
    raises(tmp_path / "many.tif", r"holds 4 pages")
    monkeypatch.setattr(hiercell.io, "_MAX_TIFF_ENTRIES", 10)  # 10 entries a page
    raises(tmp_path / "many.tif", r"holds at least 2 pages")


def test_an_exif_block_with_offsets_beyond_2_63_is_ignored(tmp_path):
    rgb = rgb_pattern()
    jpeg = write(tmp_path / "a.jpg", ".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    payload = b"Exif\x00\x00" + b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8  # BigTIFF, IFD at 2**64-1
    data = jpeg.read_bytes()
    (tmp_path / "b.jpg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2)
                                     + payload + data[2:])
    np.testing.assert_array_equal(load_image(tmp_path / "b.jpg"), load_image(jpeg))
    png = write(tmp_path / "a.png", ".png", rgb[:, :, ::-1]).read_bytes()
    at = png.index(b"IDAT") - 4
    (tmp_path / "b.png").write_bytes(png[:at] + png_chunk(b"eXIf", payload[6:]) + png[at:])
    np.testing.assert_array_equal(load_image(tmp_path / "b.png"), rgb)
    # a bare BigTIFF whose first directory lies beyond 2**63: a clean error, not OverflowError
    (tmp_path / "c.tif").write_bytes(b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8)
    raises(tmp_path / "c.tif", "corrupt image header")


def apng(png: bytes, num_frames: int, *, default_is_frame=True, extra_frame=None) -> bytes:
    """``png`` made an APNG: an ``acTL`` chunk of ``num_frames`` after IHDR, an ``fcTL``
    before IDAT if the default image is a frame, and ``extra_frame`` (the IDAT data of a
    PNG of the same size) as an ``fcTL`` + ``fdAT`` frame after it."""
    w, h = struct.unpack_from(">II", png, 16)

    def fctl(seq):
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))

    at, end = 8 + 25, png.index(b"IEND") - 4
    out = png[:at] + png_chunk(b"acTL", struct.pack(">II", num_frames, 0))
    out += (fctl(0) if default_is_frame else b"") + png[at:end]
    if extra_frame is not None:
        out += fctl(1) + png_chunk(b"fdAT", struct.pack(">I", 2) + extra_frame)
    return out + png[end:]


def idat_data(png: bytes) -> bytes:
    at = png.index(b"IDAT")
    (length,) = struct.unpack_from(">I", png, at - 4)
    return png[at + 4:at + 4 + length]


def test_animated_png_is_refused_with_its_frame_count(tmp_path):
    # OpenCV decodes only the default image: the other frames would be silently lost.
    rgb, other = rgb_pattern(), rgb_pattern()[::-1]
    png = write(tmp_path / "still.png", ".png", rgb[:, :, ::-1]).read_bytes()
    second = idat_data(write(tmp_path / "b.png", ".png", other[:, :, ::-1].copy()).read_bytes())
    (tmp_path / "a.png").write_bytes(apng(png, 2, extra_frame=second))
    err = raises(tmp_path / "a.png", r"animated PNG: holds 2 frames; hiercell reads one cell"
                                     " image per file")
    assert try_load_image(tmp_path / "a.png") == (None, err.reason)
    # the default image not being a frame changes nothing: still 2 frames
    (tmp_path / "h.png").write_bytes(apng(png, 2, default_is_frame=False, extra_frame=second))
    raises(tmp_path / "h.png", "animated PNG: holds 2 frames;")
    # only the acTL chunk says so (frames cut out): refused by its count all the same
    (tmp_path / "c.png").write_bytes(apng(png, 5))
    raises(tmp_path / "c.png", "animated PNG: holds 5 frames;")


def test_png_with_one_frame_animation_is_read(tmp_path):
    rgb = rgb_pattern()
    png = write(tmp_path / "still.png", ".png", rgb[:, :, ::-1]).read_bytes()
    # the default image as the one frame; or acTL alone (no frame stored apart)
    for name, data in [("one.png", apng(png, 1)),
                       ("bare.png", apng(png, 1, default_is_frame=False))]:
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(load_image(tmp_path / name), rgb)
    # an acTL chunk after the image data does not make an APNG (the format ignores it)
    end = png.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(png[:end] + png_chunk(b"acTL", struct.pack(">II", 3, 0))
                                        + png[end:])
    np.testing.assert_array_equal(load_image(tmp_path / "late.png"), rgb)
    # an acTL chunk too short to hold a frame count is not read as one (its checksum was
    # taken for a count of 1,240,641,512 frames); OpenCV's own decoder refuses the file
    (tmp_path / "short.png").write_bytes(png[:33] + png_chunk(b"acTL", b"") + png[33:])
    reason = try_load_image(tmp_path / "short.png")[1]
    assert reason is None or "frames" not in reason


def test_png_whose_one_frame_is_not_the_default_image_is_refused(tmp_path):
    # The default image is a placeholder and the one frame lives in fdAT: OpenCV would
    # return the placeholder.
    png = write(tmp_path / "still.png", ".png", rgb_pattern()[:, :, ::-1]).read_bytes()
    frame = idat_data(write(tmp_path / "b.png", ".png", rgb_pattern()[::-1, :, ::-1].copy())
                      .read_bytes())
    (tmp_path / "h.png").write_bytes(apng(png, 1, default_is_frame=False, extra_frame=frame))
    raises(tmp_path / "h.png", "animated PNG: its frame is stored apart from the default image")


def test_animated_webp_is_refused_with_its_frame_count(tmp_path):
    frames = [rgb_pattern()[:, :, ::-1].copy(), rgb_pattern()[::-1, :, ::-1].copy(),
              rgb_pattern()[:, ::-1, ::-1].copy()]
    (tmp_path / "a.webp").write_bytes(animated_webp(frames))
    err = raises(tmp_path / "a.webp", "animated WebP: holds 3 frames; hiercell reads one cell"
                                      " image per file")
    assert try_load_image(tmp_path / "a.webp") == (None, err.reason)
    # ANMF chunks without the VP8X animation flag: counted all the same
    (tmp_path / "b.webp").write_bytes(animated_webp(frames[:2], flag=False))
    raises(tmp_path / "b.webp", "animated WebP: holds 2 frames;")
    # the animation flag set and no frame
    data = animated_webp(frames[:1])
    data = data[:data.index(b"ANMF")]
    (tmp_path / "c.webp").write_bytes(b"RIFF" + struct.pack("<I", len(data) - 8) + data[8:])
    raises(tmp_path / "c.webp", r"animated WebP \(animation flag set\) without any frame")


@pytest.mark.skipif(not hasattr(cv2, "imencodeanimation"), reason="OpenCV without animation API")
@pytest.mark.parametrize("ext, what", [(".png", "PNG"), (".webp", "WebP"), (".gif", "GIF")])
def test_animations_written_by_opencv_are_refused(tmp_path, ext, what):
    anim = cv2.Animation()
    anim.frames = [rgb_pattern()[:, :, ::-1].copy(), rgb_pattern()[::-1, :, ::-1].copy()]
    anim.durations = [100, 100]
    ok, buf = cv2.imencodeanimation(ext, anim)
    assert ok
    (tmp_path / f"a{ext}").write_bytes(buf.tobytes())
    raises(tmp_path / f"a{ext}", f"animated {what}: holds 2 frames;")


def test_still_and_one_frame_webp_are_read(tmp_path):
    rgb = rgb_pattern()
    path = write(tmp_path / "s.webp", ".webp", rgb[:, :, ::-1], (cv2.IMWRITE_WEBP_QUALITY, 101))
    np.testing.assert_array_equal(load_image(path), rgb)
    (tmp_path / "one.webp").write_bytes(animated_webp([rgb[:, :, ::-1].copy()]))
    np.testing.assert_array_equal(load_image(tmp_path / "one.webp"), rgb)


def test_gif_one_image_is_read_several_are_refused(tmp_path):
    a = (gray_pattern(20, 24) % 2).astype(np.uint8)
    b = 1 - a
    (tmp_path / "one.gif").write_bytes(gif_frames([a]))
    np.testing.assert_array_equal(load_image(tmp_path / "one.gif")[:, :, 0], a * 255)
    (tmp_path / "two.gif").write_bytes(gif_frames([a, b, a]))
    err = raises(tmp_path / "two.gif", "animated GIF: holds 3 frames; hiercell reads one cell"
                                       " image per file")
    assert try_load_image(tmp_path / "two.gif") == (None, err.reason)
    # cut anywhere after the header: reported as truncated (OpenCV fails on these too)
    data = gif_frames([a])
    for cut in (20, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.gif").write_bytes(data[:cut])
        raises(tmp_path / "cut.gif", "truncated GIF file")


def test_corrupt_png_data(tmp_path):
    data = bytearray(write(tmp_path / "g.png", ".png", rgb_pattern()).read_bytes())
    at = data.index(b"IDAT") + 8
    data[at:at + 20] = b"\x00" * 20                  # chunks intact, zlib stream broken
    (tmp_path / "c.png").write_bytes(bytes(data))
    raises(tmp_path / "c.png", "corrupt")


def test_too_many_pixels(tmp_path):
    path = write(tmp_path / "big.png", ".png", np.zeros((100, 100, 3), np.uint8))
    raises(path, "too large.*100x100", max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).shape == (100, 100, 3)
    assert load_image(path, max_pixels=None).shape == (100, 100, 3)


def test_pixel_limit_checked_before_decoding(tmp_path):
    # A header claiming 100000 x 100000 pixels and no real image data: refusing
    # it as too large (not as undecodable) shows that the header was read first.
    chunk = png_chunk
    fake = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(fake)
    raises(tmp_path / "bomb.png", "too large")
    raises(next(DATA.glob("ig/*.jpg")), "too large.*256x256", max_pixels=256 * 255)


# --------------------------------------------------------------------------- #
# list_images

def test_list_images(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "deep").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["z.JPG", "a.png", "notes.txt", ".DS_Store", "._a.png", "b/c.tif",
                 "b/deep/d.jpeg", ".hidden/e.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    flat = list_images(tmp_path)
    assert [p.name for p in flat] == ["a.png", "z.JPG"]
    deep = list_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == [
        "a.png", "b/c.tif", "b/deep/d.jpeg", "z.JPG"]
    mixed = list_images([tmp_path / "b", explicit, tmp_path / "a.png", tmp_path / "a.png"])
    assert mixed == sorted([tmp_path / "b" / "c.tif", explicit, tmp_path / "a.png"])
    assert list_images(str(tmp_path / "b"), recursive=True) == [
        tmp_path / "b" / "c.tif", tmp_path / "b" / "deep" / "d.jpeg"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images([tmp_path / "missing"])
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


def test_fixture_images_all_load():
    paths = list_images(DATA, recursive=True)
    assert len(paths) == 32
    for p in paths:
        assert load_image(p).shape == (256, 256, 3)
