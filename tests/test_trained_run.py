"""scxnn.trained_run: what the commands share about a trained run: its config, the films it has
seen (and leaving them out of a new set), its id, and the site certificates bound to it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from scxnn.checkpoints import RunIncomplete
from scxnn.config import RESOLVED_NAME, load_config, save_resolved
from scxnn.trained_run import Certificate, CertificateError, load_certificate, load_run_config, pct, run_id, score_manifest


# A stand-in of a trained run (test_certify.py uses it too): step 03's three files, nothing else.
def _run(tmp_path, svm=b"svm-1"):
    step3 = tmp_path / "run" / "03_svm_ensemble"
    step3.mkdir(parents=True, exist_ok=True)
    for name, data in (("svm.skops", svm), ("thresholds.json", b"{}"), ("ood.npz", b"gate")):
        (step3 / name).write_bytes(data)
    return tmp_path / "run"


def _cert(run, certified=True, **kw) -> Certificate:
    base = dict(site="site_b", run_id=run_id(run), target=0.99, ci=0.95, certified=certified, threshold=-0.5, films=900,
                patients=800, abnormal_films=450, abnormal_patients=400, missed=0, sensitivity=1.0, sensitivity_lo=0.9908,
                sensitivity_hi=1.0, specificity=0.6, specificity_lo=0.55, specificity_hi=0.65, auto_normal=0.3,
                auto_normal_lo=0.27, auto_normal_hi=0.33, ood_flagged_share=0.02, abnormal_needed=368,
                reason="the exact lower 95% bound reaches 99%", created="2026-11-30")
    base.update(kw)
    return Certificate(**base)


def _write(folder, cert):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "certificate.json").write_text(json.dumps(asdict(cert)))
    return folder


# --------------------------------------------------------------------------- its site certificates


def test_a_certificate_loads_for_its_own_run_only(tmp_path):
    run = _run(tmp_path)
    folder = _write(tmp_path / "cert", _cert(run))
    assert load_certificate(folder, run).threshold == -0.5
    assert load_certificate(folder / "certificate.json").site == "site_b"
    other = _run(tmp_path / "other", svm=b"svm-2")  # retrained: another SVM, another run id
    with pytest.raises(CertificateError, match="another run"):
        load_certificate(folder, other)


def test_a_refused_or_foreign_file_is_no_certificate(tmp_path):
    run = _run(tmp_path)
    refused = _write(tmp_path / "refused", _cert(run, certified=False, reason="needs at least 368 abnormal patients"))
    with pytest.raises(CertificateError, match="not certified: needs at least 368"):
        load_certificate(refused, run)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "certificate.json").write_text('{"threshold": 5}')
    with pytest.raises(CertificateError, match="not a certificate"):
        load_certificate(tmp_path / "junk", run)
    with pytest.raises(FileNotFoundError, match="scxnn certify"):
        load_certificate(tmp_path / "nowhere", run)


def test_an_older_certificate_loads_and_a_foreign_key_is_refused(tmp_path):
    run = _run(tmp_path)
    old = asdict(_cert(run, ci=0.90))
    for key in ("unknown_films", "confidence"):  # written before these fields existed
        del old[key]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "certificate.json").write_text(json.dumps(old))
    cert = load_certificate(tmp_path / "old", run)
    assert cert.confidence == pytest.approx(0.95) and cert.unknown_films == 0  # the lower end of its 90% interval
    assert "exact one-sided 95.0% lower bound" in cert.describe()
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "certificate.json").write_text(json.dumps({**asdict(_cert(run)), "threshold_override": 3.0}))
    with pytest.raises(CertificateError, match=r"unknown keys \['threshold_override'\]"):
        load_certificate(tmp_path / "extra", run)


# --------------------------------------------------------------------------- the films it has seen


def _seen_run(tmp_path: Path, with_sha: bool = True) -> Path:
    step3 = tmp_path / "run" / "03_svm_ensemble"
    step3.mkdir(parents=True)
    t = pd.DataFrame({"patient_id": ["pa", "pb", "pc"], "split": ["train", "val", "test"], "source_sha256": ["ha", "hb", "hc"]})
    (t if with_sha else t.drop(columns="source_sha256")).to_parquet(step3 / "logits.parquet")
    return tmp_path / "run"


def test_seen_films_are_the_runs_training_and_validation_patients_and_hashes(tmp_path, caplog):
    from scxnn.trained_run import seen_films

    assert seen_films(_seen_run(tmp_path / "new")) == ({"pa", "pb"}, {"ha", "hb"})
    assert "predates source_sha256" not in caplog.text
    assert seen_films(_seen_run(tmp_path / "old", with_sha=False)) == ({"pa", "pb"}, set())
    assert "predates source_sha256" in caplog.text and "cannot be checked" in caplog.text


@pytest.mark.parametrize("drop_seen", [False, True])
def test_copies_of_seen_films_under_new_patients_are_an_overlap(drop_seen):
    from scxnn.trained_run import PatientOverlap, leave_out_seen

    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(6)], "patient_id": ["pa", "pa", "new1", "new2", "new3", "new4"],
                       "source_sha256": ["x1", "x2", "ha", "hb", "hc", ""]})
    seen = ({"pa", "pb"}, {"ha", "hb"})
    if not drop_seen:
        with pytest.raises(PatientOverlap, match=r"1 patient\(s\) \(2 films\).* and 2 film\(s\) are identical .*image_id i2, i3.*--drop-seen"):
            leave_out_seen(df, seen, False, "m.csv")
        return
    kept, n = leave_out_seen(df, seen, True, "m.csv")
    assert list(kept["image_id"]) == ["i4", "i5"] and n == {"patients": 1, "images": 2}


def test_seen_films_come_from_the_full_record_when_only_a_sample_was_scored(tmp_path):
    from scxnn.trained_run import seen_films

    run = _seen_run(tmp_path)  # its logits table scored only pa (train) and pb (val)
    pd.DataFrame({"patient_id": ["pa", "pz", "pb"], "split": ["train", "train", "val"],
                  "source_sha256": ["ha", "hz", "hb"]}).to_parquet(run / "03_svm_ensemble" / "seen_films.parquet")
    # pz was never scored (step 03 scores a sample of the training films) but the run trained on it.
    assert seen_films(run) == ({"pa", "pz", "pb"}, {"ha", "hz", "hb"})


# --------------------------------------------------------------------------- the run and its id


@pytest.mark.parametrize("changed", ["svm.skops", "thresholds.json", "ood.npz"])
def test_the_run_id_changes_with_each_file_a_certificate_binds_to(tmp_path, changed):
    run = _run(tmp_path)
    before = run_id(run)
    assert len(before) == 16 and int(before, 16) >= 0 and run_id(run) == before  # short hex, the same every time
    (run / "03_svm_ensemble" / "val_scores.csv").write_text("other files do not count\n")
    assert run_id(run) == before
    (run / "03_svm_ensemble" / changed).write_bytes(b"refitted")
    assert run_id(run) != before
    (run / "03_svm_ensemble" / changed).unlink()  # a missing file is not the same as any content
    assert run_id(run) not in (before, run_id(_run(tmp_path / "again")))


def test_a_folder_without_step_03_config_is_no_trained_run(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(RunIncomplete, match=f"not a trained study run: no .*{RESOLVED_NAME}"):
        load_run_config(run)
    save_resolved(load_config("smoke", {"seed": 7}), run / "03_svm_ensemble")
    cfg = load_run_config(run)
    assert cfg.profile == "smoke" and cfg.seed == 7
    # A trained run is still no manifest: scoring a missing one says how to build it, before any film is read.
    with pytest.raises(FileNotFoundError, match="scxnn manifest"):
        score_manifest(run, tmp_path / "none.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("x, shown", [(0.99, "99%"), (0.975, "97.5%"), (0.5, "50%"), (0.9999, "99.99%"), (1.0, "100%")])
def test_a_target_or_confidence_prints_as_typed(x, shown):
    assert pct(x) == shown


@pytest.mark.parametrize("certified", [True, False], ids=["certified", "refused"])
def test_a_certificate_describes_itself_in_one_line(tmp_path, certified):
    cert = _cert(_run(tmp_path), certified=certified, reason="needs at least 368 abnormal patients")
    text = cert.describe()
    assert "\n" not in text and text.startswith("site site_b: ")
    if certified:
        assert "threshold -0.5000 certifies sensitivity >= 99% (exact one-sided 97.5% lower bound 0.990" in text
        assert "auto-normal 30.0% of 900 films" in text
    else:
        assert text == "site site_b: not certified: needs at least 368 abnormal patients"
