"""The corpus contract, in one place: what ``build-corpus`` writes and what everything else reads.

docs/ARCHITECTURE.md describes it in words; this module is the code every part imports, so that a
name, a level or a file pattern is written once:

- the two configs (``arxiv_structured``, the default, and ``arxiv_plain``), their features and splits;
- the text layout: heading levels of the ``headers`` spans and the paragraph separator of ``text``;
- the reject reasons of ``build_report.json``;
- the folder layout: ``data/<config>/<split>-NNNNN-of-NNNNN.parquet``, ``README.md`` (the dataset card),
  ``build_report.json``, and the build's own lock and work folder;
- :func:`load_corpus`, the loader of a built folder or a Hub copy of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from structformer.errors import InputError

if TYPE_CHECKING:
    import datasets

STRUCTURED = "arxiv_structured"
PLAIN = "arxiv_plain"
CONFIG_NAMES = (STRUCTURED, PLAIN)
DEFAULT_CONFIG = STRUCTURED
# The splits a build draws; a split without records is left out of the files and the card.
SPLITS = ("train", "validation")

# Levels of the ``headers`` spans: the title, then the section levels from the outermost in.
HEADING_LEVELS = ("title", "chapter", "section", "subsection", "subsubsection", "paragraph")
SECTION_LEVELS = HEADING_LEVELS[1:]
# Between the blocks of ``text`` (title, abstract, each heading, each paragraph); no block holds one.
PARAGRAPH_SEPARATOR = "\n\n"

# The columns of ``arxiv_structured``, in order; :func:`features` gives their types.
STRUCTURED_FIELDS = (
    "id",
    "title",
    "abstract",
    "sections",
    "text",
    "headers",
    "categories",
    "license",
    "version",
    # Where the paper came from (archive.SOURCE_KINDS) and its language (records.detect_language).
    "source_kind",
    "language",
)
PLAIN_FIELDS = ("id", "text")


@cache
def features(config: str) -> datasets.Features:
    """The ``datasets`` features of one config (:data:`FEATURES` is the same, by config name).

    ``datasets`` is imported here, on first use: it takes half a second, which ``build-corpus --help``
    and every parse task would otherwise pay without needing it.
    """
    from datasets import Features, List, Value

    if config == PLAIN:
        return Features({"id": Value("string"), "text": Value("string")})
    if config != STRUCTURED:
        raise InputError(f"no config {config!r}; the configs are {list(CONFIG_NAMES)}")
    string = Value("string")
    found = Features(
        {
            "id": string,
            "title": string,
            "abstract": string,
            "sections": List({"level": string, "title": string, "paragraphs": List(string)}),
            "text": string,
            "headers": List({"start": Value("int64"), "end": Value("int64"), "level": string}),
            "categories": string,
            "license": string,
            "version": string,
            "source_kind": string,
            "language": string,
        }
    )
    if tuple(found) != STRUCTURED_FIELDS:
        raise AssertionError(f"STRUCTURED_FIELDS {STRUCTURED_FIELDS} != the features {tuple(found)}")
    return found


def __getattr__(name: str) -> Any:
    """``STRUCTURED_FEATURES``, ``PLAIN_FEATURES`` and ``FEATURES``, built on first use (see :func:`features`)."""
    if name == "STRUCTURED_FEATURES":
        return features(STRUCTURED)
    if name == "PLAIN_FEATURES":
        return features(PLAIN)
    if name == "FEATURES":
        return {config: features(config) for config in CONFIG_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# build_report.json's ``reasons``: every input that is not a record has exactly one of these, or one of
# the reasons of the build's paper parser (``parsers.PaperParser.reject_reasons``).
REJECT_REASONS: dict[str, str] = {
    "pdf_only": "only a PDF or PostScript file was submitted",
    "decode_error": "a corrupt archive, or TeX files that do not decode as text",
    "timeout": "parsing took longer than the per-paper time limit",
    "empty": "no text left after cleaning",
    "too_short": "text shorter than --min-chars or --min-words",
    "too_long": "text longer than --max-chars or --max-words",
    "duplicate": "another version of the same id was kept",
    "parse_error": "the parser failed on the paper",
    "unsafe_archive": "an absolute path, '..', link or special file in an archive, or a link out of its folder",
    "too_large": "over a size cap: --max-paper-mb, --max-file-mb or the number of tar members",
    "unsupported_format": "a file that is not a paper (README, .tsv) or an archive format that is not read (.zip)",
    "duplicate_member": "a second member of the same name in a tar; the first is read",
    "bad_name": "a file, folder or archive member whose name is not valid UTF-8",
    "unreadable": "a dangling link, a link loop, a FIFO, socket or device, or a file the OS refuses to read",
}

DATA_DIR = "data"
CARD_FILE = "README.md"
REPORT_FILE = "build_report.json"
# A build holds this lock in the output folder while it runs, and keeps its journal in WORK_DIR there.
LOCK_FILE = ".build-corpus.lock"
WORK_DIR = ".build-corpus"
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def shard_name(split: str, index: int, count: int) -> str:
    """``train-00000-of-00003.parquet``: the name of shard ``index`` of ``count`` of a split."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def shard_dir(corpus_dir: str | Path, config: str) -> Path:
    """The folder of one config's shards: ``corpus_dir/data/<config>``."""
    return Path(corpus_dir) / DATA_DIR / config


def shard_glob(config: str, split: str) -> str:
    """The card's ``data_files`` pattern of one split, relative to the corpus folder."""
    return f"{DATA_DIR}/{config}/{split}-*.parquet"


def split_sort_key(split: str) -> tuple[int, str]:
    """Order splits as a build writes them (train, validation), then any other by name."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


class CorpusNotFoundError(InputError, FileNotFoundError):
    """No corpus at the given place. Also a ``FileNotFoundError``, which callers caught before."""


def find_shards(corpus_dir: str | Path) -> dict[str, dict[str, list[Path]]]:
    """``{config: {split: [shard, ...]}}`` of a corpus folder, splits in :func:`split_sort_key` order.

    Raises ``CorpusNotFoundError`` when there is no ``arxiv_structured`` shard, and ``InputError`` for a
    Parquet file that is not named like a shard or a split whose shards are not all there (an interrupted
    copy would otherwise load as a smaller corpus).
    """
    corpus_dir = Path(corpus_dir)
    found: dict[str, dict[str, list[Path]]] = {}
    for config in CONFIG_NAMES:
        splits: dict[str, list[Path]] = {}
        for path in sorted(shard_dir(corpus_dir, config).glob("*.parquet")):
            match = SHARD_NAME.match(path.name)
            if match is None:
                raise InputError(f"{path}: not a shard name of the form SPLIT-NNNNN-of-NNNNN.parquet")
            splits.setdefault(match["split"], []).append(path)
        for split, paths in splits.items():
            expected = [shard_name(split, i, len(paths)) for i in range(len(paths))]
            if [p.name for p in paths] != expected:
                raise InputError(
                    f"{shard_dir(corpus_dir, config)}: the {split!r} shards are {[p.name for p in paths]}, "
                    f"expected {expected}; the corpus is incomplete, rebuild or copy it again"
                )
        if splits:
            found[config] = dict(sorted(splits.items(), key=lambda kv: split_sort_key(kv[0])))
    if STRUCTURED not in found:
        raise CorpusNotFoundError(
            f"{corpus_dir}: no Parquet shards under {DATA_DIR}/{STRUCTURED}/ (is this a built corpus folder?)"
        )
    return found


def data_files(corpus_dir: str | Path, config: str = DEFAULT_CONFIG) -> dict[str, list[str]]:
    """``{split: [shard path, ...]}`` of one config, for ``datasets.load_dataset("parquet", data_files=...)``.

    Shards without rows (written by builds before empty splits were left out) are skipped: the Parquet
    builder cannot read them.
    """
    shards = find_shards(corpus_dir)
    if config not in shards:
        raise InputError(f"{corpus_dir}: no config {config!r}; available: {sorted(shards)}")
    files = {
        split: [str(path) for path in paths if pq.read_metadata(path).num_rows > 0]
        for split, paths in shards[config].items()
    }
    return {split: paths for split, paths in files.items() if paths}


def load_corpus(
    dataset: str,
    config: str | None = None,
    *,
    cache_dir: str | None = None,
    required_columns: Sequence[str] = ("text",),
) -> datasets.DatasetDict:
    """Load a built corpus folder or a Hub copy of it: one ``Dataset`` per split that has rows.

    A folder is read through its shards with ``load_dataset("parquet", data_files=...)``, never with
    ``load_dataset(folder)``: ``datasets`` caches a folder by its name and config, so after a rebuild that
    would return the old rows, whereas the Parquet builder keys its cache on each file's path and
    modification time. ``config=None`` is the default config (``arxiv_structured``).
    """
    import datasets

    if Path(dataset).expanduser().exists():
        files = data_files(Path(dataset).expanduser(), config or DEFAULT_CONFIG)
        loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir)
    elif dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise CorpusNotFoundError(f"dataset not found: {dataset} (neither a folder nor a Hub id)")
    else:
        try:
            loaded = datasets.load_dataset(dataset, config, cache_dir=cache_dir)
        except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
            raise CorpusNotFoundError(f"dataset not found: {dataset} ({err})") from err
        except ValueError as err:
            raise InputError(f"{dataset}: cannot load config {config!r} ({err})") from err
    for split_name, split in loaded.items():
        missing = [c for c in required_columns if c not in split.column_names]
        if missing:
            raise InputError(
                f"{dataset} (config {config!r}, split {split_name!r}): missing column(s) {missing}; "
                f"columns are {split.column_names}"
            )
    return loaded
