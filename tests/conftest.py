"""Shared fixtures. Tests run from any cwd; paths are anchored at the repository root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared").resolve()
PARAMS = ROOT / "params"


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
    from scxnn.preprocess import build_study_cache

    tmp = tmp_path_factory.mktemp("smoke")
    cfg = load_config("smoke", {"paths.data": str(tmp / "data"), "paths.runs": str(tmp / "runs")})
    build_study_cache(cfg, progress=False)
    return tmp
