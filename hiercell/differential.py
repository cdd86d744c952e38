"""The differential count of a set of records: per main class, and per maturation
stage within neutrophil + ig (:func:`summarize`), and its text table
(:func:`format_summary`)."""

from __future__ import annotations

import math

from .taxonomy import MAIN_CLASSES, OTHERS, ROUTED_MAIN, SUBCLASSES

#: Subclass bucket for routed cells whose stage 2 answered "Others".
UNSPECIFIED = "unspecified"


def percentages(counts: dict, decimals: int = 1) -> dict:
    """Percentages of ``counts`` rounded to ``decimals`` places that sum to exactly 100
    (largest-remainder rounding); all zeros when the total is zero."""
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


def _table(counts: dict) -> dict:
    pct = percentages(counts)
    return {k: {"count": int(counts[k]), "percent": pct[k]} for k in counts}


def summarize(records) -> dict:
    """The differential count of ``records`` (a JSON-ready dict).

    ``main_classes``: count and percent of each main class among classified
    cells (all of :data:`MAIN_CLASSES`, zeros included; any other class a model
    answers is appended). ``subclasses``: within the neutrophil + ig cells,
    count and percent of each maturation stage, ``"unspecified"`` for cells
    whose stage 2 answered "Others". Percentages sum to 100 (one decimal).
    """
    records = list(records)
    ok = [r for r in records if r.status == "ok"]
    main = dict.fromkeys(MAIN_CLASSES, 0)
    for r in ok:
        main[r.main_class] = main.get(r.main_class, 0) + 1
    routed = [r for r in ok if r.main_class in ROUTED_MAIN]
    sub = dict.fromkeys((*SUBCLASSES, UNSPECIFIED), 0)
    for r in routed:
        name = r.subclass if r.subclass in SUBCLASSES else UNSPECIFIED
        sub[name] += 1
    n_uncertain = sum(bool(r.uncertain) for r in ok)
    return {
        "n_images": len(records),
        "n_classified": len(ok),
        "n_errors": len(records) - len(ok),
        "main_classes": _table(main),
        "subclasses": {"of": list(ROUTED_MAIN), "n_cells": len(routed), "classes": _table(sub)},
        "n_uncertain": n_uncertain,
        "uncertain_percent": round(100.0 * n_uncertain / len(ok), 1) if ok else 0.0,
    }


def _bar(percent: float, width: int = 30) -> str:
    return "#" * int(math.floor(percent / 100 * width + 0.5))


def format_summary(summary: dict) -> str:
    """``summary`` (from :func:`summarize`) as a plain-text table."""
    lines = [f"Differential count: {summary['n_classified']} of {summary['n_images']} images "
             f"classified, {summary['n_errors']} errors"]
    rows = summary["main_classes"]
    width = max(12, *(len(k) for k in rows))
    lines.append(f"  {'class':<{width}} {'count':>6} {'%':>6}")
    for name, row in rows.items():
        lines.append(f"  {name:<{width}} {row['count']:>6} {row['percent']:>6.1f}  "
                     f"{_bar(row['percent'])}".rstrip())
    sub = summary["subclasses"]
    lines.append("")
    lines.append(f"Maturation stages within {' + '.join(sub['of'])} (n = {sub['n_cells']})")
    for name, row in sub["classes"].items():
        lines.append(f"  {name:<{width}} {row['count']:>6} {row['percent']:>6.1f}  "
                     f"{_bar(row['percent'])}".rstrip())
    lines.append("")
    lines.append(f"Uncertain (stage 2 said {OTHERS}): {summary['n_uncertain']} "
                 f"({summary['uncertain_percent']:.1f} % of classified cells)")
    return "\n".join(lines)
