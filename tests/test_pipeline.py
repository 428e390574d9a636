"""The study end to end: every notebook through papermill with the smoke profile, via `make`.

This is the check that `make reports` works from a fresh clone, and that Make's file targets make a
second run a no-op and a change rerun only what depends on it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

import pytest

from scxnn.config import load_config
from scxnn.pipeline import STEPS, require_step, start_step

from conftest import ROOT, run_make

pytestmark = pytest.mark.pipeline
PROFILE = "smoke"
EXEC = ROOT / "reports" / "executed" / PROFILE


def _make(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_make(*args, profile=PROFILE, check=check)


@pytest.fixture(scope="module")
def smoke_reports(smoke_study):
    return EXEC


def test_every_notebook_is_executed(smoke_reports):
    cfg = load_config(PROFILE)
    expected = {f"{s}.ipynb" for s in STEPS if s != "02_train_disease_model"}
    expected |= {f"02_train_disease_model/{f}.ipynb" for f in cfg.findings}
    got = {p.relative_to(smoke_reports).as_posix() for p in smoke_reports.rglob("*.ipynb")}
    assert expected <= got, f"missing: {sorted(expected - got)}"
    assert not any(".partial." in g or ".failed." in g for g in got)


def test_executed_notebooks_show_progress_without_a_widget_warning(smoke_reports):
    # tqdm.auto wants ipywidgets inside a kernel and, without them, printed a TqdmWarning into every
    # executed notebook a student opens; the text bars need nothing.
    import json

    for nb in sorted(smoke_reports.rglob("*.ipynb")):
        text = "".join("".join(o.get("text", "")) for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []))
        assert "TqdmWarning" not in text and "IProgress" not in text, nb.relative_to(smoke_reports).as_posix()


@pytest.mark.parametrize("step", ["02_train_disease_model/nodule", "04_evaluation", "05_novel_diseases", "06_gradcam", "07_ablations"])
def test_executed_notebooks_show_their_figures(smoke_reports, step):
    import json

    nb = json.loads((smoke_reports / f"{step}.ipynb").read_text())
    assert any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_reports_hold_the_thesis_tables_figures_and_the_index(smoke_reports):
    tables = ROOT / "reports" / "tables" / PROFILE
    figures = ROOT / "reports" / "figures" / PROFILE
    for name in ("table1_dataset", "table2_normal_vs_abnormal", "table3_risk_levels", "table7_two_vs_three_class",
                 "table8_two_vs_three_class_risk", "table9_unseen_findings", "auc_per_finding", "missed_by_risk"):
        for ext in (".csv", ".md", ".json"):
            assert (tables / f"{name}{ext}").is_file(), f"{name}{ext}"
    for name in ("roc", "screening_yield", "calibration", "auc_per_finding", "missed_critical"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    index = (ROOT / "reports" / "README.md").read_text()
    assert "table2_normal_vs_abnormal" in index and "thesis:" in index and "roc.png" in index


def test_no_table_prints_a_degenerate_interval(smoke_reports):
    """A finite sample never certifies a rate of exactly 0 or 1: no "[1.000, 1.000]" in any table,
    and every rate interval the CSVs hold has width (scxnn.metrics.proportion_ci)."""
    import re

    import pandas as pd

    tables = ROOT / "reports" / "tables" / PROFILE
    checked = 0
    for md in tables.glob("*.md"):
        text = md.read_text()
        assert not re.search(r"\[(1\.0+|0\.0+), \1\]", text), f"{md.name} prints a degenerate interval"
        assert not re.search(r"\[(100|0)%, \1%\]", text), md.name
    for csv in tables.glob("*.csv"):
        df = pd.read_csv(csv)
        for lo in (c for c in df.columns if c.endswith("_lo") and f"{c[:-3]}_hi" in df):
            hi = f"{lo[:-3]}_hi"
            both = df[[lo, hi]].dropna()
            assert (both[lo] < both[hi]).all(), f"{csv.name}: {lo[:-3]} has a zero-width interval"
            checked += len(both)
    assert checked > 50
    th = pd.read_csv(tables / "thresholds.csv")
    assert list(th["rule"]) == ["point", "strict"] and (th["val_sensitivity_lo"] < 1).all()


STEP_TARGETS = [(s, f) for s in STEPS for f in (load_config(PROFILE).findings if s == "02_train_disease_model" else [None])]


@pytest.mark.parametrize("step, finding", STEP_TARGETS, ids=[f"{s}-{f}" if f else s for s, f in STEP_TARGETS])
def test_each_step_saved_its_resolved_config(smoke_reports, step, finding):
    assert require_step(load_config(PROFILE), step, finding)


def test_second_run_reruns_nothing(smoke_reports):
    assert _make("-q", "reports", check=False).returncode == 0, "make -q says something is out of date"
    assert "Nothing to be done" in _make("reports").stdout


def test_a_change_reruns_only_what_depends_on_it(smoke_reports):
    def would_run(newer: str) -> set[str]:
        out = _make("-n", "-W", newer, "reports").stdout
        runs = [line.split() for line in out.splitlines() if " scxnn notebook " in line]
        return {w[w.index("notebook") + 2] for w in runs}

    assert would_run("notebooks/05_novel_diseases.ipynb") == {str(EXEC.relative_to(ROOT) / "05_novel_diseases.ipynb")}
    downstream_of_03 = would_run("notebooks/03_svm_ensemble.ipynb")
    assert {p.rsplit("/", 1)[-1] for p in downstream_of_03} == {"03_svm_ensemble.ipynb", "04_evaluation.ipynb", "05_novel_diseases.ipynb",
                                                                  "08_transfer.ipynb"}
    # The profile's resolved settings (.make/<profile>.settings, rewritten when they change) are
    # everything's prerequisite, so a change of them reruns the whole study.
    everything = would_run(f".make/{PROFILE}.settings")
    assert len(everything) == len(STEPS) - 1 + len(load_config(PROFILE).findings)
    # A rebuilt trunk (`make trunk`) retrains every finding model and what reads them, never the data.
    from_trunk = {p.rsplit("/", 1)[-1] for p in would_run("scxnn/weights/densenet121_trunk.pt")}
    assert "01_preprocessing.ipynb" not in from_trunk and {f"{f}.ipynb" for f in load_config(PROFILE).findings} <= from_trunk
    # the 2-class variant reruns with the settings (it finds its cached result when they did not change it)
    out = _make("-n", "-W", f".make/{PROFILE}.settings", "reports").stdout
    assert "scxnn variant" in out and "scxnn index" in out


def test_mismatched_upstream_settings_fail_loudly(smoke_reports):
    cfg = load_config(PROFILE, {"train.max_epochs": 99})
    with pytest.raises(RuntimeError, match="train differ"):
        require_step(cfg, "01_preprocessing")


def test_missing_upstream_step_names_the_make_target(tmp_path):
    cfg = load_config(PROFILE, {"paths.runs": str(tmp_path / "runs")})
    with pytest.raises(FileNotFoundError, match="make ensemble PROFILE=smoke"):
        require_step(cfg, "03_svm_ensemble")
    start_step(cfg, "03_svm_ensemble")
    assert require_step(cfg, "03_svm_ensemble") == tmp_path / "runs" / "03_svm_ensemble"


@pytest.mark.realdata
def test_predict_screens_real_dicoms_and_synthetic_films(smoke_reports, tmp_path):
    """`scxnn predict` on the real DICOM samples and a few synthetic films with the trained smoke run:
    hip and tibia files are rejected as out of scope, the 12-bit JPEG files as unreadable, and every
    film gets a row, a reason, and (when it needs review) a Grad-CAM overlay."""
    from conftest import require_shared

    from scxnn.cli import main

    real = require_shared("realdata", "dicom_cr_samples")
    cfg = load_config(PROFILE)
    synth = sorted((cfg.path("data") / "raw" / "images" / "internal").glob("*.dcm"))[:3]
    out = tmp_path / "screen"
    assert main(["predict", "--models", str(cfg.path("runs")), str(real), *map(str, synth), "--out", str(out), "--no-progress"]) == 0
    import pandas as pd

    t = pd.read_csv(out / "predictions.csv")
    assert len(t) == 20 + len(synth) and t["reason"].notna().all()
    name = t["file"].map(lambda f: f.rsplit("/", 1)[-1])
    twelve = name.str.contains("jpeg_extended_12bit")
    assert (t.loc[twelve, "decision"] == "rejected").all() and t.loc[twelve, "reason"].str.contains("unreadable").all()
    other = name.str.contains("RG2|RG3") & ~twelve
    assert (t.loc[other, "decision"] == "rejected").all() and t.loc[other, "reason"].str.contains("out of scope").all()
    review = t[t["decision"] == "needs_review"]
    assert review["overlay"].map(lambda o: (out / o).is_file()).all()
    assert (out / "report.html").stat().st_size > 1000
    # resumable: a second run keeps every row and scores nothing again
    assert main(["predict", "--models", str(cfg.path("runs")), str(real), *map(str, synth), "--out", str(out), "--no-progress"]) == 0
    assert pd.read_csv(out / "predictions.csv")["decision"].tolist() == t["decision"].tolist()


def test_predict_json_summary_is_the_only_stdout(smoke_reports, tmp_path, capsys):
    # `--json` is for the next tool in a pipe: one JSON object on stdout, nothing else; -q keeps logs
    # and progress bars off stderr too.
    import json

    from scxnn.cli import main

    cfg = load_config(PROFILE)
    synth = sorted((cfg.path("data") / "raw" / "images" / "internal").glob("*.dcm"))[:4]
    capsys.readouterr()
    assert main(["-q", "predict", "--models", str(cfg.path("runs")), *map(str, synth), "--out", str(tmp_path / "o"), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["films"] == 4 and sum(summary["decisions"].values()) == 4
    assert Path(summary["report"]).is_file() and "verdict" in summary["batch"]
    assert "INFO" not in err and "it/s" not in err
    # Every film and Grad-CAM overlay opens at full resolution from the report; inline, only thumbnails.
    import base64
    import re

    import cv2

    html = Path(summary["report"]).read_text()
    links = re.findall(r'<a class="full" href="([^"]+)"', html)
    assert sum(h.startswith("films/") for h in links) == 4
    assert all((tmp_path / "o" / h).is_file() for h in links)
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert max(cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]) <= 128


def test_bf16_and_fp32_decisions_agree(smoke_reports):
    from scxnn.hardware import bf16_supported
    from scxnn.predict import Screener, screen_file

    if not bf16_supported("cpu"):
        pytest.skip("this CPU has no native bf16; the fast path runs in fp32 here")
    cfg = load_config(PROFILE)
    films = sorted((cfg.path("data") / "raw" / "images").rglob("*.dcm"))[:24]
    a = Screener.from_run(cfg.path("runs"), bf16="on")
    b = Screener.from_run(cfg.path("runs"), bf16="off")
    ra = [screen_file(f, a)[0] for f in films]
    rb = [screen_file(f, b)[0] for f in films]
    agree = np.mean([x["decision"] == y["decision"] for x, y in zip(ra, rb)])
    assert agree >= 0.95, f"bf16 and fp32 decisions agree on only {agree:.0%} of {len(films)} films"
    diff = np.nanmax(np.abs(np.array([x["score"] for x in ra], float) - np.array([y["score"] for y in rb], float)))
    assert diff < 0.25, f"bf16 moves the SVM score by up to {diff:.3f}"


def test_onnx_runtime_backend_gives_the_torch_decisions(smoke_reports, tmp_path):
    from scxnn.predict import Screener, screen_file

    cfg = load_config(PROFILE)
    films = sorted((cfg.path("data") / "raw" / "images").rglob("*.dcm"))[:16]
    a = Screener.from_run(cfg.path("runs"), bf16="off")
    b = Screener.from_run(cfg.path("runs"), backend="onnx", onnx_dir=tmp_path / "onnx")
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == len(cfg.findings)
    ra = [screen_file(f, a)[0] for f in films]
    rb = [screen_file(f, b)[0] for f in films]
    assert [x["decision"] for x in ra] == [y["decision"] for y in rb]
    np.testing.assert_allclose([x["score"] for x in ra], [y["score"] for y in rb], atol=1e-3)
    np.testing.assert_allclose([x["ood_score"] for x in ra], [y["ood_score"] for y in rb], rtol=1e-3, atol=1e-3)


def test_variants_score_only_the_films_their_tables_read(smoke_reports):
    import json

    import pandas as pd

    from scxnn import variants
    from scxnn.ensemble import LOGITS_NAME, OOD_NAME

    cfg = load_config(PROFILE)
    for name in ("two_class", "histeq_classification_only"):
        d = variants.variant_dir(cfg, name)
        t = pd.read_parquet(d / LOGITS_NAME, columns=["site", "split"])
        assert set(zip(t["site"], t["split"])) <= {("internal", "val"), ("internal", "test")}, name
        assert not (d / OOD_NAME).exists()  # no training films: no OOD model, so never a `predict` run
        assert json.loads((d / "result.json").read_text())["images"] == int((t["split"] == "test").sum())


def test_make_reaches_every_model_before_any_variant_and_no_variant_waits_for_step03():
    # make -jN starts ready targets in the order of its walk, so the variants fill the cores the last
    # models leave idle. A variant that waited for step 03 left a core idle while 03 ran.
    db = _make("-n", "-p", "reports").stdout
    rules = {ln.split(":", 1)[0]: ln.split(":", 1)[1] for ln in db.splitlines()
             if ln.startswith(("reports:", "reports/executed/", "runs/")) and ":" in ln and "%" not in ln and not ln.startswith("#")}
    walk = rules["reports"].split()
    models = [i for i, t in enumerate(walk) if "/02_train_disease_model/" in t]
    needs_variants = [i for i, t in enumerate(walk) if "/variants/" in rules.get(t, "")]
    assert len(models) == 13 and needs_variants and max(models) < min(needs_variants)
    variant_rules = {t: deps for t, deps in rules.items() if "/variants/" in t and t.endswith("result.json")}
    assert variant_rules and not any("03_svm_ensemble" in deps for deps in variant_rules.values())
