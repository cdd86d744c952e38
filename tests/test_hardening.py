"""Issue 11: batch jobs that lose nothing and never answer silently wrong.

One test (or more) per item of the issue, each failing before its fix, and an
end-to-end run on a folder that mixes all of them. The batch tests use the
stand-in model of ``test_classify`` (no network weights); the API tests use the
tiny bundle of ``conftest``.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hiercell.bundle import BundleError, verify_bundle
from hiercell.classify import OutputPathError, classify_folder
from hiercell.cli import main
from hiercell.fileutil import csv_cell, display, from_csv_cell
from hiercell.io import ImageLoadError, image_key, list_images, load_image
from hiercell.model import MaskingError
from hiercell.records import RECORD_COLUMNS, Prediction
from hiercell.results import check_row, open_sink, partial_path, read_results
from test_classify import StandIn, cli, colour, good_dir, read_csv  # noqa: F401

TESTS = Path(__file__).parent
NON_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")  # a Latin-1 name: not valid UTF-8


def write_png(path, rgb_colour, size=(20, 24)):
    """Like test_classify's, through ``imencode`` (``cv2.imwrite`` crashes on names that are
    not UTF-8)."""
    img = np.zeros((*size, 3), np.uint8)
    img[:] = rgb_colour
    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    assert ok
    Path(path).write_bytes(buf.tobytes())
    return Path(path)


def gray(h, w, value=128):
    return np.full((h, w, 3), value, np.uint8)


def by_name(records):
    return {Path(r.path).name: r for r in records}


# --------------------------------------------------------------------------- 1. masking


def test_masking_the_model_was_not_trained_for_is_refused(tiny_model, good_dir, tmp_path):
    assert tiny_model.masked is False
    img = gray(40, 40)
    with pytest.raises(MaskingError, match="trained on unmasked images"):
        tiny_model.predict([img], masked=True)
    with pytest.raises(MaskingError):
        tiny_model.predict_proba([img], masked=True)
    with pytest.raises(MaskingError):
        tiny_model.predict_records([img], masked=True)
    assert len(tiny_model.predict([img], masked=False)) == 1  # its own masking is fine
    with pytest.raises(MaskingError, match="hiercell train DATA --masked"):
        classify_folder(good_dir, model=StandIn(), out=tmp_path / "r.csv", masked=True,
                        progress=False)
    assert not (tmp_path / "r.csv").exists() and not partial_path(tmp_path / "r.csv").exists()


def test_cli_masked_with_an_unmasked_model_exits_2_in_one_line(cli, good_dir):
    r = cli(good_dir, "--masked")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert [line for line in r.stderr.splitlines() if "Error" in line][0].count("masked") >= 2


# --------------------------------------------------------------------------- 2. one validation


@pytest.mark.parametrize("method", ["predict", "predict_proba", "predict_records"])
def test_float_and_nan_images_are_refused_by_every_entry_point(tiny_model, method):
    fn = getattr(tiny_model, method)
    for bad in (np.random.default_rng(0).random((2, 32, 32, 3)),
                np.full((2, 32, 32, 3), np.nan, np.float32),
                [np.full((32, 32, 3), 0.5)]):
        with pytest.raises(ValueError, match="uint8"):
            fn(bad)


# --------------------------------------------------------------------------- 3. degenerate images


def test_degenerate_images_are_refused_everywhere(tiny_model, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    for name, (h, w) in {"dot.png": (1, 1), "line.png": (1000, 3), "strip.png": (16, 400),
                         "ok.png": (16, 16), "wide.png": (40, 300)}.items():
        assert cv2.imwrite(str(d / name), gray(h, w))
    with pytest.raises(ImageLoadError, match="too small: 1x1"):
        load_image(d / "dot.png")
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(d / "strip.png")
    res = classify_folder(d, model=StandIn(), progress=False)
    rows = by_name(res.records)
    assert rows["ok.png"].status == "ok" and rows["wide.png"].status == "ok"
    assert "too small" in rows["dot.png"].error and "too small" in rows["line.png"].error
    assert "aspect ratio" in rows["strip.png"].error
    for arr in (gray(1, 1), gray(3, 1000), gray(0, 0)):  # arrays too, through the API
        with pytest.raises(ValueError, match="too small|aspect"):
            tiny_model.predict([arr])
    recs = tiny_model.predict_records([str(d / "dot.png"), str(d / "ok.png")])
    assert recs[0].status == "error" and "too small" in recs[0].error and recs[1].status == "ok"


# --------------------------------------------------------------------------- 4. non-UTF-8 names


def test_non_utf8_file_names_are_classified_written_reversibly_and_resumed(good_dir, tmp_path):
    odd = write_png(good_dir / NON_UTF8, colour(2))
    out = tmp_path / "res.csv"
    res = classify_folder(good_dir, model=StandIn(), out=out, progress=False)
    assert res.n_error == 0 and len(res.records) == 8
    text = out.read_bytes().decode("utf-8")  # the file is valid UTF-8
    assert "fs:" in text and "caf%E9-%FF.png" in text
    _, rows = read_csv(out)
    assert len(rows) == 8
    assert {r.path for r in read_results(out)} == {str(p) for p in good_dir.iterdir()}
    again = StandIn()
    res = classify_folder(good_dir, model=again, out=out, resume=True, progress=False)
    assert again.calls == [] and res.n_resumed == 8
    assert str(odd) in {r.path for r in res.records}
    # JSON: standard escapes, read back the same
    res = classify_folder(good_dir, model=StandIn(), out=tmp_path / "r.json", fmt="json",
                          progress=False)
    assert str(odd) in {r.path for r in read_results(tmp_path / "r.json", "json")}


def test_segment_writes_its_csv_with_non_utf8_names(good_dir, tmp_path):
    write_png(good_dir / NON_UTF8, colour(2), size=(40, 40))
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(tmp_path / "seg")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "seg" / "segmentation.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    paths = {from_csv_cell(row["path"]) for row in rows}
    assert str(good_dir / NON_UTF8) in paths


def test_csv_cell_escapes_are_reversible():
    for value in ("=1+1", "+x", "-y", "@z", "\tq", "\rr", "'quoted", "fs:abc", "/plain/a.png",
                  NON_UTF8, "", "neutrophil"):
        cell = csv_cell(value)
        assert from_csv_cell(cell) == value
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        cell.encode("utf-8")


# --------------------------------------------------------------------------- 5. output paths


def test_output_paths_that_are_inputs_or_other_outputs_are_refused(cli, good_dir, tmp_path):
    image = good_dir / "cell_00.png"
    before = image.read_bytes()
    for kwargs in ({"out": image}, {"out": tmp_path / "r.csv", "report_path": image},
                   {"out": tmp_path / "r.csv", "summary_path": tmp_path / "r.csv"},
                   {"out": tmp_path / "r.csv", "summary_path": tmp_path / "r.csv.partial"},
                   {"out": tmp_path / "r.csv", "report_path": good_dir}):
        with pytest.raises(OutputPathError):
            classify_folder(good_dir, model=StandIn(), progress=False, **kwargs)
    assert image.read_bytes() == before
    for args in (["--out", image], ["--report", image], ["--summary", "a.csv", "-o", "a.csv"],
                 ["--report", "x.html", "--summary", "x.html"]):
        r = cli(good_dir, *args)
        assert r.exit_code == 2 and "refusing to overwrite" in r.output, r.output
    assert image.read_bytes() == before
    assert cli.loaded == []  # refused before any work


# --------------------------------------------------------------------------- 6. torn rows


def test_resume_validates_every_row_and_reclassifies_torn_ones(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    classify_folder(good_dir, model=StandIn(), out=out, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    cut_after_3 = ",".join(rows[0].split(",")[:3]) + "\n"
    label_at = rows[1].index(",BNE,") if ",BNE," in rows[1] else rows[1].index(",SNE,")
    cut_in_label = rows[1][:label_at + 3] + "\n"  # then a valid row follows
    bad_status = rows[2].replace(",ok,", ",maybe,")
    out.write_text(header + cut_after_3 + cut_in_label + bad_status + "".join(rows[3:]),
                   encoding="utf-8")
    rejected = []
    kept = read_results(out, rejected=rejected)
    assert len(kept) == 4 and len(rejected) == 3
    model = StandIn()
    res = classify_folder(good_dir, model=model, out=out, resume=True, progress=False)
    assert len(model.seen) == 3 and len(res.rejected) == 3
    assert res.n_ok == 7 and len(read_results(out)) == 7
    with pytest.raises(ValueError):
        check_row({c: "" for c in RECORD_COLUMNS} | {"path": "/a.png", "status": "ok",
                                                      "uncertain": "False", "review": "False"})


# --------------------------------------------------------------------------- 7. any death

SLOW_RUN = """
import sys, time
sys.path.insert(0, {tests!r})
from test_classify import StandIn
from hiercell.classify import classify_folder

class Slow(StandIn):
    def features(self, images, masked=None):
        time.sleep({sleep})
        return super().features(images, masked)

classify_folder({folder!r}, model=Slow(), out={out!r}, batch_size=2, progress=False)
"""


def _slow_run(folder, out, sleep=0.0, limit_bytes=None):
    code = SLOW_RUN.format(tests=str(TESTS), folder=str(folder), out=str(out), sleep=sleep)

    def limit():
        if limit_bytes is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-c", code], cwd=TESTS.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)


def test_kill_9_keeps_every_finished_batch_and_stale_temps_are_cleaned(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    proc = _slow_run(good_dir, out, sleep=0.4)
    part = partial_path(out)
    deadline = time.time() + 60
    while time.time() < deadline:
        if part.exists() and len(read_results(part)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = read_results(part)
    assert 2 <= len(kept) < 7 and all(r.status == "ok" for r in kept)
    stale = tmp_path / ".res.csv.999999999.x1.tmp"  # a temporary of a dead process
    stale.write_text("junk")
    model = StandIn()
    res = classify_folder(good_dir, model=model, out=out, resume=True, progress=False)
    assert res.n_resumed == len(kept) and len(model.seen) == 7 - len(kept)
    assert len(read_results(out)) == 7 and not part.exists()
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_file_size_limit_names_the_file_and_keeps_finished_rows(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    proc = _slow_run(good_dir, out, limit_bytes=800)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "File too large" in err.decode() and "res.csv.partial" in err.decode()
    assert 1 <= len(read_results(partial_path(out))) < 7


def test_cli_write_error_names_the_file(cli, good_dir, tmp_path, monkeypatch):
    import errno

    import hiercell.results

    real = hiercell.results.fsync_file
    n = {"calls": 0}

    def full_disk(fh):
        n["calls"] += 1
        if n["calls"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")  # no file name, like write()
        real(fh)

    monkeypatch.setattr(hiercell.results, "fsync_file", full_disk)
    r = cli(good_dir, "-o", "res.csv", "--batch-size", "2")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "res.csv.partial: No space left on device" in r.stderr
    assert "--resume" in r.stderr
    assert len(read_results(tmp_path / "res.csv.partial")) >= 2


# --------------------------------------------------------------------------- 8. the same image


def test_one_notion_of_the_same_image(good_dir, tmp_path, monkeypatch):
    os.symlink(good_dir / "cell_00.png", good_dir / "link.png")
    out = tmp_path / "res.csv"
    res = classify_folder(good_dir, model=StandIn(), out=out, progress=False)
    assert len(res.records) == 7  # the symlink and its target are one image
    res = classify_folder(good_dir, model=StandIn(), out=out, resume=True, progress=False)
    assert len(res.records) == 7
    monkeypatch.chdir(good_dir.parent)
    res = classify_folder(["cells", good_dir], model=StandIn(), progress=False)
    assert len(res.records) == 7  # relative and absolute: one folder
    rel_out = Path("rel.csv")
    classify_folder("cells", model=StandIn(interrupt_on_call=None), out=rel_out,
                    progress=False)
    monkeypatch.chdir(tmp_path.parent)  # resume from another working directory
    again = StandIn()
    res = classify_folder(good_dir, model=again, out=tmp_path / "rel.csv", resume=True,
                          progress=False)
    assert again.calls == [] and res.n_resumed == 7 and res.n_dropped == 0
    assert image_key(good_dir / "link.png") == image_key(good_dir / "cell_00.png")


# --------------------------------------------------------------------------- 9. segment


def test_segment_unwritable_out_is_a_clear_error(good_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(blocker / "seg")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert str(blocker) in r.output and "Not a directory" in r.output


def test_segment_interrupt_keeps_csv_and_resume_finishes(good_dir, tmp_path, monkeypatch):
    import hiercell.segment_files as sf

    real = sf.segment
    n = {"calls": 0}

    def interrupted(rgb):
        n["calls"] += 1
        if n["calls"] == 4:
            raise KeyboardInterrupt
        return real(rgb)

    monkeypatch.setattr(sf, "segment", interrupted)
    out = tmp_path / "seg"
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(out)])
    assert r.exit_code == 130 and "--resume" in r.output
    with open(out / "segmentation.csv", newline="", encoding="utf-8") as fh:
        done = list(csv.DictReader(fh))
    assert 1 <= len(done) < 7
    monkeypatch.setattr(sf, "segment", real)
    seen = []
    monkeypatch.setattr(sf, "segment", lambda rgb: seen.append(1) or real(rgb))
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    with open(out / "segmentation.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 and len({row["path"] for row in rows}) == 7
    assert len(seen) == 7 - len(done)
    # masks of another segmentation version are not kept: all segmented again
    import hiercell.segmentation

    monkeypatch.setattr(hiercell.segmentation, "VERSION", hiercell.segmentation.VERSION + 1)
    seen.clear()
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert len(seen) == 7
    with open(out / "segmentation.csv", newline="", encoding="utf-8") as fh:
        assert {row["segmentation_version"] for row in csv.DictReader(fh)} == {
            str(hiercell.segmentation.VERSION)}


# --------------------------------------------------------------------------- 10. every entry


def test_every_image_like_entry_gets_a_row(good_dir, tmp_path, monkeypatch):
    os.symlink(good_dir / "gone.png", good_dir / "broken.png")
    ok, gif = cv2.imencode(".gif", gray(20, 20))
    (good_dir / "anim.gif").write_bytes(gif.tobytes() if ok else b"GIF89a")
    sub = good_dir / "locked"
    sub.mkdir()
    write_png(sub / "hidden_away.png", colour(1))
    deep = good_dir / "deep"
    deep.mkdir()
    write_png(deep / "d.png", colour(1))
    os.symlink(good_dir, deep / "loop")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors = []
    listed = list_images(good_dir, recursive=True, errors=errors)
    assert {p.name for p in listed} >= {"broken.png", "anim.gif", "d.png"}
    reasons = {Path(p).name: why for p, why in errors}
    assert "Permission denied" in reasons["locked"] and "loop" in reasons["loop"]
    res = classify_folder(good_dir, model=StandIn(), recursive=True, progress=False)
    rows = by_name(res.records)
    assert "broken symbolic link" in rows["broken.png"].error
    assert rows["locked"].status == "error" and rows["loop"].status == "error"
    assert rows["d.png"].status == "ok" and rows["cell_00.png"].status == "ok"
    assert rows["anim.gif"].status == ("ok" if ok else "error")


# --------------------------------------------------------------------------- 11. memory


def test_memory_is_bounded_per_image(tmp_path):
    big = np.zeros((3000, 2400, 4), np.uint16)
    big[..., 3] = 65535
    assert cv2.imwrite(str(tmp_path / "big.png"), big)
    assert load_image(tmp_path / "big.png").shape == (1024, 819, 3)  # scaled down on decode
    assert cv2.imwrite(str(tmp_path / "big.jpg"), gray(3000, 2000))
    assert load_image(tmp_path / "big.jpg").shape == (1024, 683, 3)  # reduced JPEG decode
    junk = tmp_path / "junk.jpg"
    with open(junk, "wb") as fh:
        fh.truncate(3 * 2**30)  # sparse: 3 GB, never read
    with pytest.raises(ImageLoadError, match="file too large"):
        load_image(junk)
    assert load_image(tmp_path / "big.png", max_side=None).shape == (3000, 2400, 3)


# --------------------------------------------------------------------------- 12. batching


def test_predict_and_predict_proba_run_in_batches(tiny_model, monkeypatch):
    sizes = []
    real = type(tiny_model).features

    def spy(self, images, masked=None, batch_size=32):
        sizes.append(len(images))
        return real(self, images, masked, batch_size)

    monkeypatch.setattr(type(tiny_model), "features", spy)
    imgs = [gray(40, 40, v) for v in range(10, 60, 10)]
    p = tiny_model.predict_proba(imgs, batch_size=2)
    assert p.shape == (5, len(tiny_model.classes_)) and sizes == [2, 2, 1]
    sizes.clear()
    assert len(tiny_model.predict(imgs, batch_size=3)) == 5 and sizes == [3, 2]


# --------------------------------------------------------------------------- 13. injection


def test_formula_cells_are_escaped_and_read_back(tmp_path):
    out = tmp_path / "r.csv"
    recs = [Prediction(path=p, label="neutrophil", probability=0.9, main_class="neutrophil",
                       main_probability=0.9, top=[("neutrophil", 0.9)])
            for p in ("=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tx", "'q")]
    recs.append(Prediction.failed("/a.png", "=cmd|' /C calc'!A0"))
    sink = open_sink(out, "csv")
    sink.write(recs)
    sink.commit(recs, {})
    with open(out, newline="", encoding="utf-8") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert read_results(out) == recs


def test_control_characters_in_names_are_printed_escaped(cli, good_dir):
    (good_dir / "evil\x1b[2J.jpg").write_text("not an image")
    r = cli(good_dir)
    assert r.exit_code == 3
    assert "\x1b" not in r.stderr and "evil\\x1b[2J.jpg" in r.stderr
    assert display("a\u202eb") == "a\\u202eb"


# --------------------------------------------------------------------------- 14. bundles


def _copy_bundle(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite(bundle, edit):
    import hashlib

    info = json.loads((bundle / "bundle.json").read_text())
    edit(info)
    (bundle / "bundle.json").write_text(json.dumps(info))
    lines = []
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(None, 1)
        if name == "bundle.json":
            digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
        lines.append(f"{digest}  {name}")
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_bundle_manifest_paths_and_messages(tiny_bundle, tmp_path):
    b = _copy_bundle(tiny_bundle, tmp_path / "b")
    (tmp_path / "outside").write_text("x")
    import hashlib

    digest = hashlib.sha256(b"x").hexdigest()
    with open(b / "SHA256SUMS", "a") as fh:
        fh.write(f"{digest}  ../outside\n")
    with pytest.raises(BundleError, match="not a file inside the bundle"):
        verify_bundle(b)
    for k, (field, value, message) in enumerate((("format_version", "1", "must be an integer"),
                                  ("input_size", 0, "input_size must be"),
                                  ("masked", "no", "masked must be"),
                                  ("base_stages", {"stage1": {}}, "needs both base_stages"),
                                  ("base_stages", ["stage1"], "base_stages must map"))):
        b = _copy_bundle(tiny_bundle, tmp_path / f"b_{k}_{field}")
        _rewrite(b, lambda info: info.update({field: value}))
        with pytest.raises(BundleError, match=message) as err:
            verify_bundle(b)
        assert "VGG16" not in str(err.value)


# --------------------------------------------------------------------------- 15. API misuse


def test_api_misuse_gets_hiercell_errors(tiny_model):
    img = gray(40, 40)
    cases = [(lambda: tiny_model.predict_proba([]), ValueError, "no images"),
             (lambda: tiny_model.predict_records([img], top_k=-1), ValueError, "top_k"),
             (lambda: tiny_model.predict_records([img], batch_size=0), ValueError, "batch_size"),
             (lambda: tiny_model.predict_proba([img], batch_size=0), ValueError, "batch_size"),
             (lambda: tiny_model.predict(None), TypeError, "got None"),
             (lambda: tiny_model.predict([b"bytes"]), TypeError, "bytes"),
             (lambda: tiny_model.predict(b"bytes"), TypeError, "bytes"),
             (lambda: tiny_model.predict(np.zeros((0, 0, 3), np.uint8)), ValueError, "too small"),
             (lambda: tiny_model.predict(42), TypeError, "int"),
             (lambda: tiny_model.predict([img, 42]), TypeError,
              r"image 1 must be an image path or an RGB uint8 numpy array \(H, W, 3\), got int"),
             # features takes arrays only, and says so (no "or an image path")
             (lambda: tiny_model.features([42]), TypeError,
              r"image 0 must be an RGB uint8 numpy array \(H, W, 3\), got int")]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message):
            call()
    with pytest.raises(ValueError, match="top_k"):
        classify_folder(".", model=StandIn(), top_k=-1, progress=False)


# --------------------------------------------------------------------------- done when


def test_a_folder_mixing_everything_exits_3_with_every_entry_named(cli, tmp_path, monkeypatch):
    d = tmp_path / "mix"
    d.mkdir()
    good = {f"good_{i}.png": write_png(d / f"good_{i}.png", colour(i % 8)) for i in range(5)}
    good[NON_UTF8] = write_png(d / NON_UTF8, colour(3))
    good["=cmd.png"] = write_png(d / "=cmd.png", colour(1))
    ok, gif = cv2.imencode(".gif", gray(20, 20, 90))
    (d / "anim.gif").write_bytes(gif.tobytes())
    if ok:
        good["anim.gif"] = d / "anim.gif"
    os.symlink(d / "good_0.png", d / "same_as_good_0.png")
    bad = {"dot.png", "line.png", "broken.png", "text.jpg", "empty.jpg", "evil\x1b]0;x\x07.jpg",
           "locked"}
    assert cv2.imwrite(str(d / "dot.png"), gray(1, 1))
    assert cv2.imwrite(str(d / "line.png"), gray(1000, 3))
    os.symlink(d / "missing.png", d / "broken.png")
    (d / "text.jpg").write_text("hello")
    (d / "empty.jpg").write_bytes(b"")
    (d / "evil\x1b]0;x\x07.jpg").write_text("x")
    (d / "locked").mkdir()
    write_png(d / "locked" / "inside.png", colour(2))
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(p))) if Path(p).name == "locked"
        else real_scandir(p))

    r = cli(d, "--recursive", "-o", "res.csv", "--summary", "s.json")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and "\x1b" not in r.output
    for name in bad:
        assert display(name) in r.stderr, name
    with open(tmp_path / "res.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(good) + len(bad)
    status = {Path(from_csv_cell(row["path"])).name: row["status"] for row in rows}
    assert all(status[n] == "ok" for n in good) and all(status[n] == "error" for n in bad)
    assert all(row["error"] for row in rows if row["status"] == "error")
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        frame = pd.read_csv(tmp_path / "res.csv")
        assert list(frame.columns) == list(RECORD_COLUMNS) and len(frame) == len(rows)
    json.loads((tmp_path / "s.json").read_text())
    r = cli(d, "--recursive", "-o", "res.csv", "--resume")  # nothing valid is redone
    assert r.exit_code == 3 and f"{len(good)} kept" in r.stderr


# --------------------------------------------------------------------------- output targets
# (a hostile review: devices replaced by plain files, links broken, empty paths, merge
# overwriting its own inputs, edited rows kept by --resume, repeated manifest rows)


def test_outputs_write_through_links_keep_permissions_and_refuse_devices(tmp_path):
    from hiercell.atomic import atomic_write_text, output_target

    target = tmp_path / "real.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    (tmp_path / "lk").mkdir()
    link = tmp_path / "lk" / "link.csv"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert os.stat(target).st_mode & 0o777 == 0o640
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad, error in ((fifo, OSError), (tmp_path, IsADirectoryError),
                       (blocker / "x.csv", NotADirectoryError), ("", ValueError)):
        with pytest.raises(error):
            output_target(bad)
        with pytest.raises(error):
            atomic_write_text(bad, "y")
    assert stat_is_fifo(fifo) and blocker.read_text() == "x"


def stat_is_fifo(path):
    import stat

    return stat.S_ISFIFO(os.stat(path).st_mode)


def test_classify_refuses_bad_output_targets_before_any_work(cli, good_dir, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "file").write_text("x")
    for args, says in ((["--out", ""], "empty path"), (["--summary", " "], "empty path"),
                       (["--out", fifo], "not a regular file"),
                       (["--report", "file/r.html"], "is a file, not a folder")):
        r = cli(good_dir, *args)
        assert r.exit_code == 2 and says in r.output, (args, r.output)
    assert cli.loaded == [] and stat_is_fifo(fifo)
    target = tmp_path / "real.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    (tmp_path / "link.csv").symlink_to(target)
    r = cli(good_dir, "--out", "link.csv")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link.csv").is_symlink() and len(read_results(target)) == 7
    assert os.stat(target).st_mode & 0o777 == 0o640  # the results file keeps its permissions


def test_resume_classifies_again_a_row_whose_columns_disagree(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    classify_folder(good_dir, model=StandIn(), out=out, progress=False)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    plain = next(i for i, r in enumerate(rows) if not r["subclass"])
    sub = next(i for i, r in enumerate(rows) if r["subclass"] not in ("", "Others"))
    rows[plain]["main_class"] = "platelet" if rows[plain]["label"] != "platelet" else "basophil"
    rows[sub]["main_class"] = "ig" if rows[sub]["main_class"] == "neutrophil" else "neutrophil"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RECORD_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    rejected = []
    assert len(read_results(out, rejected=rejected)) == len(rows) - 2
    assert sorted(n for n, _ in rejected) == sorted([plain + 2, sub + 2])
    assert all("disagree" in why for _, why in rejected)
    model = StandIn()
    res = classify_folder(good_dir, model=model, out=out, resume=True, progress=False)
    assert len(model.seen) == 2 and len(res.rejected) == 2


def test_merge_refuses_outputs_that_are_shares_or_each_other(tmp_path, monkeypatch):
    import hiercell.bundle

    monkeypatch.setattr(hiercell.bundle, "load", lambda path=None, precision="auto": StandIn())
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(6):
        write_png(folder / f"c{i}.png", (40 * i, 90, 60))
    runner = CliRunner()
    shares = []
    for k in (1, 2):
        shares.append(tmp_path / f"s{k}.csv")
        r = runner.invoke(main, ["classify", str(folder), "--shard", f"{k}/2",
                                 "--out", str(shares[-1])])
        assert r.exit_code == 0, r.output
    before = [s.read_bytes() for s in shares]
    merged = str(tmp_path / "m.csv")
    for extra in (["--out", merged, "--summary", merged], ["--out", merged, "--summary", shares[1]],
                  ["--out", shares[0]], ["--out", ""]):
        r = runner.invoke(main, ["merge", *map(str, shares), *map(str, extra)])
        assert r.exit_code == 2, (extra, r.output)
    assert [s.read_bytes() for s in shares] == before and not Path(merged).exists()


def test_manifest_rows_repeated_are_dropped_and_contradictions_refused(tmp_path, caplog):
    from hiercell.data import read_manifest

    rows = ["path,label", "a.png,LY", "b.png,NEUTROPHIL", "./a.png,LY", "c.png,MO", "b.png,NEUTROPHIL"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        samples = read_manifest(manifest)
    assert [Path(s.path).name for s in samples] == ["a.png", "b.png", "c.png"]
    assert "2 row(s) repeat an earlier row" in caplog.text and "lines 4, 6" in caplog.text
    manifest.write_text("\n".join(rows + ["a.png,MO"]) + "\n")
    with pytest.raises(ValueError, match=r"m\.csv:7: .*a\.png is listed again with label 'MO' "
                                         r"\(line 2: label 'LY'\)"):
        read_manifest(manifest)
    manifest.write_bytes("path,label\ncaf\u00e9.png,LY\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.csv: not UTF-8 text"):
        read_manifest(manifest)


def test_segment_into_its_own_input_folder_says_so(good_dir):
    r = CliRunner().invoke(main, ["segment", str(good_dir), "--out", str(good_dir)])
    assert r.exit_code == 2 and "is the --out folder or inside it" in r.output, r.output


def test_a_run_with_no_cell_classified_does_not_blame_the_model():
    from hiercell.differential import review_line

    assert review_line({"n_classified": 0, "review_scored": False}) == \
        "Review: no cell was classified"
    assert "gives no review score" in review_line({"n_classified": 3, "review_scored": False})
