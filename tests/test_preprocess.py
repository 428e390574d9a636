"""scxnn.pixels and scxnn.batch: the thesis' steps, mask geometry, dilation, and the resumable batch."""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from scxnn.config import load_config
from scxnn.batch import preprocess_inputs
from scxnn.pixels import (
    Geometry,
    clip_and_normalise,
    dilate_mask,
    fingerprint,
    percentiles,
    preprocess_pixels,
    read_png,
    reference_pipeline,
)

from conftest import PARAMS, require_shared


@pytest.fixture
def pre():
    return load_config("smoke", params=PARAMS).preprocess


def _radiograph(h=300, w=240, seed=0, bits=12):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.3 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, 0.02, (h, w))
    img[:5, :5] = 5.0  # hot pixels the percentile clip must ignore
    return np.clip(img / 5.0 * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.uint8])
def test_percentiles_match_numpy(dtype):
    rng = np.random.default_rng(3)
    img = (rng.random((257, 199)) * 200 - (50 if dtype == np.int16 else 0)).astype(dtype)
    got = percentiles(img, 0.5, 99.5)
    want = np.percentile(img, [0.5, 99.5], method="inverted_cdf")
    span = float(img.max()) - float(img.min())
    assert np.allclose(got, want, atol=span / 65535 * 2 + 1e-6)


def test_clip_then_minmax_spans_0_255_and_ignores_outliers(pre):
    img = _radiograph()
    out = clip_and_normalise(img, pre)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    # The hot corner is clipped at the 99.5th percentile instead of compressing everything else.
    assert np.median(out) > 60


def test_pipeline_pads_to_square_keeping_aspect(pre):
    p = dataclasses.replace(pre, size=128, contrast="none")
    img = np.zeros((300, 150), np.uint16)
    img[:, :] = 1000
    img[100:200, 50:100] = 3000  # a bright block in the middle of a tall image
    img[0, 0] = 0
    out, geo = preprocess_pixels(img, p)
    assert out.shape == (128, 128) and (geo.side, geo.offset) == (300, (0, 75))
    assert out[:, :20].max() == 0 and out[:, -20:].max() == 0  # zero padding left and right
    ys, xs = np.nonzero(out > 200)
    h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
    assert abs(h / w - 2.0) < 0.15  # the 100x50 block keeps its 2:1 aspect


def test_constant_image_is_an_error(pre):
    with pytest.raises(ValueError, match="no contrast left"):
        preprocess_pixels(np.full((64, 64), 7, np.uint16), pre)


@pytest.mark.parametrize("contrast", ["clahe", "histeq", "none"])
def test_contrast_variants_differ(pre, contrast):
    img = _radiograph()
    outs = {c: preprocess_pixels(img, dataclasses.replace(pre, contrast=c))[0] for c in ("clahe", "histeq", "none")}
    others = [c for c in outs if c != contrast]
    assert all(not np.array_equal(outs[contrast], outs[o]) for o in others)


def test_fingerprint_tracks_pixel_settings_only(pre):
    assert fingerprint(pre) == fingerprint(dataclasses.replace(pre, dilation=0.5))
    assert fingerprint(pre) != fingerprint(dataclasses.replace(pre, clahe_clip_limit=3.0))
    assert fingerprint(pre) != fingerprint(dataclasses.replace(pre, size=pre.size * 2))


def test_mask_follows_pad_and_resize():
    geo = Geometry(300, 150, 100)
    mask = np.zeros((300, 150), np.uint8)
    mask[120:180, 60:90] = 1
    img = np.zeros((300, 150), np.float32)
    img[120:180, 60:90] = 1
    m = geo.apply_to_mask(mask)
    warped = geo.resize(geo.pad(img))
    assert set(np.unique(m)) <= {0, 255}
    assert np.array_equal(m > 0, warped >= 0.5)
    assert abs((m > 0).sum() - 60 * 30 / 9) < 30  # area scales with (100/300)^2
    with pytest.raises(ValueError, match="differs"):
        geo.apply_to_mask(np.zeros((10, 10), np.uint8))
    assert geo.output_spacing_mm(0.15) == pytest.approx(0.45)


def test_tiny_lesion_survives_downscaling():
    geo = Geometry(1000, 1000, 250)
    mask = np.zeros((1000, 1000), np.uint8)
    mask[500:506, 500:506] = 255  # 6 px lesion -> 1.5 px
    assert geo.apply_to_mask(mask).sum() > 0


def test_dilation_fraction_and_mm(pre):
    m = np.zeros((100, 100), np.uint8)
    m[50, 50] = 255
    frac = dilate_mask(m, dataclasses.replace(pre, dilation_unit="fraction", dilation=0.05))
    assert (frac > 0).sum() > 50 and frac[50, 55] > 0 and frac[50, 58] == 0
    mm = dilate_mask(m, dataclasses.replace(pre, dilation_unit="mm", dilation=10.0), spacing_mm=2.0)
    assert mm[50, 55] > 0 and mm[50, 57] == 0
    assert np.array_equal(dilate_mask(m, dataclasses.replace(pre, dilation=0.0)), m)
    with pytest.raises(ValueError, match="pixel spacing"):
        dilate_mask(m, dataclasses.replace(pre, dilation_unit="mm", dilation=5.0), spacing_mm=None)


def test_reference_pipeline_agrees_roughly(pre):
    """The benchmark's baseline must compute the same thing, or the ratio means nothing."""
    p = dataclasses.replace(pre, size=128, contrast="none")
    img = _radiograph(256, 256)
    ours = preprocess_pixels(img, p)[0].astype(float)
    ref = reference_pipeline(img, p).astype(float)
    assert np.abs(ours - ref).mean() < 3.0


# --------------------------------------------------------------------------- the batch step


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
    assert len(df) == 4 and (df["scope_flags"].fillna("") == "").all()
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
