"""A self-contained HTML report of a ``hiercell classify`` run.

One page, no external files or scripts: the differential count as CSS bar
charts, then one table row per image with an inline JPEG thumbnail, the
Grad-CAM overlay of the top class (when the model provides ``gradcam``), the
label, probability, top-k, uncertain flag and status/error. A few lines of
inline JavaScript sort the table by confidence, label or file. Thumbnails are
small (``thumb_size`` px, JPEG quality 70, ~2-4 kB each), so a report of
thousands of images stays in the tens of MB.

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
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_text
from .differential import summarize
from .io import try_load_image
from .prefetch import ordered_map
from .progress import tracker

#: How many leading Grad-CAM failures (with no success) disable it for the report.
_GRADCAM_GIVE_UP = 3

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
h2{font-size:1.1em;margin:1.2em 0 .4em}
.note{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:.3em .6em;border-radius:4px;display:inline-block;margin:.2em 0}
.charts{display:flex;gap:3em;flex-wrap:wrap}
.chart td{padding:1px 6px;white-space:nowrap}
.chart .n{text-align:right;font-variant-numeric:tabular-nums}
.track{width:260px;background:#eee;height:14px;border-radius:2px}
.bar{background:#3c78b4;height:14px;border-radius:2px}
.sub .bar{background:#7a5bb0}
table.res{border-collapse:collapse;margin-top:.5em}
.res th,.res td{border-bottom:1px solid #ddd;padding:3px 8px;vertical-align:middle;text-align:left}
.res th{background:#f4f4f4;position:sticky;top:0}
.res td.num{text-align:right;font-variant-numeric:tabular-nums}
.res img{display:block;max-width:96px;max-height:96px}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;max-width:28em}
tr.error{background:#fdecec}
tr.uncertain{background:#fffbe6}
.err{color:#b00020}
.muted{color:#888}
button{margin-right:.4em}
"""

_JS = """
function sortRows(key){
  var tb=document.getElementById('rows'), rows=Array.prototype.slice.call(tb.rows);
  var dir=(tb.getAttribute('data-key')===key && tb.getAttribute('data-dir')==='1')?-1:1;
  rows.sort(function(a,b){
    var x=a.getAttribute('data-'+key), y=b.getAttribute('data-'+key);
    if(key==='prob'||key==='idx'){x=parseFloat(x);y=parseFloat(y);}
    return (x<y?-1:x>y?1:0)*dir;
  });
  var f=document.createDocumentFragment();
  for(var i=0;i<rows.length;i++)f.appendChild(rows[i]);
  tb.appendChild(f);
  tb.setAttribute('data-key',key);tb.setAttribute('data-dir',dir===1?'1':'-1');
}
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


def _bars(rows: dict, css_class: str) -> str:
    out = [f'<table class="chart {css_class}">']
    for name, row in rows.items():
        pct = float(row["percent"])
        out.append(f'<tr><td>{html.escape(str(name))}</td><td class="n">{row["count"]}</td>'
                   f'<td class="n">{pct:.1f}&nbsp;%</td><td><div class="track">'
                   f'<div class="bar" style="width:{pct:.1f}%"></div></div></td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _header(summary: dict, model, masked, notes: list) -> str:
    e = html.escape
    sub = summary["subclasses"]
    parts = [
        "<h1>hiercell classification report</h1>",
        f"<p>{summary['n_images']} images: {summary['n_classified']} classified, "
        f"{summary['n_errors']} errors; {summary['n_uncertain']} uncertain "
        f"({summary['uncertain_percent']:.1f}&nbsp;% of classified cells).</p>",
    ]
    if model is not None:
        bits = [f"input_size = {model.input_size!r}"] if hasattr(model, "input_size") else []
        if masked is not None or hasattr(model, "masked"):
            bits.append(f"masked = {masked if masked is not None else model.masked!r}")
        if bits:
            parts.append(f"<p class=\"muted\">Model: {e(', '.join(bits))}</p>")
    parts += [f'<div class="note">{e(n)}</div><br>' for n in notes]
    parts += [
        '<div class="charts"><div><h2>Differential count (main classes)</h2>',
        _bars(summary["main_classes"], "main"),
        f"</div><div><h2>Maturation stages within {e(' + '.join(sub['of']))} "
        f"(n = {sub['n_cells']})</h2>",
        _bars(sub["classes"], "sub"),
        "</div></div>",
    ]
    return "\n".join(parts)


def _row(idx: int, rec, thumb: str | None, cam: str | None, cam_note: str) -> str:
    e = html.escape
    ok = rec.status == "ok"
    cls = "error" if not ok else ("uncertain" if rec.uncertain else "")
    prob = rec.probability if (ok and rec.probability is not None) else -1
    label = rec.label or ""
    img = f'<img src="{thumb}" alt="">' if thumb else '<span class="muted">&mdash;</span>'
    if cam:
        cam_html = f'<img src="{cam}" alt="Grad-CAM">'
    else:
        cam_html = f'<span class="muted" title="{e(cam_note)}">n/a</span>' if cam_note else ""
    top = "<br>".join(f"{e(str(c))}&nbsp;{float(p):.3f}" for c, p in (rec.top or []))
    status = "ok" if ok else f'<span class="err">error: {e(rec.error or "")}</span>'
    name = Path(rec.path or "").name
    return (f'<tr class="{cls}" data-idx="{idx}" data-prob="{float(prob):.6f}" '
            f'data-label="{e(label)}" data-file="{e(name.lower())}">'
            f'<td class="num">{idx + 1}</td><td>{img}</td><td>{cam_html}</td>'
            f'<td class="path" title="{e(rec.path or "")}">{e(name)}</td>'
            f'<td><b>{e(label)}</b></td><td class="num">{_fmt_p(rec.probability)}</td>'
            f"<td>{top}</td><td>{'yes' if rec.uncertain else ''}</td><td>{status}</td></tr>")


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
    """

    def __init__(self, path, model=None, masked=None, thumbnails: bool = True,
                 gradcam: bool = True, thumb_size: int = 96):
        self.path = Path(path)
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
                 f"<style>{_CSS}</style>\n<script>{_JS}</script>\n</head><body>\n",
                 _header(summary, self.model, self.masked, notes),
                 '\n<h2>Images</h2>\n<p>Sort by: '
                 "<button onclick=\"sortRows('prob')\">confidence</button>"
                 "<button onclick=\"sortRows('label')\">label</button>"
                 "<button onclick=\"sortRows('file')\">file name</button>"
                 "<button onclick=\"sortRows('idx')\">original order</button> "
                 '<span class="muted">(click again to reverse; errors sort as '
                 "lowest confidence)</span></p>\n",
                 '<table class="res"><thead><tr><th>#</th><th>image</th><th>Grad-CAM</th>'
                 "<th>file</th><th>label</th><th>prob.</th><th>top-k</th><th>uncertain</th>"
                 '<th>status</th></tr></thead>\n<tbody id="rows">\n',
                 *(row + "\n" for row in self.rows),
                 "</tbody></table>\n</body></html>\n"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(parts))
        return self.path


def write_report(records, summary: dict | None, path, model=None, masked=None,
                 thumbnails: bool = True, gradcam: bool = True, thumb_size: int = 96,
                 progress=None) -> Path:
    """Write the HTML report of ``records`` to ``path`` (atomically), re-reading their
    images; returns the path. See :class:`ReportWriter` for the parameters;
    ``progress``: see :mod:`hiercell.progress`."""
    writer = ReportWriter(path, model, masked, thumbnails, gradcam, thumb_size)
    writer.add(records, progress=progress)
    return writer.close(summary)
