"""Tests for hiercell.metrics (label arrays only; no model, no data set)."""

import json
import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from hiercell.metrics import (
    bootstrap_ci,
    classification_summary,
    confusion_matrix_png,
    mcnemar,
    mcnemar_from_table,
    metric_value,
    paired_bootstrap_diff,
    render_confusion_matrix,
)

LABELS = ["neutrophil", "eosinophil", "basophil", "lymphocyte"]


def _random_labels(n=150, acc=0.8, seed=0, labels=LABELS):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(labels, n)
    y_pred = np.where(rng.random(n) < acc, y_true, rng.choice(labels, n))
    return list(y_true), list(y_pred)


# --------------------------------------------------------------------------- summary
def test_classification_summary_matches_sklearn():
    yt, yp = _random_labels()
    s = classification_summary(yt, yp, LABELS)
    assert s["n"] == len(yt)
    assert s["accuracy"] == pytest.approx(accuracy_score(yt, yp))
    assert s["macro_f1"] == pytest.approx(f1_score(yt, yp, average="macro"))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, yp))
    assert s["confusion_matrix"] == confusion_matrix(yt, yp, labels=LABELS).tolist()
    p, r, f, sup = precision_recall_fscore_support(yt, yp, labels=LABELS, zero_division=0)
    for i, lab in enumerate(LABELS):
        pc = s["per_class"][lab]
        assert (pc["precision"], pc["recall"], pc["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert pc["support"] == sup[i]
    json.dumps(s)  # plain Python types only


def test_classification_summary_hand_case_and_absent_label():
    yt = ["a", "a", "a", "b", "b", "c"]
    yp = ["a", "a", "b", "b", "c", "c"]
    s = classification_summary(yt, yp, ["a", "b", "c", "z"])
    assert s["labels"] == ["a", "b", "c", "z"]
    assert s["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3 F=0.8; b: P=1/2 R=1/2 F=0.5; c: P=1/2 R=1 F=2/3
    assert s["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert s["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # "z" does not count
    assert s["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_classification_summary_bad_input():
    with pytest.raises(ValueError, match="not in `labels`"):
        classification_summary(["a", "b"], ["a", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="length mismatch"):
        classification_summary(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        classification_summary([], [], ["a"])


# --------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_ci_contains_estimate_and_is_deterministic(metric):
    yt, yp = _random_labels()
    point = metric_value(yt, yp, metric)
    lo, hi = bootstrap_ci(yt, yp, metric, n_boot=500, seed=3)
    assert 0.0 <= lo <= point <= hi <= 1.0
    assert hi - lo > 0.01  # n=150 leaves real uncertainty
    assert bootstrap_ci(yt, yp, metric, n_boot=500, seed=3) == (lo, hi)


def test_metric_value_matches_sklearn():
    yt, yp = _random_labels(seed=5)
    assert metric_value(yt, yp, "accuracy") == pytest.approx(accuracy_score(yt, yp))
    assert metric_value(yt, yp, "macro_f1") == pytest.approx(f1_score(yt, yp, average="macro"))


def test_bootstrap_macro_f1_matches_naive_loop():
    # The vectorised replicates equal sklearn's macro-F1 on the same resamples
    # (one chunk: the index matrix is drawn in one call from default_rng(seed)).
    yt, yp = _random_labels(n=80, seed=7)
    n_boot, seed = 100, 11
    idx = np.random.default_rng(seed).integers(0, 80, size=(n_boot, 80))
    yt_a, yp_a = np.array(yt), np.array(yp)
    reps = [f1_score(yt_a[i], yp_a[i], average="macro", zero_division=0) for i in idx]
    expected = np.quantile(reps, [0.025, 0.975])
    assert bootstrap_ci(yt, yp, "macro_f1", n_boot=n_boot, seed=seed) == pytest.approx(tuple(expected))


def test_paired_bootstrap_diff():
    yt, ya = _random_labels(acc=0.7, seed=1)
    rng = np.random.default_rng(2)
    yb = [t if rng.random() < 0.9 else p for t, p in zip(yt, ya)]  # b fixes most of a's errors
    d, lo, hi = paired_bootstrap_diff(yt, ya, yb, "accuracy", n_boot=500, seed=0)
    assert d == pytest.approx(accuracy_score(yt, yb) - accuracy_score(yt, ya))
    assert lo <= d <= hi and lo > 0  # clearly better
    assert paired_bootstrap_diff(yt, ya, yb, "accuracy", n_boot=500, seed=0) == (d, lo, hi)
    assert paired_bootstrap_diff(yt, ya, ya, "macro_f1", n_boot=200) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap_diff(yt, ya, yb, "auc")


# --------------------------------------------------------------------------- McNemar
def test_mcnemar_chi2_textbook():
    # Agresti, An Introduction to Categorical Data Analysis (2nd ed., 2007), Table 8.1:
    # presidential approval of 1600 people in two surveys; discordant b=150, c=86.
    # Continuity-corrected: (|150-86| - 1)^2 / (150+86) = 63^2 / 236 = 16.82 (uncorrected 17.36).
    r = mcnemar_from_table(150, 86)
    assert r["statistic"] == pytest.approx(3969 / 236)
    assert round(r["statistic"], 2) == 16.82
    from scipy.stats import chi2

    assert r["p_value"] == pytest.approx(chi2.sf(3969 / 236, 1))
    assert r["p_value"] < 1e-4
    assert r["method"].startswith("chi-square")


def test_mcnemar_exact_small_counts_by_hand():
    # b=1, c=6: X ~ Bin(7, 1/2); p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128 = 0.125
    r = mcnemar_from_table(1, 6)
    assert r["method"].startswith("exact")
    assert r["statistic"] == 1
    assert r["p_value"] == pytest.approx(0.125)
    # b=0, c=5: p = 2 / 2^5 = 0.0625; symmetric in b and c
    assert mcnemar_from_table(5, 0)["p_value"] == pytest.approx(0.0625)
    assert mcnemar_from_table(3, 3)["p_value"] == 1.0  # capped at 1
    assert mcnemar_from_table(0, 0)["p_value"] == 1.0
    from scipy.stats import binomtest

    assert mcnemar_from_table(4, 20)["p_value"] == pytest.approx(binomtest(4, 24, 0.5).pvalue)
    assert mcnemar_from_table(5, 20)["method"].startswith("chi-square")  # b + c = 25
    assert mcnemar_from_table(30, 30)["statistic"] == 0.0  # clamp keeps b == c at 0
    with pytest.raises(ValueError):
        mcnemar_from_table(-1, 3)


def test_mcnemar_from_predictions():
    yt = ["a"] * 10
    pa = ["a"] * 6 + ["b"] * 4  # a right on items 0-5
    pb = ["a"] * 2 + ["b"] * 2 + ["a"] * 5 + ["b"]  # b right on 0,1,4..8
    r = mcnemar(yt, pa, pb)
    # both right: 0,1,4,5 ; a only: 2,3 ; b only: 6,7,8 ; both wrong: 9
    assert r["table"] == [[4, 2], [3, 1]]
    assert (r["a_only"], r["b_only"], r["b"], r["c"], r["n"]) == (2, 3, 2, 3, 10)
    assert r["p_value"] == pytest.approx(1.0)  # 2 * P(X <= 2 | n=5) = 2 * 16/32 -> capped
    json.dumps(r)


# --------------------------------------------------------------------------- PNG
def test_confusion_matrix_png_written_and_readable(tmp_path):
    cm = [[50, 3, 0], [4, 40, 6], [0, 0, 0]]  # last row empty
    labels = ["neutrophil", "erythroblast", "ig"]
    path = confusion_matrix_png(cm, labels, tmp_path / "sub" / "cm.png", title="Stage 1 - masked")
    img = cv2.imread(str(path))
    assert img is not None and img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 200
    assert img.std() > 10  # not blank
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temp file left
    rgb = render_confusion_matrix(cm, labels, normalize=False)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    with pytest.raises(ValueError, match="shape"):
        render_confusion_matrix([[1, 2], [3, 4]], labels)


def test_module_has_no_nan_in_hand_case():
    s = classification_summary(["a"], ["b"], ["a", "b"])
    assert all(math.isfinite(v) for v in (s["accuracy"], s["macro_f1"], s["balanced_accuracy"]))
