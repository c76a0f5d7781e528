"""The documents point only at what is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); the target ends at a space (a title) or the parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)


def relative_links(markdown: str) -> list[str]:
    """Targets of the Markdown links that point into the repository (no URL, no bare anchor)."""
    return [target for target in _LINK.findall(markdown) if not _EXTERNAL.match(target)]


def test_relative_links_are_found() -> None:
    text = 'See [a](docs/a.md#x), ![b](img/b.png "t"), [c](https://x.org), [d](#top).'
    assert relative_links(text) == ["docs/a.md#x", "img/b.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(document: Path) -> None:
    missing = [
        target
        for target in relative_links(document.read_text())
        if not (document.parent / target.split("#", 1)[0]).exists()
    ]
    assert missing == [], f"{document.name} links to files that are not in the repository"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_no_document_sends_readers_outside_the_repository(document: Path) -> None:
    assert "SPEC.md" not in document.read_text(), "the contract is docs/contract.md"
