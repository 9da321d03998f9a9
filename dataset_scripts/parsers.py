"""The seam between the build and a source format: paper parsers, chosen by name.

A paper parser turns one paper's files (POSIX paths relative to the paper's root -> bytes) into a
:class:`~.records.ParsedPaper`, or raises :class:`~.records.PaperError` with one of its reject reasons.
The build knows nothing else of the format: ``build-corpus --parser NAME --parser-option KEY=VALUE``
picks an entry of :data:`PARSERS` and fills its options. A new source format is one class with the
three members of :class:`PaperParser`, and one entry in :data:`PARSERS`.

Parsers are small frozen dataclasses: they travel to the parse processes and, on a cluster, inside
the datatrove executor's pickled pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from structformer.dataset_scripts import latex
from structformer.dataset_scripts.records import ParsedPaper
from structformer.dataset_scripts.schema import REJECT_REASONS
from structformer.errors import InputError


class PaperParser(Protocol):
    """What the build needs of a source format.

    ``options`` is a dataclass of the parser's settings (they are part of the build report and of
    what a resumed build must match); ``reject_reasons`` maps each reason that ``parse`` may raise,
    besides the build's own (``schema.REJECT_REASONS``), to what it means.
    """

    options: Any
    reject_reasons: ClassVar[Mapping[str, str]]

    def parse(self, files: Mapping[str, bytes]) -> ParsedPaper:
        """The paper's content; raises ``PaperError`` for a paper that cannot become a record."""
        ...


@dataclass(frozen=True)
class LatexParser:
    """arXiv's LaTeX sources, through :func:`.latex.parse_paper`."""

    options: latex.LatexOptions = field(default_factory=latex.LatexOptions)
    reject_reasons: ClassVar[Mapping[str, str]] = latex.LATEX_REJECT_REASONS

    def parse(self, files: Mapping[str, bytes]) -> ParsedPaper:
        # Looked up on the module at each call, so that a test can stand in for the parser.
        return latex.parse_paper(files, self.options)


# name -> parser class; its ``options`` field's type is the dataclass that ``--parser-option`` fills.
PARSERS: dict[str, type] = {"latex": LatexParser}


def make_parser(name: str, options: Mapping[str, Any] | None = None) -> PaperParser:
    """The parser called ``name``, its options set from ``options`` (field name -> value).

    Raises ``InputError`` for an unknown parser, an unknown option or a value its options refuse.
    """
    if name not in PARSERS:
        raise InputError(f"--parser {name!r}: no such parser; choose one of {sorted(PARSERS)}")
    cls = PARSERS[name]
    options_type = {f.name: f for f in dataclasses.fields(cls)}["options"].default_factory
    known = {f.name for f in dataclasses.fields(options_type)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise InputError(
            f"--parser-option {unknown[0]}: not an option of the {name} parser; choose from {sorted(known)}"
        )
    try:
        return cls(options_type(**dict(options or {})))
    except (TypeError, ValueError) as error:
        raise InputError(f"--parser-option: {error}") from error


def reject_reasons(parser: PaperParser) -> dict[str, str]:
    """Every reason a build with ``parser`` may give a reject, with what it means."""
    return {**REJECT_REASONS, **parser.reject_reasons}
