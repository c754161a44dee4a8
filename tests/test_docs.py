"""The user's documents render as written: every code block of README.md and docs/*.md is
closed, and every relative link or image points at a file (and heading) that exists.

An unclosed fence swallows the rest of a page into one code block (the README's config
example once took its sections on layouts, profiles and faults with it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def is_fence(line: str) -> bool:
    return line.lstrip().startswith("```")


def fenced_lines(text: str) -> list[tuple[str, bool]]:
    """Each line with whether it lies inside a code block (fence lines count as inside)."""
    inside, out = False, []
    for line in text.splitlines():
        if is_fence(line):
            out.append((line, True))
            inside = not inside
            continue
        out.append((line, inside))
    return out


def unclosed_fence(text: str) -> bool:
    return sum(map(is_fence, text.splitlines())) % 2 == 1


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of the page's headings (outside code blocks): lower case,
    punctuation other than '-' and '_' dropped, spaces as '-'."""
    anchors = set()
    for line, inside in fenced_lines(text):
        if not inside and (match := re.match(r"#+ (.*)", line)):
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md":
            if anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{target} (no such heading)")
    return broken


def test_the_checks_catch_what_they_are_for(tmp_path):
    assert unclosed_fence("text\n```yaml\na: 1\n\n## Next\n")
    assert not unclosed_fence("```yaml\na: 1\n```\n")
    # a heading inside an unclosed block is no heading
    page = tmp_path / "page.md"
    page.write_text("[go](#next)\n```yaml\na: 1\n## Next\n", encoding="utf-8")
    assert broken_links(page) == ["#next (no such heading)"]
    page.write_text("[go](#next) [img](missing.png)\n## Next\n", encoding="utf-8")
    assert broken_links(page) == ["missing.png (no such file)"]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_pages_render_as_written(page):
    text = page.read_text(encoding="utf-8")
    assert not unclosed_fence(text), f"{page.relative_to(ROOT)}: a code block is never closed"
    assert broken_links(page) == [], f"{page.relative_to(ROOT)}: broken links"
