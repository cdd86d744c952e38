"""Batch classification (``classify_folder``, ``hiercell classify``) and the HTML report.

These tests use :class:`StandIn`, a tiny model that follows the runner's
contract (``features``, ``hierarchy.predict_records``, ``gradcam``,
``input_size``, ``masked``) and decides from the image's mean colour (its
"features"), so no network weights are needed.
"""

import csv
import json
import os
import random
import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import hiercell.bundle
from hiercell.classify import ClassifyResult, NoImagesError, classify_folder
from hiercell.cli import main
from hiercell.differential import counting_interval, format_summary, percentages, summarize
from hiercell.records import RECORD_COLUMNS, Prediction
from hiercell.report import overlay_heatmap, write_report
from hiercell.results import partial_path, read_results
from hiercell.taxonomy import MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUB_TO_MAIN, SUBCLASSES

STAGE2 = SUBCLASSES + (OTHERS,)
POISON_BLUE = 13  # the stand-in refuses images whose mean blue is this


def colour(main: int, stage: int = 0, blue: int = 100):
    """RGB colour the stand-in maps to MAIN_CLASSES[main] (and STAGE2[stage] if routed)."""
    return (main * 32 + 16, stage * 43 + 20, blue)


class StandIn:
    """Deterministic stand-in for ImageClassifier: the label follows the mean colour."""

    input_size = 32
    masked = False

    def __init__(self, poison=True, interrupt_on_call=None):
        self.poison = poison
        self.interrupt_on_call = interrupt_on_call
        self.calls = []  # batch sizes
        self.seen = []  # paths classified, in order
        self.masked_seen = []  # the masked argument of each features() call
        self.cam_features = []  # the features gradcam() was given
        self.hierarchy = self

    def features(self, images, masked=None):
        self.calls.append(len(images))
        self.masked_seen.append(masked)
        if self.interrupt_on_call is not None and len(self.calls) == self.interrupt_on_call:
            raise KeyboardInterrupt
        for img in images:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        return np.array([img.reshape(-1, 3).mean(0) for img in images])

    def _one(self, feat, path, top_k):
        r, g, b = (int(round(v)) for v in feat)
        if self.poison and b == POISON_BLUE:
            raise ValueError("poisoned image")
        main = MAIN_CLASSES[min(r // 32, 7)]
        sub, sub_p, uncertain, label = None, None, False, main
        if main in ROUTED_MAIN:
            sub, sub_p = STAGE2[min(g // 43, 5)], 0.8
            if sub == OTHERS:
                uncertain = True
            else:  # the routing rule: the subclass decides the main class
                label, main = sub, SUB_TO_MAIN[sub]
        others = [c for c in MAIN_CLASSES if c != label]
        top = [(label, 0.7), (others[0], 0.2), (others[1], 0.1)][:top_k]
        return Prediction(path=path, label=label, probability=0.7, main_class=main,
                          main_probability=0.9, subclass=sub, subclass_probability=sub_p,
                          top=top, uncertain=uncertain)

    def predict_records(self, X, paths=None, top_k=3):
        paths = list(paths) if paths is not None else [None] * len(X)
        out = [self._one(f, p, top_k) for f, p in zip(X, paths)]
        self.seen.extend(paths)
        return out

    def gradcam(self, rgb, class_name=None, masked=None, features=None):
        self.cam_features.append(features)
        g = rgb.mean(axis=2).astype(np.float32)
        return (g - g.min()) / (np.ptp(g) + 1e-6)


class NoCam(StandIn):
    gradcam = None


class BadCam(StandIn):
    def gradcam(self, rgb, class_name=None, masked=None, features=None):
        raise RuntimeError("no gradients here")


def write_png(path, rgb_colour, size=(20, 24)):
    img = np.zeros((*size, 3), np.uint8)
    img[:] = rgb_colour
    assert cv2.imwrite(str(path), img[:, :, ::-1])
    return path


@pytest.fixture
def good_dir(tmp_path):
    d = tmp_path / "cells"
    d.mkdir()
    specs = [colour(0, 0), colour(0, 1), colour(5, 3), colour(5, 5), colour(1), colour(3),
             colour(7)]
    for i, c in enumerate(specs):
        write_png(d / f"cell_{i:02d}.png", c)
    return d


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- API


def test_csv_columns_rows_and_labels(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    model = StandIn()
    res = classify_folder(good_dir, model=model, out=out, batch_size=3, progress=False)
    assert isinstance(res, ClassifyResult)
    assert (res.n_ok, res.n_error) == (7, 0)
    header, rows = read_csv(out)
    assert tuple(header) == RECORD_COLUMNS
    assert len(rows) == 7
    assert [r["path"] for r in rows] == [str(p) for p in sorted(good_dir.iterdir())]
    assert [r["label"] for r in rows] == ["BNE", "SNE", "MMY", "ig", "eosinophil",
                                         "lymphocyte", "platelet"]
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    assert rows[3]["uncertain"] == "True" and rows[3]["subclass"] == OTHERS
    assert re.fullmatch(r"(\w+:[0-9.]+;){2}\w+:[0-9.]+", rows[0]["top_k"])
    assert model.calls == [3, 3, 1]
    assert no_temp_files(tmp_path)
    assert not partial_path(out).exists()
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_json_format(good_dir, tmp_path):
    out = tmp_path / "res.json"
    res = classify_folder([good_dir], model=StandIn(), out=out, fmt="json", top_k=2,
                          progress=False)
    doc = json.loads(out.read_text())
    assert set(doc) == {"results", "summary"}
    assert len(doc["results"]) == 7
    assert set(doc["results"][0]) == set(RECORD_COLUMNS)
    assert len(doc["results"][0]["top_k"]) == 2
    assert doc["summary"] == res.summary
    assert doc["summary"]["n_classified"] == 7


def test_files_and_folders_mixed_and_recursive(good_dir, tmp_path):
    sub = good_dir / "more"
    sub.mkdir()
    write_png(sub / "deep.png", colour(2))
    extra = write_png(tmp_path / "single.png", colour(4))
    res = classify_folder([good_dir, extra], model=StandIn(), progress=False)
    assert len(res.records) == 8
    res = classify_folder([good_dir, extra], model=StandIn(), recursive=True, progress=False)
    assert len(res.records) == 9 and {r.label for r in res.records} >= {"basophil", "monocyte"}


def test_no_images_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="no image files"):
        classify_folder(tmp_path / "empty", model=StandIn(), progress=False)
    with pytest.raises(FileNotFoundError):
        classify_folder(tmp_path / "nope", model=StandIn(), progress=False)


def make_bad_folder(tmp_path):
    """Good images, odd-but-valid images and four broken files."""
    d = tmp_path / "mixed"
    d.mkdir()
    write_png(d / "good_a.png", colour(1))
    ok, jpg = cv2.imencode(".jpg", np.full((40, 40, 3), 120, np.uint8))
    (d / "good_b.jpg").write_bytes(jpg.tobytes())
    (d / "corrupt.jpg").write_bytes(jpg.tobytes()[:len(jpg) // 3])  # truncated JPEG
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = colour(3)[::-1]
    rgba[..., 3] = 255
    assert cv2.imwrite(str(d / "rgba.tiff"), rgba)
    assert cv2.imwrite(str(d / "deep16.png"), np.full((16, 16, 3), 30000, np.uint16))
    assert cv2.imwrite(str(d / "gray.png"), np.full((16, 16), 200, np.uint8))
    page = np.full((16, 16, 3), colour(2)[::-1], np.uint8)
    assert cv2.imwritemulti(str(d / "pages.tiff"), [page, page, page])  # OpenCV reads page 1 only
    bad = {"corrupt.jpg", "empty.jpg", "text.jpg", "pages.tiff"}
    good = {"good_a.png", "good_b.jpg", "rgba.tiff", "deep16.png", "gray.png"}
    return d, good, bad


def test_bad_files_get_a_reason_and_the_batch_goes_on(tmp_path):
    d, good, bad = make_bad_folder(tmp_path)
    out = tmp_path / "res.csv"
    model = StandIn()
    res = classify_folder(d, model=model, out=out, batch_size=4, progress=False)
    assert (res.n_ok, res.n_error) == (len(good), len(bad))
    _, rows = read_csv(out)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == good | bad
    for name in good:
        assert by_name[name]["status"] == "ok" and by_name[name]["label"], name
    for name in bad:
        assert by_name[name]["status"] == "error" and by_name[name]["label"] == "", name
        assert len(by_name[name]["error"]) > 5, name
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "truncated JPEG" in by_name["corrupt.jpg"]["error"]
    assert "holds 3 pages" in by_name["pages.tiff"]["error"]
    assert by_name["rgba.tiff"]["label"] == "lymphocyte"
    assert sum(model.calls) == len(good)  # broken files never reach the model


def test_model_failure_falls_back_to_one_image_at_a_time(good_dir, tmp_path):
    write_png(good_dir / "cell_03b.png", colour(2, blue=POISON_BLUE))
    model = StandIn()
    res = classify_folder(good_dir, model=model, batch_size=4, progress=False)
    bad = [r for r in res.records if r.status == "error"]
    assert [r.path.rsplit("/", 1)[-1] for r in bad] == ["cell_03b.png"]
    assert "classification failed" in bad[0].error and "poisoned" in bad[0].error
    assert res.n_ok == 7
    # batch 1 went through whole; batch 2 (with cell_03b) failed and was retried one by one
    assert model.calls == [4, 4, 1, 1, 1, 1]


def test_resume_does_no_work_twice(good_dir, tmp_path):
    poisoned = write_png(good_dir / "cell_99.png", colour(6, blue=POISON_BLUE))
    out = tmp_path / "res.csv"
    first = StandIn()
    res = classify_folder(good_dir, model=first, out=out, batch_size=3, progress=False)
    assert (res.n_ok, res.n_error) == (7, 1)

    new = write_png(good_dir / "cell_50.png", colour(2))
    second = StandIn(poison=False)
    res = classify_folder(good_dir, model=second, out=out, batch_size=3, resume=True,
                          progress=False)
    assert sorted(second.seen) == sorted([str(new), str(poisoned)])  # new + earlier error only
    assert (res.n_ok, res.n_error, res.n_resumed) == (9, 0, 7)
    _, rows = read_csv(out)
    assert len(rows) == 9 and len({r["path"] for r in rows}) == 9
    assert all(r["status"] == "ok" for r in rows)

    third = StandIn()
    res = classify_folder(good_dir, model=third, out=out, resume=True, progress=False)
    assert third.calls == [] and res.n_resumed == 9 and len(read_csv(out)[1]) == 9


def test_resume_matches_resolved_paths(good_dir, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    classify_folder(good_dir, model=StandIn(), out=out, fmt="json", progress=False)
    monkeypatch.chdir(good_dir.parent)
    again = StandIn()
    res = classify_folder("cells", model=again, out=out, fmt="json", resume=True,
                          progress=False)
    assert again.calls == [] and len(res.records) == 7


def test_interrupt_keeps_old_out_and_leaves_partial_for_resume(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    out.write_text("previous results\n")
    crashing = StandIn(interrupt_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        classify_folder(good_dir, model=crashing, out=out, batch_size=2, progress=False)
    assert out.read_text() == "previous results\n"  # untouched
    assert no_temp_files(tmp_path)
    header, rows = read_csv(partial_path(out))
    assert tuple(header) == RECORD_COLUMNS and len(rows) == 4  # two finished batches

    out.unlink()  # resume also works from the .partial alone
    model = StandIn()
    res = classify_folder(good_dir, model=model, out=out, batch_size=2, resume=True,
                          progress=False)
    assert sum(model.calls) == 3 and res.n_resumed == 4
    assert len(read_csv(out)[1]) == 7
    assert not partial_path(out).exists()


def test_crash_while_writing_leaves_no_out_file(good_dir, tmp_path, monkeypatch):
    out = tmp_path / "res.csv"
    real = Prediction.to_row
    n = {"rows": 0}

    def flaky(self):
        n["rows"] += 1
        if n["rows"] == 3:
            raise OSError("disk full")
        return real(self)

    monkeypatch.setattr(Prediction, "to_row", flaky)
    with pytest.raises(OSError, match="disk full"):
        classify_folder(good_dir, model=StandIn(), out=out, batch_size=2, progress=False)
    assert not out.exists()
    assert no_temp_files(tmp_path)

    out_json = tmp_path / "res.json"
    with pytest.raises(KeyboardInterrupt):
        classify_folder(good_dir, model=StandIn(interrupt_on_call=2), out=out_json,
                        fmt="json", batch_size=2, progress=False)
    assert not out_json.exists()
    assert len(read_results(partial_path(out_json), "json")) == 2  # JSON lines, one per row


def test_progress_callback(good_dir):
    seen = []
    classify_folder(good_dir, model=StandIn(), batch_size=3,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 7), (6, 7), (7, 7)]


def test_read_results_round_trip(good_dir, tmp_path):
    for fmt in ("csv", "json"):
        out = tmp_path / f"res.{fmt}"
        res = classify_folder(good_dir, model=StandIn(), out=out, fmt=fmt, progress=False)
        assert read_results(out, fmt) == res.records


def test_resume_reads_the_old_top3_column(good_dir, tmp_path):
    out = tmp_path / "res.csv"
    res = classify_folder(good_dir, model=StandIn(), out=out, progress=False)
    out.write_text(out.read_text().replace(",top_k,", ",top3,", 1))  # a file from before the rename
    assert read_results(out) == res.records
    again = StandIn()
    res2 = classify_folder(good_dir, model=again, out=out, resume=True, progress=False)
    assert again.calls == [] and [r.top for r in res2.records] == [r.top for r in res.records]
    assert tuple(read_csv(out)[0]) == RECORD_COLUMNS  # rewritten with the new name


# --------------------------------------------------------------------------- summary


def _rec(main, sub=None, uncertain=False):
    return Prediction(path="x", label=sub if sub not in (None, OTHERS) else main, probability=0.9,
                      main_class=main, main_probability=0.9, subclass=sub, uncertain=uncertain)


def test_percentages_sum_to_100():
    rng = random.Random(0)
    for _ in range(500):
        counts = {k: rng.randint(0, 50) for k in "abcdefgh"}
        if not sum(counts.values()):
            continue
        pct = percentages(counts)
        assert round(sum(pct.values()), 6) == 100.0
        total = sum(counts.values())
        for k in counts:
            assert abs(pct[k] - 100 * counts[k] / total) < 0.1 + 1e-9
    assert percentages({"a": 1, "b": 1, "c": 1}) in (
        {"a": 33.4, "b": 33.3, "c": 33.3}, {"a": 33.3, "b": 33.4, "c": 33.3},
        {"a": 33.3, "b": 33.3, "c": 33.4})
    assert percentages({"a": 0, "b": 0}) == {"a": 0.0, "b": 0.0}


def test_summarize():
    recs = ([_rec("neutrophil", "SNE")] * 3 + [_rec("neutrophil", OTHERS, True)]
            + [_rec("ig", "MY")] * 2 + [_rec("lymphocyte")] * 3
            + [Prediction.failed("bad.jpg", "empty file")])
    s = summarize(recs)
    assert (s["n_images"], s["n_classified"], s["n_errors"]) == (10, 9, 1)
    assert list(s["main_classes"]) == list(MAIN_CLASSES)
    # largest remainder; exact binomial limits of 4 and 0 in 9
    assert s["main_classes"]["neutrophil"] == {"count": 4, "percent": 44.5, "ci95": [13.6, 78.8]}
    assert s["main_classes"]["eosinophil"] == {"count": 0, "percent": 0.0, "ci95": [0.0, 33.7]}
    assert s["subclasses"]["classes"]["SNE"]["ci95"] == [11.8, 88.2]  # 3 of the 6 routed
    assert round(sum(v["percent"] for v in s["main_classes"].values()), 6) == 100
    sub = s["subclasses"]
    assert sub["n_cells"] == 6
    assert list(sub["classes"]) == [*SUBCLASSES, "unspecified"]
    assert sub["classes"]["SNE"]["count"] == 3 and sub["classes"]["unspecified"]["count"] == 1
    assert round(sum(v["percent"] for v in sub["classes"].values()), 6) == 100
    assert s["n_uncertain"] == 1 and s["uncertain_percent"] == 11.1
    text = format_summary(s)
    for name in (*MAIN_CLASSES, *SUBCLASSES, "unspecified"):
        assert name in text
    assert "95% CI" in text
    assert re.search(r"neutrophil\s+4\s+44\.5\s+13\.6-78\.8", text)
    json.dumps(s)


def test_counting_interval_gives_rumkes_limits():
    # Rumke's table (CLSI H20) for a 100-cell differential, to the percent
    for count, (low, high) in {0: (0, 4), 1: (0, 5), 10: (5, 18), 50: (40, 60),
                               100: (96, 100)}.items():
        got = counting_interval(count, 100)  # the table's percent, our outward 0.1 %
        assert abs(got[0] - low) < 0.6 and abs(got[1] - high) < 0.6, (count, got)
    from scipy.special import betaincinv  # never narrower than the exact limits

    for count, total in ((1, 100), (3, 7), (37, 211), (500, 1000)):
        low, high = counting_interval(count, total)
        exact = (100 * betaincinv(count, total - count + 1, 0.025),
                 100 * betaincinv(count + 1, total - count, 0.975))
        assert exact[0] - 0.1 <= low <= exact[0] and exact[1] <= high <= exact[1] + 0.1
    # more cells, a narrower interval around the same share; it holds the share
    for n in (50, 200, 1000):
        low, high = counting_interval(n // 5, n)
        assert low < 20.0 < high
    assert counting_interval(200, 1000)[1] - counting_interval(200, 1000)[0] \
        < counting_interval(20, 100)[1] - counting_interval(20, 100)[0]
    assert counting_interval(0, 0) == (0.0, 100.0)
    for count, total in ((5, 4), (-1, 10), (5, 0), (2, -5)):
        with pytest.raises(ValueError, match="between 0 and total"):
            counting_interval(count, total)
    with pytest.raises(TypeError):
        counting_interval(2.5, 10)
    with pytest.raises(ValueError, match="level"):
        counting_interval(2, 10, level=1.5)


def test_summarize_nothing_classified():
    s = summarize([Prediction.failed("a.jpg", "empty file")])
    assert s["n_classified"] == 0 and s["uncertain_percent"] == 0.0
    assert all(v["percent"] == 0.0 for v in s["main_classes"].values())
    format_summary(s)


# --------------------------------------------------------------------------- report


def test_report_contains_every_image(tmp_path):
    d, good, bad = make_bad_folder(tmp_path)
    report = tmp_path / "out" / "report.html"
    summary_json = tmp_path / "summary.json"
    model = StandIn()
    res = classify_folder(d, model=model, out=tmp_path / "r.csv", report_path=report,
                          summary_path=summary_json, progress=False)
    text = report.read_text(encoding="utf-8")
    for name in good | bad:
        assert name in text
    assert text.count("<tr class=") == len(good) + len(bad)
    assert text.count('alt="Grad-CAM"') == len(good)
    assert text.count("data:image/jpeg;base64,") == 2 * len(good)
    # the report reuses the runner's decoded images and features: no second network pass
    assert sum(model.calls) == len(good)
    assert len(model.cam_features) == len(good)
    assert all(f is not None and f.shape == (3,) for f in model.cam_features)
    assert "empty file" in text and "sortRows" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # self-contained
    assert json.loads(summary_json.read_text()) == res.summary
    assert no_temp_files(report.parent)


@pytest.mark.parametrize("model, note", [(None, "no model"), (NoCam(), "no gradcam"),
                                         (BadCam(), "gave up")])
def test_report_without_gradcam(good_dir, tmp_path, model, note):
    recs = classify_folder(good_dir, model=StandIn(), progress=False).records
    path = write_report(recs, None, tmp_path / "r.html", model=model)
    text = path.read_text()
    assert note in text
    assert text.count("data:image/jpeg;base64,") == len(recs)  # thumbnails still there
    assert 'alt="Grad-CAM"' not in text


def test_report_thumbnails_off(good_dir, tmp_path):
    recs = classify_folder(good_dir, model=StandIn(), progress=False).records
    text = write_report(recs, None, tmp_path / "r.html", model=StandIn(), thumbnails=False,
                        gradcam=False).read_text()
    assert "base64" not in text and text.count("<tr class=") == 7


def test_overlay_heatmap_shapes():
    rgb = np.full((30, 40, 3), 128, np.uint8)
    out = overlay_heatmap(rgb, np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    with pytest.raises(ValueError):
        overlay_heatmap(rgb, np.zeros((3, 4, 2)))


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Run ``hiercell classify`` in tmp_path with ``hiercell.bundle.load`` returning a StandIn."""
    loaded = []
    models = []

    def fake_load(path=None, precision="float32"):
        loaded.append(path)
        models.append(StandIn())
        models[-1].info = {"tag": hiercell.bundle.bundle_tag(path)}  # as a loaded bundle's
        return models[-1]

    monkeypatch.setattr(hiercell.bundle, "load", fake_load, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["classify", *map(str, args)])

    run.loaded = loaded
    run.models = models
    return run


def test_cli_all_ok_default_out(cli, good_dir, tmp_path):
    r = cli(good_dir)
    assert r.exit_code == 0, r.output
    assert "Differential count" in r.stdout and "neutrophil" in r.stdout
    _, rows = read_csv(tmp_path / "hiercell_results.csv")
    assert len(rows) == 7
    assert cli.loaded == [None]


def test_cli_json_and_extras(cli, good_dir, tmp_path):
    r = cli(good_dir, "--format", "json", "--summary", "s.json", "--report", "r.html",
            "--top-k", "2", "--batch-size", "2", "--no-masked")
    assert r.exit_code == 0, r.output
    assert cli.models[-1].masked_seen == [False] * 4  # --no-masked reached the model
    assert "masked = False" in (tmp_path / "r.html").read_text()
    r = cli(good_dir, "--masked", "-o", "m.csv")  # the stand-in was trained unmasked: refused
    assert r.exit_code == 2 and "trained on unmasked images" in r.output, r.output
    assert not (tmp_path / "m.csv").exists()
    assert cli(good_dir, "-o", "d.csv").exit_code == 0
    assert set(cli.models[-1].masked_seen) == {None}  # the model's own default
    assert len(json.loads((tmp_path / "hiercell_results.json").read_text())["results"]) == 7
    assert (tmp_path / "s.json").exists() and (tmp_path / "r.html").exists()
    r = cli(good_dir, "--out", "x.json")  # format follows the suffix
    assert r.exit_code == 0 and "results" in json.loads((tmp_path / "x.json").read_text())


def test_cli_some_failed_exit_3(cli, tmp_path):
    d, good, bad = make_bad_folder(tmp_path)
    r = cli(d, "--out", "res.csv")
    assert r.exit_code == 3, r.output
    for name in bad:
        assert name in r.stderr
    _, rows = read_csv(tmp_path / "res.csv")
    assert sum(row["status"] == "ok" for row in rows) == len(good)


def test_cli_resume(cli, good_dir, tmp_path):
    assert cli(good_dir, "-o", "res.csv").exit_code == 0
    r = cli(good_dir, "-o", "res.csv", "--resume")
    assert r.exit_code == 0 and "7 kept" in r.stderr
    assert cli.loaded == [None]  # nothing left to do: the model was not even loaded


def test_cli_interrupt_exit_130(monkeypatch, good_dir, tmp_path):
    monkeypatch.setattr(hiercell.bundle, "load", lambda path=None, precision="float32": StandIn(interrupt_on_call=2),
                        raising=False)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["classify", str(good_dir), "--batch-size", "2"])
    assert r.exit_code == 130 and "--resume" in r.stderr
    assert not (tmp_path / "hiercell_results.csv").exists()
    assert len(read_csv(tmp_path / "hiercell_results.csv.partial")[1]) == 2


def test_cli_usage_errors_exit_2(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli(tmp_path / "empty")
    assert r.exit_code == 2 and "no image files" in r.output
    assert cli(tmp_path / "missing").exit_code == 2
    assert cli(tmp_path / "empty", "--format", "xml").exit_code == 2
    assert cli(tmp_path / "empty", "--top-k", "0").exit_code == 2
    assert cli().exit_code == 2
    assert cli.loaded == []


def test_cli_model_load_failure(monkeypatch, good_dir, tmp_path):
    def broken(path=None, precision="float32"):
        raise OSError("bundle is damaged")

    monkeypatch.setattr(hiercell.bundle, "load", broken, raising=False)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["classify", str(good_dir)])
    assert r.exit_code == 1 and "bundle is damaged" in r.output
    assert not (tmp_path / "hiercell_results.csv").exists()


def test_cli_help_states_default_out():
    r = CliRunner().invoke(main, ["classify", "--help"])
    assert r.exit_code == 0 and "hiercell_results.csv" in r.output


def test_resume_classifies_again_the_rows_of_another_model(good_dir, tmp_path):
    """Rows carry the model that wrote them; ``--resume`` with another model (or masks)
    must not pass them off as this model's answers."""
    out = tmp_path / "res.csv"
    first = StandIn()
    first.info = {"tag": "first@000000000001/seg1"}
    classify_folder(good_dir, model=first, out=out, progress=False)
    assert {r["model"] for r in read_csv(out)[1] if r["status"] == "ok"} == {first.info["tag"]}
    same = StandIn()
    same.info = dict(first.info)
    res = classify_folder(good_dir, model=same, out=out, resume=True, progress=False)
    assert same.calls == [] and res.n_stale == 0 and res.n_resumed == 7
    other = StandIn()
    other.info = {"tag": "first@000000000001/seg2"}  # same bundle, newer segmentation
    res = classify_folder(good_dir, model=other, out=out, resume=True, progress=False)
    assert (res.n_stale, res.n_resumed) == (7, 0) and sum(other.calls) == 7
    assert {r["model"] for r in read_csv(out)[1] if r["status"] == "ok"} == {other.info["tag"]}


def test_percentages_refuse_counts_that_are_not_counts():
    for counts in ({"a": -1, "b": 3}, {"a": 1.5, "b": 2}, {"a": True, "b": 2}):
        with pytest.raises((ValueError, TypeError)):
            percentages(counts)
    with pytest.raises(TypeError):
        percentages({"a": 1}, decimals=1.5)
