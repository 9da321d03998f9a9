"""Unit tests of the per-paper LaTeX handling, one small snippet per behaviour."""

from __future__ import annotations

import pytest

from structformer.dataset_scripts.latex import (
    LatexOptions,
    build_sections,
    decode_bytes,
    expand_macros,
    extract_abstract,
    extract_title,
    find_main_file,
    latex_to_text,
    parse_paper,
    resolve_includes,
    strip_comments,
)
from structformer.dataset_scripts.latex_source import (
    collect_macros,
    is_unsafe_path,
    remove_disabled_blocks,
    split_document,
)
from structformer.dataset_scripts.records import PaperError, Section


def doc(body: str, preamble: str = "") -> bytes:
    return (
        f"\\documentclass{{article}}\n{preamble}\n\\begin{{document}}\n{body}\n\\end{{document}}\n".encode()
    )


# ----------------------------------------------------------------------------- decoding


def test_decode_utf8_and_bom():
    assert decode_bytes("Schrödinger".encode()) == "Schrödinger"
    assert decode_bytes(b"\xef\xbb\xbf\\section{A}") == "\\section{A}"


def test_decode_windows_1251_russian():
    text = "Введение в теорию графов и её приложения"
    assert decode_bytes(text.encode("cp1251")) == text


def test_decode_latin1_accents():
    text = "Théorème de la moyenne, démonstration élémentaire"
    assert decode_bytes(text.encode("latin-1")) == text


def test_decode_declared_inputenc_wins():
    data = "\\usepackage[koi8-r]{inputenc} Привет".encode("koi8_r")
    assert decode_bytes(data).endswith("Привет")


def test_decode_binary_raises():
    with pytest.raises(UnicodeDecodeError):
        decode_bytes(b"%PDF\x00\x01\x02")


# ----------------------------------------------------------------------------- comments


def test_strip_comments_keeps_escaped_percent():
    assert strip_comments("50\\% of cases % a remark\nnext") == "50\\% of cases next"


def test_strip_comments_comment_only_line_and_paragraph_break():
    assert strip_comments("a\n% whole line\nb") == "a\nb"
    # A comment before a blank line must not swallow the paragraph break.
    assert strip_comments("a%\n\nb") == "a\n\nb"
    # TeX joins a line ending in a comment with the next, without a space.
    assert strip_comments("hyphen%\n   ated") == "hyphenated"


def test_strip_comments_leaves_verbatim_alone():
    text = "\\begin{verbatim}\nx = 1 % not a comment\n\\end{verbatim}\n\\verb|%| kept % gone"
    assert (
        strip_comments(text) == "\\begin{verbatim}\nx = 1 % not a comment\n\\end{verbatim}\n\\verb|%| kept "
    )


def test_strip_comments_double_backslash_then_comment():
    assert strip_comments("line\\\\% comment\nnext") == "line\\\\next"


def test_remove_disabled_blocks():
    text = "a \\iffalse hidden \\ifx\\a\\b x\\fi still hidden \\fi b \\begin{comment}c\\end{comment}d"
    assert remove_disabled_blocks(text) == "a  b d"


# ----------------------------------------------------------------------------- main file


def test_find_main_file_plain():
    texts = {"intro.tex": "\\section{Intro}", "paper.tex": doc("\\input{intro}").decode()}
    assert find_main_file(texts) == "paper.tex"


def test_find_main_file_documentclass_in_included_preamble():
    texts = {
        "thesis.tex": "\\input{headers}\n\\begin{document}\n\\chapter{A}\n\\end{document}",
        "headers.tex": "\\documentclass{book}\n\\usepackage{amsmath}",
        "notes.tex": "just notes",
    }
    assert find_main_file(texts) == "thesis.tex"


def test_find_main_file_neither_command_in_main():
    texts = {
        "main.tex": "\\input{pre}\n\\input{start}\n\\section{A} text\n\\end{document}",
        "pre.tex": "\\documentclass{article}",
        "start.tex": "\\begin{document}",
    }
    assert find_main_file(texts) == "main.tex"


def test_find_main_file_prefers_the_file_that_includes_others():
    texts = {"draft.tex": "\\input{main}", "main.tex": doc("x").decode(), "old.tex": doc("y").decode()}
    assert find_main_file(texts) == "draft.tex"


def test_find_main_file_ignores_commands_in_verbatim_and_comments():
    texts = {
        "macros.tex": "\\verb|\\documentclass{article}| and \\verb|\\begin{document}|",
        "notes.tex": "% \\documentclass{article}\n% \\begin{document}",
        "paper.tex": doc("\\input{macros}").decode(),
    }
    assert find_main_file(texts) == "paper.tex"


def test_find_main_file_ties_are_deterministic():
    a = {"b.tex": doc("b").decode(), "a.tex": doc("a").decode()}
    b = dict(reversed(list(a.items())))
    assert find_main_file(a) == find_main_file(b) == "a.tex"


def test_find_main_file_none_without_document():
    assert find_main_file({"x.tex": "\\section{A}"}) is None


# ----------------------------------------------------------------------------- includes


def test_resolve_includes_forms():
    texts = {
        "main.tex": "\\begin{document}A \\input{sec/one} B \\input sec/two.tex C \\include{three} D \\subfile{four.tex} E",
        "sec/one.tex": "1",
        "sec/two.tex": "2",
        "three.tex": "3",
        "four.tex": "\\documentclass[main]{subfiles}\n\\begin{document}4\\end{document}",
    }
    warnings: list[str] = []
    out = resolve_includes(texts, "main.tex", warnings=warnings)
    assert " ".join(out.split()) == "\\begin{document}A 1 B 2 C 3 D 4 E"
    assert warnings == []


def test_resolve_includes_nested_relative_to_root_then_file():
    texts = {
        "main.tex": "\\input{ch/a}",
        "ch/a.tex": "[\\input{ch/b}|\\input{c}]",
        "ch/b.tex": "b",
        "ch/c.tex": "c",
    }
    assert "".join(resolve_includes(texts, "main.tex").split()) == "[b|c]"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../x", "a/../../x", "~/secret", "C:/x"])
def test_resolve_includes_refuses_paths_outside_the_folder(target):
    # Even a key that matches must not be read: the mapping stands for the paper's folder.
    texts = {"main.tex": f"start \\input{{{target}}} end", target: "SECRET", "../../x.tex": "SECRET"}
    warnings: list[str] = []
    out = resolve_includes(texts, "main.tex", warnings=warnings)
    assert "SECRET" not in out
    assert len(warnings) == 1 and "refused" in warnings[0]
    assert is_unsafe_path(target)


def test_resolve_includes_missing_cycle_and_depth():
    warnings: list[str] = []
    texts = {"main.tex": "\\input{gone}\\input{a}", "a.tex": "a\\input{b}", "b.tex": "b\\input{a}"}
    out = resolve_includes(texts, "main.tex", warnings=warnings)
    assert "".join(out.split()) == "ab"
    assert any("missing" in w for w in warnings) and any("cycle" in w for w in warnings)
    chain = {f"f{i}.tex": f"{i}\\input{{f{i + 1}}}" for i in range(10)}
    chain["f10.tex"] = "end"
    warnings = []
    out = resolve_includes(chain, "f0.tex", max_depth=3, warnings=warnings)
    assert "".join(out.split()) == "0123" and any("deeper" in w for w in warnings)


def test_resolve_includes_endinput_and_not_includegraphics():
    texts = {
        "main.tex": "\\includegraphics{fig} \\input{a}",
        "a.tex": "kept\\endinput dropped",
        "fig.tex": "no",
    }
    assert " ".join(resolve_includes(texts, "main.tex").split()) == "\\includegraphics{fig} kept"


def test_split_document_drops_text_after_end():
    preamble, body = split_document("\\documentclass{a}\\begin{document}body\\end{document}junk")
    assert (preamble, body) == ("\\documentclass{a}", "body")


# ----------------------------------------------------------------------------- macros


def test_expand_macros_forms():
    text = (
        "\\newcommand{\\R}{\\mathbb{R}}\n"
        "\\newcommand\\pair[2]{(#1, #2)}\n"
        "\\newcommand{\\opt}[2][x]{<#1|#2>}\n"
        "\\def\\swap#1#2{#2#1}\n"
        "\\providecommand{\\R}{ignored}\n"
        "\\renewcommand*{\\pair}[2]{[#1; #2]}\n"
        "\\R \\pair{a}{b} \\opt{y} \\opt[z]{y} \\swap ab"
    )
    assert expand_macros(text).split("\n")[-1] == "\\mathbb{R} [a; b] <x|y> <z|y> ba"


def test_expand_macros_nested_and_depth_limit():
    assert expand_macros("\\newcommand{\\a}{A}\\newcommand{\\b}{\\a\\a}\\b").strip() == "AA"
    warnings: list[str] = []
    out = expand_macros("\\def\\loop{x\\loop}\\loop", max_depth=5, warnings=warnings)
    assert out.count("x") == 5 and out.endswith("\\loop") and warnings


def test_expand_macros_custom_section_and_protected_names():
    text = (
        "\\newcommand{\\mysec}[1]{\\section{#1}\\label{s:#1}}"
        "\\renewcommand{\\section}{\\@startsection{section}{1}}"
        "\\mysec{Intro}"
    )
    assert expand_macros(text) == "\\section{Intro}\\label{s:Intro}"


def test_expand_macros_no_control_word_fusion():
    assert expand_macros("\\newcommand{\\al}{\\alpha}\\al x") == "\\alpha x"
    assert expand_macros("\\newcommand{\\al}{\\alpha}$\\al\\beta$") == "$\\alpha\\beta$"


def test_expand_macros_growth_is_bounded():
    # 24 doublings of ten characters would be 167 million characters.
    names = [chr(ord("a") + i) for i in range(25)]
    text = "\\def\\a{xxxxxxxxxx}" + "".join(f"\\def\\{b}{{\\{a}\\{a}}}" for a, b in zip(names, names[1:]))
    warnings: list[str] = []
    out = expand_macros(text + "\\y", max_depth=30, max_growth=1, warnings=warnings)
    assert len(out) <= 1_000_000 + 2 * len(text) and any("grew" in w for w in warnings)


def test_collect_macros_let_and_document_command():
    macros, rest = collect_macros(
        "\\newcommand{\\x}[1]{X#1}\\let\\y\\x\\let\\z=\\textbf\\NewDocumentCommand{\\w}{m}{W#1}t"
    )
    assert rest == "t"
    assert macros["y"].nargs == 1 and macros["z"].body == "\\textbf" and macros["w"].body == "W#1"


# ----------------------------------------------------------------------------- title and abstract


def test_extract_title_variants():
    assert extract_title("\\title{A \\emph{Study}\\\\ of Things\\thanks{funded}}") == "A Study of Things"
    assert extract_title("\\title[Short]{The Long Title}") == "The Long Title"
    assert extract_title("\\twocolumn[\n\\icmltitle{ICML Paper}\n\\icmlauthor{A}{b}]") == "ICML Paper"
    assert extract_title("\\title{}\n\\title{Second}") == "Second"
    assert extract_title("no title here") == ""


def test_extract_abstract_environment_and_macro():
    assert (
        extract_abstract("\\begin{abstract}\nWe show $x$.\n\nSecond.\n\\end{abstract}")
        == "We show x.\n\nSecond."
    )
    assert extract_abstract("\\abstract{Short \\textbf{one}.}\\keywords{k}") == "Short one."
    assert extract_abstract("nothing") == ""


# ----------------------------------------------------------------------------- sections and text


def test_build_sections_levels_stars_appendix_and_lead_text():
    body = (
        "Lead text.\n\\chapter{C}\n\\section*{Intro}\nA.\n\n\\subsection[s]{Sub Long}\nB.\n"
        "\\subsubsection{SSS}\n\\paragraph{Para.} C.\n\\appendix\n\\section{Proofs}\nD."
    )
    sections = build_sections(body)
    assert [(s.level, s.title) for s in sections] == [
        ("section", ""),
        ("chapter", "C"),
        ("section", "Intro"),
        ("subsection", "Sub Long"),
        ("subsubsection", "SSS"),
        ("paragraph", "Para."),
        ("section", "Proofs"),
    ]
    assert [s.paragraphs for s in sections] == [["Lead text."], [], ["A."], ["B."], [], ["C."], ["D."]]


def test_build_sections_front_matter_before_maketitle_is_dropped():
    sections = build_sections("\\author{Ann}\nSome affiliation\n\\maketitle\n\\section{A}\nText.")
    assert sections == [Section("section", "A", ["Text."])]


def test_build_sections_inside_environments_and_broken_floats():
    body = "\\begin{multicols}{2}\n\\section{In Cols}\nx\n\\end{multicols}\n\\begin{figure}\n\\section{Swallowed}\ny"
    assert [s.title for s in build_sections(body)] == ["In Cols", "Swallowed"]
    assert [s.title for s in build_sections("\\begin{section}{Env Form}\nz\n\\end{section}")] == ["Env Form"]


def test_latex_to_text_math_placeholders():
    options = LatexOptions(max_linear_math_chars=10)
    [text] = latex_to_text("Let $\\alpha+\\beta$ and $\\sum_{i=1}^{n} x_i^2 + y_i^2 = z$ hold.", options)
    assert text == "Let α+β and [MATH] hold."
    [text] = latex_to_text(
        "See\n\\begin{equation}\\int_0^1 f(x)\\,dx = \\sum_k a_k b_k\\label{e}\\end{equation}\nnow."
    )
    assert text == "See [MATH] now."
    [text] = latex_to_text("$x$", LatexOptions(max_linear_math_chars=0, math_placeholder="<m>"))
    assert text == "<m>"


def test_latex_to_text_cite_ref_footnote_and_accents():
    snippet = "As in \\citep[p.~3]{a,b}, see Fig.~\\ref{f}\\footnote{A \\emph{note}.} and \\'Eric's na\\\"ive caf\\'e."
    assert latex_to_text(snippet) == ["As in [CITE], see Fig. [REF] (A note.) and Éric's naïve café."]
    dropped = LatexOptions(footnotes="drop", cite_placeholder="<c>", ref_placeholder="<r>")
    assert latex_to_text(snippet, dropped) == ["As in <c>, see Fig. <r> and Éric's naïve café."]


def test_latex_to_text_drops_floats_and_bibliography_keeps_lists():
    snippet = (
        "Before.\n\\begin{figure}\\includegraphics{x}\\caption{Cap}\\end{figure}\nAfter.\n"
        "\\begin{itemize}\\item One \\item[Two] Second\\end{itemize}\n"
        "\\begin{thebibliography}{9}\\bibitem{a} Ref.\\end{thebibliography}"
    )
    assert latex_to_text(snippet) == ["Before. After.", "One", "Two: Second"]


def test_latex_to_text_survives_broken_href_and_unknown_macros():
    warnings: list[str] = []
    paragraphs = latex_to_text(
        "Link \\href{http://x.org}{here} and \\href and \\unknown{kept} end.", warnings=warnings
    )
    # As in TeX, a bare \\href takes the next two tokens ("a", "n") as its arguments.
    assert paragraphs == ["Link here and nd kept end."]


def test_latex_to_text_unicode_passthrough():
    assert latex_to_text("Статья о графах --- 图论") == ["Статья о графах — 图论"]


def test_options_are_validated():
    with pytest.raises(ValueError, match="footnotes"):
        LatexOptions(footnotes="margin")
    with pytest.raises(ValueError, match="max_paper_chars"):
        LatexOptions(max_paper_chars=0)


# ----------------------------------------------------------------------------- whole papers


def test_parse_paper_multi_file_with_macros():
    files = {
        "main.tex": doc(
            "\\maketitle\n\\begin{abstract}An abstract.\\end{abstract}\n\\input{sections/intro}\n\\mysec{Method}\nWe use \\tool.",
            preamble="\\title{Deep \\tool}\n\\newcommand{\\tool}{StructFormer}\n\\newcommand{\\mysec}[1]{\\section{#1}}",
        ),
        "sections/intro.tex": b"\\section{Introduction}\nHello\\cite{x}. % comment\n",
        "figure.pdf": b"%PDF-1.4",
    }
    paper = parse_paper(files)
    assert paper.main_file == "main.tex"
    assert paper.title == "Deep StructFormer"
    assert paper.abstract == "An abstract."
    assert paper.sections == [
        Section("section", "Introduction", ["Hello[CITE]."]),
        Section("section", "Method", ["We use StructFormer."]),
    ]


def test_parse_paper_windows_1251_source():
    files = {
        "main.tex": doc("\\section{Введение}\nТекст статьи.", "\\title{Заголовок}").decode().encode("cp1251")
    }
    paper = parse_paper(files)
    assert paper.title == "Заголовок" and paper.sections == [
        Section("section", "Введение", ["Текст статьи."])
    ]


def test_parse_paper_refuses_etc_passwd():
    files = {"main.tex": doc("\\section{A}\nText \\input{/etc/passwd} \\input{../../x}")}
    paper = parse_paper(files)
    assert paper.sections[0].paragraphs == ["Text"]
    assert sum("refused" in w for w in paper.warnings) == 2


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"paper.pdf": b"%PDF-1.4"}, "pdf_only"),
        ({"notes.txt": b"hello"}, "no_main_file"),
        ({"part.tex": b"\\section{A} no document"}, "no_main_file"),
        ({"main.tex": b"\\documentclass{x}\x00\x01"}, "decode_error"),
        ({"main.tex": doc("% nothing\n\\begin{figure}x\\end{figure}")}, "empty"),
    ],
)
def test_parse_paper_reject_reasons(files, reason):
    with pytest.raises(PaperError) as info:
        parse_paper(files)
    assert info.value.reason == reason


def test_parse_paper_single_file_without_extension():
    paper = parse_paper({"0301001": doc("\\section{Old}\nArXiv 2003.")})
    assert paper.main_file == "0301001" and paper.sections[0].title == "Old"


def test_parse_paper_is_deterministic_and_pure():
    files = {"b.tex": doc("\\section{B}"), "a.tex": doc("\\section{A}\n\\input{b}")}
    first = parse_paper(files)
    second = parse_paper(dict(reversed(list(files.items()))))
    assert first == second


def test_parse_paper_survives_nesting_deeper_than_python_recursion():
    body = "\\section{A}\nok\n\n" + "{" * 5000 + "x" + "}" * 5000 + "\n\nafter"
    paper = parse_paper({"main.tex": doc(body)})
    # issue 14.8: the groups nested too deep are unwrapped, their text kept, and the warnings say so
    assert paper.sections == [Section("section", "A", ["ok", "x", "after"])]
    assert any("RecursionError" in w for w in paper.warnings)
    assert any("nested deeper than" in w for w in paper.warnings)


def test_resolve_includes_wrapper_keeps_the_included_preamble():
    texts = {
        "draft.tex": "\\def\\draft{1}\n\\input{main}",
        "main.tex": doc("Body", preamble="\\title{Kept}").decode(),
    }
    assert find_main_file(texts) == "draft.tex"
    out = resolve_includes(texts, "draft.tex")
    assert "\\title{Kept}" in out and "\\begin{document}" in out
    assert parse_paper({k: v.encode() for k, v in texts.items()}).title == "Kept"
