"""``build-corpus`` end to end: the sample, rejects, determinism, resume, metadata and loading."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from factories import interrupt_reading, log_parsed

from structformer.dataset_scripts import latex, merge
from structformer.dataset_scripts.build import BuildOptions, build_corpus, main
from structformer.dataset_scripts.builder import ArxivStructured
from structformer.dataset_scripts.merge import load_metadata, split_of
from structformer.dataset_scripts.parsers import make_parser, reject_reasons
from structformer.dataset_scripts.sample import SAMPLE_RECORDS, SAMPLE_REJECTS, pack_sample_archive
from structformer.dataset_scripts.schema import STRUCTURED_FEATURES
from structformer.errors import InputError, RunStopped

SHARDS = [
    f"data/{config}/{split}-00000-of-00001.parquet"
    for config in ("arxiv_structured", "arxiv_plain")
    for split in ("train", "validation")
]


def _paper(title: str, body: str) -> str:
    return (
        "\\documentclass{article}\n\\title{" + title + "}\n\\begin{document}\n\\maketitle\n"
        "\\begin{abstract}A short abstract about " + title.lower() + ".\\end{abstract}\n"
        "\\section{Introduction}\n"
        + body
        + "\n\\section{Results}\nIt works as described in the introduction.\n"
        "\\end{document}\n"
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"num_proc": 2, "progress": False, **changes})


@pytest.fixture(scope="module")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_sample_archive(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def sample_corpus(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("corpus") / "sample"
    assert main([str(sample_archive), "--output-dir", str(output), "--num-proc", "2", "--no-progress"]) == 0
    return output


def test_sample_build_report_and_layout(sample_corpus: Path) -> None:
    report = json.loads((sample_corpus / "build_report.json").read_text())
    assert report["inputs"] == SAMPLE_RECORDS + 2 == report["records"] + report["rejects"]
    assert report["records"] == SAMPLE_RECORDS
    assert report["reasons"] == SAMPLE_REJECTS
    assert {(r["id"], r["reason"]) for r in report["rejected"]} == {
        ("sample-0021", "no_main_file"),
        ("sample-0022", "pdf_only"),
    }
    assert all(set(r) == {"id", "source", "reason", "detail"} and r["detail"] for r in report["rejected"])
    assert sum(report["splits"].values()) == SAMPLE_RECORDS and report["splits"]["validation"] >= 1
    assert report["stats"]["records_with_sections"] == SAMPLE_RECORDS
    assert set(_files(sample_corpus)) == {*SHARDS, "README.md", "build_report.json"}
    # nothing of the build is left next to the output
    assert sorted(p.name for p in sample_corpus.parent.iterdir()) == ["sample"]
    card = (sample_corpus / "README.md").read_text()
    assert "config_name: arxiv_structured" in card and "config_name: arxiv_plain" in card


def test_load_dataset_gives_both_configs(sample_corpus: Path, tmp_path: Path) -> None:
    structured = datasets.load_dataset(str(sample_corpus), cache_dir=str(tmp_path))
    plain = datasets.load_dataset(str(sample_corpus), "arxiv_plain", cache_dir=str(tmp_path))
    assert set(structured) == set(plain) == {"train", "validation"}
    assert structured["train"].column_names == list(STRUCTURED_FEATURES)
    assert plain["train"].column_names == ["id", "text"]
    rows = [row for split in ("train", "validation") for row in structured[split]]
    plain_text = {row["id"]: row["text"] for split in ("train", "validation") for row in plain[split]}
    assert len(rows) == len(plain_text) == SAMPLE_RECORDS
    for row in rows:
        assert plain_text[row["id"]] == row["text"]
        assert split_of(row["id"], 0.05) == "train" or row["id"] in {
            r["id"] for r in structured["validation"]
        }
        spans = [row["text"][h["start"] : h["end"]] for h in row["headers"]]
        assert spans[0] == row["title"] and row["headers"][0]["level"] == "title"
        assert spans[1:] == [s["title"] for s in row["sections"] if s["title"]]
    ids = [row["id"] for row in structured["train"]]
    assert ids == sorted(ids)


def test_rebuild_is_byte_identical_and_resumes(
    sample_archive: Path, sample_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "again"
    interrupt_reading(monkeypatch, after=9)
    with pytest.raises(RunStopped, match="a parse task failed .*KeyboardInterrupt.* rerun the same command"):
        build_corpus([sample_archive], output, _options(num_proc=1))
    journal = output / ".build-corpus" / "journal" / "00000.jsonl"
    done = len(journal.read_bytes().splitlines())
    # only the work folder is there: no lock left behind, no shard of a half-built corpus
    assert 0 < done <= 9 and [p.name for p in output.iterdir()] == [".build-corpus"]

    monkeypatch.undo()
    log_parsed(tmp_path / "parsed", monkeypatch)
    build_corpus([sample_archive], output, _options(num_proc=2, max_tasks_per_worker=3))
    sent = (tmp_path / "parsed").read_text().split()
    assert len(sent) == SAMPLE_RECORDS + 1 - done  # every input but the PDF goes to a parser once
    # neither the interruption, nor num_proc, nor recycled workers change a byte
    assert _files(output) == _files(sample_corpus)


def test_timeouts_crashes_and_errors_are_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    papers = tmp_path / "papers"
    papers.mkdir()
    for name, marker in [
        ("fine", "fine"),
        ("slow", "SLOW"),
        ("dies", "DIE"),
        ("boom", "BOOM"),
        ("fine2", "ok"),
    ]:
        (papers / f"{name}.tex").write_text(_paper(f"Paper {name}", f"Marker {marker} and some more text."))
    real_parse = latex.parse_paper

    def hostile(files, options=None):
        text = b"".join(files.values())
        if b"SLOW" in text:
            time.sleep(60)
        if b"DIE" in text:
            os._exit(3)
        if b"BOOM" in text:
            raise ValueError("boom")
        return real_parse(files, options)

    monkeypatch.setattr(latex, "parse_paper", hostile)
    start = time.monotonic()
    report = build_corpus([papers], tmp_path / "out", _options(timeout=2.0, min_chars=None))
    assert time.monotonic() - start < 20
    reasons = {r["id"]: (r["reason"], r["detail"]) for r in report["rejected"]}
    assert reasons["slow"][0] == "timeout"
    assert reasons["dies"] == ("parse_error", "the worker died (exit code 3)")
    assert reasons["boom"] == ("parse_error", "ValueError: boom")
    assert report["records"] == 2 and report["inputs"] == 5 == report["records"] + report["rejects"]


def test_papers_are_parsed_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    papers = tmp_path / "papers"
    papers.mkdir()
    for index in range(4):
        (papers / f"p{index}.tex").write_text(_paper(f"Paper {index}", "Body text."))
    log = tmp_path / "log"
    log.mkdir()
    real_parse = latex.parse_paper

    def logged(files, options=None):
        start = time.monotonic()
        time.sleep(0.4)  # sleeping needs no CPU, so overlap shows even on a loaded machine
        (log / f"{os.getpid()}-{start}").write_text(f"{start} {time.monotonic()}")
        return real_parse(files, options)

    monkeypatch.setattr(latex, "parse_paper", logged)
    report = build_corpus([papers], tmp_path / "out", _options(num_proc=2, min_chars=None))
    assert report["records"] == 4
    spans = sorted(tuple(map(float, p.read_text().split())) for p in log.iterdir())
    assert len({p.name.split("-")[0] for p in log.iterdir()}) == 2
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_dedupe_metadata_filters_and_traversal(tmp_path: Path) -> None:
    papers = tmp_path / "in" / "papers"
    for name, body in [
        ("2101.00001v1", "The first version of this paper."),
        ("2101.00001v2", "The second version of this paper, revised."),
        (
            "2101.00003",
            "A paper with a long enough body. " * 5 + "\\input{../../secret}\\input{/etc/hostname}",
        ),
    ]:
        (papers / name).mkdir(parents=True)
        (papers / name / "main.tex").write_text(_paper(f"Paper {name}", body))
    loose = tmp_path / "in" / "2101.00002.tex"
    loose.write_text("\\documentclass{article}\\begin{document}Tiny.\\end{document}")
    (tmp_path / "in" / "secret.tex").write_text("TOPSECRET")
    metadata = tmp_path / "meta.jsonl"
    lines = [
        {"id": "2101.00001", "categories": "cs.CL cs.LG", "license": "http://creativecommons.org/licenses/by/4.0/",
         "versions": [{"version": "v1"}, {"version": "v2"}]},
        {"id": "2101.00003", "categories": "math.GT", "license": None, "versions": [{"version": "v1"}, {"version": "v3"}]},
        {"id": "9999.99999", "categories": "unrelated", "versions": []},
    ]  # fmt: skip
    metadata.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = build_corpus([papers, loose], tmp_path / "out", _options(min_chars=120, metadata=str(metadata)))
    assert report["inputs"] == 4 and report["records"] == 2 and report["rejects"] == 2
    assert {(r["id"], r["reason"]) for r in report["rejected"]} == {
        ("2101.00001", "duplicate"),
        ("2101.00002", "too_short"),
    }
    assert set(report["reasons"]) <= set(reject_reasons(make_parser("latex")))
    assert str(tmp_path) not in json.dumps(report)  # no local paths in a report meant for publishing
    assert report["stats"]["metadata_joined"] == 2
    rows = {}
    for split in ("train", "validation"):
        for row in pq.read_table(
            tmp_path / "out" / "data" / "arxiv_structured" / f"{split}-00000-of-00001.parquet"
        ).to_pylist():
            rows[row["id"]] = row
    assert rows["2101.00001"]["version"] == "v2" and "revised" in rows["2101.00001"]["text"]
    assert rows["2101.00001"]["categories"] == "cs.CL cs.LG"
    assert (rows["2101.00003"]["version"], rows["2101.00003"]["license"]) == ("v3", None)
    assert "TOPSECRET" not in rows["2101.00003"]["text"]


def test_bad_metadata_sources_and_options_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"id": "1"}\nnot json\n')
    with pytest.raises(InputError, match=r"meta\.jsonl:2"):
        load_metadata(bad, {"1"})
    with pytest.raises(InputError, match="nowhere: no such file or folder"):
        build_corpus([tmp_path / "nowhere"], tmp_path / "out", _options())
    with pytest.raises(InputError, match="no sources given"):
        build_corpus([], tmp_path / "out", _options())
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        build_corpus([bad], tmp_path / "out", _options(metadata=str(tmp_path / "missing.jsonl")))
    with pytest.raises(InputError, match="validation_fraction"):
        _options(validation_fraction=1.0)
    with pytest.raises(InputError, match="footnotes must be"):
        main([str(bad), "--output-dir", str(tmp_path / "out"), "--latex-option", 'footnotes="nope"'])
    assert not (tmp_path / "out").exists()


def test_validation_split_is_stable_and_never_empty() -> None:
    ids = [f"2101.{i:05d}" for i in range(200)]
    splits = merge._assign_splits(ids, _options(validation_fraction=0.1))
    assert splits["validation"] == [i for i in ids if split_of(i, 0.1) == "validation"]
    assert 5 < len(splits["validation"]) < 40
    tiny = merge._assign_splits(ids[:3], _options(validation_fraction=0.0, min_validation=1))
    assert len(tiny["validation"]) == 1 and len(tiny["train"]) == 2
    assert merge._assign_splits(ids[:1], _options(min_validation=1)) == {"train": ids[:1], "validation": []}


def test_builder_configs_match_the_cli_build(
    sample_archive: Path, sample_corpus: Path, tmp_path: Path
) -> None:
    expected = {
        split: pq.read_table(
            sample_corpus / "data" / "arxiv_structured" / f"{split}-00000-of-00001.parquet"
        ).to_pylist()
        for split in ("train", "validation")
    }
    structured = ArxivStructured(data_dir=str(sample_archive.parent), cache_dir=str(tmp_path))
    assert structured.config.name == "arxiv_structured"
    structured.download_and_prepare()
    built = structured.as_dataset()
    assert {split: built[split].to_list() for split in expected} == expected
    plain = ArxivStructured(
        config_name="arxiv_plain", data_dir=str(sample_archive.parent), cache_dir=str(tmp_path)
    )
    plain.download_and_prepare()
    assert plain.as_dataset("train").to_list() == [
        {"id": r["id"], "text": r["text"]} for r in expected["train"]
    ]
