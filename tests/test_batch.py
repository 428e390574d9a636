"""scxnn.batch: the resumable preprocessing batch, its manifest, skipped files and crash isolation."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
import pytest

from scxnn.batch import preprocess_inputs
from scxnn.config import load_config
from scxnn.pixels import read_png

from conftest import PARAMS, require_shared
from test_pixels import _radiograph


def _dicom(path, patient_name="DOE^JOHN", patient_id="MRN-12345", value_scale=1):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = _radiograph(96, 80) * value_scale
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.InstitutionName = patient_name, patient_id, "General Hospital"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    _dicom(d / "a.dcm")
    _dicom(d / "sub" / "DOE_JOHN_chest.dcm")
    cv2.imwrite(str(d / "c.png"), (_radiograph(90, 70) // 4).astype(np.uint8))
    (d / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    (d / "notes.txt").write_text("not an image, ignored")
    return d


def test_batch_writes_cache_manifest_and_skipped(folder, tmp_path):
    cfg = load_config("smoke", {"data.workers": 2}, params=PARAMS)
    out = tmp_path / "out"
    df, skipped = preprocess_inputs(cfg, [folder], out, progress=False)
    assert len(df) == 3 and list(skipped["reason"].str.len() > 0) == [True]
    assert skipped["source"].iloc[0].endswith("broken.dcm")
    assert pd.read_csv(out / "skipped.csv").shape[0] == 1
    for rel in df["path"]:
        img = read_png(out / rel)
        assert img.shape == (cfg.preprocess.size, cfg.preprocess.size) and img.dtype == np.uint8
    assert (out / "config.resolved.yaml").is_file() and (out / "manifest.csv").is_file()
    assert set(df["modality"]) == {"CR", ""} and df["scope_flags"].eq("").all()


def test_batch_keeps_phi_out(folder, tmp_path):
    cfg = load_config("smoke", {"data.workers": 1}, params=PARAMS)
    out = tmp_path / "out"
    preprocess_inputs(cfg, [folder], out, progress=False)
    for f in out.rglob("*"):
        if f.suffix in (".csv", ".json", ".yaml"):
            text = f.read_text()
            for phi in ("DOE", "JOHN", "MRN-12345", "General Hospital"):
                assert phi not in text.replace(str(folder), ""), f"{phi} leaked into {f.name}"


def test_batch_resumes_without_redoing_work(folder, tmp_path):
    cfg = load_config("smoke", {"data.workers": 1}, params=PARAMS)
    out = tmp_path / "out"
    df, _ = preprocess_inputs(cfg, [folder], out, progress=False)
    stamp = {p: os.stat(out / p).st_mtime_ns for p in df["path"]}
    victim = out / df["path"].iloc[0]
    victim.unlink()  # as if killed before this image was written
    df2, _ = preprocess_inputs(cfg, [folder], out, progress=False)
    assert df2["path"].tolist() == df["path"].tolist()
    assert victim.is_file()
    for p in df["path"].iloc[1:]:
        assert os.stat(out / p).st_mtime_ns == stamp[p]  # finished images were not redone
    # Other settings (another fingerprint) redo everything.
    cfg3 = cfg.replace({"preprocess.clahe_clip_limit": 3.0})
    preprocess_inputs(cfg3, [folder], out, progress=False)
    assert any(os.stat(out / p).st_mtime_ns != stamp[p] for p in df["path"].iloc[1:])


def test_manifest_input_keeps_labels_and_maps_masks(tmp_path):
    from scxnn.data import format_masks, hash_patient, new_manifest, parse_masks, write_manifest

    cfg = load_config("smoke", {"data.workers": 1}, params=PARAMS)
    src = tmp_path / "src"
    (src / "m").mkdir(parents=True)
    _dicom(src / "x.dcm")
    mask = np.zeros((96, 80), np.uint8)
    mask[40:60, 20:40] = 255
    cv2.imwrite(str(src / "m" / "x_nodule.png"), mask)
    row = {"image_id": "x1", "patient_id": hash_patient("p"), "study_date": "", "site": "internal", "split": "train",
           "label_type": "hard", **{f: 0 for f in cfg.findings}, **{f: 0 for f in cfg.unseen_findings},
           "nodule": 1, "masks": format_masks({"nodule": "m/x_nodule.png"}), "view": "PA", "path": "x.dcm", "source_sha256": ""}
    write_manifest(new_manifest([row], list(cfg.findings), list(cfg.unseen_findings)), src / "manifest.csv")
    df, skipped = preprocess_inputs(cfg, [src / "manifest.csv"], tmp_path / "out", progress=False)
    assert skipped.empty and df.loc[0, "nodule"] == 1 and df.loc[0, "split"] == "train"
    m = read_png(tmp_path / "out" / parse_masks(df.loc[0, "masks"])["nodule"])
    assert m.shape == (cfg.preprocess.size,) * 2 and 0 < (m > 0).mean() < 0.2
    # The labels corrected since (an adapter that now reads more of its source): a resumed run keeps
    # the pixels it made and takes the manifest's labels, never the record's old ones.
    stamp = os.stat(tmp_path / "out" / df.loc[0, "path"]).st_mtime_ns
    fixed = {**row, "cardiomegaly": 1, "other_findings": "Emphysema", "view": "AP"}
    write_manifest(new_manifest([fixed], list(cfg.findings), list(cfg.unseen_findings)), src / "manifest.csv")
    df2, _ = preprocess_inputs(cfg, [src / "manifest.csv"], tmp_path / "out", progress=False)
    assert os.stat(tmp_path / "out" / df2.loc[0, "path"]).st_mtime_ns == stamp
    assert (df2.loc[0, "cardiomegaly"], df2.loc[0, "other_findings"], df2.loc[0, "view"]) == (1, "Emphysema", "AP")
    # Another set of lesion masks is another preprocessing of the film: redone, not resumed.
    write_manifest(new_manifest([{**fixed, "nodule": 0, "masks": ""}], list(cfg.findings), list(cfg.unseen_findings)), src / "manifest.csv")
    df3, _ = preprocess_inputs(cfg, [src / "manifest.csv"], tmp_path / "out", progress=False)
    assert df3.loc[0, "masks"] == "" and df3.loc[0, "nodule"] == 0


def crash_on_bad(job):
    """Stands in for a decoder that aborts its process on one file (as gdcm can)."""
    from scxnn.batch import _process

    if job.source.endswith("broken.dcm"):
        os.abort()
    return _process(job)


@pytest.mark.timeout(300)
def test_a_worker_crash_skips_only_the_culprit(folder, tmp_path, monkeypatch):
    import scxnn.batch as P

    cfg = load_config("smoke", params=PARAMS)
    jobs, _ = P.jobs_from_paths([folder], tmp_path / "out", cfg.preprocess)
    results = list(P.run_isolated(jobs, workers=2, fn=crash_on_bad))
    reasons = {P.Path(j.source).name: r[2] for j, r in zip(sorted(jobs, key=lambda j: j.row["image_id"]), sorted(results, key=lambda r: r[0]))}
    assert "crashed" in reasons["broken.dcm"]
    assert sum(r[1] is not None for r in results) == 3 and len(results) == 4


@pytest.mark.realdata
def test_cli_on_the_real_dicom_samples(tmp_path, capsys):
    """The issue's acceptance run: every decodable file processed with the right polarity, the rest in
    skipped.csv with the reason."""
    from scxnn.cli import main

    src = require_shared("realdata", "dicom_cr_samples")
    out = tmp_path / "out"
    assert main(["preprocess", str(src), "--out", str(out), "--profile", "smoke", "--no-progress"]) == 0
    df, skipped = pd.read_csv(out / "manifest.csv"), pd.read_csv(out / "skipped.csv")
    assert len(df) + len(skipped) == 20
    # Out-of-scope films (hip, extremity) are skipped with the reason, as predict rejects them: the
    # cache holds only what the models may be trained or evaluated on.
    assert skipped["reason"].str.contains("JPEG Extended").sum() == 2
    out_of_scope = skipped["reason"].str.startswith("out of scope")
    assert out_of_scope.sum() == 14 and skipped.loc[out_of_scope, "reason"].str.contains("non_chest").all()
    assert len(df) == 4 and (df["scope_flags"].isna() | df["scope_flags"].astype(str).eq("")).all()
    # Polarity on the genuine chest films (the 15-bit MONOCHROME1 WG04 pair and the 8-bit MONOCHROME2
    # one): lungs come out darker than the mediastinum and spine. The deliberately mislabelled
    # MONOCHROME1 copy (8-bit MONOCHROME1) is excluded: the reader follows its header (see dicom.py).
    chest = df[(df["body_part"] == "CHEST") & ~((df["photometric"] == "MONOCHROME1") & (df["bits_stored"] == 8))]
    assert len(chest) == 3 and set(chest["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    for rel in chest["path"]:
        img = read_png(out / rel).astype(float)
        n = img.shape[0]
        rows = slice(int(0.3 * n), int(0.6 * n))
        lungs = np.r_[img[rows, int(0.2 * n):int(0.35 * n)].ravel(), img[rows, int(0.65 * n):int(0.8 * n)].ravel()].mean()
        centre = img[rows, int(0.45 * n):int(0.55 * n)].mean()
        assert lungs < centre - 20, (rel, lungs, centre)
