"""Every relative link of the docs leads somewhere: the file exists and, for ``page.md#anchor``, the page
has a heading with that anchor (GitHub's spelling). Fast: reads Markdown only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = sorted(
    [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "CHANGELOG.md",
        REPO / "CHECKPOINT_FIX_GUIDE.md",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "bench" / "results").glob("*.md"),
    ]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_anchor_spelling():
    assert anchor("FLAN-T5-XL / XXL with FSDP") == "flan-t5-xl--xxl-with-fsdp"
    assert anchor("What a resume keeps, and what you may change") == "what-a-resume-keeps-and-what-you-may-change"
    assert anchor("`metrics.jsonl`") == "metricsjsonl"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)
