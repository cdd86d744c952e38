"""Evaluation statistics on label arrays: summaries, bootstrap CIs, McNemar, confusion PNGs.

Everything here works on plain label sequences (strings or ints); nothing
needs a model. Results are JSON-serialisable plain Python types.

Conventions
-----------
* ``labels`` fixes the class order of per-class tables and confusion matrices
  (rows = true class, columns = predicted class). When ``None`` it is the
  sorted union of the labels seen in ``y_true`` and ``y_pred``. A label seen in
  the data but missing from ``labels`` is an error.
* Macro-F1 is the unweighted mean F1 over the classes that occur in ``y_true``
  or ``y_pred`` (scikit-learn's default label set), so a class listed in
  ``labels`` but absent from both arrays is reported (support 0, scores 0) but
  does not pull the macro average down. The bootstrap uses the same rule on
  each resample.
* Differences between two arms are ``metric(b) - metric(a)``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from .atomic import atomic_write_bytes

METRICS = ("accuracy", "macro_f1")

#: Below this many discordant pairs (b + c) McNemar uses the exact binomial test.
MCNEMAR_EXACT_BELOW = 25


# --------------------------------------------------------------------------- helpers
def _as_labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype=object).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _check_paired(y_true, *preds) -> tuple[np.ndarray, ...]:
    arrays = [_as_labels(y_true, "y_true")]
    for i, p in enumerate(preds):
        arrays.append(_as_labels(p, f"y_pred[{i}]" if len(preds) > 1 else "y_pred"))
    n = arrays[0].size
    bad = [a.size for a in arrays[1:] if a.size != n]
    if bad:
        raise ValueError(f"length mismatch: y_true has {n} items, predictions have {bad}")
    return tuple(arrays)


def _resolve_labels(labels, *arrays) -> list:
    seen = set()
    for a in arrays:
        seen.update(a.tolist())
    if labels is None:
        return sorted(seen, key=lambda v: (str(type(v)), v))
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate entries in labels: {labels}")
    unknown = seen.difference(labels)
    if unknown:
        raise ValueError(f"labels {sorted(map(str, unknown))} occur in the data but not in `labels`")
    return labels


def _encode(arr: np.ndarray, labels: list) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    return np.fromiter((index[v] for v in arr), dtype=np.intp, count=arr.size)


def _py(v):
    """numpy scalar -> plain Python scalar (labels may be numpy strings/ints)."""
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------- summary
def classification_summary(y_true, y_pred, labels=None) -> dict:
    """Accuracy, macro-F1, balanced accuracy, per-class P/R/F1/support and confusion matrix.

    Returns a dict of plain Python types::

        {"n", "accuracy", "macro_f1", "balanced_accuracy", "labels",
         "per_class": {label: {"precision", "recall", "f1", "support"}},
         "confusion_matrix": [[...], ...]}   # rows = true, cols = predicted, ``labels`` order

    Labels listed in ``labels`` but absent from both arrays get support 0 and
    scores 0 (``zero_division=0``); see the module docstring for macro-F1.
    """
    yt, yp = _check_paired(y_true, y_pred)
    labels = _resolve_labels(labels, yt, yp)
    p, r, f, s = precision_recall_fscore_support(
        yt, yp, labels=labels, average=None, zero_division=0
    )
    present = set(yt.tolist()) | set(yp.tolist())
    observed = [i for i, lab in enumerate(labels) if lab in present]
    cm = confusion_matrix(yt, yp, labels=labels)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected here
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(yt, yp))  # mean recall over classes in y_true
    return {
        "n": int(yt.size),
        "accuracy": float(np.mean(yt == yp)),
        "macro_f1": float(np.mean(f[observed])),
        "balanced_accuracy": balanced,
        "labels": [_py(lab) for lab in labels],
        "per_class": {
            str(_py(lab)): {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


# --------------------------------------------------------------------------- bootstrap
def _metric_from_weights(metric: str, W: np.ndarray, correct, onehot_true, onehot_pred):
    """Metric per row of item weights ``W`` (n_rep, n); weights are resample counts."""
    if metric == "accuracy":
        return (W @ correct) / W.sum(axis=1)
    tp = W @ (onehot_true * correct[:, None])
    denom = W @ onehot_true + W @ onehot_pred  # (#true + #pred) per class
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)


def _bootstrap_weights(rng, n: int, n_boot: int, max_cells: int = 4_000_000):
    """Yield (chunk_rows, n) float matrices of resample counts (rows sum to ``n``)."""
    rows = max(1, min(n_boot, max_cells // n))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        idx = rng.integers(0, n, size=(k, n))
        flat = (idx + (np.arange(k) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64)
        done += k


def _prepare(y_true, preds, labels, metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    arrays = _check_paired(y_true, *preds)
    labels = _resolve_labels(labels, *arrays)
    codes = [_encode(a, labels) for a in arrays]
    eye = np.eye(len(labels))
    yt = codes[0]
    arms = []
    for yp in codes[1:]:
        arms.append(((yt == yp).astype(np.float64), eye[yt], eye[yp]))
    return yt.size, arms


def _check_boot(n_boot, alpha):
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _bootstrap_stats(y_true, preds, metric, n_boot, seed, labels):
    """(point estimates per arm, (n_boot, n_arms) bootstrap replicates)."""
    n, arms = _prepare(y_true, preds, labels, metric)
    ones = np.ones((1, n))
    point = [float(_metric_from_weights(metric, ones, *arm)[0]) for arm in arms]
    rng = np.random.default_rng(seed)
    reps = [
        np.stack([_metric_from_weights(metric, W, *arm) for arm in arms], axis=1)
        for W in _bootstrap_weights(rng, n, int(n_boot))
    ]
    return point, np.concatenate(reps, axis=0)


def metric_value(y_true, y_pred, metric="accuracy", labels=None) -> float:
    """``accuracy`` or ``macro_f1`` of ``y_pred`` (same definitions as the bootstrap)."""
    n, arms = _prepare(y_true, [y_pred], labels, metric)
    return float(_metric_from_weights(metric, np.ones((1, n)), *arms[0])[0])


def bootstrap_ci(y_true, y_pred, metric="accuracy", n_boot=2000, alpha=0.05, seed=0,
                 labels=None) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` CI of ``metric`` by resampling test items.

    ``metric`` is ``"accuracy"`` or ``"macro_f1"``. Each of ``n_boot`` resamples
    draws ``n`` items with replacement (one vectorised multinomial-count matrix
    per chunk); the interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles.
    Deterministic for a given ``seed``.
    """
    _check_boot(n_boot, alpha)
    _, reps = _bootstrap_stats(y_true, [y_pred], metric, n_boot, seed, labels)
    lo, hi = np.quantile(reps[:, 0], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(y_true, pred_a, pred_b, metric="accuracy", n_boot=2000, alpha=0.05,
                          seed=0, labels=None) -> tuple[float, float, float]:
    """``(diff, low, high)`` for ``metric(pred_b) - metric(pred_a)`` on the same items.

    Both arms are scored on the *same* resamples (paired bootstrap), so the
    interval reflects only the disagreement between the arms, not the
    item-to-item variance they share.
    """
    _check_boot(n_boot, alpha)
    point, reps = _bootstrap_stats(y_true, [pred_a, pred_b], metric, n_boot, seed, labels)
    d = reps[:, 1] - reps[:, 0]
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(point[1] - point[0]), float(lo), float(hi)


# --------------------------------------------------------------------------- McNemar
def _binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes out of ``n`` under p = 1/2 (symmetric: doubled tail)."""
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def mcnemar_from_table(b: int, c: int, exact_below: int = MCNEMAR_EXACT_BELOW) -> dict:
    """McNemar's test from the discordant counts ``b`` (only A right) and ``c`` (only B right).

    * ``b + c < exact_below`` (default 25): exact two-sided binomial test,
      ``p = min(1, 2 * P[X <= min(b, c)])`` with ``X ~ Bin(b + c, 1/2)``;
      ``statistic = min(b, c)``. Computed with integer binomial coefficients.
    * otherwise: chi-square with continuity (Edwards/Yates) correction,
      ``statistic = max(|b - c| - 1, 0)^2 / (b + c)``, ``p = P[chi2_1 >= statistic]``
      (``= erfc(sqrt(statistic / 2))``). The clamp at 0 keeps ``b == c`` at
      statistic 0 / p 1.

    ``b + c == 0`` gives statistic 0 and p 1 (the arms never disagree).
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n < exact_below:
        stat = float(min(b, c))
        p = 1.0 if n == 0 else _binom_two_sided_half(b, n)
        method = "exact two-sided binomial (b + c < %d)" % exact_below
    else:
        stat = max(abs(b - c) - 1, 0) ** 2 / n
        p = math.erfc(math.sqrt(stat / 2.0))
        method = "chi-square, 1 df, continuity-corrected (b + c >= %d)" % exact_below
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p), "method": method}


def mcnemar(y_true, pred_a, pred_b, exact_below: int = MCNEMAR_EXACT_BELOW) -> dict:
    """McNemar's test for two classifiers scored on the same items.

    Returns ``mcnemar_from_table(a_only, b_only)`` plus the 2x2 correctness table:
    ``both_right``, ``a_only`` (A right, B wrong; = b), ``b_only`` (A wrong,
    B right; = c), ``both_wrong``, ``n``, and
    ``table = [[both_right, a_only], [b_only, both_wrong]]`` (rows: A right / A
    wrong; columns: B right / B wrong).
    """
    yt, pa, pb = _check_paired(y_true, pred_a, pred_b)
    ra, rb = yt == pa, yt == pb
    both_right = int(np.sum(ra & rb))
    a_only = int(np.sum(ra & ~rb))
    b_only = int(np.sum(~ra & rb))
    both_wrong = int(np.sum(~ra & ~rb))
    out = {
        "n": int(yt.size),
        "both_right": both_right,
        "a_only": a_only,
        "b_only": b_only,
        "both_wrong": both_wrong,
        "table": [[both_right, a_only], [b_only, both_wrong]],
    }
    out.update(mcnemar_from_table(a_only, b_only, exact_below=exact_below))
    return out


# --------------------------------------------------------------------------- confusion PNG
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LIGHT = np.array([247, 251, 255], np.float64)  # RGB, low end of a "Blues" ramp
_DARK = np.array([8, 48, 107], np.float64)  # RGB, high end
_INK = (20, 20, 20)
_PAPER = (255, 255, 255)


def _text_size(text, scale, thick=1):
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thick)
    return w, h, base


def _put(img, text, x, y, scale, color=_INK, thick=1):
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, color, thick, cv2.LINE_AA)


def _put_centered(img, text, cx, cy, scale, color=_INK, thick=1):
    w, h, _ = _text_size(text, scale, thick)
    _put(img, text, cx - w / 2, cy + h / 2, scale, color, thick)


def _vertical_label(text, scale, thick=1):
    """Text rendered horizontally, then rotated to read bottom-to-top: (h, w, 3) uint8."""
    w, h, base = _text_size(text, scale, thick)
    strip = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    _put(strip, text, 2, h + 2, scale, _INK, thick)
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)


def render_confusion_matrix(cm, labels, title: str = "", normalize: bool = True) -> np.ndarray:
    """Draw a confusion matrix as an RGB ``uint8`` image of shape ``(H, W, 3)``.

    ``cm`` is ``(K, K)`` counts, rows = true class, columns = predicted class,
    in ``labels`` order. Cells are shaded white -> dark blue by the row
    fraction (``normalize=True``) or by count / max count, and show the count
    (and the row percentage when ``normalize``). Row totals are printed on the
    right; rows with no items are grey.
    """
    cm = np.asarray(cm)
    labels = [str(lab) for lab in labels]
    k = len(labels)
    if cm.ndim != 2 or cm.shape != (k, k):
        raise ValueError(f"cm must have shape ({k}, {k}) for {k} labels, got {cm.shape}")
    if k == 0:
        raise ValueError("no labels to draw")
    if np.any(cm < 0):
        raise ValueError("confusion matrix counts must be >= 0")
    cm = cm.astype(np.int64)
    totals = cm.sum(axis=1)
    frac = np.divide(cm, totals[:, None], out=np.zeros(cm.shape), where=totals[:, None] > 0)
    shade = frac if normalize else cm / max(int(cm.max()), 1)

    s_lab, s_cell, s_pct, s_title = 0.5, 0.5, 0.4, 0.65
    pad = 10
    lab_w = max(_text_size(t, s_lab)[0] for t in labels)
    count_w = _text_size(str(int(cm.max())), s_cell)[0]
    cell_w = max(64, count_w + 16)
    cell_h = 48 if normalize else 36
    horizontal_cols = lab_w + 8 <= cell_w
    col_lab_h = (_text_size("Ag", s_lab)[1] + 12) if horizontal_cols else lab_w + 12
    tot_w = max(_text_size(f"n={int(totals.max())}", s_lab)[0], _text_size("total", s_lab)[0]) + 16
    axis_h = _text_size("Predicted", s_lab)[1] + 12
    title_h = (_text_size(title, s_title)[1] + 20) if title else 0
    axis_w = _text_size("True", s_lab)[1] + 16

    x0 = pad + axis_w + lab_w + 10  # matrix left edge
    y0 = pad + title_h + axis_h + col_lab_h  # matrix top edge
    width = max(x0 + k * cell_w + tot_w + pad, pad + (_text_size(title, s_title)[0] if title else 0) + pad)
    height = y0 + k * cell_h + pad
    img = np.full((height, width, 3), 255, np.uint8)

    if title:
        _put_centered(img, title, width / 2, pad + title_h / 2 - 4, s_title, _INK, 1)
    _put_centered(img, "Predicted", x0 + k * cell_w / 2, pad + title_h + axis_h / 2, s_lab, _INK, 1)
    vt = _vertical_label("True", s_lab)
    vy = int(y0 + k * cell_h / 2 - vt.shape[0] / 2)
    img[vy:vy + vt.shape[0], pad:pad + vt.shape[1]] = vt

    colors = (_LIGHT + (_DARK - _LIGHT) * shade[..., None]).round().astype(np.uint8)
    for i in range(k):
        cy = y0 + i * cell_h
        # row label, right-aligned next to the matrix
        w, h, _ = _text_size(labels[i], s_lab)
        _put(img, labels[i], x0 - 8 - w, cy + cell_h / 2 + h / 2, s_lab)
        _put(img, f"n={int(totals[i])}", x0 + k * cell_w + 8, cy + cell_h / 2 + h / 2, s_lab)
        for j in range(k):
            cx = x0 + j * cell_w
            fill = colors[i, j] if totals[i] > 0 else np.array([225, 225, 225], np.uint8)
            img[cy:cy + cell_h, cx:cx + cell_w] = fill
            ink = _PAPER if shade[i, j] >= 0.5 else _INK
            thick = 2 if i == j else 1
            if normalize and totals[i] > 0:
                _put_centered(img, str(int(cm[i, j])), cx + cell_w / 2, cy + cell_h / 2 - 8, s_cell, ink, thick)
                _put_centered(img, f"{100 * frac[i, j]:.1f}%", cx + cell_w / 2, cy + cell_h / 2 + 10, s_pct, ink, 1)
            else:
                _put_centered(img, str(int(cm[i, j])), cx + cell_w / 2, cy + cell_h / 2, s_cell, ink, thick)
    # grid lines and frame
    for i in range(k + 1):
        cv2.line(img, (x0, y0 + i * cell_h), (x0 + k * cell_w, y0 + i * cell_h), (200, 200, 200), 1)
        cv2.line(img, (x0 + i * cell_w, y0), (x0 + i * cell_w, y0 + k * cell_h), (200, 200, 200), 1)
    cv2.rectangle(img, (x0, y0), (x0 + k * cell_w, y0 + k * cell_h), (90, 90, 90), 1)
    # column labels
    for j in range(k):
        cx = x0 + j * cell_w
        if horizontal_cols:
            _put_centered(img, labels[j], cx + cell_w / 2, y0 - col_lab_h / 2, s_lab)
        else:
            v = _vertical_label(labels[j], s_lab)
            vh, vw = v.shape[:2]
            top, left = y0 - 6 - vh, int(cx + cell_w / 2 - vw / 2)
            img[top:top + vh, left:left + vw] = v
    return img


def confusion_matrix_png(cm, labels, path, title: str = "", normalize: bool = True) -> Path:
    """Render ``cm`` (see :func:`render_confusion_matrix`) and write it atomically as a PNG."""
    img = render_confusion_matrix(cm, labels, title=title, normalize=normalize)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return atomic_write_bytes(path, buf.tobytes())
