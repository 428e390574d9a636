"""scxnn.transfer (step 08): the smoke run scored on the real NIH films of ../shared, beside its own
test figures; and a checkout without ../shared gets a note, not a failure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED, require_shared

from scxnn.config import load_config
from scxnn.study_tables import OUTSIDE_CAM_FILMS
from scxnn.transfer import NORMAL_VS_ABNORMAL, TARGETS, compare_scored, shifted_populations, transfer_table, tuning_half

NIH_FINDINGS = ("pneumothorax", "pleural_effusion", "nodule", "consolidation", "atelectasis", "cardiomegaly")


def test_without_the_real_films_the_step_says_so_and_writes_nothing(tmp_path, caplog):
    cfg = load_config("smoke", {"paths.reports": str(tmp_path / "reports")})
    with caplog.at_level("WARNING", logger="scxnn"):
        assert transfer_table(cfg, tmp_path / "no_run", tmp_path / "absent", tmp_path / "out") is None
    assert "no real films at" in caplog.text and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("profile", ["smoke", "kermany"], ids=["synthetic-run-absent-folder", "kermany-run-own-source"])
def test_a_shifted_population_absent_or_the_profiles_own_source_gets_no_table(tmp_path, caplog, profile):
    # The kermany profile learns from kermany_dev: scoring it there would be its own test patients,
    # not a shifted population, so it is skipped even where the folder exists.
    cfg = load_config(profile, {"paths.reports": str(tmp_path / "reports")})
    folder = "realdata/kermany_dev" if profile == "kermany" else "absent"
    with caplog.at_level("INFO", logger="scxnn"):
        out = shifted_populations(cfg, tmp_path / "no_run", SHARED, tmp_path / "out", {"kermany": folder})
    assert out == {"kermany": None} and not (tmp_path / "reports").exists()
    assert ("not a shifted population" if profile == "kermany" else "no real films at") in caplog.text


def test_the_tuning_half_is_fixed_by_the_patient_id_alone():
    ids = [f"p{i:04d}" for i in range(2000)]
    half = tuning_half(ids)
    # Pinned: every tuning/confirmation figure in docs/ was measured on these halves.
    assert tuning_half(["242ca53fce7b8006", "01a66b615af0acf9", "p1", "p2"]).tolist() == [True, False, True, False]
    # The films' order does not move a patient, and a patient's films share a half.
    assert (tuning_half(ids[::-1])[::-1] == half).all() and tuning_half(["p0007"] * 3).tolist() == [half[7]] * 3
    assert 0.45 < half.mean() < 0.55


@pytest.mark.pipeline
@pytest.mark.realdata
def test_the_smoke_run_on_real_nih_films(smoke_study):
    labels = pd.read_csv(require_shared("realdata", "nih_cxr14_512", "labels.csv"))
    tables = ROOT / "reports" / "tables" / "smoke"
    t = pd.read_csv(tables / "transfer_nih.csv")
    assert t["measure"].tolist() == [NORMAL_VS_ABNORMAL, *NIH_FINDINGS]
    # Normal is what NIH calls normal: every film with any label, mapped or not, is abnormal.
    first = t.iloc[0]
    normal = int((labels["finding_labels"] == "No Finding").sum())
    assert (first["real_n_neg"], first["real_n_pos"]) == (normal, len(labels) - normal)
    nih_name = {"pleural_effusion": "Effusion", "nodule": "Nodule|Mass"}
    for f in NIH_FINDINGS:  # a finding's positives are NIH's films with it (Mass counts as nodule)
        pat = nih_name.get(f, f.capitalize())
        row = t.set_index("measure").loc[f]
        assert row["real_n_pos"] == labels["finding_labels"].str.contains(pat).sum(), f
        assert row["real_n_pos"] + row["real_n_neg"] == len(labels), f
    for side in ("study", "real"):
        ok = t[f"{side}_auc"].notna()
        assert (t.loc[ok, f"{side}_auc_lo"] <= t.loc[ok, f"{side}_auc"]).all()
        assert (t.loc[ok, f"{side}_auc"] <= t.loc[ok, f"{side}_auc_hi"]).all()
        assert ((t.loc[ok, f"{side}_auc_hi"] - t.loc[ok, f"{side}_auc_lo"]) > 0).all()  # never [x, x] from a sample
    # The halves split the same films: their counts add up, and each AUC sits in its own interval.
    for c in ("n_pos", "n_neg"):
        assert (t[f"tuning_{c}"] + t[f"confirm_{c}"] == t[f"real_{c}"]).all(), c
    for side in ("tuning", "confirm"):
        ok = t[f"{side}_auc"].notna()
        assert ok.iloc[0] and (t.loc[ok, f"{side}_auc_lo"] <= t.loc[ok, f"{side}_auc"]).all()
        assert (t.loc[ok, f"{side}_auc"] <= t.loc[ok, f"{side}_auc_hi"]).all()
    assert t["target"].tolist() == [TARGETS[m] for m in t["measure"]]
    assert set(t["verdict"]) <= {"reached", "point estimate only", "below target"}
    assert np.isfinite(first["study_auc"])
    meta = json.loads((tables / "transfer_nih.json").read_text())
    assert "normal vs abnormal AUC" in meta["headline"] and "319 real nih films" in meta["caption"]
    assert (ROOT / "reports" / "figures" / "smoke" / "figure_transfer_gradcam_nih.png").is_file()
    # A few real films per finding, picked by id (one film can be a lucky or an unlucky one).
    cam = json.loads((ROOT / "reports" / "figures" / "smoke" / "figure_transfer_gradcam_nih.json").read_text())
    assert f"the first {OUTSIDE_CAM_FILMS} real nih films with its finding (by image id)" in cam["caption"]
    # The promise on the real films: the run's frozen thresholds, every film in one cell of the confusion.
    scr = pd.read_csv(tables / "transfer_nih_screening.csv")
    assert scr["rule"].tolist() == ["point", "strict"]
    for _, r in scr.iterrows():
        assert r["tn"] + r["fn"] + r["fp"] + r["tp"] == len(labels), r["rule"]
        assert (r["fn"] + r["tp"], r["tn"] + r["fp"]) == (len(labels) - normal, normal), r["rule"]
        assert r["sensitivity_lo"] <= r["sensitivity"] <= r["sensitivity_hi"] and r["sensitivity_lo"] < r["sensitivity_hi"], r["rule"]
    # Strict sits at or below the point threshold, so it never calls more films normal.
    point, strict = scr.iloc[0], scr.iloc[1]
    assert strict["threshold"] <= point["threshold"] and strict["tn"] + strict["fn"] <= point["tn"] + point["fn"]
    assert "called normal" in json.loads((tables / "transfer_nih_screening.json").read_text())["headline"]
    # The step's folder carries its resolved config, as every step's does.
    assert (smoke_study / "08_transfer" / "config.resolved.yaml").is_file()


@pytest.mark.pipeline
@pytest.mark.realdata
def test_the_smoke_run_on_a_shifted_population_pediatric_films(smoke_study):
    # Children's films label none of the 13 findings: one row, normal vs abnormal, and no target
    # (issue 32's bar is set for adult NIH films). Every film is scored, pneumonia counts as abnormal.
    labels = pd.read_csv(require_shared("realdata", "kermany_dev", "labels.csv"))
    tables = ROOT / "reports" / "tables" / "smoke"
    t = pd.read_csv(tables / "transfer_kermany.csv", keep_default_na=False, na_values=[""])  # "n/a" is a verdict, not NaN
    assert t["measure"].tolist() == [NORMAL_VS_ABNORMAL]
    row = t.iloc[0]
    assert (row["real_n_neg"], row["real_n_pos"]) == (int((labels["normal"] == 1).sum()), int((labels["pneumonia"] == 1).sum()))
    assert row["real_auc_lo"] < row["real_auc"] < row["real_auc_hi"]
    assert np.isnan(row["target"]) and row["verdict"] == "n/a"
    assert "real kermany films" in json.loads((tables / "transfer_kermany.json").read_text())["caption"]
    scr = pd.read_csv(tables / "transfer_kermany_screening.csv")
    assert (scr["tn"] + scr["fn"] + scr["fp"] + scr["tp"] == len(labels)).all()
    # Its own folder: the NIH scoring that `scxnn compare-scored` reads stays where the docs say.
    assert (smoke_study / "08_transfer" / "kermany" / "scored" / "logits.parquet").is_file()
    assert (smoke_study / "08_transfer" / "scored" / "logits.parquet").is_file()


# --------------------------------------------------------------------------- two scorings of the same films


def _scored(n: int = 240, signal: float = 1.0) -> pd.DataFrame:
    """A scored table as step 08 writes it: labels, one model's logits, the SVM score; ``signal``
    sets how well the scores rank the labels."""
    abnormal = (np.arange(n) % 3 != 0).astype(int)
    nodule = np.where(np.arange(n) % 5 == 0, np.nan, (np.arange(n) % 4 == 1).astype(float))
    noise = np.random.default_rng(99).normal(size=(n, 4))  # the same films' noise in every scoring
    return pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(n)], "source_sha256": [f"h{i:04d}" for i in range(n)],
        "patient_id": [f"p{i:04d}" for i in range(n)], "abnormal": abnormal, "nodule": nodule,
        "nodule__normal": noise[:, 0], "nodule__target": noise[:, 1] + signal * np.nan_to_num(nodule), "nodule__others": noise[:, 2],
        "score": noise[:, 3] + signal * abnormal})


def test_two_scorings_compare_measure_by_measure_and_half_by_half():
    from scxnn.metrics import roc_auc

    a, b = _scored(signal=0.3), _scored(signal=1.5)
    t = compare_scored(a, b, n_boot=200, seed=0)
    assert list(t["measure"].unique()) == [NORMAL_VS_ABNORMAL, "nodule"]
    assert t.groupby("measure")["films"].apply(list).tolist() == [["all", "tuning", "confirm"]] * 2
    tuning = tuning_half(a["patient_id"])
    for measure, label, col in ((NORMAL_VS_ABNORMAL, "abnormal", "score"), ("nodule", "nodule", None)):
        rows = t[t["measure"] == measure].set_index("films")
        # The halves split the films of known label, and each half's AUC is the AUC of its films.
        assert rows.loc["tuning", "n_pos"] + rows.loc["confirm", "n_pos"] == rows.loc["all", "n_pos"], measure
        assert rows.loc["tuning", "n_neg"] + rows.loc["confirm", "n_neg"] == rows.loc["all", "n_neg"], measure
        if col is not None:
            known = a[label].notna().to_numpy() & tuning
            assert rows.loc["tuning", "auc_second"] == pytest.approx(roc_auc(b.loc[known, label], b.loc[known, col]))
        # The stronger scoring wins, and the paired interval excludes 0 on all films.
        assert (rows["delta"] > 0).all() and rows.loc["all", "delta_lo"] > 0, measure
        assert (rows["delta_lo"] <= rows["delta"]).all() and (rows["delta"] <= rows["delta_hi"]).all(), measure


def test_the_films_order_does_not_matter_but_the_films_do():
    a, b = _scored(signal=0.3), _scored(signal=1.5)
    shuffled = b.sample(frac=1, random_state=1)
    pd.testing.assert_frame_equal(compare_scored(a, b, n_boot=50), compare_scored(a, shuffled, n_boot=50))
    same = compare_scored(a, a.sample(frac=1, random_state=2), n_boot=50)
    assert (same["delta"] == 0).all() and (same["delta_lo"] == 0).all()


@pytest.mark.parametrize("case, change, message", [
    ("film missing", lambda t: t.iloc[1:], "do not hold the same films"),
    ("film twice", lambda t: pd.concat([t, t.iloc[:1]]), "do not hold the same films"),
    ("other labels", lambda t: t.assign(abnormal=1 - t["abnormal"]), "different 'abnormal'"),
    ("other finding labels", lambda t: t.assign(nodule=t["nodule"].fillna(0)), "different 'nodule'"),
    ("not scored", lambda t: t.drop(columns="score"), "no score column"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_two_scorings_of_other_films_are_refused(case, change, message):
    with pytest.raises(ValueError, match=message):
        compare_scored(_scored(), change(_scored()), n_boot=10)


def test_compare_scored_on_the_command_line(tmp_path, capsys):
    from scxnn.cli import main

    _scored(signal=0.3).to_parquet(tmp_path / "a.parquet")
    _scored(signal=1.5).to_parquet(tmp_path / "b.parquet")
    out = tmp_path / "cmp" / "delta.csv"
    args = ["compare-scored", "--profile", "smoke", "--set", "evaluate.bootstrap=100"]
    assert main([*args, str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "normal_vs_abnormal" in shown and "tuning" in shown and "difference" in shown
    assert len(pd.read_csv(out)) == 6
    (tmp_path / "table.csv").write_text("not,a,parquet\n")
    for bad in (tmp_path / "absent.parquet", tmp_path / "table.csv"):  # one error line, no traceback
        assert main([*args, str(bad), str(tmp_path / "b.parquet")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "scored table" in err and "Traceback" not in err
