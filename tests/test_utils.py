"""The one seeding function and atomic writes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from scxnn.utils import atomic_open, atomic_write_text, remove_stale_temporaries, seed_everything, sha256_file


def _draw():
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_seed_everything_reproduces_python_numpy_and_torch():
    g1 = seed_everything(123)
    a = (*_draw(), g1.random())
    g2 = seed_everything(123)
    b = (*_draw(), g2.random())
    assert a == b
    seed_everything(124)
    assert _draw() != a[:3]


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    p = tmp_path / "sub" / "artifact.txt"
    atomic_write_text(p, "first")
    assert p.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as fh:
            fh.write("half-writ")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "first"  # the old version survives
    assert os.listdir(p.parent) == ["artifact.txt"]  # and no temp file is left behind
    assert len(sha256_file(p)) == 64


def test_atomic_open_refuses_append(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_a_kill_9_mid_write_leaves_a_temporary_that_the_sweep_removes(tmp_path):
    import subprocess
    import sys

    atomic_write_text(tmp_path / "best.pt", "the previous checkpoint")
    write_then_die = ("import os, signal, sys\nfrom scxnn.utils import atomic_open\n"
                      "with atomic_open(sys.argv[1], 'wb') as fh:\n"
                      "    fh.write(b'x' * 4096); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", write_then_die, str(tmp_path / "best.pt")])
    assert r.returncode == -9
    left = [p.name for p in tmp_path.iterdir() if p.name != "best.pt"]
    assert len(left) == 1 and left[0].startswith(".best.pt.") and left[0].endswith(".tmp")
    assert remove_stale_temporaries(tmp_path) == 1
    assert os.listdir(tmp_path) == ["best.pt"] and (tmp_path / "best.pt").read_text() == "the previous checkpoint"


@pytest.mark.parametrize("name, removed", [
    (".best.pt.abc123.tmp", True),
    (".history.csv.k2_9zq1x.tmp", True),
    ("best.pt", False),
    ("best.pt.tmp", False),  # not a dotfile
    (".notes.tmp", False),  # no random part
    (".best.pt.ABC123.tmp", False),  # mkstemp draws lower case only
])
def test_the_sweep_takes_only_atomic_open_temporaries(name, removed, tmp_path):
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".best.pt.abc123.tmp").write_bytes(b"x")  # other folders are another step's
    assert remove_stale_temporaries(tmp_path) == int(removed)
    assert (tmp_path / name).exists() is not removed and (tmp_path / "sub" / ".best.pt.abc123.tmp").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_the_umask_allows(tmp_path, umask, mode):
    # mkstemp's 0600 made every report unreadable to colleagues on a shared server.
    from scxnn.utils import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        with atomic_open(tmp_path / "table.csv", "wb") as fh:
            fh.write(b"a,b\n")
    finally:
        os.umask(old)
    for name in ("report.html", "table.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
