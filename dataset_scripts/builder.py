"""A ``datasets.GeneratorBasedBuilder`` for building the corpus from Python.

The Hub dataset needs no loading script (Parquet plus a card); this builder is for people who
build from their own LaTeX sources inside their code::

    from structformer.dataset_scripts.builder import ArxivStructured

    builder = ArxivStructured(config_name="arxiv_plain", data_dir="sources/", cache_dir="cache/")
    builder.download_and_prepare()
    train = builder.as_dataset("train")

It runs :func:`~structformer.dataset_scripts.build.build_corpus` (the same code path as
``structformer build-corpus``) once per set of sources and options, into the builder's cache,
and then yields the rows of the chosen config from the Parquet shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
from datasets.builder import Key

from structformer.dataset_scripts.build import BuildOptions, build_corpus
from structformer.dataset_scripts.schema import FEATURES, PLAIN, REPORT_FILE, STRUCTURED, find_shards
from structformer.errors import InputError


@dataclass
class ArxivStructuredConfig(datasets.BuilderConfig):
    """``name`` is ``arxiv_structured`` or ``arxiv_plain``.

    Args:
        sources: LaTeX sources (bulk archives, folders, files); ``data_dir`` alone is used when empty.
        build_options: options of the build; ``num_proc`` here is the number of parser processes.
    """

    sources: list[str] = field(default_factory=list)
    build_options: BuildOptions = field(default_factory=lambda: BuildOptions(progress=False))


class ArxivStructured(datasets.GeneratorBasedBuilder):
    """The ``arxiv_structured`` corpus and its ``arxiv_plain`` twin, built from LaTeX sources."""

    BUILDER_CONFIG_CLASS = ArxivStructuredConfig
    BUILDER_CONFIGS = [
        ArxivStructuredConfig(
            name=STRUCTURED, description="Papers with title, abstract, sections and header spans."
        ),
        ArxivStructuredConfig(
            name=PLAIN, description="The same papers' text only, byte-identical to the structured text."
        ),
    ]
    DEFAULT_CONFIG_NAME = STRUCTURED

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="arXiv LaTeX sources turned into structured and plain long documents (StructFormer).",
            features=FEATURES[self.config.name],
        )

    def _corpus_dir(self) -> Path:
        given = self.config.sources or ([self.config.data_dir] if self.config.data_dir else [])
        sources = [str(Path(source).absolute()) for source in given]
        if not sources:
            raise InputError("ArxivStructured needs LaTeX sources: pass data_dir=... or sources=[...]")
        options = self.config.build_options
        digest = hashlib.sha1(json.dumps([sources, options.to_dict()], sort_keys=True).encode()).hexdigest()[
            :16
        ]
        corpus = Path(self._cache_dir_root) / "structformer_corpus" / digest
        if not (corpus / REPORT_FILE).is_file():
            build_corpus(sources, corpus, options)
        return corpus

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        # Only the splits that have records: a build writes no shard for an empty one.
        shards = find_shards(self._corpus_dir())[self.config.name]
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"files": list(map(str, paths))})
            for split, paths in shards.items()
        ]

    def _generate_examples(self, files: list[str]) -> Iterator[tuple[Key, dict[str, Any]]]:
        for file_index, path in enumerate(files):
            row_index = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield Key(file_index, row_index), row
                    row_index += 1
