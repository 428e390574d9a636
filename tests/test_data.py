"""scxnn.data: the manifest contract every source and step shares."""

from __future__ import annotations

import pandas as pd
import pytest

from scxnn.data import (
    ManifestError,
    abnormal_labels,
    check_image_splits,
    check_patient_splits,
    format_masks,
    hash_patient,
    in_scope,
    link_patients,
    new_manifest,
    parse_masks,
    read_manifest,
    split_by_patient,
    validate_manifest,
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


ABSENT = object()  # the row has no "abnormal" key at all (the generator's rows, a hand-made manifest)


@pytest.mark.parametrize("given, columns, expected", [
    pytest.param(ABSENT, {}, 0, id="no-verdict-all-absent-is-normal"),
    pytest.param(ABSENT, {"nodule": 1}, 1, id="no-verdict-a-finding-is-abnormal"),
    pytest.param(ABSENT, {"cardiomegaly": None}, None, id="no-verdict-an-unknown-column-is-unknown"),
    pytest.param(1, {}, 1, id="unmapped-source-finding-is-abnormal"),
    pytest.param(0, {"cardiomegaly": None}, 0, id="source-normal-with-an-unlabelled-column-is-normal"),
    pytest.param(None, {}, None, id="source-says-neither-is-unknown-even-with-every-column-0"),
    pytest.param(None, {"pneumonia": 1}, 1, id="an-unseen-finding-is-abnormal-whatever-the-verdict"),
])
def test_abnormal_is_the_sources_verdict_three_way_and_survives_a_round_trip(tmp_path, given, columns, expected):
    row = _row(0, "a", **columns) if given is ABSENT else _row(0, "a", abnormal=given, **columns)
    df = new_manifest([row], FINDINGS, UNSEEN)
    got = df.loc[0, "abnormal"]
    assert (pd.isna(got) and expected is None) or got == expected
    back = read_manifest(write_manifest(df, tmp_path / "manifest.csv"), FINDINGS, UNSEEN)
    pd.testing.assert_series_equal(back["abnormal"], df["abnormal"])
    assert abnormal_labels(df, FINDINGS, UNSEEN).equals(df["abnormal"])


def test_rows_with_and_without_a_verdict_mix_and_a_hand_made_manifest_without_the_column_reads(tmp_path):
    df = new_manifest([_row(0, "a", abnormal=1), _row(1, "b"), _row(2, "c", nodule=1)], FINDINGS, UNSEEN)
    assert df["abnormal"].tolist() == [1, 0, 1]
    p = tmp_path / "hand.csv"
    df.drop(columns=["abnormal"]).to_csv(p, index=False)
    assert read_manifest(p, FINDINGS, UNSEEN)["abnormal"].tolist() == [0, 0, 1]  # the unmapped finding is lost with the column


def test_a_normal_verdict_beside_a_marked_finding_is_refused():
    with pytest.raises(ManifestError, match="abnormal 0"):
        new_manifest([_row(0, "a", nodule=1, abnormal=0)], FINDINGS, UNSEEN)


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


SHA_A, SHA_B = "a" * 64, "b" * 64


def test_same_film_under_another_patient_in_two_splits_fails_loudly(tmp_path):
    rows = [_row(0, "a", "train", source_sha256=SHA_A, path="img/DOE_JOHN.dcm"), _row(1, "b", "test", source_sha256=SHA_A),
            _row(2, "c", "val", source_sha256=SHA_B)]
    df = new_manifest(rows, FINDINGS, UNSEEN)
    with pytest.raises(ManifestError, match=r"1 image\(s\) appear in more than one split under 2 image ids") as e:
        validate_manifest(df, FINDINGS, UNSEEN)
    assert "aaaaaaaaaaaa: i0 (train), i1 (test)" in str(e.value) and "DOE" not in str(e.value)  # hashed ids, never paths
    write_manifest(df, tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="same source_sha256"):
        read_manifest(tmp_path / "m.csv", FINDINGS, UNSEEN)


@pytest.mark.parametrize("rows", [
    [_row(0, "a", "train", source_sha256=""), _row(1, "b", "test", source_sha256="")],  # not hashed yet: nothing to compare
    [_row(0, "a", "train", source_sha256=SHA_A), _row(1, "b", "train", source_sha256=SHA_A)],  # a copy in the same split
    [_row(0, "a", "train", source_sha256=SHA_A), _row(1, "b", "test", source_sha256=SHA_B)],
])
def test_image_splits_pass_without_a_film_in_two_splits(rows):
    check_image_splits(new_manifest(rows, FINDINGS, UNSEEN))


def test_link_patients_joins_shared_images_transitively():
    groups = link_patients(["d", "c", "b", "a", "e", "e"], ["h1", "h2", "h1", "h2", "", ""])
    assert groups == {"d": "b", "b": "b", "c": "a", "a": "a", "e": "e"}
    # z shares a film with y, y another with x: one group, whatever the row order
    rows = [("z", "h2"), ("y", "h2"), ("y", "h1"), ("x", "h1")]
    assert link_patients(*zip(*rows)) == link_patients(*zip(*rows[::-1])) == {"x": "x", "y": "x", "z": "x"}


def test_split_by_patient_keeps_patients_with_one_image_together_and_others_unchanged():
    patients = [f"p{i:02d}" for i in range(40)]
    plain = split_by_patient(patients, (0.6, 0.2, 0.2), seed=3)
    # distinct (or missing) hashes link no one: the split is exactly the one without images
    assert split_by_patient(patients, (0.6, 0.2, 0.2), seed=3, images=[f"h{i}" for i in range(40)]) == plain
    assert split_by_patient(patients, (0.6, 0.2, 0.2), seed=3, images=[""] * 40) == plain
    a = next(p for p in patients if plain[p] == "train")
    b = next(p for p in patients if plain[p] == "test")
    c = next(p for p in patients if plain[p] == "val")
    images = [f"h{i}" for i in range(40)]
    images[patients.index(b)] = images[patients.index(c)] = images[patients.index(a)]  # one film under three patients
    linked = split_by_patient(patients, (0.6, 0.2, 0.2), seed=3, images=images)
    assert linked[a] == linked[b] == linked[c] and set(linked) == set(patients)


@pytest.mark.parametrize("flags, kept, counts", [
    (None, 4, {}),  # a manifest from before the column
    (["", "", "", ""], 4, {}),
    (["", "modality:CT", "lateral;non_chest:ABDOMEN", "lateral"], 1, {"lateral": 2, "modality:CT": 1, "non_chest:ABDOMEN": 1}),
])
def test_in_scope_leaves_out_flagged_films_and_counts_each_flag(flags, kept, counts, caplog):
    rows = [_row(i, f"p{i}") if flags is None else _row(i, f"p{i}", scope_flags=flags[i]) for i in range(4)]
    df = new_manifest(rows, FINDINGS, UNSEEN)
    out, got = in_scope(df, "m.csv")
    assert len(out) == kept and got == counts and (flags is None or out["scope_flags"].eq("").all())
    assert list(out.index) == list(range(kept))
    assert ("3 of 4 films left out as out of scope (lateral: 2, modality:CT: 1, non_chest:ABDOMEN: 1)" in caplog.text) == bool(counts)


def test_write_manifest_keeps_a_different_file_it_replaces(tmp_path, caplog):
    # A manifest edited by hand, or an earlier build, is never silently lost to a rerun.
    path = tmp_path / "manifest.csv"
    first, second = pd.DataFrame({"image_id": ["a"]}), pd.DataFrame({"image_id": ["b"]})
    write_manifest(first, path)
    write_manifest(first, path)  # the same contents: nothing to keep
    assert not (tmp_path / "manifest.csv.previous").exists()
    with caplog.at_level("WARNING", logger="scxnn"):
        write_manifest(second, path)
    assert pd.read_csv(tmp_path / "manifest.csv.previous")["image_id"].tolist() == ["a"]
    assert pd.read_csv(path)["image_id"].tolist() == ["b"]
    assert "manifest.csv.previous" in caplog.text
