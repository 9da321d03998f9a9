"""``structformer build-corpus``: LaTeX sources -> the ``arxiv_structured`` / ``arxiv_plain`` corpus.

The build runs in three stages, each with its side effects at the edge:

1. **Parse.** Papers stream out of the sources (:mod:`.archive`) one at a time and go to a
   pool of worker processes. Each worker parses one paper at a time; a worker that passes the
   per-paper time limit is killed and replaced, so a pathological paper costs ``timeout``
   seconds and never the build. Every outcome (a record or a reject) is appended to a JSON
   lines journal in the output's work folder, which is what makes the build resumable: a rerun
   after an interruption skips every paper the journal holds, unless its files changed since.
2. **Select.** The journal is indexed (ids, versions, lengths, byte offsets; not the texts),
   duplicates are resolved to the latest version, length filters applied, metadata joined and
   the validation split drawn by a stable hash of the id.
3. **Write.** Records are read back by offset in id order and written as Parquet shards with
   fixed writer settings (a split without records gets no shard: an empty one cannot be loaded),
   then ``build_report.json`` and the dataset card. Everything is staged in the work folder and
   renamed into place: each config's shard folder and each file is replaced atomically.

The output folder OUT (layout in :mod:`.schema`) is locked for the whole build: a second build
into it fails at once. The work folder is ``OUT/.build-corpus/``. A build replaces only its own
files: ``data/arxiv_structured/``, ``data/arxiv_plain/``, ``README.md`` and ``build_report.json``;
anything else in OUT (``.git``, notes, source papers) is left untouched. It refuses to start when
one of those paths holds something a build did not write.

Nothing depends on time, order of completion or the number of workers: the same inputs and
options give the same bytes. Workers talk to the parent in JSON over pipes; there is no pickle
of untrusted data anywhere. Workers die with the build process, however it dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from structformer import folder_lock
from structformer.dataset_scripts import latex, records
from structformer.dataset_scripts.archive import ArchiveLimits, PaperInput, is_arxiv_id, iter_papers
from structformer.dataset_scripts.card import write_dataset_card
from structformer.dataset_scripts.schema import (
    CARD_FILE,
    CONFIG_NAMES,
    DATA_DIR,
    FEATURES,
    LOCK_FILE,
    PLAIN,
    REPORT_FILE,
    SHARD_NAME,
    SPLITS,
    STRUCTURED,
    WORK_DIR,
    shard_dir,
    shard_name,
)
from structformer.errors import InputError

logger = logging.getLogger(__name__)

# Fixed writer settings: part of what makes two builds byte-identical. Statistics only for
# ``id``: min/max of whole papers would copy two documents into every row group's footer.
_PARQUET_SETTINGS = {
    "compression": "zstd",
    "compression_level": 3,
    "row_group_size": 100,
    "use_dictionary": False,
    "write_statistics": ["id"],
}
# 2: every line carries the input's stamp, so that a resume parses edited papers again.
# 3: stamps are content digests; lines carry the source kind and the parser's warnings.
_JOURNAL_FORMAT = 3
# Seconds between two checks of a worker whose OS cannot kill it when the build dies.
_PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_RUN_ONLY = ("num_proc", "progress", "resume", "max_tasks_per_worker")
_WARNINGS_PER_PAPER = 20


@dataclass
class BuildOptions:
    """Everything that shapes a build.

    Args:
        num_proc: worker processes parsing papers in parallel.
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
        resume: reuse the journal of an interrupted build with the same sources and options.
        progress: show a progress bar.
        latex: options of the LaTeX parser.
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
    latex: latex.LatexOptions = field(default_factory=latex.LatexOptions)

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise InputError(f"num_proc must be at least 1, got {self.num_proc}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InputError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.shard_size < 1:
            raise InputError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.max_tasks_per_worker < 1:
            raise InputError(f"max_tasks_per_worker must be at least 1, got {self.max_tasks_per_worker}")
        if self.timeout <= 0:
            raise InputError(f"timeout must be positive, got {self.timeout}")

    @property
    def limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_paper_bytes=self.max_paper_bytes,
            max_file_bytes=self.max_file_bytes,
            max_members=self.max_members,
        )

    def to_dict(self) -> dict[str, Any]:
        """The options that shape the output; how the build runs (workers, bar, resume) does not."""
        values = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        return {key: value for key, value in values.items() if key not in _RUN_ONLY}


# ----------------------------------------------------------------------------- parsing (workers)


def parse_one(paper_id: str, files: dict[str, bytes], options: latex.LatexOptions) -> dict[str, Any]:
    """``{"record": row}`` or ``{"reason", "detail"}`` for one paper; never raises."""
    try:
        parsed = latex.parse_paper(files, options)
        row = records.to_record(parsed, paper_id)
        warnings = parsed.warnings
    except latex.PaperError as error:
        return {"reason": error.reason, "detail": error.detail}
    except UnicodeError as error:
        return {"reason": "decode_error", "detail": f"{type(error).__name__}: {error}"}
    except RecursionError:
        return {"reason": "parse_error", "detail": "RecursionError: the document nests too deeply"}
    except Exception as error:  # a broken paper must become a reject, whatever the parser raised
        return {"reason": "parse_error", "detail": f"{type(error).__name__}: {error}"[:500]}
    if not row.get("text", "").strip():
        return {"reason": "empty", "detail": "no text left after cleaning"}
    return {"record": row, "parse_warnings": warnings} if warnings else {"record": row}


def _encode_task(paper_id: str, files: dict[str, bytes]) -> bytes:
    names = sorted(files)
    header = json.dumps({"id": paper_id, "files": [[name, len(files[name])] for name in names]}).encode()
    return b"".join([header, b"\n", *(files[name] for name in names)])


def _decode_task(payload: bytes) -> tuple[str, dict[str, bytes]]:
    newline = payload.index(b"\n")
    header = json.loads(payload[:newline])
    files: dict[str, bytes] = {}
    offset = newline + 1
    for name, size in header["files"]:
        files[name] = payload[offset : offset + size]
        offset += size
    return header["id"], files


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where the OS has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _exit_with_parent(parent: int) -> None:
    """Make this worker end when the build process ``parent`` dies, however it dies.

    A killed parent runs no cleanup, and a worker's pipe stays open in its forked siblings, so the
    worker would wait for its next paper forever (holding the output's lock, too). Linux kills it
    (PR_SET_PDEATHSIG); elsewhere a thread notices that the worker was handed to another parent.
    """
    if not _set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _worker_main(conn: Connection, options: latex.LatexOptions, parent: int) -> None:
    _exit_with_parent(parent)
    # Ctrl-C goes to the whole process group: the parent decides, the worker just parses.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not payload:  # the parent's "stop": EOF alone is not enough, forked siblings hold the pipe open
            return
        paper_id, files = _decode_task(payload)
        conn.send_bytes(json.dumps(parse_one(paper_id, files, options), ensure_ascii=False).encode())


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, options: latex.LatexOptions) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, options, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.tasks = 0

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send_bytes(b"")
            except OSError:
                self.process.kill()
        self.conn.close()
        self.process.join(timeout=None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _context() -> multiprocessing.context.BaseContext:
    # fork starts a worker in milliseconds, which matters when a timed-out worker is replaced.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def _parse_all(
    papers: Iterator[PaperInput], options: BuildOptions, emit: Callable[[PaperInput, dict[str, Any]], None]
) -> None:
    """Parse every paper on ``options.num_proc`` workers; ``emit`` each outcome as it completes.

    At most one paper per worker is in memory, so memory stays bounded however large the input.
    """
    context = _context()
    workers = [_Worker(context, options.latex) for _ in range(options.num_proc)]
    busy: dict[int, tuple[PaperInput, float]] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(busy) < len(workers):
                paper = next(papers, None)
                if paper is None:
                    exhausted = True
                elif paper.reason is not None:
                    emit(paper, {"reason": paper.reason, "detail": paper.detail})
                else:
                    slot = next(i for i in range(len(workers)) if i not in busy)
                    task = _encode_task(paper.paper_id, paper.files)
                    paper.files = {}
                    try:
                        workers[slot].conn.send_bytes(task)
                    except OSError:  # the idle worker died (killed from outside): replace it and retry once
                        workers[slot].stop(kill=True)
                        workers[slot] = _Worker(context, options.latex)
                        workers[slot].conn.send_bytes(task)
                    del task
                    busy[slot] = (paper, time.monotonic() + options.timeout)
            if not busy:
                return
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait(
                [workers[slot].conn for slot in busy], timeout=max(0.0, next_deadline - time.monotonic())
            )
            for slot in sorted(busy):
                paper, deadline = busy[slot]
                worker = workers[slot]
                if worker.conn in ready:
                    try:
                        outcome = json.loads(worker.conn.recv_bytes())
                        worker.tasks += 1
                        if (
                            worker.tasks >= options.max_tasks_per_worker
                        ):  # a fresh process returns leaked memory
                            worker.stop()
                            workers[slot] = _Worker(context, options.latex)
                    except (EOFError, OSError):
                        worker.stop(kill=True)
                        outcome = {
                            "reason": "parse_error",
                            "detail": f"the worker died (exit code {worker.process.exitcode})",
                        }
                        workers[slot] = _Worker(context, options.latex)
                elif time.monotonic() >= deadline:
                    worker.stop(kill=True)
                    workers[slot] = _Worker(context, options.latex)
                    outcome = {
                        "reason": "timeout",
                        "detail": f"parsing took longer than {options.timeout:g} s",
                    }
                else:
                    continue
                del busy[slot]
                emit(paper, outcome)
    finally:
        for slot, worker in enumerate(workers):
            worker.stop(kill=slot in busy)


# ----------------------------------------------------------------------------- journal


def _fingerprint(sources: Sequence[Path], options: BuildOptions) -> dict[str, Any]:
    """What a journal's entries depend on; a journal with another fingerprint is discarded."""
    described = []
    for source in sources:
        stat = source.stat()
        described.append([str(source), stat.st_size if source.is_file() else None, stat.st_mtime_ns])
    fingerprint = {
        "format": _JOURNAL_FORMAT,
        "sources": described,
        "latex": dataclasses.asdict(options.latex),
        "timeout": options.timeout,
        "limits": dataclasses.asdict(options.limits),
    }
    # Through JSON and back, so that it compares equal to the manifest read from disk.
    return json.loads(json.dumps(fingerprint, default=str))


def _open_journal(work: Path, fingerprint: dict[str, Any], resume: bool) -> dict[str, str]:
    """Prepare the work folder and return ``{key: stamp}`` of the inputs an interrupted run finished."""
    manifest = work / "manifest.json"
    journal = work / "journal.jsonl"
    if resume and manifest.is_file() and journal.is_file():
        if json.loads(manifest.read_text()) == fingerprint:
            data = journal.read_bytes()
            # A kill can leave half a line at the end: drop it, the paper is parsed again.
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                with journal.open("r+b") as handle:
                    handle.truncate(keep)
            done = {}
            for line in data[:keep].splitlines():
                item = json.loads(line)
                done[item["key"]] = item["stamp"]
            logger.info("resuming: %d papers already done in %s", len(done), journal)
            return done
        logger.warning("%s belongs to a build with other sources or options: starting afresh", work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    manifest.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    journal.touch()
    return {}


@dataclass
class _Entry:
    key: str
    source: str
    id: str
    version: str | None
    offset: int = -1
    chars: int = 0
    words: int = 0
    sections: int = 0
    warnings: int = 0
    parse_warnings: list[str] = field(default_factory=list)
    kind: str = ""
    digest: str = ""
    reason: str | None = None
    detail: str = ""


def _index_journal(journal: Path) -> list[_Entry]:
    """One entry per input (the last line of a key wins), without holding any text."""
    entries: dict[str, _Entry] = {}
    with journal.open("rb") as handle:
        offset = 0
        for line in handle:
            item = json.loads(line)
            entry = _Entry(
                item["key"], item["source"], item["id"], item["version"], kind=item.get("kind", "")
            )
            entry.warnings = len(item.get("warnings", ()))
            entry.parse_warnings = item.get("parse_warnings", [])
            if "record" in item:
                text = item["record"].get("text", "")
                entry.offset = offset
                entry.chars, entry.words = len(text), len(text.split())
                entry.digest = hashlib.sha1(text.encode()).hexdigest()
                entry.sections = len(item["record"].get("sections") or [])
            else:
                entry.reason, entry.detail = item["reason"], item["detail"]
            entries[entry.key] = entry
            offset += len(line)
    return sorted(entries.values(), key=lambda e: (e.id, e.key))


# ----------------------------------------------------------------------------- selection


def _version_number(version: str | None) -> int:
    return int(version[1:]) if version and version[1:].isdigit() else 0


def _dedupe(entries: list[_Entry]) -> None:
    """Reject all but the latest version of each arXiv id, then all but one copy of each text.

    Only parsed papers compete: when the latest version failed to parse, the newest version that
    parsed is kept, so an id is never lost to a broken revision (ties: the last key, for a stable
    choice). Names that are not arXiv ids say nothing about the paper (two ``paper.tex`` of two
    projects); the parsed text does, so two inputs with the same text are one paper whatever their
    names (an arXiv id is preferred, then the first id and source).
    """
    by_id: dict[str, list[_Entry]] = {}
    for entry in entries:
        if entry.reason is None and is_arxiv_id(entry.id):
            by_id.setdefault(entry.id, []).append(entry)
    for group in by_id.values():
        keep = max(group, key=lambda e: (_version_number(e.version), e.key))
        for entry in group:
            if entry is not keep:
                entry.reason = "duplicate"
                entry.detail = f"{entry.id} {entry.version or ''} superseded by {keep.version or 'another copy'} ({keep.source})"
    by_text: dict[str, list[_Entry]] = {}
    for entry in entries:
        if entry.reason is None:
            by_text.setdefault(entry.digest, []).append(entry)
    for group in by_text.values():
        keep = min(group, key=lambda e: (not is_arxiv_id(e.id), e.id, e.key))
        for entry in group:
            if entry is not keep:
                entry.reason = "duplicate"
                entry.detail = f"the same text as {keep.id} ({keep.source})"


def _unique_ids(kept: list[_Entry]) -> None:
    """Give records that share an id (two folders named alike, or ``--no-dedupe``) ids of their own:
    the id and a short digest of the input's source path, so that no record hides another."""
    counts = Counter(entry.id for entry in kept)
    for entry in kept:
        if counts[entry.id] > 1:
            entry.id = f"{entry.id}@{hashlib.sha1(entry.key.encode()).hexdigest()[:8]}"


def _filter_length(entries: list[_Entry], options: BuildOptions) -> None:
    bounds = [
        ("chars", options.min_chars, options.max_chars),
        ("words", options.min_words, options.max_words),
    ]
    for entry in entries:
        if entry.reason is not None:
            continue
        for unit, low, high in bounds:
            value = getattr(entry, unit)
            if low is not None and value < low:
                entry.reason, entry.detail = "too_short", f"{value} {unit} < {low}"
            elif high is not None and value > high:
                entry.reason, entry.detail = "too_long", f"{value} {unit} > {high}"
            if entry.reason is not None:
                break


def load_metadata(path: str | os.PathLike, ids: set[str]) -> dict[str, dict[str, str | None]]:
    """``{id: {title, categories, license, version}}`` from an arXiv metadata snapshot, for ``ids`` only.

    The snapshot is streamed, so only the entries of this corpus are held in memory.
    """
    found: dict[str, dict[str, str | None]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                paper_id = item["id"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise InputError(f"{path}:{number}: not an arXiv metadata line ({error})") from error
            if paper_id not in ids:
                continue
            versions = item.get("versions") or []
            last = versions[-1] if versions else None
            version = last.get("version") if isinstance(last, dict) else last
            found[paper_id] = {
                "title": item.get("title"),
                "categories": item.get("categories"),
                "license": item.get("license"),
                "version": version,
            }
    return found


def split_of(paper_id: str, validation_fraction: float) -> str:
    """``"validation"`` or ``"train"``, from a SHA-1 of the id: stable across builds and machines."""
    return "validation" if _hash_unit(paper_id) < validation_fraction else "train"


def _hash_unit(paper_id: str) -> float:
    return int.from_bytes(hashlib.sha1(paper_id.encode()).digest()[:8], "big") / 2**64


def _assign_splits(ids: list[str], options: BuildOptions) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for paper_id in ids:
        splits[split_of(paper_id, options.validation_fraction)].append(paper_id)
    if len(splits["validation"]) < options.min_validation < len(ids):
        lowest = sorted(splits["train"], key=_hash_unit)[: options.min_validation - len(splits["validation"])]
        splits["validation"] = sorted(splits["validation"] + lowest)
        splits["train"] = [paper_id for paper_id in splits["train"] if paper_id not in set(lowest)]
    return splits


# ----------------------------------------------------------------------------- writing


def _read_row(handle: Any, entry: _Entry) -> dict[str, Any]:
    handle.seek(entry.offset)
    return json.loads(handle.readline())["record"]


def _write_shards(
    staging: Path,
    journal: Path,
    splits: dict[str, list[_Entry]],
    metadata: dict[str, dict],
    options: BuildOptions,
    unchanged: str,
) -> None:
    for config in CONFIG_NAMES:
        with _naming_write_errors(shard_dir(staging, config), unchanged):
            shard_dir(staging, config).mkdir(parents=True)
    with journal.open("rb") as handle:
        for split, entries in splits.items():
            # No shard for an empty split: datasets cannot load a Parquet file without rows, and the
            # card lists only the splits that have shards.
            count = math.ceil(len(entries) / options.shard_size)
            for index in range(count):
                rows = []
                for entry in entries[index * options.shard_size : (index + 1) * options.shard_size]:
                    row = _read_row(handle, entry)
                    known = metadata.get(entry.id, {})
                    row["id"] = entry.id
                    row["categories"] = known.get("categories") or row.get("categories")
                    row["license"] = known.get("license") or row.get("license")
                    row["version"] = entry.version or known.get("version") or row.get("version")
                    row["source_kind"] = entry.kind or None
                    rows.append(row)
                name = shard_name(split, index, count)
                tables = {STRUCTURED: rows, PLAIN: [records.to_plain(row) for row in rows]}
                for config, config_rows in tables.items():
                    table = pa.Table.from_pylist(config_rows, schema=FEATURES[config].arrow_schema)
                    with _naming_write_errors(shard_dir(staging, config) / name, unchanged):
                        pq.write_table(table, shard_dir(staging, config) / name, **_PARQUET_SETTINGS)


def _stats(kept: list[_Entry]) -> dict[str, Any]:
    if not kept:
        return {"characters": 0, "words": 0, "sections": 0}
    chars = sorted(entry.chars for entry in kept)
    return {
        "characters": sum(chars),
        "words": sum(entry.words for entry in kept),
        "sections": sum(entry.sections for entry in kept),
        "records_with_sections": sum(1 for entry in kept if entry.sections > 0),
        "records_with_skipped_archive_members": sum(1 for entry in kept if entry.warnings),
        "records_with_parser_warnings": sum(1 for entry in kept if entry.parse_warnings),
        "parser_warnings": sum(len(entry.parse_warnings) for entry in kept),
        "characters_min": chars[0],
        "characters_median": chars[len(chars) // 2],
        "characters_max": chars[-1],
    }


# ----------------------------------------------------------------------------- the output folder


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


def _lock_output(output_dir: Path) -> int:
    """Create OUT if needed and hold its lock file; a second build into OUT fails here, at once.

    The lock file is removed when the build ends (:func:`_unlock_output`); a build that locked a file
    removed meanwhile tries again on the new one, so two builds never both hold OUT.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return folder_lock.acquire(
            output_dir / LOCK_FILE,
            f"{output_dir}: another build-corpus (pid {{pid}}) is writing this folder (it holds {LOCK_FILE}); "
            "wait for it to end or choose another --output-dir",
        )
    except OSError as error:
        if error.errno == errno.EEXIST:  # a path on the way is a file or a link to nothing
            raise InputError(
                f"{output_dir}: not a folder, and cannot be made one; choose another --output-dir"
            ) from error
        raise InputError(
            f"{output_dir}: cannot write the corpus there ({error.strerror or error})"
        ) from error


def _unlock_output(output_dir: Path, fd: int) -> None:
    folder_lock.release(output_dir / LOCK_FILE, fd)


def _check_output(output_dir: Path) -> None:
    """Refuse an OUT where a path the build replaces holds something that no build wrote.

    The build's own paths are its shard folders (only shard files in them), ``build_report.json``,
    and ``README.md`` once a report is beside it (a first build never replaces a README it did not write).
    """
    report, card = output_dir / REPORT_FILE, output_dir / CARD_FILE
    if report.exists() and (report.is_symlink() or not report.is_file()):
        raise InputError(f"{report}: not a build report; move it away or choose another --output-dir")
    if card.exists() and not report.exists():
        raise InputError(
            f"{card}: not the card of an earlier build (no {REPORT_FILE} beside it); "
            "move it away or choose another --output-dir"
        )
    data = output_dir / DATA_DIR
    for folder in (data, *(shard_dir(output_dir, config) for config in CONFIG_NAMES)):
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise InputError(
                f"{folder}: not a folder of this corpus; move it away or choose another --output-dir"
            )
    for config in CONFIG_NAMES:
        folder = shard_dir(output_dir, config)
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if SHARD_NAME.match(entry.name) is None or entry.is_symlink() or not entry.is_file():
                raise InputError(
                    f"{entry}: not a shard of an earlier build, and {folder} is replaced as a whole; "
                    "move it away or choose another --output-dir"
                )


def _install(staging: Path, output_dir: Path, replaced: Path) -> None:
    """Rename the staged files into OUT; what they replace goes to ``replaced``, removed with the work folder."""
    replaced.mkdir()
    (output_dir / DATA_DIR).mkdir(exist_ok=True)
    for config in CONFIG_NAMES:
        target = shard_dir(output_dir, config)
        if target.exists():
            os.replace(target, replaced / config)
        os.replace(shard_dir(staging, config), target)
    # The report before the card: a report is what marks README.md as the build's own on a rerun.
    for name in (REPORT_FILE, CARD_FILE):
        os.replace(staging / name, output_dir / name)


def build_corpus(
    sources: Iterable[str | os.PathLike], output_dir: str | os.PathLike, options: BuildOptions | None = None
) -> dict[str, Any]:
    """Build the corpus folder from LaTeX sources and return its ``build_report.json``.

    ``output_dir`` is locked while the build runs, and only the build's own files in it are replaced
    (see the module docstring). The journal lives in ``output_dir/.build-corpus/`` until the build
    completes, and a rerun after an interruption resumes from it. Raises ``InputError`` for bad
    sources, an output folder that is busy, unwritable or holds files of its own where the build
    writes, and a build in which no input became a record (nothing is written then).
    """
    options = options or BuildOptions()
    sources = _check_sources(sources)
    output_dir = Path(output_dir).absolute()
    _check_overlap(sources, output_dir)
    if options.metadata and not Path(options.metadata).is_file():
        raise InputError(f"--metadata {options.metadata}: no such file")
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder; choose another --output-dir")
    if output_dir.is_symlink() and not output_dir.exists():
        raise InputError(
            f"{output_dir}: a symbolic link to nothing, not a folder; choose another --output-dir"
        )
    created = not output_dir.exists()
    lock = _lock_output(output_dir)
    try:
        _check_output(output_dir)
        return _build(sources, output_dir, options)
    finally:
        _unlock_output(output_dir, lock)
        if created:
            with contextlib.suppress(OSError):  # not empty: a journal to resume from is kept
                output_dir.rmdir()


def _build(sources: list[Path], output_dir: Path, options: BuildOptions) -> dict[str, Any]:
    work = output_dir / WORK_DIR
    journal = work / "journal.jsonl"
    try:
        done = _open_journal(work, _fingerprint(sources, options), options.resume)
    except OSError as error:
        raise InputError(
            f"{work}: cannot write the build's journal there ({error.strerror or error})"
        ) from error

    papers = iter_papers(sources, options.limits, skip=done)
    with (
        # Unbuffered: a failed write (disk full) leaves nothing queued for close() to retry.
        journal.open("ab", buffering=0) as sink,
        tqdm(desc="Parsing papers", unit=" papers", disable=not options.progress) as bar,
    ):
        bar.update(len(done))

        def emit(paper: PaperInput, outcome: dict[str, Any]) -> None:
            line = {
                "key": paper.key,
                "stamp": paper.stamp,
                "source": paper.source,
                "id": paper.paper_id,
                "version": paper.version,
                "kind": paper.kind,
            }
            line.update(outcome)
            if paper.warnings:
                line["warnings"] = paper.warnings
            data = memoryview(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            with _naming_write_errors(journal, "the papers parsed before are kept in it, so a rerun resumes"):
                while data:
                    data = data[sink.write(data) :]
            bar.update(1)

        _parse_all(papers, options, emit)

    entries = _index_journal(journal)
    if options.dedupe:
        _dedupe(entries)
    _filter_length(entries, options)
    kept = [entry for entry in entries if entry.reason is None]
    rejected = [entry for entry in entries if entry.reason is not None]
    _unique_ids(kept)
    reasons = dict(sorted(Counter(entry.reason for entry in rejected).items()))
    if not kept:
        raise InputError(
            f"no input became a record ({len(entries)} inputs; rejects: {reasons or 'none'}), so nothing was "
            f"written to {output_dir}; the journal in {work} is kept, so a rerun with other length "
            "options does not parse again"
        )
    metadata = load_metadata(options.metadata, {entry.id for entry in kept}) if options.metadata else {}
    by_id = {entry.id: entry for entry in kept}
    splits = {name: [by_id[i] for i in ids] for name, ids in _assign_splits(sorted(by_id), options).items()}

    staging, replaced = work / "staging", work / "replaced"
    for leftover in (staging, replaced):  # of a run killed while it wrote
        if leftover.exists():
            shutil.rmtree(leftover)
    unchanged = (
        f"nothing half-written was kept ({output_dir} is as it was), and the journal in {work} is, "
        "so a rerun after freeing space does not parse again"
    )
    try:
        _write_outputs(
            staging, journal, splits, metadata, options, entries, kept, rejected, reasons, unchanged
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with _naming_write_errors(output_dir, f"it could not be moved into place; {unchanged}"):
        _install(staging, output_dir, replaced)
    shutil.rmtree(work)
    logger.info("built %s: %d records, %d rejects", output_dir, len(kept), len(rejected))
    return json.loads((output_dir / REPORT_FILE).read_text(encoding="utf-8"))


def _write_outputs(
    staging: Path,
    journal: Path,
    splits: dict[str, list[_Entry]],
    metadata: dict[str, dict],
    options: BuildOptions,
    entries: list[_Entry],
    kept: list[_Entry],
    rejected: list[_Entry],
    reasons: dict[str, int],
    unchanged: str,
) -> None:
    """Shards, ``build_report.json`` and the card, staged; a write that fails names its file."""
    _write_shards(staging, journal, splits, metadata, options, unchanged)
    report = {
        "inputs": len(entries),
        "records": len(kept),
        "rejects": len(rejected),
        "reasons": reasons,
        "rejected": [
            {"id": entry.id, "source": entry.source, "reason": entry.reason, "detail": entry.detail}
            for entry in rejected
        ],
        # What the parser skipped or repaired in each paper (a heading's over-deep nesting flattened,
        # an include not found, a macro dropped); the first few messages, and how many there were.
        "warnings": [
            {
                "id": entry.id,
                "source": entry.source,
                "count": len(entry.parse_warnings),
                "warnings": entry.parse_warnings[:_WARNINGS_PER_PAPER],
            }
            for entry in entries
            if entry.parse_warnings
        ],
        "splits": {name: len(ids) for name, ids in splits.items()},
        "stats": _stats(kept) | {"metadata_joined": sum(1 for entry in kept if entry.id in metadata)},
        # the metadata file by name only: a published report should not carry local paths
        "options": options.to_dict()
        | {"metadata": Path(options.metadata).name if options.metadata else None},
    }
    if report["inputs"] != report["records"] + report["rejects"]:
        raise AssertionError(
            f"inputs {report['inputs']} != records {report['records']} + rejects {report['rejects']}"
        )
    with _naming_write_errors(staging / REPORT_FILE, unchanged):
        (staging / REPORT_FILE).write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    with _naming_write_errors(staging / CARD_FILE, unchanged):
        _write_card(staging)


@contextlib.contextmanager
def _naming_write_errors(path: Path, consequence: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, quota, read-only) into one line naming ``path`` and what it means."""
    try:
        yield
    except OSError as error:
        raise InputError(f"{path}: cannot write it ({error.strerror or error}); {consequence}") from error


def _write_card(corpus_dir: Path) -> Path:
    return write_dataset_card(corpus_dir)


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


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "") else int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = BuildOptions(num_proc=1)
    parser = argparse.ArgumentParser(
        prog="structformer build-corpus",
        description="Build the arxiv_structured / arxiv_plain corpus (Parquet + dataset card) from LaTeX sources.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "sources",
        nargs="+",
        help="arXiv bulk archives (arXiv_src_YYMM_NNN.tar), folders of papers, paper folders or .tex/.gz files",
    )
    parser.add_argument(
        "--output-dir",
        "--output",
        "-o",
        dest="output",
        required=True,
        help="the corpus folder to write; a rebuild replaces only the build's own files in it",
    )
    parser.add_argument("--metadata", help="arXiv metadata snapshot (JSON lines) to join by id")
    parser.add_argument(
        "--num-proc", type=int, default=BuildOptions().num_proc, help="parallel parser processes"
    )
    parser.add_argument(
        "--min-chars", type=_optional_int, default=defaults.min_chars, help="'none' for no bound"
    )
    parser.add_argument(
        "--max-chars", type=_optional_int, default=defaults.max_chars, help="'none' for no bound"
    )
    parser.add_argument("--min-words", type=_optional_int, default=defaults.min_words)
    parser.add_argument("--max-words", type=_optional_int, default=defaults.max_words)
    parser.add_argument(
        "--no-dedupe", action="store_true", help="keep every version of an id and every copy of a text"
    )
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument("--min-validation", type=int, default=defaults.min_validation)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="rows per Parquet shard")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds per paper")
    parser.add_argument(
        "--max-paper-mb",
        type=float,
        default=defaults.max_paper_bytes / 2**20,
        help="cap on a paper's decompressed size (gzip and tar bombs become too_large)",
    )
    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=defaults.max_file_bytes / 2**20,
        help="cap on one decompressed TeX file",
    )
    parser.add_argument(
        "--max-tasks-per-worker",
        type=int,
        default=defaults.max_tasks_per_worker,
        help="papers a parser process handles before it is replaced",
    )
    parser.add_argument("--no-resume", action="store_true", help="ignore the journal of an interrupted build")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--latex-option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a LatexOptions field, e.g. --latex-option 'footnotes=\"drop\"' (repeatable)",
    )
    return parser.parse_args(argv)


def _latex_options(pairs: list[str]) -> latex.LatexOptions:
    names = {f.name for f in dataclasses.fields(latex.LatexOptions)}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in names:
            raise InputError(f"--latex-option {pair!r}: expected NAME=VALUE with NAME in {sorted(names)}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    try:
        return latex.LatexOptions(**values)
    except (TypeError, ValueError) as error:
        raise InputError(f"--latex-option: {error}") from error


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_parser_log()
    options = BuildOptions(
        num_proc=args.num_proc,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        min_words=args.min_words,
        max_words=args.max_words,
        dedupe=not args.no_dedupe,
        validation_fraction=args.validation_fraction,
        min_validation=args.min_validation,
        shard_size=args.shard_size,
        timeout=args.timeout,
        max_tasks_per_worker=args.max_tasks_per_worker,
        max_paper_bytes=int(args.max_paper_mb * 2**20),
        max_file_bytes=int(args.max_file_mb * 2**20),
        metadata=args.metadata,
        resume=not args.no_resume,
        progress=not args.no_progress,
        latex=_latex_options(args.latex_option),
    )
    report = build_corpus(args.sources, args.output, options)
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
