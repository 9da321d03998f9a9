"""The record format: what a paper parser returns, and the rows of ``arxiv_structured`` and ``arxiv_plain``.

A paper parser (:mod:`.parsers`; LaTeX is one) turns a paper's files into a :class:`ParsedPaper`, or
raises :class:`PaperError` with one of its reject reasons; nothing here depends on the source format.

The text layout is fixed by docs/ARCHITECTURE.md: blocks joined by a blank line, in the order
title, abstract, then each heading followed by its paragraphs. Empty blocks are left out so
that no run of blank lines appears. ``headers`` gives the character span of the title and of
every heading inside ``text``; a section without a title (the text before a paper's first
heading) adds paragraphs but no span.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import PARAGRAPH_SEPARATOR


@dataclass
class Section:
    """One heading and the paragraphs up to the next heading. ``title`` is empty only for the
    text that comes before a paper's first heading; ``level`` is one of ``schema.SECTION_LEVELS``."""

    level: str
    title: str
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class ParsedPaper:
    """A paper's content, whatever its source format. ``sections`` are in document order;
    ``warnings`` says what the parser skipped or repaired on the way (missing includes, refused
    paths, macros that failed to convert)."""

    title: str
    abstract: str
    sections: list[Section]
    main_file: str
    warnings: list[str] = field(default_factory=list)


class PaperError(Exception):
    """A paper that cannot become a record. ``reason`` is a reject reason of the build report:
    one of ``schema.REJECT_REASONS`` or of the parser's own ``reject_reasons``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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


# Frequent English function words: their share of a text's Latin words tells English from other
# languages written in Latin script (formulas and placeholders count as neither).
_ENGLISH_WORDS = frozenset(
    [
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "we",
        "it",
        "with",
        "as",
        "are",
        "on",
        "this",
        "by",
        "be",
        "an",
        "from",
        "at",
        "which",
        "our",
        "can",
        "not",
        "or",
        "these",
        "its",
        "has",
        "have",
        "was",
        "were",
        "each",
        "all",
        "than",
        "then",
        "there",
        "their",
        "also",
        "such",
    ]
)
# Unicode script -> ISO 639-1 code, for scripts that name their language well enough.
_SCRIPTS = {"CYRILLIC": "ru", "HANGUL": "ko", "HIRAGANA": "ja", "KATAKANA": "ja", "CJK": "zh", "GREEK": "el"}


def detect_language(text: str, min_letters: int = 50) -> str:
    """An ISO 639-1 code for ``text`` (``"en"``, ``"ru"``, ``"zh"``, ``"ja"``, ``"ko"``...), or ``"und"``.

    A small heuristic without dependencies: the script of most letters, Japanese when kana are
    present among CJK characters, and for Latin script English when its function words make up at
    least a tenth of the words. Scientific text quotes Latin-script formulas and names, so a
    non-Latin script wins from a quarter of the letters.
    """
    scripts: Counter[str] = Counter()
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            scripts[
                next(
                    (s for s in _SCRIPTS if name.startswith(s)),
                    "LATIN" if name.startswith("LATIN") else "OTHER",
                )
            ] += 1
    letters = sum(scripts.values())
    if letters < min_letters:
        return "und"
    if (
        scripts["HIRAGANA"] + scripts["KATAKANA"]
        and (scripts["HIRAGANA"] + scripts["KATAKANA"] + scripts["CJK"]) * 4 >= letters
    ):
        return "ja"
    for script in ("HANGUL", "CJK", "CYRILLIC", "GREEK"):
        if scripts[script] * 4 >= letters:
            return _SCRIPTS[script]
    words = re.findall(r"[A-Za-z]+", text)
    if scripts["LATIN"] * 2 >= letters and words:
        common = sum(1 for word in words if word.lower() in _ENGLISH_WORDS)
        if common * 10 >= len(words):
            return "en"
    return "und"


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


def to_record(
    parsed: ParsedPaper, paper_id: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
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
        "source_kind": None,
        "language": detect_language(text),
    }


def to_plain(row: Mapping[str, Any]) -> dict[str, str]:
    """The ``arxiv_plain`` row: the id and the very same text, without structure."""
    return {"id": row["id"], "text": row["text"]}
