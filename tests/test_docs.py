"""The README and docs/: every relative link resolves, the README stays short, and it links every page.

An anchor must match a heading of the target file under GitHub's rule: lowercase; drop what is not a
letter, digit, space, hyphen or underscore; spaces to hyphens; a repeated slug gets -1, -2, ...
Links inside fenced code blocks and inline code are not links; http(s) and mailto links are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.\-]*:|//)", re.I)  # http:, https:, mailto:, ...


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks (their lines blanked, so line numbers stay)."""
    out, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())  # \w: letters, digits and the underscore
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every relative link of a Markdown file, outside code."""
    prose = _prose(path.read_text(encoding="utf-8"))
    prose = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)  # keep line numbers
    out = []
    for m in LINK.finditer(prose):
        target = m.group(1)
        if target and not EXTERNAL.match(target):
            out.append((prose.count("\n", 0, m.start()) + 1, target))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for line, target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: ({target})"
        if not dest.exists():
            problems.append(f"{where} no such file or folder: {dest}")
        elif anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where} an anchor into a file that is not Markdown")
            elif unquote(anchor) not in anchors(dest):
                problems.append(f"{where} no heading with the slug {anchor!r} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, f"{len(problems)} broken link(s) in {page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to docs/ (at most {MAX_README_LINES})"


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no Markdown page"
    linked = {(README.parent / unquote(t.partition("#")[0])).resolve() for _, t in links(README)}
    missing = [p.name for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_page_has_a_title_and_a_way_back(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines and re.match(r"^# \S", lines[0]), f"{page.name}: the first line is not a '# Title'"
    back = [t for _, t in links(page) if (page.parent / t.partition("#")[0]).resolve() == README.resolve()]
    assert back, f"{page.name}: no link back to the README"


def test_checker_sees_broken_links(tmp_path):
    """The checker itself: slugs, duplicates, code blocks and external links."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Run (`scxnn.x`, notebook 08)\n\n## Same\n\n## Same\n")
    (tmp_path / "sub").mkdir()
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## The definite-normal promise: validate, certify, screen\n\n"
        "[ok](other.md) [ok](other.md#run-scxnnx-notebook-08) [ok](other.md#same-1) [ok](sub)\n"
        "[ok](#the-definite-normal-promise-validate-certify-screen) [ok](https://example.org/x#y)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n"
        "[bad](missing.md) [bad](other.md#same-2) [bad](#nope) [bad](sub#x)\n")
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert [p.split(": (")[1].split(")")[0] for p in problems] == ["missing.md", "other.md#same-2", "#nope", "sub#x"]
    assert slug("SCXNN — Strictly Chest X-ray Normal Network, reproduced") == \
        "scxnn--strictly-chest-x-ray-normal-network-reproduced"
