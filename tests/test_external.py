"""scxnn.external (``scxnn evaluate``): the summary it writes and prints, from a hand-made scored
table standing in for the run's scoring (no models). The command end to end on real films is in
test_kermany.py."""

from __future__ import annotations

import json

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scxnn.external as X
import scxnn.study_tables
from scxnn.config import load_config
from scxnn.ensemble import choose_thresholds

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _kermany_films(n_patients: int, split: str, seed: int) -> pd.DataFrame:
    """Films of the kermany profile as ``scxnn evaluate`` scores them: about half pneumonia (one of
    two subtypes), logits that mostly point the right way, a score higher for abnormal films."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n_patients)  # 0 normal, 1 bacterial, 2 viral
    df = pd.DataFrame({"image_id": [f"{split}{i}" for i in range(n_patients)], "patient_id": [f"p-{split}{i}" for i in range(n_patients)],
                       "site": "kermany", "split": split, "label_type": "weak",
                       "bacterial_pneumonia": pd.array(kind == 1, dtype="Int8"), "viral_pneumonia": pd.array(kind == 2, dtype="Int8"),
                       "abnormal": pd.array(kind > 0, dtype="Int8"), "path": [f"images/{split}{i}.png" for i in range(n_patients)]})
    for j, f in enumerate(("bacterial_pneumonia", "viral_pneumonia"), 1):
        mean = {"normal": 1.5 * (kind == 0), "target": 2.0 * (kind == j), "others": 1.5 * ((kind > 0) & (kind != j))}
        for name, m in mean.items():
            df[f"{f}__{name}"] = m + rng.normal(0, 0.8, n_patients)
        df[f"{f}__pred"] = df[[f"{f}__{c}" for c in mean]].to_numpy().argmax(axis=1)
    df["score"] = 2.0 * (kind > 0) + rng.normal(0, 1, n_patients)
    return df


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    """``evaluate_manifest`` on 60 films with the run's scoring and Grad-CAM figure stood in for:
    a function of whether the profile names published results, giving (summary, out folder, the
    Grad-CAM figure's calls, the scored table, the thresholds)."""
    def run(published: bool):
        out = tmp_path / ("pub" if published else "plain")
        cfg = load_config("kermany", {"paths.reports": str(out), "evaluate.bootstrap": 100})
        if not published:
            cfg = cfg.replace({"evaluate.published": {}})
        val = _kermany_films(40, "val", 1)
        th = choose_thresholds(val["score"], val["abnormal"], val["patient_id"], 0.99, 100, 0)
        table = _kermany_films(60, "test", 0)
        skipped = pd.DataFrame({"image_id": ["bad"], "reason": ["unreadable"]})
        monkeypatch.setattr(X, "score_manifest", lambda *a: (cfg, table, skipped, {"patients": 2, "images": 1}, th))
        monkeypatch.setattr(X, "run_model_dirs", lambda run, cfg: {f: f"{run}/{f}" for f in cfg.findings})
        calls = []
        monkeypatch.setattr(scxnn.study_tables, "gradcam_figure", lambda cfg, models, **kw: calls.append((models, kw)))
        return X.evaluate_manifest(tmp_path / "run", tmp_path / "m" / "manifest.csv", out), out, calls, table, th
    return run


@pytest.mark.parametrize("published", [True, False], ids=["published-results", "none-published"])
def test_evaluate_writes_the_tables_and_a_summary_of_them(evaluated, published):
    summary, out, calls, table, th = evaluated(published)
    assert json.loads((out / X.SUMMARY_NAME).read_text()) == summary
    assert (summary["films"], summary["patients"], summary["skipped"]) == (60, 60, 1)
    assert (summary["dropped_seen_patients"], summary["dropped_seen_images"], summary["sets"]) == (2, 1, "kermany")
    assert summary["threshold"] == th.point and summary["threshold_strict"] == th.strict and summary["target"] == 0.99
    assert summary["validation"] == th.describe() and summary["strict_certified"] is False
    assert summary["missed_abnormal"] == int(((table["abnormal"] == 1) & (table["score"] < th.point)).sum())
    for k in ("auc", "sensitivity", "specificity", "auto_normal", "strict_sensitivity", "strict_auto_normal"):
        assert summary[f"{k}_lo"] <= summary[k] <= summary[f"{k}_hi"], k
    t2 = pd.read_csv(out / "tables" / "kermany" / "table2_normal_vs_abnormal.csv")
    assert summary["sensitivity"] == pytest.approx(t2["sensitivity"].iloc[0]) and summary["meets_target"] == t2["meets_target"].iloc[0]
    tables = {p.stem for p in (out / "tables" / "kermany").glob("*.csv")}
    want = {"table2_normal_vs_abnormal", "table2_strict_threshold", "thresholds", "svm_auc", "auc_per_finding",
            "missed_by_risk", "missed_cases"}
    assert tables == want | ({"published_comparison"} if published else set())
    assert ("boundary_accuracy" in summary) == published
    # Grad-CAM: each finding model on a few films of the manifest with its finding, into the manifest's own cache.
    ((models, kw),) = calls
    assert sorted(models) == ["bacterial_pneumonia", "viral_pneumonia"]
    assert kw["cache"] == out / "png" and kw["name"] == "figure_gradcam" and "manifest.csv" in kw["films"]
    assert kw["films_per_finding"] == scxnn.study_tables.OUTSIDE_CAM_FILMS > 1 and "manifest.csv" in kw["films_label"]


def _summary(**kw) -> dict:
    s = {"films": 100, "patients": 90, "sets": "kermany", "skipped": 0, "dropped_seen_patients": 0, "dropped_seen_images": 0,
         "auc": 0.9, "auc_lo": 0.85, "auc_hi": 0.95, "sensitivity": 0.99, "sensitivity_lo": 0.95, "sensitivity_hi": 1.0,
         "target": 0.99, "meets_target": "point estimate only", "specificity": 0.5, "specificity_lo": 0.4, "specificity_hi": 0.6,
         "auto_normal": 0.2, "auto_normal_lo": 0.15, "auto_normal_hi": 0.25, "missed_abnormal": 1, "strict_certified": False,
         "strict_sensitivity": 1.0, "strict_sensitivity_lo": 0.96, "strict_sensitivity_hi": 1.0, "strict_auto_normal": 0.0,
         "strict_auto_normal_lo": 0.0, "strict_auto_normal_hi": 0.03, "validation": "point threshold 0.1234: ..."}
    return {**s, **kw}


@pytest.mark.parametrize("extra, present, absent", [
    ({}, ["100 films, 90 patients (kermany); 0 skipped\n", "ROC AUC 0.900 [0.850, 0.950]\n",
          "sensitivity 0.990 [0.950, 1.000] (target 99%: point estimate only)", "auto-normal 20.0% [15.0%, 25.0%]",
          "1 abnormal film(s) auto-reported normal\n", "not certified: calls nothing normal", "validation: point threshold 0.1234"],
     ["left out as seen", "unknown status", "SVM boundary"]),
    ({"dropped_seen_patients": 2, "dropped_seen_images": 1}, ["left out as seen by the run: 2 patient(s), 1 identical film(s)"], []),
    ({"unknown_films": 3, "unknown_called_normal": 1}, ["; 3 film(s) of unknown status", "rates, 1 of them below the threshold"], []),
    ({"strict_certified": True}, ["at the strict threshold (certified): sensitivity 1.000 [0.960, 1.000]"], ["not certified"]),
    ({"boundary_accuracy": 0.9, "boundary_sensitivity": 0.95, "boundary_specificity": 0.8},
     ["\nat the SVM boundary: accuracy 0.900, sensitivity 0.950, specificity 0.800"], []),
], ids=["plain", "seen-films-left-out", "unknown-films", "strict-certified", "published-boundary"])
def test_the_printed_summary_says_what_the_summary_holds(extra, present, absent):
    text = X.format_summary(_summary(**extra))
    for p in present:
        assert p in text, p
    for a in absent:
        assert a not in text, a
    assert len(text.splitlines()) == 5 + ("boundary_accuracy" in extra)
