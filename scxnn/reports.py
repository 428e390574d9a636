"""Tables and figures under ``reports/``: each table as CSV and Markdown, with the thesis' numbers
beside ours where the thesis has them, and each figure as PNG. All writes are atomic."""

from __future__ import annotations

import io
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
    :func:`write_table`); ``name`` may hold a sub-folder (``"training/nodule_curves"``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = figures_dir(cfg) / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    _write_sidecar(path.with_suffix(SIDECAR_SUFFIX), "figure", name, caption, headline, thesis)
    return path


def fmt_ci(value: float, lo: float | None = None, hi: float | None = None, digits: int = 2,
           percent: bool = False) -> str:
    """``0.97 [0.93, 1.00]`` (or ``97% [93%, 100%]`` with ``percent``: the same precision as a share,
    ``digits`` - 2 decimals) for headlines, bounds rounded outward; NaN -> ``n/a``."""
    from scxnn.metrics import outward

    def one(v, rounding=None) -> str:
        if v is None or not np.isfinite(float(v)):
            return "n/a"
        if percent:
            return f"{100 * outward(float(v), digits, rounding):.{max(digits - 2, 0)}f}%"
        return f"{outward(float(v), digits, rounding):.{digits}f}"

    if lo is None and hi is None:
        return one(value)
    return f"{one(value)} [{one(lo, 'down')}, {one(hi, 'up')}]"


def write_screening_tables(cfg: Config, table: pd.DataFrame, th, where: str = "", thesis: dict | None = None,
                           main_set: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 at the point and at the strict threshold (achieved sensitivity beside the target,
    with its verdict) and the ``thresholds`` table of what the validation set certifies: the
    screening tables of notebook 04 and of ``scxnn evaluate``. ``th``: the run's
    :class:`scxnn.ensemble.Thresholds`; ``where`` ends each caption (e.g. which data was scored).
    Returns (table2 at point, table2 at strict)."""
    from scxnn import evaluation
    from scxnn.metrics import interval_note

    n_boot, seed, ci = cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci
    note = interval_note(ci, n_boot)
    tail = f" {where}" if where else ""
    t2 = evaluation.with_target(evaluation.table2(table, th.point, n_boot, seed, ci, thesis=thesis), th.target)
    main_set = main_set or ("internal" if (t2["set"] == "internal").any() else str(t2["set"].iloc[0]))
    ours, theirs = evaluation.screening_headline(t2, main_set, f"{main_set} test")
    write_table(cfg, t2, "table2_normal_vs_abnormal",
                f"Normal vs abnormal per set at the point threshold (validation sensitivity >= {th.target:.0%}, {th.scores} "
                f"validation scores), achieved sensitivity beside the target; {note}. Validation: {th.describe()}.{tail}",
                headline=ours, thesis=theirs, display=evaluation.format_ci(t2))
    t2s = evaluation.with_target(evaluation.table2(table, th.strict, n_boot, seed, ci), th.target)
    why = "" if th.certified else (f" The validation set cannot certify {th.target:.0%} ({th.n_val_abnormal_patients} abnormal "
                                   f"patients; it takes at least {th.abnormal_needed} without a miss), so strict calls nothing normal.")
    ours_s, _ = evaluation.screening_headline(t2s, main_set, f"{main_set} test, strict threshold")
    write_table(cfg, t2s, "table2_strict_threshold",
                f"Table 2 at the strict threshold: the highest at which the exact lower {ci:.0%} bound of validation "
                f"sensitivity reaches {th.target:.0%}.{why} {note}.{tail}", headline=ours_s, display=evaluation.format_ci(t2s))
    write_table(cfg, evaluation.threshold_table(th), "thresholds",
                f"The frozen definite-normal thresholds and what the validation set certifies at each (exact lower {ci:.0%} "
                f"bound of validation sensitivity; `certified`: it reaches the target).{tail}", headline=th.describe())
    return t2, t2s


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
    listed by name. Rewritten atomically, and only when its text changes (so Make sees no update)."""
    path = Path(reports_root) / INDEX_NAME
    text = index_markdown(Path(reports_root), profiles)
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------- Table 1


def table1(manifest: pd.DataFrame, cfg: Config, thesis: dict | None) -> pd.DataFrame:
    """Images per finding in the internal (training) site, hard and weak labels, by risk group, in the
    thesis' layout; an image with two findings counts under both, as in the thesis. The thesis'
    counts sit beside ours when ``thesis`` (``scxnn.thesis.load_tables``) is given."""
    # The training site: "internal" for the synthetic study, the dataset's own name for an adapter's.
    site = "internal" if (manifest["site"] == "internal").any() else manifest.loc[manifest["split"] == "train", "site"].mode().iloc[0]
    internal = manifest[manifest["site"] == site]
    if site != "internal":
        thesis = None  # the thesis' counts describe its hospital's data, not another dataset
    ref = (thesis or {}).get("table1_dataset", {})
    rows = []
    for finding, risk in cfg.findings.items():
        pos = internal[internal[finding] == 1]
        hard = int((pos["label_type"] == "hard").sum())
        weak = int((pos["label_type"] == "weak").sum())
        t = ref.get(finding, {}) if isinstance(ref.get(finding), dict) else {}
        rows.append({"risk": risk, "finding": finding, "hard": hard, "weak": weak, "total": hard + weak,
                     "thesis_hard": t.get("hard"), "thesis_weak": t.get("weak"), "thesis_total": t.get("total")})
    target = list(cfg.findings)
    normal = internal[(internal[target].fillna(0) == 0).all(axis=1) & (internal[list(cfg.unseen_findings)].fillna(0) == 0).all(axis=1)]
    t = ref.get("normal", {}) if isinstance(ref.get("normal"), dict) else {}
    rows.append({"risk": "normal", "finding": "normal", "hard": int((normal["label_type"] == "hard").sum()),
                 "weak": int((normal["label_type"] == "weak").sum()), "total": len(normal),
                 "thesis_hard": None, "thesis_weak": None, "thesis_total": t.get("total")})
    df = pd.DataFrame(rows)
    if not thesis:
        df = df.drop(columns=["thesis_hard", "thesis_weak", "thesis_total"])
    for c in df.columns[2:]:
        df[c] = df[c].astype("Int64")
    return df


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per site and split, with how many are normal."""
    g = manifest.groupby(["site", "split", "label_type"])
    return g.agg(images=("image_id", "size"), patients=("patient_id", "nunique")).reset_index()


def source_examples(cfg: Config, manifest: pd.DataFrame, n: int) -> dict[str, list[str]]:
    """Up to ``n`` images, one per site first, with their source file and their cached PNG."""
    from scxnn.data import read_manifest
    from scxnn.preprocess import cache_dir, source_manifest_path

    src_manifest = source_manifest_path(cfg)
    src = read_manifest(src_manifest, list(cfg.findings), list(cfg.unseen_findings)).set_index("image_id")
    picks = manifest.groupby("site", sort=False).head(1)
    picks = pd.concat([picks, manifest.drop(picks.index)]).head(n)
    out: dict[str, list[str]] = {"source": [], "png": [], "title": []}
    for r in picks.itertuples():
        sp = Path(src.loc[r.image_id, "path"])
        out["source"].append(str(sp if sp.is_absolute() else src_manifest.parent / sp))
        out["png"].append(str(cache_dir(cfg) / r.path))
        out["title"].append(f"{r.site} {r.image_id}")
    return out


def before_after_figure(raw_paths: Sequence[str], processed_paths: Sequence[str], titles: Sequence[str]):
    """Source radiographs (as read, MONOCHROME2 sense) above their preprocessed PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from scxnn.dicom import read_image
    from scxnn.preprocess import read_png

    n = len(raw_paths)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for i, (src, dst, title) in enumerate(zip(raw_paths, processed_paths, titles)):
        rad = read_image(src)
        axes[0, i].imshow(rad.pixels, cmap="gray")
        axes[0, i].set_title(f"{title}\n{rad.meta.get('photometric') or rad.meta.get('format')} {rad.pixels.shape[1]}x{rad.pixels.shape[0]}", fontsize=8)
        axes[1, i].imshow(read_png(dst), cmap="gray", vmin=0, vmax=255)
        axes[1, i].set_title("preprocessed", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training


def training_curves(history: pd.DataFrame, title: str = ""):
    """Loss parts, AUC on the training draws and on validation (the gap is over-fitting), and the
    learning rate per epoch, stage 1 and stage 2 side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h = history.reset_index(drop=True).copy()
    h["step"] = np.arange(1, len(h) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for col, style in (("train_loss", "-"), ("val_loss", "-"), ("train_mse", ":"), ("val_mse", ":")):
        if col in h and h[col].notna().any():
            axes[0].plot(h["step"], h[col], style, label=col)
    axes[0].set_title("loss (CE + λ·MSE)")
    axes[0].legend(fontsize=7)
    for col in ("train_auc", "val_auc", "val_acc"):
        if col in h and h[col].notna().any():
            axes[1].plot(h["step"], h[col], marker="o", ms=3, label=col)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("AUC (train draws vs validation)")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(h["step"], h["lr"], drawstyle="steps-post")
    axes[2].set_title("learning rate")
    if "stage" in h and h["stage"].nunique() > 1:
        first2 = h.index[h["stage"] == h["stage"].max()][0] + 0.5
        for ax in axes:
            ax.axvline(first2, color="grey", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xlabel("epoch (stage 1 | stage 2)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_examples(cfg: Config, finding: str, checkpoint, n: int = 4, split: str = "val"):
    """Hard-labelled ``split`` images positive for ``finding``: input, the decoder's target (image x
    dilated lesion mask) and the model's reconstruction, one row each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import torch

    from scxnn.data import MANIFEST_NAME, read_manifest
    from scxnn.dataset import RadiographDataset
    from scxnn.preprocess import cache_dir
    from scxnn.checkpoints import load_model
    from scxnn.train import finding_labels

    model, mcfg = load_model(checkpoint)
    df = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    pick = df[(df["split"] == split) & (df["label_type"] == "hard") & (df[finding] == 1)]
    if pick.empty:  # tiny profiles: fall back to the training images
        pick = df[(df["label_type"] == "hard") & (df[finding] == 1)]
    pick = pick.head(n).reset_index(drop=True)
    labels = finding_labels(pick, finding, mcfg.model.num_classes, list(cfg.findings), list(cfg.unseen_findings)).fillna(0).astype(int)
    ds = RadiographDataset(pick, cache_dir(cfg), finding, labels.to_numpy(), mcfg)
    fig, axes = plt.subplots(max(len(ds), 1), 3, figsize=(7.5, 2.5 * max(len(ds), 1)), squeeze=False)
    with torch.inference_mode():
        for i in range(len(ds)):
            item = ds[i]
            logits, recon = model(item["image"][None], decode=model.decoder is not None)
            prob = torch.softmax(logits, 1)[0, 1].item()
            panels = [(item["image"][0], "input"), (item["target"][0], "target (image x dilated mask)"),
                      (recon[0, 0] if recon is not None else torch.zeros_like(item["image"][0]), f"reconstruction, p(target)={prob:.2f}")]
            for ax, (img, title) in zip(axes[i], panels):
                ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{finding}: decoder reconstructions ({split})", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- screening figures
# Each takes plain arrays or the DataFrames of scxnn.evaluation and returns a Figure; no file IO
# (save with save_figure). Empty or all-NaN input gives a figure that says so instead of an error.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _set_colors(names: Sequence[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _ordered(values) -> list:
    """Unique values in order of first appearance, NaN dropped."""
    return list(pd.unique(pd.Series(list(values)).dropna()))


def roc_figure(curves: dict[str, tuple], operating: dict[str, tuple[float, float]] | None = None,
               thesis_points: dict[str, tuple[float, float]] | None = None):
    """ROC (abnormal = positive, larger score = more abnormal) per evaluation set, AUC in the legend.

    ``curves``: set -> ``(y, score)``; rows with a missing label or score are dropped, and a set
    left with a single class is skipped and named in the legend. ``operating``: set -> ``(fpr, tpr)``
    of our frozen threshold (circles). ``thesis_points``: set -> ``(fpr, tpr)`` from the thesis'
    confusion matrices (fpr = 1 - specificity, tpr = sensitivity; stars). One line per plotted set
    plus the chance diagonal (label ``_chance``)."""
    from matplotlib.lines import Line2D
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="_chance")
    names = list(curves) + [k for k in (operating or {}) if k not in curves] + \
        [k for k in (thesis_points or {}) if k not in curves and k not in (operating or {})]
    colors = _set_colors(names)
    skipped = []
    for name, (y, score) in curves.items():
        y = pd.to_numeric(pd.Series(np.asarray(y, dtype=object)), errors="coerce").to_numpy(float)
        s = pd.to_numeric(pd.Series(np.asarray(score, dtype=object)), errors="coerce").to_numpy(float)
        ok = np.isfinite(y) & np.isfinite(s)
        y, s = y[ok].astype(int), s[ok]
        if len(np.unique(y)) < 2:
            skipped.append(f"{name}: one class (n={len(y)}), no ROC")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        auc = roc_auc_score(y, s)
        ax.plot(fpr, tpr, color=colors[name], lw=1.5,
                label=f"{name}: AUC {auc:.3f} (n={len(y)}, {int(y.sum())} abnormal)")
    handles, labels = ax.get_legend_handles_labels()
    # Points take their set's colour; one legend entry per kind of point, not per set.
    for points, marker, size, text in ((operating, "o", 36, "our threshold (colour: set)"),
                                       (thesis_points, "*", 110, "thesis' operating point (colour: set)")):
        drawn = False
        for name, (fpr, tpr) in (points or {}).items():
            if fpr is not None and tpr is not None and np.isfinite(fpr) and np.isfinite(tpr):
                ax.scatter([fpr], [tpr], color=colors[name], marker=marker, s=size, zorder=3,
                           edgecolor="black", linewidth=0.6)
                drawn = True
        if drawn:
            handles.append(Line2D([], [], ls="none", marker=marker, color="white", markeredgecolor="black",
                                  markersize=6 if marker == "o" else 10))
            labels.append(text)
    for note in skipped:
        handles.append(Line2D([], [], ls="none"))
        labels.append(note)
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        _no_data(ax)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (normal films flagged)")
    ax.set_ylabel("sensitivity (abnormal films flagged)")
    ax.set_title("ROC of the definite-normal score", fontsize=10)
    fig.tight_layout()
    return fig


def yield_figure(df: pd.DataFrame):
    """Left: share of films auto-reported normal vs the sensitivity target, one line per set.
    Right: achieved sensitivity vs the target, with the identity line (label ``_identity``). With a
    ``rule`` column, the ``certified`` thresholds are drawn dashed beside the ``point`` ones.
    ``df`` columns: target, set, sensitivity, auto_normal (threshold, specificity ignored);
    ``<metric>_lo`` / ``<metric>_hi`` columns, when present, are drawn as bands."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a2.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="_identity")
    sets = _ordered(df["set"]) if len(df) and "set" in df else []
    colors = _set_colors(sets)
    rules = list(dict.fromkeys(df["rule"])) if len(df) and "rule" in df else [None]
    for name in sets:
        for rule in rules:
            d = df[(df["set"] == name) & ((df["rule"] == rule) if rule is not None else True)].sort_values("target")
            x = pd.to_numeric(d["target"], errors="coerce").to_numpy(float)
            certified = rule == "certified"
            label = f"{name} (certified)" if certified else str(name)
            for ax, col in ((a1, "auto_normal"), (a2, "sensitivity")):
                y = pd.to_numeric(d[col], errors="coerce").to_numpy(float)
                ax.plot(x, y, marker="s" if certified else "o", ms=3, ls="--" if certified else "-", color=colors[name], label=label)
                lo, hi = f"{col}_lo", f"{col}_hi"
                if lo in d and hi in d:
                    ax.fill_between(x, pd.to_numeric(d[lo], errors="coerce").to_numpy(float),
                                    pd.to_numeric(d[hi], errors="coerce").to_numpy(float), color=colors[name], alpha=0.15, lw=0)
    if not sets:
        _no_data(a1)
        _no_data(a2)
    targets = pd.to_numeric(df["target"], errors="coerce") if len(df) and "target" in df else pd.Series(dtype=float)
    if targets.notna().any():
        lo = float(min(targets.min(), 0.9)) - 0.005
        a2.set_xlim(lo, 1.002)
        a2.set_ylim(lo, 1.002)
        a1.set_xlim(lo, 1.002)
    a1.set_ylim(0, None)
    a1.set_title("workload removed", fontsize=10)
    a1.set_ylabel("share auto-reported normal")
    a2.set_title("achieved sensitivity", fontsize=10)
    a2.set_ylabel("sensitivity")
    for ax in (a1, a2):
        ax.set_xlabel("sensitivity target of the threshold")
        if sets:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _bin_geometry(bins: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Bar centres and width for the calibration histogram: from ``bin_lo`` / ``bin_hi`` when
    present, from ``bin`` when it holds intervals (``pd.Interval`` or ``"(0.1, 0.2]"``), else from
    ``mean_predicted``."""
    import re

    if "bin_lo" in bins and "bin_hi" in bins and len(bins):
        lo = pd.to_numeric(bins["bin_lo"], errors="coerce").to_numpy(float)
        hi = pd.to_numeric(bins["bin_hi"], errors="coerce").to_numpy(float)
        widths = (hi - lo)[np.isfinite(hi - lo)]
        if len(widths):
            return (lo + hi) / 2, float(widths.min())
    vals = list(bins["bin"]) if "bin" in bins else []
    if vals and all(isinstance(v, pd.Interval) for v in vals):
        return np.array([v.mid for v in vals], float), float(min(v.length for v in vals))
    nums = [re.findall(r"-?\d*\.?\d+(?:e-?\d+)?", str(v)) for v in vals]
    if vals and all(len(n) == 2 for n in nums):
        lohi = np.array(nums, dtype=float)
        return lohi.mean(axis=1), float(np.min(lohi[:, 1] - lohi[:, 0]))
    centres = pd.to_numeric(bins["mean_predicted"], errors="coerce").to_numpy(float)
    n = max(int(bins["bin"].nunique()) if "bin" in bins else len(bins), 1)
    return centres, 1.0 / max(n, 10)


def calibration_figure(bins_df: pd.DataFrame):
    """Reliability diagram per set (mean predicted probability vs observed abnormal share, with the
    diagonal, label ``_diagonal``) above a histogram of the predicted probabilities (film counts per
    bin). ``bins_df`` columns: set, bin, mean_predicted, observed, count."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="_diagonal")
    sets = _ordered(bins_df["set"]) if len(bins_df) and "set" in bins_df else []
    colors = _set_colors(sets)
    for i, name in enumerate(sets):
        d = bins_df[bins_df["set"] == name]
        x = pd.to_numeric(d["mean_predicted"], errors="coerce").to_numpy(float)
        y = pd.to_numeric(d["observed"], errors="coerce").to_numpy(float)
        order = np.argsort(np.where(np.isfinite(x), x, np.inf), kind="stable")
        top.plot(x[order], y[order], marker="o", ms=4, color=colors[name], label=str(name))
        centres, width = _bin_geometry(d)
        counts = pd.to_numeric(d["count"], errors="coerce").fillna(0).to_numpy(float)
        w = width / max(len(sets), 1)
        ok = np.isfinite(centres)
        bottom.bar(centres[ok] - width / 2 + w * (i + 0.5), counts[ok], width=w * 0.95, color=colors[name], alpha=0.8)
    if sets:
        top.legend(fontsize=7, loc="upper left")
    else:
        _no_data(top)
        _no_data(bottom)
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("observed share abnormal")
    top.set_title("calibration", fontsize=10)
    bottom.set_xlabel("predicted probability abnormal")
    bottom.set_ylabel("films")
    fig.tight_layout()
    return fig


def auc_figure(df: pd.DataFrame, risk: dict[str, str] | None = None, thesis: dict[str, float] | None = None,
               label: str = "finding", title: str | None = None):
    """Horizontal bars of AUC per finding with CI error bars (columns finding, auc, auc_lo, auc_hi;
    n_pos / n_neg shown when present; ``scxnn.evaluation.auc_per_finding``). An optional ``set``
    column gives grouped bars, one colour per set; otherwise ``risk`` (finding -> risk group, e.g.
    ``cfg.findings``) colours the bars. ``thesis`` (finding -> AUC) adds black diamonds. A missing
    AUC gets no bar and an ``n/a`` label; a missing bound no error bar. One bar (patch) per row.
    ``label="set"`` plots a frame keyed by set instead (``scxnn.evaluation.svm_auc``)."""
    plt = _pyplot()
    if label != "finding" and len(df):
        df = df.rename(columns={label: "finding"}) if label != "set" else df.assign(finding=df["set"]).drop(columns="set")
    title = title or ("AUC per finding" if label == "finding" else f"AUC per {label}")
    findings = _ordered(df["finding"]) if len(df) else []
    sets = _ordered(df["set"]) if len(df) and "set" in df else [None]
    fig, ax = plt.subplots(figsize=(6.4, 0.7 + 0.32 * max(len(findings), 1) * max(len(sets), 1) ** 0.5))
    if not findings:
        _no_data(ax)
        ax.set_title(title, fontsize=10)
        return fig
    ypos = {f: i for i, f in enumerate(findings)}
    h = 0.8 / len(sets)
    set_colors = _set_colors([s for s in sets if s is not None])
    risk_colors = _set_colors(sorted(set((risk or {}).values())))
    for j, s in enumerate(sets):
        d = df if s is None else df[df["set"] == s]
        y = np.array([ypos[f] for f in d["finding"]], float) - 0.4 + h * (j + 0.5)
        auc = pd.to_numeric(d["auc"], errors="coerce").to_numpy(float)
        lo = pd.to_numeric(d["auc_lo"], errors="coerce").to_numpy(float) if "auc_lo" in d else np.full(len(d), np.nan)
        hi = pd.to_numeric(d["auc_hi"], errors="coerce").to_numpy(float) if "auc_hi" in d else np.full(len(d), np.nan)
        if s is not None:
            color = [set_colors[s]] * len(d)
        elif risk:
            color = [risk_colors.get(risk.get(f), "tab:blue") for f in d["finding"]]
        else:
            color = ["tab:blue"] * len(d)
        ax.barh(y, np.nan_to_num(auc, nan=0.0), height=h * 0.9, color=color, label=None if s is None else str(s))
        ok = np.isfinite(auc) & np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            err = np.vstack([np.clip(auc[ok] - lo[ok], 0, None), np.clip(hi[ok] - auc[ok], 0, None)])
            ax.errorbar(auc[ok], y[ok], xerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        npos = d["n_pos"].to_numpy() if "n_pos" in d else [None] * len(d)
        for yy, a, n in zip(y, auc, npos):
            if not np.isfinite(a):
                ax.text(0.01, yy, "n/a", va="center", fontsize=7, color="grey")
            else:
                text = f"{a:.2f}" + (f" ({int(n)}+)" if n is not None and not pd.isna(n) else "")
                inside = a >= 0.2  # white on the bar, or black beside a short one
                ax.text(0.01 if inside else a + 0.01, yy, text, va="center", fontsize=6, color="white" if inside else "black")
    if thesis:
        ty = [ypos[f] for f in findings if f in thesis and thesis[f] is not None and np.isfinite(thesis[f])]
        tx = [thesis[f] for f in findings if f in thesis and thesis[f] is not None and np.isfinite(thesis[f])]
        if tx:
            ax.scatter(tx, ty, marker="D", s=18, color="black", zorder=3, label="thesis")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(findings)))
    ax.set_yticklabels(findings, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("AUC (95% CI)")
    ax.set_title(title, fontsize=10)
    if sets != [None] or thesis:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def thumbnail_inputs(cfg: Config, cases: pd.DataFrame, table: pd.DataFrame, limit: int = 24) -> tuple[list[str], list[str]]:
    """Paths (``cache_dir(cfg) / path`` from ``table``, matched on image_id) and titles for
    :func:`thumbnails_figure`, from a missed-cases frame (``scxnn.evaluation.missed_cases``:
    image_id, set, score, findings, worst_risk; all but image_id optional), first ``limit`` rows."""
    from scxnn.preprocess import cache_dir

    if "path" not in table:
        raise KeyError("the logits table has no 'path' column (PNG relative to the cache); rebuild it with scxnn.ensemble.logits_table")
    where = table.drop_duplicates("image_id").set_index("image_id")["path"]
    paths, titles = [], []
    for r in cases.head(limit).itertuples(index=False):
        d = r._asdict()
        paths.append(str(cache_dir(cfg) / where[d["image_id"]]))
        bits = [str(d["image_id"])]
        if "set" in d:
            bits.append(str(d["set"]))
        if d.get("score") is not None and not pd.isna(d.get("score")):
            bits.append(f"score {float(d['score']):.2f}")
        risk = d.get("worst_risk", d.get("risk"))
        if risk:
            bits.append(str(risk))
        title = " · ".join(bits)
        if d.get("findings"):
            title += f"\n{d['findings']}"
        titles.append(title)
    return paths, titles


def thumbnails_figure(paths: Sequence, titles: Sequence, ncols: int = 6):
    """Grayscale thumbnails (e.g. the critical films the screen missed), ``ncols`` per row, one axes
    per image; an unreadable file shows as a labelled blank. No images: a small figure saying so."""
    import textwrap

    from scxnn.preprocess import read_png

    plt = _pyplot()

    n = len(paths)
    if n == 0:
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.axis("off")
        _no_data(ax, "none")
        return fig
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 3.0 * nrows), squeeze=False)
    titles = list(titles) + [""] * (n - len(titles))
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            fig.delaxes(ax)
            continue
        ax.axis("off")
        try:
            img = read_png(paths[i])
        except (OSError, ValueError):
            _no_data(ax, "unreadable")
        else:
            vmax = 255 if img.dtype == np.uint8 else None
            ax.imshow(img if img.ndim == 2 else img[..., 0], cmap="gray", vmin=0 if vmax else None, vmax=vmax)
        ax.set_title("\n".join(textwrap.fill(part, 36) for part in str(titles[i]).split("\n")), fontsize=7)
    fig.tight_layout()
    return fig


RISK_DECISIONS = ("normal", "target", "others")  # the per-finding models' calls, <finding>__pred 0/1/2
_DECISION_COLORS = {"normal": "tab:red", "target": "tab:green", "others": "tab:blue"}


def risk_figure(risk_df: pd.DataFrame, risk_groups: Sequence[str] | None = None, ncols: int = 4):
    """Thesis Tables 3 / 8 as a picture: for the positive (image, finding) pairs of each set, the
    share that the finding's own model called normal (red: missed), target or others, one stacked
    bar per risk group; the thesis' bar (hatched) beside ours where ``thesis_<group>`` columns hold
    numbers. ``risk_df`` is ``scxnn.evaluation.risk_table``'s layout: rows (set, decision), columns
    critical, urgent, non_urgent, cardiomegaly (counts), optionally ``pipeline``, total and
    ``thesis_<group>``. One axes per (pipeline,) set; an empty frame gives one axes saying so."""
    from scxnn.config import RISK_GROUPS

    plt = _pyplot()
    groups = [g for g in (risk_groups or RISK_GROUPS)]
    keys = [c for c in ("pipeline", "set") if c in risk_df]
    panels = list(risk_df[keys].drop_duplicates().itertuples(index=False, name=None)) if len(risk_df) and keys else []
    n = max(len(panels), 1)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows + 0.5), squeeze=False, sharey=True)
    for ax in axes.ravel()[n:]:
        fig.delaxes(ax)
    if not panels:
        _no_data(axes[0, 0])
    decisions = [d for d in RISK_DECISIONS if len(risk_df) and d in set(risk_df["decision"])]
    decisions += [d for d in _ordered(risk_df["decision"]) if d not in decisions] if len(risk_df) else []
    x = np.arange(len(groups))
    has_thesis = any(f"thesis_{g}" in risk_df for g in groups)
    width = 0.38 if has_thesis else 0.7
    for ax, key in zip(axes.ravel(), panels):
        part = risk_df[(risk_df[keys] == pd.Series(key, index=keys)).all(axis=1)]
        for prefix, offset, hatch in (("", -width / 2 if has_thesis else 0.0, None), ("thesis_", width / 2, "//")):
            cols = [f"{prefix}{g}" for g in groups]
            if prefix and not has_thesis:
                continue
            counts = np.array([[pd.to_numeric(part.loc[part["decision"] == d, c], errors="coerce").sum(min_count=1)
                                if c in part else np.nan for c in cols] for d in decisions], dtype=float).reshape(len(decisions), len(groups))
            total = np.nansum(counts, axis=0)
            known = np.isfinite(counts).all(axis=0) & (total > 0)
            share = np.divide(np.nan_to_num(counts), total, out=np.zeros_like(counts), where=known)
            base = np.zeros(len(groups))
            for k, d in enumerate(decisions):
                ax.bar((x + offset)[known], share[k][known], bottom=base[known], width=width * 0.92,
                       color=_DECISION_COLORS.get(d, "grey"), hatch=hatch, edgecolor="white" if hatch else None,
                       alpha=0.6 if hatch else 1.0, label=(d if not prefix else None))
                base += share[k]
            for xi, ok, tot in zip(x + offset, known, total):
                ax.text(xi, 1.01, f"{int(tot)}" if ok else "–", ha="center", va="bottom", fontsize=6, color="grey" if prefix else "black")
        ax.set_xticks(x)
        ax.set_xticklabels([g.replace("_", "-") for g in groups], fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.set_title(" · ".join(str(k) for k in key), fontsize=9)
    axes[0, 0].set_ylabel("share of positive (image, finding) pairs")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if has_thesis and panels:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="lightgrey", hatch="//", edgecolor="white"))
        labels.append("thesis")
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("the finding's own model: normal (missed) / target / others; numbers: pairs", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def unseen_figure(t9: pd.DataFrame, unseen: Sequence[str]):
    """Table 9 as heatmaps: per finding model (rows) and unseen finding (columns), the share of films
    the model calls Normal, ours beside the thesis' when its columns are present."""
    plt = _pyplot()
    import seaborn as sns

    panels = [("", "ours")] + ([("thesis_", "thesis")] if any(c.startswith("thesis_") for c in t9.columns) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 0.32 * len(t9) + 1.6), squeeze=False)
    for ax, (prefix, title) in zip(axes[0], panels):
        cols = [f"{prefix}{u}_normal" for u in unseen if f"{prefix}{u}_normal" in t9]
        data = t9.set_index("finding")[cols].astype(float)
        data.columns = [c[len(prefix):].removesuffix("_normal") for c in cols]
        sns.heatmap(data, vmin=0, vmax=1, cmap="Reds", annot=True, fmt=".2f", cbar=False, ax=ax, annot_kws={"fontsize": 7})
        ax.set_title(f"{title}: share called Normal", fontsize=9)
        ax.set_xlabel("unseen finding")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def ablation_figure(df: pd.DataFrame, title: str = ""):
    """An ablation table (``scxnn.variants.ablation_table``) as bars: per metric, one bar per row
    with its 95% CI, the thesis' value as a black diamond. With the paired columns (``delta_auc``,
    ``delta_auc_lo``, ``delta_auc_hi``; ``is_reference``), the AUC panel becomes each row's AUC
    minus the reference row's with its paired interval, a line at 0 and the reference row marked
    (a star, "(reference)" in its label): rows whose interval excludes 0 differ from it. Frames
    without those columns get the plain AUC bars."""
    plt = _pyplot()
    paired = {"delta_auc", "delta_auc_lo", "delta_auc_hi"} <= set(df.columns)
    metrics = (["delta_auc"] if paired else ["auc"] if "auc" in df else []) + [m for m in ("sensitivity", "specificity", "accuracy") if m in df]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.1 * len(metrics), 0.35 * len(df) + 1.8), sharey=True, squeeze=False)
    y = np.arange(len(df))
    is_ref = df["is_reference"].fillna(False).astype(bool).to_numpy() if "is_reference" in df else np.zeros(len(df), bool)
    for ax, m in zip(axes[0], metrics):
        v = df[m].astype(float).to_numpy()
        err = None
        if f"{m}_lo" in df and f"{m}_hi" in df:
            lo, hi = df[f"{m}_lo"].astype(float).to_numpy(), df[f"{m}_hi"].astype(float).to_numpy()
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            err = np.nan_to_num(err)
        if m == "delta_auc":
            ax.axvline(0, color="grey", lw=0.8)
            ax.errorbar(v, y, xerr=err, fmt="o", color="#4c72b0", ms=4, capsize=2, label="ours (paired CI)")
            ax.plot(v[is_ref], y[is_ref], "*", color="tab:red", ms=11, zorder=3, label="reference")
            shown = [v] if err is None else [v - err[0], v + err[1]]
            if "thesis_auc" in df and is_ref.any():
                thesis = df["thesis_auc"].astype(float).to_numpy()
                shown.append(thesis - thesis[is_ref][0])
                ax.plot(shown[-1], y, "D", color="black", ms=5, label="thesis")
            bound = np.nanmax(np.abs(np.concatenate(shown)), initial=0.0)
            ax.set_xlim(-1.15 * bound - 0.01, 1.15 * bound + 0.01)
            ax.set_title("AUC − reference row", fontsize=9)
        else:
            ax.barh(y, np.nan_to_num(v), xerr=err, color="#4c72b0", alpha=0.85, capsize=2, label="ours")
            if f"thesis_{m}" in df:
                ax.plot(df[f"thesis_{m}"].astype(float), y, "D", color="black", ms=5, label="thesis")
            ax.set_xlim(0, 1.02)
            ax.set_title(m, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    labels = [f"{r} (reference)" if ref else str(r) for r, ref in zip(df["row"], is_ref)]
    axes[0, 0].set_yticks(y, labels)
    axes[0, 0].invert_yaxis()
    axes[0, -1].legend(fontsize=7, loc="lower right")
    if paired:
        axes[0, 0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
