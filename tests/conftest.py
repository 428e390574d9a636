"""Shared fixtures. Tests run from any cwd; paths are anchored at the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared").resolve()
PARAMS = ROOT / "params"


def run_make(*args: str, profile: str = "smoke", check: bool = True) -> subprocess.CompletedProcess:
    """``make ARGS PROFILE=profile`` in the repository, failing the test with make's output on error."""
    # A clean environment for the inner make: the outer `make test`'s jobserver flags must not leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    r = subprocess.run(["make", "--no-print-directory", *args, f"PROFILE={profile}"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="session")
def smoke_study() -> Path:
    """The smoke study run end to end (`make -j2 reports PROFILE=smoke`, ~10 min on 2 cores), once per
    session, by the first test that needs it: ``runs/smoke`` and ``reports/executed/smoke``. Tests that
    read its models or tables use this instead of skipping when a fresh clone has none yet."""
    run_make("-j2", "reports")
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
