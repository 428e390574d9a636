"""The repository's shape and its pinned environment, as the README promises them."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_deps() -> list[str]:
    p = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return p["dependencies"] + p["optional-dependencies"]["dev"]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            m = PIN.match(line)
            assert m, f"constraints.txt: not an exact pin: {line!r}"
            pins[_norm(m.group(1))] = m.group(3)
    return pins


def test_top_level_layout():
    # Tracked plus untracked-but-not-ignored: what a commit of this tree would hold.
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    top = {t.split("/")[0] for t in tracked}
    required = {"notebooks", "scxnn", "params", "reports", "tests", "docs", "environment.yml", "Makefile",
                "README.md", "pyproject.toml", ".ci", ".gitattributes", ".gitignore"}
    assert required <= top, f"missing at top level: {sorted(required - top)}"
    assert top <= required, f"unexpected at top level: {sorted(top - required)}"
    for sub in ("tables", "figures", "executed"):
        assert (ROOT / "reports" / sub).is_dir()


def test_generated_folders_are_ignored():
    probe = ["data/x.png", "runs/x.pt", "reports/executed/demo/01.ipynb", "reports/tables/demo/t.csv",
             "reports/figures/demo/f.png", ".venv/bin/python", "x.dcm"]
    out = subprocess.run(["git", "check-ignore", *probe], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(out) == sorted(probe)


def test_every_dependency_is_pinned_exactly_and_consistently():
    pins = _constraints()
    for dep in _pyproject_deps():
        m = PIN.match(dep)
        assert m, f"pyproject.toml: {dep!r} is not pinned with =="
        name, version = _norm(m.group(1)), m.group(3)
        assert pins.get(name) == version, f"{name}: pyproject {version} vs constraints {pins.get(name)}"


def test_the_machine_facts_are_respected():
    pins = _constraints()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert "opencv-python-headless" in pins
    assert "opencv-python" not in pins and "opencv-contrib-python" not in pins  # two cv2 builds clash
    assert "pylibjpeg-libjpeg" not in pins  # GPL
    for need in ("pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "python-gdcm", "jupyterlab", "ipykernel", "papermill",
                 "scikit-learn", "skops", "pandas", "pyarrow", "seaborn", "matplotlib", "albumentations", "grad-cam",
                 "tqdm", "pyyaml", "pytest", "hypothesis", "nbstripout"):
        assert need in pins, need


def test_environment_yml_installs_the_same_pinned_set():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "--constraint .ci/constraints.txt" in pip
    listed = [d for d in pip if not d.startswith("-")]
    assert sorted(listed) == sorted(_pyproject_deps())


def test_ci_runs_make_test():
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", run, re.M)
    assert "make test" in (ROOT / "README.md").read_text()


def _scxnn_imports() -> dict[str, set[str]]:
    """{top-level scxnn module: the scxnn modules it imports}, module-level and in-function imports."""
    import ast

    out: dict[str, set[str]] = {}
    for p in sorted((ROOT / "scxnn").rglob("*.py")):
        rel = p.relative_to(ROOT / "scxnn").with_suffix("").parts
        mod = rel[0] if rel[0] != "__init__" else "__init__"
        deps = out.setdefault(mod, set())
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: inside a subpackage
                continue
            names = ([node.module] if node.module != "scxnn" else [f"scxnn.{a.name}" for a in node.names]) \
                if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deps |= {n.split(".")[1] for n in names if n.startswith("scxnn.")}
        deps.discard(mod)
    out.pop("__init__", None)
    return out


def _floors() -> dict[str, int]:
    from scxnn import LAYERS

    return {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def test_every_module_has_a_floor_in_the_house():
    from scxnn import LAYERS

    assert sorted(_scxnn_imports()) == sorted(_floors()), "place new modules in scxnn.LAYERS (and its docstring)"
    doc = __import__("scxnn").__doc__
    for i, (name, mods) in enumerate(LAYERS, 1):
        assert f"{i}. {name}: {', '.join(mods)}" in doc, name


@pytest.mark.parametrize("module", sorted(set(_floors()) - {"__main__"}))
def test_tests_mirror_the_package(module):
    """A newcomer finds the tests of scxnn/<m>.py (or of the package scxnn/<m>/) in tests/test_<m>.py,
    and that file imports the module it is named for."""
    path = ROOT / "tests" / f"test_{module}.py"
    assert path.is_file(), f"scxnn.{module} has no tests/test_{module}.py"
    imports = rf"^\s*(from scxnn\.{module}\b|import scxnn\.{module}\b|from scxnn import .*\b{module}\b)"
    assert re.search(imports, path.read_text(), re.M), f"{path.name} does not import scxnn.{module}"


@pytest.mark.parametrize("module", sorted(_scxnn_imports()))
def test_no_module_imports_from_a_higher_floor(module):
    floors = _floors()
    higher = sorted(d for d in _scxnn_imports()[module] if d in floors and floors[d] > floors[module])
    assert not higher, f"scxnn.{module} (floor {floors[module] + 1}) imports {higher} from higher floors"


def _module_graph() -> dict[str, set[str]]:
    """{dotted scxnn module: the scxnn modules it imports}: module-level, in-function and relative
    imports. ``from scxnn.x import y`` is an import of ``scxnn.x.y`` when that is a module, else of
    ``scxnn.x``; the implicit import of a package's ``__init__`` by its submodules is not an edge."""
    import ast

    mods = {}
    for p in sorted((ROOT / "scxnn").rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        package = name if p.name == "__init__.py" else name.rpartition(".")[0]
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None when it has none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = "done"
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_cycle_finder_finds_cycles_and_the_graph_sees_every_kind_of_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    g = _module_graph()
    assert "scxnn.pixels" in g["scxnn.batch"]  # module level
    assert "scxnn.pixels" in g["scxnn.synth.realism"]  # inside a function
    assert "scxnn.synth.build" in g["scxnn.synth"] and "scxnn.synth" in g["scxnn.sources"]


@pytest.mark.parametrize("graph", ["modules", "floors' units"])
def test_no_import_cycle(graph):
    """No scxnn module imports, directly or not, one that imports it back: not between modules, and
    not between the units the floors place (a subpackage such as ``synth`` counting as one)."""
    cycle = _cycle(_module_graph() if graph == "modules" else _scxnn_imports())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    seen.discard(start)
    return seen


def test_the_screening_path_does_not_reach_the_study_machinery():
    """``scxnn predict`` runs at a site, film by film: it needs the trained run, not the training or
    the ablation tables (issue 33). Every kind of import counts, inside functions too."""
    reach = _reach(_module_graph(), "scxnn.predict")
    study = sorted(reach & {"scxnn.train", "scxnn.variants", "scxnn.study_tables", "scxnn.evaluation", "scxnn.synth"})
    assert not study, f"scxnn.predict reaches {study}"
    assert len(reach) <= 24, f"scxnn.predict reaches {len(reach)} modules: {sorted(reach)}"


def _imports_inside_functions() -> tuple[int, int, list[str]]:
    """(package-internal imports inside functions, all package-internal imports, where the first are)."""
    import ast

    inside, total, where = 0, 0, []
    for p in sorted((ROOT / "scxnn").rglob("*.py")):
        tree = ast.parse(p.read_text())
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_func = {id(m) for f in funcs for m in ast.walk(f) if m is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "scxnn"):
                n = len(node.names)
            elif isinstance(node, ast.Import):
                n = sum(a.name.split(".")[0] == "scxnn" for a in node.names)
            else:
                continue
            total += n
            if id(node) in in_func and n:
                inside += n
                where.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    return inside, total, where


def test_a_module_header_shows_what_it_depends_on():
    # Imports inside functions hide a file's dependencies; the few left are heavy imports of one
    # command (cli) or of one optional path (onnxruntime), each with its reason beside it.
    inside, total, where = _imports_inside_functions()
    assert inside <= 0.30 * total, f"{inside} of {total} package-internal imports sit inside functions: {where}"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scxnn").rglob("*.py")))
def test_no_function_is_longer_than_80_lines(path):
    import ast

    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse((ROOT / path).read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, f"{path}: {', '.join(long)}"
