"""Source-level LaTeX handling: bytes to text, comments, the main file, includes and user macros.

Everything here works on strings (or a ``Mapping[str, str]`` of a paper's files keyed by POSIX
paths relative to the paper's root) and never touches the file system: a paper's files are
handed in by the caller, so an ``\\input{/etc/passwd}`` can only ever look up a key, and even
that is refused.
"""

from __future__ import annotations

import codecs
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

# Environments whose content TeX does not read as ordinary tokens: no comments, no includes.
VERBATIM_ENVIRONMENTS = (
    "verbatim",
    "verbatim*",
    "Verbatim",
    "lstlisting",
    "minted",
    "comment",
    "filecontents",
)

_CONTROL_WORD = re.compile(r"\\([A-Za-z@]+)")
_VERBATIM_BEGIN = re.compile(
    r"\\begin\s*\{(" + "|".join(re.escape(e) for e in VERBATIM_ENVIRONMENTS) + r")\}"
)
_VERB = re.compile(r"\\verb\*?([^A-Za-z\s*])")


# ---------------------------------------------------------------------------------------------
# Bytes to text


def _cyrillic_score(text: str) -> float:
    """Share of non-ASCII letters that are Cyrillic: high for cp1251 read right, low for Latin."""
    letters = [c for c in text if ord(c) > 127 and c.isalpha()]
    if not letters:
        return 0.0
    return sum("\u0400" <= c <= "\u04ff" for c in letters) / len(letters)


def decode_bytes(data: bytes, name: str = "<bytes>") -> str:
    """Decode a LaTeX source file.

    UTF-8 first (with or without a BOM), then UTF-16 when a BOM says so, then a legacy 8-bit
    code page. Cyrillic sources in windows-1251 and Western sources in windows-1252/latin-1
    differ in how their high bytes cluster: Russian words are runs of high bytes, while accented
    Latin letters sit alone between ASCII letters. A declared ``\\usepackage[enc]{inputenc}``
    wins over the guess. Raises ``UnicodeDecodeError`` for binary data (NUL bytes).
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    if b"\x00" in data:
        raise UnicodeDecodeError(
            "latex", data, data.index(b"\x00"), data.index(b"\x00") + 1, f"{name}: binary data"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = re.search(rb"\\usepackage\[([^\]]*)\]\{inputenc\}", data)
    if declared:
        for option in declared.group(1).decode("ascii", errors="ignore").split(","):
            encoding = _INPUTENC_CODECS.get(option.strip().lower())
            if encoding:
                return data.decode(encoding, errors="replace")
    runs = re.findall(rb"[\x80-\xff]+", data)
    mean_run = sum(len(r) for r in runs) / max(len(runs), 1)
    if mean_run >= 3:
        cyrillic = data.decode("cp1251", errors="replace")
        if _cyrillic_score(cyrillic) > 0.8:
            return cyrillic
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; latin-1 maps every byte.
        return data.decode("latin-1")


_INPUTENC_CODECS = {
    "cp1251": "cp1251",
    "koi8-r": "koi8_r",
    "latin1": "latin-1",
    "latin9": "iso8859-15",
    "cp1252": "cp1252",
    "ansinew": "cp1252",
    "cp866": "cp866",
    "latin2": "iso8859-2",
    "cp1250": "cp1250",
    "utf8": "utf-8",
}


# ---------------------------------------------------------------------------------------------
# Comments and disabled blocks


def _skip_verb(line: str, pos: int) -> int:
    """Index just past an inline ``\\verb|...|`` starting at ``pos``, or ``pos`` when there is none."""
    match = _VERB.match(line, pos)
    if not match:
        return pos
    end = line.find(match.group(1), match.end())
    return len(line) if end < 0 else end + 1


def _comment_start(line: str) -> int:
    """Index of the ``%`` that starts a comment on this line, or -1. ``\\%`` and ``\\verb`` are kept."""
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            after = _skip_verb(line, i)
            i = after if after != i else i + 2
            continue
        if c == "%":
            return i
        i += 1
    return -1


def strip_comments(text: str) -> str:
    """Remove ``%`` comments the way TeX reads them.

    ``\\%`` is a percent sign, not a comment, and verbatim environments keep their lines.
    A line that holds only a comment disappears with its newline; a comment after text also
    eats the newline and the next line's indentation (TeX joins the lines), unless the next line
    is blank, which still ends the paragraph.
    """
    lines = text.split("\n")
    out: list[str] = []
    verbatim_end: str | None = None
    # Text of a line whose comment ate its newline: it is glued to the front of the next line.
    carry: str | None = None
    for index, line in enumerate(lines):
        if verbatim_end is not None:
            out.append(line)
            if verbatim_end in line:
                verbatim_end = None
            continue
        prefix = ""
        if carry is not None:
            prefix, line, carry = carry, line.lstrip(" \t"), None
        begin = _VERBATIM_BEGIN.search(line)
        cut = _comment_start(line)
        if begin and (cut < 0 or begin.start() < cut):
            end_marker = "\\end{" + begin.group(1) + "}"
            if end_marker not in line[begin.end() :]:
                verbatim_end = end_marker
            out.append(prefix + line)
            continue
        if cut < 0:
            out.append(prefix + line)
            continue
        kept = prefix + line[:cut]
        if not kept.strip():
            if prefix:
                carry = prefix
            continue
        if index + 1 < len(lines) and lines[index + 1].strip():
            carry = kept
        else:
            out.append(kept)
    if carry is not None:
        out.append(carry)
    return "\n".join(out)


def remove_disabled_blocks(text: str) -> str:
    """Drop ``\\begin{comment}...\\end{comment}`` and ``\\iffalse ... \\fi`` blocks (nesting of
    ``\\if...`` counted), which authors use to switch text off."""
    text = re.sub(r"\\begin\s*\{comment\}.*?(\\end\s*\{comment\}|\Z)", "", text, flags=re.S)
    out: list[str] = []
    pos = 0
    for match in re.finditer(r"\\iffalse(?![A-Za-z@])", text):
        if match.start() < pos:
            continue
        depth = 1
        scan = re.compile(r"\\(if[A-Za-z@]*|fi)(?![A-Za-z@])")
        end = len(text)
        for token in scan.finditer(text, match.end()):
            depth += -1 if token.group(1) == "fi" else 1
            if depth == 0:
                end = token.end()
                break
        out.append(text[pos : match.start()])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def mask_verbatim(text: str) -> str:
    """Same length as ``text``, with the content of ``\\verb`` and verbatim environments blanked,
    so that searches for commands do not match inside code listings and offsets still agree."""
    chars = list(text)
    for match in re.finditer(
        r"\\begin\s*\{("
        + "|".join(re.escape(e) for e in VERBATIM_ENVIRONMENTS)
        + r")\}(.*?)(\\end\s*\{\1\}|\Z)",
        text,
        flags=re.S,
    ):
        for i in range(match.start(2), match.end(2)):
            if chars[i] != "\n":
                chars[i] = " "
    for match in _VERB.finditer(text):
        end = text.find(match.group(1), match.end())
        newline = text.find("\n", match.end())
        if end < 0 or (0 <= newline < end):
            continue
        for i in range(match.start(), end + 1):
            chars[i] = " "
    return "".join(chars)


# ---------------------------------------------------------------------------------------------
# Includes

_INCLUDE = re.compile(
    r"\\(input|include|subfile|subfileinclude)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))"
    r"|\\(import|subimport|inputfrom|subinputfrom|includefrom|subincludefrom)\*?\s*\{([^{}]*)\}\s*\{([^{}]*)\}"
)


@dataclass(frozen=True)
class IncludeRef:
    """One ``\\input``-like command found in a file."""

    start: int
    end: int
    command: str
    target: str
    relative_to_file: bool


def find_includes(text: str) -> list[IncludeRef]:
    """The include commands of ``text`` (outside verbatim), in order."""
    refs = []
    for match in _INCLUDE.finditer(mask_verbatim(text)):
        if match.group(1):
            target = match.group(2) if match.group(2) is not None else match.group(3)
            refs.append(IncludeRef(match.start(), match.end(), match.group(1), target.strip(), False))
        else:
            directory, name = match.group(5).strip(), match.group(6).strip()
            target = posixpath.join(directory, name) if directory else name
            refs.append(
                IncludeRef(
                    match.start(), match.end(), match.group(4), target, match.group(4).startswith("sub")
                )
            )
    return refs


def is_unsafe_path(target: str) -> bool:
    """True for paths that leave the paper's folder: absolute, home-relative, drive letters, ``..``."""
    target = target.strip().strip('"').replace("\\", "/")
    if not target or target.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", target):
        return True
    return posixpath.normpath(target).split("/")[0] == ".."


def resolve_target(
    target: str, including_file: str, available: Mapping[str, object], relative_to_file: bool = False
) -> str | None:
    """Key in ``available`` that ``target`` names, trying the paper root (as TeX does) and then the
    including file's folder, each with and without ``.tex``. ``None`` when absent or unsafe."""
    if is_unsafe_path(target):
        return None
    target = target.strip().strip('"').replace("\\", "/")
    bases = ["", posixpath.dirname(including_file)]
    if relative_to_file:
        bases.reverse()
    for base in bases:
        joined = posixpath.normpath(posixpath.join(base, target))
        if joined.split("/")[0] == "..":
            continue
        for candidate in (joined, joined + ".tex"):
            if candidate in available:
                return candidate
    return None


def _document_body(text: str) -> str | None:
    """Content between ``\\begin{document}`` and ``\\end{document}`` of a stand-alone sub-file."""
    masked = mask_verbatim(text)
    if not re.search(r"\\documentclass", masked):
        return None
    begin = re.search(r"\\begin\s*\{document\}", masked)
    if not begin:
        return None
    end = re.search(r"\\end\s*\{document\}", masked[begin.end() :])
    return text[begin.end() : begin.end() + end.start()] if end else text[begin.end() :]


def resolve_includes(
    texts: Mapping[str, str],
    main_file: str,
    *,
    max_depth: int = 16,
    max_chars: int = 20_000_000,
    warnings: list[str] | None = None,
) -> str:
    """Inline ``\\input``, ``\\include``, ``\\subfile`` and ``\\import`` recursively into one text.

    Paths resolve against the paper's root (then the including file's folder), with or without
    ``.tex``. Absolute paths and paths that climb out of the root are refused, missing files are
    skipped, cycles and nesting beyond ``max_depth`` are cut, and inlining stops once the text
    would pass ``max_chars``; each such event adds a line to ``warnings``. A complete document
    included inside another's body (``\\subfile``) contributes only its body, while one included
    before any ``\\begin{document}`` (a ``draft.tex`` wrapping ``\\input{main}``) comes whole;
    ``\\endinput`` ends a file.
    """
    notes = warnings if warnings is not None else []
    total = 0
    in_body = False
    begin_document = re.compile(r"\\begin\s*\{document\}")

    def emit(pieces: list[str], text: str) -> None:
        nonlocal in_body
        in_body = in_body or bool(begin_document.search(mask_verbatim(text)))
        pieces.append(text)

    def inline(path: str, stack: tuple[str, ...]) -> str:
        nonlocal total
        text = texts[path]
        end_input = re.search(r"\\endinput(?![A-Za-z@])", mask_verbatim(text))
        if end_input:
            text = text[: end_input.start()]
        if stack and in_body:
            body = _document_body(text)
            if body is not None:
                text = body
        pieces: list[str] = []
        pos = 0
        for ref in find_includes(text):
            emit(pieces, text[pos : ref.start])
            pos = ref.end
            where = f"{path}: \\{ref.command}{{{ref.target}}}"
            if is_unsafe_path(ref.target):
                notes.append(f"{where} refused: path outside the paper folder")
                continue
            found = resolve_target(ref.target, path, texts, ref.relative_to_file)
            if found is None:
                notes.append(f"{where} skipped: file missing or not a TeX source")
                continue
            if found in stack or found == path:
                notes.append(f"{where} skipped: include cycle")
                continue
            if len(stack) + 1 > max_depth:
                notes.append(f"{where} skipped: nesting deeper than {max_depth}")
                continue
            if total + len(texts[found]) > max_chars:
                notes.append(f"{where} skipped: paper text over {max_chars} characters")
                continue
            total += len(texts[found])
            pieces.append("\n" + inline(found, (*stack, path)) + "\n")
        emit(pieces, text[pos:])
        return "".join(pieces)

    total = len(texts[main_file])
    return inline(main_file, ())


# ---------------------------------------------------------------------------------------------
# The main file


def find_main_file(texts: Mapping[str, str]) -> str | None:
    """Pick the paper's main file among its TeX sources (comments may still be in them).

    A candidate is a file whose text, with its includes inlined, has both ``\\documentclass``
    (or ``\\documentstyle``) and ``\\begin{document}`` outside comments and verbatim; this finds
    mains whose preamble is an ``\\input``. Among candidates the file that no other candidate
    includes wins, then the one pulling in more files, then the one that holds
    ``\\begin{document}`` itself, then the larger text; the path breaks remaining ties so the
    choice never depends on dictionary order.
    """
    clean = {path: mask_verbatim(strip_comments(text)) for path, text in texts.items()}
    has_class = {p: bool(re.search(r"\\document(class|style)(?![A-Za-z@])", t)) for p, t in clean.items()}
    has_begin = {p: bool(re.search(r"\\begin\s*\{document\}", t)) for p, t in clean.items()}
    children: dict[str, set[str]] = {}
    for path, text in clean.items():
        found = set()
        for ref in find_includes(text):
            target = resolve_target(ref.target, path, clean, ref.relative_to_file)
            if target and target != path:
                found.add(target)
        children[path] = found

    def closure(path: str) -> set[str]:
        seen = {path}
        todo = [path]
        while todo:
            for child in children[todo.pop()]:
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen

    closures = {p: closure(p) for p in clean}
    candidates = [
        p
        for p in clean
        if any(has_class[q] for q in closures[p])
        and any(has_begin[q] for q in closures[p])
        # a \documentclass[main]{subfiles} part is a complete document only as part of its main
        and not re.search(r"\\documentclass\s*(\[[^\]]*\])?\s*\{(subfiles|standalone)\}", clean[p])
    ]
    if not candidates:
        candidates = [p for p in clean if has_class[p] and has_begin[p]]
    if not candidates:
        return None
    included = set().union(*(children[p] for p in candidates))

    def rank(path: str) -> tuple:
        return (
            path in included,
            -len(closures[path]),
            not has_begin[path],
            -sum(len(clean[q]) for q in closures[path]),
            path.count("/"),
            path,
        )

    return min(candidates, key=rank)


def split_document(text: str) -> tuple[str, str]:
    """``(preamble, body)``: the text before ``\\begin{document}`` and between it and
    ``\\end{document}``. Without ``\\begin{document}`` all of it is body; without
    ``\\end{document}`` the body runs to the end; anything after ``\\end{document}`` is dropped."""
    masked = mask_verbatim(text)
    begin = re.search(r"\\begin\s*\{document\}", masked)
    if not begin:
        return "", text
    end = re.search(r"\\end\s*\{document\}", masked[begin.end() :])
    body_end = begin.end() + end.start() if end else len(text)
    return text[: begin.start()], text[begin.end() : body_end]


# ---------------------------------------------------------------------------------------------
# User macros

# Commands whose user (re)definitions are ignored: class files and templates redefine these in
# ways that only make sense to TeX (``\@startsection``), and the section tree, the title and the
# placeholders all need the originals.
PROTECTED_MACROS = frozenset(
    [
        "section",
        "subsection",
        "subsubsection",
        "chapter",
        "paragraph",
        "subparagraph",
        "part",
        "appendix",
        "title",
        "maketitle",
        "begin",
        "end",
        "item",
        "footnote",
        "footnotetext",
        "cite",
        "citep",
        "citet",
        "citealp",
        "citeauthor",
        "ref",
        "eqref",
        "autoref",
        "cref",
        "Cref",
        "label",
        "input",
        "include",
        "subfile",
        "par",
        "abstract",
        "caption",
        "bibliography",
        "href",
        "url",
        "newcommand",
        "renewcommand",
        "providecommand",
        "def",
        "let",
        "documentclass",
        "usepackage",
    ]
)

_DEFINITION = re.compile(
    r"\\(newcommand|renewcommand|providecommand|DeclareRobustCommand|def|gdef|edef|xdef|let"
    r"|DeclareMathOperator|NewDocumentCommand|RenewDocumentCommand|DeclareDocumentCommand|ProvideDocumentCommand"
    r"|newenvironment|renewenvironment)(?![A-Za-z@])(\*?)"
)


@dataclass(frozen=True)
class Macro:
    """A user macro: ``nargs`` arguments, the first optional with ``default`` when that is set."""

    name: str
    nargs: int
    default: str | None
    body: str


_TOKEN = re.compile(r"\\(?:[A-Za-z@]+\*?|.)|[{}]|[^\\{}]+", re.DOTALL)


def flatten_nesting(text: str, max_depth: int) -> tuple[str, int]:
    """``text`` with every brace group nested deeper than ``max_depth`` unwrapped, and how many were.

    An unwrapped group loses its braces and the command right before them (``\\emph{x}`` -> ``x``)
    and keeps its text. The parser's recursion gives up on a few hundred nested commands; this lets a
    line that holds them (a heading, often) be parsed rather than dropped. ``\\{`` is text, not a group.
    """
    out: list[str] = []
    kept: list[bool] = []
    removed = 0
    for token in _TOKEN.findall(text):
        if token == "{":
            if len(kept) >= max_depth:
                if out and out[-1].startswith("\\") and out[-1][1:2].isalpha():
                    out.pop()
                kept.append(False)
                removed += 1
                continue
            kept.append(True)
        elif token == "}" and kept and not kept.pop():
            continue
        out.append(token)
    return "".join(out), removed


def read_group(text: str, pos: int, open_char: str = "{", close_char: str = "}") -> tuple[str, int] | None:
    """``(content, end)`` of the balanced group opening at ``text[pos]``, or ``None`` if it is not
    there or never closes. Escaped braces do not count."""
    if pos >= len(text) or text[pos] != open_char:
        return None
    depth = 0
    brace_depth = 0
    i = pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if open_char != "{":
            if c == "{":
                brace_depth += 1
            elif c == "}":
                brace_depth -= 1
                if brace_depth < 0:
                    return None
        if brace_depth == 0 or open_char == "{":
            if c == open_char:
                depth += 1
            elif c == close_char:
                depth -= 1
                if depth == 0:
                    return text[pos + 1 : i], i + 1
        i += 1
    return None


def _skip_space(text: str, pos: int) -> int:
    """Skip spaces and at most one newline, as TeX does between a command and its arguments."""
    match = re.compile(r"[ \t]*(\n[ \t]*)?").match(text, pos)
    return match.end()


def _read_argument(text: str, pos: int) -> tuple[str, int] | None:
    """One undelimited macro argument: a braced group, a control sequence, or one character."""
    pos = _skip_space(text, pos)
    if pos >= len(text):
        return None
    if text[pos] == "{":
        return read_group(text, pos)
    if text[pos] == "\\":
        word = _CONTROL_WORD.match(text, pos)
        end = word.end() if word else min(pos + 2, len(text))
        return text[pos:end], end
    if text[pos] in "}%":
        return None
    return text[pos], pos + 1


def _read_name(text: str, pos: int) -> tuple[str, int] | None:
    """The macro name in ``\\newcommand{\\name}`` or ``\\newcommand\\name``."""
    pos = _skip_space(text, pos)
    if pos < len(text) and text[pos] == "{":
        group = read_group(text, pos)
        if not group:
            return None
        word = re.fullmatch(r"\s*\\([A-Za-z@]+)\s*", group[0])
        return (word.group(1), group[1]) if word else None
    word = _CONTROL_WORD.match(text, pos)
    return (word.group(1), word.end()) if word else None


def _parse_definition(text: str, match: re.Match) -> tuple[Macro | None, int]:
    """Parse the definition starting at ``match``; returns the macro (``None`` when it is not
    one we can expand) and where the definition ends (``match.end()`` when unparsable)."""
    kind = match.group(1)
    pos = match.end()
    fail = (None, match.end())
    if kind in ("newenvironment", "renewenvironment"):
        name = read_group(text, _skip_space(text, pos))
        if not name:
            return fail
        pos = _skip_space(text, name[1])
        for _ in range(2):
            if pos < len(text) and text[pos] == "[":
                option = read_group(text, pos, "[", "]")
                if not option:
                    return fail
                pos = _skip_space(text, option[1])
        begin = read_group(text, pos)
        end = read_group(text, _skip_space(text, begin[1])) if begin else None
        return (None, end[1]) if end else fail
    name = _read_name(text, pos)
    if not name:
        return fail
    macro_name, pos = name
    if kind == "let":
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "=":
            pos = _skip_space(text, pos + 1)
        target = _CONTROL_WORD.match(text, pos)
        if not target:
            return (None, min(pos + 1, len(text)))
        return Macro(macro_name, 0, None, "\\" + target.group(1)), target.end()
    if kind == "DeclareMathOperator":
        body = read_group(text, _skip_space(text, pos))
        if not body:
            return fail
        return Macro(macro_name, 0, None, "\\operatorname{" + body[0] + "}"), body[1]
    if kind.endswith("DocumentCommand"):
        spec = read_group(text, _skip_space(text, pos))
        body = read_group(text, _skip_space(text, spec[1])) if spec else None
        if not body:
            return fail
        tokens = re.sub(r"\s", "", spec[0])
        if re.fullmatch(r"m*", tokens):
            return Macro(macro_name, len(tokens), None, body[0]), body[1]
        return None, body[1]
    if kind in ("def", "gdef", "edef", "xdef"):
        brace = text.find("{", pos)
        if brace < 0:
            return fail
        params = text[pos:brace]
        body = read_group(text, brace)
        if not body:
            return fail
        if not re.fullmatch(r"(#[1-9])*", params.strip()):
            return None, body[1]
        return Macro(macro_name, params.count("#"), None, body[0]), body[1]
    nargs = 0
    default = None
    pos = _skip_space(text, pos)
    if pos < len(text) and text[pos] == "[":
        count = read_group(text, pos, "[", "]")
        if not count or not count[0].strip().isdigit():
            return fail
        nargs = int(count[0].strip())
        pos = _skip_space(text, count[1])
        if pos < len(text) and text[pos] == "[":
            option = read_group(text, pos, "[", "]")
            if not option:
                return fail
            default = option[0]
            pos = _skip_space(text, option[1])
    body = read_group(text, pos)
    if not body:
        return fail
    return Macro(macro_name, nargs, default, body[0]), body[1]


def collect_macros(text: str) -> tuple[dict[str, Macro], str]:
    """Find the user's macro definitions in ``text``: returns them by name and the text with every
    definition removed (so its body is not read as prose). ``\\providecommand`` and
    ``\\newcommand`` keep an earlier definition, ``\\renewcommand`` and ``\\def`` replace it;
    ``\\let`` copies a user macro or aliases a built-in one. Protected names and ``@`` names
    (TeX internals) are not recorded."""
    macros: dict[str, Macro] = {}
    pieces = []
    pos = 0
    masked = mask_verbatim(text)
    for match in _DEFINITION.finditer(masked):
        if match.start() < pos:
            continue
        macro, end = _parse_definition(text, match)
        pieces.append(text[pos : match.start()])
        pos = end
        if macro is None or macro.name in PROTECTED_MACROS or "@" in macro.name:
            continue
        kind = match.group(1)
        if kind == "let" and macro.body[1:] in macros:
            source = macros[macro.body[1:]]
            macro = Macro(macro.name, source.nargs, source.default, source.body)
        if kind in ("newcommand", "providecommand", "ProvideDocumentCommand") and macro.name in macros:
            continue
        macros[macro.name] = macro
    pieces.append(text[pos:])
    return macros, "".join(pieces)


def _substitute(macro: Macro, args: list[str]) -> str:
    def repl(match: re.Match) -> str:
        if match.group(0) == "##":
            return "#"
        index = int(match.group(1)) - 1
        return args[index] if index < len(args) else ""

    return re.sub(r"##|#([1-9])", repl, macro.body)


def expand_macros(
    text: str,
    macros: Mapping[str, Macro] | None = None,
    *,
    max_depth: int = 10,
    max_growth: int = 4,
    warnings: list[str] | None = None,
) -> str:
    """Expand user macros in ``text``.

    With ``macros=None`` the definitions are collected from ``text`` itself (and removed from
    it). A macro's replacement is expanded again, up to ``max_depth`` levels, which stops
    recursive definitions; a call whose arguments are missing is left as written. Expansion
    stops, with a warning, once the text would grow past ``max_growth`` times its size (plus
    1 MB), which bounds definitions that double at each level.
    """
    if macros is None:
        macros, text = collect_macros(text)
    if not macros:
        return text
    notes = warnings if warnings is not None else []
    budget = max_growth * len(text) + 1_000_000
    state = {"size": len(text), "stopped": False, "deep": False}
    pattern = re.compile(
        r"\\(" + "|".join(re.escape(n) for n in sorted(macros, key=len, reverse=True)) + r")(?![A-Za-z@])"
    )

    def expand(segment: str, depth: int) -> str:
        out = []
        pos = 0
        for match in pattern.finditer(segment):
            if match.start() < pos:
                continue
            if (
                match.start() > 0
                and segment[match.start() - 1] == "\\"
                and _odd_backslashes(segment, match.start())
            ):
                continue
            if state["stopped"]:
                break
            if depth >= max_depth:
                state["deep"] = True
                break
            macro = macros[match.group(1)]
            args: list[str] = []
            end = match.end()
            ok = True
            for index in range(macro.nargs):
                if index == 0 and macro.default is not None:
                    probe = _skip_space(segment, end)
                    option = (
                        read_group(segment, probe, "[", "]")
                        if probe < len(segment) and segment[probe] == "["
                        else None
                    )
                    if option:
                        args.append(option[0])
                        end = option[1]
                    else:
                        args.append(macro.default)
                    continue
                argument = _read_argument(segment, end)
                if argument is None:
                    ok = False
                    break
                args.append(argument[0])
                end = argument[1]
            if not ok:
                continue
            replacement = expand(_substitute(macro, args), depth + 1)
            # \alpha followed by "x" must not fuse into \alphax.
            if re.search(r"\\[A-Za-z@]+$", replacement) and end < len(segment) and segment[end].isalpha():
                replacement += " "
            state["size"] += len(replacement) - (end - match.start())
            if state["size"] > budget:
                state["stopped"] = True
                break
            out.append(segment[pos : match.start()])
            out.append(replacement)
            pos = end
        out.append(segment[pos:])
        return "".join(out)

    result = expand(text, 0)
    if state["stopped"]:
        notes.append(f"macro expansion stopped: text grew past {max_growth}x its size")
    if state["deep"]:
        notes.append(f"macro expansion cut at depth {max_depth}")
    return result


def _odd_backslashes(text: str, pos: int) -> bool:
    """True when ``text[pos]`` is a backslash escaped by an odd run of backslashes before it."""
    count = 0
    i = pos - 1
    while i >= 0 and text[i] == "\\":
        count += 1
        i -= 1
    return count % 2 == 1
