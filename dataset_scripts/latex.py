"""One paper's LaTeX sources to a title, an abstract and a section tree.

``parse_paper`` takes the paper's files as a mapping of POSIX paths (relative to the paper's
folder) to bytes, so it never reads the file system: the caller streams archives or folders
and hands the bytes in. The steps are pure functions, each usable and tested alone:

``decode_bytes`` -> ``strip_comments`` -> ``find_main_file`` -> ``resolve_includes`` ->
``split_document`` -> ``expand_macros`` -> ``extract_title`` / ``extract_abstract`` ->
``build_sections`` (which uses ``latex_to_text``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from .latex_source import (
    collect_macros,
    decode_bytes,
    expand_macros,
    find_main_file,
    remove_disabled_blocks,
    resolve_includes,
    split_document,
    strip_comments,
)
from .latex_text import (
    LatexOptions,
    build_sections,
    extract_abstract,
    extract_title,
    find_abstract,
    latex_to_text,
)
from .records import PaperError, ParsedPaper

__all__ = [
    "LATEX_REJECT_REASONS",
    "LatexOptions",
    "build_sections",
    "decode_bytes",
    "expand_macros",
    "extract_abstract",
    "extract_title",
    "find_main_file",
    "latex_to_text",
    "parse_paper",
    "resolve_includes",
    "strip_comments",
]

# Extensions read as TeX source. Files without an extension are read too when they look like
# TeX: old arXiv submissions are often a single file with no name suffix.
TEX_SUFFIXES = (".tex", ".ltx", ".latex")
# The reject reasons of this parser besides the build's own (schema.REJECT_REASONS, which has the
# other reasons parse_paper raises: pdf_only, decode_error, empty, parse_error).
LATEX_REJECT_REASONS = {"no_main_file": "no TeX file with \\documentclass and \\begin{document}"}


def _is_tex_source(path: str, data: bytes) -> bool:
    name = posixpath.basename(path)
    if name.lower().endswith(TEX_SUFFIXES):
        return True
    return "." not in name and (
        b"\\documentclass" in data or b"\\documentstyle" in data or b"\\begin{" in data
    )


def parse_paper(files: Mapping[str, bytes], options: LatexOptions | None = None) -> ParsedPaper:
    """Parse one paper from its files (POSIX paths relative to the paper's folder -> bytes).

    Raises ``PaperError`` with reason ``pdf_only`` (no TeX, but a PDF), ``no_main_file`` (no
    file with ``\\documentclass`` and ``\\begin{document}``), ``decode_error`` (the TeX files
    are binary), ``empty`` (nothing left after cleaning) or ``parse_error``.
    """
    options = options or LatexOptions()
    warnings: list[str] = []
    sources = {p: data for p, data in files.items() if _is_tex_source(p, data)}
    if not sources:
        if any(p.lower().endswith(".pdf") for p in files):
            raise PaperError("pdf_only", f"{len(files)} file(s), no TeX source")
        raise PaperError("no_main_file", f"no TeX source among {len(files)} file(s)")
    texts: dict[str, str] = {}
    for path in sorted(sources):
        data = sources[path]
        try:
            texts[path] = remove_disabled_blocks(strip_comments(decode_bytes(data, path)))
        except UnicodeDecodeError as error:
            warnings.append(f"{path}: not text ({error.reason})")
    if not texts:
        raise PaperError("decode_error", f"none of {len(sources)} TeX file(s) decodes as text")
    main = find_main_file(texts)
    if main is None:
        raise PaperError(
            "no_main_file", f"no \\documentclass with \\begin{{document}} in {len(texts)} TeX file(s)"
        )
    try:
        full = resolve_includes(
            texts,
            main,
            max_depth=options.max_include_depth,
            max_chars=options.max_paper_chars,
            warnings=warnings,
        )
        preamble, body = split_document(full)
        macros, _ = collect_macros(preamble + "\n" + body)
        _, preamble = collect_macros(preamble)
        _, body = collect_macros(body)
        expand = dict(macros=macros, max_depth=options.max_macro_depth, warnings=warnings)
        preamble = expand_macros(preamble, **expand)
        body = expand_macros(body, **expand)
        front = preamble + "\n" + body
        title = extract_title(front, options, warnings)
        abstract = extract_abstract(front, options, warnings)
        found = find_abstract(body)
        if found:
            body = body[: found[0]] + "\n\n" + body[found[1] :]
        sections = build_sections(body, options, warnings)
    except RecursionError as error:
        raise PaperError("parse_error", f"{main}: nesting too deep ({error})") from error
    if not title and not abstract and not any(s.paragraphs or s.title for s in sections):
        raise PaperError("empty", f"{main}: no title, abstract or text after cleaning")
    return ParsedPaper(title=title, abstract=abstract, sections=sections, main_file=main, warnings=warnings)
