"""The method on real films (issue 8): params/kermany.yaml end to end on ../shared/realdata/kermany_dev
at a tiny protocol (64 px, one short epoch: the plumbing, not the accuracy), then `scxnn evaluate`
on a folder of Kermany-format images in the upstream layout, and on the dev set itself, whose
training patients must be refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, require_shared

from scxnn.cli import main
from scxnn.config import load_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]  # every test reads ../shared/realdata/kermany_dev; ~3 min

TINY = ["preprocess.size=64", "train.max_epochs=1", "train.max_images_per_epoch=16", "train.max_val_images=24",
        "train.augment=false", "evaluate.bootstrap=200", "evaluate.batch_size=16"]


def _sets(tmp: Path, root: Path) -> list[str]:
    return [*TINY, f"paths.data={tmp / 'data'}", f"paths.runs={tmp / 'runs'}", f"paths.reports={tmp / 'reports'}", f"data.root={root}"]


@pytest.fixture(scope="module")
def kermany_run(tmp_path_factory):
    root = require_shared("realdata", "kermany_dev")
    tmp = tmp_path_factory.mktemp("kermany")
    sets = _sets(tmp, root)
    args = [a for s in sets for a in ("--set", s)]
    cfg = load_config("kermany", sets)
    from scxnn.pipeline import start_step
    from scxnn.sources import build_study_cache

    start_step(cfg, "01_preprocessing")
    manifest, skipped = build_study_cache(cfg, progress=False)
    for f in cfg.findings:
        assert main(["train", "--profile", "kermany", *args, "--finding", f, "--no-progress"]) == 0
    assert main(["ensemble", "--profile", "kermany", *args, "--no-progress"]) == 0
    return cfg, tmp, manifest, skipped, args


def test_adapter_source_splits_by_patient_into_weak_labelled_films(kermany_run):
    cfg, _, manifest, skipped, _ = kermany_run
    assert len(manifest) == 460 and len(skipped) == 0
    assert set(manifest["label_type"]) == {"weak"} and set(manifest["site"]) == {"kermany"}
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    # Normal films are 0 for both subtypes; each pneumonia film is positive for exactly one.
    sub = manifest[list(cfg.findings)].astype(float)
    assert (sub.sum(axis=1) <= 1).all() and (sub.sum(axis=1) == 0).sum() == 154


@pytest.mark.parametrize("finding", load_config("kermany").findings)
def test_classification_only_models_trained_on_weak_labels(kermany_run, finding):
    import torch

    cfg, tmp, *_ = kermany_run
    model_dir = tmp / "runs" / "02_train_disease_model" / finding
    ckpt = torch.load(model_dir / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["model"]["decoder"] == "none"
    assert ckpt["config"]["train"]["stage1_labels"] == "any"
    h = pd.read_csv(model_dir / "history.csv")
    assert set(h["stage"]) == {1} and h["val_auc"].notna().all()


def _upstream_copy(manifest: pd.DataFrame, root: Path, dst: Path) -> int:
    """The test-split films of the dev set, re-laid out as the upstream download
    (test/{NORMAL,PNEUMONIA}/<original name>): another folder, another layout, same format."""
    labels = pd.read_csv(root / "labels.csv", dtype=str)
    by_name = dict(zip(labels["path"].map(lambda p: Path(p).name), labels["label"]))
    n = 0
    for p in manifest.loc[manifest["split"] == "test", "path"]:
        src = Path(p) if Path(p).is_absolute() else None
        name = Path(p).name
        src = next(root.glob(f"images/*/{name}")) if src is None or not src.is_file() else src
        cls = "NORMAL" if by_name[name] == "normal" else "PNEUMONIA"
        (dst / "test" / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst / "test" / cls / name)
        n += 1
    return n


def test_evaluate_scores_another_folder_without_retraining(kermany_run, tmp_path, capsys):
    cfg, tmp, manifest, _, args = kermany_run
    root = require_shared("realdata", "kermany_dev")
    raw = pd.read_csv(tmp / "data" / "raw" / "manifest.csv", dtype=str)
    n = _upstream_copy(raw, root, tmp_path / "upstream")
    assert n > 20
    assert main(["manifest", "kermany", str(tmp_path / "upstream"), "--out", str(tmp_path / "m"), "--profile", "kermany", *args]) == 0
    out = tmp_path / "eval"
    before = {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("*") if p.is_file()}
    assert main(["evaluate", "--models", str(tmp / "runs"), "--manifest", str(tmp_path / "m" / "manifest.csv"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "point threshold" in printed and "strict threshold" in printed
    assert "validation:" in printed and "certif" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["films"] == n and summary["dropped_seen_patients"] == 0 and summary["sets"] == "kermany"
    assert 0 <= summary["auc"] <= 1 and summary["auc_lo"] <= summary["auc"] <= summary["auc_hi"]
    assert summary["target"] == 0.99 and summary["meets_target"] in ("certified", "point estimate only", "below target")
    tables = out / "tables" / "kermany"
    for name in ("table2_normal_vs_abnormal", "table2_strict_threshold", "thresholds", "svm_auc", "auc_per_finding",
                 "published_comparison", "missed_cases"):
        assert (tables / f"{name}.csv").is_file() and (tables / f"{name}.md").is_file(), name
    pub = pd.read_csv(tables / "published_comparison.csv")
    assert pub["source"].str.startswith("Kermany").any() and (pub["source"] == "ours").sum() == 2
    assert (out / "figures" / "kermany" / "roc.png").is_file()
    assert (out / "figures" / "kermany" / "figure_gradcam.png").is_file()  # where the models look on these films
    assert summary["unknown_films"] == 0  # Kermany calls every film normal or pneumonia
    # Nothing was retrained or refitted; no raw patient name reached the outputs.
    assert before == {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("*") if p.is_file()}
    for f in [*tables.glob("*.csv"), *tables.glob("*.md"), out / "summary.json"]:
        assert "person" not in f.read_text(), f
    assert "person" not in pd.read_parquet(out / "logits.parquet").drop(columns=["path"]).to_csv()


def test_evaluate_refuses_patients_the_run_has_seen(kermany_run, tmp_path, capsys):
    cfg, tmp, manifest, _, _ = kermany_run
    dev = tmp / "data" / "raw" / "manifest.csv"
    assert main(["evaluate", "--models", str(tmp / "runs"), "--manifest", str(dev), "--out", str(tmp_path / "e1"), "--no-progress"]) == 2
    assert "--drop-seen" in capsys.readouterr().err
    assert not (tmp_path / "e1" / "summary.json").exists()
    assert main(["evaluate", "--models", str(tmp / "runs"), "--manifest", str(dev), "--out", str(tmp_path / "e2"), "--drop-seen", "--no-progress"]) == 0
    s = json.loads((tmp_path / "e2" / "summary.json").read_text())
    assert s["films"] == int((manifest["split"] == "test").sum()) and s["dropped_seen_patients"] > 0


@pytest.mark.parametrize("hashed", [True, False])
def test_evaluate_finds_training_films_copied_under_new_patients(kermany_run, tmp_path, capsys, hashed):
    """Two training films, renamed and filed under new patient ids, are caught by their bytes: by the
    manifest's source_sha256 before any preprocessing or, where the column is empty, by the hashes
    preprocessing takes, before any scoring."""
    from scxnn.data import hash_patient

    _, tmp, *_ = kermany_run
    raw_dir = tmp / "data" / "raw"
    raw = pd.read_csv(raw_dir / "manifest.csv", dtype=str, keep_default_na=False)
    raw["path"] = [p if Path(p).is_absolute() else str(raw_dir / p) for p in raw["path"]]
    test, copies = raw[raw["split"] == "test"], raw[raw["split"] == "train"].head(2).copy()
    (tmp_path / "films").mkdir()
    for i, src in enumerate(copies["path"]):
        shutil.copy(src, tmp_path / "films" / f"copy{i}{Path(src).suffix}")
    copies["image_id"] = ids = ["copy-0", "copy-1"]
    copies["patient_id"] = [hash_patient(f"someone-new:{i}") for i in ids]
    copies["path"] = [str(tmp_path / "films" / f"copy{i}{Path(p).suffix}") for i, p in enumerate(copies["path"])]
    copies["source_sha256"] = copies["source_sha256"] if hashed else ""
    pd.concat([test, copies]).to_csv(tmp_path / "manifest.csv", index=False)
    args = ["evaluate", "--models", str(tmp / "runs"), "--manifest", str(tmp_path / "manifest.csv"), "--no-progress", "--out"]

    assert main([*args, str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert "2 film(s) are identical to training or validation films" in err and "copy-0, copy-1" in err and "--drop-seen" in err
    assert "were in the run's training" not in err and not (tmp_path / "e1" / "summary.json").exists()

    assert main([*args, str(tmp_path / "e2"), "--drop-seen"]) == 0
    s = json.loads((tmp_path / "e2" / "summary.json").read_text())
    assert s["films"] == len(test) and s["dropped_seen_images"] == 2 and s["dropped_seen_patients"] == 0
    assert "2 identical film(s) under other patient ids" in capsys.readouterr().out
    assert not pd.read_parquet(tmp_path / "e2" / "logits.parquet")["image_id"].isin(ids).any()
    assert (tmp_path / "e2" / "png" / "images" / "copy-0.png").is_file() == (not hashed)  # preprocessed only when unhashed


def test_evaluate_needs_a_manifest(kermany_run, tmp_path, capsys):
    _, tmp, *_ = kermany_run
    assert main(["evaluate", "--models", str(tmp / "runs"), "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "scxnn manifest" in capsys.readouterr().err


def test_notebooks_04_to_08_run_on_a_weak_label_profile(kermany_run, tmp_path):
    """The report notebooks on a profile without masks, unseen findings or variants: each skips what
    does not apply (and says so) instead of failing, and 04 writes the published comparison."""
    import yaml

    from scxnn.pipeline import run_notebook

    cfg, tmp, *_ , args = kermany_run
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args[1::2])}
    for nb in ("04_evaluation", "05_novel_diseases", "06_gradcam", "07_ablations", "08_transfer"):
        run_notebook(ROOT / "notebooks" / f"{nb}.ipynb", tmp_path / f"{nb}.ipynb", {"profile": "kermany", "overrides": overrides})
    tables = tmp / "reports" / "tables" / "kermany"
    assert (tables / "published_comparison.md").is_file() and (tables / "table2_normal_vs_abnormal.csv").is_file()
    assert not (tables / "table7_two_vs_three_class.csv").exists() and not (tables / "table9_unseen_findings.csv").exists()
    assert not (tables / "gradcam_localization.csv").exists()
    assert (tmp / "reports" / "figures" / "kermany" / "figure5_gradcam.png").is_file()
    text = (tmp_path / "05_novel_diseases.ipynb").read_text()
    assert "Table 9 is skipped" in text
    # NIH labels neither pneumonia subtype: the transfer table has the normal-vs-abnormal row alone.
    if (ROOT.parent / "shared" / "realdata" / "nih_cxr14_512").is_dir():
        assert pd.read_csv(tables / "transfer_nih.csv")["measure"].tolist() == ["normal_vs_abnormal"]
    meta = json.loads((tables / "published_comparison.json").read_text())
    assert meta["reference"] == "published" and "Kermany" in meta["thesis"]


def test_evaluate_refuses_models_trained_on_other_preprocessing(kermany_run, tmp_path, capsys, monkeypatch):
    import sys

    import scxnn.pixels

    _, tmp, *_ = kermany_run
    # As if the preprocessing code had changed since the models were trained: every module that
    # imported the fingerprint function by name sees the new one.
    original = scxnn.pixels.fingerprint
    for mod in [m for name, m in sys.modules.items() if name.split(".")[0] == "scxnn"]:
        if getattr(mod, "fingerprint", None) is original:
            monkeypatch.setattr(mod, "fingerprint", lambda p: "0" * 12)
    dev = tmp / "data" / "raw" / "manifest.csv"
    assert main(["evaluate", "--models", str(tmp / "runs"), "--manifest", str(dev), "--out", str(tmp_path / "e"), "--drop-seen", "--no-progress"]) == 2
    assert "trained on preprocessing" in capsys.readouterr().err
    assert not (tmp_path / "e" / "summary.json").exists()


def test_certify_a_site_then_screen_with_its_certificate(kermany_run, tmp_path, capsys):
    """The workflow of docs/definite-normal.md: validate (step 03), certify a site on a labelled sample, screen.
    99% cannot be certified on a sample this small, so certify refuses (exit 3) and says what it
    would take; predict refuses that certificate. A lower target is certified, and predict then
    reports definite_normal with the site's threshold."""
    cfg, tmp, _, _, args = kermany_run
    root = require_shared("realdata", "kermany_dev")
    raw = pd.read_csv(tmp / "data" / "raw" / "manifest.csv", dtype=str)
    films = tmp_path / "site"
    n = _upstream_copy(raw, root, films)
    assert main(["manifest", "kermany", str(films), "--out", str(tmp_path / "m"), "--profile", "kermany", *args]) == 0
    manifest, run = str(tmp_path / "m" / "manifest.csv"), str(tmp / "runs")
    capsys.readouterr()

    assert main(["certify", "--models", run, "--manifest", manifest, "--out", str(tmp_path / "c99"), "--site", "kermany_test", "--no-progress"]) == 3
    printed = capsys.readouterr().out
    assert "REFUSED" in printed and "368 abnormal patients" in printed
    refused = json.loads((tmp_path / "c99" / "certificate.json").read_text())
    assert refused["certified"] is False and refused["films"] == n and refused["abnormal_needed"] == 368
    assert "person" not in (tmp_path / "c99" / "site_scores.csv").read_text()  # hashed ids only
    assert main(["predict", "--models", run, str(films), "--out", str(tmp_path / "p0"), "--certificate", str(tmp_path / "c99"),
                 "--no-progress", "--no-overlays"]) == 2
    assert "not certified" in capsys.readouterr().err

    assert main(["certify", "--models", run, "--manifest", manifest, "--out", str(tmp_path / "c60"), "--site", "kermany_test",
                 "--target", "0.6", "--no-progress"]) == 0
    cert = json.loads((tmp_path / "c60" / "certificate.json").read_text())
    assert cert["certified"] and cert["sensitivity_lo"] >= 0.6 and cert["target"] == 0.6
    # Films whose source says neither normal nor abnormal have no label to count: left out, counted.
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    m.loc[m.index[m["abnormal"] == "0"][:5], "abnormal"] = ""
    m.to_csv(tmp_path / "m" / "unknown.csv", index=False)
    assert main(["certify", "--models", run, "--manifest", str(tmp_path / "m" / "unknown.csv"), "--out", str(tmp_path / "c60u"),
                 "--site", "kermany_test", "--target", "0.6", "--no-progress"]) == 0
    unknown = json.loads((tmp_path / "c60u" / "certificate.json").read_text())
    assert (unknown["unknown_films"], unknown["films"], unknown["abnormal_films"]) == (5, n - 5, cert["abnormal_films"])
    capsys.readouterr()
    assert main(["predict", "--models", run, str(films), "--out", str(tmp_path / "p1"), "--certificate", str(tmp_path / "c60"),
                 "--no-progress", "--no-overlays"]) == 0
    pred = pd.read_csv(tmp_path / "p1" / "predictions.csv")
    assert len(pred) == n and set(pred["decision"]) <= {"definite_normal", "needs_review", "rejected"}  # no likely_normal with a certificate
    assert (pred["threshold"] == cert["threshold"]).all()
    calm = (pred["score"] < cert["threshold"]) & ~pred["ood_flag"].astype(bool)
    printed = capsys.readouterr().out
    shifted = "batch out of distribution" in printed
    # The certificate switched the site monitor on, in its folder; this batch is its first film run.
    assert "site monitor (new)" in printed and (tmp_path / "c60" / "monitor.jsonl").is_file()
    alarm = pred["monitor_alarm"].astype(str).str.lower().eq("true").any()
    assert (pred["decision"] == "definite_normal").sum() == (0 if shifted or alarm else int(calm.sum()))
    html = (tmp_path / "p1" / "report.html").read_text()
    assert "site kermany_test: threshold" in html and "batch" in html and "Site monitor" in html
    assert main(["monitor", "show", "--certificate", str(tmp_path / "c60"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["films"] == int(pred["score"].notna().sum())

    # Without the certificate the tiny run (which cannot certify 99%) reports no film as definite_normal.
    assert main(["predict", "--models", run, str(films), "--out", str(tmp_path / "p2"), "--no-progress", "--no-overlays"]) == 0
    plain = pd.read_csv(tmp_path / "p2" / "predictions.csv")
    assert not (plain["decision"] == "definite_normal").any()
    assert plain.loc[plain["decision"] == "likely_normal", "reason"].str.contains("scxnn certify").all()


def test_figure5_of_classification_only_models_has_no_placeholder_panels(kermany_run):
    # No decoder, so no reconstruction column: one panel per finding, never a "no decoder" placeholder.
    from scxnn.cam import figure5
    from scxnn.checkpoints import find_model_dirs, load_models

    cfg, tmp, *_ = kermany_run
    models = load_models(find_model_dirs(tmp / "runs" / "02_train_disease_model"))
    for n in (1, 2):  # one film per finding, or a row of n films each (as step 08 and `scxnn evaluate` draw)
        fig = figure5(cfg, models, films_per_finding=n)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert len(fig.axes) == n * len(cfg.findings) and "no decoder" not in texts, n
        assert "decoder" not in fig._suptitle.get_text()


def test_no_reconstruction_figure_for_a_classification_only_model(kermany_run):
    from scxnn.training_figures import reconstruction_examples

    cfg, tmp, *_ = kermany_run
    finding = next(iter(cfg.findings))
    assert reconstruction_examples(cfg, finding, tmp / "runs" / "02_train_disease_model" / finding / "best.pt") is None
