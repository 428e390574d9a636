"""A real single-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd from
Debian's ``munge`` and ``slurm-wlm``, run as root (as CI runs) with every file in a temporary folder,
on ports of their own, so nothing of the machine's is touched and nothing is left running.

``.ci/run`` installs the packages and sets ``SCXNN_REQUIRE_SLURM=1``: there a missing daemon fails
the tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sinfo")


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"needs {', '.join(absent)} (Debian: apt-get install slurm-wlm munge; .ci/run installs them)"
    if os.geteuid() != 0:
        return "a local SLURM cluster is started as root (as CI runs); not root here"
    return None


def _free_ports(n: int) -> list[int]:
    # All n sockets stay bound until every port is chosen: one at a time, the kernel may hand out the
    # same port twice (it did: slurmctld and slurmd both got 45531, and slurmctld could not bind).
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Cluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def log(self, name: str) -> str:
        p = self.root / "log" / name
        return p.read_text(errors="replace")[-3000:] if p.is_file() else ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(root: Path, cpus: int | None = None, nice: int = 0) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; returns once the node is idle. The
    cluster's clients (srun, sinfo) find it through ``Cluster.env`` (SLURM_CONF). Jobs run at slurmd's
    ``nice`` (slurm.conf's PropagatePrioProcess is 0: not at the submitter's)."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "log"):
        (root / d).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge.sock"
    cpus = cpus or os.cpu_count() or 1
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    host = socket.gethostname()
    ctld_port, d_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=scxnntest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={ctld_port}", f"SlurmdPort={d_port}",
        "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        # No cgroups in a container: track processes by parentage and bind nothing.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1", "MessageTimeout=30",
        f"NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    c = Cluster(root, env)
    logs = root / "log"

    def spawn(*argv: str, out: str) -> None:
        c.procs.append(subprocess.Popen(list(argv), env=env, stdout=open(logs / out, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True))

    try:
        spawn(_exe("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
              f"--log-file={logs / 'munged.log'}", f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}",
              out="munged.out")
        _wait(lambda: sock.exists(), 20, "munged did not create its socket", c, "munged.out")
        spawn(_exe("slurmctld"), "-D", "-f", str(conf), out="slurmctld.out")
        spawn(*(("nice", "-n", str(nice)) if nice else ()), _exe("slurmd"), "-D", "-f", str(conf), out="slurmd.out")

        def idle() -> bool:
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        _wait(idle, 60, "the node never became idle", c, "slurmctld.log")
    except BaseException:
        c.stop()
        raise
    return c


def _wait(ok, timeout: float, what: str, c: Cluster, log: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        dead = [p.args[0] for p in c.procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    raise RuntimeError(f"local SLURM cluster: {what} ({c.root}):\n{c.log(log)}")
