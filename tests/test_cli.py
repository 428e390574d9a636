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


RUN_CONFIG_COMMANDS = ("notebook", "evaluate", "certify", "predict", "gradcam")


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    # Commands that work from a trained run read its resolved config and take no --profile or --set.
    options = out.split("options:", 1)[-1]
    takes = cmd not in RUN_CONFIG_COMMANDS
    assert ("\n  --profile PROFILE" in options) == takes and ("\n  --set KEY=VALUE" in options) == takes


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


@pytest.mark.realdata
def test_manifest_cli_on_the_real_kermany_sample(tmp_path, capsys):
    from conftest import require_shared

    root = require_shared("realdata", "kermany_dev")
    assert main(["manifest", "kermany", str(root), "--out", str(tmp_path), "--profile", "smoke"]) == 0
    assert "460 images from kermany" in capsys.readouterr().out
    assert (tmp_path / "manifest.csv").is_file() and (tmp_path / "skipped.csv").is_file()


# --------------------------------------------------------------------------- bad input: one line, exit 2


def _study(tmp_path, manifest: str):
    """A smoke run under ``tmp_path``: each step's resolved config, every ``best.pt`` and ``last.pt``
    junk bytes (a torn copy), and a cache ``manifest.csv`` that is valid, or ``"broken"``: patient
    p0 in both train and val. Returns (the --set overrides, the manifest's path)."""
    from scxnn.config import load_config, save_resolved
    from scxnn.data import MANIFEST_NAME, new_manifest, write_manifest
    from scxnn.pixels import cache_dir

    ov = {"paths.data": str(tmp_path / "data"), "paths.runs": str(tmp_path / "runs")}
    cfg = load_config("smoke", ov)
    for f in cfg.findings:
        d = save_resolved(cfg, cfg.path("runs") / "02_train_disease_model" / f).parent
        for name in ("best.pt", "last.pt"):
            (d / name).write_bytes(b"\x00junk, not a torch checkpoint" * 8)
    save_resolved(cfg, cfg.path("runs") / "03_svm_ensemble")
    rows = [{"image_id": f"i{i}", "patient_id": f"p{i // 2}", "study_date": "", "site": "internal", "split": s,
             "label_type": "hard", "masks": "", "view": "PA", "path": f"images/i{i}.png", "source_sha256": "",
             **{f: int(f == "nodule" and i % 2) for f in cfg.findings}, **{f: 0 for f in cfg.unseen_findings}}
            for i, s in enumerate(["train", "train", "val", "val", "test", "test"])]
    if manifest == "broken":
        rows[1]["split"] = "val"
    path = cache_dir(cfg) / MANIFEST_NAME
    write_manifest(new_manifest(rows, list(cfg.findings), list(cfg.unseen_findings)), path)
    return [a for k, v in ov.items() for a in ("--set", f"{k}={v}")], path


# (what is broken, argv given <tmp>, the manifest's path); the profile and overrides are appended
BAD_INPUT = {
    "preprocess-manifest": ("broken", lambda t, m: ["preprocess", str(m), "--out", str(t / "o"), "--no-progress"]),
    "evaluate-manifest": ("broken", lambda t, m: ["evaluate", "--models", str(t / "runs"), "--manifest", str(m), "--out", str(t / "o"), "--no-progress"]),
    "certify-manifest": ("broken", lambda t, m: ["certify", "--models", str(t / "runs"), "--manifest", str(m), "--out", str(t / "o"), "--no-progress"]),
    "train-manifest": ("broken", lambda t, m: ["train", "--finding", "nodule", "--resume", "--no-progress"]),
    "ensemble-manifest": ("broken", lambda t, m: ["ensemble", "--no-progress"]),
    "ensemble-checkpoint": ("valid", lambda t, m: ["ensemble", "--no-progress"]),
    "predict-checkpoint": ("valid", lambda t, m: ["predict", "--models", str(t / "runs"), str(m), "--out", str(t / "o"), "--device", "cpu", "--no-progress"]),
    "gradcam-checkpoint": ("valid", lambda t, m: ["gradcam", "--models", str(t / "runs" / "02_train_disease_model"), str(m), "--out", str(t / "o")]),
    "train-checkpoint": ("valid", lambda t, m: ["train", "--finding", "nodule", "--resume", "--no-progress"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_2(case, tmp_path, capsys):
    manifest, argv = BAD_INPUT[case]
    ov, m = _study(tmp_path, manifest)
    capsys.readouterr()
    argv = argv(tmp_path, m)
    assert main([*argv, *([] if argv[0] in RUN_CONFIG_COMMANDS else ["--profile", "smoke", *ov])]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if " INFO scxnn: " not in ln and " WARNING scxnn: " not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    what = "patient" if manifest == "broken" else "checkpoint"
    assert what in lines[0] and ("manifest.csv" in lines[0] or ".pt" in lines[0]), lines[0]


def test_bad_input_from_the_console_is_exactly_one_line_and_debug_shows_the_traceback(tmp_path):
    ov, m = _study(tmp_path, "broken")
    cmd = [sys.executable, "-m", "scxnn", "preprocess", str(m), "--out", str(tmp_path / "o"), "--no-progress", "--profile", "smoke", *ov]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    r = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ManifestError" in r.stderr


def test_an_error_a_library_raised_names_it_and_debug_raises_it(tmp_path, capsys):
    import pandas as pd

    (tmp_path / "m.csv").write_text('image_id,patient_id\n"unterminated\n')
    argv = ["preprocess", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--profile", "smoke", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.rstrip().endswith("(ParserError from pandas; --debug shows the traceback)"), err
    with pytest.raises(pd.errors.ParserError):
        main([*argv, "--debug"])


@pytest.mark.parametrize("command", [
    ["predict", "--models", "runs/x", "--out", "o", "in"],
    ["certify", "--models", "runs/x", "--manifest", "m.csv", "--out", "o"],
    ["evaluate", "--models", "runs/x", "--manifest", "m.csv", "--out", "o"],
    ["gradcam", "--models", "runs/x", "a.png"],
    ["notebook", "a.ipynb", "b.ipynb"],
], ids=lambda c: c[0])
def test_commands_that_read_the_runs_config_refuse_profile_and_set(command, capsys):
    # They work from a trained run's resolved config: a --profile or --set they silently ignored
    # would look as if it had been applied.
    for extra in (["--profile", "demoo"], ["--set", "train.max_epochs=2"]):
        with pytest.raises(SystemExit) as e:
            main([*command, *extra])
        assert e.value.code == 2
        assert f"unrecognized arguments: {' '.join(extra)}" in capsys.readouterr().err


def test_version_names_the_package(capsys):
    from scxnn import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"scxnn {__version__}"


# --------------------------------------------------------------------------- options shared by subcommands

# flag: the subcommands that take it with one meaning, added from cli.SHARED_OPTIONS (the first is
# the one the others are compared with)
SHARED = {
    "--json": ("evaluate", "compare-scored", "certify", "predict", "monitor"),
    "--models": ("evaluate", "certify", "predict", "monitor"),
    "--out": ("manifest", "preprocess", "evaluate", "predict", "synth", "certify", "gradcam"),
    "--drop-seen": ("evaluate", "certify"),
    "--no-progress": ("synth", "preprocess", "train", "pretrain", "trunk", "ensemble", "variant", "evaluate", "certify", "predict", "bench"),
    "--certificate": ("predict", "monitor"),
    "--monitor": ("predict", "monitor"),
}
# the same flag meaning something else there, defined by the subcommand itself
OWN = {("train", "--out"), ("trunk", "--out"), ("bench", "--out"), ("compare-scored", "--out"), ("gradcam", "--models"), ("bench", "--models")}
# deliberate differences from the first subcommand's definition
DIFFERS = {
    ("synth", "--out"): {"required": False},  # default: data/<profile>/raw
    ("certify", "--out"): {"required": False},  # --plan writes nothing
    ("gradcam", "--out"): {"required": False, "default": "gradcam"},
    ("monitor", "--models"): {"required": False, "metavar": "RUN"},  # one of three ways to name the monitor
}
COMPARED = ("dest", "nargs", "const", "default", "type", "choices", "required", "metavar")


def _subparsers() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _option(parser, flag: str):
    return next((a for a in parser._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("cmd", list(_subparsers()))
def test_shared_options_have_one_definition(cmd):
    from scxnn.cli import SHARED_OPTIONS

    assert set(SHARED) == set(SHARED_OPTIONS)
    subs = _subparsers()
    for flag, cmds in SHARED.items():
        action = _option(subs[cmd], flag)
        if cmd not in cmds:
            assert action is None or (cmd, flag) in OWN, f"{cmd} {flag}: add it with cli._shared (and list {cmd} in SHARED)"
            continue
        assert action is not None, f"{cmd} has no {flag}"
        ref = _option(subs[cmds[0]], flag)
        want = {k: getattr(ref, k) for k in COMPARED} | DIFFERS.get((cmd, flag), {})
        assert type(action) is type(ref) and {k: getattr(action, k) for k in COMPARED} == want, f"{cmd} {flag}"
        assert SHARED_OPTIONS[flag]["help"] in action.help, f"{cmd} {flag}: {action.help!r}"
