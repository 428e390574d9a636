"""scxnn.evaluation's paired columns: auc_deltas and table7's delta against a reference pipeline, on synthetic scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scxnn import evaluation as E

from test_metrics import N_BOOT, films


def scored(y, g, score) -> pd.DataFrame:
    """A step-03-shaped scored table of internal test films (plus a few validation films, which
    the deltas must ignore)."""
    n = len(y)
    df = pd.DataFrame({"image_id": [f"f{i}" for i in range(n)], "patient_id": g, "site": "internal",
                       "split": "test", "abnormal": np.asarray(y, int), "score": np.asarray(score, float)})
    val = df.iloc[:4].assign(image_id=lambda d: "v" + d["image_id"], split="val", score=0.0)
    return pd.concat([df, val], ignore_index=True)


@pytest.fixture
def three_pipelines():
    y, g, d = films(50)
    rng = np.random.default_rng(9)
    return {"three_class": scored(y, g, 1.5 * y + d + 0.2 * rng.normal(size=len(y))),
            "two_class": scored(y, g, 1.0 * y + d + 0.2 * rng.normal(size=len(y))),
            "same": scored(y, g, 1.5 * y + d)}


def test_auc_deltas_reference_row_and_film_matching(three_pipelines):
    p = dict(three_pipelines)
    out = E.auc_deltas(p, "three_class", N_BOOT, 0)
    assert out["three_class"]["is_reference"] and out["three_class"]["delta_auc"] == 0.0
    assert np.isnan(out["three_class"]["delta_auc_lo"]) and np.isnan(out["three_class"]["delta_auc_hi"])
    two = out["two_class"]
    assert not two["is_reference"] and two["delta_auc_lo"] <= two["delta_auc"] <= two["delta_auc_hi"]
    # Films are paired by image_id, not by row order: a shuffled table gives the same answer.
    p["two_class"] = p["two_class"].sample(frac=1, random_state=1)
    assert E.auc_deltas(p, "three_class", N_BOOT, 0)["two_class"] == pytest.approx(two)
    assert all(np.isnan(v["delta_auc"]) and not v["is_reference"] for v in E.auc_deltas(p, "absent", N_BOOT, 0).values())


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(index=3), "scored different internal test films"),
    (lambda t: t.assign(image_id=t["image_id"].replace("f3", "other")), "1 only in 'two_class'"),
    (lambda t: t.assign(abnormal=np.where(t["image_id"] == "f0", 1 - t["abnormal"], t["abnormal"])), "disagree on the abnormal"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), "more than once"),
])
def test_pipelines_that_scored_other_films_cannot_be_paired(three_pipelines, change, message):
    p = dict(three_pipelines, two_class=change(three_pipelines["two_class"]))
    with pytest.raises(ValueError, match=message):
        E.auc_deltas(p, "three_class", N_BOOT, 0)


def test_collapsed_paired_interval_is_widened_to_the_separate_intervals():
    # Both pipelines separate every film (AUC 1 in every resample), yet score differently: a
    # finite sample cannot certify that they are equal, so no "[0.000, 0.000]".
    y, g, _ = films(30)
    p = {"ref": scored(y, g, y + 0.01 * np.arange(len(y))), "other": scored(y, g, 2.0 * y)}
    d = E.auc_deltas(p, "ref", N_BOOT, 0)["other"]
    assert d["delta_auc"] == 0.0 and d["delta_auc_lo"] < 0 < d["delta_auc_hi"]


def test_table7_with_a_reference_adds_auc_and_the_paired_delta(three_pipelines):
    pipes = {n: (three_pipelines[n], 0.5) for n in ("two_class", "three_class")}
    plain = E.table7(pipes, N_BOOT, 0)
    assert not set(E.DELTA_COLUMNS) & set(plain.columns)  # unchanged without a reference
    out = E.table7(pipes, N_BOOT, 0, reference="three_class")
    assert out["is_reference"].tolist() == [False, True]
    two, three = out.iloc[0], out.iloc[1]
    assert two["delta_auc"] == pytest.approx(two["auc"] - three["auc"])  # 2-class minus 3-class
    assert two["delta_auc_lo"] <= two["delta_auc"] <= two["delta_auc_hi"]
    assert three["delta_auc"] == 0 and np.isnan(three["delta_auc_lo"])
    shown = E.format_ci(out, rates=("auc", "delta_auc"))
    assert shown.loc[1, "delta_auc"] == "0.000" and shown.loc[0, "delta_auc"].count("[") == 1
