"""scxnn.data: the manifest contract every source and step shares."""

from __future__ import annotations

import pandas as pd
import pytest

from scxnn.data import (
    ManifestError,
    check_patient_splits,
    format_masks,
    hash_patient,
    new_manifest,
    parse_masks,
    read_manifest,
    split_by_patient,
    write_manifest,
)

FINDINGS = ["nodule", "cardiomegaly"]
UNSEEN = ["pneumonia"]


def _row(i, patient, split="train", **kw):
    r = {"image_id": f"i{i}", "patient_id": hash_patient(patient), "study_date": "2015-01-02", "site": "internal",
         "split": split, "label_type": "hard", "nodule": 0, "cardiomegaly": 0, "pneumonia": 0, "masks": "",
         "view": "PA", "path": f"img/{i}.dcm", "source_sha256": "0" * 64}
    r.update(kw)
    return r


def test_roundtrip_keeps_codes_and_unknowns(tmp_path):
    df = new_manifest([_row(0, "a", nodule=1, masks=format_masks({"nodule": "m/0.png"})), _row(1, "b", cardiomegaly=None)], FINDINGS, UNSEEN)
    assert str(df["nodule"].dtype) == "Int8" and df["cardiomegaly"].isna().tolist() == [False, True]
    p = write_manifest(df, tmp_path / "manifest.csv")
    back = read_manifest(p, FINDINGS, UNSEEN)
    pd.testing.assert_frame_equal(back, df)
    assert parse_masks(back.loc[0, "masks"]) == {"nodule": "m/0.png"} and parse_masks(back.loc[1, "masks"]) == {}


def test_patient_in_two_splits_fails_loudly():
    df = new_manifest([_row(0, "a", "train"), _row(1, "a", "test"), _row(2, "b", "val")], FINDINGS, UNSEEN)
    with pytest.raises(ManifestError, match="1 patient.*more than one split"):
        check_patient_splits(df)


def test_read_manifest_validates(tmp_path):
    df = new_manifest([_row(0, "a"), _row(1, "b", split="holdout")], FINDINGS, UNSEEN)
    write_manifest(df, tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="split must be one of"):
        read_manifest(tmp_path / "m.csv", FINDINGS, UNSEEN)
    df = new_manifest([_row(0, "a", nodule=2)], FINDINGS, UNSEEN)
    write_manifest(df, tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="'nodule' must be 1, 0 or empty"):
        read_manifest(tmp_path / "m.csv", FINDINGS, UNSEEN)
    with pytest.raises(ManifestError, match="missing columns"):
        read_manifest(tmp_path / "m.csv", FINDINGS + ["edema"], UNSEEN)


def test_unknown_columns_are_refused_so_no_stray_phi_slips_in():
    with pytest.raises(ManifestError, match="PatientName"):
        new_manifest([_row(0, "a", PatientName="DOE^JOHN")], FINDINGS, UNSEEN)


def test_patient_hash_is_stable_salted_and_opaque(monkeypatch):
    h = hash_patient("person123")
    assert h == hash_patient("person123") and len(h) == 16 and "123" not in h
    monkeypatch.setenv("SCXNN_PATIENT_SALT", "site-secret")
    assert hash_patient("person123") != h


def test_split_by_patient_is_deterministic_and_complete():
    patients = [f"p{i}" for i in range(100)]
    a = split_by_patient(patients, (0.8, 0.1, 0.1), seed=1)
    assert a == split_by_patient(list(reversed(patients)), (0.8, 0.1, 0.1), seed=1)
    counts = pd.Series(a).value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (80, 10, 10)
    small = split_by_patient(["x", "y", "z"], (0.8, 0.1, 0.1), seed=0)
    assert sorted(small.values()) == ["test", "train", "val"]
