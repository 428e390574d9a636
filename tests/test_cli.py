"""The `scxnn` command: every subcommand answers --help; config errors are clean exit codes."""

from __future__ import annotations

import re

import subprocess
import sys

import pytest
import yaml

from scxnn.cli import build_parser, main

from conftest import ROOT

SUBCOMMANDS = ["config", "notebook", "manifest", "synth", "preprocess", "train", "ensemble", "variant", "index", "evaluate", "predict", "gradcam", "bench"]


def test_parser_has_every_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--profile" in out and "--set" in out


def test_console_script_and_module_entry_points():
    for argv in (["scxnn", "--version"], [sys.executable, "-m", "scxnn", "--version"]):
        exe = argv if argv[0] != "scxnn" else [str(ROOT / ".venv" / "bin" / "scxnn"), *argv[1:]]
        if not (ROOT / ".venv" / "bin" / "scxnn").exists() and argv[0] == "scxnn":
            continue
        r = subprocess.run(exe, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0 and r.stdout.startswith("scxnn "), r.stderr


def test_config_prints_resolved_yaml_with_overrides(capsys):
    assert main(["config", "--profile", "smoke", "--set", "train.max_epochs=9"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert d["profile"] == "smoke" and d["train"]["max_epochs"] == 9


def test_config_make_lists_findings_and_param_files(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["config", "--profile", "smoke", "--make"]) == 0
    out = capsys.readouterr().out
    assert "FINDINGS := pneumothorax pneumoperitoneum" in out
    assert "PROFILE_PARAMS := params/defaults.yaml params/smoke.yaml" in out


def test_config_error_is_exit_2_with_the_key(capsys):
    assert main(["config", "--profile", "smoke", "--set", "train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err


def test_check_all_profiles(capsys):
    assert main(["config", "--check-all"]) == 0


def test_evaluate_without_a_trained_run_says_what_is_missing(tmp_path, capsys):
    m = tmp_path / "manifest.csv"
    m.write_text("image_id\n")
    assert main(["evaluate", "--models", str(tmp_path / "runs"), "--manifest", str(m), "--out", str(tmp_path / "o")]) == 2
    assert "config.resolved.yaml" in capsys.readouterr().err


def test_gradcam_without_models_says_where_they_should_be(tmp_path, capsys):
    assert main(["gradcam", "--models", str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "best.pt" in capsys.readouterr().err


def test_make_vars_name_one_target_per_distinct_variant(capsys):
    assert main(["config", "--profile", "smoke", "--make"]) == 0
    lines = dict(ln.split(" := ", 1) for ln in capsys.readouterr().out.splitlines() if " := " in ln)
    two, three = lines["VARIANT_two_class"], lines["VARIANT_three_class"]
    assert two != three and two.endswith("/result.json") and two.startswith("runs/smoke/variants/")
    results = lines["VARIANT_RESULTS"].split()
    assert results[:2] == [three, two] and len(results) == len(set(results))
    assert three in lines["VARIANT_ABLATIONS"].split() and two not in lines["VARIANT_ABLATIONS"].split()
    # smoke's variants.protocol is empty, so three_class is the profile itself and reuses its models
    assert lines["VARIANT_REUSES_MODELS"].split() in ([], [three])


def test_variant_needs_a_name_or_a_known_hash(capsys):
    assert main(["variant", "--profile", "smoke"]) == 2
    assert main(["variant", "--profile", "smoke", "--hash", "000000000000"]) == 2
    assert "no variant" in capsys.readouterr().err


def test_bench_preprocess_prints_the_ratio_against_the_reference(capsys):
    # Small image: this checks that the benchmark runs and reports, not how fast anything is.
    assert main(["bench", "preprocess", "--profile", "smoke", "--height", "300", "--width", "250", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "reference (NumPy+skimage)" in out and "ratio:" in out and "percentiles" in out


def test_bench_predict_compares_the_fast_path_with_the_naive_one(capsys):
    # Tiny: this checks the variants run and the ratio is printed, not the speed.
    assert main(["bench", "predict", "--profile", "smoke", "--size", "64", "--models", "2", "--images", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 x densenet121 per image, 64 px" in out and "naive" in out and "fast_fp32" in out and "ratio:" in out
    assert re.search(r"onnxruntime\s+\d+\.\d+", out), out  # measured: onnxruntime is a dependency
    assert "1024 px" not in out  # --size replaces the default pair (profile size, 1024)


def test_synth_cli_writes_the_study(tmp_path, capsys):
    assert main(["synth", "--profile", "smoke", "--out", str(tmp_path / "raw"), "--no-progress", "--set", "data.workers=1"]) == 0
    assert (tmp_path / "raw" / "manifest.csv").is_file()
    assert "internal" in capsys.readouterr().out


def test_manifest_cli_on_the_real_kermany_sample(tmp_path, capsys):
    from conftest import require_shared

    root = require_shared("realdata", "kermany_dev")
    assert main(["manifest", "kermany", str(root), "--out", str(tmp_path), "--profile", "smoke"]) == 0
    assert "460 images from kermany" in capsys.readouterr().out
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "skipped.csv").is_file()
