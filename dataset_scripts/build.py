"""``structformer build-corpus``: LaTeX sources -> the ``arxiv_structured`` / ``arxiv_plain`` corpus.

The build is a datatrove pipeline, then a merge:

1. **Parse.** ``ArxivSourceReader -> ParsePapers -> PaperJsonlWriter`` (:mod:`.datatrove_blocks`) runs as
   ``--tasks`` datatrove tasks. Each task reads its share of the sources (whole tars and paper folders,
   or parts of a tar), parses each paper in ``--num-proc`` worker processes under the per-paper time
   limit (:mod:`.workers`), and appends every outcome, a record or a reject, to its own journal
   (:mod:`.journal`). The tasks run on datatrove's ``LocalPipelineExecutor`` (``--executor local``, the
   default: ``--workers`` tasks at a time on this machine), a Slurm job array (``--executor slurm``) or
   a Ray cluster (``--executor ray``).
2. **Merge** (:mod:`.merge`), once every task has finished: duplicates, length filters, metadata, the
   validation split, the Parquet shards, ``build_report.json`` and the dataset card. Locally and on Ray
   it runs in this process; on Slurm it is a job that starts when the array has succeeded.

The output folder OUT (layout in :mod:`.schema`) is locked while a build writes it: a second build into
it fails at once. The work folder is ``OUT/.build-corpus/``: the journals, datatrove's logs and its
per-task completion files. A rerun after an interruption runs only the tasks that did not finish, and
each of those skips the papers its journal holds (unless their files changed since). A build replaces
only its own files: ``data/arxiv_structured/``, ``data/arxiv_plain/``, ``README.md`` and
``build_report.json``; anything else in OUT is left untouched, and a build refuses to start when one of
those paths holds something a build did not write.

Nothing depends on time, order of completion, or the number of tasks or workers: the same inputs and
options give the same bytes. Locally, the tasks run in a child process that does not hold OUT's lock,
and every process below it dies with the build, however the build dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, ClassVar, Literal

from structformer.arguments import flag, parse_dataclass, require
from structformer.dataset_scripts import journal, parsers
from structformer.dataset_scripts.archive import ArchiveLimits
from structformer.dataset_scripts.schema import CONFIG_NAMES, DATA_DIR, WORK_DIR, shard_dir
from structformer.dataset_scripts.workers import exit_with_parent
from structformer.errors import InputError, RunStopped

logger = logging.getLogger(__name__)

# Options that say how the build runs, not what it writes: left out of the report, which is the same
# whatever they are.
_RUN_ONLY = ("num_proc", "progress", "resume", "max_tasks_per_worker", "tasks", "workers")


@dataclass
class BuildOptions:
    """Everything that shapes a build.

    Args:
        num_proc: parse processes of each task.
        min_chars / max_chars: bounds on the length of ``text`` in characters (``None``: no bound).
        min_words / max_words: bounds on whitespace-separated words of ``text``. The paper kept
            documents of 2,000 to 12,000 tokens; with a WordPiece vocabulary that is about
            1,500 to 9,000 words, or 10k to 60k characters.
        dedupe: keep one record per arXiv id, the one with the latest version, and one per parsed text
            (a digest of it), whatever the inputs' names.
        validation_fraction: share of ids (by a SHA-1 of the id) in the validation split.
        min_validation: the validation split holds at least this many records (the ids with the
            lowest hashes) as long as the corpus has more records than that; tiny corpora need it.
        shard_size: rows per Parquet shard.
        timeout: seconds one paper may take to parse before its worker is killed.
        max_tasks_per_worker: papers a worker parses before it is replaced by a fresh process.
        max_paper_bytes / max_file_bytes / max_members: decompression caps (see ``ArchiveLimits``).
        metadata: an arXiv metadata snapshot (JSON lines) to join by id.
        resume: reuse the work of an interrupted build with the same sources, options and tasks.
        progress: show progress bars.
        parser / parser_options: the paper parser (a name in ``parsers.PARSERS``) and its options
            (field name -> value).
        tasks: datatrove tasks the sources are shared among (a rerun resumes only with the same number).
        workers: tasks that run at once; ``None``: one at a time locally, all at once on a cluster.
    """

    num_proc: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    min_chars: int | None = 200
    max_chars: int | None = 2_000_000
    min_words: int | None = None
    max_words: int | None = None
    dedupe: bool = True
    validation_fraction: float = 0.05
    min_validation: int = 1
    shard_size: int = 10_000
    timeout: float = 60.0
    max_tasks_per_worker: int = 200
    max_paper_bytes: int = ArchiveLimits.max_paper_bytes
    max_file_bytes: int = ArchiveLimits.max_file_bytes
    max_members: int = ArchiveLimits.max_members
    metadata: str | None = None
    resume: bool = True
    progress: bool = True
    parser: str = "latex"
    parser_options: dict[str, Any] = field(default_factory=dict)
    tasks: int = 1
    workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_proc", "shard_size", "max_tasks_per_worker", "tasks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InputError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.timeout <= 0:
            raise InputError(f"timeout must be positive, got {self.timeout}")
        self.make_parser()  # an unknown parser or option fails here, before any work

    @property
    def limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_paper_bytes=self.max_paper_bytes,
            max_file_bytes=self.max_file_bytes,
            max_members=self.max_members,
        )

    def make_parser(self) -> parsers.PaperParser:
        return parsers.make_parser(self.parser, self.parser_options)

    def to_dict(self) -> dict[str, Any]:
        """The options that shape the output, the parser's in full under its name; how the build runs
        (tasks, workers, bar, resume) does not."""
        values = dataclasses.asdict(self)
        values.pop("parser_options")
        values[self.parser] = dataclasses.asdict(self.make_parser().options)
        values = json.loads(json.dumps(values, default=str))
        return {key: value for key, value in values.items() if key not in _RUN_ONLY}


@dataclass(frozen=True)
class SlurmOptions:
    """The Slurm settings of ``--executor slurm`` (see datatrove's ``SlurmPipelineExecutor``).

    Args:
        partition: the partition the jobs run in.
        time: time limit of each task's job and of the merge job.
        qos: quality of service (``None``: the cluster's default).
        mem_per_cpu_gb: memory per CPU; a task has ``num_proc`` CPUs.
        job_name: name of the array job (the merge job adds ``-merge``).
        env_command: shell line that makes ``structformer`` importable in the jobs (``None``: activate
            this Python's virtual environment, if it runs in one).
    """

    partition: str
    time: str = "24:00:00"
    qos: str | None = None
    mem_per_cpu_gb: float = 2.0
    job_name: str = "build-corpus"
    env_command: str | None = None


# ----------------------------------------------------------------------------- inputs and work folder


def _check_sources(sources: Iterable[str | os.PathLike]) -> list[Path]:
    checked = [Path(source).absolute() for source in sources]
    if not checked:
        raise InputError("no sources given: name LaTeX archives, folders of papers or .tex files")
    for source in checked:
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
    return checked


def _check_overlap(sources: list[Path], output_dir: Path) -> None:
    """Refuse sources that the build would overwrite or read back as papers."""
    out = Path(os.path.realpath(output_dir))
    owned = [Path(os.path.realpath(shard_dir(output_dir, config))) for config in CONFIG_NAMES]
    for source in sources:
        real = Path(os.path.realpath(source))
        if real.is_dir() and out.is_relative_to(real):
            raise InputError(
                f"--output-dir {output_dir} is inside the source folder {source}: a rebuild would read the corpus "
                "as a paper; choose an output folder outside the sources"
            )
        if any(real.is_relative_to(folder) for folder in owned):
            raise InputError(f"{source}: a source inside {out / DATA_DIR}, which the build replaces; move it")


def _check_inputs(
    sources: Iterable[str | os.PathLike], output_dir: str | os.PathLike, options: BuildOptions
) -> tuple[list[Path], Path]:
    checked = _check_sources(sources)
    output = Path(output_dir).absolute()
    _check_overlap(checked, output)
    if options.metadata and not Path(options.metadata).is_file():
        raise InputError(f"--metadata {options.metadata}: no such file")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; choose another --output-dir")
    if output.is_symlink() and not output.exists():
        raise InputError(f"{output}: a symbolic link to nothing, not a folder; choose another --output-dir")
    return checked, output


def _fingerprint(sources: Sequence[Path], options: BuildOptions) -> dict[str, Any]:
    """What the work of a build depends on; work with another fingerprint is discarded."""
    described = []
    for source in sources:
        stat = source.stat()
        described.append([str(source), stat.st_size if source.is_file() else None, stat.st_mtime_ns])
    fingerprint = {
        "format": journal.JOURNAL_FORMAT,
        "sources": described,
        "parser": options.parser,
        "parser_options": dataclasses.asdict(options.make_parser().options),
        "timeout": options.timeout,
        "limits": dataclasses.asdict(options.limits),
        # The share of each task depends on their number: other tasks, other journals.
        "tasks": options.tasks,
    }
    # Through JSON and back, so that it compares equal to the manifest read from disk.
    return json.loads(json.dumps(fingerprint, default=str))


def _prepare_work(work: Path, fingerprint: dict[str, Any], resume: bool) -> None:
    """Keep the work of an interrupted build with the same fingerprint (when resuming), or start afresh."""
    manifest = work / "manifest.json"
    try:
        if resume and manifest.is_file():
            if json.loads(manifest.read_text()) == fingerprint:
                logger.info("resuming the build in %s: finished tasks are not run again", work)
                return
            logger.warning("%s belongs to a build with other sources or options: starting afresh", work)
        if work.exists():
            shutil.rmtree(work)
        (work / "journal").mkdir(parents=True)
        manifest.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    except OSError as error:
        raise InputError(
            f"{work}: cannot write the build's work there ({error.strerror or error})"
        ) from error


def _unfinished(work: Path, tasks: int) -> list[int]:
    """The tasks without datatrove's completion file."""
    done = work / "datatrove" / "completions"
    return [rank for rank in range(tasks) if not (done / f"{rank:05d}").is_file()]


# ----------------------------------------------------------------------------- the datatrove pipeline


def _pipeline(sources: list[Path], work: Path, options: BuildOptions, progress: bool) -> list[Any]:
    from structformer.dataset_scripts.datatrove_blocks import (
        ArxivSourceReader,
        PaperJsonlWriter,
        ParsePapers,
    )

    return [
        ArxivSourceReader(sources, options.limits, journal_folder=work / "journal"),
        ParsePapers(
            options.parser,
            options.parser_options,
            num_proc=options.num_proc,
            timeout=options.timeout,
            max_tasks_per_worker=options.max_tasks_per_worker,
            progress=progress,
        ),
        PaperJsonlWriter(work / "journal"),
    ]


def local_executor(sources: list[Path], work: Path, options: BuildOptions) -> Any:
    """datatrove's ``LocalPipelineExecutor`` of the parse stage: ``workers`` tasks at a time (default 1)."""
    from datatrove.executor import LocalPipelineExecutor

    workers = options.workers or 1
    return LocalPipelineExecutor(
        _pipeline(sources, work, options, progress=options.progress and workers == 1),
        tasks=options.tasks,
        workers=workers,
        logging_dir=str(work / "datatrove"),
        # fork, not datatrove's forkserver: every task process is then forked from the runner, which
        # makes it die with the build (see _run_tasks).
        start_method="fork",
    )


def ray_executor(sources: list[Path], work: Path, options: BuildOptions) -> Any:
    """datatrove's ``RayPipelineExecutor``: ``num_proc`` CPUs per task, ``workers`` tasks at once (default all)."""
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(
        _pipeline(sources, work, options, progress=False),
        tasks=options.tasks,
        workers=options.workers or -1,
        logging_dir=str(work / "datatrove"),
        cpus_per_task=options.num_proc,
    )


def slurm_executors(
    sources: list[Path], output_dir: Path, options: BuildOptions, slurm: SlurmOptions
) -> tuple[Any, Any]:
    """datatrove's ``SlurmPipelineExecutor`` of the parse array and of the merge job that depends on it."""
    from datatrove.executor import SlurmPipelineExecutor

    from structformer.dataset_scripts.datatrove_blocks import MergeCorpus

    work = output_dir / WORK_DIR
    env_command = slurm.env_command
    if env_command is None and sys.prefix != sys.base_prefix:
        env_command = f"source {Path(sys.prefix) / 'bin' / 'activate'}"
    common = {
        "time": slurm.time,
        "partition": slurm.partition,
        "qos": slurm.qos,
        "cpus_per_task": options.num_proc,
        "mem_per_cpu_gb": slurm.mem_per_cpu_gb,
        "env_command": env_command,
    }
    parse = SlurmPipelineExecutor(
        _pipeline(sources, work, options, progress=False),
        tasks=options.tasks,
        workers=options.workers or -1,
        job_name=slurm.job_name,
        logging_dir=str(work / "datatrove"),
        **common,
    )
    merge = SlurmPipelineExecutor(
        [MergeCorpus(output_dir, options)],
        tasks=1,
        job_name=f"{slurm.job_name}-merge",
        logging_dir=str(work / "merge"),
        depends=parse,
        **common,
    )
    return parse, merge


def _exit_with_current_parent() -> None:
    exit_with_parent(os.getppid())


def _runner_main(executor: Any, lock_fd: int, report: Any, build: int) -> None:
    exit_with_parent(build)
    # Only the build process holds OUT's lock: a process left behind must not keep the folder locked.
    os.close(lock_fd)
    # Every process forked below this one (datatrove's manager, its task processes and their parse
    # workers) dies with its parent, so that killing the build stops them all. This process exists
    # only to run the tasks, so the hook ends with it.
    os.register_at_fork(after_in_child=_exit_with_current_parent)
    try:
        executor.run()
    except BaseException as error:  # reported to the build process, which decides what it means
        report.send_bytes(
            json.dumps(
                {"error": f"{type(error).__name__}: {error}", "input": isinstance(error, InputError)}
            ).encode()
        )
        raise SystemExit(1) from None
    report.send_bytes(b"{}")


def _run_tasks(executor: Any, lock_fd: int) -> None:
    """Run a ``LocalPipelineExecutor`` in a child process; raise in this one what made it fail."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_runner_main, args=(executor, lock_fd, sender, os.getpid()))
    child.start()
    sender.close()
    message: dict[str, Any] = {}
    try:
        wait([receiver, child.sentinel])
        with contextlib.suppress(EOFError):  # a runner killed before it could report (the OOM killer)
            if receiver.poll():
                message = json.loads(receiver.recv_bytes())
        child.join()
    finally:
        if child.is_alive():  # this process is being interrupted
            child.kill()
            child.join()
        receiver.close()
    if message.get("input"):
        raise InputError(message["error"])
    if "error" in message or child.exitcode != 0:
        raise RunStopped(
            f"a parse task failed ({message.get('error', f'exit code {child.exitcode}')}); "
            "rerun the same command to run the tasks that did not finish"
        )


# ----------------------------------------------------------------------------- the build


def build_corpus(
    sources: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    executor: Literal["local", "ray"] = "local",
) -> dict[str, Any]:
    """Build the corpus folder from LaTeX sources and return its ``build_report.json``.

    The parse tasks run on this machine (``executor="local"``) or on the Ray cluster that ``ray.init()``
    finds (``"ray"``: set ``RAY_ADDRESS``; the work folder must be on a file system every node shares);
    the merge runs here. For Slurm, see :func:`submit_corpus_build`. ``output_dir`` is locked while the
    build runs, and only the build's own files in it are replaced (see the module docstring). Raises
    ``InputError`` for bad sources, an output folder that is busy, unwritable or holds files of its own
    where the build writes, and a build in which no input became a record (nothing is written then).
    """
    from structformer.dataset_scripts import merge

    options = options or BuildOptions()
    if executor not in ("local", "ray"):
        raise InputError(
            f"build_corpus runs the local or ray executor, not {executor!r}: see submit_corpus_build"
        )
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray needs Ray, which is not installed: pip install 'structformer[ray]'")
    sources, output = _check_inputs(sources, output_dir, options)
    created = not output.exists()
    lock = merge.lock_output(output)
    try:
        merge.check_output(output)
        work = output / WORK_DIR
        _prepare_work(work, _fingerprint(sources, options), options.resume)
        if _unfinished(work, options.tasks):
            if executor == "local":
                _run_tasks(local_executor(sources, work, options), lock)
            else:
                _run_on_ray(ray_executor(sources, work, options))
        unfinished = _unfinished(work, options.tasks)
        if unfinished:
            raise RunStopped(
                f"{len(unfinished)} of {options.tasks} parse tasks did not finish (ranks {unfinished[:10]}); "
                f"their logs are in {work / 'datatrove' / 'logs'}; rerun the same command to finish them"
            )
        return merge.merge_corpus(work, output, options)
    finally:
        merge.unlock_output(output, lock)
        if created:
            with contextlib.suppress(OSError):  # not empty: the work of an interrupted build is kept
                output.rmdir()


def _run_on_ray(executor: Any) -> None:
    import ray

    if not ray.is_initialized():
        ray.init()  # the cluster of RAY_ADDRESS, or a Ray of this machine
    executor.run()


def submit_corpus_build(
    sources: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    options: BuildOptions,
    slurm: SlurmOptions,
) -> str:
    """Submit the build to Slurm: a job array of the parse tasks that have not finished, and the merge
    job, which starts when they have all succeeded; returns the merge job's id.

    Run it where ``sbatch`` works, with the sources and ``output_dir`` on a file system the nodes share.
    The merge job locks ``output_dir`` while it writes; do not submit a second build into it before the
    first has ended. A rerun after a failure submits only what did not finish.
    """
    from structformer.dataset_scripts import merge

    if shutil.which("sbatch") is None:
        raise InputError(
            "--executor slurm: sbatch is not on this machine's PATH; run build-corpus on a Slurm login "
            "node, or use --executor local or ray"
        )
    sources, output = _check_inputs(sources, output_dir, options)
    lock = merge.lock_output(output)
    try:
        merge.check_output(output)
        _prepare_work(output / WORK_DIR, _fingerprint(sources, options), options.resume)
        parse, merge_job = slurm_executors(sources, output, options, slurm)
        merge_job.run()  # submits the parse array first, as the merge job's dependency
    finally:
        merge.unlock_output(output, lock)
    logger.info(
        "submitted: parse tasks %s, then the merge job %s, which writes %s",
        parse.job_id,
        merge_job.job_id,
        output,
    )
    return str(merge_job.job_id)


def merge_submitted_build(output_dir: Path, options: BuildOptions) -> dict[str, Any]:
    """The merge job of :func:`submit_corpus_build`: lock ``output_dir``, check that every parse task
    finished, and merge; returns the report. The jobs' logs (datatrove's and Slurm's) stay in the work
    folder, ``datatrove/`` and ``merge/``; the next build into ``output_dir`` removes them."""
    from structformer.dataset_scripts import merge

    lock = merge.lock_output(output_dir)
    try:
        merge.check_output(output_dir)
        work = output_dir / WORK_DIR
        unfinished = _unfinished(work, options.tasks)
        if unfinished:
            raise RunStopped(
                f"{len(unfinished)} of {options.tasks} parse tasks did not finish; submit the build again"
            )
        return merge.merge_corpus(work, output_dir, options, keep=("datatrove", "merge"))
    finally:
        merge.unlock_output(output_dir, lock)


# ----------------------------------------------------------------------------- CLI


class _LibraryToDebug(logging.Filter):
    """Treat pylatexenc's records as DEBUG: it logs every construct its tolerant mode repairs at INFO
    (hundreds on a real corpus); what matters of it is counted in ``build_report.json``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] != "pylatexenc":
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _quiet_parser_log() -> None:
    """On the root handlers (a logger's own filter does not see its children's records)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _LibraryToDebug) for f in handler.filters):
            handler.addFilter(_LibraryToDebug())


_SLURM_ONLY = ("partition", "time", "qos", "mem_per_cpu_gb", "job_name", "env_command")


@dataclass(kw_only=True)
class BuildArguments:
    """The command line of ``structformer build-corpus``."""

    command: ClassVar[str] = "build-corpus"
    description: ClassVar[str] = (
        "Build the arxiv_structured / arxiv_plain corpus (Parquet + dataset card) from LaTeX sources, "
        "as datatrove tasks on this machine, a Slurm cluster or a Ray cluster."
    )

    sources: list[str] = field(
        metadata={
            "help": "arXiv bulk archives (arXiv_src_YYMM_NNN.tar), folders of papers, paper folders or .tex/.gz files",
            "positional": True,
        }
    )
    output_dir: str = field(
        metadata={
            "help": "the corpus folder to write; a rebuild replaces only the build's own files in it",
            "aliases": ["--output", "-o"],
        }
    )
    metadata: str | None = field(
        default=None, metadata={"help": "arXiv metadata snapshot (JSON lines) to join by id"}
    )
    num_proc: int = field(
        default_factory=lambda: BuildOptions().num_proc, metadata={"help": "parse processes of each task"}
    )
    min_chars: int | None = field(default=BuildOptions.min_chars, metadata={"help": "'none' for no bound"})
    max_chars: int | None = field(default=BuildOptions.max_chars, metadata={"help": "'none' for no bound"})
    min_words: int | None = field(default=None, metadata={"help": "'none' for no bound"})
    max_words: int | None = field(default=None, metadata={"help": "'none' for no bound"})
    dedupe: bool = field(
        default=True, metadata={"help": "--no-dedupe keeps every version of an id and every copy of a text"}
    )
    validation_fraction: float = field(
        default=BuildOptions.validation_fraction, metadata={"help": "share of ids"}
    )
    min_validation: int = field(default=BuildOptions.min_validation, metadata={"help": "records, at least"})
    shard_size: int = field(default=BuildOptions.shard_size, metadata={"help": "rows per Parquet shard"})
    timeout: float = field(default=BuildOptions.timeout, metadata={"help": "seconds per paper"})
    max_paper_mb: float = field(
        default=ArchiveLimits.max_paper_bytes / 2**20,
        metadata={"help": "cap on a paper's decompressed size (gzip and tar bombs become too_large)"},
    )
    max_file_mb: float = field(
        default=ArchiveLimits.max_file_bytes / 2**20, metadata={"help": "cap on one decompressed TeX file"}
    )
    max_tasks_per_worker: int = field(
        default=BuildOptions.max_tasks_per_worker,
        metadata={"help": "papers a parse process handles before it is replaced"},
    )
    resume: bool = field(
        default=True, metadata={"help": "--no-resume ignores the work of an interrupted build"}
    )
    progress: bool = field(default=True, metadata={"help": "--no-progress: no progress bars"})
    parser: str = field(default="latex", metadata={"help": f"the paper parser: {', '.join(parsers.PARSERS)}"})
    parser_option: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=JSON, an option of the parser, e.g. --parser-option 'footnotes=\"drop\"' (repeatable)",
            "append": True,
            "aliases": ["--latex-option"],
        },
    )
    executor: Literal["local", "slurm", "ray"] = field(
        default="local",
        metadata={
            "help": "where the parse tasks run: this machine, a Slurm job array, or a Ray cluster (RAY_ADDRESS)"
        },
    )
    tasks: int = field(default=1, metadata={"help": "datatrove tasks the sources are shared among"})
    workers: int | None = field(
        default=None, metadata={"help": "tasks running at once (default: 1 locally, all on a cluster)"}
    )
    partition: str | None = field(default=None, metadata={"help": "Slurm partition (required with slurm)"})
    time: str | None = field(default=None, metadata={"help": "Slurm time limit per job (default 24:00:00)"})
    qos: str | None = field(default=None, metadata={"help": "Slurm quality of service"})
    mem_per_cpu_gb: float | None = field(
        default=None, metadata={"help": "Slurm memory per CPU, GB (default 2)"}
    )
    job_name: str | None = field(default=None, metadata={"help": "Slurm job name (default build-corpus)"})
    env_command: str | None = field(
        default=None,
        metadata={
            "help": "shell line that makes structformer importable in the Slurm jobs (default: this venv)"
        },
    )

    def __post_init__(self) -> None:
        require(
            self.parser in parsers.PARSERS,
            f"--parser {self.parser!r}: choose one of {sorted(parsers.PARSERS)}",
        )
        given = [flag(name) for name in _SLURM_ONLY if getattr(self, name) is not None]
        require(
            self.executor == "slurm" or not given,
            f"{', '.join(given)}: Slurm options, for --executor slurm only",
        )
        require(self.executor != "slurm" or self.partition is not None, "--executor slurm needs --partition")

    def options(self) -> BuildOptions:
        return BuildOptions(
            num_proc=self.num_proc,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
            min_words=self.min_words,
            max_words=self.max_words,
            dedupe=self.dedupe,
            validation_fraction=self.validation_fraction,
            min_validation=self.min_validation,
            shard_size=self.shard_size,
            timeout=self.timeout,
            max_tasks_per_worker=self.max_tasks_per_worker,
            max_paper_bytes=int(self.max_paper_mb * 2**20),
            max_file_bytes=int(self.max_file_mb * 2**20),
            metadata=self.metadata,
            resume=self.resume,
            progress=self.progress,
            parser=self.parser,
            parser_options=parser_options(self.parser_option),
            tasks=self.tasks,
            workers=self.workers,
        )

    def slurm(self) -> SlurmOptions:
        given = {name: getattr(self, name) for name in _SLURM_ONLY if getattr(self, name) is not None}
        return SlurmOptions(**given)


def parser_options(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs to parser options; a value is JSON, or a string where it is not JSON."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InputError(f"--parser-option {pair!r}: expected NAME=VALUE")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def parse_args(argv: list[str] | None = None) -> BuildArguments:
    return parse_dataclass(BuildArguments, argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: BuildArguments) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_parser_log()
    if args.executor == "slurm":
        submit_corpus_build(args.sources, args.output_dir, args.options(), args.slurm())
        return 0
    report = build_corpus(args.sources, args.output_dir, args.options(), executor=args.executor)
    logger.info(
        "%d inputs -> %d records (train %d, validation %d), %d rejects %s",
        report["inputs"],
        report["records"],
        report["splits"]["train"],
        report["splits"]["validation"],
        report["rejects"],
        report["reasons"],
    )
    return 0
