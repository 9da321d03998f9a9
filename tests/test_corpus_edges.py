"""The edges of ``build-corpus`` (issues 14 and 17): every input is a record or a named reject, ids and
duplicates are right, caps are the documented ones, and what the parser repaired reaches the report."""

from __future__ import annotations

import errno
import gzip
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from factories import interrupt_reading
from huggingface_hub import DatasetCard

from structformer.dataset_scripts import latex, merge, schema, workers
from structformer.dataset_scripts.build import BuildOptions, build_corpus, main
from structformer.dataset_scripts.parsers import LatexParser, make_parser, reject_reasons
from structformer.errors import InputError, RunStopped


def _paper(title: str, body: str = "The method works on every input we tried, and it is fast.") -> str:
    return (
        "\\documentclass{article}\n\\title{" + title + "}\n\\begin{document}\n\\maketitle\n"
        "\\section{Introduction}\n" + body + "\n\\end{document}\n"
    )


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"num_proc": 1, "progress": False, "min_chars": None, **changes})


def _rows(out: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted(schema.shard_dir(out, schema.STRUCTURED).glob("*.parquet")):
        rows.update({row["id"]: row for row in pq.read_table(path).to_pylist()})
    return rows


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _check_counts(report: dict) -> None:
    assert (
        report["inputs"]
        == report["records"] + report["rejects"]
        == len(report["rejected"]) + report["records"]
    )
    assert set(report["reasons"]) <= set(reject_reasons(make_parser("latex")))


def test_version_names_that_are_not_arxiv_ids_stay_apart(tmp_path: Path) -> None:
    """14.4: mobilenetv2 and mobilenetv3 are two papers; a loose 2403.00007v2.tex.gz keeps its version."""
    papers = tmp_path / "papers"
    for name in ("mobilenetv2", "mobilenetv3", "yolov4", "yolov7"):
        (papers / name).mkdir(parents=True)
        (papers / name / "main.tex").write_text(_paper(f"Paper {name}"))
    loose = tmp_path / "2403.00007v2.tex.gz"
    loose.write_bytes(gzip.compress(_paper("Versioned").encode()))
    report = build_corpus([papers, loose], tmp_path / "out", _options())
    assert (report["records"], report["rejects"]) == (5, 0)
    rows = _rows(tmp_path / "out")
    assert sorted(rows) == ["2403.00007", "mobilenetv2", "mobilenetv3", "yolov4", "yolov7"]
    assert rows["2403.00007"]["version"] == "v2" and rows["2403.00007"]["source_kind"] == "arxiv_id_file"


def test_deep_nesting_on_a_heading_line_keeps_the_heading_and_says_so() -> None:
    """14.8: 200 \\emph, 250 \\textbf or 400 braces on the heading's line cost the markup, not the line."""
    for inner in (
        "\\emph{" * 200 + "Deep" + "}" * 200,
        "\\textbf{" * 250 + "Deep" + "}" * 250,
        "{" * 400 + "Deep" + "}" * 400,
    ):
        body = "Before.\n\n\\section{Results " + inner + "} Text on the heading's line.\n\nAfter."
        parsed = latex.parse_paper({"main.tex": _paper("Nested", body).encode()})
        assert [(s.title, s.paragraphs) for s in parsed.sections][-1] == (
            "Results Deep",
            ["Text on the heading's line.", "After."],
        )
        assert any("nested deeper than" in warning for warning in parsed.warnings)
    one_line = (
        "\\documentclass{article}\\begin{document}\\section{Heading} "
        + "Real words of a paper written on one line. " * 10
        + "\\emph{" * 200 + "deep" + "}" * 200 + " The end.\\end{document}"
    )  # fmt: skip
    outcome = workers.parse_one("x", {"main.tex": one_line.encode()}, LatexParser())
    assert len(outcome["record"]["text"]) > 400 and outcome["parse_warnings"]


def test_one_size_cap_the_documented_one(tmp_path: Path) -> None:
    """14.8: a 5 MB .tex is parsed under the default --max-file-mb (no hidden 4 MB cap); over the cap it
    is too_large, and the reject names the option."""
    big = _paper("Big", "Text of a big paper.\n" + "%" + "x" * (5 * 2**20) + "\n").encode()
    assert len(big) > 5 * 2**20
    assert workers.parse_one("big", {"main.tex": big}, LatexParser())["record"]["title"] == "Big"
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "big.tex").write_bytes(big)
    (papers / "small.tex").write_text(_paper("Small"))
    with pytest.raises(InputError):  # not a record, so nothing is written; the report says why
        build_corpus([papers / "big.tex"], tmp_path / "none", _options(max_file_bytes=2**20))
    report = build_corpus([papers], tmp_path / "out", _options(max_file_bytes=2**20))
    (reject,) = report["rejected"]
    assert reject["reason"] == "too_large" and "--max-file-mb" in reject["detail"]


def test_parser_warnings_reach_the_report(tmp_path: Path) -> None:
    """14.8: what the parser repaired is recorded per paper and counted."""
    papers = tmp_path / "papers"
    papers.mkdir()
    body = "Text.\n\n\\section{Deep " + "\\emph{" * 200 + "x" + "}" * 200 + "}\nMore.\n\\input{missing}"
    (papers / "a.tex").write_text(_paper("A", body))
    (papers / "b.tex").write_text(_paper("B"))
    report = build_corpus([papers], tmp_path / "out", _options())
    (entry,) = report["warnings"]
    assert entry["id"] == "a" and entry["count"] == len(entry["warnings"]) >= 2
    assert report["stats"]["records_with_parser_warnings"] == 1
    assert report["stats"]["parser_warnings"] == entry["count"]


def test_every_input_is_a_record_or_a_reject(tmp_path: Path) -> None:
    """14.9 and 17.8: duplicate tar members, a .zip, a README and a MANIFEST.tsv are counted rejects."""
    minimal = _paper("Bulk").encode()
    bulk = _tar(
        tmp_path / "arXiv_src_2101_001.tar",
        [
            (f"2101/2101.0000{i}.gz", gzip.compress(minimal.replace(b"Bulk", f"Bulk {i}".encode())))
            for i in range(1, 9)
        ]
        + [("2101/2101.00003.gz", gzip.compress(minimal))],
    )
    folder = tmp_path / "papers"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "main.tex").write_text(_paper("Folder paper"))
    (folder / "b.zip").write_bytes(b"PK\x03\x04")
    (folder / "README.md").write_text("# papers\n")
    (folder / "MANIFEST.tsv").write_text("folder\tdocumentclass\n\\documentclass{x}\\begin{document}\n")
    report = build_corpus([bulk, folder], tmp_path / "out", _options())
    _check_counts(report)
    assert report["inputs"] == 13 and report["records"] == 9
    assert report["reasons"] == {"duplicate_member": 1, "unsupported_format": 3}


def test_resume_reparses_an_edit_that_keeps_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """14.10: `cp -p`, `rsync -a` or `touch -r` keep size and mtime; the content digest still changes."""
    papers = tmp_path / "papers"
    papers.mkdir()
    for name in ("a", "b", "c"):
        (papers / f"{name}.tex").write_text(_paper(f"Paper {name}", "The first draft."))
    out = tmp_path / "out"
    interrupt_reading(monkeypatch, after=2)
    with pytest.raises(RunStopped):
        build_corpus([papers], out, _options())
    monkeypatch.undo()
    edited = papers / "a.tex"
    info = edited.stat()
    edited.write_text(_paper("Paper a", "The FIXED draft."))
    os.utime(edited, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert edited.stat().st_size == info.st_size
    build_corpus([papers], out, _options())
    assert "FIXED" in _rows(out)["a"]["text"]


def test_names_that_are_not_utf8_are_rejects_and_the_rest_is_built(tmp_path: Path) -> None:
    """14.11: a non-UTF-8 folder name and a bulk member 2402/2402.0000\\xff5.gz, twice (a rerun too)."""
    papers = tmp_path / "papers"
    (papers / "good").mkdir(parents=True)
    (papers / "good" / "main.tex").write_text(_paper("Good"))
    bad = os.fsencode(papers) + b"/bad\xff"
    os.mkdir(bad)
    Path(os.fsdecode(bad + b"/main.tex")).write_text(_paper("Bad name"))
    bulk = _tar(
        tmp_path / "arXiv_src_2402_001.tar",
        [("2402/2402.00001.gz", gzip.compress(_paper("Bulk").encode())), ("2402/2402.0000\udcff5.gz", b"x")],
    )
    for _ in range(2):
        report = build_corpus([papers, bulk], tmp_path / "out", _options())
        _check_counts(report)
        assert (report["records"], report["reasons"]) == (2, {"bad_name": 2})


def test_disk_full_names_the_file_and_keeps_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """14.12: ENOSPC while writing a shard: one line naming it; no staged file is left, OUT untouched."""
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "a.tex").write_text(_paper("A"))
    out = tmp_path / "out"
    real_write = pq.write_table
    calls = []

    def full(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            real_write(table, where, **kwargs)  # half of it reached the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(merge.pq, "write_table", full)
    with pytest.raises(InputError) as caught:
        main(
            [str(papers), "--output-dir", str(out), "--num-proc", "1", "--no-progress", "--min-chars", "none"]
        )
    message = str(caught.value)
    assert "\n" not in message and str(calls[1]) in message and "No space left on device" in message
    assert "nothing half-written was kept" in message
    assert [p.name for p in out.iterdir()] == [".build-corpus"] and not (
        out / ".build-corpus" / "staging"
    ).exists()
    # an output path that is a link to nothing: one clear line, not a bare [Errno 17]
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    with pytest.raises(InputError, match=r"link: a symbolic link to nothing, not a folder"):
        build_corpus([papers], tmp_path / "link", _options())


def test_card_shows_loading_that_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """14.13: the local card's snippet runs (from the folder) and loads the rows; no load_dataset(".")."""
    papers = tmp_path / "papers"
    papers.mkdir()
    for name in ("a", "b", "c"):
        (papers / f"{name}.tex").write_text(_paper(f"Paper {name}"))
    out = tmp_path / "out"
    build_corpus([papers], out, _options())
    card = (out / "README.md").read_text()
    assert 'load_dataset(".")' not in card.replace('`load_dataset(".")` does not work', "")
    snippet = re.search(r"```python\n(from datasets import load_dataset\n.*?)```", card, re.S).group(1)
    monkeypatch.chdir(out)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own example, on the corpus it describes
    ids = [i for split in scope["structured"].values() for i in split["id"]]
    assert sorted(ids) == ["a", "b", "c"]
    assert scope["plain"]["train"].column_names == ["id", "text"]
    from structformer.dataset_scripts.card import render_dataset_card

    hub = render_dataset_card(out, repo_id="someone/papers").text
    assert 'load_dataset("someone/papers")' in hub and 'load_dataset("someone/papers", "arxiv_plain")' in hub


def test_plain_tar_of_paper_folders_is_one_input_per_folder(tmp_path: Path) -> None:
    """17.6: not 36 inputs for 2 papers."""
    members = []
    for name in ("alpha", "beta"):
        members.append((f"{name}/main.tex", _paper(f"Paper {name}", "\\input{sections/intro}").encode()))
        members += [(f"{name}/sections/intro.tex", f"Intro of {name}.".encode())]
        members += [(f"{name}/figures/f{i}.png", b"\x89PNG") for i in range(16)]
    report = build_corpus([_tar(tmp_path / "papers.tar", members)], tmp_path / "out", _options())
    assert (report["inputs"], report["records"], report["rejects"]) == (2, 2, 0)
    rows = _rows(tmp_path / "out")
    assert "Intro of alpha." in rows["alpha"]["text"] and rows["alpha"]["source_kind"] == "tar_of_folders"


def test_symlinked_paper_folders_are_built(tmp_path: Path) -> None:
    """17.7: a folder of the user's links to paper folders."""
    store = tmp_path / "store"
    links = tmp_path / "links"
    links.mkdir()
    for name in ("a", "b"):
        (store / name).mkdir(parents=True)
        (store / name / "main.tex").write_text(_paper(f"Paper {name}"))
        os.symlink(store / name, links / name)
    report = build_corpus([links], tmp_path / "out", _options())
    assert (report["records"], report["rejects"]) == (2, 0)


def test_duplicates_by_content_identity_by_source(tmp_path: Path) -> None:
    """17.8: two papers whose main files share a name are two records; one text in two folders is one."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "paper.tex").write_text(_paper("First paper"))
    (tmp_path / "y" / "paper.tex").write_text(_paper("Second paper"))
    copies = tmp_path / "copies"
    for name in ("original", "renamed"):
        (copies / name).mkdir(parents=True)
        (copies / name / "main.tex").write_text(_paper("Same paper"))
    sources = [tmp_path / "x" / "paper.tex", tmp_path / "y" / "paper.tex", copies]
    report = build_corpus(sources, tmp_path / "out", _options())
    _check_counts(report)
    assert (report["records"], report["reasons"]) == (3, {"duplicate": 1})
    (duplicate,) = report["rejected"]
    assert duplicate["id"] == "renamed" and "the same text as original" in duplicate["detail"]
    titles = {row["title"]: row_id for row_id, row in _rows(tmp_path / "out").items()}
    assert set(titles) == {"First paper", "Second paper", "Same paper"}
    assert titles["First paper"] != titles["Second paper"] and titles["First paper"].startswith("paper@")


def test_pylatexenc_log_is_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """17.9: the tolerant parser's repairs are not printed at INFO (the workers log through the CLI's handler)."""
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "a.tex").write_text(_paper("A", "Broken \\end{Shaded} environment and a stray } brace."))
    log = tmp_path / "build.log"
    handler = logging.FileHandler(log)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not the attribute: loggers cache what is enabled
    try:
        argv = [str(papers), "--output-dir", str(tmp_path / "out"), "--num-proc", "1", "--no-progress"]
        assert main([*argv, "--min-chars", "none"]) == 0
    finally:
        root.setLevel(level)
        handler.close()
    text = log.read_text()
    assert "inputs -> 1 records" in text and "Ignoring parse error" not in text


def test_language_and_source_kind_shape_the_card(tmp_path: Path) -> None:
    """17.11: languages with counts from the text; arXiv links only for arXiv ids; no 'monolingual' lie."""
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "english.tex").write_text(
        _paper("English", "The model is trained on the data and it works well. " * 5)
    )
    (papers / "russian.tex").write_text(
        _paper("Русский", "Модель обучается на данных и хорошо работает на всех примерах. " * 5)
    )
    (papers / "2101.00001.tex").write_text(
        _paper("An arXiv one", "This is the text of a paper on arXiv. " * 5)
    )
    build_corpus([papers], tmp_path / "out", _options())
    rows = _rows(tmp_path / "out")
    assert {i: (r["language"], r["source_kind"]) for i, r in rows.items()} == {
        "2101.00001": ("en", "arxiv_id_file"),
        "english": ("en", "file"),
        "russian": ("ru", "file"),
    }
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert card.data.language == ["en", "ru"] and card.data.multilinguality == ["multilingual"]
    assert "| `en` | 2 |" in card.text and "| `ru` | 1 |" in card.text
    assert "1 of the documents have an arXiv identifier" in card.text
    assert datasets.load_dataset(
        "parquet", data_files=str(schema.shard_dir(tmp_path / "out", schema.STRUCTURED) / "*.parquet"),
        cache_dir=str(tmp_path / "cache"),
    )["train"].features == schema.STRUCTURED_FEATURES  # fmt: skip
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["records"] == 3
