"""From corpus records to masked-LM batches: tokenization with structure, packing, whole-word masking.

The pipeline has three pure stages, each unit-tested on its own:

1. :func:`tokenize_with_structure` tokenizes a record's ``text`` once, with character offsets, and
   maps the ``headers`` spans onto tokens: which tokens are global, which section each token is in,
   where words and paragraphs start.
2. :func:`pack_document` cuts one tokenized document into sequences of at most ``max_seq_length``
   tokens, between paragraphs where possible. Nothing is dropped: the tail becomes more sequences,
   and every sequence after the first starts with the document's title.
3. :class:`DataCollatorForStructuredMLM` pads a list of sequences and applies whole-word masking.

The ``arxiv_plain`` twin goes through the same code with ``headers=None``: same ``input_ids``, no
global tokens, one section.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Features, Value
from datasets import Sequence as ArrowSequence

from structformer.dataset_scripts.schema import HEADING_LEVELS, PARAGRAPH_SEPARATOR, REPORT_FILE, find_shards
from structformer.errors import InputError
from structformer.modeling.configuration_structbert import DEFAULT_GLOBAL_ATTENTION_TYPES
from structformer.trainers.arguments import DOCUMENT_CHUNKS

# Columns that pack_document writes and the collator reads.
SEQUENCE_FIELDS = ("input_ids", "global_attention_mask", "section_ids", "heading_mask", "word_ids")


def corpus_fingerprint(dataset: str) -> str | None:
    """Which build of a corpus folder a run reads: the ``fingerprint`` of its ``build_report.json``, else the
    SHA-256 of that report (every build writes a new one), else of its shards' names and sizes; None for a
    Hub id (the Hub keeps the revision)."""
    corpus = Path(dataset).expanduser()
    if not corpus.is_dir():
        return None
    report = corpus / REPORT_FILE
    if report.is_file():
        content = report.read_bytes()
        try:
            recorded = json.loads(content).get("fingerprint")
        except (ValueError, AttributeError):
            recorded = None
        return str(recorded) if recorded else hashlib.sha256(content).hexdigest()
    shards = sorted(
        (str(path.relative_to(corpus)), path.stat().st_size)
        for splits in find_shards(corpus).values()
        for paths in splits.values()
        for path in paths
    )
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def tokenize_with_structure(
    tokenizer: Any,
    text: str,
    headers: Sequence[Mapping[str, Any]] | None = None,
    global_attention_types: Sequence[str] = tuple(DEFAULT_GLOBAL_ATTENTION_TYPES),
    *,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    return_tensors: str | None = None,
) -> dict[str, Any]:
    """Tokenize a document and derive StructBERT's structure inputs from its heading spans.

    Args:
        tokenizer: a *fast* Hugging Face tokenizer (character offsets are needed).
        text: the record's ``text``: title, blank line, abstract, blank line, then each heading on its
            own line followed by its paragraphs, paragraphs separated by ``"\\n\\n"``.
        headers: the record's ``headers``, a list of ``{"start", "end", "level"}`` character spans in
            ``text`` (the title has level ``"title"``). ``None`` (the ``arxiv_plain`` config) gives the
            same ``input_ids`` with no global tokens and a single section.
        global_attention_types: the model config's ``global_attention_types``. The tokens of every
            heading whose level is listed (and of the title if ``"title"`` is listed) become global.
            ``"cls"`` is handled by the model itself, so it is ignored here.
        add_special_tokens: wrap the tokens as ``[CLS] ... [SEP]``.
        max_length: truncate to this many tokens (special tokens included). For training, use
            :func:`pack_document` instead, which keeps the tail. With ``return_tensors="pt"`` it
            defaults to the tokenizer's ``model_max_length`` (a tokenizer saved with a model is capped
            at the model's positions), so a long document still fits the model.
        return_tensors: ``"pt"`` returns only the model inputs (``input_ids``, ``attention_mask``,
            ``global_attention_mask``, ``section_ids``) as ``(1, L)`` tensors, ready for ``model(**inputs)``.

    Returns:
        A dict of per-token lists: ``input_ids``, ``attention_mask``, ``global_attention_mask``
        (1 = global), ``section_ids`` (0 = title and abstract, then one id per heading, any level),
        ``heading_mask`` (1 = inside the title or a heading), ``word_ids`` (-1 for special tokens), plus
        ``paragraph_starts`` (token indices where a paragraph or heading begins) and ``title_length``
        (tokens of the title, the text before the first blank line, special tokens excluded).

    Example:
        >>> inputs = tokenize_with_structure(tokenizer, row["text"], row["headers"],
        ...                                  model.config.global_attention_types, max_length=4096,
        ...                                  return_tensors="pt")
        >>> logits = model(**inputs).logits
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("tokenize_with_structure needs a fast tokenizer (it reads character offsets)")
    encoding = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        verbose=False,
    )
    ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
    raw_word_ids = encoding.word_ids()
    starts = [o[0] for o in offsets]
    ends = [o[1] for o in offsets]
    n = len(ids)

    global_mask = [0] * n
    heading_mask = [0] * n
    section_ids = [0] * n
    boundary_chars = _paragraph_start_chars(text)
    if headers is not None:
        spans = _check_headers(headers, len(text))
        wanted = set(global_attention_types)
        heading_starts = []
        for start, end, level in spans:
            first = bisect.bisect_right(ends, start)  # first token ending after the span starts
            last = bisect.bisect_left(starts, end)  # first token starting at or after the span ends
            for i in range(first, last):
                heading_mask[i] = 1
                if level in wanted:
                    global_mask[i] = 1
            if level != "title":
                heading_starts.append(start)
                boundary_chars.append(start)
        # A token belongs to the last heading that starts at or before it.
        for i in range(n):
            section_ids[i] = bisect.bisect_right(heading_starts, starts[i])

    paragraph_starts = sorted({bisect.bisect_left(starts, c) for c in boundary_chars} - {n})
    first_break = text.find(PARAGRAPH_SEPARATOR)
    title_length = n if first_break < 0 else bisect.bisect_left(starts, first_break)
    word_ids = _renumber_words(raw_word_ids)

    if add_special_tokens:
        ids = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        global_mask = [0, *global_mask, 0]
        heading_mask = [0, *heading_mask, 0]
        section_ids = [0, *section_ids, section_ids[-1] if section_ids else 0]
        word_ids = [-1, *word_ids, -1]
        paragraph_starts = [p + 1 for p in paragraph_starts]
    if max_length is None and return_tensors == "pt":
        cap = getattr(tokenizer, "model_max_length", None)
        # transformers marks "no limit" with a huge sentinel (int(1e30)).
        max_length = cap if isinstance(cap, int) and cap < 1_000_000_000 else None
    if max_length is not None and len(ids) > max_length:
        keep = max_length - 1 if add_special_tokens else max_length
        ids = ids[:keep] + ([tokenizer.sep_token_id] if add_special_tokens else [])
        global_mask = global_mask[:keep] + [0] * (len(ids) - keep)
        heading_mask = heading_mask[:keep] + [0] * (len(ids) - keep)
        section_ids = section_ids[:keep] + section_ids[keep - 1 : keep] * (len(ids) - keep)
        word_ids = word_ids[:keep] + [-1] * (len(ids) - keep)
        paragraph_starts = [p for p in paragraph_starts if p < keep]

    out = {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "global_attention_mask": global_mask,
        "section_ids": section_ids,
        "heading_mask": heading_mask,
        "word_ids": word_ids,
        "paragraph_starts": paragraph_starts,
        "title_length": title_length,
    }
    if return_tensors == "pt":
        keys = ("input_ids", "attention_mask", "global_attention_mask", "section_ids")
        return {k: torch.tensor([out[k]], dtype=torch.long) for k in keys}
    if return_tensors is not None:
        raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
    return out


def _check_headers(headers: Sequence[Mapping[str, Any]], text_length: int) -> list[tuple[int, int, str]]:
    spans = []
    for k, header in enumerate(headers):
        try:
            start, end, level = int(header["start"]), int(header["end"]), str(header["level"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"headers[{k}] must have integer 'start', 'end' and a 'level': {header!r}"
            ) from err
        if not 0 <= start <= end <= text_length:
            raise InputError(
                f"headers[{k}] span [{start}, {end}) lies outside the text (length {text_length})"
            )
        if level not in HEADING_LEVELS:
            raise InputError(f"headers[{k}] has unknown level {level!r}; expected one of {HEADING_LEVELS}")
        spans.append((start, end, level))
    return sorted(spans)


def _paragraph_start_chars(text: str) -> list[int]:
    """Character positions where a paragraph starts (after each blank line)."""
    positions, pos = [], text.find(PARAGRAPH_SEPARATOR)
    while pos >= 0:
        positions.append(pos + len(PARAGRAPH_SEPARATOR))
        pos = text.find(PARAGRAPH_SEPARATOR, pos + len(PARAGRAPH_SEPARATOR))
    return positions


def _renumber_words(raw: Sequence[int | None]) -> list[int]:
    """Consecutive word ids from the tokenizer's (which can repeat across pre-tokenized chunks)."""
    out, current, previous = [], -1, object()
    for w in raw:
        if w is None or w != previous:
            current += 1
        out.append(current)
        previous = w
    return out


def pack_document(
    doc: Mapping[str, Any],
    max_seq_length: int,
    cls_token_id: int,
    sep_token_id: int,
    *,
    max_title_fraction: float = 0.25,
) -> list[dict[str, list[int]]]:
    """Cut one tokenized document into ``[CLS] ... [SEP]`` sequences of at most ``max_seq_length`` tokens.

    ``doc`` is :func:`tokenize_with_structure`'s output with ``add_special_tokens=False``. Cuts fall on
    paragraph starts when that still fills at least half a sequence, else on word starts. A sequence
    that starts mid-document is ``[CLS] title [SEP] continuation [SEP]``: the title tokens keep their
    global flag and section 0, and are truncated to ``max_title_fraction`` of the sequence; their word
    ids are -1, so the collator never masks them (a repeated title would be scored as if it were new
    text). Every token of the document appears in exactly one sequence outside a title prefix.
    """
    n = len(doc["input_ids"])
    if n == 0:
        return []
    if max_seq_length < 8:
        raise ValueError(f"max_seq_length must be at least 8, got {max_seq_length}")
    title_len = min(int(doc["title_length"]), int(max_seq_length * max_title_fraction))
    paragraphs = list(doc["paragraph_starts"])
    word_starts = [i for i in range(1, n) if doc["word_ids"][i] != doc["word_ids"][i - 1]]

    pieces: list[tuple[int, int]] = []
    start = 0
    while start < n:
        capacity = max_seq_length - 2 if start == 0 else max_seq_length - 3 - title_len
        end = n if n - start <= capacity else _cut_point(start, start + capacity, paragraphs, word_starts)
        pieces.append((start, end))
        start = end

    sequences = []
    for start, end in pieces:
        segments = [(start, end)] if start == 0 else [(0, title_len), (start, end)]

        def join(key: str, special: int, segments=segments) -> list[int]:
            """[special] segment ([special] segment) [special]: one value per token of the sequence."""
            values = [special]
            for k, (a, b) in enumerate(segments):
                values.extend(([special] if k else []) + list(doc[key][a:b]))
            return values + [special]

        seq = {
            "input_ids": [cls_token_id, *join("input_ids", sep_token_id)[1:]],
            "global_attention_mask": join("global_attention_mask", 0),
            "heading_mask": join("heading_mask", 0),
            # The repeated title is context, never a label: its word ids are -1, like special tokens'.
            "word_ids": _local_word_ids(
                join("word_ids", -1)
                if start == 0
                else [-1] * (2 + title_len) + join("word_ids", -1)[2 + title_len :]
            ),
            # [CLS] and the title are section 0; the middle [SEP] takes the continuation's section,
            # the last [SEP] the section of the last token.
            "section_ids": join("section_ids", 0),
        }
        seq["section_ids"][-1] = doc["section_ids"][end - 1]
        if start > 0:
            seq["section_ids"][1 + title_len] = doc["section_ids"][start]
        sequences.append(seq)
    return sequences


def first_sequence(
    doc: Mapping[str, Any], max_seq_length: int, cls_token_id: int, sep_token_id: int
) -> dict[str, list[int]] | None:
    """The document's first ``max_seq_length`` tokens as ``[CLS] ... [SEP]``, cut mid-word if need be.

    The paper's sequences (each document cut to its first 4096 tokens, the rest unused). ``doc`` is
    :func:`tokenize_with_structure`'s output with ``add_special_tokens=False``; None for an empty one.
    """
    n = min(len(doc["input_ids"]), max_seq_length - 2)
    if n <= 0:
        return None
    sections = list(doc["section_ids"][:n])
    return {
        "input_ids": [cls_token_id, *doc["input_ids"][:n], sep_token_id],
        "global_attention_mask": [0, *doc["global_attention_mask"][:n], 0],
        "heading_mask": [0, *doc["heading_mask"][:n], 0],
        "word_ids": _local_word_ids([-1, *doc["word_ids"][:n], -1]),
        "section_ids": [0, *sections, sections[-1]],
    }


def _local_word_ids(word_ids: Sequence[int]) -> list[int]:
    """Renumber word ids from 0 within a sequence; -1 (special tokens) separates words."""
    out, current, previous = [], -1, -1
    for w in word_ids:
        if w < 0:
            out.append(-1)
        else:
            if previous < 0 or w != previous:
                current += 1
            out.append(current)
        previous = w
    return out


def _cut_point(start: int, limit: int, paragraphs: list[int], word_starts: list[int]) -> int:
    """The last paragraph start in (start, limit] if it fills half the space, else the last word start."""
    k = bisect.bisect_right(paragraphs, limit) - 1
    if k >= 0 and paragraphs[k] > start and paragraphs[k] - start >= (limit - start) // 2:
        return paragraphs[k]
    k = bisect.bisect_right(word_starts, limit) - 1
    if k >= 0 and word_starts[k] > start:
        return word_starts[k]
    return limit


def pack_batch(
    batch: Mapping[str, list],
    *,
    tokenizer: Any,
    max_seq_length: int,
    global_attention_types: Sequence[str],
    use_headers: bool,
    text_column: str = "text",
    document_chunks: str = "first",
) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: records in, sequences out (row count changes).

    ``document_chunks="first"`` keeps each document's first ``max_seq_length`` tokens (one row per
    non-empty document, :func:`first_sequence`); ``"all"`` packs every token (:func:`pack_document`).
    """
    if document_chunks not in DOCUMENT_CHUNKS:
        raise ValueError(f"document_chunks must be one of {DOCUMENT_CHUNKS}, got {document_chunks!r}")
    out: dict[str, list] = {k: [] for k in (*SEQUENCE_FIELDS, "length")}
    texts = batch[text_column]
    headers = batch["headers"] if use_headers else [None] * len(texts)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    for text, doc_headers in zip(texts, headers):
        doc = tokenize_with_structure(
            tokenizer, text, doc_headers, global_attention_types, add_special_tokens=False
        )
        if document_chunks == "first":
            first = first_sequence(doc, max_seq_length, cls_id, sep_id)
            sequences = [first] if first is not None else []
        else:
            sequences = pack_document(doc, max_seq_length, cls_id, sep_id)
        for seq in sequences:
            for k in SEQUENCE_FIELDS:
                out[k].append(seq[k])
            out["length"].append(len(seq["input_ids"]))
    return out


def sequence_features():
    """Compact Arrow types for the cached packed sequences."""
    return Features(
        {
            "input_ids": ArrowSequence(Value("int32")),
            "global_attention_mask": ArrowSequence(Value("int8")),
            "section_ids": ArrowSequence(Value("int32")),
            "heading_mask": ArrowSequence(Value("int8")),
            "word_ids": ArrowSequence(Value("int32")),
            "length": Value("int32"),
        }
    )


class DataCollatorForStructuredMLM:
    """Pad packed sequences and apply whole-word masking.

    Whole-word masking follows BERT: words are drawn at random until ``mlm_probability`` of the
    sequence's tokens are selected; a selected token becomes ``[MASK]`` 80% of the time, a random
    token 10%, and stays 10%. Special tokens are never selected, and heading tokens only when
    ``mask_headings`` is true.

    Masking is a pure function of ``(seed, epoch, idx)`` when features carry an ``idx`` (the
    training loop adds it): the masks do not depend on the number of processes, the batch size or
    the point where a run resumed.

    Every structure field is padded (``input_ids`` with the pad id, ``attention_mask`` and
    ``global_attention_mask`` with 0, ``section_ids`` with the row's last section, ``labels`` with
    -100), to the longest row rounded up to ``pad_to_multiple_of`` (the attention window, for the
    blocked local-attention path).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        mlm_probability: float = 0.15,
        mask_headings: bool = True,
        pad_to_multiple_of: int | None = None,
        seed: int = 0,
        vocab_size: int | None = None,
    ) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        self.mlm_probability = mlm_probability
        self.mask_headings = mask_headings
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        self.epoch = 0
        self.pad_token_id = tokenizer.pad_token_id
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        vocab = vocab_size if vocab_size is not None else len(tokenizer)
        self.random_ids = np.setdiff1d(np.arange(vocab, dtype=np.int64), self.special_ids)
        self._fallback_rng = np.random.default_rng(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, feature: Mapping[str, Any]) -> np.random.Generator:
        if "idx" in feature:
            return np.random.default_rng([self.seed, self.epoch, int(feature["idx"])])
        return self._fallback_rng

    def mask_whole_words(self, feature: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(masked input_ids, labels)`` for one unpadded sequence."""
        ids = np.asarray(feature["input_ids"], dtype=np.int64)
        word_ids = np.asarray(feature["word_ids"], dtype=np.int64)
        rng = self._rng(feature)
        eligible = (word_ids >= 0) & ~np.isin(ids, self.special_ids)
        if not self.mask_headings:
            eligible &= np.asarray(feature["heading_mask"], dtype=bool) == 0
        words: dict[int, list[int]] = {}
        for position in np.flatnonzero(eligible):
            words.setdefault(int(word_ids[position]), []).append(int(position))
        # A word with a heading token (or a special token) is either all eligible or not a candidate.
        if not self.mask_headings:
            heading_words = set(np.unique(word_ids[np.asarray(feature["heading_mask"], dtype=bool)]).tolist())
            words = {w: p for w, p in words.items() if w not in heading_words}
        candidates = list(words.values())
        order = rng.permutation(len(candidates))
        budget = max(1, round(int((word_ids >= 0).sum()) * self.mlm_probability)) if candidates else 0
        selected: list[int] = []
        for k in order:
            positions = candidates[k]
            if len(selected) + len(positions) > budget:
                continue
            selected.extend(positions)
            if len(selected) >= budget:
                break
        labels = np.full_like(ids, -100)
        masked = ids.copy()
        if selected:
            chosen = np.array(sorted(selected), dtype=np.int64)
            labels[chosen] = ids[chosen]
            action = rng.random(len(chosen))
            masked[chosen[action < 0.8]] = self.mask_token_id
            randomized = chosen[(action >= 0.8) & (action < 0.9)]
            masked[randomized] = rng.choice(self.random_ids, size=len(randomized))
        return masked, labels

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(features), longest), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), longest), dtype=torch.long),
            "global_attention_mask": torch.zeros((len(features), longest), dtype=torch.long),
            "section_ids": torch.zeros((len(features), longest), dtype=torch.long),
            "labels": torch.full((len(features), longest), -100, dtype=torch.long),
        }
        for row, feature in enumerate(features):
            masked, labels = self.mask_whole_words(feature)
            n = len(masked)
            sections = torch.as_tensor(np.asarray(feature["section_ids"], dtype=np.int64))
            batch["input_ids"][row, :n] = torch.from_numpy(masked)
            batch["labels"][row, :n] = torch.from_numpy(labels)
            batch["attention_mask"][row, :n] = 1
            batch["global_attention_mask"][row, :n] = torch.as_tensor(
                np.asarray(feature["global_attention_mask"], dtype=np.int64)
            )
            batch["section_ids"][row, :n] = sections
            batch["section_ids"][row, n:] = sections[-1] if n else 0
        return batch


class IndexedDataset(torch.utils.data.Dataset):
    """Adds each row's index as ``idx`` so the collator can seed its masking per example."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.dataset[index])
        row["idx"] = index
        return row
