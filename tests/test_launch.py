"""scxnn.launch without a cluster: the launch settings are checked like every other key, the srun
and torchrun command lines, a failed job's message, and the Makefile's LAUNCH switch. The real
SLURM runs are in test_slurm.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from scxnn import launch
from scxnn.config import ConfigError, load_config


@pytest.mark.parametrize("key, value, match", [
    ("launch.train.time", "4 hours", "SLURM time"),
    ("launch.train.mem", "32 GB", "size such as"),
    ("launch.train.cpus", 0, ">= 1"),
    ("launch.train.gpus", -1, ">= 0"),
    ("launch.train.gpus", 4, "procs: must equal gpus"),
    ("launch.notebook.nodes", 2, "are for launch.train"),
    ("launch.srun_args", ["--time=1:00:00"], "set from the resources"),
    ("launch.srun_args", ["bash"], "would become the command"),
    ("launch.train.gpu", 1, "unknown key 'launch.train.gpu'"),
])
def test_launch_settings_are_checked_with_their_key(key, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("smoke", {key: value})
    assert key.rsplit(".", 1)[0] in str(e.value)


@pytest.mark.parametrize("time_", ["90", "4:00:00", "2-00:00:00", "1-12", "30:00"])
def test_slurm_time_forms_are_accepted(time_):
    assert load_config("smoke", {"launch.train.time": time_}).launch.train.time == time_


def test_srun_asks_for_the_kinds_resources(tmp_path):
    cfg = load_config("smoke", {"launch.train": {"gpus": 2, "procs": 2, "cpus": 16, "mem": "64G", "time": "1-00:00:00"},
                                "launch.partition": "gpu", "launch.account": "lab", "launch.srun_args": ["--qos=long"]})
    argv = launch.srun_command(cfg, "train", "train-nodule", ["python", "-m", "scxnn", "notebook"], tmp_path / "x.log")
    assert argv[0] == "srun" and argv[-4:] == ["python", "-m", "scxnn", "notebook"]
    for opt in ("--gres=gpu:2", "--cpus-per-task=16", "--mem=64G", "--time=1-00:00:00", "--partition=gpu", "--account=lab",
                "--qos=long", "--job-name=scxnn-smoke-train-nodule", f"--output={tmp_path / 'x.log'}", "--open-mode=append",
                "--nodes=1", "--ntasks=1"):
        assert opt in argv, opt
    bare = launch.srun_command(load_config("smoke"), "notebook", "04_evaluation", ["true"], tmp_path / "y.log")
    assert not any(a.startswith(("--gres", "--mem", "--partition", "--account")) for a in bare)
    per_node = launch.srun_command(cfg.replace({"launch.train.nodes": 3}), "train", "t", ["true"], tmp_path / "z.log", ranks_per_node=True)
    assert "--nodes=3" in per_node and "--ntasks-per-node=1" in per_node


def test_torchrun_meets_at_the_jobs_first_node(tmp_path):
    # Run the job's shell line for real with SLURM's variables and a stand-in scontrol; "echo" in
    # place of python prints the torchrun command it would exec.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'gpu017\\ngpu018\\n'\n")
    (bin_ / "scontrol").chmod(0o755)
    cfg = load_config("smoke", {"launch.train": {"gpus": 4, "procs": 4, "nodes": 2}})
    argv = launch.torchrun_command(cfg, "nodule", python="echo")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_ID": "81234",
           "SLURM_JOB_NODELIST": "gpu[017-018]"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["-m", "torch.distributed.run"]
    for opt in ("--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d", "--rdzv_id=81234", "--rdzv_endpoint=gpu017:29734"):
        assert opt in out, (opt, out)
    assert out[-8:] == ["-m", "scxnn", "train", "--profile", "smoke", "--finding", "nodule", "--no-progress"]


def _fake_srun(tmp_path: Path, rc: int) -> dict:
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    # Writes what a job would into its --output file, records its argv, exits rc.
    (bin_ / "srun").write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/argv
for a in "$@"; do case "$a" in --output=*) out="${{a#--output=}}";; esac; done
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS" >> "$out"
echo "Traceback: the notebook failed" >> "$out"
exit {rc}
""")
    (bin_ / "srun").chmod(0o755)
    return {"PATH": f"{bin_}:{os.environ['PATH']}"}


def test_a_failed_job_names_its_log_and_keeps_every_attempt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _fake_srun(tmp_path, 3)["PATH"])
    cfg = load_config("smoke", {"launch.logs": str(tmp_path / "logs" / "{profile}"), "launch.notebook.cpus": 3})
    assert launch.run(cfg, "notebook", "04_evaluation", ["true"]) == 3
    log = tmp_path / "logs" / "smoke" / "04_evaluation.log"
    err = capsys.readouterr().err
    assert f"its log: {log}" in err and "scxnn-smoke-04_evaluation failed (exit 3)" in err
    assert "| Traceback: the notebook failed" in err  # the log's tail, so the reason is on screen
    assert launch.run(cfg, "notebook", "04_evaluation", ["true"]) == 3
    text = log.read_text()
    assert text.count("=== ") == 2 and text.count("OMP_NUM_THREADS=3") == 2  # appended; the job's threads are its cores


def test_distributed_training_runs_torchrun_then_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_srun(tmp_path, 0)["PATH"])
    cfg = load_config("smoke", {"launch.logs": str(tmp_path / "logs"), "launch.train.procs": 2})
    with pytest.raises(launch.LaunchError, match="needs --finding"):
        launch.run(cfg, "train", "train-nodule", ["nb"])
    assert launch.run(cfg, "train", "train-nodule", ["nb"], finding="nodule") == 0
    calls = (tmp_path / "argv").read_text().splitlines()
    assert len(calls) == 2 and "--job-name=scxnn-smoke-train-nodule-ddp" in calls[0] and "torch.distributed.run" in calls[0]
    assert calls[1].endswith(" nb") and "--ntasks=1" in calls[1]


def test_without_srun_the_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    from scxnn.cli import main

    assert main(["launch", "--profile", "smoke", "--kind", "notebook", "--name", "x", "--", "true"]) == 2
    assert "needs SLURM's srun on PATH" in capsys.readouterr().err


def _make_n(*args: str) -> subprocess.CompletedProcess:
    from conftest import EVERYTHING_OUT_OF_DATE, run_make

    return run_make("-n", *EVERYTHING_OUT_OF_DATE, *args, check=False)


def test_make_launch_slurm_prefixes_every_job_and_local_runs_none():
    slurm = _make_n("reports", "LAUNCH=slurm").stdout
    cfg = load_config("smoke")
    for name in ("01_preprocessing", "03_svm_ensemble", "04_evaluation", "05_novel_diseases", "06_gradcam", "07_ablations", "08_transfer",
                 *(f"train-{f} --finding {f}" for f in cfg.findings)):
        assert f"--name {name} --" in slurm, name
    assert slurm.count("--kind variant --name variant-") == len(cfg.variants.runs)  # each a job, three_class too (it scores)
    assert "scxnn launch" not in _make_n("reports").stdout
    bad = _make_n("reports", "LAUNCH=slrum")
    assert bad.returncode != 0 and "LAUNCH must be local or slurm, got 'slrum'" in bad.stderr


def test_the_settings_file_changes_only_with_what_results_depend_on(tmp_path):
    # The Makefile's targets depend on this file: a new time limit must not rerun a week of training,
    # and a deleted .make/ must not look like new settings.
    from scxnn.config import profile_chain, write_settings_file

    f = tmp_path / "smoke.settings"
    cfg = load_config("smoke")
    assert write_settings_file(cfg, f)
    newest = max(p.stat().st_mtime for p in profile_chain("smoke"))
    assert f.stat().st_mtime == pytest.approx(newest, abs=1e-3)
    assert not write_settings_file(cfg.replace({"launch.train.time": "9:00:00", "launch.partition": "gpu", "description": "x"}), f)
    assert f.stat().st_mtime == pytest.approx(newest, abs=1e-3)
    assert write_settings_file(cfg.replace({"train.lr": 0.5}), f)
    assert '"lr": 0.5' in f.read_text() and f.stat().st_mtime > newest + 1e-3
