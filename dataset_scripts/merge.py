"""The merge of ``build-corpus``: the tasks' journals -> the corpus folder.

Once every parse task has finished, the merge reads their journals (:mod:`.journal`) and:

1. **Selects.** The journals are indexed (ids, versions, lengths, byte offsets; not the texts),
   duplicates are resolved to the latest version, length filters applied, metadata joined and the
   validation split drawn by a stable hash of the id.
2. **Writes.** Records are read back by offset in id order and written as Parquet shards with fixed
   writer settings (a split without records gets no shard: an empty one cannot be loaded), then
   ``build_report.json`` and the dataset card. Everything is staged in the work folder and renamed into
   place: each config's shard folder and each file is replaced atomically, then the work folder goes.

The result depends only on the set of journal lines, sorted by id and input key: not on the number of
tasks, their order of completion or the number of workers. The output folder's lock, its checks and
the install are here too, for the merge runs on its own as a Slurm job (:class:`.datatrove_blocks.MergeCorpus`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from structformer import folder_lock
from structformer.dataset_scripts import records
from structformer.dataset_scripts.archive import is_arxiv_id
from structformer.dataset_scripts.card import write_dataset_card
from structformer.dataset_scripts.schema import (
    CARD_FILE,
    CONFIG_NAMES,
    DATA_DIR,
    LOCK_FILE,
    PLAIN,
    REPORT_FILE,
    SHARD_NAME,
    SPLITS,
    STRUCTURED,
    features,
    shard_dir,
    shard_name,
)
from structformer.errors import InputError

if TYPE_CHECKING:
    from structformer.dataset_scripts.build import BuildOptions

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
_WARNINGS_PER_PAPER = 20


@dataclass
class _Entry:
    key: str
    source: str
    id: str
    version: str | None
    journal: int = 0
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


def journals(folder: Path) -> list[Path]:
    """The tasks' journals in ``folder``, in task order."""
    return sorted(folder.glob("*.jsonl"))


def _index_journals(paths: list[Path], progress: bool) -> list[_Entry]:
    """One entry per input (the last line of a key wins), without holding any text, sorted by id and key."""
    entries: dict[str, _Entry] = {}
    for number, path in enumerate(
        tqdm(paths, desc="Indexing journals", unit=" tasks", disable=not progress or len(paths) < 2)
    ):
        with path.open("rb") as handle:
            offset = 0
            for line in handle:
                if not line.endswith(b"\n"):  # half a line of a killed writer
                    break
                item = json.loads(line)
                entry = _Entry(
                    item["key"],
                    item["source"],
                    item["id"],
                    item["version"],
                    number,
                    kind=item.get("kind", ""),
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


class _Rows:
    """Records read back from the journals by offset, with a bounded number of files open at once
    (a cluster build has thousands of tasks)."""

    def __init__(self, paths: list[Path], open_files: int = 64) -> None:
        self.paths = paths
        self.open_files = open_files
        self.handles: dict[int, Any] = {}

    def read(self, entry: _Entry) -> dict[str, Any]:
        handle = self.handles.pop(entry.journal, None)
        if handle is None:
            if len(self.handles) >= self.open_files:
                self.handles.pop(next(iter(self.handles))).close()
            handle = self.paths[entry.journal].open("rb")
        self.handles[entry.journal] = handle  # most recently used last
        handle.seek(entry.offset)
        return json.loads(handle.readline())["record"]

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def _write_shards(
    staging: Path,
    paths: list[Path],
    splits: dict[str, list[_Entry]],
    metadata: dict[str, dict],
    options: BuildOptions,
    unchanged: str,
) -> None:
    for config in CONFIG_NAMES:
        with _naming_write_errors(shard_dir(staging, config), unchanged):
            shard_dir(staging, config).mkdir(parents=True)
    rows_of = _Rows(paths)
    bar = tqdm(
        total=sum(map(len, splits.values())),
        desc="Writing shards",
        unit=" records",
        disable=not options.progress,
    )
    try:
        for split, entries in splits.items():
            # No shard for an empty split: datasets cannot load a Parquet file without rows, and the
            # card lists only the splits that have shards.
            count = math.ceil(len(entries) / options.shard_size)
            for index in range(count):
                rows = []
                for entry in entries[index * options.shard_size : (index + 1) * options.shard_size]:
                    row = rows_of.read(entry)
                    known = metadata.get(entry.id, {})
                    row["id"] = entry.id
                    row["categories"] = known.get("categories") or row.get("categories")
                    row["license"] = known.get("license") or row.get("license")
                    row["version"] = entry.version or known.get("version") or row.get("version")
                    row["source_kind"] = entry.kind or None
                    rows.append(row)
                    bar.update(1)
                name = shard_name(split, index, count)
                tables = {STRUCTURED: rows, PLAIN: [records.to_plain(row) for row in rows]}
                for config, config_rows in tables.items():
                    table = pa.Table.from_pylist(config_rows, schema=features(config).arrow_schema)
                    with _naming_write_errors(shard_dir(staging, config) / name, unchanged):
                        pq.write_table(table, shard_dir(staging, config) / name, **_PARQUET_SETTINGS)
    finally:
        rows_of.close()
        bar.close()


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


def lock_output(output_dir: Path) -> int:
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


def unlock_output(output_dir: Path, fd: int) -> None:
    folder_lock.release(output_dir / LOCK_FILE, fd)


def check_output(output_dir: Path) -> None:
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


def merge_corpus(
    work: Path, output_dir: Path, options: BuildOptions, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Select and write the corpus from the journals in ``work/journal/`` into ``output_dir``; return its report.

    Every parse task must have finished. The caller holds ``output_dir``'s lock. The work folder is removed
    once the corpus is in place, but for the entries named in ``keep`` (a cluster's logs); all of it is
    kept when nothing became a record or a write failed, so that a rerun does not parse again.
    """
    paths = journals(work / "journal")
    entries = _index_journals(paths, options.progress)
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
        _write_outputs(staging, paths, splits, metadata, options, entries, kept, rejected, reasons, unchanged)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with _naming_write_errors(output_dir, f"it could not be moved into place; {unchanged}"):
        _install(staging, output_dir, replaced)
    for entry in work.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if not keep:
        work.rmdir()
    logger.info("built %s: %d records, %d rejects", output_dir, len(kept), len(rejected))
    return json.loads((output_dir / REPORT_FILE).read_text(encoding="utf-8"))


def _write_outputs(
    staging: Path,
    paths: list[Path],
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
    _write_shards(staging, paths, splits, metadata, options, unchanged)
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
