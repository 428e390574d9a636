"""Paired comparisons of two pipelines on the same films: scxnn.metrics.paired_auc_delta and the
delta columns of scxnn.evaluation (auc_deltas, table7). Synthetic scores only: fast, no data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scxnn import evaluation as E
from scxnn.metrics import paired_auc_delta, patient_bootstrap, roc_auc

N_BOOT = 200


def films(n_patients: int = 40, seed: int = 0, per_patient: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(abnormal, patient ids, shared difficulty): films of a patient share a label, and every film
    has a difficulty that any pipeline's score inherits (the film-to-film variation the pairing removes)."""
    rng = np.random.default_rng(seed)
    y_pat = rng.random(n_patients) < 0.5
    y_pat[:2] = [True, False]  # both classes, whatever the seed
    g = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    y = np.repeat(y_pat, per_patient).astype(int)
    return y, g, rng.normal(0, 1, len(y))


def test_identical_scores_differ_by_exactly_zero():
    y, g, d = films()
    s = y + d
    assert paired_auc_delta(y, s, s.copy(), g, N_BOOT, 0) == (0.0, 0.0, 0.0)


def test_a_pipeline_better_on_the_same_films_has_a_positive_delta_that_excludes_zero():
    y, g, d = films(60)
    a, b = 0.5 * y + d, 2.5 * y + d  # b separates the same films much better
    delta, lo, hi = paired_auc_delta(y, a, b, g, N_BOOT, 0)
    assert delta == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    assert 0 < lo <= delta <= hi
    # the order of the arguments is the sign of the difference
    assert paired_auc_delta(y, b, a, g, N_BOOT, 0) == pytest.approx((-delta, -hi, -lo))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_interval_is_narrower_than_two_independent_ones(seed):
    # Shared film difficulty dominates and each pipeline adds a little noise of its own: the
    # situation of two ablation rows, where the separate AUC intervals overlap although one
    # pipeline is consistently a bit better.
    y, g, d = films(80, seed)
    rng = np.random.default_rng(100 + seed)
    a = y + d + 0.15 * rng.normal(size=len(y))
    b = 1.2 * y + d + 0.15 * rng.normal(size=len(y))
    _, lo, hi = paired_auc_delta(y, a, b, g, N_BOOT, seed)
    ia = patient_bootstrap(g, lambda idx: {"auc": roc_auc(y[idx], a[idx])}, N_BOOT, seed)["auc"]
    ib = patient_bootstrap(g, lambda idx: {"auc": roc_auc(y[idx], b[idx])}, N_BOOT, seed)["auc"]
    independent = np.hypot(ia[1] - ia[0], ib[1] - ib[0])  # the most generous way to combine two separate CIs
    assert hi - lo < 0.5 * independent


def test_fixed_seed_is_deterministic():
    y, g, d = films()
    a, b = y + d, 1.5 * y + d + np.random.default_rng(3).normal(0, 0.5, len(y))
    assert paired_auc_delta(y, a, b, g, N_BOOT, 7) == paired_auc_delta(y, a, b, g, N_BOOT, 7)
    assert paired_auc_delta(y, a, b, g, N_BOOT, 7)[1:] != paired_auc_delta(y, a, b, g, N_BOOT, 8)[1:]


def test_patients_not_films_are_resampled():
    # Five copies of every film under its patient carry no more information than one film. A
    # film-level bootstrap would narrow the interval by about sqrt(5); resampling patients draws
    # the same patients with the same seed, so the interval is the same to the last digit.
    y, g, d = films(30, per_patient=1)
    rng = np.random.default_rng(4)
    a, b = y + d, y + d + rng.normal(0, 0.7, len(y))
    one = paired_auc_delta(y, a, b, g, N_BOOT, 0)
    five = paired_auc_delta(*(np.repeat(v, 5) for v in (y, a, b, g)), N_BOOT, 0)
    assert five == pytest.approx(one, abs=1e-12)


def test_one_class_gives_nan_and_bad_lengths_raise():
    g = np.array(["p0", "p1", "p2"])
    assert all(np.isnan(paired_auc_delta([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], g, 20, 0)))
    with pytest.raises(ValueError, match="one label, two scores"):
        paired_auc_delta([0, 1], [0.1, 0.2], [0.1], ["p0", "p1"], 20, 0)


def test_resamples_with_one_class_are_left_out():
    # Two patients only: a quarter of the resamples per class draw one class; they must not turn
    # into a NaN interval (or a fake 0.5 AUC).
    y, g = np.array([0, 1]), np.array(["n", "a"])
    delta, lo, hi = paired_auc_delta(y, [0.0, 1.0], [1.0, 0.0], g, 50, 0)
    assert (delta, lo, hi) == (-1.0, -1.0, -1.0)


# --------------------------------------------------------------------------- scored tables


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


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_is_scikit_learns_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    y[:2] = [0, 1]
    p = np.round(rng.normal(size=150) + y, seed % 2)  # rounding makes ties across the classes
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5, int), p[:5]))
