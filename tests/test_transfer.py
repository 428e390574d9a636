"""scxnn.transfer (step 08): the smoke run scored on the real NIH films of ../shared, beside its own
test figures; and a checkout without ../shared gets a note, not a failure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, require_shared

from scxnn.config import load_config
from scxnn.study_tables import OUTSIDE_CAM_FILMS
from scxnn.transfer import NORMAL_VS_ABNORMAL, TARGETS, transfer_table, tuning_half

NIH_FINDINGS = ("pneumothorax", "pleural_effusion", "nodule", "consolidation", "atelectasis", "cardiomegaly")


def test_without_the_real_films_the_step_says_so_and_writes_nothing(tmp_path, caplog):
    cfg = load_config("smoke", {"paths.reports": str(tmp_path / "reports")})
    with caplog.at_level("WARNING", logger="scxnn"):
        assert transfer_table(cfg, tmp_path / "no_run", tmp_path / "absent", tmp_path / "out") is None
    assert "no real films at" in caplog.text and not (tmp_path / "reports").exists()


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
