"""The self-contained HTML screening report: parses, escapes, embeds, counts, and is deterministic."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest

from scxnn.html_report import short_name, thumbnail_png, write_report

FINDINGS = ["pneumothorax", "pneumoperitoneum", "mediastinal_widening", "pleural_effusion", "nodule",
            "consolidation", "active_tuberculosis", "advanced_tuberculosis", "atelectasis", "support_device",
            "pleural_calcification", "interstitial_opacity", "cardiomegaly"]
EVIL = '<script>&"'
EVIL_FILE = f"/secret/patient_JOHN_DOE/study/{EVIL}x'.png"


class Collector(HTMLParser):
    """Collects start tags, their attributes and the text inside <tbody>; fails on parser errors."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.body_rows = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr" and "tbody" in self.stack:
            self.body_rows += 1
        if tag not in {"meta", "img", "input", "br", "link"}:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert tag in self.stack, f"unbalanced </{tag}>"
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)

    def error(self, message):  # pragma: no cover - only older Pythons call it
        raise AssertionError(message)

    def count(self, tag):
        return sum(t == tag for t, _ in self.tags)


def parse(text: str) -> Collector:
    c = Collector()
    c.feed(text)
    c.close()
    assert not [t for t in c.stack if t not in {"html", "body"}], f"unclosed tags: {c.stack}"
    return c


def _rng_img(seed, shape):
    return np.random.default_rng(seed).random(shape)


@pytest.fixture
def films():
    rng = np.random.default_rng(0)
    files = ["/data/site_a/normal_1.png", "/data/site_a/review_1.dcm", EVIL_FILE,
             "C:\\scans\\site_b\\lateral_1.png", "/data/site_b/normal_2.png"]
    df = pd.DataFrame({
        "file": files,
        "decision": ["definite_normal", "needs_review", "needs_review", "rejected", "definite_normal"],
        "score": [-1.25, 0.8, 0.31, math.nan, -0.4],
        "threshold": [-0.2] * 5,
        "top_finding": ["", "pleural_effusion", "nodule", "", ""],
        "scope_flags": ["", "", "", "lateral;non_chest", ""],
        "ood_score": [0.1, 0.2, 0.3, 0.9, 0.15],
        "ood_flag": [False, False, False, True, False],
        "reason": ["score below threshold", "score at or above threshold", "score <= & above \"thr\"",
                   "lateral view; not a frontal chest film", "score below threshold"],
    })
    for f in FINDINGS:
        df[f"p_{f}"] = rng.random(5)
    df.loc[3, [f"p_{f}" for f in FINDINGS]] = math.nan
    thumbs = {f: thumbnail_png(_rng_img(i, (300, 240))) for i, f in enumerate(files)}
    overlays = {files[1]: thumbnail_png((_rng_img(9, (64, 64)) * 255).astype(np.uint8))}
    meta = {"model run": "demo/run-1", "threshold": "-0.2", "sensitivity target": "0.99", "scxnn": "0.1.0"}
    return df, thumbs, overlays, meta


def test_thumbnail_png_keeps_aspect_and_never_enlarges():
    png = thumbnail_png(_rng_img(1, (400, 200)), size=128)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (128, 64) and back.dtype == np.uint8
    small = cv2.imdecode(np.frombuffer(thumbnail_png(np.zeros((20, 30), np.uint8)), np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (20, 30)
    f = np.full((10, 10), 2.0)
    f[0, 0] = np.nan
    g = cv2.imdecode(np.frombuffer(thumbnail_png(f), np.uint8), cv2.IMREAD_UNCHANGED)
    assert g[1, 1] == 255 and g[0, 0] == 0  # clipped to [0, 1]; NaN is black
    assert thumbnail_png(_rng_img(2, (50, 50))) == thumbnail_png(_rng_img(2, (50, 50)))
    with pytest.raises(ValueError):
        thumbnail_png(np.zeros((4, 4, 3), np.float32))  # colour only as decoded uint8 (an overlay)
    with pytest.raises(ValueError):
        thumbnail_png(np.zeros((4, 4, 4), np.uint8))
    colour = np.zeros((300, 200, 3), np.uint8)
    colour[..., 2] = 255  # red in OpenCV's BGR order
    back = cv2.imdecode(np.frombuffer(thumbnail_png(colour), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (128, 85, 3) and (back[..., 2] == 255).all() and (back[..., :2] == 0).all()
    with pytest.raises(TypeError):
        thumbnail_png(np.zeros((4, 4), np.int32))


def test_short_name_shows_only_name_and_parent():
    assert short_name("/a/b/c/x.png") == "c/x.png"
    assert short_name("C:\\scans\\site_b\\y.dcm") == "site_b/y.dcm"
    assert short_name("x.png") == "x.png"
    assert short_name("") == ""


def test_report_is_self_contained_escaped_and_counted(tmp_path, films):
    df, thumbs, overlays, meta = films
    out = write_report(df, tmp_path / "sub" / "report.html", thumbs, overlays, meta=meta)
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    c = parse(text)

    assert c.count("table") == 1
    assert c.body_rows == len(df)
    imgs = [a for t, a in c.tags if t == "img"]
    assert len(imgs) == len(thumbs) + len(overlays)
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert text.count("<img") == text.count('src="data:image/png;base64,') == len(thumbs) + len(overlays)

    low = text.lower()
    assert "http://" not in low and "https://" not in low and 'src="//' not in low and "url(" not in low
    assert "@import" not in low and "<link" not in low

    # The hostile name only ever appears escaped; the one <script> is the page's own sorter.
    assert EVIL not in text and "<script>&" not in text
    assert c.count("script") == 1 and low.count("<script") == 1
    assert html.escape(f"study/{EVIL}x'.png") in text
    # Nothing above the parent folder leaks into the page.
    assert "secret" not in text and "JOHN_DOE" not in text and "site_a/normal_1.png" in text
    assert "/data/site_a" not in text and "scans" not in text

    rows = [a for t, a in c.tags if t == "tr" and "data-idx" in a]
    assert [r["data-decision"] for r in rows] == list(df["decision"])
    assert rows[2]["data-file"] == f"study/{EVIL}x'.png"  # attributes round-trip through escaping

    # Summary counts (and shares) per decision.
    cards = {a["data-decision"]: a for t, a in c.tags if t == "div" and "data-decision" in a}
    assert set(cards) == {"definite_normal", "likely_normal", "needs_review", "rejected"}  # no "pending" card once a run is done
    for d, n in df["decision"].value_counts().items():
        assert f'<div class="card" data-decision="{d}"><span class="badge {d}">' in text
        share = f"{100 * n / len(df):.1f}%"
        assert f'<span class="n">{n}</span><span class="share">({share})</span>' in text
    assert '<span class="n" id="total">5</span>' in text

    for k, v in meta.items():
        assert f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" in text
    assert "not a medical device" in text and "radiologist" in text
    assert "no score" in text  # the rejected film's NaN score
    assert 'data-sort=""' in text  # NaN sorts last
    assert "lateral" in text and "non_chest" in text and "OOD" in text
    assert "pleural effusion" in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_report_is_deterministic(tmp_path, films):
    df, thumbs, overlays, meta = films
    a = write_report(df, tmp_path / "a.html", thumbs, overlays, meta=meta).read_bytes()
    b = write_report(df, tmp_path / "b.html", dict(thumbs), dict(overlays), meta=dict(meta)).read_bytes()
    assert a == b


def test_missing_optional_columns_and_images_still_render(tmp_path):
    df = pd.DataFrame({"file": ["/x/a/1.png", "/x/b/2.png"], "decision": ["needs_review", "mystery"]})
    text = write_report(df, tmp_path / "r.html").read_text(encoding="utf-8")
    c = parse(text)
    assert c.count("table") == 1 and c.body_rows == 2 and c.count("img") == 0
    assert "no image" in text and "mystery" in text and 'class="badge other"' in text
    assert "findings</th>" not in text and "scope / OOD" not in text

    # Only a decision column; and a frame with a p_ column but no ood / scope columns.
    text2 = write_report(pd.DataFrame({"decision": ["rejected"], "p_nodule": [0.5]}), tmp_path / "r2.html").read_text()
    c2 = parse(text2)
    assert c2.body_rows == 1 and "0.500" in text2 and "scope / OOD" not in text2


def test_empty_predictions_say_no_films(tmp_path):
    text = write_report(pd.DataFrame(columns=["file", "decision", "score"]), tmp_path / "e.html").read_text()
    c = parse(text)
    assert "No films" in text and c.count("table") == 0
    assert '<span class="n" id="total">0</span>' in text
    assert write_report(pd.DataFrame(), tmp_path / "e2.html").read_text().count("No films") == 1


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell"):
        if path := shutil.which(name):
            return path
    return None


def _require_chromium() -> str:
    browser = _chromium()
    if browser is None:
        why = "no headless Chromium (chromium / chromium-browser / google-chrome / headless_shell) on PATH"
        if os.environ.get("SCXNN_REQUIRE_BROWSER"):  # .ci/run installed it: a skip there would hide a broken CI image
            pytest.fail(why + ", although SCXNN_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip(why)
    return browser


def test_report_renders_in_headless_chromium(tmp_path, films):
    browser = _require_chromium()
    df, thumbs, overlays, meta = films
    page = write_report(df, tmp_path / "report.html", thumbs, overlays, meta=meta)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 5_000
    img = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.std() > 5  # not a blank page


# Clicks and filters in the real browser, by the page's own script; the result is written into the
# DOM that --dump-dom prints.
_BROWSER_PROBE = """<script>
window.addEventListener('load', function () {
  var rows = function () { return Array.prototype.slice.call(document.querySelectorAll('#films tbody tr')); };
  var order = function () { return rows().map(function (r) { return +r.getAttribute('data-idx'); }); };
  var visible = function () { return rows().filter(function (r) { return !r.hidden; })
                                          .map(function (r) { return +r.getAttribute('data-idx'); }).sort(); };
  var th = Array.prototype.slice.call(document.querySelectorAll('#films thead th'))
                .filter(function (t) { return t.textContent.indexOf('score') === 0; })[0];
  var out = {shown0: document.getElementById('shown').textContent};
  th.click(); out.score_asc = order(); th.click(); out.score_desc = order();
  var box = Array.prototype.slice.call(document.querySelectorAll('input.dec'))
                 .filter(function (b) { return b.value === 'definite_normal'; })[0];
  box.click(); out.no_normal = visible(); out.shown1 = document.getElementById('shown').textContent;
  box.click(); var q = document.getElementById('q'); q.value = 'SITE_B';
  q.dispatchEvent(new Event('input')); out.site_b = visible();
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_sorting_and_filters_work_in_headless_chromium(tmp_path, films):
    browser = _require_chromium()
    df, thumbs, overlays, meta = films
    page = write_report(df, tmp_path / "report.html", thumbs, overlays, meta=meta)
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", _BROWSER_PROBE + "</body>"), encoding="utf-8")
    r = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page's script did not run in Chromium: {r.stderr[-2000:]}"
    out = json.loads(html.unescape(m.group(1)))
    # the same expectations as the node harness below: numeric order with NaN last both ways
    assert out["score_asc"] == [0, 4, 2, 1, 3] and out["score_desc"] == [1, 2, 4, 0, 3]
    assert out["shown0"] == "5 of 5 shown" and out["shown1"] == "3 of 5 shown"
    assert out["no_normal"] == [1, 2, 3] and out["site_b"] == [3, 4]


class _Rows(HTMLParser):
    """The sorter's view of the page: header types, and per body row its attributes and cell sort keys."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.heads: list[dict] = []
        self.rows: list[dict] = []
        self.cell: dict | None = None
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "th":
            self.heads.append(a)
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append({"attrs": a, "cells": []})
        elif tag == "td":
            self.cell = {"attrs": {k: v for k, v in a.items() if k == "data-sort"}, "text": ""}
            self.rows[-1]["cells"].append(self.cell)

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


# A minimal DOM, just what the page's script touches; the script runs as written in the page.
_NODE_HARNESS = r"""
const fs = require('fs');
const {heads, rows, script} = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
function el(attrs, extra) {
  return Object.assign({attrs: Object.assign({}, attrs), listeners: {}, hidden: false,
    getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; },
    setAttribute(k, v) { this.attrs[k] = String(v); },
    removeAttribute(k) { delete this.attrs[k]; },
    hasAttribute(k) { return k in this.attrs; },
    addEventListener(t, f) { this.listeners[t] = f; }}, extra || {});
}
const trs = rows.map(r => el(r.attrs, {cells: r.cells.map(c => el(c.attrs, {textContent: c.text}))}));
const tbody = {rows: trs.slice(), appendChild(r) { this.rows.splice(this.rows.indexOf(r), 1); this.rows.push(r); }};
const ths = heads.map(h => el(h));
const table = {tBodies: [tbody], tHead: {rows: [{cells: ths}]}};
const decs = [...new Set(rows.map(r => r.attrs['data-decision']))].map(d => el({}, {value: d, checked: true}));
const q = el({}, {value: ''}), shown = {textContent: ''};
global.document = {getElementById: id => ({films: table, q: q, shown: shown})[id] || null,
                   querySelectorAll: s => (s === 'input.dec' ? decs : [])};
eval(script);
const order = () => tbody.rows.map(r => +r.getAttribute('data-idx'));
const visible = () => tbody.rows.filter(r => !r.hidden).map(r => +r.getAttribute('data-idx'));
const col = name => ths.findIndex(t => t.hasAttribute('data-type') && t._name === name);
const out = {shown0: shown.textContent};
heads.forEach((h, i) => { ths[i]._name = h.name; });
ths[col('score')].listeners.click(); out.score_asc = order();
ths[col('score')].listeners.click(); out.score_desc = order();
ths[col('file')].listeners.click(); out.file_asc = order();
decs.find(b => b.value === 'definite_normal').checked = false; decs[0].listeners.change();
out.no_normal = visible().sort(); out.shown1 = shown.textContent;
decs.forEach(b => { b.checked = true; }); q.value = 'SITE_B'; q.listeners.input(); out.site_b = visible().sort();
console.log(JSON.stringify(out));
"""


def test_sorter_and_filters_behave_in_node(tmp_path, films):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no node on PATH to run the page's script")
    df, thumbs, overlays, meta = films
    text = write_report(df, tmp_path / "r.html", thumbs, overlays, meta=meta).read_text(encoding="utf-8")
    p = _Rows()
    p.feed(text)
    script = text.split("<script>", 1)[1].split("</script>", 1)[0]
    # Name the two headers the harness clicks, by their visible label.
    names = {"file": "file", "score vs threshold": "score"}
    labels = [m.split(">", 1)[1].split("<", 1)[0] for m in text.split("<th ")[1:]]
    assert len(labels) == len(p.heads)
    heads = [dict(h, name=names.get(lab, "")) for h, lab in zip(p.heads, labels)]
    (tmp_path / "in.json").write_text(json.dumps({"heads": heads, "rows": p.rows, "script": script}))
    (tmp_path / "h.js").write_text(_NODE_HARNESS)
    r = subprocess.run([node, str(tmp_path / "h.js"), str(tmp_path / "in.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # scores: 0:-1.25 1:0.8 2:0.31 3:NaN 4:-0.4 -> numeric order, NaN last both ways
    assert out["score_asc"] == [0, 4, 2, 1, 3]
    assert out["score_desc"] == [1, 2, 4, 0, 3]
    # file names: site_a/normal_1.png, site_a/review_1.dcm, study/<script>..., site_b/lateral_1.png, site_b/normal_2.png
    assert out["file_asc"] == [0, 1, 3, 4, 2]
    assert out["shown0"] == "5 of 5 shown" and out["shown1"] == "3 of 5 shown"
    assert out["no_normal"] == [1, 2, 3]
    assert out["site_b"] == [3, 4]


@pytest.mark.parametrize("decision, shown", [("definite_normal", False), ("likely_normal", False), ("needs_review", True)])
def test_a_film_called_normal_names_no_top_finding(tmp_path, films, decision, shown):
    df, thumbs, overlays, meta = films
    df = df.iloc[[0]].assign(decision=decision, top_finding="pleural_effusion")
    text = write_report(df, tmp_path / "r.html", meta=meta).read_text(encoding="utf-8")
    row = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    top_cell = [c for c in row.split("<td") if "called normal" in c or "pleural effusion" in c]
    assert top_cell and (("pleural effusion" in top_cell[0]) == shown)


@pytest.mark.parametrize("bad", ["../films/x.png", "/etc/passwd", "https://example.org/x.png", "file:///x.png", "films/../../x.png"])
def test_full_size_links_stay_beside_the_report(films, tmp_path, bad):
    # The page promises it reaches nothing: a link may only name a file below the report's folder.
    df, thumbs, overlays, meta = films
    f = df["file"].iloc[0]
    with pytest.raises(ValueError, match="relative paths below the report"):
        write_report(df, tmp_path / "r.html", thumbs, overlays, meta=meta, full_size={f: (bad, None)})


def test_full_size_links_are_quoted(films, tmp_path):
    df, thumbs, overlays, meta = films
    f = df["file"].iloc[1]
    html = write_report(df, tmp_path / "r.html", thumbs, overlays, meta=meta,
                        full_size={f: ("films/a b\"<x>.png", "overlays/o.png")}).read_text()
    assert 'href="films/a%20b%22%3Cx%3E.png"' in html and 'href="overlays/o.png"' in html
    assert html.count('class="full"') == 2
