"""Dataset adapters: the two real shared samples, plus tiny fakes that follow each other dataset's
file layout and CSV headers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from scxnn import data, labels
from scxnn.adapters import _common as C
from scxnn.adapters._common import opaque_id as oid
from scxnn.adapters import ADAPTERS, build_manifest, kermany, nih, siim, tbx11k

F = ("pneumothorax", "pneumoperitoneum", "mediastinal_widening", "pleural_effusion", "nodule", "consolidation",
     "active_tuberculosis", "advanced_tuberculosis", "atelectasis", "support_device", "pleural_calcification",
     "interstitial_opacity", "cardiomegaly")
U = ("pneumonia", "edema", "fracture")
# What NIH labels (0 on its "No Finding" films) and what it never labels (NA on every film).
NIH_LABELLED = ("pneumothorax", "pleural_effusion", "nodule", "consolidation", "atelectasis", "cardiomegaly", "pneumonia", "edema")
NIH_NEVER = ("support_device", "pneumoperitoneum", "active_tuberculosis", "advanced_tuberculosis", "mediastinal_widening",
             "pleural_calcification", "interstitial_opacity", "fracture")
NA = pd.NA


def _png(path: Path, h: int = 32, w: int = 40) -> Path:
    """A film unique to ``path``: identical bytes would make its patients one for the split."""
    img = (np.arange(h * w) % 251).reshape(h, w).astype(np.uint8)
    img[0, :16] = np.frombuffer(hashlib.sha256(str(path).encode()).digest()[:16], np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def _dicom(path: Path, h: int = 32, w: int = 40, patient: str = "P") -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientID, ds.Modality, ds.Rows, ds.Columns = patient, "DX", h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((h, w), np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _no_raw_ids(df: pd.DataFrame, *needles: str) -> None:
    text = df.to_csv(index=False)
    for n in needles:
        assert n not in text, n
    assert df["patient_id"].str.fullmatch(r"[0-9a-f]{16}").all()


# ------------------------------------------------------------------ real samples
@pytest.mark.realdata
def test_kermany_real(tmp_path):
    root = require_shared("realdata", "kermany_dev")
    df = build_manifest("kermany", root, tmp_path, F, U, seed=0)
    assert len(df) == 460 and df.attrs["skipped"] == []
    assert (df["pneumonia"] == 0).sum() == 154
    data.validate_manifest(df, F, U)
    assert (tmp_path / data.MANIFEST_NAME).is_file()
    # Only `path` (where the user's own copy lies) may carry the dataset's file names.
    assert "person" not in df.drop(columns=["path"]).to_csv(index=False)
    _no_raw_ids(df[["image_id", "patient_id", "study_date", "site", "split", "masks"]], "person", "IM-")
    normals = df[df["pneumonia"] == 0]
    # "normal" vouches only for what Kermany grades: the 13 targets stay unknown, the film is normal
    assert df[list(F)].isna().all().all() and (normals["abnormal"] == 0).all()
    assert (df.loc[df["pneumonia"] == 1, "abnormal"] == 1).all() and set(df["other_findings"]) == {""}
    assert set(df["split"]) == {"train", "val", "test"} and set(df["view"]) == {"AP"}
    # persons with both bacterial and viral films stay in one split
    person = df["path"].str.extract(r"(person\d+)_")[0]
    kind = df["path"].str.extract(r"_(bacteria|virus)_")[0]
    both = kind.groupby(person).nunique()
    both = both[both > 1].index
    assert len(both) > 0
    assert (df[person.isin(both)].groupby(person)["split"].nunique() == 1).all()

    sub = kermany.build(root, tmp_path / "sub", kermany.SUBTYPES, (), seed=0)
    counts = sub[list(kermany.SUBTYPES)].sum()
    assert counts["bacterial_pneumonia"] == 147 and counts["viral_pneumonia"] == 159
    assert ((sub["bacterial_pneumonia"] == 0) & (sub["viral_pneumonia"] == 0)).sum() == 154
    assert (sub["split"].values == df["split"].values).all()  # same patients, same seed -> same split


@pytest.mark.realdata
def test_nih_mini_real(tmp_path):
    root = require_shared("realdata", "nih_cxr14_mini")
    df = nih.build(root, tmp_path, F, U, seed=0)
    assert len(df) == 1004 and df["image_id"].is_unique
    assert not {"Patient Age", "Patient Gender", "age", "sex"} & set(df.columns)
    lab = pd.read_csv(root / "labels.csv")
    assert df["pleural_effusion"].sum() == lab["Effusion"].sum() == 170
    assert df["nodule"].sum() == (lab["Nodule"] | lab["Mass"]).sum()
    assert df["cardiomegaly"].sum() == 84 and df["pneumonia"].sum() == 11 and df["edema"].sum() == 31
    # "No Finding" vouches only for what NIH labels: support_device is unknown on every film
    assert df["support_device"].isna().all() and (df.loc[df["abnormal"] == 0, "cardiomegaly"] == 0).all()
    assert (df["abnormal"] == 0).sum() == (lab["finding_labels"] == "No Finding").sum() == 501
    assert (df["abnormal"] == 1).sum() == 1004 - 501
    assert "Infiltration" in nih.UNMAPPED and "Fibrosis" in nih.UNMAPPED
    # the 9 boxed images: 7 have boxes of mapped findings (2 only "Infiltrate", unmapped)
    boxed = set(pd.read_csv(root / "nih_bbox_subset_origcoords.csv")["Image Index"].str[:-4])
    assert len(boxed) == 9
    hard = df[df["label_type"] == "hard"]
    assert set(hard["image_id"]) <= {oid("nih", b) for b in boxed} and len(hard) == 7
    for r in hard.itertuples():
        for finding, rel in data.parse_masks(r.masks).items():
            m = cv2.imread(str(tmp_path / rel), cv2.IMREAD_UNCHANGED)
            img = cv2.imread(r.path, cv2.IMREAD_UNCHANGED)
            assert m.shape == img.shape[:2] and m.dtype == np.uint8 and m.any()
            assert getattr(r, finding) == 1
    data.check_patient_splits(df)


# ------------------------------------------------------------------ SIIM RLE
def test_siim_rle_known_example():
    # 3x3, runs at flat (column-major) 1-2 and 6: "1 2 3 1" (6 = 3 past the end of the first run)
    m = siim.rle_decode("1 2 3 1", 3, 3)
    want = np.zeros((3, 3), np.uint8)
    want[1, 0] = want[2, 0] = want[0, 2] = 255
    assert (m == want).all()
    assert siim.rle_encode(want) == "1 2 3 1"
    assert not siim.rle_decode("-1", 4, 5).any() and siim.rle_decode("-1", 4, 5).shape == (4, 5)


def test_siim_rle_round_trip():
    rng = np.random.default_rng(0)
    m = np.zeros((48, 64), np.uint8)
    m[5:20, 10:30] = 255
    m[30:40, 50:63] = 255
    m[rng.random(m.shape) < 0.02] = 255
    assert (siim.rle_decode(siim.rle_encode(m), 48, 64) == m).all()
    with pytest.raises(ValueError):
        siim.rle_decode("0 5000", 8, 8)


def test_siim_fake(tmp_path):
    root = tmp_path / "siim"
    _dicom(root / "dicom-images-train/s1/r1/img1.dcm", 16, 16, patient="pat-a")
    _dicom(root / "dicom-images-train/s2/r2/img2.dcm", 16, 16, patient="pat-a")
    _dicom(root / "dicom-images-train/s3/r3/img3.dcm", 16, 16, patient="pat-b")
    box = np.zeros((16, 16), np.uint8)
    box[2:5, 3:6] = 255
    box2 = np.zeros((16, 16), np.uint8)
    box2[10:12, 10:12] = 255
    pd.DataFrame({"ImageId": ["img1", "img1", "img2", "img3", "gone"],
                  " EncodedPixels": [siim.rle_encode(box), siim.rle_encode(box2), "-1", "-1", "-1"]}
                 ).to_csv(root / "train-rle.csv", index=False)
    df = siim.build(root, tmp_path / "out", F, U, seed=1)
    assert len(df) == 3 and [s["reason"] for s in df.attrs["skipped"]] == ["listed in train-rle.csv but missing on disk"]
    r = df.set_index("image_id")
    assert r.loc[oid("siim", "img1"), "pneumothorax"] == 1 and r.loc[oid("siim", "img2"), "pneumothorax"] == 0
    assert r.loc[oid("siim", "img1"), "label_type"] == "hard" and r.loc[oid("siim", "img2"), "label_type"] == "weak"
    assert r.loc[oid("siim", "img1"), "patient_id"] == r.loc[oid("siim", "img2"), "patient_id"] == data.hash_patient("siim:pat-a")
    assert r.loc[oid("siim", "img1"), "split"] == r.loc[oid("siim", "img2"), "split"]
    mask = cv2.imread(str(tmp_path / "out" / data.parse_masks(r.loc[oid("siim", "img1"), "masks"])["pneumothorax"]), cv2.IMREAD_UNCHANGED)
    assert (mask == (box | box2)).all()
    assert r[list(F[1:])].isna().all().all()
    # "-1" is "no pneumothorax", not a normal film: the verdict is unknown
    assert r.loc[oid("siim", "img1"), "abnormal"] == 1 and r.loc[[oid("siim", "img2"), oid("siim", "img3")], "abnormal"].isna().all()
    _no_raw_ids(df, "pat-a", "pat-b")


# ------------------------------------------------------------------ fakes of the other layouts
def test_vindr_fake(tmp_path):
    root = tmp_path / "vindr"
    (root / "annotations").mkdir(parents=True)
    _dicom(root / "train/aaa.dicom", 20, 30)
    _dicom(root / "train/bbb.dicom", 20, 30)
    _dicom(root / "test/ccc.dicom", 20, 30)
    cols = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame([["aaa", "R1", "Nodule/Mass", 2, 3, 8, 9], ["aaa", "R2", "Nodule/Mass", 5.5, 5, 12, 10],
                  ["aaa", "R3", "No finding", None, None, None, None], ["aaa", "R1", "Aortic enlargement", 1, 1, 4, 4],
                  ["bbb", "R1", "No finding", None, None, None, None], ["bbb", "R2", "No finding", None, None, None, None],
                  ["zzz", "R1", "No finding", None, None, None, None]], columns=cols
                 ).to_csv(root / "annotations/annotations_train.csv", index=False)
    pd.DataFrame([["ccc", "R8", "Pleural effusion", 0, 10, 30, 20]], columns=cols).to_csv(root / "annotations/annotations_test.csv", index=False)
    pd.DataFrame({"image_id": ["ccc"], "rad_id": ["R8"], "Pneumonia": [1], "Tuberculosis": [1], "No finding": [0]}
                 ).to_csv(root / "annotations/image_labels_test.csv", index=False)
    df = ADAPTERS["vindr"].build(root, tmp_path / "out", F, U, seed=0)
    r = df.set_index("image_id")
    assert len(df) == 3 and df.attrs["skipped"][0]["path"].endswith("zzz.dicom")
    assert r.loc[oid("vindr", "ccc"), "split"] == "test" and r.loc[oid("vindr", "aaa"), "split"] != "test"
    assert r.loc[oid("vindr", "aaa"), "nodule"] == 1 and pd.isna(r.loc[oid("vindr", "aaa"), "mediastinal_widening"])
    assert r.loc[oid("vindr", "bbb"), "nodule"] == 0 and pd.isna(r.loc[oid("vindr", "bbb"), "support_device"])  # "No finding" film
    assert list(r.loc[[oid("vindr", i) for i in ("aaa", "bbb", "ccc")], "abnormal"]) == [1, 0, 1]
    assert r.loc[oid("vindr", "aaa"), "other_findings"] == "Aortic enlargement" and r.loc[oid("vindr", "ccc"), "other_findings"] == "Tuberculosis"
    assert r.loc[oid("vindr", "ccc"), "pleural_effusion"] == 1 and r.loc[oid("vindr", "ccc"), "pneumonia"] == 1
    assert pd.isna(r.loc[oid("vindr", "ccc"), "active_tuberculosis"])
    m = cv2.imread(str(tmp_path / "out" / data.parse_masks(r.loc[oid("vindr", "aaa"), "masks"])["nodule"]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (20, 30) and m[3:9, 2:8].all() and m[5:10, 6:12].all() and not m[3:5, 9:12].any() and not m[15:].any()
    assert r.loc[oid("vindr", "bbb"), "label_type"] == "weak"


def test_kermany_upstream_layout_fake(tmp_path):
    # The Mendeley/Kaggle folders: no CSV, the class in the folder, the pneumonia type and the
    # patient in the file name; the upstream train/test folders are not the study's split.
    root = tmp_path / "chest_xray"
    names = ["train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-0007-0001.jpeg", "val/NORMAL/IM-0200-0001.jpeg",
             "train/PNEUMONIA/person1_bacteria_1.jpeg", "test/PNEUMONIA/person1_virus_7.jpeg",
             "train/PNEUMONIA/person22_virus_55.jpeg", "train/PNEUMONIA/renamed_by_someone.jpeg"]
    for n in names:
        _png(root / n)
    df = kermany.build(root, tmp_path / "out", F, U, seed=0)
    assert len(df) == 6
    assert [Path(r["path"]).name for r in df.attrs["skipped"]] == ["renamed_by_someone.jpeg"]
    assert "patient" in df.attrs["skipped"][0]["reason"]
    data.validate_manifest(df, F, U)
    name = df["path"].map(lambda p: Path(p).name)
    normal = name.str.startswith(("IM-", "NORMAL2"))
    assert (df.loc[normal, "pneumonia"] == 0).all() and df[list(F)].isna().all().all()
    assert (df.loc[normal, "abnormal"] == 0).all() and (df.loc[~normal, "abnormal"] == 1).all()
    assert (df.loc[~normal, "pneumonia"] == 1).all() and df.loc[~normal, list(F)].isna().all().all()
    # person1's bacterial (train/) and viral (test/) films are one patient, so one split
    p1 = df[name.str.startswith("person1_")]
    assert len(p1) == 2 and p1["patient_id"].nunique() == 1 and p1["split"].nunique() == 1
    assert set(df["view"]) == {"AP"} and set(df["label_type"]) == {"weak"}
    _no_raw_ids(df.drop(columns=["path"]), "person", "IM-", "NORMAL2")
    sub = kermany.build(root, tmp_path / "sub", kermany.SUBTYPES, (), seed=0)
    by = sub.assign(name=sub["path"].map(lambda p: Path(p).name)).set_index("name")
    assert by.loc["person1_bacteria_1.jpeg", "bacterial_pneumonia"] == 1 and by.loc["person1_bacteria_1.jpeg", "viral_pneumonia"] == 0
    assert by.loc["person22_virus_55.jpeg", "viral_pneumonia"] == 1 and by.loc["IM-0115-0001.jpeg", "viral_pneumonia"] == 0


def test_kermany_labels_csv_layout_fake(tmp_path):
    root = tmp_path / "kermany_dev"
    for n in ("images/normal/IM-0001-0001.jpeg", "images/bacterial/person3_bacteria_10.jpeg", "images/odd/person4_virus_11.jpeg"):
        _png(root / n)
    pd.DataFrame({"path": ["images/normal/IM-0001-0001.jpeg", "images/bacterial/person3_bacteria_10.jpeg",
                           "images/odd/person4_virus_11.jpeg", "images/normal/IM-0009-0001.jpeg"],
                  "label": ["normal", "pneumonia_bacterial", "covid", "normal"]}).to_csv(root / "labels.csv", index=False)
    df = kermany.build(root, tmp_path / "out", F, U, seed=0)
    assert len(df) == 2
    reasons = {Path(r["path"]).name: r["reason"] for r in df.attrs["skipped"]}
    assert "missing on disk" in reasons["IM-0009-0001.jpeg"] and "unknown Kermany label 'covid'" in reasons["person4_virus_11.jpeg"]
    assert sorted(df["pneumonia"].tolist()) == [0, 1]


def _nih_official(root: Path) -> None:
    """The official NIH release in miniature: Data_Entry, a box list in 1024-px space, images in
    images_0NN/images/, and the official train_val / test lists."""
    entries = [("00000001_000.png", "Effusion|Infiltration", "00000001", "PA"),
               ("00000001_001.png", "No Finding", "00000001", "PA"),
               ("00000002_000.png", "Mass", "00000002", "AP"),
               ("00000003_000.png", "Infiltration", "00000003", "PA"),
               ("00000004_000.png", "Pneumonia|Edema", "00000004", "AP"),
               ("00000005_000.png", "No Finding", "00000005", "PA"),
               ("00000006_000.png", "Cardiomegaly", "00000006", "PA")]
    rows = [{"Image Index": n, "Finding Labels": lab, "Follow-up #": 0, "Patient ID": pid, "Patient Age": 58, "Patient Gender": "M",
             "View Position": view, "OriginalImage[Width": 2048, "Height]": 2048, "OriginalImagePixelSpacing[x": 0.14, "y]": 0.14}
            for n, lab, pid, view in entries]
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    for i, (n, *_rest) in enumerate(entries[:-1]):  # the last one is listed but not on disk
        _png(root / f"images_00{1 + i % 2}" / "images" / n, 64, 64)
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             "00000001_000.png,Effusion,512,256,256,128\n"
                                             "00000001_000.png,Infiltrate,0,0,1024,1024\n"
                                             "00000002_000.png,Mass,0,0,128,128\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n00000003_000.png\n00000005_000.png\n")
    (root / "test_list.txt").write_text("00000004_000.png\n")


def test_nih_official_layout_fake(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    _nih_official(root)
    df = nih.build(root, tmp_path / "out", F, U, seed=0)
    r = df.set_index(df["path"].map(lambda p: Path(p).name))
    assert len(df) == 6 and [Path(x["path"]).name for x in df.attrs["skipped"]] == ["00000006_000.png"]
    data.validate_manifest(df, F, U)
    assert not {"Patient Age", "Patient Gender", "age", "sex"} & set(df.columns)
    _no_raw_ids(df.drop(columns=["path"]), "00000001", "00000002")
    assert r.loc["00000001_000.png", "pleural_effusion"] == 1 and r.loc["00000002_000.png", "nodule"] == 1  # Mass -> nodule
    # "No Finding": 0 for what NIH labels; the findings NIH never labels stay unknown
    nf = r.loc["00000005_000.png"]
    assert all(nf[c] == 0 for c in NIH_LABELLED) and nf[[c for c in (*F, *U) if c not in NIH_LABELLED]].isna().all()
    assert nf["abnormal"] == 0 and r.loc["00000003_000.png", "abnormal"] == 1
    assert r.loc["00000003_000.png", "other_findings"] == "Infiltration" and r.loc["00000001_000.png", "other_findings"] == "Infiltration"
    # Infiltration is unmapped: the labelled findings are 0, the never-labelled ones unknown
    assert r.loc["00000003_000.png", "consolidation"] == 0 and pd.isna(r.loc["00000003_000.png", "pneumoperitoneum"])
    assert r.loc["00000004_000.png", "pneumonia"] == 1 and r.loc["00000004_000.png", "edema"] == 1
    # the official test list is honoured; train_val is split by patient into train and val
    assert r.loc["00000004_000.png", "split"] == "test" and set(r.drop(index="00000004_000.png")["split"]) <= {"train", "val"}
    assert r.loc["00000001_000.png", "split"] == r.loc["00000001_001.png", "split"]
    data.check_patient_splits(df)
    # boxes: the effusion box, rescaled from 1024 px to this 64-px file; the Infiltrate box is unmapped
    hard = df[df["label_type"] == "hard"]
    assert sorted(hard["path"].map(lambda p: Path(p).name)) == ["00000001_000.png", "00000002_000.png"]
    masks = data.parse_masks(r.loc["00000001_000.png", "masks"])
    assert set(masks) == {"pleural_effusion"}
    m = cv2.imread(str(tmp_path / "out" / masks["pleural_effusion"]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (64, 64) and m[17:23, 33:47].all() and not m[:15].any() and not m[:, :31].any()
    assert m.sum() // 255 == pytest.approx(16 * 8, rel=0.3)


def test_chexpert_fake(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    head = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
            "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
            "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    rows = [["train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP", "", "", "1.0", "", "1.0", "-1.0", "", "", "", "0.0", "", "", "", "1.0"],
            ["train/patient00001/study1/view2_lateral.jpg", "Female", "68", "Lateral", "", "", "", "1.0", "", "", "", "", "", "", "", "", "", "", ""],
            ["train/patient00002/study1/view1_frontal.jpg", "Male", "40", "Frontal", "PA", "1.0", "", "", "", "", "", "", "", "", "", "", "", "", ""],
            ["train/patient00003/study1/view1_frontal.jpg", "Male", "40", "Frontal", "PA", "1.0", "", "", "", "", "", "", "", "", "", "", "", "", ""],
            ["train/patient00004/study1/view1_frontal.jpg", "Male", "40", "Frontal", "PA", "", "", "", "", "", "", "", "", "", "", "", "", "", ""]]
    valid = [["valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "AP", "0.0", "", "0.0", "", "", "1.0", "", "", "", "", "", "", "1.0", "0.0"]]
    for r in rows[:4] + valid:
        _png(root / r[0], 24, 20)
    pd.DataFrame([["CheXpert-v1.0-small/" + r[0], *r[1:]] for r in rows], columns=head).to_csv(root / "train.csv", index=False)
    pd.DataFrame([["CheXpert-v1.0-small/" + r[0], *r[1:]] for r in valid], columns=head).to_csv(root / "valid.csv", index=False)
    df = ADAPTERS["chexpert"].build(root, tmp_path / "out", F, U, seed=0)
    r = df.set_index("image_id")
    assert len(df) == 5 and len(df.attrs["skipped"]) == 1
    a = r.loc[oid("chexpert", "patient00001_study1_view1_frontal")]
    assert a["cardiomegaly"] == 1 and a["nodule"] == 1 and pd.isna(a["edema"]) and a["pneumothorax"] == 0
    assert a["support_device"] == 1 and pd.isna(a["consolidation"]) and a["view"] == "AP"
    assert r.loc[oid("chexpert", "patient00001_study1_view2_lateral"), "view"] == "LATERAL"
    n = r.loc[oid("chexpert", "patient00002_study1_view1_frontal")]
    assert n["cardiomegaly"] == 0 and n["fracture"] == 0 and pd.isna(n["support_device"])
    assert n["abnormal"] == 0 and a["abnormal"] == 1  # No Finding, Support Devices blank: a normal film
    v = r.loc[oid("chexpert", "patient64541_study1_view1_frontal")]
    assert v["split"] == "val" and v["edema"] == 1 and v["fracture"] == 1 and v["abnormal"] == 1
    assert r.loc[oid("chexpert", "patient00001_study1_view1_frontal"), "split"] in ("train", "test")
    assert not {"Sex", "Age"} & set(df.columns)
    _no_raw_ids(df[["patient_id", "masks", "site"]], "patient0")


def test_mimic_fake(tmp_path):
    root = tmp_path / "mimic"
    meta = pd.DataFrame({"dicom_id": ["d1", "d2", "d3", "d4"], "subject_id": ["10000032", "10000032", "11000011", "12000012"],
                         "study_id": ["50414267", "50414267", "53189527", "59999999"], "PerformedProcedureStepDescription": ["CHEST"] * 4,
                         "ViewPosition": ["PA", "LL", "AP", "PA"], "Rows": [24] * 4, "Columns": [20] * 4,
                         "StudyDate": ["21800506", "21800506", "21100304", "21100304"]})
    root.mkdir()
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    lab_cols = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices"]
    pd.DataFrame([["10000032", "50414267", "", "", "", "", "", "", "", "", "1.0", "", "", "", "", ""],
                  ["11000011", "53189527", "1.0", "-1.0", "", "", "", "", "", "", "", "0.0", "", "", "", ""]],
                 columns=lab_cols).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame({"dicom_id": ["d1", "d2", "d3", "d4"], "study_id": meta["study_id"], "subject_id": meta["subject_id"],
                  "split": ["train", "train", "test", "validate"]}).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    for m in meta.itertuples():
        if m.dicom_id != "d4":
            _png(root / f"files/p{m.subject_id[:2]}/p{m.subject_id}/s{m.study_id}/{m.dicom_id}.jpg", 24, 20)
    df = ADAPTERS["mimic"].build(root, tmp_path / "out", F, U, seed=0)
    r = df.set_index("image_id")
    assert list(r.index) == [oid("mimic", d) for d in ("d1", "d2", "d3")] and len(df.attrs["skipped"]) == 1
    assert r.loc[oid("mimic", "d2"), "view"] == "LATERAL" and r.loc[oid("mimic", "d1"), "study_date"] == "2180-05-06"
    assert r.loc[oid("mimic", "d1"), "cardiomegaly"] == 0 and pd.isna(r.loc[oid("mimic", "d1"), "support_device"])
    assert r.loc[oid("mimic", "d3"), "atelectasis"] == 1 and pd.isna(r.loc[oid("mimic", "d3"), "cardiomegaly"]) and r.loc[oid("mimic", "d3"), "pleural_effusion"] == 0
    assert r.loc[oid("mimic", "d1"), "abnormal"] == 0 and r.loc[oid("mimic", "d3"), "abnormal"] == 1
    assert r.loc[oid("mimic", "d3"), "split"] == "test" and r.loc[oid("mimic", "d1"), "split"] == r.loc[oid("mimic", "d2"), "split"] == "train"
    _no_raw_ids(df[["patient_id", "masks"]], "10000032")
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-negbio.csv"):
        ADAPTERS["mimic"].build(root, tmp_path / "o2", F, U, labeler="negbio")


def test_tbx11k_fake(tmp_path):
    root = tmp_path / "TBX11K"
    for rel in ("health/h0001.png", "sick/s0001.png", "tb/tb0001.png", "tb/tb0002.png", "tb/tb0003.png", "tb/tb0004.png"):
        _png(root / "imgs" / rel, 30, 30)
    (root / "lists").mkdir()
    (root / "lists/TBX11K_train.txt").write_text("health/h0001.png\nsick/s0001.png\ntb/tb0001.png\ntb/tb0002.png\ntb/tb0009.png\n")
    (root / "lists/TBX11K_val.txt").write_text("tb/tb0003.png\ntb/tb0004.png\n")
    cats = [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}, {"id": 3, "name": "PulmonaryTuberculosis"}]

    def coco(images, anns):
        return {"images": [{"id": i, "file_name": f, "width": 30, "height": 30} for i, f in images],
                "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b} for k, (i, c, b) in enumerate(anns)], "categories": cats}
    (root / "annotations/json").mkdir(parents=True)
    (root / "annotations/json/TBX11K_train.json").write_text(json.dumps(coco([(1, "tb0001.png"), (2, "tb0002.png")], [(1, 1, [2, 3, 5, 6]), (2, 2, [1, 1, 4, 4])])))
    (root / "annotations/json/TBX11K_val.json").write_text(json.dumps(coco([(3, "tb0003.png"), (4, "tb0004.png")], [(3, 3, [1, 1, 4, 4]), (4, 1, [0, 0, 30, 2])])))
    df = ADAPTERS["tbx11k"].build(root, tmp_path / "out", F, U, seed=0)
    r = df.set_index("image_id")
    assert len(df) == 6 and len(df.attrs["skipped"]) == 1
    # "health" vouches only for what TBX11K labels (active TB): the other findings stay unknown
    assert r.loc[oid("tbx11k", "h0001"), "active_tuberculosis"] == 0 and pd.isna(r.loc[oid("tbx11k", "h0001"), "nodule"])
    assert r.loc[oid("tbx11k", "h0001"), "abnormal"] == 0 and (r.drop(index=oid("tbx11k", "h0001"))["abnormal"] == 1).all()
    assert r.loc[oid("tbx11k", "s0001"), "other_findings"] == tbx11k.SICK
    assert r.loc[oid("tbx11k", "tb0002"), "other_findings"] == "ObsoletePulmonaryTuberculosis"
    assert r.loc[oid("tbx11k", "s0001"), "active_tuberculosis"] == 0 and pd.isna(r.loc[oid("tbx11k", "s0001"), "nodule"])
    assert r.loc[oid("tbx11k", "tb0001"), "active_tuberculosis"] == 1 and r.loc[oid("tbx11k", "tb0001"), "label_type"] == "hard"
    assert r.loc[oid("tbx11k", "tb0002"), "active_tuberculosis"] == 0 and pd.isna(r.loc[oid("tbx11k", "tb0003"), "active_tuberculosis"])
    assert pd.isna(r["advanced_tuberculosis"][oid("tbx11k", "tb0001")])
    assert set(r.loc[[oid("tbx11k", "tb0003"), oid("tbx11k", "tb0004")], "split"]) == {"val"}
    m = cv2.imread(str(tmp_path / "out" / data.parse_masks(r.loc[oid("tbx11k", "tb0001"), "masks"])["active_tuberculosis"]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (30, 30) and m[3:9, 2:7].all() and int((m > 0).sum()) == 30


# ------------------------------------------------------------------ the film's verdict: normal means the source says normal
# One film per adapter, in each dataset's layout; ``spec`` is what the source says about it.
def _film_nih(root: Path, spec: str) -> None:
    # the shared 512-px sample's layout: labels.csv with `image`, the files in images/
    _png(root / "images/00000001_000.png")
    pd.DataFrame([{"image": "00000001_000.png", "finding_labels": spec, "follow_up": 0, "patient_id": 1, "age": 61, "sex": "F",
                   "view": "PA"}]).to_csv(root / "labels.csv", index=False)


def _film_vindr(root: Path, spec: str) -> None:
    # "global:X": a global label (image_labels) on a film the readers boxed nothing on ("No finding" locally)
    kind, _, name = spec.rpartition(":")
    _png(root / "train/aaa.png")
    local = "No finding" if kind == "global" else name
    box = [None] * 4 if local == "No finding" else [1, 1, 6, 6]
    pd.DataFrame([["aaa", "R1", local, *box]], columns=["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
                 ).to_csv(root / "annotations/annotations_train.csv", index=False)
    if kind == "global":
        pd.DataFrame([{"image_id": "aaa", "rad_id": "R1", name: 1, "No finding": 0}]).to_csv(root / "annotations/image_labels_train.csv", index=False)


CHEXPERT_HEAD = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
                 "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def _chexpert_values(spec: str) -> dict[str, str]:
    """``"Lung Opacity=1,Edema=-1"`` -> every CheXpert label, blank unless named."""
    given = dict(kv.split("=") for kv in spec.split(",") if kv)
    return {h: f"{float(given[h]):.1f}" if h in given else "" for h in CHEXPERT_HEAD}


def _film_chexpert(root: Path, spec: str) -> None:
    rel = "train/patient00001/study1/view1_frontal.jpg"
    _png(root / rel)
    pd.DataFrame([{"Path": f"{root.name}/{rel}", "Sex": "Male", "Age": "40", "Frontal/Lateral": "Frontal", "AP/PA": "PA",
                   **_chexpert_values(spec)}]).to_csv(root / "train.csv", index=False)


def _film_mimic(root: Path, spec: str) -> None:
    pd.DataFrame({"dicom_id": ["d1"], "subject_id": ["10000032"], "study_id": ["50414267"], "ViewPosition": ["PA"],
                  "StudyDate": ["21800506"]}).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame([{"subject_id": "10000032", "study_id": "50414267", **_chexpert_values(spec)}]
                 ).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    _png(root / "files/p10/p10000032/s50414267/d1.jpg")


def _film_tbx11k(root: Path, spec: str) -> None:
    # "tb:Category+Category", "sick" or "health"
    cls, _, cats = spec.partition(":")
    _png(root / f"imgs/{cls}/f0001.png", 30, 30)
    (root / "lists").mkdir()
    (root / "lists/TBX11K_train.txt").write_text(f"{cls}/f0001.png\n")
    names = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"]
    anns = [{"id": k, "image_id": 1, "category_id": 1 + names.index(c), "bbox": [2, 2, 8, 8]} for k, c in enumerate(filter(None, cats.split("+")))]
    (root / "annotations/json").mkdir(parents=True)
    (root / "annotations/json/TBX11K_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "f0001.png", "width": 30, "height": 30}], "annotations": anns,
        "categories": [{"id": 1 + i, "name": n} for i, n in enumerate(names)]}))


def _film_siim(root: Path, spec: str) -> None:
    _png(root / "train_png/img1.png", 16, 16)
    box = np.zeros((16, 16), np.uint8)
    box[2:5, 3:6] = 255
    pd.DataFrame({"ImageId": ["img1"], " EncodedPixels": [siim.rle_encode(box) if spec == "positive" else spec]}
                 ).to_csv(root / "train-rle.csv", index=False)


def _film_kermany(root: Path, spec: str) -> None:
    rel = "images/normal/IM-0001-0001.jpeg" if spec == "normal" else "images/p/person3_bacteria_10.jpeg"
    _png(root / rel)
    pd.DataFrame({"path": [rel], "label": [spec]}).to_csv(root / "labels.csv", index=False)


FILMS = {"nih": _film_nih, "vindr": _film_vindr, "chexpert": _film_chexpert, "mimic": _film_mimic, "tbx11k": _film_tbx11k,
         "siim": _film_siim, "kermany": _film_kermany}
# (adapter, what the source says, abnormal, other_findings)
UNMAPPED_ONLY = [
    ("nih", "Infiltration", 1, "Infiltration"), ("nih", "Emphysema", 1, "Emphysema"), ("nih", "Fibrosis", 1, "Fibrosis"),
    ("nih", "Pleural_Thickening", 1, "Pleural_Thickening"), ("nih", "Hernia", 1, "Hernia"),
    ("nih", "Infiltration|Emphysema", 1, "Emphysema|Infiltration"),
    ("vindr", "Aortic enlargement", 1, "Aortic enlargement"), ("vindr", "global:Other diseases", 1, "Other diseases"),
    ("vindr", "global:COPD", 1, "COPD"), ("vindr", "global:Tuberculosis", 1, "Tuberculosis"),
    ("chexpert", "Enlarged Cardiomediastinum=1", 1, "Enlarged Cardiomediastinum"), ("chexpert", "Lung Opacity=1", 1, "Lung Opacity"),
    ("chexpert", "Pleural Other=1,Cardiomegaly=0", 1, "Pleural Other"), ("chexpert", "Support Devices=1,No Finding=1", 1, ""),
    ("mimic", "Lung Opacity=1", 1, "Lung Opacity"), ("mimic", "Pleural Other=1,Enlarged Cardiomediastinum=1", 1, "Enlarged Cardiomediastinum|Pleural Other"),
    ("tbx11k", "sick", 1, tbx11k.SICK), ("tbx11k", "tb:ObsoletePulmonaryTuberculosis", 1, "ObsoletePulmonaryTuberculosis"),
    ("tbx11k", "tb:PulmonaryTuberculosis", 1, "PulmonaryTuberculosis"), ("tbx11k", "tb", 1, tbx11k.TB_UNBOXED),
]
OTHER_VERDICTS = [
    ("nih", "No Finding", 0, ""), ("nih", "", NA, ""), ("nih", "Cardiomegaly|Infiltration", 1, "Infiltration"),
    ("vindr", "No finding", 0, ""), ("vindr", "Nodule/Mass", 1, ""),
    ("chexpert", "No Finding=1", 0, ""), ("chexpert", "Edema=-1", NA, ""), ("chexpert", "No Finding=1,Support Devices=-1", NA, ""),
    ("chexpert", "No Finding=1,Edema=-1", NA, ""), ("chexpert", "", NA, ""), ("chexpert", "Cardiomegaly=0", NA, ""),
    ("mimic", "No Finding=1", 0, ""), ("mimic", "Atelectasis=-1", NA, ""),
    ("tbx11k", "health", 0, ""), ("tbx11k", "tb:ActiveTuberculosis", 1, ""),
    ("siim", "positive", 1, ""), ("siim", "-1", NA, ""),
    ("kermany", "normal", 0, ""), ("kermany", "pneumonia_bacterial", 1, ""),
]


def _build_one(tmp_path: Path, adapter: str, spec: str) -> pd.Series:
    root = tmp_path / ("CheXpert-v1.0-small" if adapter == "chexpert" else adapter)
    (root / "annotations").mkdir(parents=True)
    FILMS[adapter](root, spec)
    df = ADAPTERS[adapter].build(root, tmp_path / "out", F, U, seed=0)
    assert len(df) == 1 and df.attrs["skipped"] == []
    data.validate_manifest(df, F, U)
    assert {"abnormal", "other_findings"} <= set(df.columns)
    return df


def _same(got, want) -> bool:
    return pd.isna(got) if want is NA else got == want


@pytest.mark.parametrize("adapter, spec, abnormal, other", UNMAPPED_ONLY, ids=[f"{a}-{s}" for a, s, *_ in UNMAPPED_ONLY])
def test_a_film_with_only_an_unmapped_finding_is_abnormal_never_normal(tmp_path, adapter, spec, abnormal, other):
    df = _build_one(tmp_path, adapter, spec)
    r = df.iloc[0]
    assert r["abnormal"] == 1 and r["other_findings"] == other
    assert data.abnormal_labels(df, F, U).iloc[0] == 1
    # no finding model may learn this film as "normal" (class 0 of three): "others" or unknown
    for f in F:
        assert _same(labels.finding_labels(df, f, 3, F, U).iloc[0], NA if pd.isna(r[f]) else 2 if r[f] == 0 else 1), f
    # the written manifest reads back with its verdict and the source's label names
    back = data.read_manifest(data.write_manifest(df, tmp_path / "m.csv"), F, U)
    assert back.loc[0, "abnormal"] == 1 and back.loc[0, "other_findings"] == other


@pytest.mark.parametrize("adapter, spec, abnormal, other", OTHER_VERDICTS, ids=[f"{a}-{s or 'nothing'}" for a, s, *_ in OTHER_VERDICTS])
def test_normal_and_unknown_films(tmp_path, adapter, spec, abnormal, other):
    df = _build_one(tmp_path, adapter, spec)
    r = df.iloc[0]
    assert _same(r["abnormal"], abnormal) and r["other_findings"] == other
    assert _same(data.abnormal_labels(df, F, U).iloc[0], abnormal)
    if abnormal is NA:  # unknown films enter no class of a three-class model
        assert labels.finding_labels(df, "cardiomegaly", 3, F, U).isna().all()


def test_nih_infiltration_only_is_others_for_the_cardiomegaly_model(tmp_path):
    df = _build_one(tmp_path, "nih", "Infiltration")
    assert df.loc[0, "cardiomegaly"] == 0 and df.loc[0, "abnormal"] == 1
    assert labels.finding_labels(df, "cardiomegaly", 3, F, U).iloc[0] == 2  # "others", never 0 (normal)
    assert data.abnormal_labels(df, F, U).iloc[0] == 1


def test_nih_no_finding_vouches_only_for_what_nih_labels(tmp_path):
    r = _build_one(tmp_path, "nih", "No Finding").iloc[0]
    assert all(r[c] == 0 for c in NIH_LABELLED) and all(pd.isna(r[c]) for c in NIH_NEVER) and r["abnormal"] == 0


@pytest.mark.parametrize("adapter, spec, zero, unknown", [
    ("chexpert", "No Finding=1", ("cardiomegaly", "pneumothorax", "nodule", "fracture"), ("support_device", "pneumoperitoneum", "active_tuberculosis")),
    ("vindr", "No finding", ("nodule", "interstitial_opacity", "fracture"), ("support_device", "pneumoperitoneum", "mediastinal_widening")),
    ("tbx11k", "health", ("active_tuberculosis",), ("advanced_tuberculosis", "nodule", "support_device")),
    ("kermany", "normal", ("pneumonia",), F),
], ids=["chexpert", "vindr", "tbx11k", "kermany"])
def test_a_normal_film_leaves_what_its_source_never_labels_unknown(tmp_path, adapter, spec, zero, unknown):
    r = _build_one(tmp_path, adapter, spec).iloc[0]
    assert r["abnormal"] == 0
    assert all(r[c] == 0 for c in zero) and all(pd.isna(r[c]) for c in unknown)


def test_code_labels_zero_fills_only_labelled_blanks_and_verdict():
    out = C.code_labels((), {"a", "b"}, ["a", "b", "c", "d"], normal=True, explicit={"b": NA}, normal_keeps_na=("a",))
    assert out["b"] == 0 and out["a"] == 0 and pd.isna(out["c"]) and pd.isna(out["d"])
    out = C.code_labels((), {"a"}, ["a"], normal=True, explicit={"a": NA}, normal_keeps_na=("a",))
    assert pd.isna(out["a"])  # e.g. CheXpert's support_device: No Finding ignores devices
    assert C.verdict(True, True) == 1 and C.verdict(False, True) == 0 and pd.isna(C.verdict(False, False))
    assert C.other_findings(["Infiltration", "Emphysema", "Infiltration"]) == "Emphysema|Infiltration" and C.other_findings([]) == ""


# ------------------------------------------------------------------ NIH layouts: the shared 512-px sample, errors
@pytest.mark.realdata
def test_nih_512_real(tmp_path):
    root = require_shared("realdata", "nih_cxr14_512")
    df = build_manifest("nih", root, tmp_path, F, U, seed=0)
    lab = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    assert len(df) == len(lab) == 319 and df.attrs["skipped"] == [] and df["image_id"].is_unique
    data.validate_manifest(df, F, U)
    assert not {"age", "sex", "Patient Age", "Patient Gender", "follow_up"} & set(df.columns)
    by = df.set_index(df["path"].map(lambda p: Path(p).name))
    got = by.loc[lab["image"], "abnormal"].to_numpy()
    normal = (lab["finding_labels"] == "No Finding").to_numpy()
    assert (got[~normal] == 1).all() and (got[normal] == 0).all() and normal.sum() == 48
    only_unmapped = lab["finding_labels"].map(lambda s: set(s.split("|")) <= set(nih.UNMAPPED)).to_numpy()
    assert only_unmapped.sum() > 0 and (by.loc[lab["image"][only_unmapped], "abnormal"] == 1).all()
    assert by.loc[lab["image"][only_unmapped], list(NIH_LABELLED)].eq(0).all().all()
    assert by["other_findings"].str.contains("Infiltration").sum() == 64
    assert df[list(NIH_NEVER)].isna().all().all()
    assert (df["cardiomegaly"] == 1).sum() == 34 and set(df["view"]) <= {"PA", "AP"}
    back = data.read_manifest(tmp_path / data.MANIFEST_NAME, F, U)
    assert back["abnormal"].equals(df["abnormal"]) and list(back["other_findings"]) == list(df["other_findings"])


@pytest.mark.parametrize("columns, missing", [
    (["image", "finding_labels", "patient_id"], "'view'"),
    (["path", "finding_labels", "patient_id", "view"], "'image' or 'path' + 'image_index'"),
    (["image_index", "patient_id", "view", "age"], "'finding_labels'"),
], ids=["no-view", "no-image", "no-labels"])
def test_nih_labels_csv_missing_columns_is_one_line(tmp_path, capsys, columns, missing):
    from scxnn.cli import main

    root = tmp_path / "nih"
    root.mkdir()
    pd.DataFrame([["x"] * len(columns)], columns=columns).to_csv(root / "labels.csv", index=False)
    with pytest.raises(ValueError, match="labels.csv lacks columns") as e:
        nih.build(root, tmp_path / "out", F, U)
    assert missing in str(e.value) and "\n" not in str(e.value)
    assert main(["manifest", "nih", str(root), "--out", str(tmp_path / "cli"), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nih:") and "labels.csv" in err[0] and missing in err[0]


def test_nih_data_entry_missing_columns_is_a_value_error(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["No Finding"]}).to_csv(root / "Data_Entry_2017.csv", index=False)
    with pytest.raises(ValueError, match="Data_Entry_2017.csv lacks columns 'Patient ID', 'View Position'"):
        nih.build(root, tmp_path / "out", F, U)


def test_nih_data_entry_wins_over_labels_csv(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    _nih_official(root)
    # a sample's labels.csv beside it (here one that would fail): the official file is read
    pd.DataFrame({"image": ["00000001_000.png"], "finding_labels": ["Hernia"]}).to_csv(root / "labels.csv", index=False)
    df = nih.build(root, tmp_path / "out", F, U, seed=0)
    assert len(df) == 6 and (df["path"].str.contains("images_00")).all()
    assert (df.set_index(df["path"].map(lambda p: Path(p).name)).loc["00000004_000.png", "split"]) == "test"  # official split


# ------------------------------------------------------------------ splits by patient and by image
@pytest.mark.parametrize("official", [None, {"i00": "test", "i01": "test", "i02": "val"}])
def test_patients_sharing_an_image_land_in_one_split(official, caplog):
    def rows(copy: tuple[int, int] = (-1, -1)) -> list[dict]:
        out = [{"_raw_id": f"i{i:02d}", "image_id": f"i{i:02d}", "patient_id": f"p{i:02d}", "source_sha256": f"h{copy[1] if i == copy[0] else i}"}
               for i in range(30)]
        C.assign_splits(out, (0.6, 0.2, 0.2), 0, official)
        return out

    plain = {r["patient_id"]: r["split"] for r in rows()}
    a = next(int(p[1:]) for p, s in plain.items() if s == "train")
    b = next(int(p[1:]) for p, s in plain.items() if s == "test")
    linked = rows((a, b))  # a's film is a copy of b's, filed under patient a
    assert linked[a]["split"] == linked[b]["split"] == ("test" if official else linked[a]["split"])
    data.check_image_splits(pd.DataFrame(linked))
    if official:  # the dataset's own split is kept; the copy's patient follows it, and the log says so
        assert [r["split"] for r in linked[:3]] == ["test", "test", "val"]
        assert "1 patient(s) of the official training pool" in caplog.text


# ------------------------------------------------------------------ errors and registry
@pytest.mark.parametrize("name, expected", [("kermany", "labels.csv"), ("nih", "Data_Entry_2017"), ("vindr", "annotations_train.csv"),
                                            ("chexpert", "train.csv"), ("mimic", "mimic-cxr-2.0.0-metadata.csv"),
                                            ("siim", "train-rle.csv"), ("tbx11k", "TBX11K_train.txt")])
def test_missing_label_file_is_named(tmp_path, name, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=expected):
        ADAPTERS[name].build(tmp_path / "empty", tmp_path / "out", F, U)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_manifest(name, tmp_path / "nowhere", tmp_path / "out", F, U)


def test_registry_contract():
    targets = set(F) | set(U)
    for name, mod in ADAPTERS.items():
        assert callable(mod.build) and isinstance(mod.UNMAPPED, tuple) and isinstance(mod.NORMAL_LABELS, tuple), name
        assert {v for v in mod.FINDING_MAP.values() if v} <= targets, name
        assert not set(mod.UNMAPPED) & set(mod.FINDING_MAP), name
    with pytest.raises(ValueError, match="unknown dataset"):
        build_manifest("nope", ".", ".", F, U)
