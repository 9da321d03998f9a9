"""Parsed papers to the rows of the ``arxiv_structured`` and ``arxiv_plain`` configs.

The text layout is fixed by docs/ARCHITECTURE.md: blocks joined by a blank line, in the order
title, abstract, then each heading followed by its paragraphs. Empty blocks are left out so
that no run of blank lines appears. ``headers`` gives the character span of the title and of
every heading inside ``text``; a section without a title (the text before a paper's first
heading) adds paragraphs but no span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .latex_text import Section
from .schema import PARAGRAPH_SEPARATOR


def _latest_version(metadata: Mapping[str, Any]) -> str | None:
    """``version`` as given, or the last entry of arXiv's ``versions`` list (``[{"version": "v1"}, ...]``)."""
    if metadata.get("version"):
        return str(metadata["version"])
    versions = metadata.get("versions") or []
    names = [v.get("version") if isinstance(v, Mapping) else v for v in versions]
    names = [str(n) for n in names if n]
    if not names:
        return None
    return max(names, key=lambda n: int(n.lstrip("v")) if n.lstrip("v").isdigit() else -1)


def linearize(title: str, abstract: str, sections: list[Section]) -> tuple[str, list[dict[str, Any]]]:
    """``(text, headers)`` for a title, an abstract and sections (see the module docstring)."""
    blocks: list[tuple[str, str | None]] = []
    if title:
        blocks.append((title, "title"))
    if abstract:
        blocks.append((abstract, None))
    for section in sections:
        if section.title:
            blocks.append((section.title, section.level))
        blocks.extend((paragraph, None) for paragraph in section.paragraphs if paragraph)
    pieces: list[str] = []
    headers: list[dict[str, Any]] = []
    offset = 0
    for index, (block, level) in enumerate(blocks):
        if index:
            pieces.append(PARAGRAPH_SEPARATOR)
            offset += len(PARAGRAPH_SEPARATOR)
        if level is not None:
            headers.append({"start": offset, "end": offset + len(block), "level": level})
        pieces.append(block)
        offset += len(block)
    return "".join(pieces), headers


def to_record(parsed: Any, paper_id: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``arxiv_structured`` row of a ``ParsedPaper``.

    ``metadata`` (for instance a line of arXiv's metadata snapshot) fills ``categories``,
    ``license`` and ``version`` (from ``version`` or the last of ``versions``); missing fields
    are ``None``. Headings and paragraphs are single lines, so ``text`` splits back into its
    blocks on ``"\\n\\n"``.
    """
    metadata = metadata or {}
    sections = [
        Section(s.level, " ".join(s.title.split()), [" ".join(p.split()) for p in s.paragraphs])
        for s in parsed.sections
    ]
    title = " ".join(parsed.title.split())
    abstract = PARAGRAPH_SEPARATOR.join(
        " ".join(p.split()) for p in parsed.abstract.split(PARAGRAPH_SEPARATOR) if p.strip()
    )
    text, headers = linearize(title, abstract, sections)
    categories = metadata.get("categories")
    license_ = metadata.get("license")
    return {
        "id": str(paper_id),
        "title": title,
        "abstract": abstract,
        "sections": [
            {"level": s.level, "title": s.title, "paragraphs": [p for p in s.paragraphs if p]}
            for s in sections
        ],
        "text": text,
        "headers": headers,
        "categories": str(categories) if categories is not None else None,
        "license": str(license_) if license_ is not None else None,
        "version": _latest_version(metadata),
    }


def to_plain(row: Mapping[str, Any]) -> dict[str, str]:
    """The ``arxiv_plain`` row: the id and the very same text, without structure."""
    return {"id": row["id"], "text": row["text"]}
