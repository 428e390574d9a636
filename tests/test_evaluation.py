"""scxnn.evaluation: the thesis' evaluation tables from a scored logits table. Synthetic tables
built here (fast, no models); the smoke run's real table when it is present."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from scxnn import evaluation as E
from scxnn import metrics as M
from scxnn.ensemble import (
    DefiniteNormalSVM,
    abnormal_labels,
    choose_thresholds,
    logit_columns,
)

FINDINGS = {"ptx": "critical", "eff": "urgent", "nod": "urgent", "atel": "non_urgent", "cardio": "cardiomegaly"}
UNSEEN = ("pneumonia", "fracture")
SITES = [  # site, split, patients
    ("internal", "train", 6), ("internal", "val", 14), ("internal", "test", 14),
    ("temporal", "test", 10), ("external1", "test", 8), ("external2", "test", 8),
    ("hospital_b", "test", 4), ("val_only_site", "val", 3),
]
N_BOOT = 60


def make_table(num_classes: int = 3, seed: int = 0) -> pd.DataFrame:
    """A logits table in the step-03 layout: patients with 1-2 films, labels (some unknown),
    per-finding logits that mostly point the right way, and a ``score`` higher for abnormal films."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, split, n_patients in SITES:
        for p in range(n_patients):
            for i in range(rng.integers(1, 3)):
                labels = dict.fromkeys([*FINDINGS, *UNSEEN], 0)
                kind = rng.random()
                if kind < 0.15:
                    labels[str(rng.choice(UNSEEN))] = 1
                elif kind > 0.45:
                    for f in rng.choice(list(FINDINGS), size=rng.integers(1, 3), replace=False):
                        labels[str(f)] = 1
                rows.append({"image_id": f"{site}-{split}-{p}-{i}", "patient_id": f"{site}-{p}", "site": site,
                             "split": split, "label_type": "hard", **labels})
    df = pd.DataFrame(rows)
    for c in [*FINDINGS, *UNSEEN]:
        df[c] = df[c].astype("Int8")
    # Two test films with an unknown label: one with nothing else marked (status unknown), one with
    # another finding present (abnormal whatever the unknown one is).
    df.loc[df.index[df["split"].eq("test")][:2], "nod"] = pd.NA
    first = df.index[df["split"].eq("test")][0]
    df.loc[first, [c for c in [*FINDINGS, *UNSEEN] if c != "nod"]] = 0
    df["abnormal"] = abnormal_labels(df, list(FINDINGS), UNSEEN)
    names = ("normal", "target", "others")[:num_classes]
    for f in FINDINGS:
        pos = df[f].fillna(0).to_numpy() == 1
        other = (df["abnormal"].to_numpy() == 1) & ~pos
        mean = {"normal": 1.5 * (~pos & ~other), "target": 2.0 * pos, "others": 1.5 * other}
        if num_classes == 2:
            mean["target"] = mean["target"] + 1.5 * other
        for n in names:
            df[f"{f}__{n}"] = mean[n] + rng.normal(0, 0.8, len(df))
        df[f"{f}__pred"] = df[[f"{f}__{n}" for n in names]].to_numpy().argmax(axis=1)
    df["score"] = 1.5 * df["abnormal"].fillna(0).to_numpy(float) + rng.normal(0, 1, len(df))
    return df


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


def _thesis() -> dict:
    """The slice of ../shared/thesis/tables.yaml these tables read, inline so the test needs no file."""
    return {
        "table2_normal_vs_abnormal": {
            "internal": {"ai_normal": {"ref_normal": 109, "ref_abnormal": 4}, "ai_abnormal": {"ref_normal": 53, "ref_abnormal": 1325}},
            "text_reports": {"internal": {"sensitivity": 0.99}},
        },
        "table3_risk_levels": {"internal": {"normal": {"critical": 0, "urgent": 3, "non_urgent": 1, "cardiomegaly": 0}}},
        "table7_two_vs_three_class": {
            "two_class": {"ai_normal": {"ref_normal": 78, "ref_abnormal": 381}, "ai_abnormal": {"ref_normal": 84, "ref_abnormal": 978}},
        },
        "table8_two_vs_three_class_risk": {"two_class": {
            "normal": {"critical": 43, "urgent": 218, "non_urgent": 98, "cardiomegaly": 22},
            "target": {"critical": 64, "urgent": 728, "non_urgent": 115, "cardiomegaly": 41}}},
        "table9_unseen_findings": {"ptx": {"pneumonia": [0.103, 0.103, 0.793]}},
    }


# --------------------------------------------------------------------------- sets and scores


def test_evaluation_sets_are_test_rows_only_one_per_site_in_order(table):
    sets = E.evaluation_sets(table)
    assert list(sets) == ["internal", "temporal", "external1", "external2", "hospital_b"]
    stacked = np.vstack(list(sets.values()))
    assert (stacked.sum(axis=0) <= 1).all()  # disjoint
    # ... and cover the test split's films whose status is known; known_only=False covers them all.
    assert (stacked.any(axis=0) == ((table["split"] == "test") & table["abnormal"].notna()).to_numpy()).all()
    every = np.vstack(list(E.evaluation_sets(table, known_only=False).values()))
    assert (every.any(axis=0) == (table["split"] == "test").to_numpy()).all()
    for name, mask in sets.items():
        assert set(table.loc[mask, "split"]) == {"test"} and set(table.loc[mask, "site"]) == {name}


def test_table_scores_runs_the_svm_on_the_logit_columns(table):
    from scxnn.ensemble import table_scores

    cols = logit_columns(list(FINDINGS), 3)
    val = table[table["split"] == "val"]
    svm = DefiniteNormalSVM().fit(val[cols].to_numpy(float), val["abnormal"])
    # the column order of the table must not matter: the SVM's columns are named, not positional
    shuffled = table[list(reversed(table.columns))]
    np.testing.assert_allclose(table_scores(svm, shuffled, list(FINDINGS), 3), svm.decision_function(table[cols].to_numpy(float)))
    with pytest.raises(KeyError, match="table_scores"):
        E.table2(table.drop(columns="score"), 0.0, 10, 0)


# --------------------------------------------------------------------------- Table 2 / 7


def test_table2_by_hand_ignores_train_and_val():
    # 7 internal test films: abnormal = 1 1 1 0 0 0 0, predicted abnormal (score >= 0) = 1 1 0 0 0 1 0.
    t = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(9)], "patient_id": ["a", "a", "b", "c", "d", "e", "f", "g", "h"],
        "site": "internal", "split": ["test"] * 7 + ["train", "val"],
        "abnormal": [1, 1, 1, 0, 0, 0, 0, 1, 1], "score": [1.0, 2.0, -1.0, -2.0, -0.5, 0.5, -3.0, -9.0, -9.0],
    })
    row = E.table2(t, threshold=0.0, n_boot=N_BOOT, seed=0).iloc[0]
    assert (row["set"], row["images"], row["patients"]) == ("internal", 7, 6)
    assert (row["tp"], row["fn"], row["fp"], row["tn"]) == (2, 1, 1, 3)
    assert row["sensitivity"] == pytest.approx(2 / 3) and row["specificity"] == pytest.approx(3 / 4)
    assert row["npv"] == pytest.approx(3 / 4) and row["ppv"] == pytest.approx(2 / 3)
    assert row["auto_normal"] == pytest.approx(4 / 7)
    # Nothing abnormal: sensitivity is undefined (NaN), never 0 or 1.
    none = E.table2(t[t["abnormal"] == 0], threshold=0.0, n_boot=N_BOOT, seed=0).iloc[0]
    assert np.isnan(none["sensitivity"]) and np.isnan(none["sensitivity_lo"])


def test_table2_counts_films_of_unknown_status_outside_every_rate():
    # Film u1's source says neither normal nor abnormal: scored, reported, in no rate's denominator.
    t = pd.DataFrame({
        "image_id": ["a1", "a2", "n1", "n2", "u1", "u2"], "patient_id": ["a", "b", "c", "d", "e", "f"],
        "site": "internal", "split": "test", "abnormal": pd.array([1, 1, 0, 0, pd.NA, pd.NA], dtype="Int8"),
        "score": [1.0, 2.0, -1.0, -2.0, -5.0, 3.0],
    })
    row = E.table2(t, threshold=0.0, n_boot=N_BOOT, seed=0).iloc[0]
    assert (row["images"], row["tp"], row["tn"], row["unknown_films"], row["unknown_called_normal"]) == (4, 2, 2, 2, 1)
    assert row["auto_normal"] == pytest.approx(2 / 4)
    # A set with no film of known status still shows its unknown films.
    only = E.table2(t[t["abnormal"].isna()], threshold=0.0, n_boot=N_BOOT, seed=0).iloc[0]
    assert (only["images"], only["unknown_films"], only["unknown_called_normal"]) == (0, 2, 1)


def test_table2_counts_sum_intervals_bracket_and_repeat(table):
    out = E.table2(table, threshold=0.7, n_boot=N_BOOT, seed=3)
    sizes = {name: int(m.sum()) for name, m in E.evaluation_sets(table).items()}
    assert dict(zip(out["set"], out["images"])) == sizes
    assert (out[["tn", "fn", "fp", "tp"]].sum(axis=1) == out["images"]).all()
    for r in E.RATES:
        ok = out[r].notna()
        assert (out.loc[ok, f"{r}_lo"] <= out.loc[ok, r] + 1e-12).all()
        assert (out.loc[ok, r] <= out.loc[ok, f"{r}_hi"] + 1e-12).all()
    pd.testing.assert_frame_equal(out, E.table2(table, threshold=0.7, n_boot=N_BOOT, seed=3))
    assert not any(c.startswith("thesis_") for c in out)


def test_thesis_columns_reproduce_the_thesis_numbers(table):
    out = E.table2(table, threshold=0.7, n_boot=N_BOOT, seed=0, thesis=_thesis()).set_index("set")
    internal = out.loc["internal"]
    assert (internal["thesis_tn"], internal["thesis_fn"], internal["thesis_fp"], internal["thesis_tp"]) == (109, 4, 53, 1325)
    assert internal["thesis_sensitivity"] == pytest.approx(1325 / 1329)
    assert internal["thesis_specificity"] == pytest.approx(109 / 162)
    assert internal["thesis_auto_normal"] == pytest.approx(113 / 1491)
    assert out.loc[["temporal", "hospital_b"], "thesis_sensitivity"].isna().all()  # not in the thesis


@pytest.mark.realdata
def test_real_thesis_tables_fill_every_site():
    from scxnn.thesis import ThesisTablesWarning, load_tables

    with warnings.catch_warnings():  # the transcription's "preprocessing" section has a known YAML slip
        warnings.simplefilter("ignore", ThesisTablesWarning)
        thesis = load_tables(require_shared())
    ref = E.thesis_confusion(thesis["table2_normal_vs_abnormal"]["external2"])
    assert ref["thesis_sensitivity"] == pytest.approx(628 / 645) and ref["thesis_npv"] == pytest.approx(47 / 64)
    t9 = E.table9(make_table(), ["ptx"], ["pneumonia"], thesis={"table9_unseen_findings": thesis["table9_unseen_findings"]})
    assert t9["thesis_pneumonia_others"].isna().all()  # "ptx" is not a thesis model name


def test_missing_thesis_sections_mean_no_thesis_columns(table):
    for out in (E.table2(table, 0.0, N_BOOT, 0, thesis={}), E.table3(table, FINDINGS, thesis={}),
                E.table9(table, FINDINGS, UNSEEN, thesis={"table9_unseen_findings": "garbled"})):
        assert not any(c.startswith("thesis_") for c in out)


def test_table7_one_row_per_pipeline_on_the_internal_test_set(table):
    two = make_table(num_classes=2, seed=1)
    out = E.table7({"two_class": (two, 0.5), "three_class": (table, 0.5)}, N_BOOT, 0, thesis=_thesis())
    assert list(out["pipeline"]) == ["two_class", "three_class"] and set(out["set"]) == {"internal"}
    assert out.loc[0, "images"] == int(E.evaluation_sets(two)["internal"].sum())
    assert out.loc[0, "thesis_sensitivity"] == pytest.approx(978 / 1359)
    assert np.isnan(out.loc[1, "thesis_sensitivity"])  # three_class missing from the inline thesis


# --------------------------------------------------------------------------- Table 3 / 8


def _positive_pairs(table, set_name, group=None):
    sub = table[E.evaluation_sets(table)[set_name]]
    return sum(int((sub[f].fillna(0) == 1).sum()) for f, r in FINDINGS.items() if group in (None, r))


def test_risk_table_counts_every_positive_image_finding_pair(table):
    out = E.table3(table, FINDINGS, thesis=_thesis())
    assert list(out["set"].unique()) == ["internal", "temporal"]
    assert list(out["decision"].unique()) == ["normal", "target", "others"]
    for name, part in out.groupby("set"):
        assert part["total"].sum() == _positive_pairs(table, name)
        for g in ("critical", "urgent", "non_urgent", "cardiomegaly"):
            assert part[g].sum() == _positive_pairs(table, name, g)
        assert (part[["critical", "urgent", "non_urgent", "cardiomegaly"]].sum(axis=1) == part["total"]).all()
    # By hand: the "normal" cell of the urgent group = urgent positives whose own model said normal.
    sub = table[E.evaluation_sets(table)["internal"]]
    urgent_missed = sum(int(((sub[f].fillna(0) == 1) & (sub[f"{f}__pred"] == 0)).sum()) for f in ("eff", "nod"))
    assert out.iloc[0]["urgent"] == urgent_missed
    # Thesis cells where the thesis has them, NaN elsewhere.
    assert out.iloc[0]["thesis_urgent"] == 3 and out.iloc[0]["thesis_total"] == 4
    assert out.iloc[1:][["thesis_critical", "thesis_total"]].isna().all().all()


def test_two_class_models_have_no_others_row_or_column():
    two = make_table(num_classes=2, seed=1)
    out = E.risk_table(two, FINDINGS, sets=("internal",))
    assert list(out["decision"]) == ["normal", "target"]
    assert out["total"].sum() == _positive_pairs(two, "internal")
    t9 = E.table9(two, FINDINGS, UNSEEN)
    assert not any(c.endswith("_others") for c in t9)


def test_table8_and_missed_share(table):
    two = make_table(num_classes=2, seed=1)
    out = E.table8({"two_class": (two, 0.0), "three_class": table}, FINDINGS, thesis=_thesis())
    assert list(out.columns[:3]) == ["pipeline", "set", "decision"]
    assert out.groupby("pipeline", sort=False).size().to_dict() == {"two_class": 2, "three_class": 3}
    assert out.iloc[0]["thesis_critical"] == 43
    share = E.missed_share(out)
    assert list(share["pipeline"]) == ["two_class", "three_class"]
    for _, row in share.iterrows():
        part = out[out["pipeline"] == row["pipeline"]]
        assert row["total"] == pytest.approx(part.iloc[0]["total"] / part["total"].sum())
    assert share.iloc[0]["thesis_critical"] == pytest.approx(43 / 107)
    assert share.iloc[1][["thesis_critical", "thesis_total"]].isna().all()  # not in the inline thesis
    # A thesis set with a decision row missing gives no share rather than a wrong one.
    partial = E.table3(table, FINDINGS, thesis=_thesis())
    assert E.missed_share(partial)[["thesis_urgent"]].isna().all().all()


# --------------------------------------------------------------------------- Table 9


def test_table9_shares_sum_to_one_over_the_unseen_films(table):
    out = E.table9(table, FINDINGS, UNSEEN, thesis=_thesis())
    assert list(out["finding"]) == list(FINDINGS)
    test = table[table["split"] == "test"]
    for u in UNSEEN:
        assert (out[f"{u}_n"] == int((test[u] == 1).sum())).all() and out[f"{u}_n"].iloc[0] > 0
        shares = out[[f"{u}_normal", f"{u}_target", f"{u}_others"]].sum(axis=1)
        np.testing.assert_allclose(shares, 1.0)
    pos = test["pneumonia"] == 1
    assert out.iloc[0]["pneumonia_normal"] == pytest.approx((test.loc[pos, "ptx__pred"] == 0).mean())
    assert out.iloc[0]["thesis_pneumonia_others"] == pytest.approx(0.793)
    assert out[["thesis_fracture_normal"]].isna().all().all()


# --------------------------------------------------------------------------- AUC


def test_auc_per_finding_falls_back_and_brackets(table):
    t = table.copy()
    internal_test = (t["split"] == "test") & (t["site"] == "internal")
    t.loc[internal_test, "cardio"] = 0  # no internal positive: use all test rows
    t.loc[t["split"] == "test", "atel"] = 0  # no positive anywhere: NaN, not 0.5
    out = E.auc_per_finding(t, FINDINGS, N_BOOT, 0).set_index("finding")
    assert out.loc["cardio", "scope"] == "all_test" and out.loc["ptx", "scope"] == "internal"
    assert out.loc["ptx", "n_pos"] + out.loc["ptx", "n_neg"] == int(internal_test.sum())
    assert out.loc["nod", "n_pos"] + out.loc["nod", "n_neg"] == int((internal_test & t["nod"].notna()).sum())
    assert np.isnan(out.loc["atel", "auc"]) and np.isnan(out.loc["atel", "auc_lo"])
    ok = out["auc"].notna()
    assert (out.loc[ok, "auc_lo"] <= out.loc[ok, "auc"]).all() and (out.loc[ok, "auc"] <= out.loc[ok, "auc_hi"]).all()
    assert (out.loc[ok, "auc"] > 0.6).all()  # the synthetic logits point the right way
    # Perfect separation -> AUC 1.
    t.loc[:, "ptx__target"] = 10.0 * t["ptx"].fillna(0).astype(float)
    assert E.auc_per_finding(t, ["ptx"], N_BOOT, 0)["auc"].iloc[0] == 1.0


def test_svm_auc_per_set(table):
    out = E.svm_auc(table, N_BOOT, 0)
    assert list(out["set"]) == list(E.evaluation_sets(table))
    ok = out["auc"].notna()
    assert ok.sum() >= 4 and (out.loc[ok, "auc"].between(0, 1)).all()
    assert (out.loc[ok, "auc_lo"] <= out.loc[ok, "auc"]).all() and (out.loc[ok, "auc"] <= out.loc[ok, "auc_hi"]).all()
    one_class = out[(out["n_pos"] == 0) | (out["n_neg"] == 0)]
    assert one_class["auc"].isna().all()  # undefined, not 0.5


# --------------------------------------------------------------------------- missed films


def test_missed_cases_are_exactly_the_abnormal_films_under_the_threshold(table):
    thr = 0.8
    out = E.missed_cases(table, thr, FINDINGS, UNSEEN)
    test = table[table["split"] == "test"]
    expected = set(test.loc[(test["abnormal"] == 1) & (test["score"] < thr), "image_id"])
    assert set(out["image_id"]) == expected and len(out) == len(expected)
    ranks = out["worst_risk"].map(E.RISK_RANK.index)
    assert ranks.is_monotonic_increasing
    for _, row in out.iterrows():
        present = row["findings"].split(", ")
        groups = [FINDINGS[f] for f in present if f in FINDINGS]
        assert row["worst_risk"] == (min(groups, key=E.RISK_RANK.index) if groups else "unseen")
        assert row["score"] < thr


def test_worst_risk_by_hand():
    t = pd.DataFrame({"abnormal": [0, 1, 1, 1, 1], "ptx": [0, 0, 1, 0, 0], "cardio": [0, 1, 1, 0, 0],
                      "eff": [0, 0, 0, 0, 0], "nod": [0, 0, 0, 0, pd.NA], "atel": 0, "pneumonia": [0, 0, 0, 1, 0]})
    assert list(E.worst_risk(t, FINDINGS, UNSEEN)) == ["", "cardiomegaly", "critical", "unseen", "unknown"]


def test_missed_by_risk_adds_up(table):
    thr = 0.8
    out = E.missed_by_risk(table, thr, FINDINGS, UNSEEN)
    cases = E.missed_cases(table, thr, FINDINGS, UNSEEN)
    for name, part in out.groupby("set"):
        groups, total = part[part["risk"] != "all"], part[part["risk"] == "all"].iloc[0]
        assert groups["abnormal"].sum() == total["abnormal"] == int(table.loc[E.evaluation_sets(table)[name], "abnormal"].sum())
        assert groups["missed"].sum() == total["missed"] == int((cases["set"] == name).sum())
    empty = out[out["abnormal"] == 0]
    assert empty["miss_rate"].isna().all()


# --------------------------------------------------------------------------- yield curve, calibration


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_threshold_is_choose_thresholds_point(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.normal(y, 1.0), 1)  # ties on purpose
    for target in (0.8, 0.9, 0.95, 1.0):
        assert E.point_threshold(s, y, target) == choose_thresholds(s, y, np.arange(80), target, n_boot=1, seed=0).point


def test_yield_curve_keeps_validation_sensitivity_and_yield_falls(table):
    val = table[table["split"] == "val"][["score", "abnormal", "patient_id"]]
    targets = np.linspace(0.80, 1.0, 11)
    out = E.yield_curve(table, val, targets)
    assert set(out["set"]) == {"validation", *E.evaluation_sets(table)}
    assert set(out["rule"]) == {"point", "certified"}
    v = out[out["set"] == "validation"]
    assert (v["sensitivity"] >= v["target"] - 1e-12).all()
    for _, part in out.groupby(["set", "rule"]):
        assert part["threshold"].is_monotonic_decreasing
        assert part["auto_normal"].is_monotonic_decreasing
    # What the validation set certifies is never more than its point estimate.
    both = out[out["set"] == "validation"].pivot_table(index="target", columns="rule", values="threshold")
    assert (both["certified"].dropna() <= both["point"].loc[both["certified"].dropna().index]).all()
    # The threshold is chosen on validation alone: changing test scores leaves it as it was.
    moved = table.assign(score=np.where(table["split"] == "test", table["score"] + 5, table["score"]))
    np.testing.assert_array_equal(E.yield_curve(moved, val, targets)["threshold"], out["threshold"])


@pytest.mark.parametrize("target", [0.9, 0.99])
def test_threshold_stability_spans_the_runs_own_point(table, target):
    val = table[table["split"] == "val"][["score", "abnormal", "patient_id"]]
    out = E.threshold_stability(table, val, target, n_boot=200, seed=0)
    assert list(out["set"]) == ["validation", *E.evaluation_sets(table)]
    t0 = E.point_threshold(val["score"].to_numpy(), val["abnormal"].to_numpy(), target)
    assert (out["threshold"] == t0).all()
    assert (out["threshold_range_low"] <= t0).all() and (t0 <= out["threshold_range_high"]).all()
    v = out[out["set"] == "validation"].iloc[0]
    assert v["sensitivity"] >= target
    for k in ("sensitivity", "auto_normal"):
        lo, hi = f"{k}_range_low", f"{k}_range_high"
        assert (out[lo] <= out[hi]).all() and out[[k, lo, hi]].stack().between(0, 1).all()
    # A range, not a point: re-choosing on resampled validation films moves what is called normal.
    assert (out["auto_normal_range_high"] - out["auto_normal_range_low"]).max() > 0
    # Not named like a confidence interval: the tables' "_lo/_hi must have width" rule is for CIs.
    assert not [c for c in out.columns if c.endswith(("_lo", "_hi"))]
    # Only validation films choose it: test scores may move, the thresholds may not.
    moved = table.assign(score=np.where(table["split"] == "test", table["score"] + 5, table["score"]))
    again = E.threshold_stability(moved, val, target, n_boot=200, seed=0)
    np.testing.assert_array_equal(again[["threshold", "threshold_range_low", "threshold_range_high"]], out[["threshold", "threshold_range_low", "threshold_range_high"]])


def test_threshold_stability_survives_resamples_with_one_class():
    # Three validation patients, one of them the only normal one: many resamples hold no normal film
    # (the smoke profile's validation set is this small).
    t = make_table()
    val = pd.DataFrame({"score": [0.1, 0.9, 0.8], "abnormal": [0, 1, 1], "patient_id": ["a", "b", "c"]})
    out = E.threshold_stability(t, val, 0.99, n_boot=50, seed=0)
    assert np.isfinite(out[["threshold_range_low", "threshold_range_high"]].to_numpy()).all()


def test_calibration_probabilities_and_brier(table):
    val = table[table["split"] == "val"]
    bins, brier = E.calibration(val, table, n_bins=5)
    assert bins["mean_predicted"].between(0, 1).all() and bins["observed"].between(0, 1).all()
    assert ((bins["bin_lo"] <= bins["mean_predicted"]) & (bins["mean_predicted"] <= bins["bin_hi"])).all()
    sizes = {name: int(m.sum()) for name, m in E.evaluation_sets(table).items()}
    assert bins.groupby("set")["count"].sum().to_dict() == sizes
    assert brier["brier"].between(0, 1).all() and list(brier["set"]) == list(sizes)
    # Perfectly separated validation films still give a finite, increasing map.
    sep = pd.DataFrame({"score": [-2.0, -1.0, 1.0, 2.0], "abnormal": [0, 0, 1, 1]})
    p = E.platt(sep).predict_proba(np.array([[-2.0], [0.0], [2.0]]))[:, 1]
    assert np.all(np.diff(p) > 0) and 0 < p[0] < p[-1] < 1
    with pytest.raises(ValueError, match="normal and abnormal"):
        E.platt(sep[sep["abnormal"] == 1])


# --------------------------------------------------------------------------- display, edge cases


def test_format_ci_merges_bounds_and_shows_nan_as_na():
    df = pd.DataFrame({"set": ["a", "b"], "sensitivity": [0.97, np.nan], "sensitivity_lo": [0.93, np.nan],
                       "sensitivity_hi": [1.0, np.nan], "thesis_sensitivity": [0.99, np.nan]})
    out = E.format_ci(df, ["sensitivity", "thesis_sensitivity", "absent"])
    assert list(out.columns) == ["set", "sensitivity", "thesis_sensitivity"]
    assert list(out["sensitivity"]) == ["0.970 [0.930, 1.000]", "n/a"]
    assert list(out["thesis_sensitivity"]) == ["0.990", "n/a"]
    assert df["sensitivity"].dtype == float  # the numeric frame is untouched


def test_format_ci_rounds_bounds_outward():
    """A lower bound of 0.9996 must not print as 1.000: bounds round away from the estimate."""
    df = pd.DataFrame({"sensitivity": [1.0, 0.9301], "sensitivity_lo": [0.99963, 0.8877], "sensitivity_hi": [1.0, 0.93011]})
    assert list(E.format_ci(df, ["sensitivity"])["sensitivity"]) == ["1.000 [0.999, 1.000]", "0.930 [0.887, 0.931]"]


def test_auc_at_perfect_separation_has_an_exact_lower_bound():
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    row = M.auc_with_ci(y, np.r_[np.full(30, 2.0), np.full(30, -2.0)] + np.arange(60) * 1e-3, np.arange(60), 200, 0, 0.95)
    assert row["auc"] == 1.0 and row["auc_hi"] == 1.0 and 0.6 < row["auc_lo"] < 0.95
    flipped = M.auc_with_ci(y, -np.r_[np.full(30, 2.0), np.full(30, -2.0)], np.arange(60), 200, 0, 0.95)
    assert flipped["auc"] == 0.0 and flipped["auc_lo"] == 0.0 and flipped["auc_hi"] == pytest.approx(1 - row["auc_lo"])


def test_achieved_sensitivity_beside_the_target(table):
    t2 = E.with_target(E.table2(table, 0.0, N_BOOT, 0), 0.9)
    verdict = {r.set: r.meets_target for r in t2.itertuples()}
    for r in t2.itertuples():
        expected = "certified" if r.sensitivity_lo >= 0.9 else ("point estimate only" if r.sensitivity >= 0.9 else "below target")
        assert verdict[r.set] == expected
    assert (t2["target"] == 0.9).all()


def test_batch_shift_rule_alarms_on_shifted_sites_not_on_the_internal_one(table):
    from scxnn.ood import OODModel

    rng = np.random.default_rng(0)
    shifted = table["site"].isin(["external1", "external2"]).to_numpy()
    scores = np.where(shifted, rng.normal(3.0, 1.0, len(table)), rng.normal(0.0, 1.0, len(table)))
    gate = OODModel(mean=np.zeros(2), components=np.eye(2)[:1], location=np.zeros(1), precision=np.eye(1), center=np.zeros(2),
                    scale=np.ones(2), threshold=2.33, quantile=0.99, n_fit=100, n_val=100)
    out = E.batch_shift_rates(table.assign(ood_score=scores), gate, (5, 10), max_share=0.1, alpha=0.01, draws=100)
    by = out.set_index(["set", "batch_size"])["shifted"]
    assert by[("internal", 10)] <= 0.05 and by[("external1", 10)] >= 0.5
    whole = out.groupby("set").tail(1).set_index("set")
    assert whole.loc["external1", "shifted"] == 1.0 and whole.loc["internal", "shifted"] == 0.0
    with pytest.raises(KeyError, match="ood_score"):
        E.batch_shift_rates(table, gate, (5,), 0.1, 0.01)


def test_no_test_rows_gives_empty_tables(table):
    no_test = table[table["split"] != "test"]
    assert E.evaluation_sets(no_test) == {}
    assert E.table2(no_test, 0.0, N_BOOT, 0).empty and E.table3(no_test, FINDINGS).empty
    assert E.missed_cases(no_test, 0.0, FINDINGS, UNSEEN).empty


# --------------------------------------------------------------------------- the smoke run


@pytest.mark.pipeline
def test_smoke_run_tables(smoke_study):
    """The smoke run's real 124-film table. The SVM is refitted on its validation rows instead of
    loading svm.skops: importing skops alone takes seconds, and loading is tested in test_ensemble."""
    from scxnn.config import load_resolved

    step3 = smoke_study / "03_svm_ensemble"

    cfg = load_resolved(step3 / "config.resolved.yaml")
    raw = pd.read_parquet(step3 / "logits.parquet")
    cols, val = logit_columns(list(cfg.findings), cfg.model.num_classes), raw[raw["split"] == "val"]
    svm = DefiniteNormalSVM().fit(val[cols].to_numpy(float), val["abnormal"])
    from scxnn.ensemble import table_scores

    t = raw.assign(score=table_scores(svm, raw, list(cfg.findings), cfg.model.num_classes))
    thr = E.point_threshold(t.loc[t["split"] == "val", "score"], val["abnormal"], cfg.ensemble.sensitivity_target)
    t2 = E.table2(t, thr, N_BOOT, cfg.seed, cfg.evaluate.ci)
    assert (t2[["tn", "fn", "fp", "tp"]].sum(axis=1) == t2["images"]).all()
    assert t2["images"].sum() == int((t["split"] == "test").sum())
    t3 = E.table3(t, cfg.findings)
    assert t3["total"].sum() == sum(int((t.loc[E.evaluation_sets(t)[s], f] == 1).sum())
                                    for s in t3["set"].unique() for f in cfg.findings)
    t9 = E.table9(t, cfg.findings, cfg.unseen_findings)
    assert len(t9) == len(cfg.findings)
    assert set(E.missed_cases(t, thr, cfg.findings, cfg.unseen_findings)["image_id"]) == set(
        t.loc[(t["split"] == "test") & (t["abnormal"] == 1) & (t["score"] < thr), "image_id"])


def test_module_is_pure():
    src = Path(E.__file__).read_text()
    assert "import torch" not in src and "matplotlib" not in src and "to_csv" not in src


def test_published_comparison_two_points_with_cis_and_the_publication(table):
    pub = {"Paper 2018": {"accuracy": 0.9, "sensitivity": 0.92, "specificity": 0.88, "auc": 0.95}}
    out = E.published_comparison(table, -0.5, pub, N_BOOT, 0)
    ours = out[out.source == "ours"]
    sets = list(E.evaluation_sets(table))
    assert list(ours.set.unique()) == sets and len(ours) == 2 * len(sets)
    internal = ours[ours.set == "internal"].set_index("operating_point")
    # The lower definite-normal threshold flags more films abnormal than the boundary at 0.
    assert internal.loc["definite_normal", "sensitivity"] >= internal.loc["svm_boundary", "sensitivity"]
    assert internal.loc["definite_normal", "auto_normal"] <= internal.loc["svm_boundary", "auto_normal"]
    assert internal.loc["definite_normal", "auc"] == internal.loc["svm_boundary", "auc"]
    sub = table[E.evaluation_sets(table)["internal"]]
    pred = sub["score"].to_numpy() >= 0
    assert internal.loc["svm_boundary", "accuracy"] == pytest.approx((pred == sub["abnormal"].to_numpy(bool)).mean())
    for k in ("auc", "accuracy", "sensitivity", "specificity", "auto_normal"):
        r = internal.loc["svm_boundary"]
        assert r[f"{k}_lo"] <= r[k] <= r[f"{k}_hi"], k
    paper = out[out.source == "Paper 2018"].iloc[0]
    assert paper.auc == 0.95 and paper.accuracy == 0.9 and pd.isna(paper.set)


def test_auc_whose_bootstrap_collapses_still_gets_an_interval():
    """Tied scores (an untrained model) give AUC 0.5 in every resample: the interval must still
    say how little 1 positive and 4 negative patients tell (the smoke run's nodule row)."""
    y = np.r_[1, 0, 0, 0, 0]
    row = M.auc_with_ci(y, np.full(5, 0.3), np.arange(5), 200, 0, 0.95)
    assert row["auc"] == 0.5 and row["auc_lo"] < 0.1 and row["auc_hi"] > 0.9


@pytest.mark.parametrize("n, kept", [(0, 6), (2, 2), (6, 6), (10, 6)])
def test_step03_scores_a_seeded_sample_of_training_films_and_every_other_film(n, kept):
    from scxnn.inference import sample_training_films

    df = pd.DataFrame({"image_id": [f"t{i}" for i in range(6)] + ["v0", "s0", "s1"],
                       "split": ["train"] * 6 + ["val", "test", "test"]})
    out = sample_training_films(df, n, seed=3)
    assert (out["split"] == "train").sum() == kept
    assert list(out.loc[out["split"] != "train", "image_id"]) == ["v0", "s0", "s1"]
    assert out.equals(sample_training_films(df, n, seed=3))


# --------------------------------------------------------------------------- step 03's record of the films a run has seen
# (scxnn.trained_run reads it: test_trained_run.py)


def test_seen_films_record_lists_every_training_and_validation_film(smoke_cache, tmp_path):
    from scxnn.config import load_config
    from scxnn.data import MANIFEST_NAME, read_manifest
    from scxnn.ensemble import write_seen_films
    from scxnn.pixels import cache_dir

    cfg = load_config("smoke", {"paths.data": str(smoke_cache / "data"), "paths.runs": str(tmp_path)})
    path = write_seen_films(cfg, tmp_path)
    m = read_manifest(cache_dir(cfg) / MANIFEST_NAME, list(cfg.findings), list(cfg.unseen_findings))
    seen = pd.read_parquet(path)
    want = m[m["split"].isin(["train", "val"])]
    assert len(seen) == len(want) > 0 and set(seen["source_sha256"]) == set(want["source_sha256"].astype(str))
    assert set(seen.columns) == {"patient_id", "split", "source_sha256"}  # hashed ids, no paths or labels


@pytest.mark.parametrize("args, kwargs, shown", [
    ((0.9712, 0.93, 1.0), {"digits": 2}, "0.97 [0.93, 1.00]"),
    # a lower bound of 0.9996 must never print as 1.000: bounds round outward, the value to nearest
    ((0.99995, 0.9996, 1.0), {}, "1.000 [0.999, 1.000]"),
    ((0.081, 0.05, 0.1), {"digits": 2, "percent": True}, "8% [5%, 10%]"),
    ((0.0081, 0.00449, 0.0101), {"percent": True}, "0.8% [0.4%, 1.1%]"),
    ((float("nan"),), {}, "n/a"),
    ((float("nan"), 0.1, 0.2), {}, "n/a"),
    ((0.5, float("nan"), float("nan")), {}, "0.500"),
    ((0.5, None, 0.7), {}, "0.500 [n/a, 0.700]"),
    # a paired difference of two identical scorings: its upper bound of exactly 0 ceils to -0.0
    ((0.0, 0.0, 0.0), {}, "0.000 [0.000, 0.000]"),
], ids=["digits2", "outward", "percent", "percent3", "nan", "nan-value", "no-bounds", "one-bound", "zero-difference"])
def test_fmt_ci_is_the_one_interval_format(args, kwargs, shown):
    from scxnn.metrics import fmt_ci
    assert fmt_ci(*args, **kwargs) == shown
