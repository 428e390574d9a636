"""The result figures of notebooks 04, 05 and 07, each a function that returns a matplotlib figure
for :func:`scxnn.reports.save_figure`: ROC, yield, calibration, AUC per finding, risk groups,
unseen findings, ablations and film thumbnails. Notebook 01's figures are in :mod:`scxnn.gallery`,
notebook 02's in :mod:`scxnn.training_figures`, so that redrawing a result figure does not retrain
the models (``make`` tracks each step's modules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scxnn.config import Config, RISK_GROUPS
from scxnn.metrics import fmt_ci
from scxnn.pixels import cache_dir, read_png


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
               thesis_points: dict[str, tuple[float, float]] | None = None,
               auc_ci: dict[str, tuple[float, float, float]] | None = None,
               operating_ci: dict[str, tuple[tuple[float, float], tuple[float, float]]] | None = None):
    """ROC (abnormal = positive, larger score = more abnormal) per evaluation set, AUC in the legend
    (with its interval when ``auc_ci`` gives set -> ``(auc, lo, hi)``, e.g. from
    :func:`scxnn.evaluation.svm_auc`). ``operating_ci``: set -> ``((fpr_lo, fpr_hi), (tpr_lo, tpr_hi))``,
    drawn as a cross of intervals through our operating point.

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
        shown = fmt_ci(*auc_ci[name]) if auc_ci and name in auc_ci else f"{auc:.3f}"
        ax.plot(fpr, tpr, color=colors[name], lw=1.5,
                label=f"{name}: AUC {shown} (n={len(y)}, {int(y.sum())} abnormal)")
    handles, labels = ax.get_legend_handles_labels()
    # Points take their set's colour; one legend entry per kind of point, not per set.
    for points, marker, size, text in ((operating, "o", 36, "our threshold (colour: set)"),
                                       (thesis_points, "*", 110, "thesis' operating point (colour: set)")):
        drawn = False
        for name, (fpr, tpr) in (points or {}).items():
            if fpr is not None and tpr is not None and np.isfinite(fpr) and np.isfinite(tpr):
                ax.scatter([fpr], [tpr], color=colors[name], marker=marker, s=size, zorder=3,
                           edgecolor="black", linewidth=0.6)
                ci = (operating_ci or {}).get(name) if points is operating else None
                if ci is not None and np.all(np.isfinite(np.asarray(ci, dtype=float))):
                    (flo, fhi), (tlo, thi) = ci
                    ax.errorbar([fpr], [tpr], xerr=[[max(fpr - flo, 0)], [max(fhi - fpr, 0)]],
                                yerr=[[max(tpr - tlo, 0)], [max(thi - tpr, 0)]], color=colors[name], lw=0.9,
                                capsize=2, zorder=2, label="_ci")
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
        # The achieved sensitivity (and its band) can fall far below the targets: the axis must show it.
        achieved = pd.to_numeric(pd.concat([df[c] for c in ("sensitivity", "sensitivity_lo") if c in df]), errors="coerce")
        floor = float(achieved.min()) if achieved.notna().any() else lo
        a2.set_ylim(min(lo, floor - 0.01), 1.002)
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
