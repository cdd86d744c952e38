"""Review flags in the workflow layer: the differential count with and without the cells
that need review, the folder's domain check, and the results file's review columns.

Records are made by hand or by :class:`ReviewStandIn`, a stub model whose review score and
novelty follow the image's colour, so no network weights are needed.
"""

import csv
import json
import random

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import hiercell.bundle
from hiercell.classify import classify_folder
from hiercell.cli import main
from hiercell.differential import format_summary, summarize
from hiercell.records import Prediction
from hiercell.results import read_results
from hiercell.review import domain_shift, records_novelty
from hiercell.taxonomy import MAIN_CLASSES, SUBCLASSES


def rec(main, sub=None, review=False, score=None, novelty=None, uncertain=False):
    label = sub if sub not in (None, "Others") else main
    return Prediction(path="x.png", label=label, probability=0.9, main_class=main,
                      main_probability=0.9, subclass=sub, uncertain=uncertain,
                      review_score=score, review=review, novelty=novelty)


def test_count_with_and_without_the_cells_that_need_review():
    recs = ([rec("neutrophil", "SNE", score=0.1)] * 3 + [rec("neutrophil", "BNE", True, 0.9)]
            + [rec("ig", "MY", True, 0.95)] * 2 + [rec("ig", "PMY", score=0.2)]
            + [rec("lymphocyte", score=0.3)] * 2 + [rec("monocyte", None, True, 0.99)]
            + [Prediction.failed("bad.png", "empty file")])
    s = summarize(recs)
    assert (s["n_classified"], s["n_review"], s["review_percent"]) == (10, 4, 40.0)
    assert s["review_scored"] is True
    kept = s["without_review"]
    assert kept["n_classified"] == 6
    assert list(kept["main_classes"]) == list(s["main_classes"]) == list(MAIN_CLASSES)
    assert {k: v["count"] for k, v in kept["main_classes"].items() if v["count"]} == {
        "neutrophil": 3, "ig": 1, "lymphocyte": 2}
    assert s["main_classes"]["monocyte"]["count"] == 1
    assert kept["main_classes"]["monocyte"] == {"count": 0, "percent": 0.0, "ci95": [0.0, 46.0]}
    assert kept["main_classes"]["neutrophil"]["percent"] == 50.0
    assert kept["subclasses"]["n_cells"] == 4 and s["subclasses"]["n_cells"] == 7
    assert {k: v["count"] for k, v in kept["subclasses"]["classes"].items() if v["count"]} == {
        "SNE": 3, "PMY": 1}
    for table in (kept["main_classes"], kept["subclasses"]["classes"]):
        assert round(sum(v["percent"] for v in table.values()), 6) == 100
    text = format_summary(s)
    assert "4 cells need review (40.0 % of classified cells)" in text
    assert "w/o review" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("neutrophil"))
    assert line.split()[1:6] == ["4", "40.0", "12.1-73.8", "3", "50.0"]  # 95% CI: 4 of 10
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("SNE"))
    assert line.split()[1:6] == ["3", "42.8", "9.8-81.6", "3", "75.0"]  # largest remainder
    json.dumps(s)


def test_models_without_a_review_scorer_keep_the_old_count():
    recs = [rec("neutrophil", "SNE"), rec("ig", "Others", uncertain=True), rec("basophil")]
    s = summarize(recs)
    assert s["review_scored"] is False and s["n_review"] == 0
    assert s["without_review"]["main_classes"] == s["main_classes"]
    assert s["without_review"]["subclasses"] == s["subclasses"]
    assert s["domain_shift"]["warning"] is False and s["domain_shift"]["n"] == 0
    text = format_summary(s)
    assert "w/o review" not in text and "no review score" in text
    for name in (*MAIN_CLASSES, *SUBCLASSES, "unspecified"):
        assert name in text
    # a summary from before the review columns still formats
    old = {k: v for k, v in s.items()
           if k not in ("review_scored", "n_review", "review_percent", "without_review",
                        "domain_shift")}
    assert "Differential count" in format_summary(old)


def test_domain_shift_from_the_records_novelty():
    rng = random.Random(0)
    in_lab = [rec("lymphocyte", score=0.2, novelty=rng.random()) for _ in range(50)]
    shift = summarize(in_lab)["domain_shift"]
    assert shift["warning"] is False and shift["n"] == 50
    novel = [rec("lymphocyte", score=0.8, novelty=0.96 + 0.04 * rng.random()) for _ in range(40)]
    shift = summarize(novel + in_lab[:10])["domain_shift"]
    assert shift["warning"] is True and shift["n"] == 50
    assert "unlike the training data" in shift["message"] and "hiercell adapt" in shift["message"]
    # error rows and cells without a novelty are not counted
    shift = summarize(novel[:5] + [Prediction.failed("a.png", "empty file")])["domain_shift"]
    assert shift["n"] == 5


def test_records_novelty_is_what_the_summary_checks():
    cells = [rec("ig", novelty=0.99), rec("platelet", novelty=0.1), rec("ig", novelty=None)]
    assert records_novelty(cells) == ([0.99, 0.1, None], ["ig", "platelet", "ig"])
    rates = {"ig": 0.3, "platelet": 0.01}
    shift = summarize(cells, class_rates=rates)["domain_shift"]
    assert shift == {**domain_shift(*records_novelty(cells), rates), "class_rates": rates}
    assert shift["expected"] == pytest.approx((0.3 + 0.01) / 2)  # the None cell is skipped


def test_domain_shift_of_a_large_folder():
    rng = random.Random(1)
    many = [rec("lymphocyte", score=0.2, novelty=rng.random()) for _ in range(6000)]
    assert summarize(many)["domain_shift"]["warning"] is False
    assert summarize([rec("ig", novelty=0.99)] * 6000)["domain_shift"]["warning"] is True


# --------------------------------------------------------------------------- results files


class ReviewStandIn:
    """Stub model: main class from the red channel; review score and novelty from the blue."""

    input_size = 32
    masked = False

    def __init__(self):
        self.hierarchy = self

    def features(self, images, masked=None):
        return np.array([img.reshape(-1, 3).mean(0) for img in images])

    def predict_records(self, X, paths=None, top_k=3):
        out = []
        for (r, _, b), path in zip(X, paths):
            main = MAIN_CLASSES[min(int(round(r)) // 32, 7)]
            score = float(np.float32(b / 255.0))  # a numpy value once, as a model gives
            out.append(Prediction(path=path, label=main, probability=0.8, main_class=main,
                                  main_probability=0.8, top=[(main, 0.8)],
                                  review_score=np.float32(score), review=np.bool_(score > 0.5),
                                  novelty=np.float32(score)))
        return out

    def gradcam(self, rgb, class_name=None, masked=None, features=None):
        return np.zeros(rgb.shape[:2], np.float32)


def _folder(tmp_path, blues):
    d = tmp_path / "cells"
    d.mkdir()
    for i, b in enumerate(blues):
        img = np.zeros((16, 16, 3), np.uint8)
        img[:] = (b, 0, (i % 8) * 32 + 16)  # BGR: blue, green, red
        assert cv2.imwrite(str(d / f"c{i:03d}.png"), img)
    return d


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_results_carry_the_review_columns_and_resume_reads_them(tmp_path, fmt):
    d = _folder(tmp_path, [20, 200, 100, 250])
    out = tmp_path / f"res.{fmt}"
    res = classify_folder(d, model=ReviewStandIn(), out=out, fmt=fmt, progress=False)
    assert [r.review for r in res.records] == [False, True, False, True]
    if fmt == "csv":
        with open(out, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert {"review_score", "review", "novelty"} <= set(rows[0])
        assert [row["review"] for row in rows] == ["False", "True", "False", "True"]
    else:
        doc = json.loads(out.read_text())
        assert [row["review"] for row in doc["results"]] == [False, True, False, True]
        assert doc["summary"]["n_review"] == 2 and "domain_shift" in doc["summary"]
    back = read_results(out, fmt)
    assert [r.review for r in back] == [False, True, False, True]
    for a, b in zip(back, res.records):
        assert a.review_score == pytest.approx(float(b.review_score), abs=1e-6)
        assert a.novelty == pytest.approx(float(b.novelty), abs=1e-6)
    # resumed rows keep their review flags in the count
    again = classify_folder(d, model=ReviewStandIn(), out=out, fmt=fmt, resume=True,
                            progress=False)
    assert again.n_resumed == 4 and again.summary["n_review"] == 2


def test_results_from_before_the_review_columns_are_read(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("path,label,probability,main_class,main_probability,subclass,"
                   "subclass_probability,top_k,uncertain,status,error\n"
                   "a.png,lymphocyte,0.9,lymphocyte,0.9,,,lymphocyte:0.9000,False,ok,\n")
    (r,) = read_results(old)
    assert (r.review_score, r.review, r.novelty) == (None, False, None)
    assert summarize([r])["review_scored"] is False


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.setattr(hiercell.bundle, "load",
                        lambda path=None, precision="float32": ReviewStandIn(), raising=False)
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(main, ["classify", *map(str, args)])


def test_cli_warns_once_when_the_folder_looks_unlike_the_training_data(cli, tmp_path):
    d = _folder(tmp_path, [255] * 30)  # every cell novel (novelty 1.0)
    r = cli(d, "--summary", "s.json")
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "unlike the training data" in warnings[0]
    assert "hiercell adapt" in warnings[0]
    assert "warning" not in r.stdout
    assert "30 cells need review" in r.stdout
    shift = json.loads((tmp_path / "s.json").read_text())["domain_shift"]
    assert shift["warning"] is True and shift["score"] == 1.0


def test_cli_no_warning_for_in_lab_like_images(cli, tmp_path):
    d = _folder(tmp_path, [int(v) for v in np.linspace(0, 240, 50)])  # novelty < 0.95
    r = cli(d, "--summary", "s.json")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["domain_shift"]["warning"] is False


def test_the_domain_check_expects_the_models_in_lab_rate_of_each_answered_class(tmp_path):
    class Rates:
        threshold_ = 0.5

        def novel_rates(self):
            return {"neutrophil": 0.3}

    model = ReviewStandIn()
    model.reviewer = Rates()
    d = _folder(tmp_path, [250] * 8 + [20] * 16)  # a third novel, all answered by red
    summary = classify_folder(d, model=model, progress=False).summary
    shift = summary["domain_shift"]
    assert shift["class_rates"] == {"neutrophil": 0.3} and shift["score"] == pytest.approx(1 / 3, abs=1e-4)
    assert shift["expected"] == pytest.approx((3 * 0.3 + 21 * 0.05) / 24, abs=1e-4)
    assert summarize(classify_folder(d, model=ReviewStandIn(), progress=False).records
                     )["domain_shift"]["expected"] == 0.05
