"""Issue 14: bad input never ends a batch, is refused with a reason a person can act on, never
takes more than 2 GB, and leaves nothing running. The defect files are generated (tests/defects.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import defects
from conftest import ROOT
from scxnn import plausibility
from scxnn.config import load_config
from scxnn.dicom import ImageReadError, read_image

PRE = load_config("smoke").preprocess
RSS_LIMIT_MB = 2048


def _write(folder: Path, name: str) -> tuple[Path, str | None]:
    path = folder / f"{name}{defects.SUFFIX.get(name, '.dcm')}"
    folder.mkdir(parents=True, exist_ok=True)
    return path, defects.DEFECTS[name](path)


def _verdict(path: Path, voi_lut: bool = False) -> str | None:
    try:
        r = read_image(path, voi_lut=voi_lut, max_megapixels=PRE.max_megapixels)
    except ImageReadError as e:
        return e.reason
    return plausibility.check(r.pixels, PRE, r.scope_flags)


@pytest.mark.parametrize("name", sorted(defects.DEFECTS))
def test_each_defect_is_read_plausibly_or_refused_with_its_reason(tmp_path, name):
    path, expected = _write(tmp_path, name)
    why = _verdict(path, voi_lut=name == "voi_lut_sequence")
    if expected is None:
        assert why is None
    else:
        assert why and re.search(expected, why), why
        assert "Traceback" not in why and len(why.splitlines()) == 1


@pytest.mark.parametrize("name, voi", [("modality_lut_sequence", False), ("voi_lut_sequence", True)])
def test_lut_sequences_are_applied(tmp_path, name, voi):
    # Every LUT sequence used to be refused ("Unable to determine the endianness"): the header copy the
    # LUT stage works on lacked the file's encoding. Both test LUTs invert the 12-bit range.
    path, _ = _write(tmp_path, name)
    r = read_image(path, voi_lut=voi)
    np.testing.assert_array_equal(r.pixels, 4095.0 - defects.chest())


@pytest.mark.parametrize("max_mpx, refused", [(40, False), (0.05, True)])
def test_the_memory_budget_is_a_setting_and_its_reason_names_it(tmp_path, max_mpx, refused):
    path = defects.good_dicom(tmp_path / "film.dcm")  # 320 x 288 = 0.09 Mpx
    if refused:
        with pytest.raises(ImageReadError, match=r"0\.05 Mpx \(preprocess\.max_megapixels\)"):
            read_image(path, max_megapixels=max_mpx)
    else:
        assert read_image(path, max_megapixels=max_mpx).pixels.shape == (320, 288)


def _batch_folder(root: Path) -> tuple[Path, dict[str, str | None]]:
    """Good films (three encodings) plus every defect file."""
    folder = root / "in"
    expected: dict[str, str | None] = {}
    for make in (defects.good_dicom, defects.good_rle, defects.good_jpeg):
        expected[make(folder / f"{make.__name__}.dcm").name] = None
    for name in defects.DEFECTS:
        if name != "voi_lut_sequence":  # the profile reads without the VOI LUT
            path, exp = _write(folder, name)
            expected[path.name] = exp
    return folder, expected


def test_a_predict_batch_finishes_over_good_films_and_every_defect(tmp_path):
    from test_predict import _FakeScreener

    from scxnn.predict import predict

    folder, expected = _batch_folder(tmp_path)
    explode = defects.good_dicom(folder / "explodes_in_the_model.dcm", seed=3)
    s = _FakeScreener(score_value=-1.0)
    s.models, s.threshold_name, s.device, s.bf16 = {}, "point", type("D", (), {"type": "cpu"})(), False
    real_score = s.score

    def score(img8):  # any failure inside scoring (a MemoryError, a bug) rejects that film only
        # Files are screened in path order: explodes_in_the_model.dcm is the first to reach the models.
        if s.calls == 0:
            s.calls += 1
            raise RuntimeError("simulated failure inside the model")
        return real_score(img8)

    s.score = score
    t = predict(None, [folder], tmp_path / "out", overlays=False, progress=False, screener=s, names_in_report=True)
    names = t["file"].map(lambda f: Path(f).name)
    assert sorted(names) == sorted([*expected, explode.name])  # one row per input
    for name, exp in expected.items():
        row = t[names == name].iloc[0]
        if exp is None:
            assert row["decision"] != "rejected", (name, row["reason"])
        else:
            assert row["decision"] == "rejected" and re.search(exp, row["reason"]), (name, row["reason"])
    assert (t["decision"] == "rejected").sum() == len([e for e in expected.values() if e]) + 1
    assert t["reason"].str.contains("could not be screened \\(RuntimeError: simulated failure").sum() == 1
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == len(t)


_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[2], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _peak_rss_mb(code: str, cwd: Path, out: Path, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Peak RSS of ``code`` run in a fresh Python, and of everything it waited for, in MB.

    Neither getrusage(RUSAGE_CHILDREN) (the largest child of the whole session: once the smoke study
    had been built it measured a training job) nor wait4 on a child of pytest will do: Linux carries
    the forking process's high-water mark into the child's ru_maxrss across exec, so a child of a
    2-GB pytest reads 2 GB (CI failed both ways). A small Python in between forks the measured one
    and reports its wait4."""
    stdout, stderr, peak = out / "child.out", out / "child.err", out / "child.peak"
    with open(stdout, "w") as o, open(stderr, "w") as e:
        done = subprocess.run([sys.executable, "-c", _MEASURE, textwrap.dedent(code), str(peak)], cwd=cwd, stdout=o,
                              stderr=e, text=True, timeout=timeout)
    result = subprocess.CompletedProcess(done.args, done.returncode, stdout.read_text(), stderr.read_text())
    return (int(peak.read_text()) / 1024 if peak.is_file() else float("nan")), result


def test_the_peak_is_this_childs_not_the_sessions(tmp_path):
    # The regression behind a red CI: a big earlier child (the smoke study) was charged to the batch.
    subprocess.run([sys.executable, "-c", "b = bytearray(600 * 2**20); b[::4096] = b'x' * len(b[::4096])"], check=True)
    # ... and a big pytest: its high-water mark once came along into every child it forked.
    ballast = bytearray(700 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    small, done = _peak_rss_mb("print('ok')", ROOT, tmp_path)
    del ballast
    assert done.returncode == 0 and done.stdout == "ok\n"
    assert small < 300, small
    big, _ = _peak_rss_mb("import subprocess, sys; subprocess.run([sys.executable, '-c', "
                          "\"b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])\"], check=True)", ROOT, tmp_path)
    assert big > 400, big  # a grandchild the child waited for still counts


@pytest.mark.timeout(600)
def test_no_defect_makes_preprocess_or_predict_use_more_than_2_gb(tmp_path):
    folder, expected = _batch_folder(tmp_path)
    code = f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from scxnn.cli import main
        from scxnn.predict import predict
        from test_predict import _FakeScreener
        assert main(["preprocess", {str(folder)!r}, "--out", {str(tmp_path / 'png')!r}, "--profile", "smoke", "--no-progress"]) == 0
        s = _FakeScreener(score_value=-1.0)
        s.models, s.threshold_name, s.device, s.bf16 = {{}}, "point", type("D", (), {{"type": "cpu"}})(), False
        predict(None, [{str(folder)!r}], {str(tmp_path / 'pred')!r}, overlays=False, progress=False, screener=s)
    """
    peak, done = _peak_rss_mb(code, ROOT, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = pd.read_csv(tmp_path / "png" / "skipped.csv")
    assert len(skipped) == len([e for e in expected.values() if e])
    print(f"peak RSS of preprocess + predict over the defect batch: {peak:.0f} MB")
    assert peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"


@pytest.mark.timeout(120)
def test_killing_preprocess_leaves_no_worker_behind(tmp_path):
    import os
    import signal

    import psutil

    folder = tmp_path / "in"
    for i in range(40):
        defects.good_dicom(folder / f"f{i}.dcm", seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "scxnn", "preprocess", str(folder), "--out", str(tmp_path / "out"),
                             "--profile", "smoke", "--set", "data.workers=2", "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers: list = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [c for c in parent.children(recursive=True) if "multiprocessing" in " ".join(c.cmdline())
                   and "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} worker(s) outlived a kill -9 of their parent"
