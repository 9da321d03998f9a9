"""``build-corpus`` as datatrove blocks: a reader of arXiv sources, a parse step, and writers.

``structformer build-corpus`` runs ``ArxivSourceReader -> ParsePapers -> PaperJsonlWriter`` on datatrove's
local, Slurm or Ray executor, then merges the tasks' journals into the corpus (:mod:`.merge`). The blocks
work in any datatrove pipeline, for instance with datatrove's own filters before the Parquet shards::

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import LambdaFilter

    from structformer.dataset_scripts.datatrove_blocks import (
        ArxivSourceReader, CorpusParquetWriter, PaperJsonlWriter, ParsePapers,
    )

    LocalPipelineExecutor(
        [
            ArxivSourceReader(["arXiv_src_2411_001.tar", "more_papers/"]),
            ParsePapers("latex", num_proc=4, rejects=PaperJsonlWriter("out/rejects")),
            LambdaFilter(
                lambda doc: len(doc.metadata["record"]["sections"]) >= 3,
                exclusion_writer=PaperJsonlWriter("out/dropped"),
            ),
            CorpusParquetWriter("out/arxiv_structured"),
            CorpusParquetWriter("out/arxiv_plain", config="arxiv_plain"),
        ],
        tasks=8,
        logging_dir="out/logs",
    ).run()

The documents:

- **a paper** (the reader's): ``id`` is the paper's id, ``media`` its text files (one ``Media`` per file,
  ``id`` the path inside the paper, ``media_bytes`` the bytes), ``text`` empty. ``metadata`` holds the
  input's ``key`` (unique in the build), ``stamp``, ``source``, ``version``, ``kind`` and the reader's
  ``warnings``; a paper the reader could not read (a PDF, an archive over a cap) has ``reason`` and
  ``detail`` too.
- **a record** (the parse step's): ``text`` is the record's text, ``metadata["record"]`` the rest of the
  ``arxiv_structured`` row (title, abstract, sections, headers, language...) and ``parse_warnings``.
- **a reject**: the paper, files dropped, with ``reason`` and ``detail``. It goes to the parse step's
  ``rejects`` writer, or, without one, down the pipeline (the build's journal wants both).

A filter that drops records should be given an ``exclusion_writer`` (a :class:`PaperJsonlWriter`), so
that every input stays accounted for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline, Media, MediaType
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers.parquet import ParquetWriter
from tqdm.auto import tqdm

from structformer.dataset_scripts import journal
from structformer.dataset_scripts.archive import (
    ArchiveLimits,
    PaperInput,
    iter_unit,
    part_of,
    plan_inputs,
    task_share,
)
from structformer.dataset_scripts.parsers import make_parser
from structformer.dataset_scripts.records import to_plain
from structformer.dataset_scripts.schema import PLAIN, STRUCTURED, features
from structformer.dataset_scripts.workers import ParseJob, parse_papers
from structformer.errors import InputError

# The metadata of a paper document that the journal keeps, besides the document's id.
_INPUT_FIELDS = ("key", "stamp", "source", "version", "kind")


def paper_document(paper: PaperInput) -> Document:
    """The document of one input of the reader (see the module docstring)."""
    metadata: dict[str, Any] = {name: getattr(paper, name) for name in _INPUT_FIELDS}
    metadata["warnings"] = paper.warnings
    if paper.reason is not None:
        metadata.update(reason=paper.reason, detail=paper.detail)
    media = [
        Media(id=name, type=MediaType.DOCUMENT, url=name, media_bytes=data)
        for name, data in paper.files.items()
    ]
    return Document(text="", id=paper.paper_id, media=media, metadata=metadata)


def record_row(document: Document) -> dict[str, Any]:
    """The ``arxiv_structured`` row of a record document, as the corpus holds it without metadata joined."""
    row = {**document.metadata["record"], "text": document.text, "id": document.id}
    row["version"] = document.metadata.get("version") or row.get("version")
    row["source_kind"] = document.metadata.get("kind") or None
    return row


def journal_line(document: Document) -> bytes:
    """The journal line (:mod:`.journal`) of a record or a reject document."""
    metadata = document.metadata
    fields = {name: metadata[name] for name in ("key", "stamp", "source")}
    fields |= {"id": document.id, "version": metadata["version"], "kind": metadata["kind"]}
    if "reason" in metadata:
        outcome = {"reason": metadata["reason"], "detail": metadata["detail"]}
    else:
        outcome = {"record": {**metadata["record"], "text": document.text}}
        if metadata.get("parse_warnings"):
            outcome["parse_warnings"] = metadata["parse_warnings"]
    return journal.line(fields, outcome, metadata.get("warnings") or [])


class ArxivSourceReader(BaseReader):
    """Papers out of arXiv bulk tars (streamed member by member), folders of papers, paper folders and
    single ``.tex`` / ``.gz`` files: one document per input, carrying its files (see the module docstring).

    Task ``rank`` of ``world_size`` reads its share of the sources' units (:func:`.archive.task_share`):
    whole tars and paper folders, or, with more tasks than units, a part of a tar. The shares are
    deterministic and together hold every input exactly once. Size caps, unsafe paths and links are
    handled as :mod:`.archive` describes; an input that cannot be read is a document with a ``reason``.

    Args:
        sources: tars, folders and files, as ``build-corpus`` takes them (local paths, read by every task).
        limits: the decompression caps.
        journal_folder: the build's :class:`PaperJsonlWriter` folder. Inputs that this task's journal there
            holds with their current stamp are not read again, so a killed task resumes where it stopped.
    """

    name = "📜 arXiv sources"

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        limits: ArchiveLimits | None = None,
        journal_folder: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.sources = [str(Path(source).absolute()) for source in sources]
        self.limits = limits or ArchiveLimits()
        self.journal_folder = str(journal_folder) if journal_folder is not None else None

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        done = (
            journal.done_inputs(journal.journal_file(self.journal_folder, rank))
            if self.journal_folder
            else {}
        )
        if done:
            self.stat_update("resumed", value=len(done))
        for unit, part, parts in task_share(plan_inputs(self.sources, self.limits), rank, world_size):

            def want(key: str, stamp: str, part: int = part, parts: int = parts) -> bool:
                return (parts == 1 or part_of(key, parts) == part) and done.get(key) != stamp

            for paper in iter_unit(unit, self.limits, want):
                document = paper_document(paper)
                self.stat_update("documents", "unreadable" if paper.reason else "readable")
                yield document


class ParsePapers(PipelineStep):
    """Paper documents to record documents, or rejects, with a paper parser (:mod:`.parsers`).

    Papers are parsed in ``num_proc`` worker processes (:func:`.workers.parse_papers`): one paper past
    ``timeout`` seconds has its worker killed and becomes a ``timeout`` reject, so it never stalls the
    task; records and rejects come out in the order they complete.

    Args:
        parser / parser_options: the paper parser's name in :data:`.parsers.PARSERS` and its options.
        num_proc: parse processes of this task.
        timeout: seconds one paper may take.
        max_tasks_per_worker: papers a parse process handles before a fresh one replaces it.
        rejects: a writer for the rejects (``write(document, rank)``, e.g. :class:`PaperJsonlWriter`);
            without one they go on down the pipeline, marked by ``metadata["reason"]``.
        progress: show a progress bar of the papers parsed.
    """

    name = "🧾 Parse papers"
    type = "🔨 - PARSER"

    def __init__(
        self,
        parser: str = "latex",
        parser_options: Mapping[str, Any] | None = None,
        *,
        num_proc: int = 1,
        timeout: float = 60.0,
        max_tasks_per_worker: int = 200,
        rejects: Any = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.parser = make_parser(parser, parser_options)
        self.num_proc = num_proc
        self.timeout = timeout
        self.max_tasks_per_worker = max_tasks_per_worker
        self.rejects = rejects
        self.progress = progress

    def _jobs(self, data: DocumentsPipeline) -> Iterator[ParseJob[Document]]:
        for document in data:
            metadata = document.metadata
            if "reason" in metadata:
                yield ParseJob(
                    document,
                    document.id,
                    outcome={"reason": metadata["reason"], "detail": metadata["detail"]},
                )
                continue
            files = {media.id: media.media_bytes or b"" for media in document.media}
            document.media = []  # the job holds the files until they are sent to a worker
            yield ParseJob(document, document.id, files)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            raise InputError("ParsePapers needs papers: put a reader such as ArxivSourceReader before it")
        jobs = parse_papers(
            self._jobs(data),
            self.parser,
            num_proc=self.num_proc,
            timeout=self.timeout,
            max_tasks_per_worker=self.max_tasks_per_worker,
        )
        with (
            self.rejects if self.rejects is not None else contextlib.nullcontext(),
            tqdm(
                desc="Parsing papers" + (f" (task {rank + 1} of {world_size})" if world_size > 1 else ""),
                unit=" papers",
                disable=not self.progress,
            ) as bar,
        ):
            for job in jobs:
                document, outcome = job.tag, job.outcome or {}
                bar.update(1)
                if "record" in outcome:
                    record = outcome["record"]
                    document.text = record.pop("text")
                    document.metadata["record"] = record
                    document.metadata["parse_warnings"] = outcome.get("parse_warnings", [])
                    self.stat_update("records")
                    self.update_doc_stats(document)
                    yield document
                    continue
                document.metadata.update(reason=outcome["reason"], detail=outcome["detail"])
                self.stat_update("rejects", f"reject_{outcome['reason']}")
                if self.rejects is None:
                    yield document
                else:
                    self.rejects.write(document, rank)


class PaperJsonlWriter(PipelineStep):
    """Records and rejects as lines of the build's journal (:mod:`.journal`): ``NNNNN.jsonl`` per task in
    ``output_folder`` (a local folder), appended to, so that a rerun of a killed task goes on with it.

    Usable wherever datatrove takes a writer: last in a pipeline, as :class:`ParsePapers`' ``rejects``, or
    as a filter's ``exclusion_writer``. A write that fails (disk full) is an ``InputError`` naming the file.
    """

    name = "🗒 Paper journal"
    type = "💽 - WRITER"

    def __init__(self, output_folder: str | os.PathLike) -> None:
        super().__init__()
        self.output_folder = str(Path(output_folder).absolute())
        self._open: tuple[int, Any] | None = None

    def __enter__(self) -> PaperJsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def _file(self, rank: int) -> Any:
        if self._open is None or self._open[0] != rank:
            self.close()
            path = journal.journal_file(self.output_folder, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            journal.cut_half_line(path)
            # Unbuffered: a failed write (disk full) leaves nothing queued for close() to retry.
            self._open = (rank, path.open("ab", buffering=0))
        return self._open[1]

    def write(self, document: Document, rank: int = 0) -> None:
        path = journal.journal_file(self.output_folder, rank)
        data = memoryview(journal_line(document))
        try:
            sink = self._file(rank)
            while data:
                data = data[sink.write(data) :]
        except OSError as error:
            raise InputError(
                f"{path}: cannot write it ({error.strerror or error}); the papers parsed before are kept in it, "
                "so a rerun resumes"
            ) from error
        self.stat_update("written", "rejects" if "reason" in document.metadata else "records")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self:
            for document in data or ():
                self.write(document, rank)
                yield document


class CorpusParquetWriter(ParquetWriter):
    """Record documents as Parquet rows of ``arxiv_structured`` (the default) or ``arxiv_plain``, with the
    corpus's schema: one file per task (``000_00003.parquet``; datatrove starts ``001_...`` past its
    ``max_file_size``), which ``datasets.load_dataset("parquet", ...)`` reads.

    These are the rows before the build's merge: no metadata joined, no deduplication and no splits (for
    those, run ``build-corpus``, whose merge reads the tasks' journals). A reject reaching this writer is
    an error: give :class:`ParsePapers` a ``rejects`` writer.
    """

    name = "📒 StructFormer corpus"

    def __init__(self, output_folder: str | os.PathLike, config: str = STRUCTURED, **parquet: Any) -> None:
        if config not in (STRUCTURED, PLAIN):
            raise InputError(
                f"CorpusParquetWriter: config must be {STRUCTURED!r} or {PLAIN!r}, got {config!r}"
            )
        super().__init__(
            str(output_folder), compression="zstd", schema=features(config).arrow_schema, **parquet
        )
        self.config = config

    def _default_adapter(self, document: Document) -> dict[str, Any]:
        if "reason" in document.metadata:
            raise InputError(
                f"CorpusParquetWriter got the reject {document.id} ({document.metadata['reason']}): "
                "give ParsePapers a rejects= writer"
            )
        row = record_row(document)
        return row if self.config == STRUCTURED else to_plain(row)


class MergeCorpus(PipelineStep):
    """The merge of a build submitted to Slurm, as the one task of a job of its own that starts once the
    parse array has succeeded (see ``build.submit_corpus_build``): it locks the output folder, checks that
    every parse task finished, and writes the corpus from their journals."""

    name = "🧩 Merge the corpus"
    type = "💽 - WRITER"

    def __init__(self, output_dir: str | os.PathLike, options: Any) -> None:
        super().__init__()
        self.output_dir = str(Path(output_dir).absolute())
        self.options = options

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from structformer.dataset_scripts.build import merge_submitted_build

        report = merge_submitted_build(Path(self.output_dir), self.options)
        self.stat_update("records", value=report["records"])
        self.stat_update("rejects", value=report["rejects"])
        return iter(())
