"""scxnn.study_tables: each result table computed, captioned and written with its figure, from a
small hand-made scored table of the smoke profile's findings (no models); and the tables a profile
or a run without their inputs leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scxnn import study_tables as ST
from scxnn.config import load_config
from scxnn.ensemble import abnormal_labels, choose_thresholds

matplotlib.use("Agg")

SITES = [("internal", "val", 30), ("internal", "test", 24), ("temporal", "test", 12)]  # site, split, patients
WHERE = "m.csv scored by the run runs/x without retraining."


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def cfg(tmp_path: Path):
    return load_config("smoke", {"paths.reports": str(tmp_path / "reports"), "evaluate.bootstrap": 100})


def scored(cfg, seed: int = 0, unseen: bool = True) -> pd.DataFrame:
    """A scored logits table in the step-03 layout for ``cfg``'s findings: one or two films a
    patient, about half abnormal (one target finding, or an unseen one), logits that mostly point
    the right way and a ``score`` higher for abnormal films."""
    rng = np.random.default_rng(seed)
    findings, others = list(cfg.findings), list(cfg.unseen_findings) if unseen else []
    rows = []
    for site, split, patients in SITES:
        for p in range(patients):
            for i in range(1 + p % 2):
                labels = dict.fromkeys(findings + others, 0)
                k = rng.random()
                if k < 0.4:
                    labels[findings[rng.integers(len(findings))]] = 1
                elif k < 0.5 and others:
                    labels[others[rng.integers(len(others))]] = 1
                rows.append({"image_id": f"{site}-{split}-{p}-{i}", "patient_id": f"{site}-{split}-{p}", "site": site,
                             "split": split, "label_type": "hard", "path": f"images/{site}-{split}-{p}-{i}.png", **labels})
    df = pd.DataFrame(rows)
    for c in findings + others:
        df[c] = df[c].astype("Int8")
    df["abnormal"] = abnormal_labels(df, findings, others)
    ab = df["abnormal"].to_numpy(float)
    for f in findings:
        pos = df[f].to_numpy(int) == 1
        mean = {"normal": 1.5 * (ab == 0), "target": 2.0 * pos, "others": 1.5 * ((ab == 1) & ~pos)}
        for n, m in mean.items():
            df[f"{f}__{n}"] = m + rng.normal(0, 0.8, len(df))
        df[f"{f}__pred"] = df[[f"{f}__{n}" for n in mean]].to_numpy().argmax(axis=1)
    df["score"] = 2.0 * ab + rng.normal(0, 1, len(df))
    return df


def thresholds(cfg, table):
    val = table[table["split"] == "val"]
    return choose_thresholds(val["score"], val["abnormal"], val["patient_id"], cfg.ensemble.sensitivity_target,
                             cfg.evaluate.bootstrap, cfg.seed, cfg.evaluate.ci)


def _meta(cfg, kind: str, name: str) -> dict:
    return json.loads((cfg.path("reports") / kind / cfg.profile / f"{name}.json").read_text())


def _written(cfg) -> set[str]:
    root = cfg.path("reports")
    return {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.json")} if root.is_dir() else set()


# --------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("where", ["", WHERE], ids=["study", "evaluate"])
def test_screening_writes_table2_at_both_thresholds_and_what_validation_certifies(cfg, where):
    table = scored(cfg)
    th = thresholds(cfg, table)
    t2, t2s = ST.screening(cfg, table, th, where=where)
    assert list(t2["set"]) == list(t2s["set"]) == ["internal", "temporal"]
    assert (t2["target"] == th.target).all() and set(t2["meets_target"]) <= {"certified", "point estimate only", "below target", "n/a"}
    test = table[table["split"] == "test"]
    internal = test[test["site"] == "internal"]
    row = t2.iloc[0]
    assert row["images"] == len(internal) and row["tp"] + row["fn"] == int(internal["abnormal"].sum())
    assert row["tn"] + row["fp"] == int((internal["abnormal"] == 0).sum())
    assert row["fn"] == int(((internal["abnormal"] == 1) & (internal["score"] < th.point)).sum())
    assert th.strict <= th.point and (t2s["auto_normal"] <= t2["auto_normal"]).all()  # strict calls fewer films normal
    assert _written(cfg) == {f"tables/smoke/{n}" for n in ("table2_normal_vs_abnormal", "table2_strict_threshold", "thresholds")}
    main = _meta(cfg, "tables", "table2_normal_vs_abnormal")
    assert main["headline"].startswith("internal test: ") and th.describe() in main["caption"]
    # 30 validation patients cannot certify 99%: the caption says why strict calls nothing normal
    assert not th.certified and (t2s["auto_normal"] == 0).all()
    assert f"it takes at least {th.abnormal_needed} without a miss" in _meta(cfg, "tables", "table2_strict_threshold")["caption"]
    for name in ("table2_normal_vs_abnormal", "table2_strict_threshold"):
        assert _meta(cfg, "tables", name)["caption"].endswith(f".{' ' + where if where else ''}"), name


def test_svm_auc_per_set_with_the_roc_figure(cfg):
    table = scored(cfg)
    t2, _ = ST.screening(cfg, table, thresholds(cfg, table), where=WHERE)
    auc = ST.svm_auc(cfg, table, t2, where=WHERE)
    assert list(auc["set"]) == ["internal", "temporal"]
    assert ((auc["auc_lo"] <= auc["auc"]) & (auc["auc"] <= auc["auc_hi"])).all() and (auc["auc"] > 0.6).all()
    meta = _meta(cfg, "tables", "svm_auc")
    assert meta["headline"] == "; ".join(f"{r.set} {r.auc:.3f}" for r in auc.itertuples()) and meta["caption"].endswith(WHERE)
    roc = _meta(cfg, "figures", "roc")
    assert roc["kind"] == "figure" and "stars: the thesis" not in roc["caption"]  # no thesis columns here
    assert (cfg.path("reports") / "figures" / "smoke" / "roc.png").is_file()


def test_missed_films_by_risk_and_one_by_one_without_patient_ids(cfg):
    table = scored(cfg)
    th = thresholds(cfg, table)
    by_risk, cases = ST.missed(cfg, table, th, where=WHERE)
    test = table[table["split"] == "test"]
    want = test[(test["abnormal"] == 1) & (test["score"] < th.point)]
    assert sorted(cases["image_id"]) == sorted(want["image_id"])
    every = by_risk[by_risk["risk"] == "all"].set_index("set")
    assert list(every.index) == ["internal", "temporal"] and every["missed"].sum() == len(want)
    assert (by_risk[by_risk["risk"] != "all"].groupby("set")["missed"].sum() == every["missed"]).all()  # each film once
    written = pd.read_csv(cfg.path("reports") / "tables" / "smoke" / "missed_cases.csv")
    assert "patient_id" not in written and len(written) == len(cases)
    crit = int((cases["worst_risk"] == "critical").sum())
    assert _meta(cfg, "tables", "missed_by_risk")["headline"] == f"{len(cases)} missed abnormal films, {crit} critical"
    assert ST.missed_critical_figure(cfg, cases, table).equals(cases[cases.worst_risk == "critical"])
    assert (cfg.path("reports") / "figures" / "smoke" / "missed_critical.png").is_file()


def test_auc_per_finding_one_row_per_model_with_its_figure(cfg):
    afd = ST.auc_per_finding(cfg, scored(cfg), where=WHERE)
    assert list(afd["finding"]) == list(cfg.findings)
    assert _meta(cfg, "tables", "auc_per_finding")["headline"] == f"median AUC {afd.auc.median():.3f} over {afd.auc.notna().sum()} findings"
    assert _meta(cfg, "figures", "auc_per_finding")["caption"].endswith(WHERE)


@pytest.mark.parametrize("site", ["internal", "nih"])
def test_auc_per_finding_caption_names_the_films_it_scored(cfg, site):
    # `scxnn evaluate` scores every film of a manifest as a test film of the manifest's own site; the
    # caption used to say "internal test" for those too.
    table = scored(cfg)
    afd = ST.auc_per_finding(cfg, table[table["split"] == "test"].assign(site=site), where=WHERE)
    caption = _meta(cfg, "tables", "auc_per_finding")["caption"]
    if site == "nih":
        assert set(afd["scope"]) == {"all_test"}
        assert "target logit), every scored test film (scope all_test);" in caption and "internal" not in caption
    else:  # a finding with no internal positive falls back to every test film, and the caption says so
        assert "internal" in set(afd["scope"])
        assert "target logit), internal test;" in caption
        assert ("all_test" in caption) == ("all_test" in set(afd["scope"]))


def test_unseen_findings_table9_and_their_screening(cfg):
    table = scored(cfg)
    assert ST.unseen_findings(cfg, table) == list(cfg.unseen_findings)
    t9 = ST.table9(cfg, table)
    assert list(t9["finding"]) == list(cfg.findings)
    us = ST.unseen_screening(cfg, table, thresholds(cfg, table))
    assert set(us["finding"]) <= set(cfg.unseen_findings) and len(us) > 0
    assert {"tables/smoke/table9_unseen_findings", "figures/smoke/table9_unseen_findings", "tables/smoke/unseen_screening"} <= _written(cfg)
    assert _meta(cfg, "tables", "table9_unseen_findings")["headline"].startswith("mean share called Normal: ")


# --------------------------------------------------------------------------- what is left out


@pytest.mark.parametrize("case", ["no-unseen-table9", "no-unseen-screening", "no-published", "no-gate", "no-variants"])
def test_a_table_without_its_inputs_is_none_and_writes_nothing(cfg, tmp_path, case):
    table = scored(cfg, unseen=False)
    if case == "no-unseen-table9":
        assert ST.unseen_findings(cfg, table) == [] and ST.table9(cfg, table) is None
    elif case == "no-unseen-screening":
        assert ST.unseen_screening(cfg, table, thresholds(cfg, table)) is None
    elif case == "no-published":  # the smoke profile names no published results
        assert not cfg.evaluate.published and ST.published(cfg, table, thresholds(cfg, table)) is None
    elif case == "no-gate":  # no per-film out-of-distribution score, no gate file
        assert ST.batch_shift(cfg, table, tmp_path / "ood.npz") is None
        assert ST.batch_shift(cfg, table.assign(ood_score=0.0), tmp_path / "ood.npz") is None
    else:  # a real dataset's profile declares no 2-class / 3-class variants
        kermany = load_config("kermany", {"paths.reports": str(cfg.path("reports"))})
        assert ST.two_vs_three_class(kermany) == (None, None)
    assert _written(cfg) == set()


@pytest.mark.parametrize("values, line", [([], None), ([0.5], "v 0.500"), ([0.5, 0.25], "v 0.500; v 0.250")],
                         ids=["none", "one", "two"])
def test_thesis_line_joins_the_rows_that_have_a_thesis_value(values, line):
    assert ST._thesis_line(values, lambda v: f"v {v:.3f}") == line
