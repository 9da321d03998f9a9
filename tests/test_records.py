"""The arxiv_structured / arxiv_plain rows: text layout, header spans, metadata."""

from __future__ import annotations

from structformer.dataset_scripts.latex import parse_paper
from structformer.dataset_scripts.records import ParsedPaper, Section, linearize, to_plain, to_record
from structformer.dataset_scripts.schema import STRUCTURED_FIELDS


def paper(**overrides) -> ParsedPaper:
    values = dict(
        title="A Study of Structure",
        abstract="We study structure.",
        sections=[
            Section("section", "Introduction", ["First paragraph.", "Second paragraph."]),
            Section("subsection", "Background", []),
            Section("section", "Method", ["We use [MATH]."]),
        ],
        main_file="main.tex",
    )
    values.update(overrides)
    return ParsedPaper(**values)


def test_text_layout_is_exact():
    row = to_record(paper(), "2101.00001")
    assert row["text"] == (
        "A Study of Structure\n\nWe study structure.\n\nIntroduction\n\nFirst paragraph.\n\nSecond paragraph."
        "\n\nBackground\n\nMethod\n\nWe use [MATH]."
    )
    assert tuple(row) == STRUCTURED_FIELDS


def test_header_spans_cover_title_and_every_heading():
    row = to_record(paper(), "2101.00001")
    assert [h["level"] for h in row["headers"]] == ["title", "section", "subsection", "section"]
    assert [row["text"][h["start"] : h["end"]] for h in row["headers"]] == [
        "A Study of Structure",
        "Introduction",
        "Background",
        "Method",
    ]
    assert row["headers"][0]["start"] == 0
    # Every heading sits on its own line.
    for header in row["headers"][1:]:
        assert row["text"][header["start"] - 2 : header["start"]] == "\n\n"
        assert row["text"][header["end"] : header["end"] + 2] in ("\n\n", "")


def test_empty_abstract_and_untitled_lead_section():
    row = to_record(
        paper(
            abstract="", sections=[Section("section", "", ["Lead."]), Section("section", "Next", ["Body."])]
        ),
        "x",
    )
    assert row["text"] == "A Study of Structure\n\nLead.\n\nNext\n\nBody."
    assert [(h["level"], row["text"][h["start"] : h["end"]]) for h in row["headers"]] == [
        ("title", "A Study of Structure"),
        ("section", "Next"),
    ]
    assert "\n\n\n" not in row["text"]


def test_no_title_gives_no_title_span():
    text, headers = linearize("", "Abstract.", [Section("section", "Intro", ["Body."])])
    assert text == "Abstract.\n\nIntro\n\nBody."
    assert headers == [{"start": 11, "end": 16, "level": "section"}]


def test_whitespace_inside_blocks_is_collapsed():
    row = to_record(paper(title="Two\nlines", sections=[Section("section", "A  B", ["x\n\ny"])]), "x")
    assert row["text"] == "Two lines\n\nWe study structure.\n\nA B\n\nx y"
    assert row["sections"] == [{"level": "section", "title": "A B", "paragraphs": ["x y"]}]


def test_multi_paragraph_abstract_keeps_its_break():
    row = to_record(paper(abstract="One.\n\nTwo.", sections=[]), "x")
    assert row["abstract"] == "One.\n\nTwo." and row["text"] == "A Study of Structure\n\nOne.\n\nTwo."


def test_metadata_fields():
    row = to_record(paper(), "2101.00001")
    assert (row["categories"], row["license"], row["version"]) == (None, None, None)
    metadata = {
        "categories": "cs.CL cs.LG",
        "license": "http://creativecommons.org/licenses/by/4.0/",
        "versions": [{"version": "v1"}, {"version": "v10"}, {"version": "v2"}],
    }
    row = to_record(paper(), "2101.00001", metadata)
    assert row["categories"] == "cs.CL cs.LG"
    assert row["license"].endswith("by/4.0/")
    assert row["version"] == "v10"
    assert to_record(paper(), "x", {"version": "v3", "versions": [{"version": "v1"}]})["version"] == "v3"


def test_plain_row_has_identical_text():
    row = to_record(paper(), "2101.00001")
    plain = to_plain(row)
    assert plain == {"id": "2101.00001", "text": row["text"]}
    assert plain["text"].encode() == row["text"].encode()


def test_round_trip_from_latex():
    source = (
        b"\\documentclass{article}\\title{Graph \\emph{Things}}\\begin{document}\\maketitle\n"
        b"\\begin{abstract}Short.\\end{abstract}\n\\section{Intro}\nText $x$.\n\\subsection*{Deeper Part}\nMore.\n"
        b"\\end{document}"
    )
    row = to_record(parse_paper({"main.tex": source}), "p1")
    assert row["text"] == "Graph Things\n\nShort.\n\nIntro\n\nText x.\n\nDeeper Part\n\nMore."
    spans = [(h["level"], row["text"][h["start"] : h["end"]]) for h in row["headers"]]
    assert spans == [("title", "Graph Things"), ("section", "Intro"), ("subsection", "Deeper Part")]
    titles = [s["title"] for s in row["sections"]]
    assert titles == [row["text"][h["start"] : h["end"]] for h in row["headers"][1:]]
