"""A self-contained HTML report of a ``hiercell classify`` run.

One page, no external files or scripts: the differential count as CSS bar
charts (with and without the cells that need review, and the folder's domain
check), then one table row per image with an inline JPEG thumbnail, the
Grad-CAM overlay of the top class (when the model provides ``gradcam``), the
label, probability, review score and flag, top-k, uncertain flag and
status/error. Inline JavaScript sorts the table (confidence, review score,
label, file), filters it (cells that need review, cells labelled by hand) and
closes the loop of ``hiercell adapt``: each cell has a select box (and
keyboard shortcuts, :data:`SHORTCUTS`) to relabel it, corrected cells are
marked, and "Export corrections" downloads ``path,label`` CSV (paths as in
the results file, canonical class names of :mod:`hiercell.taxonomy`), a
manifest :func:`hiercell.data.read_manifest` reads. The script does no
per-row work when the page loads (event delegation), so pages of thousands
of cells stay quick. Thumbnails are small (``thumb_size`` px, JPEG quality
70, ~2-4 kB each), so a report of thousands of images stays in the tens of MB.

:class:`ReportWriter` is fed by :func:`hiercell.classify.classify_folder` batch by
batch with the images it decoded and the trunk features it classified, so
nothing is decoded or run through the trunk twice, and each heat map explains
the input the model classified (masked or not). Records without images (e.g.
resumed from an earlier run) are re-read. Grad-CAM costs one backward pass of
the head per image; pass ``gradcam=False`` for quick reports of large runs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_text
from .differential import summarize
from .io import try_load_image
from .prefetch import ordered_map
from .progress import tracker
from .taxonomy import MAIN_CLASSES, SUBCLASSES

#: How many leading Grad-CAM failures (with no success) disable it for the report.
_GRADCAM_GIVE_UP = 3

#: Keyboard shortcuts of the page: key -> canonical class name (1-8: the main
#: classes in :data:`~hiercell.taxonomy.MAIN_CLASSES` order; letters: subclasses).
SHORTCUTS = {**{str(i + 1): name for i, name in enumerate(MAIN_CLASSES)},
             "b": "BNE", "s": "SNE", "m": "MY", "t": "MMY", "p": "PMY"}
assert set(SHORTCUTS.values()) == set(MAIN_CLASSES) | set(SUBCLASSES)

#: File name the "Export corrections" button saves under.
EXPORT_NAME = "corrections.csv"

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
h2{font-size:1.1em;margin:1.2em 0 .4em}
.note{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:.3em .6em;border-radius:4px;display:inline-block;margin:.2em 0}
.warn{color:#8b0000;background:#fdecec;border:1px solid #e8a8a8;padding:.4em .7em;border-radius:4px;display:inline-block;margin:.3em 0;font-weight:600}
.charts{display:flex;gap:3em;flex-wrap:wrap}
.chart td,.chart th{padding:1px 6px;white-space:nowrap;font-weight:normal}
.chart th{color:#666;font-size:12px;text-align:right}
.chart .n{text-align:right;font-variant-numeric:tabular-nums}
.chart .k{color:#555;border-left:1px solid #ddd}
.chart .ci{color:#777;font-size:12px}
.track{width:240px;background:#eee;height:14px;border-radius:2px}
.bar{background:#3c78b4;height:14px;border-radius:2px}
.sub .bar{background:#7a5bb0}
.tools{padding:.4em 0}
.tools label{margin-right:1em;white-space:nowrap}
details.keys{margin:.4em 0}
.keylist{display:flex;flex-wrap:wrap;gap:.3em 1.2em;margin:.3em 0}
.keylist span{white-space:nowrap}
kbd{font:12px ui-monospace,Menlo,Consolas,monospace;border:1px solid #bbb;border-bottom-width:2px;border-radius:3px;padding:0 4px;background:#f8f8f8}
table.res{border-collapse:collapse;margin-top:.5em}
.res th,.res td{border-bottom:1px solid #ddd;padding:3px 8px;vertical-align:middle;text-align:left}
.res th{background:#f4f4f4;position:sticky;top:0;z-index:1}
.res td.num{text-align:right;font-variant-numeric:tabular-nums}
.res img{display:block;max-width:96px;max-height:96px}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;max-width:24em}
tr.error{background:#fdecec}
tr.uncertain{background:#fffbe6}
tr.rev td:first-child{box-shadow:inset 4px 0 #d9822b}
.flag{display:inline-block;background:#d9822b;color:#fff;border-radius:3px;padding:0 4px;font-size:11px;font-weight:600}
tr:focus{outline:none}
tr:focus td{background:#e3edf9}
tr.fixed td{background:#e6f4ea}
tr.fixed:focus td{background:#d2ebd9}
tr.fixed .mine{outline:2px solid #1e8e3e;border-radius:3px}
tr.confirmed .mine{outline:2px solid #8fb8e0;border-radius:3px}
tr.fixed .was{text-decoration:line-through;color:#888}
.box{position:relative;width:12em;height:26px}
.in{position:absolute;left:0;top:0;right:0;bottom:0;contain:strict;overflow:hidden;display:flex;align-items:center;padding:0 3px}
select.mine{width:8.5em}
.badge{display:none;font-size:11px;font-weight:600;margin-left:.3em}
tr.fixed .badge.f,tr.confirmed .badge.c{display:inline}
.badge.f{color:#1e8e3e}
.badge.c{color:#3c78b4}
#rows.only-rev tr:not(.rev),#rows.only-mine tr:not(.fixed):not(.confirmed){display:none}
.err{color:#b00020}
.muted{color:#888}
button{margin-right:.4em}
"""

_JS = r"""
var KEYS=__KEYS__, CLASSES=__CLASSES__, EXPORT_NAME=__EXPORT__, BASE=__BASE__, unsaved=false;
// Each cell's select box is written with one option; the classes are added when it is
// first used (pointer down, focus, a shortcut), so that a page of thousands of cells loads fast.
function fill(sel){
  if(sel.options.length<2)for(var i=0;i<CLASSES.length;i++)sel.add(new Option(CLASSES[i]));
}
function fillTarget(e){if(e.target.classList&&e.target.classList.contains('mine'))fill(e.target);}
document.addEventListener('pointerdown',fillTarget,true);
document.addEventListener('mousedown',fillTarget,true);
document.addEventListener('focusin',fillTarget,true);
function rowOf(el){while(el&&el.tagName!=='TR')el=el.parentNode;return el;}
function sortRows(key){
  var tb=document.getElementById('rows'), rows=Array.prototype.slice.call(tb.rows);
  var num=(key==='prob'||key==='idx'||key==='rev'), first=(key==='rev')?-1:1;
  var dir=(tb.getAttribute('data-key')===key && tb.getAttribute('data-dir')===String(first))?-first:first;
  var keyed=rows.map(function(r){var v=r.getAttribute('data-'+key);return [num?parseFloat(v):v,r];});
  keyed.sort(function(a,b){return (a[0]<b[0]?-1:a[0]>b[0]?1:0)*dir;});
  var f=document.createDocumentFragment();
  for(var i=0;i<keyed.length;i++)f.appendChild(keyed[i][1]);
  tb.appendChild(f);
  tb.setAttribute('data-key',key);tb.setAttribute('data-dir',String(dir));
}
function filterRows(cls,on){document.getElementById('rows').classList.toggle(cls,on);}
var nFixed=0, nConfirmed=0;
function mark(tr){
  var sel=tr.querySelector('select.mine'); if(!sel)return;
  var v=sel.value, model=tr.getAttribute('data-label'), c=tr.classList;
  var f=(v!==''&&v!==model), k=(v!==''&&v===model);
  nFixed+=f-c.contains('fixed'); nConfirmed+=k-c.contains('confirmed');
  c.toggle('fixed',f); c.toggle('confirmed',k);
  unsaved=true;
  document.getElementById('nfix').textContent=(nFixed+nConfirmed)+' labelled by you ('+nFixed+' changed, '+nConfirmed+' confirmed)';
}
function setLabel(tr,value){
  var sel=tr&&tr.querySelector('select.mine'); if(!sel)return false;
  fill(sel); sel.value=value; mark(tr); return true;
}
function visible(tr){  // the filters' CSS rules, without asking for a layout
  var tb=tr.parentNode.classList, c=tr.classList;
  return !(tb.contains('only-rev')&&!c.contains('rev'))
    &&!(tb.contains('only-mine')&&!c.contains('fixed')&&!c.contains('confirmed'));
}
function step(tr,d){
  var r=tr; do{r=d>0?r.nextElementSibling:r.previousElementSibling;}while(r&&(!visible(r)||!r.hasAttribute('tabindex')));
  if(r){r.focus();r.scrollIntoView({block:'nearest'});}
  return r;
}
document.addEventListener('change',function(e){
  if(e.target.classList&&e.target.classList.contains('mine'))mark(rowOf(e.target));
});
document.addEventListener('keydown',function(e){
  if(e.ctrlKey||e.metaKey||e.altKey)return;
  var t=e.target, tr=rowOf(t);
  if(!tr||!tr.parentNode||tr.parentNode.id!=='rows'||!tr.hasAttribute('tabindex'))return;
  var onRow=(t===tr), k=e.key.length===1?e.key.toLowerCase():e.key, label=KEYS[k];
  var next=document.getElementById('advance').checked;
  if(label!==undefined){setLabel(tr,label);if(next)step(tr,1);else if(!onRow)tr.focus();}
  else if(k==='0'||(onRow&&(k==='Backspace'||k==='Delete'))){setLabel(tr,'');}
  else if(onRow&&k==='Enter'){setLabel(tr,tr.getAttribute('data-label'));if(next)step(tr,1);}
  else if(onRow&&(k==='j'||k==='ArrowDown')){step(tr,1);}
  else if(onRow&&(k==='k'||k==='ArrowUp')){step(tr,-1);}
  else return;
  e.preventDefault();
});
function csvField(s){return /[",\r\n]|^\s|\s$/.test(s)?'"'+s.replace(/"/g,'""')+'"':s;}
function isAbs(p){return /^([\/\\]|[A-Za-z]:[\/\\])/.test(p);}
function absPath(p){
  if(!BASE||isAbs(p))return p;
  var sep=BASE.indexOf('\\')>=0&&BASE.indexOf('/')<0?'\\':'/';
  return BASE.replace(/[\/\\]+$/,'')+sep+p;
}
function correctionsCsv(all,absolute){
  var rows=document.getElementById('rows').rows, out=[];
  for(var i=0;i<rows.length;i++){
    var tr=rows[i], sel=tr.querySelector('select.mine'); if(!sel)continue;
    var v=sel.value||(all?tr.getAttribute('data-label'):'');
    if(!v)continue;
    var p=tr.getAttribute('data-path');
    out.push([parseInt(tr.getAttribute('data-idx'),10),csvField(absolute?absPath(p):p)+','+csvField(v)]);
  }
  out.sort(function(a,b){return a[0]-b[0];});
  return 'path,label\r\n'+out.map(function(x){return x[1]+'\r\n';}).join('');
}
function exportCsv(){
  var text=correctionsCsv(document.getElementById('exp-all').checked,document.getElementById('exp-abs').checked);
  var a=document.createElement('a');
  a.href=URL.createObjectURL(new Blob([text],{type:'text/csv'}));
  a.download=EXPORT_NAME; document.body.appendChild(a); a.click();
  setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);
  unsaved=false; return text;
}
window.addEventListener('beforeunload',function(e){if(unsaved){e.preventDefault();e.returnValue='';}});
"""


def _b64_jpeg(rgb: np.ndarray, quality: int = 70) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def thumbnail(rgb: np.ndarray, size: int = 96) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 shrunk so its longer side is ``size`` px (never enlarged)."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45,
                    colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a heat map ``(h, w)`` in [0, 1] over ``rgb`` (H, W, 3) uint8.

    The heat map is resized to ``rgb``'s grid and coloured with ``colormap``.
    """
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    if heat.ndim != 2:
        raise ValueError(f"heat map must be 2-D, got shape {heat.shape}")
    h, w = rgb.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8), colormap)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0)


def _fmt_p(p) -> str:
    return "" if p is None else f"{float(p):.3f}"


def _bars(rows: dict, css_class: str, kept: dict | None = None) -> str:
    """Bar chart rows: count, percent and its 95 % counting interval (``ci95``, blank for
    rows without one); with ``kept`` (the count without the cells that need review), two
    more columns."""
    out = [f'<table class="chart {css_class}">',
           '<tr><th></th><th>count</th><th>%</th><th title="exact binomial limits of the '
           'share for this many cells: counting error only, not classification error">'
           '95&nbsp;% CI</th>'
           + ('<th class="k" colspan="2">without review</th>' if kept is not None else "")
           + "<th></th></tr>"]
    for name, row in rows.items():
        pct = float(row["percent"])
        ci = row.get("ci95")
        ci = f"{float(ci[0]):.1f}&ndash;{float(ci[1]):.1f}" if ci else ""
        extra = ""
        if kept is not None:
            k = kept.get(name, {"count": 0, "percent": 0.0})
            extra = (f'<td class="n k">{k["count"]}</td>'
                     f'<td class="n">{float(k["percent"]):.1f}&nbsp;%</td>')
        out.append(f'<tr><td>{html.escape(str(name))}</td><td class="n">{row["count"]}</td>'
                   f'<td class="n">{pct:.1f}&nbsp;%</td><td class="n ci">{ci}</td>{extra}'
                   f'<td><div class="track">'
                   f'<div class="bar" style="width:{pct:.1f}%"></div></div></td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _header(summary: dict, model, masked, notes: list) -> str:
    e = html.escape
    sub = summary["subclasses"]
    scored = bool(summary.get("review_scored") or summary.get("n_review"))
    kept = summary.get("without_review") if scored else None
    parts = [
        "<h1>hiercell classification report</h1>",
        f"<p>{summary['n_images']} images: {summary['n_classified']} classified, "
        f"{summary['n_errors']} errors; {summary['n_uncertain']} uncertain "
        f"({summary['uncertain_percent']:.1f}&nbsp;% of classified cells).</p>",
    ]
    shift = summary.get("domain_shift") or {}
    if shift.get("warning"):
        parts.append(f'<div class="warn" id="shift">Warning: {e(shift["message"])}</div>')
    if scored:
        n = summary.get("n_review", 0)
        parts.append(f'<p><b>{n} cell{"" if n == 1 else "s"} need{"s" if n == 1 else ""} '
                     f'review</b> ({summary.get("review_percent", 0.0):.1f}&nbsp;% of classified '
                     "cells; marked in orange, filter below); the count is given with and "
                     "without them."
                     + (f' <span class="muted">Domain check: {e(shift["message"])}.</span>'
                        if shift and not shift.get("warning") else "") + "</p>")
    else:
        parts.append('<p class="muted">This model gives no review score: no cell is flagged '
                     "for review.</p>")
    if model is not None:
        bits = [f"input_size = {model.input_size!r}"] if hasattr(model, "input_size") else []
        if masked is not None or hasattr(model, "masked"):
            bits.append(f"masked = {masked if masked is not None else model.masked!r}")
    else:
        bits = []
    bits += [f"{key} = {summary[key]}" for key in ("precision", "shard", "review_rate")
             if summary.get(key)]
    if bits:
        parts.append(f"<p class=\"muted\">Model: {e(', '.join(bits))}</p>")
    parts += [f'<div class="note">{e(n)}</div><br>' for n in notes]
    parts += [
        '<div class="charts"><div><h2>Differential count (main classes)</h2>',
        _bars(summary["main_classes"], "main", kept["main_classes"] if kept else None),
        f"</div><div><h2>Maturation stages within {e(' + '.join(sub['of']))} "
        f"(n = {sub['n_cells']}"
        + (f"; {kept['subclasses']['n_cells']} without review" if kept else "") + ")</h2>",
        _bars(sub["classes"], "sub", kept["subclasses"]["classes"] if kept else None),
        "</div></div>",
        '<p class="muted">95&nbsp;% CI: the exact binomial limits of each share for this '
        "many cells (counting error only, not classification error).</p>",
    ]
    return "\n".join(parts)


def _tools(base: str | None) -> str:
    """The tool bar (sort, filter, export) and the keyboard help."""
    e = html.escape
    keys = "".join(f"<span><kbd>{e(k)}</kbd> {e(v)}</span>" for k, v in SHORTCUTS.items())
    where = (f" (relative ones joined to the folder the run was started in, "
             f"<code>{e(base)}</code>)" if base else "")
    return (
        '<div class="tools">Sort by: '
        "<button onclick=\"sortRows('prob')\">confidence</button>"
        "<button onclick=\"sortRows('rev')\">review score</button>"
        "<button onclick=\"sortRows('label')\">label</button>"
        "<button onclick=\"sortRows('file')\">file name</button>"
        "<button onclick=\"sortRows('idx')\">original order</button> "
        '<label><input type="checkbox" id="only-rev" '
        "onchange=\"filterRows('only-rev',this.checked)\"> needs review only</label>"
        '<label><input type="checkbox" id="only-mine" '
        "onchange=\"filterRows('only-mine',this.checked)\"> labelled by me only</label>"
        '<br><button id="export" onclick="exportCsv()">Export corrections</button>'
        '<label><input type="checkbox" id="exp-all"> all cells (the model\'s label where '
        "you set none)</label>"
        '<label><input type="checkbox" id="exp-abs"> absolute paths</label>'
        '<label><input type="checkbox" id="advance" checked> after a key, go to the next '
        'cell</label> <span class="muted" id="nfix">0 labelled by you</span></div>\n'
        '<details class="keys"><summary>Relabelling cells: select box and keyboard '
        "shortcuts</summary>"
        "<p>Each cell's <b>your label</b> box sets its class (the model's label stands "
        "where it is empty). Click a row (or Tab to it) to focus the cell, then:</p>"
        f'<div class="keylist">{keys}</div><div class="keylist">'
        "<span><kbd>Enter</kbd> confirm the model's label</span>"
        "<span><kbd>0</kbd> or <kbd>Backspace</kbd> clear your label</span>"
        "<span><kbd>j</kbd> or <kbd>&darr;</kbd> next cell</span>"
        "<span><kbd>k</kbd> or <kbd>&uarr;</kbd> previous cell</span></div>"
        "<p>Cells you relabelled are green (the model's label struck through), confirmed "
        "ones outlined in blue. <b>Export corrections</b> saves "
        f"<code>{e(EXPORT_NAME)}</code>, <code>path,label</code> rows of the cells you "
        "labelled (with <i>all cells</i>: every classified cell), paths as in the results "
        f"file{where} and class names as hiercell writes them: "
        "<code>hiercell adapt corrections.csv</code> reads it. A relative path in that file "
        "is read relative to the file's folder: keep the file there, or tick <i>absolute "
        "paths</i>.</p></details>\n")


#: The classes of the select boxes, in order (the page adds them to a box when it is used).
RELABEL_CLASSES = (*MAIN_CLASSES, *SUBCLASSES)


def _row(idx: int, rec, thumb: str | None, cam: str | None, cam_note: str) -> str:
    e = html.escape
    ok = rec.status == "ok"
    cls = ["error"] if not ok else (["uncertain"] if rec.uncertain else [])
    if ok and rec.review:
        cls.append("rev")
    prob = rec.probability if (ok and rec.probability is not None) else -1
    rev = rec.review_score if (ok and rec.review_score is not None) else -1
    label = rec.label or ""
    img = f'<img src="{thumb}" alt="">' if thumb else '<span class="muted">&mdash;</span>'
    if cam:
        cam_html = f'<img src="{cam}" alt="Grad-CAM">'
    else:
        cam_html = f'<span class="muted" title="{e(cam_note)}">n/a</span>' if cam_note else ""
    top = "<br>".join(f"{e(str(c))}&nbsp;{float(p):.3f}" for c, p in (rec.top or []))
    status = "ok" if ok else f'<span class="err">error: {e(rec.error or "")}</span>'
    review = _fmt_p(rec.review_score) + (' <span class="flag">review</span>'
                                         if ok and rec.review else "")
    name = Path(rec.path or "").name
    focus = ' tabindex="0"' if ok else ""
    # the box is absolutely positioned in a fixed-size cell: relabelling a cell re-lays out
    # the box only, not the whole table
    mine = (f'<div class="box"><div class="in"><select class="mine" '
            f'aria-label="your label for {e(name)}"><option value="">&mdash;</option></select>'
            '<span class="badge f">corrected</span><span class="badge c">confirmed</span>'
            "</div></div>" if ok else "")
    return (f'<tr class="{" ".join(cls)}"{focus} data-idx="{idx}" data-prob="{float(prob):.6f}" '
            f'data-rev="{float(rev):.6f}" data-label="{e(label)}" '
            f'data-file="{e(name.lower())}" data-path="{e(rec.path or "")}">'
            f'<td class="num">{idx + 1}</td><td>{img}</td><td>{cam_html}</td>'
            f'<td class="path" title="{e(rec.path or "")}">{e(name)}</td>'
            f'<td><b class="was">{e(label)}</b></td><td class="num">{_fmt_p(rec.probability)}</td>'
            f'<td class="num">{review}</td>'
            f"<td>{top}</td><td>{'yes' if rec.uncertain else ''}</td><td>{status}</td>"
            f"<td>{mine}</td></tr>")


class ReportWriter:
    """Builds the report batch by batch; :meth:`close` writes it (atomically).

    Parameters
    ----------
    path : path
    model : optional
        Its ``gradcam(rgb, class_name, masked=, features=) -> (H, W) float32 in [0, 1]``
        gives the overlay of each image's main class. Without a model, or if it has no
        ``gradcam`` or ``gradcam`` keeps failing, the column says why and the report
        goes on.
    masked : bool or None
        The masking the records were classified with (``None``: the model's default);
        Grad-CAM uses it for images whose features are not given.
    thumbnails : bool
        Embed the image thumbnails.
    gradcam : bool
        Compute Grad-CAM overlays.
    base : path, optional
        The folder relative record paths are relative to (default: the current
        directory), which the page's export joins them to when asked for absolute paths.
    """

    def __init__(self, path, model=None, masked=None, thumbnails: bool = True,
                 gradcam: bool = True, thumb_size: int = 96, base=None):
        self.path = Path(path)
        self.base = str(base) if base is not None else os.getcwd()
        self.model = model
        self.masked = masked
        self.thumbnails = thumbnails
        self.thumb_size = thumb_size
        self.records, self.rows, self.notes = [], [], []
        self.n_cam_ok = self.n_cam_fail = 0
        self.last_cam_error = ""
        self.cam_fn = None
        if gradcam:
            self.cam_fn = getattr(model, "gradcam", None) if model is not None else None
            if model is None:
                self.notes.append("Grad-CAM not shown: no model given.")
            elif not callable(self.cam_fn):
                self.notes.append("Grad-CAM not shown: this model has no gradcam().")
                self.cam_fn = None

    @property
    def needs_images(self) -> bool:
        """Whether :meth:`add` uses the images (thumbnails or Grad-CAM)."""
        return self.thumbnails or self.cam_fn is not None

    def add(self, records, images=None, features=None, progress=None):
        """Add rows for ``records``. ``images``: their decoded RGB images (``None`` entries
        for failed records), re-read from the records' paths when not given;
        ``features``: their trunk features (rows), computed for Grad-CAM when not given."""
        records = list(records)
        if images is None:
            if self.needs_images:
                def load(rec):
                    return try_load_image(rec.path) if rec.status == "ok" and rec.path else (None, None)

                with tracker(progress, len(records), "Report images") as update, \
                        closing(ordered_map(load, records, ahead=16)) as loaded:
                    for rec, (rgb, reason) in zip(records, loaded):
                        self._add_one(rec, rgb, None, reason)
                        update(1)
                return
            images = [None] * len(records)
        features = [None] * len(records) if features is None else features
        for rec, rgb, feat in zip(records, images, features):
            self._add_one(rec, rgb, feat, None)

    def _add_one(self, rec, rgb, feat, load_error):
        thumb = cam = None
        cam_note = ""
        if rgb is not None and rec.status == "ok":
            small = thumbnail(rgb, self.thumb_size)
            if self.thumbnails:
                thumb = _b64_jpeg(small)
            if self.cam_fn is not None:
                try:
                    heat = self.cam_fn(rgb, rec.main_class, masked=self.masked, features=feat)
                    cam = _b64_jpeg(overlay_heatmap(small, heat))
                    self.n_cam_ok += 1
                except Exception as exc:  # noqa: BLE001 - report goes on without it
                    self.n_cam_fail += 1
                    cam_note = f"Grad-CAM failed: {type(exc).__name__}: {exc}"
                    self.last_cam_error = cam_note
                    if self.n_cam_ok == 0 and self.n_cam_fail >= _GRADCAM_GIVE_UP:
                        self.cam_fn = None
        elif load_error:
            cam_note = f"image not re-read: {load_error}"
        self.rows.append(_row(len(self.records), rec, thumb, cam, cam_note))
        self.records.append(rec)

    def _script(self) -> str:
        def js(value):  # a JS literal that cannot close the <script> element
            return json.dumps(value).replace("<", "\\u003c")

        return (_JS.replace("__KEYS__", js(SHORTCUTS)).replace("__EXPORT__", js(EXPORT_NAME))
                .replace("__CLASSES__", js(list(RELABEL_CLASSES)))
                .replace("__BASE__", js(self.base)))

    def close(self, summary: dict | None = None) -> Path:
        """Write the page (``summary``: from :func:`~hiercell.differential.summarize`,
        computed if ``None``); returns its path."""
        summary = summarize(self.records) if summary is None else summary
        notes = list(self.notes)
        if self.n_cam_fail:
            gave_up = self.n_cam_ok == 0 and self.n_cam_fail >= _GRADCAM_GIVE_UP
            what = "gave up after" if gave_up else "failed for"
            notes.append(f"Grad-CAM {what} {self.n_cam_fail} image(s); last error: "
                         f"{self.last_cam_error}")
        parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
                 '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                 f"<title>hiercell report ({summary['n_images']} images)</title>\n"
                 f"<style>{_CSS}</style>\n<script>{self._script()}</script>\n</head><body>\n",
                 _header(summary, self.model, self.masked, notes),
                 '\n<h2>Images</h2>\n'
                 '<p class="muted">Sort buttons: click again to reverse (errors sort as lowest '
                 "confidence and review score).</p>\n",
                 _tools(self.base),
                 '<table class="res"><thead><tr><th>#</th><th>image</th><th>Grad-CAM</th>'
                 "<th>file</th><th>label</th><th>prob.</th><th>review</th><th>top-k</th>"
                 "<th>uncertain</th><th>status</th><th>your label</th></tr></thead>\n"
                 '<tbody id="rows">\n',
                 *(row + "\n" for row in self.rows),
                 "</tbody></table>\n</body></html>\n"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(parts))
        return self.path


def write_report(records, summary: dict | None, path, model=None, masked=None,
                 thumbnails: bool = True, gradcam: bool = True, thumb_size: int = 96,
                 progress=None, base=None) -> Path:
    """Write the HTML report of ``records`` to ``path`` (atomically), re-reading their
    images; returns the path. See :class:`ReportWriter` for the parameters;
    ``progress``: see :mod:`hiercell.progress`."""
    writer = ReportWriter(path, model, masked, thumbnails, gradcam, thumb_size, base=base)
    writer.add(records, progress=progress)
    return writer.close(summary)
