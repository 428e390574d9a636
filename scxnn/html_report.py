"""A self-contained HTML page of one screening run: one row per film, sortable and filterable.

The page opens from disk in any browser with no network: images are inline ``data:`` URIs, CSS and a
small vanilla-JS sorter/filter are inline, and a Content-Security-Policy forbids every fetch. The
full-resolution film and overlay of a row are PNG files beside the page (``films/``, ``overlays/``),
opened in a new tab by a "full size" link, never loaded by the page itself. Every
string from the caller is escaped with :func:`html.escape`; of each film's path only its name and
parent folder are shown (folder names above it may carry patient identifiers). The output is a pure
function of the input (no timestamps, no random ids), so two calls write identical bytes.

``predictions`` columns (any may be missing; the page shows what is there):
``file``, ``decision`` (definite_normal / likely_normal / needs_review / rejected / pending), ``score``, ``threshold``,
``top_finding``, ``p_<finding>`` (per-finding probabilities), ``scope_flags`` ("lateral;non_chest"),
``ood_score``, ``ood_flag``, ``reason``.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd

from scxnn.utils import atomic_write_text

__all__ = ["DECISIONS", "DISCLAIMER", "stream_chart", "thumbnail_png", "write_report"]

#: Known decisions, in display order, with their badge label.
DECISIONS: dict[str, str] = {
    "definite_normal": "definite normal",
    "likely_normal": "likely normal (uncertified)",
    "needs_review": "needs review",
    "rejected": "rejected",
    "pending": "pending (run in progress)",
}

DISCLAIMER = (
    "Research software, not a medical device. Every film still needs a radiologist's read, "
    "except where a local protocol explicitly allows otherwise."
)

_E = html.escape  # quote=True by default: safe in text and in double-quoted attributes


# --------------------------------------------------------------------------------------------- utilities
def thumbnail_png(img: np.ndarray, size: int = 128) -> bytes:
    """PNG bytes of a thumbnail whose longer side is at most ``size`` (aspect kept, never enlarged).

    ``img`` is (H, W) (or (H, W, 1)) ``uint8``, or float in [0, 1] (clipped; NaN becomes 0), or a
    colour (H, W, 3) ``uint8`` in OpenCV's BGR order (a decoded overlay PNG)."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    colour = a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8
    if not (a.ndim == 2 or colour) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"thumbnail_png needs a non-empty (H, W) image or a (H, W, 3) uint8 one, got shape {a.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if a.dtype == np.uint8:
        g = a
    elif np.issubdtype(a.dtype, np.floating):
        g = np.rint(np.clip(np.nan_to_num(a.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype == np.bool_:
        g = a.astype(np.uint8) * 255
    else:
        raise TypeError(f"thumbnail_png needs uint8 or float in [0, 1], got {a.dtype}")
    h, w = g.shape[:2]
    scale = size / max(h, w)
    if scale < 1.0:
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        g = cv2.resize(np.ascontiguousarray(g), (nw, nh), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(g), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - cv2 fails only on broken builds
        raise RuntimeError("cv2.imencode failed to encode the thumbnail")
    return buf.tobytes()


def _float(x) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f


CALLED_NORMAL = ("definite_normal", "likely_normal")


def _str(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and math.isnan(x):
        return ""
    try:
        if pd.isna(x):
            return ""
    except (TypeError, ValueError):  # arrays and other non-scalars
        pass
    return str(x)


def _truthy(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in {"1", "true", "yes", "y", "t"}
    f = _float(x)
    return not math.isnan(f) and f != 0.0


def _num(f: float, digits: int = 3) -> str:
    return "–" if math.isnan(f) else f"{f:.{digits}f}"


def _sortnum(f: float) -> str:
    """A ``data-sort`` value: empty for NaN (the sorter puts it last), else a round-trippable float."""
    if math.isnan(f):
        return ""
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return repr(float(f))


def short_name(file: str) -> str:
    """The film's name and its parent folder, nothing above: ``/a/b/c/x.png`` -> ``c/x.png``."""
    parts = [p for p in re.split(r"[\\/]+", file) if p]
    return "/".join(parts[-2:]) if parts else ""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _badge(decision: str) -> str:
    cls = decision if decision in DECISIONS else "other"
    label = DECISIONS.get(decision, decision or "unknown")
    return f'<span class="badge {cls}">{_E(label)}</span>'


def _decision_order(decisions: list[str]) -> list[str]:
    # "pending" only shows while a run is in progress: no empty card for it afterwards.
    known = [d for d in DECISIONS if d != "pending" or d in decisions]
    return known + sorted({d for d in decisions if d not in DECISIONS})


# --------------------------------------------------------------------------------------------- page parts
_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;padding:16px 20px;color:#1d2330;background:#fafbfc}
h1{font-size:20px;margin:0 0 8px}
header{margin-bottom:12px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:6px 0 10px;font-size:13px}
dl.meta dt{color:#5a6272}
dl.meta dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace}
.summary{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.summary .card{border:1px solid #d6dae1;border-radius:6px;padding:6px 10px;background:#fff}
.summary .n{font-size:18px;font-weight:600;margin-left:6px}
.summary .share{color:#5a6272;margin-left:4px}
.disclaimer{border-left:4px solid #c0392b;background:#fdf1f0;padding:6px 10px;margin:8px 0 12px;font-size:13px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap;color:#fff}
.badge.definite_normal{background:#23883c}
.badge.likely_normal{background:#5b8c6a}
.badge.needs_review{background:#d98a00}
.badge.pending{background:#4a6fa5}
.badge.rejected{background:#7b7f87}
.badge.other{background:#a33}
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:8px 0}
.controls label{cursor:pointer}
.controls input[type=search]{padding:3px 6px;min-width:220px}
#shown{color:#5a6272}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e6eb;padding:4px 6px;vertical-align:top;text-align:left}
thead th{position:sticky;top:0;background:#eef1f5;font-size:12px;white-space:nowrap}
th[data-type]{cursor:pointer;user-select:none}
th[data-type]::after{content:"\\2195";color:#9aa1ad;margin-left:4px}
th[aria-sort=ascending]::after{content:"\\25B2";color:#1d2330}
th[aria-sort=descending]::after{content:"\\25BC";color:#1d2330}
td.file{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;max-width:260px}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.reason{max-width:280px}
img.zoom{width:64px;height:auto;image-rendering:auto;cursor:zoom-in;border:1px solid #ccd;background:#000;transition:width .1s}
img.zoom:focus{width:auto;max-width:none;outline:2px solid #3a7bd5;cursor:zoom-out}
a.full{display:block;font-size:11px;white-space:nowrap}
.overlay{margin-top:4px;font-size:11px;color:#5a6272}
.chip{display:inline-block;padding:0 6px;margin:1px 2px 1px 0;border-radius:8px;background:#eceff3;font-size:11px}
.chip.ood{background:#f6d7d3}
.muted{color:#9aa1ad}
details.probs summary{cursor:pointer;white-space:nowrap}
ul.probs{list-style:none;margin:4px 0 0;padding:0;font-size:11px;min-width:220px}
ul.probs li{display:grid;grid-template-columns:150px 40px 60px;gap:4px;align-items:center}
ul.probs .bar{height:6px;background:#e3e6eb;border-radius:3px;overflow:hidden}
ul.probs .bar i{display:block;height:100%;background:#d98a00}
.empty{padding:24px;border:1px dashed #c6cbd3;background:#fff;text-align:center;font-size:15px}
@media print{.controls{display:none}img.zoom{width:64px}}
"""

_JS = """
(function(){
  var table=document.getElementById('films');
  if(!table){return;}
  var tbody=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  function key(tr,i,num){
    var c=tr.cells[i], v=c.getAttribute('data-sort');
    if(v===null){v=c.textContent;}
    if(num){ if(v===''){return null;} var f=parseFloat(v); return isNaN(f)?null:f; }
    return v.toLowerCase();
  }
  function sortBy(i,th){
    var num=th.getAttribute('data-type')==='num';
    var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
    for(var j=0;j<heads.length;j++){heads[j].removeAttribute('aria-sort');}
    th.setAttribute('aria-sort',dir===1?'ascending':'descending');
    var rows=Array.prototype.slice.call(tbody.rows);
    rows.sort(function(a,b){
      var ka=key(a,i,num), kb=key(b,i,num), ia=+a.getAttribute('data-idx'), ib=+b.getAttribute('data-idx');
      if(ka===null||kb===null){ if(ka===kb){return ia-ib;} return ka===null?1:-1; }
      if(ka<kb){return -dir;} if(ka>kb){return dir;} return ia-ib;
    });
    for(var r=0;r<rows.length;r++){tbody.appendChild(rows[r]);}
  }
  Array.prototype.forEach.call(heads,function(th,i){
    if(!th.hasAttribute('data-type')){return;}
    th.tabIndex=0;
    th.addEventListener('click',function(){sortBy(i,th);});
    th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sortBy(i,th);}});
  });
  var boxes=document.querySelectorAll('input.dec');
  var q=document.getElementById('q');
  var shown=document.getElementById('shown');
  function apply(){
    var on={}, text=(q&&q.value||'').toLowerCase(), n=0;
    Array.prototype.forEach.call(boxes,function(b){on[b.value]=b.checked;});
    Array.prototype.forEach.call(tbody.rows,function(tr){
      var d=tr.getAttribute('data-decision');
      var ok=(on.hasOwnProperty(d)?on[d]:true)&&(tr.getAttribute('data-file')||'').toLowerCase().indexOf(text)>=0;
      tr.hidden=!ok; if(ok){n++;}
    });
    if(shown){shown.textContent=n+' of '+tbody.rows.length+' shown';}
  }
  Array.prototype.forEach.call(boxes,function(b){b.addEventListener('change',apply);});
  if(q){q.addEventListener('input',apply);}
  apply();
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")


def _header(title: str, meta: Mapping[str, str] | None, counts: dict[str, int], total: int) -> str:
    out = [f"<header><h1>{_E(title)}</h1>"]
    if meta:
        items = "".join(f"<dt>{_E(_str(k))}</dt><dd>{_E(_str(v))}</dd>" for k, v in meta.items())
        out.append(f'<dl class="meta">{items}</dl>')
    cards = [f'<div class="card"><span>films</span><span class="n" id="total">{total}</span></div>']
    for d, n in counts.items():
        share = f"{100.0 * n / total:.1f}%" if total else "–"
        cards.append(f'<div class="card" data-decision="{_E(d)}">{_badge(d)}'
                     f'<span class="n">{n}</span><span class="share">({share})</span></div>')
    out.append(f'<section class="summary" aria-label="summary">{"".join(cards)}</section>')
    out.append(f'<p class="disclaimer" role="note"><strong>Not for diagnosis.</strong> {_E(DISCLAIMER)}</p>')
    out.append("</header>")
    return "".join(out)


def _controls(counts: dict[str, int]) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" class="dec" value="{_E(d)}" checked> {_badge(d)} ({n})</label>'
        for d, n in counts.items())
    return (f'<div class="controls" role="search">{boxes}'
            '<label>file <input type="search" id="q" placeholder="filter by file name" autocomplete="off"></label>'
            '<span id="shown"></span></div>')


def _img(png: bytes, alt: str, full: str | None = None) -> str:
    """An inline thumbnail (focus shows it at its own size, never upsampled) and, when the file of the
    full-resolution picture is given, a link that opens it in a new tab."""
    tag = f'<img class="zoom" tabindex="0" alt="{_E(alt)}" title="click to enlarge" src="{_data_uri(png)}">'
    if full:
        tag += f'<a class="full" href="{_E(_href(full))}" target="_blank" rel="noopener">full size</a>'
    return tag


def _href(path: str) -> str:
    """A relative link to a file beside the report; anything else (a scheme, an absolute or parent
    path) is refused, as the page promises it fetches nothing."""
    p = _str(path).replace("\\", "/")
    if not p or ":" in p or p.startswith("/") or ".." in p.split("/"):
        raise ValueError(f"full-size links must be relative paths below the report, got {path!r}")
    return "/".join(quote(part) for part in p.split("/"))


def _row(idx: int, row: Mapping, pcols: list[str], has: set[str],
         thumbnails: Mapping[str, bytes], overlays: Mapping[str, bytes], full: Mapping[str, tuple]) -> str:
    file = _str(row.get("file"))
    name = short_name(file)
    decision = _str(row.get("decision"))
    cells: list[str] = []

    # thumbnail (+ Grad-CAM overlay when given)
    img = []
    film_full, overlay_full = full.get(file, (None, None))
    if file in thumbnails and thumbnails[file]:
        img.append(_img(thumbnails[file], f"thumbnail of {name}", film_full))
    else:
        img.append('<span class="muted">no image</span>')
    if file in overlays and overlays[file]:
        img.append(f'<div class="overlay">Grad-CAM<br>{_img(overlays[file], f"Grad-CAM overlay of {name}", overlay_full)}</div>')
    cells.append(f'<td class="thumb">{"".join(img)}</td>')

    cells.append(f'<td class="file">{_E(name) if name else "<span class=muted>–</span>"}</td>')
    order = list(DECISIONS).index(decision) if decision in DECISIONS else len(DECISIONS)
    cells.append(f'<td data-sort="{order}">{_badge(decision)}</td>')
    if "reason" in has:
        cells.append(f'<td class="reason">{_E(_str(row.get("reason")))}</td>')

    if "score" in has or "threshold" in has:
        s, t = _float(row.get("score")), _float(row.get("threshold"))
        if math.isnan(s):
            txt = '<span class="muted">no score</span>'
            if not math.isnan(t):
                txt += f' <span class="muted">(thr {_num(t)})</span>'
        elif math.isnan(t):
            txt = _num(s)
        else:
            rel = "&lt;" if s < t else "&ge;"
            txt = f"{_num(s)} {rel} {_num(t)}"
        cells.append(f'<td class="num" data-sort="{_sortnum(s)}">{txt}</td>')

    if "top_finding" in has:
        top = _str(row.get("top_finding"))
        p = _float(row.get(f"p_{top}")) if top else math.nan
        if decision in CALLED_NORMAL:
            # A film the AI calls normal has no finding to point at; naming its most likely one
            # next to "definite normal" reads as a contradiction. Its probabilities are still shown.
            txt = '<span class="muted">– (called normal)</span>'
        elif top:
            txt = _E(top.replace("_", " ")) + (f' <span class="num">{_num(p)}</span>' if not math.isnan(p) else "")
        else:
            txt = '<span class="muted">–</span>'
        cells.append(f'<td data-sort="{_sortnum(p)}">{txt}</td>')

    if {"scope_flags", "ood_flag", "ood_score"} & has:
        flags = [f for f in _str(row.get("scope_flags")).split(";") if f.strip()]
        chips = [f'<span class="chip">{_E(f.strip())}</span>' for f in flags]
        ood_flag = _truthy(row.get("ood_flag")) if "ood_flag" in has else False
        o = _float(row.get("ood_score")) if "ood_score" in has else math.nan
        if ood_flag:
            chips.append('<span class="chip ood">OOD</span>')
        if not math.isnan(o):
            chips.append(f'<span class="muted">ood {_num(o)}</span>')
        key = o if not math.isnan(o) else (1.0 if ood_flag or flags else math.nan)
        cells.append(f'<td data-sort="{_sortnum(key)}">{"".join(chips) or "<span class=muted>–</span>"}</td>')

    if pcols:
        probs = [(c[2:], _float(row.get(c))) for c in pcols]
        finite = [p for _, p in probs if not math.isnan(p)]
        pmax = max(finite) if finite else math.nan
        items = []
        for f, p in probs:
            width = 0 if math.isnan(p) else round(100 * min(max(p, 0.0), 1.0))
            items.append(f'<li><span>{_E(f.replace("_", " "))}</span><span class="num">{_num(p)}</span>'
                         f'<span class="bar"><i style="width:{width}%"></i></span></li>')
        summary = f"max {_num(pmax)}" if finite else "no probabilities"
        cells.append(f'<td data-sort="{_sortnum(pmax)}"><details class="probs"><summary>{summary}'
                     f' <span class="muted">({len(pcols)})</span></summary><ul class="probs">{"".join(items)}</ul>'
                     "</details></td>")

    return (f'<tr data-idx="{idx}" data-decision="{_E(decision)}" data-file="{_E(name)}">'
            + "".join(cells) + "</tr>")


def _table(df: pd.DataFrame, pcols: list[str], has: set[str],
           thumbnails: Mapping[str, bytes], overlays: Mapping[str, bytes], full: Mapping[str, tuple]) -> str:
    heads = ['<th scope="col">image</th>', '<th scope="col" data-type="str">file</th>',
             '<th scope="col" data-type="num" title="definite normal, likely normal, needs review, rejected">decision</th>']
    if "reason" in has:
        heads.append('<th scope="col" data-type="str">reason</th>')
    if "score" in has or "threshold" in has:
        heads.append('<th scope="col" data-type="num" title="SVM score vs frozen threshold; below it is definite normal">'
                     "score vs threshold</th>")
    if "top_finding" in has:
        heads.append('<th scope="col" data-type="num" title="sorts by its probability">top finding</th>')
    if {"scope_flags", "ood_flag", "ood_score"} & has:
        heads.append('<th scope="col" data-type="num" title="scope checks and out-of-distribution score">scope / OOD</th>')
    if pcols:
        heads.append('<th scope="col" data-type="num" title="per-finding probabilities; sorts by the largest">'
                     "findings</th>")
    records = df.to_dict(orient="records")
    rows = "\n".join(_row(i, r, pcols, has, thumbnails, overlays, full) for i, r in enumerate(records))
    return (f'<table id="films"><thead><tr>{"".join(heads)}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>')


# --------------------------------------------------------------------------------------------- site monitor
MAX_POINTS = 1500  # points per polyline: a long stream is thinned (the CUSUM by its bucket's maximum)


def stream_chart(flags: list[int], cusum: list[float], limit: float, tolerance: float, marks: list[tuple[int, str]] = (),
                 window: int = 25) -> str:
    """An inline SVG of a site monitor's stream (numbers only, nothing fetched): top, the share of the
    last ``window`` films the gate flagged, with the stream rule's in-control ``tolerance`` dashed;
    bottom, the flagged-share CUSUM with its alarm line at ``limit``. ``marks``: (film, "alarm" |
    "clear") as vertical lines."""
    n = len(flags)
    if n == 0:
        return '<p class="monitor-empty">No film in the stream yet.</p>'
    f = np.asarray(flags, dtype=float)
    roll = np.convolve(f, np.ones(window), "full")[:n] / np.minimum(np.arange(1, n + 1), window)
    c = np.asarray(cusum, dtype=float)
    stride = max(1, math.ceil(n / MAX_POINTS))
    idx = np.arange(0, n, stride)
    c_top = np.array([c[i:i + stride].max() for i in idx])
    w, h, left, gap = 720.0, 110.0, 44.0, 30.0
    top2 = h + gap
    ymax = max(float(limit) * 1.25, float(c.max()) * 1.05, 1e-9)

    def x(i) -> float:
        return left + (w - left - 8) * (i / max(n - 1, 1))

    def pts(vals, y0, scale) -> str:
        return " ".join(f"{x(i):.1f},{y0 + h - min(max(v, 0.0), scale) / scale * h:.1f}" for i, v in zip(idx, vals))

    tol_y, lim_y = h - min(tolerance, 1.0) * h, top2 + h - float(limit) / ymax * h
    parts = [f'<svg class="monitor" role="img" aria-label="site monitor chart" viewBox="0 0 {w:.0f} {2 * h + gap + 24:.0f}" '
             f'width="{w:.0f}" height="{2 * h + gap + 24:.0f}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">',
             f'<rect x="{left}" y="0" width="{w - left - 8}" height="{h}" fill="#f6f7f9"/>',
             f'<rect x="{left}" y="{top2}" width="{w - left - 8}" height="{h}" fill="#f6f7f9"/>',
             f'<text x="2" y="10">100%</text><text x="2" y="{h:.0f}">0%</text>',
             f'<text x="{left + 4}" y="12">flagged share of the last {window} films</text>',
             f'<line x1="{left}" x2="{w - 8}" y1="{tol_y:.1f}" y2="{tol_y:.1f}" stroke="#777" stroke-dasharray="4 3"/>',
             f'<text x="{w - 8}" y="{tol_y - 3:.1f}" text-anchor="end" fill="#555">tolerance {tolerance:.0%}</text>',
             f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points="{pts(roll[idx], 0.0, 1.0)}"/>',
             f'<text x="{left + 4}" y="{top2 + 12:.0f}">CUSUM of the flagged share</text>',
             f'<line x1="{left}" x2="{w - 8}" y1="{lim_y:.1f}" y2="{lim_y:.1f}" stroke="#c53030" stroke-width="1.5"/>',
             f'<text x="{w - 8}" y="{lim_y - 3:.1f}" text-anchor="end" fill="#c53030">alarm line h = {limit:.2f}</text>',
             f'<polyline fill="none" stroke="#2d3748" stroke-width="1.5" points="{pts(c_top, top2, ymax)}"/>',
             f'<text x="{left}" y="{2 * h + gap + 18:.0f}">film 1</text>',
             f'<text x="{w - 8}" y="{2 * h + gap + 18:.0f}" text-anchor="end">film {n}</text>']
    for film, kind in marks:
        colour = "#c53030" if kind == "alarm" else "#2f855a"
        xi = x(max(int(film) - 1, 0))
        parts.append(f'<line x1="{xi:.1f}" x2="{xi:.1f}" y1="0" y2="{2 * h + gap:.0f}" stroke="{colour}" stroke-dasharray="2 2">'
                     f'<title>{_E(kind)} at film {int(film)}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- entry point
def render_report(predictions: pd.DataFrame, thumbnails: Mapping[str, bytes] | None = None,
                  overlays: Mapping[str, bytes] | None = None, title: str = "SCXNN screening report",
                  meta: Mapping[str, str] | None = None, full_size: Mapping[str, tuple] | None = None,
                  monitor: tuple[str, str] | None = None) -> str:
    """The page as a string (see :func:`write_report`)."""
    df = predictions if predictions is not None else pd.DataFrame()
    thumbnails = thumbnails or {}
    overlays = overlays or {}
    full_size = full_size or {}
    has = {str(c) for c in df.columns}
    pcols = [str(c) for c in df.columns if str(c).startswith("p_") and len(str(c)) > 2]
    decisions = [_str(d) for d in df["decision"]] if "decision" in has else [""] * len(df)
    counts = {d: 0 for d in _decision_order(decisions)}
    for d in decisions:
        counts[d] += 1
    total = len(df)

    if total:
        body = _controls(counts) + "\n" + _table(df, pcols, has, thumbnails, overlays, full_size)
    else:
        body = '<p class="empty" id="empty">No films in this report: the predictions table is empty.</p>'
    if monitor is not None:  # (status line, chart SVG from stream_chart)
        body = (f'<section class="monitor" aria-label="site monitor"><h2>Site monitor</h2><p>{_E(monitor[0])}</p>'
                f'{monitor[1]}</section>\n' + body)

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_E(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{_header(title, meta, counts, total)}\n<main>\n{body}\n</main>\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


def write_report(predictions: pd.DataFrame, out_path: str | os.PathLike,
                 thumbnails: Mapping[str, bytes] | None = None, overlays: Mapping[str, bytes] | None = None,
                 title: str = "SCXNN screening report", meta: Mapping[str, str] | None = None,
                 full_size: Mapping[str, tuple] | None = None, monitor: tuple[str, str] | None = None) -> Path:
    """Write a self-contained HTML report of ``predictions`` to ``out_path`` (atomically); return the path.

    ``thumbnails`` and ``overlays`` map a row's ``file`` to PNG bytes (pre-shrunk by the caller, embedded
    as-is); ``full_size`` maps it to (film, overlay) paths relative to the report, either None, of
    the full-resolution pictures that each thumbnail links to (files beside the page, not embedded);
    ``meta`` is shown in the header in its own order; ``monitor`` is the site monitor's status line
    and its :func:`stream_chart`, shown above the films. The same input gives the same bytes."""
    out = Path(out_path)
    atomic_write_text(out, render_report(predictions, thumbnails, overlays, title, meta, full_size, monitor))
    return out
