"""LaTeX to text with pylatexenc: the title, the abstract, the section tree and its paragraphs.

The input is a document body whose includes and user macros have already been resolved
(see ``latex_source``). pylatexenc parses it tolerantly into nodes; a walker then reads the
nodes at block level (headings, paragraph breaks, lists, floats) and hands runs of inline nodes
to a ``LatexNodes2Text`` converter configured by ``LatexOptions``. Conversion errors are caught
per paragraph and then per node, so a bad macro costs that macro, not the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pylatexenc import latexwalker, macrospec
from pylatexenc.latex2text import (
    EnvironmentTextSpec,
    LatexNodes2Text,
    MacroTextSpec,
    get_default_latex_context_db,
)

from structformer.errors import InputError

from .latex_source import flatten_nesting, mask_verbatim, read_group
from .records import Section


@dataclass(frozen=True)
class LatexOptions:
    """How a paper's LaTeX becomes text.

    Args:
        footnotes: ``"inline"`` keeps a footnote's text in parentheses where its mark was;
            ``"drop"`` removes footnotes. Footnotes in headings and titles are always dropped.
        math_placeholder: the token that replaces math too long (or too odd) for a linear form.
        max_linear_math_chars: math whose linear text form (``α + β``, ``x^2``) is at most this
            many characters is kept in that form; 0 turns every formula into the placeholder.
        cite_placeholder: replaces ``\\cite`` and its natbib/biblatex variants.
        ref_placeholder: replaces ``\\ref``, ``\\eqref``, ``\\cref`` and friends.
        max_macro_depth: how many times a user macro's replacement is expanded again.
        max_include_depth: how deep ``\\input`` may nest.
        max_paper_chars: inlining of includes stops once the paper's text would pass this.

    The size of a source file is capped once, where it is read (``build-corpus --max-file-mb``).
    """

    footnotes: Literal["inline", "drop"] = "inline"
    math_placeholder: str = "[MATH]"
    max_linear_math_chars: int = 20
    cite_placeholder: str = "[CITE]"
    ref_placeholder: str = "[REF]"
    max_macro_depth: int = 10
    max_include_depth: int = 16
    max_paper_chars: int = 20_000_000

    def __post_init__(self) -> None:
        if self.footnotes not in ("inline", "drop"):
            raise InputError(f"footnotes must be 'inline' or 'drop', got {self.footnotes!r}")
        for name in ("max_linear_math_chars", "max_macro_depth", "max_include_depth"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_paper_chars <= 0:
            raise InputError(f"max_paper_chars must be > 0, got {self.max_paper_chars}")


# Heading commands and the section level (schema.SECTION_LEVELS) they map to (``\part`` and KOMA's
# ``\addchap`` act as chapters).
HEADING_COMMANDS = {
    "part": "chapter",
    "chapter": "chapter",
    "addchap": "chapter",
    "section": "section",
    "addsec": "section",
    "subsection": "subsection",
    "subsubsection": "subsubsection",
    "paragraph": "paragraph",
    "subparagraph": "paragraph",
}

ABSTRACT_ENVIRONMENTS = ("abstract", "abstract*", "IEEEabstract", "onecolabstract")

DROPPED_ENVIRONMENTS = frozenset(
    [
        "figure",
        "figure*",
        "table",
        "table*",
        "wrapfigure",
        "wraptable",
        "sidewaysfigure",
        "sidewaystable",
        "subfigure",
        "subtable",
        "SCfigure",
        "teaserfigure",
        "thebibliography",
        "thebibliography*",
        "references",
        "algorithm",
        "algorithm*",
        "algorithm2e",
        "algorithmic",
        "algorithmicx",
        "lstlisting",
        "verbatim",
        "verbatim*",
        "Verbatim",
        "minted",
        "tikzpicture",
        "pgfpicture",
        "picture",
        "tabular",
        "tabular*",
        "tabularx",
        "tabulary",
        "longtable",
        "supertabular",
        "comment",
        "filecontents",
        "filecontents*",
        "titlepage",
        "frontmatter",
        "keyword",
        "keywords",
        "IEEEkeywords",
        "CCSXML",
        "abstract",
        "abstract*",
        "IEEEabstract",
        "onecolabstract",
    ]
)

MATH_ENVIRONMENTS = frozenset(
    [
        "equation",
        "equation*",
        "align",
        "align*",
        "alignat",
        "alignat*",
        "flalign",
        "flalign*",
        "gather",
        "gather*",
        "multline",
        "multline*",
        "eqnarray",
        "eqnarray*",
        "displaymath",
        "math",
        "dmath",
        "dmath*",
        "IEEEeqnarray",
        "IEEEeqnarray*",
    ]
)

LIST_ENVIRONMENTS = frozenset(
    [
        "itemize",
        "itemize*",
        "enumerate",
        "enumerate*",
        "description",
        "compactitem",
        "compactenum",
        "compactdesc",
        "inparaenum",
    ]
)

CITE_MACROS = [
    "cite",
    "citep",
    "citet",
    "citealp",
    "citealt",
    "citeauthor",
    "citeyear",
    "citeyearpar",
    "citenum",
    "Cite",
    "Citep",
    "Citet",
    "Citealp",
    "Citeauthor",
    "parencite",
    "Parencite",
    "textcite",
    "Textcite",
    "autocite",
    "Autocite",
    "footcite",
    "smartcite",
    "supercite",
    "fullcite",
]
REF_MACROS = [
    "ref",
    "eqref",
    "autoref",
    "Autoref",
    "cref",
    "Cref",
    "pageref",
    "vref",
    "Vref",
    "nameref",
    "cpageref",
    "subref",
]

# Front matter, layout and bookkeeping commands: their arguments are not prose. The argument
# specs let the walker attach the arguments so that they are dropped with the command.
DISCARDED_MACROS = {
    "author": "[{",
    "affiliation": "{",
    "affil": "[{",
    "altaffiliation": "[{",
    "address": "[{",
    "email": "[{",
    "institute": "{",
    "inst": "{",
    "thanks": "{",
    "date": "{",
    "keywords": "{",
    "pacs": "{",
    "orcid": "{",
    "title": "[{",
    "icmltitle": "{",
    "titlerunning": "{",
    "authorrunning": "{",
    "shorttitle": "{",
    "shortauthors": "{",
    "runningtitle": "{",
    "runningauthor": "{",
    "received": "{",
    "accepted": "{",
    "correspondingauthor": "{",
    "icmlauthor": "{{",
    "icmlaffiliation": "{{",
    "icmlcorrespondingauthor": "{{",
    "icmlkeywords": "{",
    "icmlsetsymbol": "{{",
    "icmltitlerunning": "{",
    "IEEEauthorblockN": "{",
    "IEEEauthorblockA": "{",
    "markboth": "{{",
    "acmConference": "[{{{",
    "acmBooktitle": "{",
    "acmDOI": "{",
    "acmISBN": "{",
    "acmYear": "{",
    "copyrightyear": "{",
    "acmPrice": "{",
    "setcopyright": "{",
    "ccsdesc": "[{",
    "acmJournal": "{",
    "acmVolume": "{",
    "acmNumber": "{",
    "acmArticle": "{",
    "acmMonth": "{",
    "settopmatter": "{",
    "authornote": "{",
    "authornotemark": "[",
    "institution": "{",
    "department": "[{",
    "maketitle": "",
    "tableofcontents": "",
    "listoffigures": "",
    "listoftables": "",
    "bibliographystyle": "{",
    "bibliography": "{",
    "printbibliography": "[",
    "addbibresource": "[{",
    "nocite": "{",
    "label": "{",
    "includegraphics": "*[[{",
    "caption": "*[{",
    "captionof": "*{[{",
    "footnotemark": "[",
    "vspace": "*{",
    "setlength": "{{",
    "addtolength": "{{",
    "setcounter": "{{",
    "addtocounter": "{{",
    "pagestyle": "{",
    "thispagestyle": "{",
    "newtheorem": "*{[{[",
    "theoremstyle": "{",
    "usepackage": "[{",
    "color": "{",
    "hypersetup": "{",
    "graphicspath": "{",
    "input": "{",
    "include": "{",
    "todo": "[{",
    "newpage": "",
    "clearpage": "",
    "cleardoublepage": "",
    "appendix": "",
    "centering": "",
    "noindent": "",
    "balance": "",
    "phantomsection": "",
}

_INLINE_MACROS = {
    "textcolor": "[{{",
    "colorbox": "[{{",
    "textsuperscript": "{",
    "textsubscript": "{",
    "IEEEPARstart": "{{",
    "underline": "{",
    "uline": "{",
    "mbox": "{",
    "hbox": "{",
    "makebox": "[[{",
    "fbox": "{",
    "textnormal": "{",
    "enquote": "{",
    "ensuremath": "{",
}

_ENVIRONMENT_ARGS = {
    "multicols": "{",
    "multicols*": "{",
    "minipage": "[[[{",
    "wrapfigure": "[{[{",
    "alignat": "{",
    "alignat*": "{",
    "list": "{{",
    "spacing": "{",
}


def _last_argument(node, l2tobj) -> str:
    """Text of a command's last argument that is present (``\\href{url}{text}`` gives ``text``).
    pylatexenc's own ``\\href`` rule indexes arguments the walker may not have attached."""
    args = [a for a in (node.nodeargd.argnlist if node.nodeargd else []) if a is not None]
    return l2tobj.nodelist_to_text([args[-1]]) if args else ""


class _QuickSpecialsDb(macrospec.LatexContextDb):
    """A context database that rules out LaTeX specials (``~``, ``--``, ``&``...) by their first
    character before trying each one: pylatexenc asks at every character of the text, and the
    plain loop over all specials is a third of the parse time."""

    def __init__(self, source: macrospec.LatexContextDb) -> None:
        super().__init__()
        for category in source.categories():
            self.add_context_category(
                category,
                macros=list(source.iter_macro_specs([category])),
                environments=list(source.iter_environment_specs([category])),
                specials=list(source.iter_specials_specs([category])),
            )
        self._first_chars = frozenset(spec.specials_chars[0] for spec in source.iter_specials_specs())

    def test_for_specials(self, s, pos, parsing_state=None):
        if pos >= len(s) or s[pos] not in self._first_chars:
            return None
        return super().test_for_specials(s, pos, parsing_state=parsing_state)


@lru_cache(maxsize=8)
def _walker_context() -> macrospec.LatexContextDb:
    db = latexwalker.get_default_latex_context_db()
    macros = [macrospec.std_macro(name, "*[{") for name in HEADING_COMMANDS]
    macros += [macrospec.std_macro(name, "*[[{") for name in CITE_MACROS]
    macros += [macrospec.std_macro(name, "*{") for name in REF_MACROS]
    macros += [
        macrospec.std_macro("footnote", "[{"),
        macrospec.std_macro("footnotetext", "[{"),
        macrospec.std_macro("href", "[{{"),
        macrospec.std_macro("url", "{"),
        macrospec.std_macro("abstract", "{"),
    ]
    macros += [
        macrospec.std_macro(name, spec) for name, spec in {**DISCARDED_MACROS, **_INLINE_MACROS}.items()
    ]
    environments = [
        macrospec.std_environment(name, spec, is_math_mode=name in MATH_ENVIRONMENTS)
        for name, spec in _ENVIRONMENT_ARGS.items()
    ]
    # \begin{section}{Title} ... \end{section} is legal LaTeX: \begin{x} runs \x.
    environments += [macrospec.std_environment(name, "[{") for name in HEADING_COMMANDS]
    environments += [
        macrospec.std_environment(name, "", is_math_mode=True)
        for name in MATH_ENVIRONMENTS
        if name not in _ENVIRONMENT_ARGS
    ]
    db.add_context_category("structformer", macros=macros, environments=environments, prepend=True)
    return _QuickSpecialsDb(db)


def _text_context(options: LatexOptions, in_heading: bool) -> macrospec.LatexContextDb:
    db = get_default_latex_context_db()
    footnote = "" if in_heading or options.footnotes == "drop" else " (%(2)s)"
    specs = [MacroTextSpec(name, simplify_repl=options.cite_placeholder) for name in CITE_MACROS]
    specs += [MacroTextSpec(name, simplify_repl=options.ref_placeholder) for name in REF_MACROS]
    specs += [MacroTextSpec(name, discard=True) for name in DISCARDED_MACROS]
    specs += [
        MacroTextSpec("footnote", simplify_repl=footnote or ""),
        MacroTextSpec("footnotetext", simplify_repl=footnote or ""),
        MacroTextSpec("href", simplify_repl=_last_argument),
        MacroTextSpec("url", simplify_repl=_last_argument),
        MacroTextSpec("textcolor", simplify_repl=_last_argument),
        MacroTextSpec("colorbox", simplify_repl=_last_argument),
        MacroTextSpec("makebox", simplify_repl=_last_argument),
        MacroTextSpec("ensuremath", simplify_repl=_last_argument),
        MacroTextSpec("IEEEPARstart", simplify_repl="%(1)s%(2)s"),
        MacroTextSpec(
            "item",
            simplify_repl=lambda n, l2tobj: (
                " " + (l2tobj.nodelist_to_text([n.nodeoptarg]) + " " if n.nodeoptarg else "")
            ),
        ),
        MacroTextSpec("\\", simplify_repl=" "),
        MacroTextSpec("newline", simplify_repl=" "),
        MacroTextSpec("hspace", simplify_repl=" "),
        MacroTextSpec("quad", simplify_repl=" "),
        MacroTextSpec("qquad", simplify_repl=" "),
    ]
    # The walker knows these take an argument, pylatexenc's text rules do not, and would drop them whole.
    specs += [MacroTextSpec(name, discard=False) for name in ("texttt", "textsf", "textmd", "textup", "verb")]
    specs += [
        MacroTextSpec(name, discard=False)
        for name in _INLINE_MACROS
        if name not in ("textcolor", "colorbox", "makebox", "IEEEPARstart", "ensuremath")
    ]
    environments = [EnvironmentTextSpec(name, discard=True) for name in DROPPED_ENVIRONMENTS]
    environments += [EnvironmentTextSpec(name, simplify_repl=_math_environment) for name in MATH_ENVIRONMENTS]
    db.add_context_category("structformer", macros=specs, environments=environments, prepend=True)
    return db


def _math_environment(node, l2tobj) -> str:
    return l2tobj.math_node_to_text(node)


class _Converter(LatexNodes2Text):
    """``LatexNodes2Text`` with the placeholder-or-linear rule for math."""

    def __init__(self, options: LatexOptions, in_heading: bool) -> None:
        super().__init__(
            latex_context=_text_context(options, in_heading), math_mode="text", strict_latex_spaces="macros"
        )
        self.options = options

    def math_node_to_text(self, node) -> str:
        try:
            linear = " ".join(super().math_node_to_text(node).split())
        except Exception:
            linear = ""
        display = (
            node.isNodeType(latexwalker.LatexEnvironmentNode) or getattr(node, "displaytype", "") == "display"
        )
        keep = 0 < len(linear) <= self.options.max_linear_math_chars and "\\" not in linear
        text = linear if keep else self.options.math_placeholder
        return f" {text} " if display else text


@lru_cache(maxsize=16)
def _converter(options: LatexOptions, in_heading: bool) -> _Converter:
    return _Converter(options, in_heading)


def normalize_space(text: str) -> str:
    """One line: every run of whitespace (newlines, non-breaking spaces) becomes one space."""
    return " ".join(text.split())


def _resolve_xspace(latex: str) -> str:
    """``\\xspace`` (a space unless punctuation follows), which pylatexenc would just drop."""
    latex = re.sub(r"\\xspace(?![A-Za-z@])\s*(?=[.,;:!?)\]'’/}-]|\\footnote|\\\\)", "", latex)
    return re.sub(r"\\xspace(?![A-Za-z@])", " ", latex)


def parse_nodes(latex: str) -> list:
    """pylatexenc nodes of ``latex``, parsed tolerantly with this module's macro table."""
    walker = latexwalker.LatexWalker(
        _resolve_xspace(latex), latex_context=_walker_context(), tolerant_parsing=True
    )
    nodes, _, _ = walker.get_latex_nodes()
    return nodes


def _safe_text(converter: _Converter, nodes: list, warnings: list[str]) -> str:
    """Convert nodes, falling back to one node at a time, then to a failing node's children."""
    try:
        return converter.nodelist_to_text(nodes)
    except Exception as error:
        if len(nodes) == 1:
            node = nodes[0]
            children = getattr(node, "nodelist", None)
            if children:
                return _safe_text(converter, list(children), warnings)
            warnings.append(f"dropped {_describe(node)}: {type(error).__name__}: {error}")
            return ""
        return "".join(_safe_text(converter, [node], warnings) for node in nodes)


def _describe(node) -> str:
    if node.isNodeType(latexwalker.LatexMacroNode):
        return f"\\{node.macroname}"
    if node.isNodeType(latexwalker.LatexEnvironmentNode):
        return f"environment {node.environmentname}"
    return type(node).__name__


def latex_to_text(
    latex: str, options: LatexOptions | None = None, warnings: list[str] | None = None
) -> list[str]:
    """Paragraphs of plain text from a LaTeX fragment without headings.

    Blank lines and ``\\par`` separate paragraphs; each paragraph is one line of text. Math
    becomes ``options.math_placeholder`` unless its linear form is short, ``\\cite`` and ``\\ref``
    become placeholders, footnotes follow ``options.footnotes``, floats and bibliographies are
    dropped, accents and other escapes come out as Unicode.
    """
    options = options or LatexOptions()
    notes = warnings if warnings is not None else []
    walker = _BlockWalker(options, notes)
    walker.walk(_parse_or_chunks(latex, notes))
    walker.flush()
    return [p for section in walker.sections for p in section.paragraphs]


def inline_text(latex: str, options: LatexOptions | None = None, warnings: list[str] | None = None) -> str:
    """A LaTeX fragment (a title, a heading) as one line of text, footnotes dropped."""
    options = options or LatexOptions()
    notes = warnings if warnings is not None else []
    try:
        nodes = _parse_flattening(latex, notes)
    except Exception as error:
        notes.append(f"could not parse {latex[:40]!r}: {type(error).__name__}")
        return ""
    return normalize_space(_safe_text(_converter(options, True), nodes, notes))


# Groups nested deeper than this are unwrapped when pylatexenc's recursion gives up on a text; the
# converter recurses too, so the depth must leave it room under Python's recursion limit.
_MAX_GROUP_DEPTH = 32


def _chars(text: str) -> latexwalker.LatexCharsNode:
    return latexwalker.LatexCharsNode(chars=text, parsing_state=None, pos=0, len=len(text))


def _parse_flattening(latex: str, warnings: list[str]) -> list:
    """Parse ``latex``; should pylatexenc's recursion give up on deep nesting, parse it again with the
    groups deeper than ``_MAX_GROUP_DEPTH`` unwrapped (their text kept), and say so."""
    try:
        return parse_nodes(latex)
    except RecursionError:
        flat, removed = flatten_nesting(latex, _MAX_GROUP_DEPTH)
        if not removed:
            raise
    nodes = parse_nodes(flat)
    warnings.append(
        f"unwrapped {removed} group(s) nested deeper than {_MAX_GROUP_DEPTH} levels, text kept: {latex[:60]!r}"
    )
    return nodes


def _parse_or_chunks(latex: str, warnings: list[str]) -> list:
    """Parse the whole text; should pylatexenc give up anyway (deep nesting), parse it paragraph
    by paragraph, unwrapping groups nested too deep, and a failing paragraph line by line, losing
    only the lines that fail (each named in ``warnings``)."""
    try:
        return parse_nodes(latex)
    except Exception as error:
        warnings.append(f"parsing the body failed ({type(error).__name__}); parsing paragraph by paragraph")
    nodes: list = []
    for chunk in re.split(r"\n\s*\n", latex):
        try:
            nodes.extend(_parse_flattening(chunk, warnings))
        except Exception:
            for line in chunk.split("\n"):
                try:
                    nodes.extend(_parse_flattening(line, warnings))
                except Exception as error:
                    warnings.append(
                        f"dropped a line that does not parse: {type(error).__name__}: {line[:60]!r}"
                    )
                nodes.append(_chars("\n"))
        nodes.append(_chars("\n\n"))
    return nodes


def _heading_parts(node) -> tuple[bool, list]:
    """Whether ``node`` is a heading itself, and else the nodes a heading could hide in."""
    if node.isNodeType(latexwalker.LatexEnvironmentNode) and node.environmentname in HEADING_COMMANDS:
        return True, []
    if node.isNodeType(latexwalker.LatexMacroNode):
        if node.macroname in HEADING_COMMANDS:
            return True, []
        return False, list(node.nodeargd.argnlist) if node.nodeargd and node.nodeargd.argnlist else []
    return False, list(getattr(node, "nodelist", None) or [])


class _BlockWalker:
    """Reads nodes at block level: headings open sections, blank lines end paragraphs, lists give
    a paragraph per item, floats are dropped, and everything else is inline text."""

    def __init__(self, options: LatexOptions, warnings: list[str]) -> None:
        self.options = options
        self.warnings = warnings
        self.text = _converter(options, False)
        self.heading_text = _converter(options, True)
        self.sections = [Section("section", "")]
        self.buffer: list = []
        self._heading_memo: dict[int, bool] = {}

    def has_heading(self, root) -> bool:
        # Iterative, children before parents: a recursive search overflows the stack on groups
        # nested a few hundred levels deep, which pylatexenc itself still parses.
        memo = self._heading_memo
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node is None or id(node) in memo:
                continue
            own, children = _heading_parts(node)
            if own:
                memo[id(node)] = True
            elif expanded:
                memo[id(node)] = any(memo.get(id(child), False) for child in children)
            else:
                stack.append((node, True))
                stack.extend((child, False) for child in children)
        return root is not None and memo[id(root)]

    def flush(self) -> None:
        if not self.buffer:
            return
        text = normalize_space(_safe_text(self.text, self.buffer, self.warnings))
        self.buffer = []
        if text:
            self.sections[-1].paragraphs.append(text)

    def heading(self, node, level: str) -> None:
        self.flush()
        args = node.nodeargd.argnlist if node.nodeargd and node.nodeargd.argnlist else []
        # \section*[short]{long}: the long title is the last argument.
        title_node = args[-1] if args and args[-1] is not None else (args[1] if len(args) > 1 else None)
        title = (
            normalize_space(_safe_text(self.heading_text, [title_node], self.warnings)) if title_node else ""
        )
        self.sections.append(Section(level, title))

    def walk(self, nodes: list) -> None:
        for node in nodes:
            if node is None:
                continue
            if node.isNodeType(latexwalker.LatexCharsNode):
                parts = re.split(r"\n[ \t]*\n\s*", node.chars)
                for index, part in enumerate(parts):
                    if index:
                        self.flush()
                    if part:
                        self.buffer.append(_chars(part))
            elif node.isNodeType(latexwalker.LatexMacroNode):
                self._macro(node)
            elif node.isNodeType(latexwalker.LatexEnvironmentNode):
                self._environment(node)
            elif node.isNodeType(
                (latexwalker.LatexGroupNode, latexwalker.LatexMathNode)
            ) and self.has_heading(node):
                # A heading inside a group, or inside math that a stray $ opened, is still a heading.
                self.walk(node.nodelist)
            elif not node.isNodeType(latexwalker.LatexCommentNode):
                self.buffer.append(node)

    def _macro(self, node) -> None:
        name = node.macroname
        if name in HEADING_COMMANDS:
            self.heading(node, HEADING_COMMANDS[name])
        elif name == "par":
            self.flush()
        elif name == "maketitle":
            # What precedes \maketitle before any heading is front matter (authors, affiliations).
            self.buffer = []
            if len(self.sections) == 1:
                self.sections[0].paragraphs.clear()
        elif self.has_heading(node):
            for arg in node.nodeargd.argnlist:
                if arg is not None:
                    self.walk([arg])
        else:
            self.buffer.append(node)

    def _environment(self, node) -> None:
        name = node.environmentname
        if name in HEADING_COMMANDS:
            self.heading(node, HEADING_COMMANDS[name])
            self.walk(node.nodelist)
        elif self.has_heading(node):
            self.flush()
            self.walk(node.nodelist)
            self.flush()
        elif name in DROPPED_ENVIRONMENTS:
            return
        elif name in MATH_ENVIRONMENTS:
            self.buffer.append(node)
        elif name in LIST_ENVIRONMENTS:
            self.flush()
            for item in _split_items(node.nodelist):
                self.walk(item)
                self.flush()
        else:
            self.flush()
            self.walk(node.nodelist)
            self.flush()


def _split_items(nodes: list) -> list[list]:
    """The node runs of a list environment, one per ``\\item`` (a description's label leads)."""
    items: list[list] = [[]]
    for node in nodes:
        if node is not None and node.isNodeType(latexwalker.LatexMacroNode) and node.macroname == "item":
            items.append([])
            if node.nodeoptarg is not None:
                items[-1].extend([node.nodeoptarg, _chars(": ")])
        else:
            items[-1].append(node)
    return [item for item in items if item]


_HEADING_COMMAND = re.compile(r"\\(" + "|".join(HEADING_COMMANDS) + r")(?![A-Za-z@])")


def drop_environments(latex: str, names: frozenset[str] = DROPPED_ENVIRONMENTS) -> str:
    """Remove the named environments (nesting counted) before parsing, which saves pylatexenc
    reading every character of tables and pictures. An environment that never ends or that
    holds a heading is kept: that is a broken float swallowing the text, and the walker
    recovers its headings."""
    masked = mask_verbatim(latex)
    begin = re.compile(r"\\begin\s*\{(" + "|".join(re.escape(n) for n in names) + r")\}")
    out = []
    pos = 0
    for match in begin.finditer(masked):
        if match.start() < pos:
            continue
        name = re.escape(match.group(1))
        depth = 1
        end = None
        for token in re.finditer(r"\\(begin|end)\s*\{" + name + r"\}", masked[match.end() :]):
            depth += 1 if token.group(1) == "begin" else -1
            if depth == 0:
                end = match.end() + token.end()
                break
        if end is None or _HEADING_COMMAND.search(masked, match.end(), end):
            continue
        out.append(latex[pos : match.start()])
        out.append("\n")
        pos = end
    out.append(latex[pos:])
    return "".join(out)


def build_sections(
    body: str, options: LatexOptions | None = None, warnings: list[str] | None = None
) -> list[Section]:
    """The section list of a document body, in document order.

    ``\\chapter``, ``\\section``, ``\\subsection``, ``\\subsubsection`` and ``\\paragraph``
    (starred or not, with an optional short title) open sections; user macros that expand to
    them work once ``expand_macros`` ran. ``\\appendix`` changes nothing but numbering in
    LaTeX and nothing here. Text before the first heading, if any survives the front matter,
    is an untitled first section.
    """
    options = options or LatexOptions()
    notes = warnings if warnings is not None else []
    walker = _BlockWalker(options, notes)
    walker.walk(_parse_or_chunks(drop_environments(body), notes))
    walker.flush()
    sections = walker.sections
    if not sections[0].paragraphs:
        sections = sections[1:]
    return sections


# ---------------------------------------------------------------------------------------------
# Title and abstract

_TITLE = re.compile(r"\\(title|icmltitle|Title|TITLE|papertitle)(?![A-Za-z@])\s*\*?\s*")


def extract_title(latex: str, options: LatexOptions | None = None, warnings: list[str] | None = None) -> str:
    """The paper's title from ``\\title{...}``, ``\\title[short]{long}`` or the template variants
    (``\\icmltitle`` inside ``\\twocolumn[...]``, ``\\Title``, ``\\TITLE``), as one line of
    text. As in LaTeX the last non-empty definition wins. Empty when there is none."""
    masked = mask_verbatim(latex)
    title = ""
    for match in _TITLE.finditer(masked):
        pos = match.end()
        if pos < len(latex) and latex[pos] == "[":
            option = read_group(latex, pos, "[", "]")
            if option:
                pos = option[1]
                while pos < len(latex) and latex[pos].isspace():
                    pos += 1
        group = read_group(latex, pos)
        if group:
            text = inline_text(group[0], options, warnings)
            if text:
                title = text
    return title


_ABSTRACT_ENV = re.compile(r"\\begin\s*\{(" + "|".join(re.escape(e) for e in ABSTRACT_ENVIRONMENTS) + r")\}")
_ABSTRACT_MACRO = re.compile(r"\\abstract(?![A-Za-z@])\s*(?=\{)")


def find_abstract(latex: str) -> tuple[int, int, str] | None:
    """``(start, end, latex)`` of the first abstract: an ``abstract`` environment or an
    ``\\abstract{...}`` macro, whichever comes first."""
    masked = mask_verbatim(latex)
    found = []
    env = _ABSTRACT_ENV.search(masked)
    if env:
        end = re.compile(r"\\end\s*\{" + re.escape(env.group(1)) + r"\}").search(masked, env.end())
        stop = end.start() if end else len(latex)
        found.append((env.start(), end.end() if end else len(latex), latex[env.end() : stop]))
    macro = _ABSTRACT_MACRO.search(masked)
    if macro:
        group = read_group(latex, macro.end())
        if group:
            found.append((macro.start(), group[1], group[0]))
    return min(found) if found else None


def extract_abstract(
    latex: str, options: LatexOptions | None = None, warnings: list[str] | None = None
) -> str:
    """The abstract as text (paragraphs joined by a blank line), or ``""``."""
    found = find_abstract(latex)
    if not found:
        return ""
    return "\n\n".join(latex_to_text(found[2], options, warnings))
