"""Paired comparison of two arms (e.g. unmasked vs masked) and the ablation report files.

``compare_arms`` turns two :class:`ArmResult` (same stage, same test images in
the same order) into a JSON-ready dict; ``write_ablation_report`` writes
``ablation.json``, ``ablation.md`` and one ``confusion_<stage>_<arm>.png`` per
stage and arm. The overall result layout is::

    {"setup": {...free-form, given by the caller...},
     "stages": {"1": compare_arms(...), "2": compare_arms(...)},   # "2" optional
     "external": {name: {"stage1": compare_arms(...), ...counts}}}  # optional

``external`` holds the same paired comparison on other labs' labelled sets (stage 1),
next to free-form counts (e.g. the images the segmentation flagged); it adds one
``confusion_ext_<name>_<arm>.png`` per set and arm.

Differences are always ``arm b - arm a`` (with a = unmasked, b = masked:
positive means masking helped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from .atomic import atomic_write_bytes
from .fileutil import to_jsonable
from .metrics import (
    bootstrap_ci,
    classification_summary,
    confusion_matrix_png,
    mcnemar,
    paired_bootstrap_diff,
)

ALPHA = 0.05


@dataclass
class ArmResult:
    """Test-set predictions of one arm at one stage.

    ``y_true``, ``y_pred`` and ``paths`` are parallel lists (one entry per test
    image); ``labels`` is the class order used in tables and confusion matrices.
    """

    name: str  # "unmasked" / "masked"
    stage: int  # 1 or 2
    labels: list
    y_true: list
    y_pred: list
    paths: list

    def __post_init__(self):
        n = len(self.y_true)
        if len(self.y_pred) != n or len(self.paths) != n:
            raise ValueError(
                f"arm {self.name!r} stage {self.stage}: y_true ({n}), y_pred ({len(self.y_pred)}) "
                f"and paths ({len(self.paths)}) must have the same length"
            )


def _merge_labels(a: list, b: list) -> list:
    out = [str(x) for x in a]
    out += [str(x) for x in b if str(x) not in out]
    return out


def compare_arms(a: ArmResult, b: ArmResult, n_boot: int = 2000, seed: int = 0,
                 alpha: float = ALPHA) -> dict:
    """Paired comparison of arms ``a`` and ``b`` on the same test images.

    Raises ``ValueError`` unless both arms have the same stage, the same test
    paths in the same order and the same true labels. Returns (plain types)::

        {"stage", "n", "labels", "arms": [a.name, b.name], "alpha", "n_boot", "seed",
         "summary": {arm: classification_summary + "accuracy_ci", "macro_f1_ci"},
         "per_class": [{"label", "support", arm: {"precision", "recall", "f1"}, ...}],
         "difference": {"definition": "b - a", "accuracy": {"diff", "ci"}, "macro_f1": {...}},
         "mcnemar": mcnemar(y_true, a, b),
         "items": {"paths", "y_true", "y_pred": {arm: [...]}}}
    """
    if a.name == b.name:
        raise ValueError(f"both arms are called {a.name!r}; give them distinct names")
    if int(a.stage) != int(b.stage):
        raise ValueError(f"arms are from different stages: {a.name}={a.stage}, {b.name}={b.stage}")
    pa, pb = [str(p) for p in a.paths], [str(p) for p in b.paths]
    if pa != pb:
        if len(pa) != len(pb):
            why = f"{len(pa)} vs {len(pb)} test images"
        else:
            i = next(i for i, (x, y) in enumerate(zip(pa, pb)) if x != y)
            why = f"first difference at item {i}: {pa[i]!r} vs {pb[i]!r}"
        raise ValueError(
            f"stage {a.stage}: arms {a.name!r} and {b.name!r} must have the same test paths "
            f"in the same order ({why})"
        )
    yt = [str(y) for y in a.y_true]
    if yt != [str(y) for y in b.y_true]:
        i = next(i for i, (x, y) in enumerate(zip(a.y_true, b.y_true)) if str(x) != str(y))
        raise ValueError(
            f"stage {a.stage}: true labels differ between arms at {pa[i]!r}: "
            f"{a.y_true[i]!r} vs {b.y_true[i]!r}"
        )
    if not yt:
        raise ValueError(f"stage {a.stage}: no test items")
    labels = _merge_labels(a.labels, b.labels)
    preds = {a.name: [str(y) for y in a.y_pred], b.name: [str(y) for y in b.y_pred]}

    summary = {}
    for name, yp in preds.items():
        s = classification_summary(yt, yp, labels)
        for metric in ("accuracy", "macro_f1"):
            lo, hi = bootstrap_ci(yt, yp, metric, n_boot=n_boot, alpha=alpha, seed=seed, labels=labels)
            s[f"{metric}_ci"] = [lo, hi]
        summary[name] = s

    per_class = []
    for lab in labels:
        row = {"label": lab, "support": summary[a.name]["per_class"][lab]["support"]}
        for name in preds:
            pc = summary[name]["per_class"][lab]
            row[name] = {k: pc[k] for k in ("precision", "recall", "f1")}
        per_class.append(row)

    difference = {"definition": f"{b.name} - {a.name}"}
    for metric in ("accuracy", "macro_f1"):
        d, lo, hi = paired_bootstrap_diff(yt, preds[a.name], preds[b.name], metric, n_boot=n_boot,
                                          alpha=alpha, seed=seed, labels=labels)
        difference[metric] = {"diff": d, "ci": [lo, hi]}

    return {
        "stage": int(a.stage),
        "n": len(yt),
        "labels": labels,
        "arms": [a.name, b.name],
        "alpha": float(alpha),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "summary": summary,
        "per_class": per_class,
        "difference": difference,
        "mcnemar": mcnemar(yt, preds[a.name], preds[b.name]),
        "items": {"paths": pa, "y_true": yt, "y_pred": preds},
    }


# --------------------------------------------------------------------------- formatting
def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _f3(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pp(x, sign=True) -> str:
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _p(p: float) -> str:
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _human(key) -> str:
    return str(key).replace("_", " ")


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _setup_md(setup: dict) -> list[str]:
    """Render the caller's free-form setup dict: scalars as bullets, dicts as tables."""
    setup = to_jsonable(setup or {})
    lines, tables = [], []
    for key, val in setup.items():
        if _is_scalar(val):
            lines.append(f"- **{_md(_human(key))}**: {_md(val)}")
        elif isinstance(val, list) and all(_is_scalar(v) for v in val):
            lines.append(f"- **{_md(_human(key))}**: {_md(', '.join(map(str, val)))}")
        elif isinstance(val, dict) and all(_is_scalar(v) for v in val.values()):
            t = [f"**{_md(_human(key))}**", "", "| | |", "|---|---:|"]
            t += [f"| {_md(k)} | {_md(v)} |" for k, v in val.items()]
            if val and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in val.values()):
                t.append(f"| **total** | **{sum(val.values())}** |")
            tables.append(t)
        elif isinstance(val, dict) and all(isinstance(v, dict) for v in val.values()):
            cols = list(val)
            rows: list = []
            for inner in val.values():
                rows += [r for r in inner if r not in rows]
            t = [f"**{_md(_human(key))}**", "",
                 "| | " + " | ".join(_md(c) for c in cols) + " |",
                 "|---|" + "---:|" * len(cols)]
            for r in rows:
                cells = [_md(val[c].get(r, "")) if _is_scalar(val[c].get(r, "")) else
                         _md(json.dumps(val[c].get(r))) for c in cols]
                t.append(f"| {_md(r)} | " + " | ".join(cells) + " |")
            tables.append(t)
        else:
            lines.append(f"- **{_md(_human(key))}**: `{_md(json.dumps(val))}`")
    out = lines or ["- (no setup information given)"]
    for t in tables:
        out += [""] + t
    return out


def conclusion(stage: dict) -> str:
    """One sentence that states only what the McNemar test and the bootstrap CIs allow."""
    a, b = stage["arms"]
    alpha = stage["alpha"]
    mc = stage["mcnemar"]
    acc, f1 = stage["difference"]["accuracy"], stage["difference"]["macro_f1"]
    ci_pct = f"{100 * (1 - alpha):g} %"
    acc_txt = (f"accuracy difference ({b} − {a}) {_pp(acc['diff'])} pp, {ci_pct} CI "
               f"[{_pp(acc['ci'][0])}, {_pp(acc['ci'][1])}]")
    f1_txt = (f"macro-F1 difference {_pp(f1['diff'])} pp, {ci_pct} CI "
              f"[{_pp(f1['ci'][0])}, {_pp(f1['ci'][1])}]")
    if mc["p_value"] >= alpha:
        return (f"No significant difference in accuracy between {b} and {a} at alpha={alpha:g} "
                f"(McNemar {_p(mc['p_value'])}; {acc_txt}; {f1_txt}).")
    better, worse = (b, a) if mc["b_only"] > mc["a_only"] else (a, b)
    gap = abs(acc["diff"])
    lo, hi = sorted(abs(x) for x in acc["ci"]) if acc["ci"][0] * acc["ci"][1] > 0 else (None, None)
    by = f"by {100 * gap:.1f} pp"
    if lo is not None:
        by += f" ({ci_pct} CI {100 * lo:.1f} to {100 * hi:.1f} pp)"
    else:
        by += f" (but the {ci_pct} bootstrap CI of the difference includes 0)"
    return (f"{better[:1].upper()}{better[1:]} is significantly more accurate than {worse} at alpha={alpha:g} {by}; "
            f"McNemar {_p(mc['p_value'])}, {mc['a_only'] + mc['b_only']} discordant images; {f1_txt}.")


def _stage_md(key: str, st: dict, pngs: dict, title: str | None = None,
              intro: list | None = None, noun: str = "test images") -> list[str]:
    a, b = st["arms"]
    sa, sb = st["summary"][a], st["summary"][b]
    alpha = st["alpha"]
    ci = f"{100 * (1 - alpha):g} % CI"
    out = [title or f"## Stage {key}", ""] + list(intro or []) + [
           f"{st['n']} {noun}, {len(st['labels'])} classes; {st['n_boot']} bootstrap "
           f"resamples (seed {st['seed']}), {ci} by percentile bootstrap; differences are "
           f"{b} − {a}.", "",
           "### Per-class precision / recall / F1", "",
           f"| class | support | P {a} | P {b} | R {a} | R {b} | F1 {a} | F1 {b} | ΔF1 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in st["per_class"]:
        ra, rb = row[a], row[b]
        out.append(
            f"| {_md(row['label'])} | {row['support']} | {_f3(ra['precision'])} | {_f3(rb['precision'])} "
            f"| {_f3(ra['recall'])} | {_f3(rb['recall'])} | {_f3(ra['f1'])} | {_f3(rb['f1'])} "
            f"| {rb['f1'] - ra['f1']:+.3f} |")
    d = st["difference"]
    out += ["", "### Overall", "",
            f"| metric | {a} ({ci}) | {b} ({ci}) | {b} − {a}, pp ({ci}) |", "|---|---|---|---|"]
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        lo_a, hi_a = sa[f"{metric}_ci"]
        lo_b, hi_b = sb[f"{metric}_ci"]
        dm = d[metric]
        out.append(
            f"| {name} | {sa[metric]:.3f} [{lo_a:.3f}, {hi_a:.3f}] | {sb[metric]:.3f} [{lo_b:.3f}, {hi_b:.3f}] "
            f"| {_pp(dm['diff'])} [{_pp(dm['ci'][0])}, {_pp(dm['ci'][1])}] |")
    out.append(f"| balanced accuracy | {sa['balanced_accuracy']:.3f} | {sb['balanced_accuracy']:.3f} "
               f"| {_pp(sb['balanced_accuracy'] - sa['balanced_accuracy'])} |")
    mc = st["mcnemar"]
    out += ["", "### McNemar test (paired correctness)", "",
            f"| | {b} right | {b} wrong |", "|---|---:|---:|",
            f"| **{a} right** | {mc['both_right']} | {mc['a_only']} |",
            f"| **{a} wrong** | {mc['b_only']} | {mc['both_wrong']} |", "",
            f"b = {mc['a_only']} ({a} only right), c = {mc['b_only']} ({b} only right); "
            f"{mc['method']}: statistic = {mc['statistic']:.3f}, p = {mc['p_value']:.3g}.", "",
            "### Confusion matrices (rows = true, columns = predicted)", ""]
    out += [f"- {arm}: [{pngs[arm]}]({pngs[arm]})  \n  [![{arm}]({pngs[arm]})]({pngs[arm]})"
            for arm in (a, b) if pngs.get(arm)]
    out += ["", f"**Conclusion:** {conclusion(st)}", ""]
    return out


def _stage_sort_key(k: str):
    return (0, int(k)) if str(k).isdigit() else (1, str(k))


def _external_intro(ext: dict) -> list[str]:
    """The counts of an external set (everything but its comparison) as Markdown bullets."""
    out = []
    for key, val in to_jsonable(ext).items():
        if key == "stage1":
            continue
        if isinstance(val, dict):
            val = ", ".join(f"{k} {v}" for k, v in val.items()) or "none"
        out.append(f"- **{_md(_human(key))}**: {_md(val)}")
    return out + [""] if out else []


def write_ablation_report(result: dict, out_dir) -> dict:
    """Write ``ablation.json``, ``ablation.md`` and ``confusion_<stage>_<arm>.png`` to ``out_dir``.

    ``result`` is ``{"setup": {...}, "stages": {"1": compare_arms(...), "2": ...}}``,
    optionally with ``"external": {name: {"stage1": compare_arms(...), ...}}``
    (``confusion_ext_<name>_<arm>.png``); a missing (or ``None``) stage is reported
    as not evaluated. Every file is written atomically. Returns
    ``{"json": path, "md": path, "png": [paths]}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = {str(k): v for k, v in (result.get("stages") or {}).items() if v is not None}
    keys = sorted(set(stages) | {"1", "2"}, key=_stage_sort_key)

    written = []

    def arm_pngs(st, stem, heading):
        """One confusion-matrix PNG per arm of the comparison ``st``: ``{arm: file name}``."""
        names = {}
        for arm in st["arms"]:
            names[arm] = f"{stem}_{arm}.png"
            summ = st["summary"][arm]
            title = (f"{heading} - {arm} (n={summ['n']}, acc {summ['accuracy']:.3f}, "
                     f"macro-F1 {summ['macro_f1']:.3f})")
            written.append(confusion_matrix_png(summ["confusion_matrix"], summ["labels"],
                                                out_dir / names[arm], title=title))
        return names

    pngs = {key: arm_pngs(stages[key], f"confusion_{key}", f"Stage {key}")
            for key in keys if stages.get(key) is not None}
    external = {str(k): v for k, v in (result.get("external") or {}).items()}
    ext_pngs = {name: arm_pngs(ext["stage1"], f"confusion_ext_{name}", f"{name} stage 1")
                for name, ext in external.items()}

    first = next(iter(stages.values()), None) or next(
        (e["stage1"] for e in external.values()), None)
    md = ["# Ablation: " + " vs ".join(first["arms"]) if first else "# Ablation",
          "", "## Setup", ""]
    md += _setup_md(result.get("setup") or {})
    if stages or external:
        md += ["", "## Conclusions", ""]
        md += [f"- Stage {k}: {conclusion(stages[k])}" for k in keys if k in stages]
        md += [f"- External set {_md(name)}, stage 1: {conclusion(ext['stage1'])}"
               for name, ext in external.items()]
    md.append("")
    for key in keys:
        if key in stages:
            md += _stage_md(key, stages[key], pngs[key])
        else:
            md += [f"## Stage {key}", "", "Not evaluated (no result for this stage).", ""]
    for name, ext in external.items():
        md += _stage_md("1", ext["stage1"], ext_pngs[name],
                        title=f"## External set {_md(name)}: stage 1",
                        intro=_external_intro(ext), noun=f"images of {_md(name)}")

    payload = to_jsonable({**result, "stages": stages})
    if not external:
        payload.pop("external", None)
    json_path = atomic_write_bytes(out_dir / "ablation.json",
                                   (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    md_path = atomic_write_bytes(out_dir / "ablation.md", "\n".join(md).encode())
    return {"json": json_path, "md": md_path, "png": written}
