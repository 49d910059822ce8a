"""The documentation holds together: every relative link in README.md and docs/*.md names a file of the
repository (and a heading of it, when it gives an anchor), and every test docs/guarantees.md names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:
# `test_x.py::test_y`, or `…::test_y` for another test of the file named just before it.
_TEST_REF = re.compile(r"`(?:(?:tests/\w+/)?(test_\w+\.py)|…)(?:::(\w+))?`")


def _prose(text: str) -> str:
    """The page without its code blocks and code spans, where a `[x](y)` is not a link."""
    return _CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on the page; a repeated heading gets `-1`, `-2`, … as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """The page's relative links that lead nowhere in the repository, each with why."""
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository(page: Path) -> None:
    assert broken_links(page) == []


def test_no_page_points_outside_the_repository() -> None:
    mentions = [str(p.relative_to(ROOT)) for p in PAGES if "../shared" in p.read_text(encoding="utf-8")]
    assert mentions == []


def test_every_test_the_guarantees_name_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    missing: list[str] = []
    file: str | None = None
    for named_file, name in _TEST_REF.findall(text):
        file = named_file or file
        assert file is not None, "`…::test` before any file is named"
        found = sorted((ROOT / "tests").glob(f"*/{file}"))
        if not found:
            missing.append(file)
        elif name and not re.search(rf"^(async )?def {name}\(", found[0].read_text(encoding="utf-8"), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_a_heading_anchor_is_githubs() -> None:
    assert slug("`webhook.deliver`") == "webhookdeliver"
    assert slug("When Redis db 0 fails: in-process limits, never none") == (
        "when-redis-db-0-fails-in-process-limits-never-none"
    )
    assert slug("Uploads, `dataset.analyze`") == "uploads-datasetanalyze"
