"""Shared fixtures. Tests run from any cwd; paths are anchored at the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared").resolve()
PARAMS = ROOT / "params"


def clean_env(env: dict | None = None) -> dict[str, str]:
    # The outer `make test`'s jobserver flags must not leak into an inner make.
    return {k: v for k, v in (env or os.environ).items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def run_make(*args: str, profile: str = "smoke", check: bool = True, cwd: Path = ROOT,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """``make ARGS PROFILE=profile`` in ``cwd`` (the repository), failing the test with make's output on error."""
    r = subprocess.run(["make", "--no-print-directory", *args, f"PROFILE={profile}"], cwd=cwd, env=clean_env(env),
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


# For a dry run (`make -n`) of the whole smoke study, as if nothing were built: every target depends on
# the profile's settings file. Not -B: make remakes the makefiles it includes even under -n, and -B
# would remake their prerequisite, the venv, too: a pip install in the middle of the tests (and 15 s).
EVERYTHING_OUT_OF_DATE = ("-W", ".make/smoke.settings")

# ---------------------------------------------------------------------------------------------------
# The smoke study, built beside the other tests.
#
# Two builds of the smoke study are most of CI's time: the local one (`make -j2 reports PROFILE=smoke`,
# which the pipeline, step-03 and Grad-CAM tests read) and the same study through a local SLURM
# cluster (tests/test_slurm.py). The other tests leave about one of CI's two cores idle (a single
# Python process, often waiting on a subprocess or the disk), so both builds start in the background
# at the first test, one after the other and at a lower CPU priority (nice), and the tests that read
# them run last (pytest_collection_modifyitems), waiting for them. Nothing else writes where they
# write: runs/, data/ and reports/ of the smoke profile, and a copy of the project for SLURM.

STUDY_FIXTURES = {"smoke_study", "slurm_study"}
NICE = ("nice", "-n", "10")
_WANTED = pytest.StashKey[set]()


def _needs_study(item) -> set[str]:
    return STUDY_FIXTURES & set(getattr(item, "fixturenames", ()))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: `-m "not slow"` leaves out what needs a study
def pytest_collection_modifyitems(config, items):
    needs = [i for i in items if _needs_study(i)]
    for i in needs:
        i.add_marker(pytest.mark.slow)
    items[:] = [i for i in items if not _needs_study(i)] + needs  # stable: module order kept


def pytest_collection_finish(session):
    # What the tests left after deselection need, so `-m "not slow"` or `-k` starts no build.
    session.config.stash[_WANTED] = set().union(*map(_needs_study, session.items))


def project_copy(dst: Path) -> Path:
    """A copy of the project's files (what git tracks, and new files it does not ignore) in ``dst``,
    beside a ../shared, sharing this checkout's .venv (its scxnn is imported first through PYTHONPATH)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    (dst.parent / "shared").symlink_to(SHARED)
    return dst


@dataclass
class Build:
    """One background ``make``, its output in ``log``; ``wait()`` fails the calling test if it failed."""
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    done: threading.Event = field(default_factory=threading.Event)
    returncode: int | None = None
    seconds: float = 0.0
    started: float | None = None  # time.monotonic()
    error: BaseException | None = None

    def run(self) -> None:
        t0 = self.started = time.monotonic()
        try:
            with open(self.log, "w") as out:
                self.returncode = subprocess.run(self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT).returncode
        except BaseException as e:  # reported by wait(), in the test that needs the build
            self.error = e
        finally:
            self.seconds = time.monotonic() - t0
            self.done.set()

    def wait(self, what: str) -> float:
        self.done.wait()
        if self.error is not None:
            raise self.error
        if self.returncode != 0:
            pytest.fail(f"{what}: {' '.join(self.argv)} failed ({self.returncode}); its output ends:\n"
                        f"{self.log.read_text(errors='replace')[-6000:]}")
        return self.seconds


@dataclass
class Studies:
    local: Build | None = None
    slurm: Build | None = None
    cluster: object = None
    project: Path | None = None
    slurm_skip: str | None = None  # why no SLURM build (skip or fail in its tests)
    slurm_error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)  # cluster and project set up (or failed)
    finished: threading.Event = field(default_factory=threading.Event)  # every build done
    threads: tuple | None = None  # (torch threads, OMP_NUM_THREADS) of this process before the builds
    t0: float = field(default_factory=time.monotonic)
    readers_from: float | None = None  # when the first test that reads a build started

    def one_thread_while_building(self) -> None:
        # While a build holds a core, a second OpenMP thread in this process spins at every barrier
        # on the core it cannot get: test_tiny_overfit took 130 s beside the builds with two threads,
        # 17 s alone. With one thread here (and in the subprocesses, through OMP_NUM_THREADS) the tests
        # run at the speed of one core, and the builds take the other.
        import torch

        self.threads = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"

    def all_threads_when_built(self) -> None:
        """Called before each test and by the tests that waited for a build: this process gets its
        threads back once every build is done."""
        if self.threads is None or not self.finished.is_set():
            return
        import torch

        n, omp = self.threads
        self.threads = None
        torch.set_num_threads(n)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp

    def timeline(self) -> list[str]:
        """When each build and the tests that read them ran, in minutes from the first test: which
        of them set the suite's length (docs/benchmarks-and-timings.md)."""
        def at(t: float) -> str:
            return f"{(t - self.t0) / 60:.1f} min"

        lines = []
        for name, b in (("smoke study", self.local), ("smoke study through SLURM", self.slurm)):
            if b is not None and b.started is not None:
                lines.append(f"{name}: {at(b.started)} to {at(b.started + b.seconds)} ({b.seconds:.0f} s)")
        if self.readers_from is not None:
            lines.append(f"the tests that do not read a build: 0.0 to {at(self.readers_from)}; "
                         f"those that do: {at(self.readers_from)} to {at(time.monotonic())}")
        return lines


_STUDIES = pytest.StashKey[Studies]()


def pytest_runtest_setup(item):
    st = item.config.stash.get(_STUDIES, None)
    if st is None:
        return
    if st.readers_from is None and _needs_study(item):
        st.readers_from = time.monotonic()
    st.all_threads_when_built()  # builds done before the tests that read them: the rest get every core


def pytest_terminal_summary(terminalreporter, config):
    st = config.stash.get(_STUDIES, None)
    if st is not None and st.local is not None:
        terminalreporter.section("background builds")
        for line in st.timeline():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def studies(request, tmp_path_factory):
    """Starts the builds the collected tests need (see above) and stops the SLURM cluster at the end."""
    wanted = request.config.stash.get(_WANTED, set())
    st = Studies()
    request.config.stash[_STUDIES] = st
    if not wanted:
        st.ready.set()
        yield st
        return
    tmp = tmp_path_factory.mktemp("studies")
    st.local = Build([*NICE, "make", "--no-print-directory", "-j2", "reports", "PROFILE=smoke"], ROOT, clean_env(),
                     tmp / "smoke.log")

    def chain() -> None:
        try:
            build_all()
        finally:
            st.ready.set()
            st.finished.set()

    def build_all() -> None:
        st.local.run()
        if "slurm_study" not in wanted:
            return
        import slurm_cluster

        st.slurm_skip = slurm_cluster.missing()
        try:
            if st.slurm_skip is None:
                st.cluster = slurm_cluster.start(tmp / "slurm", nice=10)
                st.project = project_copy(tmp / "cluster_project" / "repo")
        except BaseException as e:
            st.slurm_error = e
        finally:
            st.ready.set()
        if st.cluster is not None and st.project is not None:
            env = clean_env(st.cluster.env)
            env["PYTHONPATH"] = str(st.project)
            st.slurm = Build(["make", "--no-print-directory", "-j2", "reports", "PROFILE=smoke", "LAUNCH=slurm"],
                             st.project, env, tmp / "smoke_slurm.log")
            st.slurm.run()

    st.one_thread_while_building()
    worker = threading.Thread(target=chain, name="smoke-study-builds", daemon=True)
    worker.start()
    yield st
    worker.join()  # a session cut short still waits for make, which must not outlive the tests
    st.all_threads_when_built()
    if st.cluster is not None:
        st.cluster.stop()


@pytest.fixture(scope="session")
def smoke_study(studies) -> Path:
    """The smoke study run end to end (`make -j2 reports PROFILE=smoke`): ``runs/smoke`` and
    ``reports/executed/smoke``, built in the background (see above), waited for here. Tests that read
    its models or tables use this instead of skipping when a fresh clone has none yet."""
    if studies.local is None:  # asked for by name at run time, so not seen at collection: built here
        run_make("-j2", "reports")
    else:
        print(f"smoke study: {studies.local.wait('the smoke study'):.0f} s")
        studies.all_threads_when_built()
    return ROOT / "runs" / "smoke"


def require_shared(*parts: str) -> Path:
    """A path under ../shared, or skip with the reason when it is absent (e.g. a clone elsewhere)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (../shared beside the checkout); absent here")
    return p


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """A writable copy of params/ (inside a fake project root) for tests that edit params files."""
    dst = tmp_path / "proj" / "params"
    shutil.copytree(PARAMS, dst)
    return dst


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """The smoke profile's synthetic data + PNG cache in a temporary folder (seconds), shared by the
    training tests: ``paths.data`` = ``<it>/data``, ``paths.runs`` = ``<it>/runs``."""
    from scxnn.config import load_config
    from scxnn.sources import build_study_cache

    tmp = tmp_path_factory.mktemp("smoke")
    cfg = load_config("smoke", {"paths.data": str(tmp / "data"), "paths.runs": str(tmp / "runs")})
    build_study_cache(cfg, progress=False)
    return tmp
