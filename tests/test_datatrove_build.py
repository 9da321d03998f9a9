"""``build-corpus`` on datatrove (issue 16): task shares, the same corpus whatever the number of tasks, resume
of unfinished tasks, the blocks in a pipeline of one's own, and the Slurm and Ray executors."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import LambdaFilter

from structformer.dataset_scripts import archive, build, datatrove_blocks, workers
from structformer.dataset_scripts.archive import iter_papers, plan_inputs, task_share
from structformer.dataset_scripts.build import (
    BuildOptions,
    SlurmOptions,
    build_corpus,
    main,
    submit_corpus_build,
)
from structformer.dataset_scripts.datatrove_blocks import (
    ArxivSourceReader,
    CorpusParquetWriter,
    MergeCorpus,
    PaperJsonlWriter,
    ParsePapers,
)
from structformer.dataset_scripts.sample import SAMPLE_RECORDS, SAMPLE_REJECTS, pack_sample_archive
from structformer.dataset_scripts.schema import STRUCTURED_FEATURES
from structformer.errors import InputError, RunStopped

SHARED_PAPERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "latex"


def _paper(title: str, body: str = "The method works on every input we tried, and it is fast.") -> str:
    return (
        "\\documentclass{article}\n\\title{" + title + "}\n\\begin{document}\n\\maketitle\n"
        "\\section{Introduction}\n" + body + "\n\\end{document}\n"
    )


def _options(**changes) -> BuildOptions:
    return BuildOptions(**{"num_proc": 1, "progress": False, **changes})


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _log_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str, log: Path, entry) -> None:
    """Append ``entry(*args)`` to ``log`` at each call of ``module.name``: tasks and parse workers are
    forked processes, which a list in this process would not see."""
    real = getattr(module, name)

    def logged(*args, **kwargs):
        with log.open("a") as handle:
            handle.write(f"{entry(*args)}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, logged)


@pytest.fixture(scope="module")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_sample_archive(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def one_task_corpus(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("corpus") / "one-task"
    build_corpus([sample_archive], output, _options(num_proc=2))
    return output


@pytest.fixture
def mixed_sources(sample_archive: Path, tmp_path: Path) -> Path:
    """A folder of papers with every kind of unit: a bulk tar, a tar of paper folders, paper folders,
    loose files and a file that is no paper."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / sample_archive.name).write_bytes(sample_archive.read_bytes())
    with tarfile.open(folder / "projects.tar", "w") as tar:
        for name in ("alpha", "beta", "gamma"):
            data = _paper(f"Project {name}").encode()
            info = tarfile.TarInfo(f"{name}/main.tex")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for name in ("p1", "p2"):
        (folder / name).mkdir()
        (folder / name / "main.tex").write_text(_paper(f"Folder {name}"))
    (folder / "2401.00001.tex").write_text(_paper("Loose"))
    (folder / "2401.00003.tex").write_text(_paper("Loose too"))  # two papers: a folder of papers
    (folder / "2401.00002.gz").write_bytes(gzip.compress(_paper("Zipped").encode()))
    (folder / "notes.txt").write_text("not a paper")
    return folder


def test_task_shares_hold_every_input_exactly_once(mixed_sources: Path) -> None:
    expected = sorted(paper.key for paper in iter_papers([mixed_sources]))
    units = plan_inputs([mixed_sources])
    assert len(units) == 8 and [unit.kind for unit in units].count("tar") == 2
    for tasks in (1, 2, 3, 7, 8, 13, 16):
        keys = []
        for rank in range(tasks):
            reader = ArxivSourceReader([mixed_sources])
            keys += [document.metadata["key"] for document in reader.run(rank=rank, world_size=tasks)]
        assert sorted(keys) == expected, tasks
    # twice as many tasks as units: the tars are split in two among the tasks that share them, member by member
    shares = [task_share(units, rank, 16) for rank in range(16)]
    tar_parts = [
        (unit.label, part, parts) for share in shares for unit, part, parts in share if unit.kind == "tar"
    ]
    expected_parts = [
        (unit.label, part, 2) for index, unit in enumerate(units) if unit.kind == "tar" for part in range(2)
    ]
    assert sorted(tar_parts) == sorted(expected_parts) and {parts for _, _, parts in tar_parts} == {2}


def test_one_task_and_four_tasks_build_the_same_corpus(
    sample_archive: Path, one_task_corpus: Path, tmp_path: Path
) -> None:
    report = json.loads((one_task_corpus / "build_report.json").read_text())
    assert report["records"] == SAMPLE_RECORDS and report["reasons"] == SAMPLE_REJECTS
    four = tmp_path / "four-tasks"
    build_corpus([sample_archive], four, _options(tasks=4, workers=2))
    # the one bulk tar is split among the four tasks; the corpus is the same to the byte
    assert _files(four) == _files(one_task_corpus)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PAPERS.is_dir(), reason=f"the shared real papers are not at {SHARED_PAPERS}")
def test_shared_papers_build_the_same_corpus_on_one_and_four_tasks(tmp_path: Path) -> None:
    options = {"min_chars": None, "max_chars": None, "dedupe": False}
    one, four = tmp_path / "one", tmp_path / "four"
    report = build_corpus([SHARED_PAPERS], one, _options(num_proc=2, **options))
    assert report["inputs"] == report["records"] + report["rejects"] >= 119
    build_corpus([SHARED_PAPERS], four, _options(tasks=4, workers=2, **options))
    assert _files(four) == _files(one)


def test_a_failed_multi_task_build_reruns_only_the_unfinished_tasks(
    sample_archive: Path, one_task_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = plan_inputs([sample_archive])
    by_rank = {
        rank: [
            paper.paper_id
            for unit, part, parts in task_share(units, rank, 4)
            for paper in archive.iter_unit(
                unit,
                archive.ArchiveLimits(),
                lambda key, stamp, p=part, n=parts: archive.part_of(key, n) == p,
            )
            if paper.reason is None
        ]
        for rank in range(4)
    }
    # a task in the middle fails at its second paper, as if its node had gone down
    failing = next(rank for rank in (1, 2) if len(by_rank[rank]) >= 2)
    broken = by_rank[failing][1]
    started, parsed = tmp_path / "started", tmp_path / "parsed"
    _log_calls(monkeypatch, datatrove_blocks, "task_share", started, lambda units, rank, tasks: rank)
    _log_calls(monkeypatch, workers, "_encode_task", parsed, lambda paper_id, files: paper_id)
    real_iter = datatrove_blocks.iter_unit

    def failing_at(*args, **kwargs):
        for paper in real_iter(*args, **kwargs):
            if paper.paper_id == broken:
                raise OSError("the node went down")
            yield paper

    monkeypatch.setattr(datatrove_blocks, "iter_unit", failing_at)
    output = tmp_path / "corpus"
    with pytest.raises(RunStopped, match="a parse task failed .*the node went down"):
        build_corpus([sample_archive], output, _options(tasks=4))
    # workers=1: the tasks run in rank order, and the failure stops the run
    assert started.read_text().split() == [str(rank) for rank in range(failing + 1)]
    first = parsed.read_text().split()
    assert by_rank[failing][0] in first and broken not in first

    monkeypatch.setattr(datatrove_blocks, "iter_unit", real_iter)
    started.unlink()
    parsed.unlink()
    build_corpus([sample_archive], output, _options(tasks=4))
    # the finished tasks are not started again; the failed one skips the paper its journal holds
    assert started.read_text().split() == [str(rank) for rank in range(failing, 4)]
    second = parsed.read_text().split()
    assert sorted(first + second) == sorted(paper for papers in by_rank.values() for paper in papers)
    assert _files(output) == _files(one_task_corpus)


def test_the_blocks_run_in_a_pipeline_with_a_datatrove_filter(sample_archive: Path, tmp_path: Path) -> None:
    """Reader, parse step and writers composed with datatrove's own LambdaFilter, whose drops go to a
    journal like the rejects: every input is still accounted for, and the Parquet shards load."""
    LocalPipelineExecutor(
        [
            ArxivSourceReader([sample_archive]),
            ParsePapers("latex", rejects=PaperJsonlWriter(tmp_path / "rejects")),
            LambdaFilter(
                lambda doc: len(doc.text) >= 1900,
                exclusion_writer=PaperJsonlWriter(tmp_path / "dropped"),
            ),
            CorpusParquetWriter(tmp_path / "structured"),
            CorpusParquetWriter(tmp_path / "plain", config="arxiv_plain"),
        ],
        tasks=2,
        workers=1,
        logging_dir=str(tmp_path / "logs"),
    ).run()

    def lines(folder: str) -> list[dict]:
        return [
            json.loads(line) for path in sorted((tmp_path / folder).glob("*.jsonl")) for line in path.open()
        ]

    rejects, dropped = lines("rejects"), lines("dropped")
    assert sorted(item["reason"] for item in rejects) == sorted(
        reason for reason, count in SAMPLE_REJECTS.items() for _ in range(count)
    )
    assert dropped and all(len(item["record"]["text"]) < 1900 for item in dropped)
    structured = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "structured" / "*.parquet"), cache_dir=str(tmp_path / "cache")
    )["train"]
    plain = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "plain" / "*.parquet"), cache_dir=str(tmp_path / "cache")
    )["train"]
    assert structured.features == STRUCTURED_FEATURES and plain.column_names == ["id", "text"]
    assert len(structured) + len(dropped) == SAMPLE_RECORDS
    assert all(len(row["text"]) >= 1900 and row["source_kind"] == "arxiv_bulk_tar" for row in structured)
    assert dict(zip(plain["id"], plain["text"])) == dict(zip(structured["id"], structured["text"]))


def test_a_reject_never_reaches_the_parquet_shards(tmp_path: Path) -> None:
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "broken.tex").write_text("no document here")
    with pytest.raises(InputError, match="give ParsePapers a rejects= writer"):
        LocalPipelineExecutor(
            [ArxivSourceReader([tmp_path / "papers"]), ParsePapers(), CorpusParquetWriter(tmp_path / "out")],
            logging_dir=str(tmp_path / "logs"),
        ).run()


def test_the_slurm_executors_carry_the_options(tmp_path: Path) -> None:
    source = tmp_path / "papers"
    source.mkdir()
    options = _options(num_proc=4, tasks=16, workers=8)
    slurm = SlurmOptions(
        partition="cpu", time="02:00:00", qos="high", mem_per_cpu_gb=3.0, env_command="module load x"
    )
    parse, merge = build.slurm_executors([source], tmp_path / "out", options, slurm)
    assert (parse.tasks, parse.workers, parse.cpus_per_task, parse.partition) == (16, 8, 4, "cpu")
    sbatch = parse.get_sbatch_args(16)
    assert sbatch["array"] == "0-15%8" and sbatch["time"] == "02:00:00" and sbatch["qos"] == "high"
    assert sbatch["mem-per-cpu"] == "3.0G" and sbatch["partition"] == "cpu"
    assert "module load x" in parse.get_launch_file_contents(sbatch, "launch_pickled_pipeline x")
    assert [type(step) for step in parse.pipeline] == [ArxivSourceReader, ParsePapers, PaperJsonlWriter]
    assert parse.pipeline[1].num_proc == 4
    assert merge.depends is parse and merge.tasks == 1 and isinstance(merge.pipeline[0], MergeCorpus)
    assert merge.job_name == "build-corpus-merge"


def test_missing_sbatch_or_ray_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "papers"
    source.mkdir()
    (source / "a.tex").write_text(_paper("A"))
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="sbatch is not on this machine's PATH"):
        submit_corpus_build([source], tmp_path / "out", _options(), SlurmOptions(partition="cpu"))
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        InputError, match=r"needs Ray, which is not installed: pip install 'structformer\[ray\]'"
    ):
        build_corpus([source], tmp_path / "out", _options(), executor="ray")
    assert not (tmp_path / "out").exists()
    # Ray's executor is built without Ray itself: its options are checked here
    ray = build.ray_executor([source], tmp_path / "work", _options(num_proc=3, tasks=5))
    assert (ray.tasks, ray.workers, ray.cpus_per_task) == (5, 5, 3)


def test_the_command_line_keeps_its_flags_and_checks_the_executor_options(tmp_path: Path) -> None:
    source = tmp_path / "papers"
    source.mkdir()
    (source / "a.tex").write_text(_paper("A"))
    args = build.parse_args(
        [str(source), "-o", str(tmp_path / "out"), "--min-chars", "none", "--no-dedupe", "--no-resume"]
        + ["--no-progress", "--latex-option", 'footnotes="drop"', "--max-paper-mb", "1"]
    )
    options = args.options()
    assert (options.min_chars, options.dedupe, options.resume, options.progress) == (
        None,
        False,
        False,
        False,
    )
    assert options.parser_options == {"footnotes": "drop"} and options.max_paper_bytes == 2**20
    assert build.parse_args([str(source), "--output", "x"]).output_dir == "x"
    for argv in (["--partition", "cpu"], ["--executor", "slurm"], ["--tasks", "2", "--time", "1:00:00"]):
        with pytest.raises(SystemExit) as caught:
            build.parse_args([str(source), "-o", "x", *argv])
        assert caught.value.code == 2
    slurm = build.parse_args([str(source), "-o", "x", "--executor", "slurm", "--partition", "cpu"]).slurm()
    assert slurm == SlurmOptions(partition="cpu")
    with pytest.raises(InputError, match="not an option of the latex parser"):
        main([str(source), "-o", str(tmp_path / "out"), "--parser-option", "nope=1"])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is an extra: pip install 'structformer[ray]'"
)
def test_a_ray_build_is_the_same_corpus(sample_archive: Path, one_task_corpus: Path, tmp_path: Path) -> None:
    """On a Ray of this machine (ray.init() starts one when RAY_ADDRESS is not set)."""
    output = tmp_path / "corpus"
    build_corpus([sample_archive], output, _options(tasks=2), executor="ray")
    assert _files(output) == _files(one_task_corpus)


@pytest.mark.slow
def test_a_slurm_build_runs_its_jobs_and_merges(
    sample_archive: Path, one_task_corpus: Path, tmp_path: Path
) -> None:
    """The Slurm path end to end with stand-ins for sbatch and scontrol: the submitted scripts are
    run as Slurm would, array task by array task, then the merge job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", 'echo "Submitted batch job 42"'), ("scontrol", "echo localhost")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    output = tmp_path / "corpus"
    command = [
        sys.executable,
        "-m",
        "structformer.cli",
        "build-corpus",
        str(sample_archive),
        "-o",
        str(output),
    ]
    command += [
        "--executor",
        "slurm",
        "--partition",
        "cpu",
        "--tasks",
        "3",
        "--num-proc",
        "1",
        "--no-progress",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    work = output / ".build-corpus"
    assert "#SBATCH --partition=cpu" in (work / "datatrove" / "launch_script.slurm").read_text()
    assert not (output / "build_report.json").exists()  # nothing runs before Slurm runs it
    for rank in range(3):
        run_env = {**env, "SLURM_ARRAY_TASK_ID": str(rank), "SLURM_NODELIST": "localhost"}
        pickled = str(work / "datatrove" / "executor.pik")
        subprocess.run(
            ["launch_pickled_pipeline", pickled], env=run_env, check=True, capture_output=True, timeout=120
        )
    merge_env = {**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_NODELIST": "localhost"}
    pickled = str(work / "merge" / "executor.pik")
    subprocess.run(
        ["launch_pickled_pipeline", pickled], env=merge_env, check=True, capture_output=True, timeout=120
    )
    built = {name: data for name, data in _files(output).items() if not name.startswith(".build-corpus/")}
    assert built == _files(one_task_corpus)
    # the jobs' logs stay for the user to read; nothing else of the build is left
    assert {name.split("/")[1] for name in _files(output) if name.startswith(".build-corpus/")} == {
        "datatrove",
        "merge",
    }


def test_build_corpus_help_loads_neither_datasets_nor_datatrove() -> None:
    """--help is answered from the arguments dataclass: datasets (half a second) and datatrove are
    imported only when a build runs."""
    code = (
        "import sys\n"
        "from structformer.cli import main\n"
        "try:\n"
        "    main(['build-corpus', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('datasets', 'datatrove', 'torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--executor {local,slurm,ray}" in result.stdout and "--latex-option" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"
