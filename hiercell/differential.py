"""The differential count of a set of records: per main class, and per maturation
stage within neutrophil + ig (:func:`summarize`), and its text table
(:func:`format_summary`).

Cells flagged for review (``Prediction.review``) are counted apart: the
summary holds the count of all classified cells and, under
``without_review``, the count of the cells that need no review; the folder's
domain check (:func:`hiercell.review.domain_shift` over the cells' novelty)
is its ``domain_shift``."""

from __future__ import annotations

import math

from .review import domain_shift, records_novelty
from .taxonomy import MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUBCLASSES

#: Subclass bucket for routed cells whose stage 2 answered "Others".
UNSPECIFIED = "unspecified"


def percentages(counts: dict, decimals: int = 1) -> dict:
    """Percentages of ``counts`` (non-negative integers) rounded to ``decimals`` places
    whose units of the last place sum to exactly 100 % (largest-remainder rounding; as
    floats the sum is 100 up to float rounding); all zeros when the total is zero."""
    import operator

    decimals = operator.index(decimals)
    if any(isinstance(v, bool) or operator.index(v) < 0 for v in counts.values()):
        raise ValueError(f"counts must be non-negative integers, got {dict(counts)}")
    total = sum(counts.values())
    if total == 0:
        return {k: 0.0 for k in counts}
    scale = 10 ** decimals
    units = 100 * scale
    floors = {k: v * units // total for k, v in counts.items()}
    rems = {k: v * units % total for k, v in counts.items()}
    short = units - sum(floors.values())
    for k in sorted(counts, key=lambda k: rems[k], reverse=True)[:short]:
        floors[k] += 1
    return {k: round(floors[k] / scale, decimals) for k in counts}


def counting_interval(count: int, total: int, level: float = 0.95) -> tuple:
    """``(low, high)`` percent: the exact (Clopper-Pearson) binomial confidence limits of
    a class's share when ``count`` of ``total`` counted cells are of it, the limits of
    Rumke's table for manual differentials (CLSI H20). They say how precisely counting
    ``total`` cells measures the slide's proportion, not how often the classifier errs;
    ``(0.0, 100.0)`` when nothing was counted. Rounded outwards to 0.1 %, so the
    printed interval is never narrower than the exact one."""
    import operator

    from scipy.special import betaincinv  # the beta quantile; lighter than scipy.stats

    count, total = operator.index(count), operator.index(total)
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not between 0 and 1")
    if total < 0 or not 0 <= count <= total:
        raise ValueError(f"count {count} is not between 0 and total {total}")
    if total == 0:
        return 0.0, 100.0
    tail = (1.0 - level) / 2.0
    low = 0.0 if count == 0 else float(betaincinv(count, total - count + 1, tail))
    high = 1.0 if count == total else float(betaincinv(count + 1, total - count, 1.0 - tail))
    # outwards; the 1e-9 keeps an exact limit such as 20.0 % from moving by float noise
    return (math.floor(1000.0 * low + 1e-9) / 10.0,
            min(100.0, math.ceil(1000.0 * high - 1e-9) / 10.0))


def _table(counts: dict) -> dict:
    pct = percentages(counts)
    total = sum(counts.values())
    return {k: {"count": int(counts[k]), "percent": pct[k],
                "ci95": list(counting_interval(int(counts[k]), total))} for k in counts}


def _counts(ok) -> tuple[dict, dict, int]:
    """``(main class counts, subclass counts, routed cells)`` of status-ok records."""
    main = dict.fromkeys(MAIN_CLASSES, 0)
    for r in ok:
        main[r.main_class] = main.get(r.main_class, 0) + 1
    sub = dict.fromkeys((*SUBCLASSES, UNSPECIFIED), 0)
    n_routed = 0
    for r in ok:
        if r.main_class in ROUTED_MAIN:
            n_routed += 1
            sub[r.subclass if r.subclass in SUBCLASSES else UNSPECIFIED] += 1
    return main, sub, n_routed


def summarize(records, aligned=False, class_rates=None) -> dict:
    """The differential count of ``records`` (a JSON-ready dict).

    ``main_classes``: count and percent of each main class among classified
    cells (all of :data:`MAIN_CLASSES`, zeros included; any other class a model
    answers is appended). ``subclasses``: within the neutrophil + ig cells,
    count and percent of each maturation stage, ``"unspecified"`` for cells
    whose stage 2 answered "Others". Percentages sum to 100 (one decimal). Each
    row's ``ci95`` is its 95 % counting interval in percent
    (:func:`counting_interval`: the sampling error of counting that many cells).

    Review: ``n_review`` cells need review (``review_percent`` of the
    classified ones); ``without_review`` is the same count (``n_classified``,
    ``main_classes``, ``subclasses``) over the other cells; ``review_scored``
    says whether any cell has a review score (``False`` for models without a
    review scorer: then nothing is flagged and both counts are equal).
    ``domain_shift``: :func:`hiercell.review.domain_shift` of the cells' novelty
    and main classes (``aligned``: the model was aligned to these cells, which its
    advice says; ``class_rates``: the model's in-lab novel share per class,
    :meth:`hiercell.review.ReviewScorer.novel_rates`, recorded there as
    ``class_rates`` so that merging shares can check again).
    """
    records = list(records)
    ok = [r for r in records if r.status == "ok"]
    main, sub, n_routed = _counts(ok)
    n_uncertain = sum(bool(r.uncertain) for r in ok)
    kept = [r for r in ok if not r.review]
    main_kept, sub_kept, n_routed_kept = _counts(kept)
    for name in main:  # the same rows in both tables
        main_kept.setdefault(name, 0)
    n_review = len(ok) - len(kept)
    return {
        "n_images": len(records),
        "n_classified": len(ok),
        "n_errors": len(records) - len(ok),
        "main_classes": _table(main),
        "subclasses": {"of": list(ROUTED_MAIN), "n_cells": n_routed, "classes": _table(sub)},
        "n_uncertain": n_uncertain,
        "uncertain_percent": round(100.0 * n_uncertain / len(ok), 1) if ok else 0.0,
        "review_scored": any(r.review_score is not None for r in ok),
        "n_review": n_review,
        "review_percent": round(100.0 * n_review / len(ok), 1) if ok else 0.0,
        "without_review": {
            "n_classified": len(kept),
            "main_classes": _table(main_kept),
            "subclasses": {"of": list(ROUTED_MAIN), "n_cells": n_routed_kept,
                           "classes": _table(sub_kept)},
        },
        "domain_shift": {**domain_shift(*records_novelty(ok), class_rates, aligned=aligned),
                         "class_rates": class_rates},
    }


def _bar(percent: float, width: int = 30) -> str:
    return "#" * int(math.floor(percent / 100 * width + 0.5))


def review_line(summary: dict) -> str:
    """"N cells need review (x % of classified cells)" (or why no cell was scored)."""
    if not summary.get("review_scored", False) and not summary.get("n_review"):
        if not summary.get("n_classified"):
            return "Review: no cell was classified"
        return "Review: this model gives no review score (no cell flagged)"
    n = summary.get("n_review", 0)
    rate = summary.get("review_rate")
    return (f"{n} cell{'' if n == 1 else 's'} need{'s' if n == 1 else ''} review "
            f"({summary.get('review_percent', 0.0):.1f} % of classified cells"
            + ("" if rate is None else
               f"; threshold set to flag {100 * rate:g} % of in-lab cells") + ")")


def format_summary(summary: dict) -> str:
    """``summary`` (from :func:`summarize`) as a plain-text table; with review scores,
    each row also gives the count without the cells that need review."""
    lines = [f"Differential count: {summary['n_classified']} of {summary['n_images']} images "
             f"classified, {summary['n_errors']} errors"]
    kept = summary.get("without_review")
    split = bool(kept) and (summary.get("review_scored") or summary.get("n_review"))
    rows = summary["main_classes"]
    sub = summary["subclasses"]
    width = max(12, *(len(k) for k in rows), *(len(k) for k in sub["classes"]))

    def table(rows, kept_rows, n, n_kept):
        head = f"  {'class':<{width}} {'count':>6} {'%':>6} {'95% CI':>11}"
        if split:
            head += f"   {'w/o review':>10} {'%':>6}"
        out = [head]
        if split:
            out.append(f"  {'total':<{width}} {n:>6} {'':>6} {'':>11}   {n_kept:>10}")
        for name, row in rows.items():
            ci = row.get("ci95")
            ci = f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else ""
            line = f"  {name:<{width}} {row['count']:>6} {row['percent']:>6.1f} {ci:>11}"
            if split:
                k = kept_rows.get(name, {"count": 0, "percent": 0.0})
                line += f"   {k['count']:>10} {k['percent']:>6.1f}"
            out.append(f"{line}  {_bar(row['percent'])}".rstrip())
        return out

    lines += table(rows, kept["main_classes"] if split else {}, summary["n_classified"],
                   kept["n_classified"] if split else 0)
    lines.append("")
    lines.append(f"Maturation stages within {' + '.join(sub['of'])} (n = {sub['n_cells']})")
    lines += table(sub["classes"], kept["subclasses"]["classes"] if split else {},
                   sub["n_cells"], kept["subclasses"]["n_cells"] if split else 0)
    lines.append("")
    lines.append(f"Uncertain (stage 2 said {OTHERS}): {summary['n_uncertain']} "
                 f"({summary['uncertain_percent']:.1f} % of classified cells)")
    lines.append(review_line(summary) + (" -- counted apart in the 'w/o review' columns"
                                         if split and summary.get("n_review") else ""))
    if any("ci95" in row for row in (*rows.values(), *sub["classes"].values())):
        lines.append("95% CI: the exact binomial limits of each share for this many cells "
                     "(counting error only, not classification error)")
    return "\n".join(lines)
