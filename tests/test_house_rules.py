"""Rules of the code base that no single module can check for itself: one home per job, and a
test suite whose markers say what each test needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

TESTS = ROOT / "tests"
SCXNN = ROOT / "scxnn"
# The helper that skips a test when ../shared is absent: a test that reaches it needs ../shared. (A
# test that only adds real films when they are there, such as the fuzzer's seeds, runs without it.)
SHARED_NAMES = {"require_shared"}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def _marked_realdata(decorators) -> bool:
    return any("realdata" in ast.unparse(d) for d in decorators)


def _module_marked(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
               and "realdata" in ast.unparse(n.value) for n in tree.body)


def unmarked_shared_tests(source: str) -> list[str]:
    """Test functions of a module that reach ../shared, directly or through a module-level helper or
    fixture (called, used as a fixture argument, or in a decorator such as parametrize), and carry no
    ``realdata`` marker."""
    tree = ast.parse(source)
    if _module_marked(tree):
        return []
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    needs = {name for name, f in funcs.items() if _names(f) & SHARED_NAMES}
    changed = True
    while changed:  # helpers of helpers
        used = {name for name, f in funcs.items()
                if name not in needs and (_names(f) | {a.arg for a in f.args.args}) & needs}
        changed = bool(used)
        needs |= used
    return sorted(name for name in needs if name.startswith("test_") and not _marked_realdata(funcs[name].decorator_list))


def test_the_realdata_rule_sees_direct_indirect_and_fixture_uses():
    src = '''
import pytest
from conftest import require_shared, SHARED

def _rows():
    return list(require_shared("realdata").iterdir())

def _optional_seeds():
    return [p for p in (SHARED / "realdata").glob("*.dcm")]

@pytest.fixture
def real(tmp_path):
    return require_shared("realdata")

def test_direct():
    require_shared("x")

def test_unrelated(): ...

def test_optional_real_seeds():
    _optional_seeds()

@pytest.mark.parametrize("row", _rows())
def test_param(row): ...

def test_fixture(real): ...

@pytest.mark.realdata
def test_marked():
    require_shared("x")

def test_synthetic(tmp_path): ...
'''
    assert unmarked_shared_tests(src) == ["test_direct", "test_fixture", "test_param"]
    assert unmarked_shared_tests("import pytest\npytestmark = [pytest.mark.realdata]\n" + src) == []


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_a_test_that_needs_shared_carries_the_realdata_marker(path: Path):
    # `pytest -m "not realdata"` is how a clone without ../shared runs the suite; a test that skips
    # there without the marker would look like coverage it is not.
    assert unmarked_shared_tests(path.read_text()) == [], f"{path.name}: mark these @pytest.mark.realdata"


def _scxnn_sources() -> list[Path]:
    return sorted(SCXNN.rglob("*.py"))


def test_one_home_for_hashing():
    # Ids, fingerprints and cache keys all hash through utils.sha256_text / sha256_file, so a change of
    # algorithm or encoding is made once and cannot leave one key computed differently from another.
    users = [p.relative_to(ROOT).as_posix() for p in _scxnn_sources() if re.search(r"^\s*import hashlib|hashlib\.", p.read_text(), re.M)]
    assert users == ["scxnn/utils.py"]


def test_one_home_for_interval_formatting():
    # An interval printed by hand ("{lo:.3f}") rounds a lower bound of 0.9996 up to 1.000; every
    # "x [lo, hi]" goes through metrics.fmt_ci, which rounds bounds outward.
    pattern = re.compile(r"_lo\b[^}\n]*:\.\d+f\}|\[\{[^}\n]*lo[^}\n]*:\.\d+f\}")
    offenders = [f"{p.relative_to(ROOT).as_posix()}:{i}" for p in _scxnn_sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    defs = [p.relative_to(ROOT).as_posix() for p in _scxnn_sources() if re.search(r"^def fmt_ci\(", p.read_text(), re.M)]
    assert defs == ["scxnn/metrics.py"]


# --------------------------------------------------------------------------- make tracks each step's code


def _module_files() -> dict[str, Path]:
    out = {}
    for p in SCXNN.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.Module, package: str, mods: dict[str, Path], top_only: bool) -> set[str]:
    nodes = [n for stmt in tree.body for n in ([stmt] + (stmt.body + stmt.orelse if isinstance(stmt, (ast.If, ast.Try)) else []))] \
        if top_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in n.names]
        else:
            continue
        out |= {m for m in (_resolve(t, mods) for t in targets if t.startswith("scxnn")) if m}
    return out


def _loaded_by(start: set[str], mods: dict[str, Path]) -> set[str]:
    """What importing ``start`` loads: the modules and their module-level imports, transitively,
    with the packages above each (their ``__init__`` runs first)."""
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        p = mods[m]
        todo += _imports(ast.parse(p.read_text()), m if p.name == "__init__.py" else m.rpartition(".")[0], mods, top_only=True)
        todo += [m.rsplit(".", k)[0] for k in range(1, m.count("."))]
    return seen


def _make_sources(var: str) -> set[str]:
    import glob

    mk = (ROOT / "Makefile").read_text()
    text = re.search(rf"^{var} := (.*)$", mk, re.M).group(1)
    text = text.replace("$(CORE_SRC)", re.search(r"^CORE_SRC := (.*)$", mk, re.M).group(1))
    files = {Path(f) for pat in re.findall(r"scxnn/[\w/*.]+\.py", text) for f in glob.glob(str(ROOT / pat))}
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files}


STEP_SOURCES = {"01": "SRC_01", "02": "SRC_02", "03": "SRC_03", "04": "SRC_04", "05": "SRC_04", "06": "SRC_06", "07": "SRC_07", "08": "SRC_08"}


@pytest.mark.parametrize("step", sorted(STEP_SOURCES))
def test_make_reruns_a_notebook_when_a_module_it_loads_changes(step):
    # A module the notebook loads but its target does not list would let `make reports` keep tables
    # computed by the old code. Functions that import more inside their body are the step's own
    # business (the lists add those the step calls).
    import json

    mods = _module_files()
    nb = json.loads(next((ROOT / "notebooks").glob(f"{step}_*.ipynb")).read_text())
    code = "\n".join(line for c in nb["cells"] if c["cell_type"] == "code"
                     for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
    loaded = _loaded_by(_imports(ast.parse(code), "", mods, top_only=False), mods)
    missing = sorted(loaded - _make_sources(STEP_SOURCES[step]))
    assert not missing, f"notebook {step} loads {missing}, which the Makefile's {STEP_SOURCES[step]} does not list"


def test_make_reruns_the_variants_when_a_module_they_load_changes():
    mods = _module_files()
    missing = sorted(_loaded_by({"scxnn.variants"}, mods) - _make_sources("SRC_V"))
    assert not missing, f"the variants load {missing}, which SRC_V does not list"


@pytest.mark.parametrize("args, running", [((), "cores"), (("-j1",), 1), (("JOBS=1",), 1), (("-j2",), 2)],
                         ids=["default", "-j1", "JOBS=1", "-j2"])
def test_make_reports_uses_every_core_unless_told_otherwise(args, running):
    # A newcomer types `make reports`, without -j: it must still run one notebook per core, each with
    # cores/jobs threads; -j1 or JOBS=1 runs one at a time with every core.
    import subprocess

    from conftest import EVERYTHING_OUT_OF_DATE, run_make

    cores = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    gpu = subprocess.run("command -v nvidia-smi >/dev/null && nvidia-smi -L | grep -c '^GPU'", shell=True,
                         capture_output=True, text=True).stdout.strip() not in ("", "0")
    jobs = (1 if gpu else cores) if running == "cores" else running
    out = run_make("-n", *EVERYTHING_OUT_OF_DATE, *args, "reports").stdout
    threads = set(re.findall(r"OMP_NUM_THREADS=(\d+) \S+ -m scxnn (?:notebook|variant)", out))
    assert threads == {str(max(cores // jobs, 1))}, out[-2000:]
