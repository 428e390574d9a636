"""Committed notebooks: stripped of outputs, thin, and parametrised the way papermill needs."""

from __future__ import annotations

import ast
import json

import pytest

from scxnn.pipeline import KERNEL_NAME, STEPS

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load(path):
    return json.loads(path.read_text())


def test_one_notebook_per_step():
    assert [p.stem for p in NOTEBOOKS] == list(STEPS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = _load(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: run `make setup` (nbstripout filter)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_only_literals(path):
    nb = _load(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "exactly one `parameters` cell, the first code cell"
    tree = ast.parse("".join(tagged[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.append(node.targets[0].id)
    assert names[:2] == ["profile", "overrides"]
    if path.stem == "02_train_disease_model":
        assert "finding" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_stay_thin(path):
    """Glue and plots only: no functions or classes defined in notebooks (they belong in scxnn)."""
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == KERNEL_NAME
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            tree = ast.parse("".join(cell["source"]))
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
            assert not defs, f"{path.name}: move {[d.name for d in defs]} into the scxnn package"


def test_nbstripout_filter_strips_outputs_but_keeps_the_parameters_tag(tmp_path):
    """What `make setup` installs: the filter must keep papermill's `parameters` tag."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import nbformat

    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text()
    nb = nbformat.read(ROOT / "notebooks" / "01_preprocessing.ipynb", as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    exe = shutil.which("nbstripout", path=str(Path(sys.executable).parent)) or "nbstripout"
    subprocess.run([exe, str(dirty)], check=True)
    clean = json.loads(dirty.read_text())
    code = [c for c in clean["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"]["tags"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_what_the_git_filter_writes(path):
    # The filter the venv bootstrap installs (nbstripout --keep-id) must leave a committed notebook
    # byte for byte as it is; otherwise installing it shows every notebook as modified.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id"], input=path.read_bytes(), capture_output=True, check=True)
    assert out.stdout == path.read_bytes(), f"{path.name}: run `.venv/bin/python -m nbstripout --keep-id {path}` and commit"


def test_the_installed_git_filter_keeps_cell_ids():
    import subprocess

    # `make test` built the venv (and installed the filter) before pytest started.
    assert (ROOT / ".venv" / ".installed").is_file(), "run the tests through `make test`, which builds .venv"
    clean = subprocess.run(["git", "config", "--get", "filter.nbstripout.clean"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "nbstripout --keep-id" in clean, f"filter.nbstripout.clean is {clean!r}: rerun `make setup`"
