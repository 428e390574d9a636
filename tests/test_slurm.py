"""Issue 19: the study through a real SLURM. A single-node cluster (munged, slurmctld, slurmd) runs on
localhost (tests/slurm_cluster.py), and a copy of the project runs `make reports PROFILE=smoke
LAUNCH=slurm` through it; both are started by the session in the background, after the local smoke
study (conftest.studies). Its tables must equal the local run's. Then a job killed after its first
checkpoint fails its target with the log's path and a rerun resumes it, and one finding trains
across two processes under `srun torchrun` with the rendezvous from SLURM."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, clean_env, run_make

pytestmark = pytest.mark.slurm
PROFILE = "smoke"


@pytest.fixture(scope="module")
def cluster(studies):
    """The cluster the session started after the local smoke study (conftest: built beside the other tests)."""
    studies.ready.wait()
    if studies.slurm_skip:
        if os.environ.get("SCXNN_REQUIRE_SLURM"):
            pytest.fail(f"SCXNN_REQUIRE_SLURM is set but {studies.slurm_skip}")
        pytest.skip(studies.slurm_skip)
    if studies.slurm_error is not None:
        raise studies.slurm_error
    return studies.cluster


@pytest.fixture(scope="module")
def project(studies, cluster) -> Path:
    """The project copy (conftest.project_copy) the SLURM study was built in."""
    return studies.project


def _make(project: Path, cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = run_make(*args, "LAUNCH=slurm", profile=PROFILE, check=False, cwd=project, env={**cluster.env, "PYTHONPATH": str(project)})
    if check and r.returncode != 0:
        pytest.fail(f"make {' '.join(args)} LAUNCH=slurm failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n"
                    f"slurmctld: {cluster.log('slurmctld.log')[-1500:]}")
    return r


@pytest.fixture(scope="module")
def slurm_study(smoke_study, studies, project, cluster):
    """`make -j2 reports PROFILE=smoke LAUNCH=slurm` in the project copy: (project, seconds)."""
    seconds = studies.slurm.wait("the smoke study through SLURM")
    studies.all_threads_when_built()
    return project, seconds


def test_the_smoke_study_through_slurm_gives_the_local_tables(slurm_study):
    project, seconds = slurm_study
    ours = sorted((project / "reports" / "tables" / PROFILE).glob("*.csv"))
    local = ROOT / "reports" / "tables" / PROFILE
    assert {p.name for p in ours} == {p.name for p in local.glob("*.csv")} and len(ours) >= 15
    differ = [p.name for p in ours if p.read_bytes() != (local / p.name).read_bytes()]
    assert not differ, f"tables differ from the local run: {differ}"
    # Every notebook, finding model and variant was a SLURM job, with its own log.
    logs = {p.stem for p in (project / "logs" / PROFILE).glob("*.log")}
    assert {"01_preprocessing", "train-nodule", "03_svm_ensemble", "07_ablations"} <= logs
    assert any(n.startswith("variant-") for n in logs)
    assert "srun --job-name=scxnn-smoke-train-nodule" in (project / "logs" / PROFILE / "train-nodule.log").read_text()
    print(f"smoke study through the local SLURM cluster: {seconds:.0f} s")


def test_a_second_run_submits_nothing(slurm_study, cluster):
    project, _ = slurm_study
    r = _make(project, cluster, "-q", "reports", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_changed_time_limit_reruns_nothing(slurm_study, cluster):
    # The launch section says where a job runs, not what it computes (.make/<profile>.settings).
    project, _ = slurm_study
    params = project / "params" / "smoke.yaml"
    kept = {p: (p.read_bytes(), p.stat().st_mtime) for p in (params, project / ".make" / "smoke.mk", project / ".make" / "smoke.settings")}
    before = params.read_text()
    try:
        params.write_text(before.replace('time: "0:30:00"', 'time: "0:45:00"'))
        assert _make(project, cluster, "-q", "reports", check=False).returncode == 0
        params.write_text(before.replace("max_images_per_epoch: 24", "max_images_per_epoch: 20"))
        assert _make(project, cluster, "-q", "reports", check=False).returncode == 1  # a result setting: out of date
    finally:  # as it was, so that the tests below find an up-to-date study
        for p, (data, mtime) in kept.items():
            p.write_bytes(data)
            os.utime(p, (mtime, mtime))


def _job_running(cluster, name: str, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i"], env=cluster.env, capture_output=True, text=True)
        if r.stdout.strip():
            return r.stdout.split()[0]
        time.sleep(0.2)
    pytest.fail(f"job {name} never ran")


def test_a_killed_job_fails_its_target_and_a_rerun_resumes_it(slurm_study, cluster):
    project, _ = slurm_study
    target = project / "reports" / "executed" / PROFILE / "02_train_disease_model" / "nodule.ipynb"
    run = project / "runs" / PROFILE / "02_train_disease_model" / "nodule"
    target.unlink()
    shutil.rmtree(run)
    env = clean_env(cluster.env)
    env["PYTHONPATH"] = str(project)
    make = subprocess.Popen(["make", "--no-print-directory", "train-nodule", f"PROFILE={PROFILE}", "LAUNCH=slurm"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = _job_running(cluster, "scxnn-smoke-train-nodule")
    # Killed mid-run, after stage 1's epoch is checkpointed (last.pt appears whole: written atomically)
    # and seconds before the job would end (stage 2, figures and scoring are left).
    end = time.monotonic() + 180
    while not (run / "last.pt").is_file() and make.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert (run / "last.pt").is_file() and make.poll() is None, "the job ended before its first checkpoint was seen"
    subprocess.run(["scancel", "--signal=KILL", job], env=cluster.env, check=True)
    out, err = make.communicate(timeout=300)
    assert make.returncode != 0
    log = project / "logs" / PROFILE / "train-nodule.log"
    assert f"its log: {log}" in err, err[-2000:]
    assert not target.exists()  # no half-written target for make to trust
    _make(project, cluster, "train-nodule")
    assert target.is_file() and (run / "best.pt").is_file()
    # Resumed from last.pt: the rerun's notebook shows no stage-1 epoch (its progress bar, which a fresh
    # run's notebook shows).
    fresh = ROOT / "reports" / "executed" / PROFILE / "02_train_disease_model" / "nodule.ipynb"
    assert "nodule s1 e1" in fresh.read_text() and "nodule s1 e1" not in target.read_text()


def test_one_model_trains_across_two_processes_under_srun_torchrun(slurm_study, cluster):
    project, _ = slurm_study
    env = {**cluster.env, "PYTHONPATH": str(project)}
    out = project / "runs" / PROFILE / "02_train_disease_model" / "atelectasis"
    shutil.rmtree(out)
    r = subprocess.run([str(project / ".venv" / "bin" / "python"), "-m", "scxnn", "launch", "--profile", PROFILE,
                        "--set", "launch.train.procs=2", "--kind", "train", "--name", "ddp-atelectasis", "--finding", "atelectasis",
                        "--", "true"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    log = (project / "logs" / PROFILE / "ddp-atelectasis.log").read_text()
    assert r.returncode == 0, r.stderr[-2000:] + log[-3000:]
    assert "--nproc_per_node=2" in log and "data-parallel training over 2 processes (gloo)" in log, log[-3000:]
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()
