"""scxnn.figures: the screening figures (ROC, yield, calibration, AUC, thumbnails, risk, unseen
findings, ablations) drawn from small hand-made frames. Cheap: no models, no data."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from scxnn import figures
from scxnn.config import load_config
from scxnn.pixels import encode_png

matplotlib.use("Agg")


@pytest.fixture
def cfg(tmp_path: Path):
    return load_config("smoke", {"paths.reports": str(tmp_path / "reports")})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _visible_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_roc_one_line_per_set_with_both_classes():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)]
    curves = {
        "internal test": (y, y + rng.normal(0, 1, 40)),
        "temporal": (pd.array([0, 1, None, 1], dtype="Int8"), [0.1, 0.9, 0.5, np.nan]),  # NA dropped
        "external1": (np.ones(5), rng.normal(size=5)),  # one class: skipped
        "empty": ([], []),
    }
    fig = figures.roc_figure(curves, operating={"internal test": (0.3, 0.95), "external1": (np.nan, np.nan)},
                             thesis_points={"internal test": (0.7, 0.997)})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    lines = _visible_lines(ax)
    assert len(lines) == 2
    assert lines[0].get_label().startswith("internal test: AUC")
    assert len(ax.collections) == 2  # our point and the thesis' (NaN point left out)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("external1: one class") for t in legend)
    assert any(t.startswith("empty: one class") for t in legend)


def test_roc_empty():
    fig = figures.roc_figure({})
    assert isinstance(fig, Figure) and not _visible_lines(fig.axes[0])


def _yield_df() -> pd.DataFrame:
    rows = []
    for s in ("internal test", "temporal"):
        for t in (0.9, 0.95, 0.99):
            rows.append({"target": t, "threshold": -t, "set": s, "sensitivity": t + 0.005, "specificity": 0.3,
                         "auto_normal": 1 - t})
    df = pd.DataFrame(rows)
    df.loc[1, "sensitivity"] = np.nan
    return df


def test_yield_figure():
    fig = figures.yield_figure(_yield_df())
    assert len(fig.axes) == 2
    assert len(_visible_lines(fig.axes[0])) == 2
    assert len(_visible_lines(fig.axes[1])) == 2
    assert len(fig.axes[1].get_lines()) == 3  # + identity
    df = _yield_df().assign(sensitivity_lo=0.8, sensitivity_hi=1.0)
    assert len(figures.yield_figure(df).axes[1].collections) == 2  # bands


def test_yield_figure_empty():
    fig = figures.yield_figure(pd.DataFrame(columns=["target", "threshold", "set", "sensitivity", "specificity", "auto_normal"]))
    assert len(fig.axes) == 2 and not _visible_lines(fig.axes[0])


@pytest.mark.parametrize("bin_kind", ["interval", "string", "index", "edges"])
def test_calibration_figure(bin_kind):
    edges = np.linspace(0, 1, 6)
    intervals = pd.IntervalIndex.from_breaks(edges)
    rows = []
    for s in ("internal test", "temporal", "external1"):
        for i, iv in enumerate(intervals):
            b = {"interval": iv, "string": str(iv), "index": i, "edges": i}[bin_kind]
            rows.append({"set": s, "bin": b, "mean_predicted": iv.mid, "observed": iv.mid * 0.9, "count": 10 - i})
            if bin_kind == "edges":  # scxnn.evaluation.calibration: integer bin plus its edges
                rows[-1].update(bin=i, bin_lo=iv.left, bin_hi=iv.right)
    df = pd.DataFrame(rows)
    df.loc[0, ["observed", "mean_predicted"]] = np.nan
    fig = figures.calibration_figure(df)
    assert len(fig.axes) == 2
    top, bottom = fig.axes
    assert len(_visible_lines(top)) == 3 and len(top.get_lines()) == 4
    # integer bins are placed at mean_predicted, so the bin whose mean is missing has no bar
    assert len(bottom.patches) == (14 if bin_kind == "index" else 15)


def test_calibration_figure_empty():
    fig = figures.calibration_figure(pd.DataFrame(columns=["set", "bin", "mean_predicted", "observed", "count"]))
    assert len(fig.axes) == 2 and not _visible_lines(fig.axes[0])


def test_auc_figure_nan_safe(cfg):
    df = pd.DataFrame({"finding": list(cfg.findings)[:4], "auc": [0.9, np.nan, 0.7, 0.6],
                       "auc_lo": [0.8, np.nan, np.nan, 0.5], "auc_hi": [0.95, np.nan, np.nan, 0.7],
                       "n_pos": [10, 0, 3, pd.NA], "n_neg": [50, 60, 57, 50]})
    fig = figures.auc_figure(df, risk=cfg.findings, thesis={df.finding[0]: 0.95, "unknown": 0.5})
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    assert [t.get_text() for t in ax.get_yticklabels()] == list(df["finding"])
    assert "n/a" in [t.get_text() for t in ax.texts]
    grouped = pd.concat([df.assign(set="internal test"), df.assign(set="temporal")])
    assert len(figures.auc_figure(grouped).axes[0].patches) == 8
    per_set = pd.DataFrame({"set": ["internal", "temporal"], "n_pos": [2, 6], "n_neg": [3, 4],
                            "auc": [0.0, 0.5], "auc_lo": [0.0, 0.2], "auc_hi": [0.1, 0.8]})
    ax = figures.auc_figure(per_set, label="set").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["internal", "temporal"] and len(ax.patches) == 2


def test_auc_figure_empty():
    fig = figures.auc_figure(pd.DataFrame(columns=["finding", "auc", "auc_lo", "auc_hi", "n_pos", "n_neg"]))
    assert len(fig.axes) == 1 and not fig.axes[0].patches


def test_thumbnails(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(encode_png(np.full((32, 32), 40 * i, np.uint8)))
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    fig = figures.thumbnails_figure(paths, ["a", "b", "c", "d"], ncols=3)
    assert len(fig.axes) == 4
    assert sum(len(ax.images) for ax in fig.axes) == 3
    assert "unreadable" in [t.get_text() for t in fig.axes[3].texts]
    empty = figures.thumbnails_figure([], [])
    assert len(empty.axes) == 1 and "none" in [t.get_text() for t in empty.axes[0].texts]


def test_thumbnail_inputs(cfg):
    from scxnn.pixels import cache_dir

    table = pd.DataFrame({"image_id": ["a", "b"], "path": ["images/a.png", "images/b.png"]})
    missed = pd.DataFrame({"image_id": ["b"], "patient_id": ["p"], "set": ["temporal"], "score": [-1.25],
                           "findings": ["pneumothorax"], "worst_risk": ["critical"]})
    paths, titles = figures.thumbnail_inputs(cfg, missed, table)
    assert paths == [str(cache_dir(cfg) / "images/b.png")]
    assert titles == ["b · temporal · score -1.25 · critical\npneumothorax"]
    with pytest.raises(KeyError, match="path"):
        figures.thumbnail_inputs(cfg, missed, table.drop(columns="path"))


def _risk_table(thesis: bool = False) -> pd.DataFrame:
    """scxnn.evaluation.risk_table's layout: rows (set, decision), counts per risk group."""
    rows = []
    for s in ("internal", "temporal"):
        for i, d in enumerate(("normal", "target", "others")):
            row = {"set": s, "decision": d, "critical": i, "urgent": 2 * i + 1, "non_urgent": 0, "cardiomegaly": 3 - i}
            row["total"] = sum(row[g] for g in ("critical", "urgent", "non_urgent", "cardiomegaly"))
            if thesis:
                row.update(thesis_critical=5.0, thesis_urgent=np.nan, thesis_non_urgent=1.0, thesis_cardiomegaly=2.0)
            rows.append(row)
    return pd.DataFrame(rows)


def test_risk_figure():
    fig = figures.risk_figure(_risk_table())
    assert len(fig.axes) == 2  # one panel per set
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["critical", "urgent", "non-urgent", "cardiomegaly"]
    # 3 decisions x 3 groups with pairs (non_urgent has none: no bar, "–" above it)
    assert len(ax.patches) == 9
    tops = {}
    for bar in ax.patches:
        x = round(bar.get_x() + bar.get_width() / 2, 3)
        tops[x] = max(tops.get(x, 0), bar.get_y() + bar.get_height())
    assert all(abs(v - 1) < 1e-9 for v in tops.values())  # shares stack to 1
    assert "–" in [t.get_text() for t in ax.texts]


def test_risk_figure_with_thesis_and_empty():
    ax = figures.risk_figure(_risk_table(thesis=True)).axes[0]
    # ours: 9 bars; thesis: urgent unknown (NaN) -> 3 groups x 3 decisions
    assert len(ax.patches) == 18
    assert sum(bar.get_hatch() == "//" for bar in ax.patches) == 9
    empty = figures.risk_figure(_risk_table().iloc[:0])
    assert len(empty.axes) == 1 and "no data" in [t.get_text() for t in empty.axes[0].texts]


def _ablation_df(paired: bool) -> pd.DataFrame:
    """The frame of scxnn.variants.ablation_table: before the paired columns existed, and with them."""
    df = pd.DataFrame({"row": ["vgg16", "densenet121", "resnet50"], "variant": ["vgg16", "three_class", "resnet50"],
                       "auc": [0.80, 0.90, np.nan], "auc_lo": [0.7, 0.85, np.nan], "auc_hi": [0.88, 0.95, np.nan],
                       **{f"{m}{b}": [0.7, 0.8, 0.9] for m in ("sensitivity", "specificity") for b in ("", "_lo", "_hi")},
                       "accuracy": [0.7, 0.8, 0.75], "thesis_auc": [0.726, 0.904, np.nan]})
    if paired:
        df = df.assign(is_reference=[False, True, False], delta_auc=[-0.10, 0.0, np.nan],
                       delta_auc_lo=[-0.16, np.nan, np.nan], delta_auc_hi=[-0.04, np.nan, np.nan])
    return df


@pytest.mark.parametrize("paired", [False, True])
def test_ablation_figure_with_and_without_paired_deltas(paired):
    fig = figures.ablation_figure(_ablation_df(paired), "Table 4")
    first = fig.axes[0]
    assert len(fig.axes) == 4 and first.get_title() == ("AUC − reference row" if paired else "auc")
    labels = [t.get_text() for t in first.get_yticklabels()]
    assert labels[1] == ("densenet121 (reference)" if paired else "densenet121")
    if paired:
        # the zero line, the reference star at 0, and the thesis' deltas (thesis AUC minus its reference row's)
        assert any(list(ln.get_xdata()) == [0, 0] for ln in first.get_lines())
        star = [ln for ln in first.get_lines() if ln.get_label() == "reference"][0]
        assert list(star.get_xdata()) == [0.0] and list(star.get_ydata()) == [1]
        thesis = [ln for ln in first.get_lines() if ln.get_label() == "thesis"][0]
        assert np.allclose(thesis.get_xdata()[:2], [0.726 - 0.904, 0.0])
        lo, hi = first.get_xlim()
        assert lo < 0.726 - 0.904 and hi > 0.178  # the interval and the thesis are in view, symmetric about 0
    else:
        assert len(first.patches) == 3  # the old bars


def test_yield_figure_shows_an_achieved_sensitivity_far_below_the_target():
    df = _yield_df()
    df.loc[0, "sensitivity"] = 0.62  # a set where the validation-chosen threshold fails badly
    df["sensitivity_lo"], df["sensitivity_hi"] = df["sensitivity"] - 0.05, df["sensitivity"].clip(upper=1.0)
    bottom, top = figures.yield_figure(df).axes[1].get_ylim()
    assert bottom <= 0.57 and top >= 1.0
    plt.close("all")


def test_roc_shows_the_auc_interval_and_a_cross_of_intervals_at_our_threshold():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(30), np.ones(30)]
    fig = figures.roc_figure({"internal": (y, y + rng.normal(0, 1, 60))}, operating={"internal": (0.3, 0.9)},
                             auc_ci={"internal": (0.8123, 0.7049, 0.9001)},
                             operating_ci={"internal": ((0.2, 0.45), (0.8, 0.97))})
    ax = fig.axes[0]
    assert any("AUC 0.812 [0.704, 0.901]" in t.get_text() for t in ax.get_legend().get_texts())
    bars = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    segments = [s for c in bars for s in c.get_segments()]
    xs = sorted(tuple(np.round(s[:, 0], 3)) for s in segments if np.ptp(s[:, 0]) > 0)
    ys = sorted(tuple(np.round(s[:, 1], 3)) for s in segments if np.ptp(s[:, 1]) > 0)
    assert (0.2, 0.45) in xs and (0.8, 0.97) in ys
    assert len(_visible_lines(ax)) == 1  # the cross adds no ROC line
    plt.close(fig)


@pytest.mark.parametrize("thesis", [False, True], ids=["ours", "ours-and-thesis"])
def test_unseen_figure_one_heatmap_per_source_of_the_normal_shares(thesis):
    # scxnn.evaluation.table9's layout: a row per finding model, <unseen>_normal shares (and *_n, ignored here).
    t9 = pd.DataFrame({"finding": ["nodule", "pneumothorax", "cardiomegaly"], "pneumonia_normal": [0.1, 0.25, 0.9],
                       "fracture_normal": [0.5, np.nan, 0.0], "pneumonia_n": [4, 4, 4], "fracture_n": [2, 2, 2]})
    if thesis:
        t9["thesis_pneumonia_normal"] = [0.103, 0.2, 0.793]  # the thesis gives no fracture column
    fig = figures.unseen_figure(t9, ["pneumonia", "fracture"])
    assert len(fig.axes) == (2 if thesis else 1)
    ours = fig.axes[0]
    assert ours.get_title() == "ours: share called Normal" and ours.get_xlabel() == "unseen finding"
    assert [t.get_text() for t in ours.get_xticklabels()] == ["pneumonia", "fracture"]
    assert [t.get_text() for t in ours.get_yticklabels()] == ["nodule", "pneumothorax", "cardiomegaly"]
    assert sorted(t.get_text() for t in ours.texts) == sorted(["0.10", "0.25", "0.90", "0.50", "0.00"])  # NaN: no number
    if thesis:
        theirs = fig.axes[1]
        assert theirs.get_title() == "thesis: share called Normal"
        assert [t.get_text() for t in theirs.get_xticklabels()] == ["pneumonia"]
        assert sorted(t.get_text() for t in theirs.texts) == ["0.10", "0.20", "0.79"]
