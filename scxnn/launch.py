"""Where a job of the study runs: on this machine (the default), or as a SLURM job (``make reports
LAUNCH=slurm``; docs/cluster.md).

Make stays the scheduler of *what* runs: its file targets decide what is out of date, and ``make
-jN`` keeps N jobs in flight. Under ``LAUNCH=slurm`` each recipe runs its command through ``scxnn
launch --profile P --kind KIND --name NAME -- COMMAND...``, which runs it with ``srun`` and the
resources of ``launch.<kind>`` (params), and waits. Outside an allocation srun starts a job; inside
one (``salloc``, ``sbatch``) a job step of it.

A failed, killed, cancelled, preempted or timed-out job fails its target: the exit status is srun's,
and the message names the job's log (``launch.logs``: one file per target, appended on every attempt,
each attempt headed by the command). Make's ``.DELETE_ON_ERROR`` and the notebooks' partial outputs
leave no half-written target behind, so a rerun redoes exactly the failed targets, and a model's
training resumes from its ``last.pt``.

One model across several processes, GPUs or nodes (``launch.train.procs`` > 1 or ``nodes`` > 1): the
finding's training first runs as its own job under ``torchrun``, one per node (``srun
--ntasks-per-node=1``), with the rendezvous on the job's first node (from ``SLURM_JOB_NODELIST``) and
``SLURM_JOB_ID`` as its id; NCCL on GPUs, gloo on CPUs (:mod:`scxnn.distributed`). Then the notebook
runs as a one-node job, finds the trained model, and only draws and scores.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from scxnn.config import Config, Resources

#: ``launch`` sections, one per kind of job the Makefile runs.
KINDS = ("preprocess", "train", "variant", "notebook")
#: Port of the DDP rendezvous: this plus the job id modulo 1000, so two jobs on one node do not meet.
RDZV_PORT = 29500


class LaunchError(ValueError):
    """SLURM is not there (no ``srun``), or a request cannot be made; the CLI exits 2."""


def resources(cfg: Config, kind: str) -> Resources:
    if kind not in KINDS:
        raise LaunchError(f"unknown job kind {kind!r}; kinds: {', '.join(KINDS)}")
    return getattr(cfg.launch, kind)


def distributed(r: Resources) -> bool:
    """Whether one model trains across several processes (torchrun)."""
    return r.procs > 1 or r.nodes > 1


def log_path(cfg: Config, name: str) -> Path:
    p = Path(cfg.launch.logs.format(profile=cfg.profile)).expanduser()
    return (p if p.is_absolute() else cfg.root / p) / f"{name}.log"


def srun_command(cfg: Config, kind: str, name: str, command: Sequence[str], log: Path, ranks_per_node: bool = False) -> list[str]:
    """The ``srun`` argv that runs ``command`` as one job with the resources of ``launch.<kind>``.
    ``ranks_per_node``: one task on each of the ``nodes`` (a torchrun per node) instead of one task."""
    r = resources(cfg, kind)
    opts = [f"--job-name=scxnn-{cfg.profile}-{name}", f"--time={r.time}", f"--cpus-per-task={r.cpus}",
            f"--output={log}", "--open-mode=append", "--kill-on-bad-exit=1", "--quit-on-interrupt"]
    opts += [f"--nodes={r.nodes}", "--ntasks-per-node=1"] if ranks_per_node else ["--nodes=1", "--ntasks=1"]
    if r.gpus:
        opts.append(f"--gres=gpu:{r.gpus}")
    if r.mem:
        opts.append(f"--mem={r.mem}")
    if cfg.launch.partition:
        opts.append(f"--partition={cfg.launch.partition}")
    if cfg.launch.account:
        opts.append(f"--account={cfg.launch.account}")
    return ["srun", *opts, *cfg.launch.srun_args, *command]


def torchrun_command(cfg: Config, finding: str, python: str = sys.executable) -> list[str]:
    """What each node of a distributed training job runs: torchrun with ``launch.train.procs``
    processes, meeting the other nodes' at the job's first node. The SLURM variables are read by
    the job's shell, where they exist."""
    r = resources(cfg, "train")
    train = [python, "-m", "scxnn", "train", "--profile", cfg.profile, "--finding", finding, "--no-progress"]
    run = (f"exec {shlex.quote(python)} -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" --nproc_per_node={r.procs} "
           f"--rdzv_backend=c10d --rdzv_id=\"$SLURM_JOB_ID\" "
           f"--rdzv_endpoint=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1):$(({RDZV_PORT} + SLURM_JOB_ID % 1000))\" "
           + " ".join(shlex.quote(a) for a in train[1:]))
    return ["bash", "-c", run]


def run(cfg: Config, kind: str, name: str, command: Sequence[str], finding: str | None = None) -> int:
    """Run ``command`` as a SLURM job (see the module's docstring) and wait; returns its exit status,
    after saying on stderr which log to read when it is not 0."""
    if not command:
        raise LaunchError("no command to launch (give it after --)")
    if shutil.which("srun") is None:
        raise LaunchError("LAUNCH=slurm needs SLURM's srun on PATH (on a cluster's login node); run without LAUNCH for this machine")
    r = resources(cfg, kind)
    log = log_path(cfg, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    # The job's threads are its cores; a make recipe's OMP_NUM_THREADS (cores / make jobs) is for local runs.
    env = {**os.environ, "OMP_NUM_THREADS": str(r.cpus), "SCXNN_LAUNCHED": "slurm"}
    steps: list[list[str]] = []
    if kind == "train" and distributed(r):
        if not finding:
            raise LaunchError("a distributed training job needs --finding")
        steps.append(srun_command(cfg, kind, f"{name}-ddp", torchrun_command(cfg, finding), log, ranks_per_node=True))
    steps.append(srun_command(cfg, kind, name, command, log))
    for argv in steps:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
        t0 = time.monotonic()
        rc = _wait_for(argv, env)
        if rc != 0:
            print(f"error: SLURM job {argv[1].split('=', 1)[1]} failed (exit {rc}) after {time.monotonic() - t0:.0f} s; "
                  f"its log: {log}", file=sys.stderr)
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.is_file() else []
            for line in tail:
                print(f"  | {line}", file=sys.stderr)
            return rc
    return 0


def _wait_for(argv: list[str], env: dict) -> int:
    """Run srun and wait. Ctrl-C or a SIGTERM to make (and so to this process) is passed on to srun,
    which then ends the job (--quit-on-interrupt), instead of leaving it running unattended."""
    proc = subprocess.Popen(argv, env=env)
    previous = {s: signal.signal(s, lambda signum, _: proc.send_signal(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
