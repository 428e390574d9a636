"""scxnn.predict: inputs, plausibility and the safety gate of the decision, with a stand-in model.

The end-to-end runs (trained smoke run, real DICOM samples, bf16 vs fp32) are in test_pipeline.py,
which trains the smoke run they need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from scxnn.config import load_config
from scxnn.predict import DECISIONS, Screener, collect_inputs, plausibility, predict, screen_file


def _film(size=(320, 300), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    img = 120 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 8, size)
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


@dataclass
class _Gate:
    threshold: float = 1.0


@dataclass
class _FakeScreener:
    """What screen_file needs from a Screener: the score is set by the test."""

    score_value: float = -1.0
    ood_value: float = 0.0
    threshold: float = 0.0
    cfg: object = field(default_factory=lambda: load_config("smoke"))
    ood: _Gate = field(default_factory=_Gate)
    calls: int = 0

    @property
    def findings(self):
        return list(self.cfg.findings)

    def score(self, img8):
        self.calls += 1
        assert img8.dtype == np.uint8 and img8.shape == (self.cfg.preprocess.size,) * 2
        p = {f: 0.1 for f in self.findings}
        p["nodule"] = 0.7
        return {"logits": {}, "p_target": p, "score": self.score_value, "ood_score": self.ood_value,
                "ood_flag": self.ood_value > self.ood.threshold}


def test_collect_inputs_recurses_filters_and_keeps_named_files(tmp_path):
    a = _png(tmp_path / "in" / "a.png", _film())
    b = _png(tmp_path / "in" / "sub" / "b.jpg", _film())
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "scan").write_bytes(b"DICM")  # extension-less files are DICOM candidates
    _png(tmp_path / "in" / ".hidden" / "c.png", _film())
    named = tmp_path / "other.txt"
    named.write_text("named explicitly, so it is read (and rejected) whatever its name")
    got = collect_inputs([tmp_path / "in", named, a])
    assert got == [a, tmp_path / "in" / "scan", b, named]


def test_plausibility_refuses_what_cannot_be_a_chest_film():
    assert plausibility(_film((320, 300))) is None
    assert "smaller than a radiograph" in plausibility(_film((100, 80)))
    assert "aspect ratio" in plausibility(_film((300, 900)))
    flat = np.full((300, 300), 7.0)
    flat[0, 0] = 9.0
    assert "contrast" in plausibility(flat)


@pytest.mark.parametrize("score, ood, expected", [
    (-1.0, 0.0, "definite_normal"),
    (0.5, 0.0, "needs_review"),  # the SVM says abnormal
    (-1.0, 5.0, "needs_review"),  # normal-looking but out of distribution: never definite_normal
])
def test_the_decision_and_its_reason(tmp_path, score, ood, expected):
    s = _FakeScreener(score_value=score, ood_value=ood)
    row, img8 = screen_file(_png(tmp_path / "f.png", _film()), s)
    assert row["decision"] == expected and img8 is not None
    assert row["top_finding"] == "nodule" and row["p_nodule"] == 0.7
    if expected == "definite_normal":
        assert "< threshold" in row["reason"]
    else:
        assert ("abnormal" in row["reason"]) == (score >= 0) and ("out of distribution" in row["reason"]) == (ood > 1)


def test_bad_and_out_of_scope_files_are_rejected_without_scoring(tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    s = _FakeScreener()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    row, _ = screen_file(broken, s)
    assert row["decision"] == "rejected" and row["reason"].startswith("unreadable")
    row, _ = screen_file(tmp_path / "missing.dcm", s)
    assert row["decision"] == "rejected" and "unreadable" in row["reason"]
    row, _ = screen_file(_png(tmp_path / "tiny.png", _film((48, 48))), s)  # below smoke's 64 px input
    assert row["decision"] == "rejected" and row["reason"].startswith("implausible")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "hip.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation = "CR", "HIP", "MONOCHROME2"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 300, 300, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (_film((300, 300)).astype(np.uint16) * 16).tobytes()
    pydicom.dcmwrite(tmp_path / "hip.dcm", ds, enforce_file_format=True)
    row, _ = screen_file(tmp_path / "hip.dcm", s)
    assert row["decision"] == "rejected" and "out of scope" in row["reason"] and "non_chest:HIP" in row["scope_flags"]
    assert s.calls == 0  # nothing above reached the models


def test_predict_writes_csv_thumbnails_report_and_resumes(tmp_path, monkeypatch):
    import pandas as pd

    import scxnn.predict as P

    s = _FakeScreener(score_value=-1.0)
    s.models = {}
    s.threshold_name, s.device, s.bf16 = "point", type("D", (), {"type": "cpu"})(), False
    inputs = tmp_path / "in"
    for i in range(3):
        _png(inputs / f"f{i}.png", _film(seed=i))
    (inputs / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    t = predict(None, [inputs], out, overlays=False, progress=False, screener=s)
    assert len(t) == 4 and set(t["decision"]) <= set(DECISIONS)
    assert (t["decision"] == "rejected").sum() == 1 and (t["decision"] == "definite_normal").sum() == 3
    csv = pd.read_csv(out / "predictions.csv")
    assert len(csv) == 4 and {"file", "decision", "reason", "score", "threshold", "p_nodule", "ood_flag"} <= set(csv.columns)
    assert len(list((out / "thumbnails").glob("*.png"))) == 3
    html = (out / "report.html").read_text()
    assert "f0.png" in html and "definite" in html
    # A rerun scores only what is new or changed.
    calls = s.calls
    _png(inputs / "f9.png", _film(seed=9))
    t2 = predict(None, [inputs], out, overlays=False, progress=False, screener=s)
    assert len(t2) == 5 and s.calls == calls + 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_run_without_its_steps_is_refused(tmp_path):
    from scxnn.predict import RunIncomplete

    with pytest.raises(RunIncomplete, match="make ensemble"):
        Screener.from_run(tmp_path)
