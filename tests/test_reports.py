"""scxnn.reports: sidecars beside tables and figures, and the reports index. Cheap: no models, no data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scxnn import reports
from scxnn.config import load_config

from test_figures import _close_figures, cfg  # noqa: F401  (fixtures: the report folder, figures closed)

matplotlib.use("Agg")


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", text)


# --------------------------------------------------------------------------- sidecars and index


def _populate(cfg) -> Path:
    df = pd.DataFrame({"set": ["internal test", "temporal"], "sensitivity": [0.97, np.nan]})
    reports.write_table(cfg, df, "screening", "Screening at the frozen threshold.",
                        headline="internal test: sensitivity 0.97 [0.93, 1.00], auto-normal 8%",
                        thesis="sensitivity 0.997, auto-normal 7.6%")
    reports.write_table(cfg, df, "plain", "A table without\nnumbers to compare.")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    reports.save_figure(cfg, fig, "roc", caption="ROC per set.", headline="AUC 0.91", thesis="AUC 0.95")
    reports.save_figure(cfg, fig, "training/nodule_curves")  # existing callers: no caption
    return cfg.path("reports")


def test_sidecars_beside_table_and_figure(cfg):
    _populate(cfg)
    tdir, fdir = reports.tables_dir(cfg), reports.figures_dir(cfg)
    assert {p.name for p in tdir.iterdir()} == {f"{n}.{s}" for n in ("screening", "plain") for s in ("csv", "md", "json")}
    meta = json.loads((tdir / "screening.json").read_text())
    assert meta["kind"] == "table" and meta["caption"] == "Screening at the frozen threshold."
    assert meta["headline"].startswith("internal test: sensitivity 0.97")
    assert meta["thesis"] == "sensitivity 0.997, auto-normal 7.6%"
    assert meta["columns"] == ["set", "sensitivity"] and meta["rows"] == 2
    assert json.loads((tdir / "plain.json").read_text())["headline"] is None
    assert "ours: internal test" in (tdir / "screening.md").read_text()
    assert "ours:" not in (tdir / "plain.md").read_text()
    assert (fdir / "roc.png").is_file() and json.loads((fdir / "roc.json").read_text())["thesis"] == "AUC 0.95"
    assert (fdir / "training" / "nodule_curves.json").is_file()
    assert not [p for p in tdir.parent.parent.rglob(".*")], "atomic-write temporaries left behind"


@pytest.mark.parametrize("in_kernel", [True, False], ids=["jupyter-kernel", "plain-python"])
def test_a_saved_figure_shows_under_its_notebook_cell(cfg, monkeypatch, in_kernel):
    # The figures are drawn off pyplot, so a notebook shows one only if save_figure displays it; a
    # command (scxnn evaluate) must print nothing of the kind.
    import IPython
    import IPython.display

    class Shell:
        config = {"IPKernelApp": {}} if in_kernel else {}

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = reports.save_figure(cfg, fig, "shown")
    plt.close(fig)
    if in_kernel:
        assert len(shown) == 1 and shown[0].data == path.read_bytes()
    else:
        assert shown == []


def test_write_table_keeps_old_call_signature(cfg):
    path = reports.write_table(cfg, pd.DataFrame({"a": [1]}), "t", "caption")
    assert path == reports.tables_dir(cfg) / "t.csv"
    assert (path.parent / "t.md").read_text().startswith("**t.** caption\n\n| a |")


def test_index_lists_everything_with_captions_and_links(cfg):
    root = _populate(cfg)
    # an item with no sidecar (written by hand or by an older version) and a second profile
    (root / "tables" / "smoke" / "legacy.csv").write_text("x\n1\n")
    other = load_config("demo", {"paths.reports": str(root)})
    reports.write_table(other, pd.DataFrame({"a": [1]}), "t1", "Demo table.")
    (root / "tables" / "smoke" / ".gitkeep").write_text("")
    (root / "executed" / "smoke" / "02_train").mkdir(parents=True)
    (root / "executed" / "smoke" / "02_train" / "nodule.ipynb").write_text("{}")

    index = reports.write_index(root)
    assert index == root / "README.md"
    text = index.read_text()
    assert "## Profile `demo`" in text and "## Profile `smoke`" in text
    assert text.index("## Profile `demo`") < text.index("## Profile `smoke`")
    smoke = text[text.index("## Profile `smoke`"):]
    for name in ("screening", "plain", "legacy", "roc", "training/nodule_curves"):
        assert f"[{name}](" in smoke
    assert "Screening at the frozen threshold." in smoke
    assert "A table without numbers to compare." in smoke  # caption on one line
    assert "ours: internal test: sensitivity 0.97 [0.93, 1.00], auto-normal 8% · thesis: sensitivity 0.997, auto-normal 7.6%" in smoke
    assert "ours: AUC 0.91 · thesis: AUC 0.95" in smoke
    assert ".gitkeep" not in text and ".json" not in text
    assert smoke.index("[legacy]") < smoke.index("[plain]") < smoke.index("[screening]")
    links = _links(text)
    assert "tables/smoke/screening.csv" in links and "figures/smoke/roc.png" in links
    assert "executed/smoke/02_train/nodule.ipynb" in links
    for link in links:
        assert (root / unquote(link)).is_file(), link


def test_index_is_deterministic_and_not_rewritten_but_renewed(cfg):
    import os

    root = _populate(cfg)
    first = reports.write_index(root)
    text, inode = first.read_text(), first.stat().st_ino
    os.utime(first, (1, 1))
    _populate(cfg)  # same content rewritten
    assert reports.write_index(root).read_text() == text
    # The same file (not rewritten), but its time stamp renewed: it is a Make target, and one older
    # than the notebooks it lists would be out of date for every later `make -q`.
    assert first.stat().st_ino == inode and first.stat().st_mtime > 1
    assert reports.index_markdown(root, ["smoke", "nope"]) == reports.index_markdown(root, ["smoke"])
    assert "Profile `smoke`" not in reports.index_markdown(root, ["nope"])


def test_index_of_empty_reports(tmp_path):
    text = reports.write_index(tmp_path).read_text()
    assert text.startswith("# Reports") and "No tables or figures yet." in text
