"""The artifacts under ``reports/``: each table as CSV and Markdown (with a JSON sidecar of its
caption and headline), the thesis' numbers beside ours where the thesis has them, each figure as
PNG, and the index ``reports/README.md``. All writes are atomic. The figures themselves are drawn
by :mod:`scxnn.figures`, the tables computed by :mod:`scxnn.evaluation` and captioned in
:mod:`scxnn.study_tables`."""

from __future__ import annotations

import io
import os
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from scxnn.config import Config
from scxnn.utils import atomic_write_bytes, atomic_write_text


def tables_dir(cfg: Config) -> Path:
    return cfg.path("reports") / "tables" / cfg.profile


def figures_dir(cfg: Config) -> Path:
    return cfg.path("reports") / "figures" / cfg.profile


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-style table without the optional ``tabulate`` dependency."""
    cols = [str(c) for c in df.columns]

    def fmt(v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


SIDECAR_SUFFIX = ".json"
INDEX_NAME = "README.md"


def _one_line(text: str | None) -> str:
    return " ".join(str(text).split()) if text else ""


def _write_sidecar(path: Path, kind: str, name: str, caption: str | None, headline: str | None,
                   thesis: str | None, **extra) -> Path:
    """``<name>.json`` beside a table or figure: what :func:`write_index` lists for it. Sorted keys
    and no timestamps, so an unchanged artifact gets a byte-identical sidecar."""
    meta = {"kind": kind, "name": name, "caption": _one_line(caption) or None,
            "headline": _one_line(headline) or None, "thesis": _one_line(thesis) or None, **extra}
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def read_sidecar(path: Path) -> dict:
    """The sidecar of an artifact (``x.csv``/``x.md``/``x.png`` -> ``x.json``); ``{}`` when it is
    absent or unreadable."""
    side = Path(path).with_suffix(SIDECAR_SUFFIX)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def write_table(cfg: Config, df: pd.DataFrame, name: str, caption: str, headline: str | None = None,
                thesis: str | None = None, display: pd.DataFrame | None = None, reference: str = "thesis") -> Path:
    """``reports/tables/<profile>/<name>.csv`` and ``.md`` (the caption heads the Markdown), and the
    sidecar ``<name>.json`` with the caption, ``headline`` (our key number in one short line, e.g.
    ``"internal test: sensitivity 0.97 [0.93, 1.00], auto-normal 8%"``) and ``thesis`` (the thesis'
    value for the same, e.g. ``"sensitivity 0.997, auto-normal 7.6%"``). ``display``, when given, is
    what the Markdown shows (e.g. ``evaluation.format_ci(df)``: "0.97 [0.93, 1.00]" cells); the CSV
    always holds the plain numbers. ``reference`` names the source of ``thesis`` where it is not
    the thesis (e.g. "published" for Kermany et al.)."""
    d = tables_dir(cfg)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(d / f"{name}.csv", buf.getvalue())
    summary = _summary_line(headline, thesis, reference)
    head = f"**{name}.** {caption}\n\n" + (f"{summary}\n\n" if summary else "")
    atomic_write_text(d / f"{name}.md", head + to_markdown(df if display is None else display))
    extra = {} if reference == "thesis" else {"reference": reference}
    _write_sidecar(d / f"{name}{SIDECAR_SUFFIX}", "table", name, caption, headline, thesis,
                   columns=[str(c) for c in df.columns], rows=len(df), **extra)
    return d / f"{name}.csv"


def save_figure(cfg: Config, fig, name: str, dpi: int = 110, caption: str | None = None,
                headline: str | None = None, thesis: str | None = None) -> Path:
    """``reports/figures/<profile>/<name>.png`` and its sidecar ``<name>.json`` (see
    :func:`write_table`); ``name`` may hold a sub-folder (``"training/nodule_curves"``). Inside a
    Jupyter kernel (the notebooks, also under papermill) the same PNG shows under the cell too."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = figures_dir(cfg) / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    _write_sidecar(path.with_suffix(SIDECAR_SUFFIX), "figure", name, caption, headline, thesis)
    _show_in_notebook(buf.getvalue())
    return path


def _show_in_notebook(png: bytes) -> None:
    # The figures are drawn off pyplot (nothing leaks between calls), so Jupyter never shows them by
    # itself: a student reading an executed notebook saw no figure at all. The saved bytes are shown,
    # so the notebook and reports/figures agree. Outside a kernel (scxnn evaluate) nothing happens.
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "IPKernelApp" in shell.config:
        from IPython.display import Image, display

        display(Image(data=png, format="png"))


def _summary_line(headline: str | None, thesis: str | None, reference: str = "thesis") -> str:
    parts = []
    if _one_line(headline):
        parts.append(f"ours: {_one_line(headline)}")
    if _one_line(thesis):
        parts.append(f"{reference}: {_one_line(thesis)}")
    return " · ".join(parts)


# --------------------------------------------------------------------------- index


def _artifacts(folder: Path, suffixes: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``name -> {suffix: path}`` for the files under ``folder`` (recursively; names keep their
    sub-folders, POSIX style). Hidden files (``.gitkeep``, atomic-write temporaries) are skipped."""
    out: dict[str, dict[str, Path]] = {}
    if not folder.is_dir():
        return out
    for f in folder.rglob("*"):
        rel = f.relative_to(folder)
        if not f.is_file() or f.suffix not in suffixes or any(part.startswith(".") for part in rel.parts):
            continue
        out.setdefault(rel.with_suffix("").as_posix(), {})[f.suffix] = f
    return out


def _link(root: Path, path: Path) -> str:
    from urllib.parse import quote

    return quote(path.relative_to(root).as_posix())


def _item(root: Path, name: str, files: dict[str, Path], main: str, others: Sequence[str]) -> str:
    meta = read_sidecar(files[main])
    line = f"- [{name}]({_link(root, files[main])})"
    extra = [f"[{s.lstrip('.')}]({_link(root, files[s])})" for s in others if s in files]
    if extra:
        line += " (" + ", ".join(extra) + ")"
    caption = _one_line(meta.get("caption"))
    if caption:
        line += f" — {caption}"
    summary = _summary_line(meta.get("headline"), meta.get("thesis"), meta.get("reference") or "thesis")
    if summary:
        line += f"\n  - {summary}"
    return line


def index_markdown(reports_root: Path, profiles: Sequence[str] | None = None) -> str:
    """The text :func:`write_index` writes (deterministic: everything sorted by name)."""
    root = Path(reports_root)
    found = sorted({p.name for sub in ("tables", "figures") if (root / sub).is_dir()
                    for p in (root / sub).iterdir() if p.is_dir() and not p.name.startswith(".")})
    chosen = found if profiles is None else [p for p in profiles if p in found]
    intro = ("Generated by `scxnn.reports.write_index` from the tables and figures under `reports/`; "
             "do not edit by hand. Each item: our key number (*ours*) and the thesis' value for the "
             "same (*thesis*) where the notebook recorded them.")
    lines = ["# Reports", "", intro, ""]
    if not chosen:
        lines += ["No tables or figures yet.", ""]
    for profile in chosen:
        lines += [f"## Profile `{profile}`", ""]
        tables = _artifacts(root / "tables" / profile, (".md", ".csv"))
        figures = _artifacts(root / "figures" / profile, (".png",))
        lines += ["### Tables", ""]
        lines += [_item(root, n, f, ".md" if ".md" in f else ".csv", (".csv",) if ".md" in f else ())
                  for n, f in sorted(tables.items())] or ["None."]
        lines += ["", "### Figures", ""]
        lines += [_item(root, n, f, ".png", ()) for n, f in sorted(figures.items())] or ["None."]
        executed = root / "executed" / profile
        notebooks = sorted(executed.rglob("*.ipynb")) if executed.is_dir() else []
        notebooks = [p for p in notebooks if not any(x.startswith(".") for x in p.relative_to(executed).parts)]
        if notebooks:
            lines += ["", "### Executed notebooks", ""]
            lines += [f"- [{p.relative_to(executed).as_posix()}]({_link(root, p)})" for p in notebooks]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_index(reports_root: Path, profiles: Sequence[str] | None = None) -> Path:
    """``<reports_root>/README.md``: per profile folder under ``tables/`` and ``figures/`` (all, or
    those in ``profiles``), every table (links to its ``.md`` and ``.csv``) and figure (link to its
    PNG) with its caption and ``ours: … · thesis: …`` from the sidecars; items without a sidecar are
    listed by name. Rewritten atomically when its text changes; otherwise only its time stamp is
    renewed, since it is a Make target: left older than the notebooks it lists, it would be out of
    date for every later ``make`` (and ``make -q``)."""
    path = Path(reports_root) / INDEX_NAME
    text = index_markdown(Path(reports_root), profiles)
    try:
        if path.read_text(encoding="utf-8") == text:
            os.utime(path)
            return path
    except OSError:
        pass
    atomic_write_text(path, text)
    return path
