"""scxnn.thesis: the reference numbers stay readable even where the transcription has a YAML slip."""

from __future__ import annotations

import warnings

import pytest

from scxnn.thesis import ThesisTablesWarning, load_tables, maybe_tables

from conftest import require_shared


@pytest.mark.realdata
def test_real_tables_load_with_the_numbers_we_need():
    shared = require_shared()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        t = load_tables(shared)
    assert t["table2_normal_vs_abnormal"]["internal"]["ai_normal"] == {"ref_normal": 109, "ref_abnormal": 4}
    assert t["training"]["lambda"] == 0.8
    assert sum(v["hard"] for k, v in t["table1_dataset"].items() if isinstance(v, dict) and "hard" in v) == 6628


def test_a_broken_section_is_left_out_with_a_warning(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "tables.yaml").write_text(
        "good:\n  a: 1\nbroken:\n  - x\n  y: 2\nlater:\n  b: [1, 2]\n"
    )
    with pytest.warns(ThesisTablesWarning, match="'broken'"):
        t = load_tables(tmp_path)
    assert t == {"good": {"a": 1}, "later": {"b": [1, 2]}}


def test_absent_shared_is_a_clear_error_or_none(tmp_path):
    with pytest.raises(FileNotFoundError, match="need ../shared"):
        load_tables(tmp_path)
    assert maybe_tables(tmp_path) is None
