"""Data integrity of ``build-corpus`` (issue 10): rebuilds, locks, foreign files, empty splits, odd
folder inputs, resume after edits, orphaned workers, deep nesting, unwritable outputs, and the
single corpus contract (``schema``) that every part reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from structformer.dataset_scripts import datatrove_blocks, latex, schema, workers
from structformer.dataset_scripts.archive import iter_papers
from structformer.dataset_scripts.build import BuildOptions, build_corpus, main
from structformer.dataset_scripts.parsers import LatexParser, make_parser, reject_reasons
from structformer.dataset_scripts.schema import load_corpus  # the loader pretrain calls
from structformer.errors import InputError, RunStopped


def _paper(title: str, body: str = "The method works on every input we tried.") -> str:
    return (
        "\\documentclass{article}\n\\title{" + title + "}\n\\begin{document}\n\\maketitle\n"
        "\\begin{abstract}A short abstract about " + title.lower() + ".\\end{abstract}\n"
        "\\section{Introduction}\n" + body + "\n\\end{document}\n"
    )


def _papers(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.tex").write_text(_paper(f"Paper {name}"))
    return folder


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"num_proc": 1, "progress": False, "min_chars": None, **changes})


def _ids(loaded: datasets.DatasetDict) -> dict[str, list[str]]:
    return {split: sorted(loaded[split]["id"]) for split in loaded}


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- 1. stale loads


def test_rebuilt_corpus_loads_its_new_rows(tmp_path: Path) -> None:
    out, cache = tmp_path / "corpus", str(tmp_path / "cache")
    build_corpus([_papers(tmp_path / "three", ["a", "b", "c"])], out, _options())
    first = load_corpus(str(out), None, cache_dir=cache, required_columns=["text", "headers"])
    assert sum(len(first[split]) for split in first) == 3
    # a folder with a single paper is that paper's folder: its name is the id
    build_corpus([_papers(tmp_path / "one", ["z"])], out, _options())
    assert _ids(load_corpus(str(out), None, cache_dir=cache)) == {"train": ["one"]}
    assert _ids(load_corpus(str(out), "arxiv_plain", cache_dir=cache)) == {"train": ["one"]}
    # the README's recipe for datasets alone
    plain = datasets.load_dataset("parquet", data_files=schema.data_files(out), cache_dir=cache)
    assert _ids(plain) == {"train": ["one"]}


# ----------------------------------------------------------------------------- 2. one build at a time


def test_second_build_into_the_same_output_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    real_parse = latex.parse_paper

    def held(files, options=None):
        deadline = time.monotonic() + 30
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return real_parse(files, options)

    monkeypatch.setattr(latex, "parse_paper", held)  # the forked worker inherits it
    out = tmp_path / "corpus"
    sources = _papers(tmp_path / "papers", ["a", "b"])
    outcome: dict[str, object] = {}
    first = threading.Thread(target=lambda: outcome.update(report=build_corpus([sources], out, _options())))
    first.start()
    try:
        deadline = time.monotonic() + 20
        while not (out / schema.LOCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        with pytest.raises(
            InputError, match=r"corpus: another build-corpus \(pid \d+\) is writing this folder"
        ):
            build_corpus([sources], out, _options())
        assert time.monotonic() - start < 2
    finally:
        release.touch()
        first.join(timeout=60)
    assert outcome["report"]["records"] == 2
    assert not (out / schema.LOCK_FILE).exists()
    assert build_corpus([sources], out, _options())["records"] == 2  # the lock was released


# ----------------------------------------------------------------------------- 3. foreign files in OUT


def test_rebuild_replaces_only_the_builds_own_files(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "notes.txt").write_text("keep me")
    (out / "data" / "other").mkdir(parents=True)
    (out / "data" / "other" / "x.csv").write_text("1,2\n")
    sources = _papers(out / "papers", ["a", "b", "c"])
    foreign = {".git/HEAD", "notes.txt", "data/other/x.csv", "papers/a.tex", "papers/b.tex", "papers/c.tex"}
    build_corpus([sources], out, _options())
    (sources / "c.tex").unlink()
    foreign.discard("papers/c.tex")
    build_corpus([sources], out, _options(validation_fraction=0.0, min_validation=0))
    expected = {f"data/{c}/train-00000-of-00001.parquet" for c in schema.CONFIG_NAMES}
    assert _tree(out) == foreign | expected | {"README.md", "build_report.json"}
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("README.md", r"README.md: not the card of an earlier build"),
        ("data/arxiv_structured/notes.txt", r"notes.txt: not a shard of an earlier build"),
        ("data/arxiv_plain/train-extra.parquet", r"train-extra.parquet: not a shard"),
    ],
)
def test_foreign_files_where_the_build_writes_are_refused(tmp_path: Path, path: str, message: str) -> None:
    out = tmp_path / "corpus"
    (out / path).parent.mkdir(parents=True)
    (out / path).write_text("mine")
    before = _tree(out)
    with pytest.raises(InputError, match=message):
        build_corpus([_papers(tmp_path / "papers", ["a"])], out, _options())
    assert _tree(out) == before and (out / path).read_text() == "mine"


def test_output_inside_a_source_is_refused(tmp_path: Path) -> None:
    sources = _papers(tmp_path / "papers", ["a"])
    with pytest.raises(InputError, match="is inside the source folder"):
        build_corpus([sources], sources / "corpus", _options())
    assert not (sources / "corpus").exists()


# ----------------------------------------------------------------------------- 5. empty splits


def test_empty_splits_are_left_out_and_the_rest_loads(tmp_path: Path) -> None:
    out, cache = tmp_path / "corpus", str(tmp_path / "cache")
    report = main(
        [str(_papers(tmp_path / "one", ["a"])), "--output-dir", str(out), "--no-progress", "--min-chars", "0"]
    )
    assert report == 0
    assert json.loads((out / "build_report.json").read_text())["splits"] == {"train": 1, "validation": 0}
    assert _tree(out) == {
        "README.md",
        "build_report.json",
        "data/arxiv_structured/train-00000-of-00001.parquet",
        "data/arxiv_plain/train-00000-of-00001.parquet",
    }
    card = (out / "README.md").read_text()
    assert "split: train" in card and "validation" not in card.split("---")[1]
    assert _ids(load_corpus(str(out), None, cache_dir=cache)) == {"train": ["one"]}
    assert _ids(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache2"))) == {"train": ["one"]}
    # a corpus built before the fix has an empty validation shard: it is skipped, not an ArrowInvalid
    empty = pa.Table.from_pylist([], schema=schema.STRUCTURED_FEATURES.arrow_schema)
    pq.write_table(empty, out / "data" / "arxiv_structured" / "validation-00000-of-00001.parquet")
    assert _ids(load_corpus(str(out), None, cache_dir=cache)) == {"train": ["one"]}


def test_a_build_without_records_writes_nothing_and_keeps_its_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "corpus"
    sources = _papers(tmp_path / "papers", ["a", "b"])
    with pytest.raises(
        InputError, match=r"no input became a record \(2 inputs; rejects: \{'too_short': 2\}\)"
    ):
        build_corpus([sources], out, _options(min_chars=10**6))
    tree = _tree(out)
    assert {".build-corpus/manifest.json", ".build-corpus/journal/00000.jsonl"} <= tree
    assert all(path.startswith(".build-corpus/") for path in tree)
    monkeypatch.setattr(workers, "_encode_task", lambda *args: pytest.fail("parsed again"))
    assert build_corpus([sources], out, _options())["records"] == 2


# ----------------------------------------------------------------------------- 6. odd folder inputs


@pytest.fixture
def odd_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder of papers with a self-link, a dangling link, a FIFO, a link out, a good paper, and a
    paper folder holding the same kinds of files."""
    secret = tmp_path / "secret.tex"
    secret.write_text(_paper("TOPSECRET"))
    folder = _papers(tmp_path / "papers", ["good", "good2"])
    os.symlink("loop.tex", folder / "loop.tex")
    os.symlink("missing.tex", folder / "dangling.tex")
    os.mkfifo(folder / "fifo.tex")
    os.symlink(secret, folder / "outside.tex")
    os.symlink(tmp_path, folder / "up")  # a folder link out: neither read nor walked
    paper = folder / "p1"
    paper.mkdir()
    (paper / "main.tex").write_text(_paper("Folder paper", "Text before.\n\\input{extra}\nText after."))
    os.mkfifo(paper / "extra.tex")
    os.symlink("gone.tex", paper / "dangling.tex")
    os.symlink("self.tex", paper / "self.tex")
    os.symlink(secret, paper / "leak.tex")
    # a FIFO that blocks the build would hang the test: fail it instead
    previous = signal.signal(signal.SIGALRM, _blocked)
    signal.alarm(20)
    yield folder
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _blocked(signum: int, frame: object) -> None:
    raise TimeoutError("the build blocked on a FIFO")


def test_links_fifos_and_loops_are_named_rejects(odd_folder: Path, tmp_path: Path) -> None:
    found = {paper.paper_id: paper for paper in iter_papers([odd_folder])}
    assert {pid: (paper.reason, paper.detail.split(": ")[-1]) for pid, paper in found.items()} == {
        "dangling": ("unreadable", "a dangling symbolic link"),
        "fifo": ("unreadable", "not a regular file (a FIFO, socket or device)"),
        "good": (None, ""),
        "good2": (None, ""),
        "loop": ("unreadable", "a symbolic link loop"),
        # issue 17.7: a link among the papers is the user's own, followed unless it holds the folder
        "outside": (None, ""),
        "p1": (None, ""),
        "up": ("unsafe_archive", "a link to a folder that holds it"),
    }
    assert sorted(found["p1"].files) == ["main.tex"] and len(found["p1"].warnings) == 4
    # links inside a paper that leave it are still never followed
    assert all(b"TOPSECRET" not in data for data in found["p1"].files.values())

    report = build_corpus([odd_folder], tmp_path / "corpus", _options())
    assert report["records"] == 4 and report["reasons"] == {"unreadable": 3, "unsafe_archive": 1}
    assert set(report["reasons"]) <= set(reject_reasons(make_parser("latex")))
    assert report["stats"]["records_with_skipped_archive_members"] == 1


# ----------------------------------------------------------------------------- 7. resume after edits


def test_resume_parses_papers_edited_since_the_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = tmp_path / "papers"
    for name in ("a", "b", "c"):
        (sources / name).mkdir(parents=True)
        (sources / name / "main.tex").write_text(_paper(f"Paper {name}", "The first draft."))
    out = tmp_path / "corpus"
    real_iter = datatrove_blocks.iter_unit
    read: list[str] = []

    def interrupted(*args, **kwargs):
        for paper in real_iter(*args, **kwargs):
            if len(read) == 2:
                raise KeyboardInterrupt
            read.append(paper.key)
            yield paper

    monkeypatch.setattr(datatrove_blocks, "iter_unit", interrupted)
    with pytest.raises(RunStopped):
        build_corpus([sources], out, _options())
    monkeypatch.undo()
    edited = sources / "a" / "main.tex"
    stat = edited.stat()
    edited.write_text(_paper("Paper a", "The second draft, longer than the first."))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock still moves on
    sent = tmp_path / "sent"
    real_encode = workers._encode_task

    def logged(paper_id: str, files: dict[str, bytes]) -> bytes:
        with sent.open("a") as handle:  # the parse runs in a child process: a file sees it
            handle.write(paper_id + "\n")
        return real_encode(paper_id, files)

    monkeypatch.setattr(workers, "_encode_task", logged)
    build_corpus([sources], out, _options(validation_fraction=0.0, min_validation=0))
    assert sorted(sent.read_text().split()) == ["a", "c"]  # b is taken from the journal, a is parsed again
    rows = pq.read_table(out / "data" / "arxiv_structured" / "train-00000-of-00001.parquet").to_pylist()
    assert [("second draft" in row["text"], row["id"]) for row in rows] == [
        (True, "a"),
        (False, "b"),
        (False, "c"),
    ]


# ----------------------------------------------------------------------------- 8. orphaned workers

_KILLED_BUILD = """
import os, sys, time
from pathlib import Path
from structformer.dataset_scripts import build, latex, workers

pids, source, out, mode = sys.argv[1:]
real_parse = latex.parse_paper

def stuck_on_b(files, options=None):
    if b"Paper b" in b"".join(files.values()):
        (Path(pids) / str(os.getpid())).touch()
        time.sleep(120)
    return real_parse(files, options)

latex.parse_paper = stuck_on_b
if mode == "poll":
    workers._set_parent_death_signal = lambda: False
options = build.BuildOptions(num_proc=2, progress=False, timeout=300, min_chars=None, tasks=2, workers=2)
build.build_corpus([source], out, options)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; reaping it is its new parent's business


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("mode", ["prctl", "poll"])
def test_a_killed_build_leaves_no_process_and_reruns_only_what_did_not_finish(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks at once; one finishes, the other is killed with the build while a paper hangs. The
    runner, datatrove's manager and task processes and the parse workers all end with the build, the
    output's lock goes with it, and the rerun runs only the unfinished task, parsing only the paper
    it had not finished."""
    pids = tmp_path / "pids"
    pids.mkdir()
    sources = _papers(tmp_path / "papers", ["a", "b", "c", "d"])  # task 0: a, c; task 1: b, d
    out = tmp_path / "out"
    script = [sys.executable, "-c", textwrap.dedent(_KILLED_BUILD), str(pids), str(sources), str(out), mode]
    parent = subprocess.Popen(script)
    below: set[int] = set()
    work = out / ".build-corpus"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            list(pids.iterdir())
            and (work / "datatrove" / "completions" / "00000").is_file()
            and '"id": "d"' in _read(work / "journal" / "00001.jsonl")
        ):
            time.sleep(0.1)
        assert list(pids.iterdir()), "paper b never started parsing"
        below = _descendants(parent.pid)
        assert len(below) >= 5  # the runner, the manager, 2 task processes, the stuck parse worker...
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, below)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in below if _alive(pid)], "processes outlived the build"
    finally:
        parent.kill()
        for pid in below:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    sent = tmp_path / "sent"
    real_encode = workers._encode_task

    def logged(paper_id: str, files: dict[str, bytes]) -> bytes:
        with sent.open("a") as handle:
            handle.write(paper_id + "\n")
        return real_encode(paper_id, files)

    monkeypatch.setattr(workers, "_encode_task", logged)
    report = build_corpus([sources], out, _options(num_proc=2, timeout=300, tasks=2, workers=2))  # not locked
    assert report["records"] == 4 and sent.read_text().split() == ["b"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# ----------------------------------------------------------------------------- 12. deep nesting


@pytest.mark.parametrize("depth", [250, 280, 320])
def test_brace_nesting_of_a_few_hundred_levels_keeps_the_paper(depth: int) -> None:
    body = "Keep this paragraph.\n\n" + "{" * depth + "deep" + "}" * depth + "\n\nAnd this one too."
    paper = latex.parse_paper({"main.tex": _paper("Nested", body).encode()})
    paragraphs = [p for section in paper.sections for p in section.paragraphs]
    assert paragraphs[0] == "Keep this paragraph." and paragraphs[-1] == "And this one too."
    assert workers.parse_one("x", {"main.tex": _paper("Nested", body).encode()}, LatexParser())["record"]


# ----------------------------------------------------------------------------- unwritable output


def test_unwritable_output_is_a_one_line_input_error(tmp_path: Path) -> None:
    sources = _papers(tmp_path / "papers", ["a"])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for output, message in [
        (blocker / "corpus", r"blocker/corpus: cannot write the corpus there \(Not a directory\)"),
        (blocker, r"blocker: exists and is not a folder"),
    ]:
        with pytest.raises(InputError, match=message) as caught:
            main([str(sources), "--output-dir", str(output), "--no-progress"])
        assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the contract


def test_every_part_reads_the_contract_from_schema() -> None:
    from structformer.dataset_scripts import card, records
    from structformer.dataset_scripts.latex_text import HEADING_COMMANDS
    from structformer.hub_cards import cards
    from structformer.trainers import data

    assert data.HEADING_LEVELS is schema.HEADING_LEVELS
    assert data.PARAGRAPH_SEPARATOR is schema.PARAGRAPH_SEPARATOR
    assert not hasattr(data, "load_corpus")  # no re-exports
    assert card.shard_glob is schema.shard_glob and card.split_sort_key is schema.split_sort_key
    assert not hasattr(cards, "CONFIG_NAMES") and not hasattr(cards, "find_shards")  # no re-exports
    assert records.PARAGRAPH_SEPARATOR is schema.PARAGRAPH_SEPARATOR
    assert set(HEADING_COMMANDS.values()) == set(schema.SECTION_LEVELS)
    assert schema.SHARD_NAME.match(schema.shard_name("validation", 2, 3))["split"] == "validation"


def test_an_incomplete_set_of_shards_is_refused(tmp_path: Path) -> None:
    folder = schema.shard_dir(tmp_path, schema.STRUCTURED)
    folder.mkdir(parents=True)
    rows = pa.Table.from_pylist([{"id": "a", "text": "t"}])
    for index in (0, 2):
        pq.write_table(rows, folder / schema.shard_name("train", index, 3))
    with pytest.raises(InputError, match=r"the 'train' shards are .* the corpus is incomplete"):
        load_corpus(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        schema.find_shards(tmp_path / "elsewhere")
