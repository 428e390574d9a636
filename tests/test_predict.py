"""scxnn.predict: inputs, plausibility and the safety gate of the decision, with a stand-in model.

The end-to-end runs (trained smoke run, real DICOM samples, bf16 vs fp32) are in test_pipeline.py,
which trains the smoke run they need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import scxnn.predict as P

from scxnn.config import load_config
from scxnn.ensemble import Thresholds
from scxnn.ood import batch_shift
from scxnn.predict import DECISIONS, PENDING, Screener, decide, predict, screen_file


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
    quantile: float = 0.99  # validation films under the threshold: the batch check's reference
    n_val: int = 100


def _thresholds(certified: bool, strict: float = -0.5, point: float = 0.0) -> Thresholds:
    return Thresholds(point=point, strict=strict if certified else -9.0, target=0.99, n_val=500, val_sensitivity=1.0,
                      val_auto_normal=0.4, n_val_abnormal=400 if certified else 47, n_val_abnormal_patients=400 if certified else 47,
                      point_sensitivity_lo=0.99 if certified else 0.925, strict_sensitivity_lo=0.991 if certified else 0.925,
                      strict_auto_normal=0.3 if certified else 0.0, certified=certified, abnormal_needed=368)


@dataclass
class _FakeScreener:
    """A Screener's policy (the real properties) around a stand-in scorer: the score is set by the
    test, per file name where ``by_name`` says so."""

    score_value: float = -1.0
    ood_value: float = 0.0
    threshold: float = 0.0
    cfg: object = field(default_factory=lambda: load_config("smoke"))
    ood: _Gate = field(default_factory=_Gate)
    thresholds: Thresholds = field(default_factory=lambda: _thresholds(True))
    certificate: object = None
    monitor: object = None
    threshold_name: str = "point"
    by_name: dict = field(default_factory=dict)  # file stem -> (score, ood)
    calls: int = 0
    current: str = ""

    certified_below = Screener.certified_below
    batch_reference = Screener.batch_reference
    certification = Screener.certification

    @property
    def findings(self):
        return list(self.cfg.findings)

    def score(self, img8):
        self.calls += 1
        assert img8.dtype == np.uint8 and img8.shape == (self.cfg.preprocess.size,) * 2
        p = {f: 0.1 for f in self.findings}
        p["nodule"] = 0.7
        score, ood = self.by_name.get(self.current, (self.score_value, self.ood_value))
        return {"logits": {}, "p_target": p, "score": score, "ood_score": ood, "ood_flag": ood > self.ood.threshold}


def test_find_images_recurses_filters_and_says_what_it_could_not_search(tmp_path, monkeypatch):
    import os

    from scxnn.dicom import find_images

    a = _png(tmp_path / "in" / "a.png", _film())
    b = _png(tmp_path / "in" / "sub" / "b.jpg", _film())
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / "scan").write_bytes(b"DICM")  # extension-less files are DICOM candidates
    (tmp_path / "in" / "scan.bmp").write_bytes(b"BM")  # unknown formats are tried, and rejected with the reason
    _png(tmp_path / "in" / ".hidden" / "c.png", _film())
    (tmp_path / "in" / "sub" / "loop").symlink_to(tmp_path / "in")  # a symbolic-link loop
    (tmp_path / "in" / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    (tmp_path / "in" / "locked").mkdir()
    _png(tmp_path / "in" / "locked" / "d.png", _film())
    real_scandir = os.scandir

    def scandir(path):  # tests run as root in CI, where chmod 000 would not lock anything
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    named = tmp_path / "other.txt"
    named.write_text("named explicitly, so it is read (and rejected) whatever its name")
    files, problems = find_images([tmp_path / "in", named, a, tmp_path / "missing.dcm"])
    assert files == [a, tmp_path / "in" / "scan", tmp_path / "in" / "scan.bmp", b, named]
    why = {p.name: reason for p, reason in problems}
    assert set(why) == {"loop", "dangling.dcm", "locked", "missing.dcm"}
    assert "loop" in why["loop"] and "Permission denied" in why["locked"] and "broken" in why["dangling.dcm"]


def test_predict_gives_unsearchable_inputs_a_row_and_hides_names_when_asked(tmp_path):
    s = _FakeScreener(score_value=-1.0)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    inputs = tmp_path / "in"
    _png(inputs / "DOE_JOHN_1970.png", _film())
    (inputs / "sub" / "loop").parent.mkdir(parents=True)
    (inputs / "sub" / "loop").symlink_to(inputs)
    t = predict(None, [inputs], tmp_path / "out", overlays=False, progress=False, screener=s)
    assert len(t) == 2 and set(t["decision"]) == {"rejected", "definite_normal"}
    assert "loop" in t.loc[t["decision"] == "rejected", "reason"].iloc[0]
    # report.html is the page meant to be shared: film ids, never file names, unless asked.
    assert "DOE_JOHN" not in (tmp_path / "out" / "report.html").read_text()
    assert "DOE_JOHN" in (tmp_path / "out" / "predictions.csv").read_text()
    t = predict(None, [inputs], tmp_path / "anon", overlays=False, progress=False, screener=s, anonymise_names=True)
    assert not any("DOE_JOHN" in p.read_text(errors="ignore") for p in (tmp_path / "anon").rglob("*") if p.is_file())
    assert all(f.startswith("film-") for f in t["file"])
    predict(None, [inputs], tmp_path / "named", overlays=False, progress=False, screener=s, names_in_report=True)
    assert "DOE_JOHN" in (tmp_path / "named" / "report.html").read_text()


def test_the_report_links_each_film_at_the_models_resolution(tmp_path):
    # Issue 18: a 128-px thumbnail is too small to judge a film. films/ holds each one as the models
    # saw it, and the report links to it; a refused film that decoded gets its picture too.
    import re

    from scxnn.pixels import read_png

    s = _FakeScreener(score_value=-1.0)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    inputs = tmp_path / "in"
    _png(inputs / "a.png", _film((320, 300)))
    _png(inputs / "strip.png", _film((40, 400)))  # decodes, refused by the plausibility gate
    t = predict(None, [inputs], tmp_path / "out", overlays=False, progress=False, screener=s)
    films = t.set_index(t["file"].map(lambda f: Path(f).name))["image"]
    size = s.cfg.preprocess.size
    assert read_png(tmp_path / "out" / films["a.png"]).shape == (size, size)
    assert t.loc[t["file"].str.endswith("strip.png"), "decision"].item() == "rejected"
    assert read_png(tmp_path / "out" / films["strip.png"]).shape[1] >= 256  # its preview, large enough to see
    html = (tmp_path / "out" / "report.html").read_text()
    links = re.findall(r'<a class="full" href="([^"]+)"', html)
    assert sorted(links) == sorted(films) and all((tmp_path / "out" / h).is_file() for h in links)
    t = predict(None, [inputs], tmp_path / "small", overlays=False, progress=False, screener=s, full_size=False)
    assert not (tmp_path / "small" / "films").exists() and "full size" not in (tmp_path / "small" / "report.html").read_text()


@pytest.mark.parametrize("score, ood, expected", [
    (-1.0, 0.0, PENDING),  # would be normal: settled only by the batch-level check at the end
    (0.5, 0.0, "needs_review"),  # the SVM says abnormal
    (-1.0, 5.0, "needs_review"),  # normal-looking but out of distribution: never definite_normal
])
def test_the_film_level_decision_and_its_reason(tmp_path, score, ood, expected):
    s = _FakeScreener(score_value=score, ood_value=ood)
    row, img8 = screen_file(_png(tmp_path / "f.png", _film()), s)
    assert row["decision"] == expected and img8 is not None
    assert row["top_finding"] == "nodule" and row["p_nodule"] == 0.7
    if expected == PENDING:
        assert "< threshold" in row["reason"] and "batch-level check" in row["reason"]
    else:
        assert ("abnormal" in row["reason"]) == (score >= 0) and ("out of distribution" in row["reason"]) == (ood > 1)


@dataclass(frozen=True)
class _Cert:
    site: str = "site_b"
    threshold: float = -0.8
    ood_flagged_share: float = 0.02
    films: int = 600

    def describe(self):
        return f"site {self.site}: threshold {self.threshold}"


_IN, _OUT = batch_shift(np.zeros(50, bool), 0.01, 100, 0.1, 0.01), batch_shift(np.ones(50, bool), 0.01, 100, 0.1, 0.01)


@pytest.mark.parametrize("case, score, flagged, batch, run_certified, cert, expected, says", [
    ("certified run, below strict", -1.0, False, _IN, True, None, "definite_normal", "the run's validation set"),
    ("certified run, between strict and point", -0.2, False, _IN, True, None, "likely_normal", "between the certified threshold"),
    ("uncertified run", -1.0, False, _IN, False, None, "likely_normal", "scxnn certify"),
    ("uncertified run, site certificate", -1.0, False, _IN, False, _Cert(), "definite_normal", "certificate of site site_b"),
    ("site certificate, above its threshold", -0.5, False, _IN, True, _Cert(), "needs_review", "abnormal"),
    ("shifted batch", -1.0, False, _OUT, True, None, "needs_review", "batch out of distribution: 100% of 50 films"),
    ("shifted batch, certificate", -1.0, False, _OUT, True, _Cert(), "needs_review", "batch out of distribution"),
    ("abnormal", 0.5, False, _IN, True, None, "needs_review", "abnormal: SVM score"),
    ("flagged film", -1.0, True, _IN, True, None, "needs_review", "out of distribution: OOD score"),
    ("batch not checked yet", -1.0, False, None, True, None, PENDING, "awaiting"),
    ("--threshold strict, uncertified run", -1.0, False, _IN, False, "strict", "needs_review", "calls nothing normal"),
])
def test_a_film_is_definite_normal_only_when_certified_in_an_unshifted_batch(case, score, flagged, batch, run_certified, cert,
                                                                             expected, says):
    s = _FakeScreener(thresholds=_thresholds(run_certified), certificate=None if cert == "strict" else cert)
    if cert == "strict":
        s.threshold_name, s.threshold = "strict", s.thresholds.strict
    elif cert is not None:
        s.threshold = cert.threshold  # what Screener.from_run does with a certificate
    row = {"score": score, "ood_flag": flagged, "ood_score": 5.0 if flagged else 0.0, "top_finding": "nodule", "top_probability": 0.7}
    decision, reason = decide(row, s, batch)
    assert decision == expected, reason
    assert says in reason


def test_the_batch_check_withholds_every_normal_call_from_a_shifted_batch(tmp_path):
    """12 would-be-normal films, 6 of them flagged by the per-film gate: a population the models
    were not trained on. None of the other 6 may be auto-reported; each row says why. The same
    films without the flagged ones form an in-distribution batch that keeps its normal calls."""
    shifted = tmp_path / "shifted"
    for i in range(12):
        _png(shifted / f"f{i:02d}.png", _film(seed=i))
    by_name = {f"f{i:02d}.png": (-1.0, 5.0 if i % 2 else 0.0) for i in range(12)}
    s = _FakeScreener(by_name=by_name)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    original = P.score_film

    def tracked(row, pixels, why, screener):
        screener.current = Path(row["file"]).name
        return original(row, pixels, why, screener)

    P.score_film, saved = tracked, P.score_film
    try:
        t = predict(None, [shifted], tmp_path / "out1", overlays=False, progress=False, screener=s)
        ok = tmp_path / "ok"
        for i in range(0, 12, 2):
            _png(ok / f"f{i:02d}.png", _film(seed=i))
        t_ok = predict(None, [ok], tmp_path / "out2", overlays=False, progress=False, screener=s)
    finally:
        P.score_film = saved
    assert t.attrs["batch"].shifted and (t["decision"] == "needs_review").all()
    calm = t[~t["ood_flag"].astype(bool)]
    assert len(calm) == 6 and calm["reason"].str.contains("batch out of distribution: 50% of 12 films").all()
    assert not t_ok.attrs["batch"].shifted and (t_ok["decision"] == "definite_normal").all()
    saved_csv = pd.read_csv(tmp_path / "out1" / "predictions.csv")
    assert (saved_csv["decision"] == "needs_review").all()  # the final decisions, not the pending ones
    html = (tmp_path / "out1" / "report.html").read_text()
    assert "batch out of distribution" in html and "certification" in html


def test_a_site_screening_film_by_film_is_watched_across_calls(tmp_path):
    """A PACS hook: one predict call per film. In-distribution films keep every definite_normal
    call; once the stream shifts (each film flagged, as adult films at a pediatric site mostly
    are) the monitor fires, and then no film is definite_normal, an unflagged one included, each
    reason naming the alarm; report.html draws the stream with its alarm line."""
    from scxnn.monitor import Monitor, design_rule

    s = _FakeScreener()
    s.models, s.device, s.bf16 = {}, type("D", (), {"type": "cpu"})(), False
    rule = design_rule(0.01, 500, 150, 200, max_share=0.10, alpha=0.01, shift_share=0.5, arl=1000)
    s.monitor = Monitor(tmp_path / "cert" / "monitor.jsonl", "cert-a", rule, "site_b")
    decisions = []
    for i in range(14):
        shifted, last = i >= 6, i == 13
        s.ood_value = 5.0 if shifted and not last else 0.0  # the last film passes the per-film gate
        film = _png(tmp_path / "in" / f"f{i:02d}.png", _film(seed=i))
        t = predict(None, [film], tmp_path / "out" / str(i), overlays=False, progress=False, full_size=False, screener=s)
        decisions.append(t.iloc[0]["decision"])
    assert decisions[:6] == ["definite_normal"] * 6
    assert decisions[-1] == "needs_review" and "site monitor alarm since film" in t.iloc[0]["reason"]
    watch = t.attrs["monitor"]
    assert watch.alarm is not None and watch.alarm["film"] <= 6 + 5 and watch.films == 14
    assert bool(pd.read_csv(tmp_path / "out" / "13" / "predictions.csv")["monitor_alarm"].iloc[0])
    html = (tmp_path / "out" / "13" / "report.html").read_text()
    assert "Site monitor" in html and "alarm line h =" in html and "<polyline" in html


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
    row, shown = screen_file(tmp_path / "hip.dcm", s)
    assert row["decision"] == "rejected" and "out of scope" in row["reason"] and "non_chest:HIP" in row["scope_flags"]
    # It decoded, so the report can show it: the reader checks the refusal with their own eyes.
    assert shown is not None and shown.dtype == np.uint8 and shown.shape == (256, 256) and shown.std() > 10
    assert screen_file(broken, s)[1] is None  # nothing decoded, nothing to show
    assert s.calls == 0  # nothing above reached the models


def test_predict_writes_csv_thumbnails_report_and_resumes(tmp_path, monkeypatch):
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
    # An uncertified run (validation too small to certify 99%) never reports definite_normal.
    s_unc = _FakeScreener(score_value=-1.0, thresholds=_thresholds(False))
    s_unc.models, s_unc.threshold_name, s_unc.device, s_unc.bf16 = {}, "point", s.device, False
    t_unc = predict(None, [inputs], tmp_path / "unc", overlays=False, progress=False, screener=s_unc)
    assert (t_unc["decision"] == "likely_normal").sum() == 3 and not (t_unc["decision"] == "definite_normal").any()
    csv = pd.read_csv(out / "predictions.csv")
    assert len(csv) == 4 and {"file", "decision", "reason", "score", "threshold", "p_nodule", "ood_flag"} <= set(csv.columns)
    assert len(list((out / "thumbnails").glob("*.png"))) == 3
    html = (out / "report.html").read_text()
    assert "f0.png" not in html and t["film_id"].iloc[0] in html and "definite" in html
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


@pytest.mark.parametrize("case", ["foreign_predictions", "unreadable_predictions", "report_without_predictions",
                                  "mistyped_input", "empty_folder"])
def test_what_a_person_typed_is_checked_before_the_models_load(tmp_path, case):
    # run_dir is a folder with no run in it: reaching the model loading would raise RunIncomplete,
    # so each of these must be refused first, and nothing in --out may be touched.
    from scxnn.predict import OutputFolderInUse, RunIncomplete

    inputs, out = tmp_path / "in", tmp_path / "out"
    _png(inputs / "a.png", _film())
    out.mkdir()
    given = [inputs]
    if case == "foreign_predictions":
        (out / "predictions.csv").write_text("patient,label\nP1,pneumonia\n")
    elif case == "unreadable_predictions":
        (out / "predictions.csv").write_bytes(b"\xff\xfe\x00garbage")
    elif case == "report_without_predictions":
        (out / "report.html").write_text("<html>someone's report</html>")
    elif case == "mistyped_input":
        given = [inputs, tmp_path / "inptus"]
    else:
        (tmp_path / "empty").mkdir()
        given = [tmp_path / "empty"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    error = OutputFolderInUse if "predictions" in case or "report" in case else FileNotFoundError
    with pytest.raises(error) as e:
        predict(tmp_path / "no_run_here", given, out, overlays=False, progress=False)
    assert not isinstance(e.value, RunIncomplete)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    if case == "mistyped_input":
        assert "inptus" in str(e.value)


@pytest.mark.parametrize("case", ["mistyped_input", "empty_folder", "foreign_predictions"])
def test_cli_predict_refuses_a_user_mistake_with_exit_2_and_no_traceback(tmp_path, capsys, case):
    from scxnn.cli import main

    inputs, out = tmp_path / "in", tmp_path / "out"
    _png(inputs / "a.png", _film())
    out.mkdir()
    given = [str(inputs)]
    if case == "mistyped_input":
        given = [str(tmp_path / "nope")]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        given = [str(tmp_path / "empty")]
    else:
        (out / "predictions.csv").write_text("a,b\n1,2\n")
    assert main(["predict", *given, "--models", str(tmp_path / "no_run"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_a_refused_film_that_decoded_is_shown_in_the_report(tmp_path):
    s = _FakeScreener(score_value=-1.0)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    inputs = tmp_path / "in"
    _png(inputs / "tiny.png", _film((48, 48)))  # decodes, then the gate refuses it (smaller than a radiograph)
    (inputs / "junk.png").write_bytes(b"not an image at all")
    t = predict(None, [inputs], tmp_path / "out", overlays=False, progress=False, screener=s)
    assert set(t["decision"]) == {"rejected"} and len(list((tmp_path / "out" / "thumbnails").glob("*.png"))) == 1
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and "no image" in page  # the junk file has none
