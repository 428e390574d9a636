"""The thesis' published numbers (``../shared/thesis/tables.yaml``), for "thesis" columns beside ours.

The file is a hand transcription. It is parsed one top-level section at a time, so that a YAML slip in
one section (its ``preprocessing`` list, for one, mixes a sequence and a mapping) costs only that
section, with a warning, instead of every table's reference column.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TABLES_RELPATH = Path("thesis") / "tables.yaml"
_TOP_KEY = re.compile(r"^([A-Za-z_][\w]*)\s*:")


class ThesisTablesWarning(UserWarning):
    """A section of tables.yaml could not be parsed and is left out."""


def tables_path(shared: str | Path) -> Path:
    return Path(shared) / TABLES_RELPATH


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> dict[str, Any]:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _TOP_KEY.match(line)
        if m:
            current = m.group(1)
            sections[current] = []
        if current is not None:
            sections[current].append(line)
    out: dict[str, Any] = {}
    for key, lines in sections.items():
        try:
            out.update(yaml.safe_load("\n".join(lines)) or {})
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" near line {mark.line + 1} of the section" if mark else ""
            warnings.warn(f"{path}: section {key!r} is not valid YAML{where}; left out", ThesisTablesWarning, stacklevel=3)
    return out


def load_tables(shared: str | Path) -> dict[str, Any]:
    """All parsable sections of the thesis tables, keyed by section name.

    Raises FileNotFoundError with the expected location when ``../shared`` is not beside the project.
    """
    path = tables_path(shared).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"thesis tables not found at {path}: the 'thesis' columns need ../shared beside the checkout")
    return _load(path, path.stat().st_mtime)


def maybe_tables(shared: str | Path) -> dict[str, Any] | None:
    """Like :func:`load_tables`, but ``None`` when the file is absent (reports then omit the column)."""
    try:
        return load_tables(shared)
    except FileNotFoundError:
        return None
