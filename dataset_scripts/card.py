"""The dataset card of a built corpus folder, written from its artifacts (Parquet shards, ``build_report.json``).

The YAML metadata goes through ``huggingface_hub``'s card-data classes so that the Hub (and
``datasets.load_dataset``) read it the way they expect; the Markdown body is rendered from the Jinja
template in ``templates/``. A value that is missing leaves its section out: a generated card never carries
placeholder text. The model card (``structformer.hub_cards.cards``) reuses :func:`render`, :func:`read_json`
and the citations defined here.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData
from tqdm.auto import tqdm

from structformer.dataset_scripts.archive import is_arxiv_id
from structformer.dataset_scripts.records import detect_language
from structformer.dataset_scripts.schema import (
    CARD_FILE,
    DEFAULT_CONFIG,
    REPORT_FILE,
    STRUCTURED,
    find_shards,
    shard_glob,
    split_sort_key,
)
from structformer.errors import InputError

TEMPLATES_DIR = Path(__file__).parent / "templates"

STRUCTFORMER_BIBTEX = """@article{ponkshe2024structformer,
  title         = {StructFormer: Document Structure-based Masked Attention and its Impact on Language Model Pre-Training},
  author        = {Ponkshe, Kaustubh and Subramanian, Venkatapathy and Modani, Natwar and Ramakrishnan, Ganesh},
  journal       = {arXiv preprint arXiv:2411.16618},
  year          = {2024},
  eprint        = {2411.16618},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL}
}"""

LONGFORMER_BIBTEX = """@article{beltagy2020longformer,
  title         = {Longformer: The Long-Document Transformer},
  author        = {Beltagy, Iz and Peters, Matthew E. and Cohan, Arman},
  journal       = {arXiv preprint arXiv:2004.05150},
  year          = {2020},
  eprint        = {2004.05150},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL}
}"""

# arXiv's license URLs (metadata snapshot) -> Hub license identifiers. arXiv's own non-exclusive
# distribution license has no Hub identifier, hence "other".
ARXIV_LICENSES: dict[str, str] = {
    "creativecommons.org/licenses/by/4.0": "cc-by-4.0",
    "creativecommons.org/licenses/by-sa/4.0": "cc-by-sa-4.0",
    "creativecommons.org/licenses/by-nc-sa/4.0": "cc-by-nc-sa-4.0",
    "creativecommons.org/licenses/by-nc-nd/4.0": "cc-by-nc-nd-4.0",
    "creativecommons.org/licenses/by-nc/4.0": "cc-by-nc-4.0",
    "creativecommons.org/licenses/by-nd/4.0": "cc-by-nd-4.0",
    "creativecommons.org/licenses/by/3.0": "cc-by-3.0",
    "creativecommons.org/licenses/by-sa/3.0": "cc-by-sa-3.0",
    "creativecommons.org/licenses/by-nc-sa/3.0": "cc-by-nc-sa-3.0",
    "creativecommons.org/publicdomain/zero/1.0": "cc0-1.0",
}


def hub_license(license_url: str) -> str:
    """The Hub license identifier of an arXiv license URL, or ``"other"``."""
    key = re.sub(r"^https?://", "", license_url.strip()).rstrip("/")
    return ARXIV_LICENSES.get(key, "other")


def _environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a missing value must fail loudly, never print an empty cell
        autoescape=False,
    )


def render(template: str, templates: Path = TEMPLATES_DIR, **values: Any) -> str:
    """``templates/template`` rendered with ``values`` (a missing value fails), blank-line runs folded."""
    text = _environment(templates).get_template(template).render(**values)
    # Optional sections leave runs of blank lines behind; Markdown needs at most one.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; an InputError naming the file and line otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- dataset card


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>1B"


def _load_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or not isinstance(tokenizer, (str, Path)):
        return tokenizer
    # Imported here: transformers is the one heavy dependency of the card, and only token counts need it;
    # the corpus build (which writes the card) must not load it.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer))


def _structured_stats(shards: Mapping[str, list[Path]], tokenizer: Any = None) -> dict[str, Any]:
    """Document, word, token, heading, license and category counts of the ``arxiv_structured`` shards."""
    words: list[int] = []
    tokens: list[int] = []
    characters = 0
    levels: Counter[str] = Counter()
    licenses: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    arxiv_ids = 0
    unknown_license = 0
    split_rows: list[tuple[str, int]] = []
    total_rows = sum(pq.ParquetFile(p).metadata.num_rows for paths in shards.values() for p in paths)
    bar = tqdm(total=total_rows, desc="dataset card statistics", unit="doc", disable=total_rows < 10_000)
    for split, paths in shards.items():
        rows = 0
        for path in paths:
            names = set(pq.ParquetFile(path).schema_arrow.names)
            missing = {"id", "text", "headers"} - names
            if missing:
                raise InputError(f"{path}: missing column(s) {sorted(missing)} of {STRUCTURED}")
            # The sections repeat the text; reading only what the statistics need bounds memory.
            wanted = [
                c
                for c in ("id", "text", "headers", "license", "categories", "language", "source_kind")
                if c in names
            ]
            table = pq.read_table(path, columns=wanted)
            rows += table.num_rows
            text = table.column("text")
            characters += pc.sum(pc.utf8_length(text)).as_py() or 0
            words += pc.list_value_length(pc.utf8_split_whitespace(text)).to_pylist()
            if tokenizer is not None:
                for batch in _batches(text.to_pylist(), 256):
                    tokens += [
                        len(ids)
                        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
                    ]
            flat = pc.list_flatten(table.column("headers"))
            levels.update(pc.struct_field(flat, "level").to_pylist())
            if "license" in names:
                values = table.column("license").to_pylist()
                licenses.update(v for v in values if v)
                unknown_license += sum(1 for v in values if not v)
            if "categories" in names:
                categories.update(v.split()[0] for v in table.column("categories").to_pylist() if v)
            # A corpus built before the column existed: the same heuristic, on the text.
            if "language" in names:
                languages.update(v or "und" for v in table.column("language").to_pylist())
            else:
                languages.update(detect_language(v) for v in text.to_pylist())
            if "source_kind" in names:
                kinds.update(v for v in table.column("source_kind").to_pylist() if v)
            arxiv_ids += sum(1 for v in table.column("id").to_pylist() if is_arxiv_id(v))
            bar.update(table.num_rows)
        split_rows.append((split, rows))
    bar.close()
    documents = len(words)
    return {
        "documents": documents,
        "split_rows": split_rows,
        "characters": characters,
        "words": sum(words),
        "mean_words": statistics.fmean(words) if words else 0.0,
        "median_words": statistics.median(words) if words else 0.0,
        "min_words": min(words, default=0),
        "max_words": max(words, default=0),
        "tokens": _distribution(tokens) if tokens else None,
        "mean_headings": sum(levels.values()) / documents if documents else 0.0,
        "heading_levels": sorted(levels.items(), key=lambda kv: (-kv[1], kv[0])),
        "licenses": licenses,
        "unknown_license": unknown_license,
        "categories": categories,
        "languages": languages,
        "source_kinds": kinds,
        "arxiv_ids": arxiv_ids,
    }


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _distribution(counts: list[int]) -> dict[str, float]:
    return {
        "total": sum(counts),
        "mean": statistics.fmean(counts),
        "median": statistics.median(counts),
        "min": min(counts),
        "max": max(counts),
    }


def flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from flatten(f"{prefix}.{key}" if prefix else str(key), sub)
    elif isinstance(value, (int, float, str, bool)):
        yield prefix, value
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) for v in value):
        # Long lists (e.g. every source path) would swamp the table; their length is what matters.
        yield prefix, ", ".join(map(str, value)) if len(value) <= 5 else f"{len(value)} items"


def _format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.4g}"


def dataset_card_data(
    corpus_dir: Path, *, pretty_name: str | None = None, tokenizer: Any = None
) -> tuple[DatasetCardData, dict]:
    """The card's YAML metadata and the values its body is rendered from."""
    corpus_dir = Path(corpus_dir)
    shards = find_shards(corpus_dir)
    report_path = corpus_dir / REPORT_FILE
    report = read_json(report_path) if report_path.is_file() else {}
    tokenizer = _load_tokenizer(tokenizer)
    stats = _structured_stats(shards[STRUCTURED], tokenizer)

    configs = []
    for config, splits in shards.items():
        entry: dict[str, Any] = {"config_name": config}
        if config == DEFAULT_CONFIG:
            entry["default"] = True
        entry["data_files"] = [{"split": split, "path": shard_glob(config, split)} for split in splits]
        configs.append(entry)

    licenses = stats["licenses"]
    shared = next(iter(licenses)) if len(licenses) == 1 and stats["unknown_license"] == 0 else None
    license_meta: dict[str, Any] = {"license": hub_license(shared) if shared else "other"}
    if shared and license_meta["license"] != "other":
        license_note = "All rows share this license, which the card's metadata declares."
    elif shared:
        # The Hub has no identifier for arXiv's own licence; "other" needs a name and a link.
        license_meta["license_name"] = re.sub(r"[^a-z0-9]+", "-", shared.lower().split("//")[-1]).strip("-")
        license_meta["license_link"] = shared
        license_note = "All rows share this license; the Hub has no identifier for it, so the card's metadata links to it."
    else:
        license_meta["license_name"] = "arxiv-per-paper"
        license_meta["license_link"] = "https://info.arxiv.org/help/license/index.html"
        license_note = (
            "Because the rows do not share one license, the card's metadata declares `other`: check the `license` "
            "field of each paper before reusing its text, and keep only the rows whose license allows your use."
        )

    arxiv_only = stats["arxiv_ids"] == stats["documents"]
    languages = sorted(stats["languages"].items(), key=lambda kv: (-kv[1], kv[0]))
    codes = [code for code, _ in languages if code != "und"]
    name = pretty_name or (
        "arXiv structured and plain full text"
        if arxiv_only
        else "Scientific papers: structured and plain full text"
    )
    data = DatasetCardData(
        language=codes or None,
        pretty_name=name,
        size_categories=[_size_category(stats["documents"])],
        task_categories=["fill-mask", "feature-extraction"],
        task_ids=["masked-language-modeling"],
        annotations_creators=["no-annotation"],
        language_creators=["found"],
        multilinguality=["multilingual" if len(codes) > 1 else "monolingual"],
        source_datasets=["original"],
        tags=["arxiv"] * bool(stats["arxiv_ids"])
        + ["latex", "scientific-papers", "long-document", "document-structure", "structformer"],
        configs=configs,
        **license_meta,
    )

    report_counts = None
    if all(isinstance(report.get(k), int) for k in ("inputs", "records", "rejects")):
        report_counts = {k: report[k] for k in ("inputs", "records", "rejects")}
    reasons = sorted((report.get("reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    options = [(k, v) for k, v in flatten("", report.get("options") or {})]
    report_stats = [(k, _format_number(v)) for k, v in flatten("", report.get("stats") or {})]

    latex = (report.get("options") or {}).get("latex") or {}
    math_text = f"`{latex['math_placeholder']}`" if latex.get("math_placeholder") else "a placeholder"
    if is_number(latex.get("max_linear_math_chars")):
        math_text += (
            f", or its linear form when that is at most {latex['max_linear_math_chars']} characters long"
        )
    else:
        math_text += ", or its linear form when that is short"
    if latex.get("cite_placeholder") and latex.get("ref_placeholder"):
        cite_text = f"`{latex['cite_placeholder']}` and `{latex['ref_placeholder']}`"
    else:
        cite_text = "placeholders"
    footnote_text = {
        "inline": "footnotes are kept inline, in parentheses; ",
        "drop": "footnotes are dropped; ",
    }.get(latex.get("footnotes"), "")
    split_names = [
        s
        for s, _ in sorted(
            {s: 0 for c in shards.values() for s in c}.items(), key=lambda kv: split_sort_key(kv[0])
        )
    ]
    values = {
        "pretty_name": name,
        "math_text": math_text,
        "cite_text": cite_text,
        "footnote_text": footnote_text,
        "repo_ref": None,
        "local_files": {
            config: {split: shard_glob(config, split) for split in splits}
            for config, splits in shards.items()
        },
        "arxiv_only": arxiv_only,
        "arxiv_ids": stats["arxiv_ids"],
        "languages": languages,
        "source_kinds": sorted(stats["source_kinds"].items(), key=lambda kv: (-kv[1], kv[0])),
        "split_names": split_names,
        "configs": [
            {
                "name": config,
                "default": config == DEFAULT_CONFIG,
                "rows": {
                    split: sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
                    for split, paths in splits.items()
                },
                "num_files": sum(len(paths) for paths in splits.values()),
            }
            for config, splits in shards.items()
        ],
        "options": options,
        "report_counts": report_counts,
        "stats": stats,
        "reasons": [(r, c) for r, c in reasons if c],
        "report_stats": report_stats,
        "categories": categories_top(stats["categories"]),
        "licenses": sorted(licenses.items(), key=lambda kv: (-kv[1], kv[0])),
        "unknown_license": stats["unknown_license"],
        "license_note": license_note,
        "tokenizer_name": Path(str(getattr(tokenizer, "name_or_path", "") or "")).name
        or type(tokenizer).__name__,
        "structformer_bibtex": STRUCTFORMER_BIBTEX,
    }
    return data, values


def categories_top(categories: Counter[str], k: int = 10) -> list[tuple[str, int]]:
    return sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def render_dataset_card(
    corpus_dir: Path, *, pretty_name: str | None = None, repo_id: str | None = None, tokenizer: Any = None
) -> DatasetCard:
    """The dataset card of a built corpus folder (see ``docs/ARCHITECTURE.md``), not yet written."""
    data, values = dataset_card_data(Path(corpus_dir), pretty_name=pretty_name, tokenizer=tokenizer)
    values["repo_ref"] = repo_id
    return DatasetCard(render("dataset_card.md", card_data=data.to_yaml(), **values))


def write_dataset_card(
    corpus_dir: Path, *, pretty_name: str | None = None, repo_id: str | None = None, tokenizer: Any = None
) -> Path:
    """Write ``corpus_dir/README.md``: the dataset card whose YAML ``configs`` make the folder loadable.

    On the Hub, ``datasets.load_dataset(repo_id)`` then gives ``arxiv_structured`` (the default config)
    and ``load_dataset(repo_id, "arxiv_plain")`` its text-only twin. The card of a local folder shows
    ``load_dataset("parquet", data_files=...)`` instead: ``load_dataset(".")`` fails in datasets 5.x, and
    ``load_dataset(folder, config)`` caches by the folder's name, so it can serve a rebuilt folder's old
    rows. ``repo_id`` adds the Hub's loading example. With a ``tokenizer`` (a tokenizer or a folder holding one), the
    statistics include token counts.
    """
    corpus_dir = Path(corpus_dir)
    card = render_dataset_card(corpus_dir, pretty_name=pretty_name, repo_id=repo_id, tokenizer=tokenizer)
    path = corpus_dir / CARD_FILE
    card.save(path)
    return path
