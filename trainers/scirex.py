"""SciREX (Jain et al., ACL 2020): loading, a deterministic split, document structure, and windows.

SciREX ships one JSON object per line (``doc_id``, ``words``, ``sentences``, ``sections``,
``ner``, ``coref``, ...); spans are ``[start, end)`` word indices. This module turns such a
document into what a StructBERT encoder reads:

- heading levels per word, taken from the heading sentence at the start of each section
  (``section : Title``, ``subsection : ...``) and from the title in the first section;
- section ids per word (SciREX's own ``sections`` spans, numbered in order);
- word-level BIO labels over Method / Task / Metric / Material;
- salient-mention labels: a gold mention is salient when it belongs to a ``coref`` cluster.

Documents are longer than any window, so :func:`make_windows` cuts the sub-token sequence into
overlapping windows and :func:`stitch_word_predictions` maps window predictions back to words.
The windowing is generic (the ``token-classification`` path of ``finetune`` uses it too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from structformer.errors import InputError

ENTITY_TYPES: tuple[str, ...] = ("Method", "Task", "Metric", "Material")
NER_LABELS: list[str] = ["O"] + [f"{prefix}-{kind}" for kind in ENTITY_TYPES for prefix in ("B", "I")]
REQUIRED_KEYS: tuple[str, ...] = ("doc_id", "words", "sentences", "sections", "ner", "coref")

# SciREX writes each heading as "<marker> : <title>". Markers map onto the heading levels of
# `StructBertConfig.global_attention_types`; theorem/proof open a SciREX section but are
# environments, not structure, so they carry no heading level.
HEADING_MARKERS: dict[str, str | None] = {
    "document": "title",
    "chapter": "chapter",
    "section": "section",
    "subsection": "subsection",
    "subsubsection": "subsubsection",
    "paragraph": "paragraph",
    "subparagraph": "paragraph",
    "appendix": "section",
    "bibliography": "section",
    "theorem": None,
    "proof": None,
}
# An unmarked first sentence longer than this is the abstract run into the title, not a title.
MAX_UNMARKED_TITLE_WORDS = 40
SPLIT_NAMES: tuple[str, ...] = ("train", "dev", "test")


class ScirexFormatError(InputError):
    """A SciREX file that cannot be read; the message names the file and line."""


# --------------------------------------------------------------------------------------------
# Loading and splitting
# --------------------------------------------------------------------------------------------


def _check_span(span: Any, n_words: int, what: str, n_fields: int = 2) -> tuple[int, int]:
    if not isinstance(span, (list, tuple)) or len(span) != n_fields:
        raise ValueError(f"{what} {span!r} is not a list of {n_fields} items")
    start, end = span[0], span[1]
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool):
        raise ValueError(f"{what} {span!r} has non-integer offsets")
    if not 0 <= start < end <= n_words:
        raise ValueError(f"{what} {span!r} is not a non-empty [start, end) span inside the {n_words} words")
    return start, end


def _validate(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in doc]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    if not isinstance(doc["doc_id"], str) or not doc["doc_id"]:
        raise ValueError("doc_id is not a non-empty string")
    words = doc["words"]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise ValueError("words is not a non-empty list of strings")
    n = len(words)
    for key in ("sentences", "sections"):
        if not isinstance(doc[key], list) or not doc[key]:
            raise ValueError(f"{key} is not a non-empty list of spans")
        spans = [_check_span(span, n, f"{key} span") for span in doc[key]]
        # Section ids and heading sentences rely on spans that tile the document.
        expected = 0
        for start, end in spans:
            if start != expected:
                raise ValueError(
                    f"{key} do not tile the words: a span starts at {start}, expected {expected}"
                )
            expected = end
        if expected != n:
            raise ValueError(f"{key} end at word {expected}, but the document has {n} words")
    if not isinstance(doc["ner"], list):
        raise ValueError("ner is not a list")
    previous_end, previous = 0, None
    for span in sorted(doc["ner"], key=lambda s: s[0] if isinstance(s, (list, tuple)) and s else -1):
        start, end = _check_span(span, n, "ner span", n_fields=3)
        if span[2] not in ENTITY_TYPES:
            raise ValueError(
                f"ner span {span!r} has type {span[2]!r}; expected one of {', '.join(ENTITY_TYPES)}"
            )
        if start < previous_end:
            raise ValueError(
                f"ner spans {previous!r} and {span!r} overlap, so word-level BIO labels are undefined"
            )
        previous_end, previous = end, span
    if not isinstance(doc["coref"], dict):
        raise ValueError("coref is not an object mapping entity names to mention lists")
    for name, mentions in doc["coref"].items():
        if not isinstance(mentions, list):
            raise ValueError(f"coref[{name!r}] is not a list of spans")
        for span in mentions:
            _check_span(span, n, f"coref[{name!r}] span")


def json_lines(lines: Iterable[str], path: Path, error: type[ValueError]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line; ``error`` names the file and line of a bad one."""
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{line_number}: not valid JSON ({err.msg} at column {err.colno})") from None


def load_scirex(path: str | Path) -> list[dict]:
    """Read a SciREX JSON-lines file (the upstream ``train.jsonl``/``dev.jsonl``/``test.jsonl``).

    Every line is checked: valid JSON, the keys in ``REQUIRED_KEYS``, spans inside the words,
    ``sentences`` and ``sections`` tiling the document, non-overlapping ``ner`` spans of the four
    SciREX types, and unique ``doc_id``. Blank lines are skipped. Documents come back as the
    parsed dicts, in file order, with ``ner`` sorted by start offset.

    Raises:
        FileNotFoundError: the file does not exist.
        ScirexFormatError: a line is broken; the message reads ``FILE:LINE: what is wrong``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SciREX file not found: {path}")
    docs: list[dict] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, doc in json_lines(handle, path, ScirexFormatError):
            try:
                _validate(doc)
            except ValueError as error:
                doc_id = doc.get("doc_id") if isinstance(doc, dict) else None
                where = f" (doc_id {doc_id})" if isinstance(doc_id, str) else ""
                raise ScirexFormatError(f"{path}:{line_number}{where}: {error}") from None
            if doc["doc_id"] in seen:
                raise ScirexFormatError(
                    f"{path}:{line_number}: doc_id {doc['doc_id']} repeats line {seen[doc['doc_id']]}"
                )
            seen[doc["doc_id"]] = line_number
            doc["ner"] = sorted(doc["ner"], key=lambda span: span[0])
            docs.append(doc)
    if not docs:
        raise ScirexFormatError(f"{path}: no documents in the file")
    return docs


def split_bucket(doc_id: str) -> float:
    """A number in [0, 1) fixed by ``doc_id`` alone: the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64


def split_scirex(
    docs: Sequence[dict], dev_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, list[dict]]:
    """Split documents into ``train``/``dev``/``test`` by a stable hash of ``doc_id``.

    The rule: ``b = split_bucket(doc_id)`` (SHA-256 of the UTF-8 id, first 8 bytes as a big-endian
    integer, divided by 2**64); ``b < 1 - dev - test`` is train, then ``b < 1 - test`` is dev,
    the rest is test. A document's split depends on its id only, so it does not change when
    documents are added, removed or reordered, and is the same on every machine and Python.
    With the defaults (70/15/15), SciREX's 306 training papers split 224 / 39 / 43.
    Each split keeps the input order.
    """
    if dev_fraction < 0 or test_fraction < 0 or dev_fraction + test_fraction >= 1:
        raise ValueError(f"bad split fractions dev={dev_fraction}, test={test_fraction}")
    train_end, dev_end = 1.0 - dev_fraction - test_fraction, 1.0 - test_fraction
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_NAMES}
    for doc in docs:
        bucket = split_bucket(doc["doc_id"])
        splits["train" if bucket < train_end else "dev" if bucket < dev_end else "test"].append(doc)
    return splits


HASH_SPLIT = "doc_id hash 70/15/15 of one file (split_scirex)"
OFFICIAL_SPLIT = "SciREX's official train/dev/test files"


def load_scirex_splits(path: str | Path, max_docs: int | None = None) -> tuple[dict[str, list[dict]], str]:
    """The ``train``/``dev``/``test`` documents and how they were split.

    ``path`` is either a folder holding SciREX's official ``train.jsonl``, ``dev.jsonl`` and
    ``test.jsonl`` (used as they are), or one JSON-lines file, split by :func:`split_scirex`.
    ``max_docs`` keeps the first documents of each file (of the one file before it is split).
    """
    path = Path(path)
    if path.is_dir():
        files = {name: path / f"{name}.jsonl" for name in SPLIT_NAMES}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise InputError(
                f"{path}: a SciREX folder needs train.jsonl, dev.jsonl and test.jsonl; missing {', '.join(missing)}"
            )
        splits = {name: load_scirex(f)[:max_docs] for name, f in files.items()}
        seen: dict[str, str] = {}
        for name, docs in splits.items():
            for doc in docs:
                if seen.setdefault(doc["doc_id"], name) != name:
                    raise InputError(
                        f"{path}: doc_id {doc['doc_id']!r} is in both {seen[doc['doc_id']]} and {name}"
                    )
        return splits, OFFICIAL_SPLIT
    return split_scirex(load_scirex(path)[:max_docs]), HASH_SPLIT


# --------------------------------------------------------------------------------------------
# Structure and labels, per word
# --------------------------------------------------------------------------------------------


def heading_levels(doc: dict) -> list[str | None]:
    """The heading level of each word, or None for body words.

    A section that opens with ``<marker> :`` (``section : Related Work``) has a heading sentence;
    its words after the colon get the marker's level (``HEADING_MARKERS``), or the marker word
    itself when the heading text is empty. The first section holds the title: after
    ``document :`` when marked, else its first sentence when that sentence does not end with a
    period and has at most ``MAX_UNMARKED_TITLE_WORDS`` words (otherwise the title ran into the
    abstract and no title is marked). Marker words and colons stay body words.
    """
    words = doc["words"]
    levels: list[str | None] = [None] * len(words)
    sentence_end = {start: end for start, end in doc["sentences"]}
    for index, (start, end) in enumerate(doc["sections"]):
        heading_end = min(sentence_end.get(start, end), end)
        marked = words[start] in HEADING_MARKERS and start + 1 < heading_end and words[start + 1] == ":"
        if marked:
            level = HEADING_MARKERS[words[start]]
            span = (start + 2, heading_end) if start + 2 < heading_end else (start, start + 1)
        elif index == 0 and heading_end - start <= MAX_UNMARKED_TITLE_WORDS and words[heading_end - 1] != ".":
            level, span = "title", (start, heading_end)
        else:
            continue
        if level is not None:
            levels[span[0] : span[1]] = [level] * (span[1] - span[0])
    return levels


def section_ids(doc: dict) -> list[int]:
    """The index of each word's SciREX section (the title section is 0)."""
    ids = [0] * len(doc["words"])
    for index, (start, end) in enumerate(doc["sections"]):
        ids[start:end] = [index] * (end - start)
    return ids


def bio_labels(doc: dict) -> list[str]:
    """Word-level BIO labels (``NER_LABELS``) from the ``ner`` spans."""
    labels = ["O"] * len(doc["words"])
    for start, end, kind in doc["ner"]:
        labels[start] = f"B-{kind}"
        labels[start + 1 : end] = [f"I-{kind}"] * (end - start - 1)
    return labels


def bio_spans(labels: Sequence[str]) -> list[list]:
    """``[start, end, type]`` word spans (end exclusive) of a BIO tag sequence, the inverse of :func:`bio_labels`.

    As seqeval reads IOB2: ``B-X`` opens a span, ``I-X`` continues a span of type X and opens one after
    ``O`` or another type (a span never changes type), ``O`` closes.
    """
    spans: list[list] = []
    for index, label in enumerate(labels):
        prefix, _, kind = label.partition("-")
        if prefix == "I" and spans and spans[-1][1] == index and spans[-1][2] == kind:
            spans[-1][1] = index + 1
        elif prefix in ("B", "I"):
            spans.append([index, index + 1, kind])
    return spans


def read_ner_predictions(path: str | Path, docs: Sequence[dict]) -> list[list[tuple[int, int, str]]]:
    """For each paper of ``docs``, its predicted mentions ``(start, end, type)`` from a SciREX ``--ner-file``
    (JSON lines with ``doc_id`` and ``ner``: ``[start, end, type]`` word spans, end exclusive), sorted.

    A paper of ``docs`` missing from the file, a span outside its words or an unknown type is a
    :class:`ScirexFormatError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ScirexFormatError(f"{path}: no such NER predictions file")
    words = {str(doc["doc_id"]): len(doc["words"]) for doc in docs}
    found: dict[str, list[tuple[int, int, str]]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, record in json_lines(handle, path, ScirexFormatError):
            where = f"{path}:{number}"
            if (
                not isinstance(record, dict)
                or "doc_id" not in record
                or not isinstance(record.get("ner"), list)
            ):
                raise ScirexFormatError(f"{where}: expected an object with doc_id and ner")
            doc_id = str(record["doc_id"])
            if doc_id not in words:
                continue
            spans = []
            for span in record["ner"]:
                try:
                    start, end = _check_span(span, words[doc_id], f"{where}: ner span", n_fields=3)
                except ValueError as error:
                    raise ScirexFormatError(str(error)) from None
                if span[2] not in ENTITY_TYPES:
                    raise ScirexFormatError(
                        f"{where}: ner type {span[2]!r} is not one of {', '.join(ENTITY_TYPES)}"
                    )
                spans.append((start, end, str(span[2])))
            found[doc_id] = sorted(set(spans))
    missing = [doc_id for doc_id in words if doc_id not in found]
    if missing:
        raise ScirexFormatError(
            f"{path}: no predictions for {len(missing)} of {len(words)} papers (e.g. {missing[0]}); "
            "it must come from the same split"
        )
    return [found[str(doc["doc_id"])] for doc in docs]


def salient_mentions(doc: dict) -> list[tuple[int, int, int]]:
    """Every gold mention as ``(start, end, label)``, sorted; label 1 if its span is in ``coref``."""
    salient = {(start, end) for mentions in doc["coref"].values() for start, end in mentions}
    return [(start, end, int((start, end) in salient)) for start, end, _ in doc["ner"]]


# --------------------------------------------------------------------------------------------
# Windows over sub-tokens, and stitching back to words
# --------------------------------------------------------------------------------------------


def encode_words(tokenizer: Any, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sub-token ids and the word index of each sub-token (no special tokens).

    Words that a tokenizer maps to no sub-token at all (an empty string, a lone control
    character) are replaced by the unknown token, so every word keeps a first sub-token and
    labels survive the round trip.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs one")
    words = list(words)
    for _ in range(2):
        encoding = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
        word_ids = np.array([-1 if w is None else w for w in encoding.word_ids()], dtype=np.int64)
        covered = np.zeros(len(words), dtype=bool)
        covered[word_ids[word_ids >= 0]] = True
        if covered.all():
            return np.asarray(encoding["input_ids"], dtype=np.int64), word_ids
        if tokenizer.unk_token is None:
            raise InputError("some words produce no sub-tokens and the tokenizer has no unknown token")
        for index in np.flatnonzero(~covered):
            words[index] = tokenizer.unk_token
    raise InputError("some words produce no sub-tokens even as the unknown token")


def window_starts(num_tokens: int, content_length: int, stride: int) -> list[int]:
    """Start offsets of windows of ``content_length`` tokens overlapping by ``stride`` tokens.

    Consecutive windows advance by ``content_length - stride``; the last window is aligned to
    the end of the document, so it is full length and overlaps its predecessor by at least
    ``stride``. A document that fits in one window gets one window.
    """
    if content_length < 1:
        raise ValueError(f"windows need room for at least one token, got {content_length}")
    if not 0 <= stride < content_length:
        raise ValueError(f"stride (overlap) must be in [0, {content_length}), got {stride}")
    if num_tokens <= content_length:
        return [0]
    step = content_length - stride
    starts = list(range(0, num_tokens - content_length, step))
    starts.append(num_tokens - content_length)
    return starts


def _centrality(length: int) -> np.ndarray:
    """Distance of each content position to the nearer window edge (higher = more context)."""
    positions = np.arange(length)
    return np.minimum(positions, length - 1 - positions)


def make_windows(
    tokenizer: Any,
    words: Sequence[str],
    *,
    max_seq_length: int,
    stride: int,
    word_labels: Sequence[int] | None = None,
    word_global: Sequence[bool] | None = None,
    word_sections: Sequence[int] | None = None,
    mentions: Sequence[tuple[int, int, int]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Cover one document with ``[CLS] tokens [SEP]`` windows of at most ``max_seq_length``.

    Each window is a dict of arrays: ``input_ids``, ``global_attention_mask`` (sub-tokens of
    words with ``word_global``), ``section_ids`` (``[CLS]``/``[SEP]`` take the section of their
    neighbour), ``word_index`` (the word at each first sub-token, -1 elsewhere), ``labels``
    (``word_labels`` at first sub-tokens, -100 elsewhere) and ``token_start`` (offset of the
    window's first content token). With ``mentions`` (word spans with a label), each mention goes
    to exactly one window, the one that holds all its sub-tokens with the most context on both
    sides (or the largest part of it, for a mention longer than a window), as ``mention_spans``
    (window positions, ``[start, end)``), ``mention_labels`` and ``mention_index``.
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise InputError("the tokenizer has no [CLS]/[SEP] tokens to frame windows with")
    token_ids, token_words = encode_words(tokenizer, words)
    num_tokens = len(token_ids)
    first = np.ones(num_tokens, dtype=bool)
    first[1:] = token_words[1:] != token_words[:-1]
    token_global = (
        np.asarray(word_global, dtype=np.int64)[token_words]
        if word_global is not None
        else np.zeros(num_tokens, np.int64)
    )
    token_sections = (
        np.asarray(word_sections, dtype=np.int64)[token_words]
        if word_sections is not None
        else np.zeros(num_tokens, np.int64)
    )
    content_length = max_seq_length - 2
    starts = window_starts(num_tokens, content_length, stride)

    word_label_array = np.asarray(word_labels, dtype=np.int64) if word_labels is not None else None
    windows: list[dict[str, np.ndarray]] = []
    for start in starts:
        end = min(start + content_length, num_tokens)
        body = slice(start, end)
        word_index = np.where(first[body], token_words[body], -1)
        window = {
            "input_ids": np.concatenate([[cls_id], token_ids[body], [sep_id]]).astype(np.int64),
            "global_attention_mask": np.concatenate([[0], token_global[body], [0]]).astype(np.int64),
            "section_ids": np.concatenate(
                [[token_sections[start]], token_sections[body], [token_sections[end - 1]]]
            ).astype(np.int64),
            "word_index": np.concatenate([[-1], word_index, [-1]]).astype(np.int64),
            "token_start": np.int64(start),
        }
        if word_label_array is not None:
            labels = np.where(word_index >= 0, word_label_array[np.maximum(word_index, 0)], -100)
            window["labels"] = np.concatenate([[-100], labels, [-100]]).astype(np.int64)
        windows.append(window)

    if mentions is not None:
        positions = np.arange(num_tokens)
        word_first_token = np.full(len(words), num_tokens, dtype=np.int64)
        word_last_token = np.full(len(words), -1, dtype=np.int64)
        np.minimum.at(word_first_token, token_words, positions)
        np.maximum.at(word_last_token, token_words, positions)
        assigned: list[list[tuple[int, int, int, int]]] = [[] for _ in windows]
        for mention_index, (word_start, word_end, label) in enumerate(mentions):
            tok_start, tok_end = int(word_first_token[word_start]), int(word_last_token[word_end - 1]) + 1
            best, best_score = 0, None
            for window_index, start in enumerate(starts):
                end = min(start + content_length, num_tokens)
                overlap = min(tok_end, end) - max(tok_start, start)
                contained = tok_start >= start and tok_end <= end
                margin = min(tok_start - start, end - tok_end)
                score = (contained, margin if contained else overlap)
                if best_score is None or score > best_score:
                    best, best_score = window_index, score
            start = starts[best]
            end = min(start + content_length, num_tokens)
            # +1: position 0 of every window is [CLS].
            span_start = max(tok_start, start) - start + 1
            span_end = min(tok_end, end) - start + 1
            assigned[best].append((span_start, span_end, int(label), mention_index))
        for window, items in zip(windows, assigned):
            array = np.asarray(items, dtype=np.int64).reshape(-1, 4)
            window["mention_spans"] = array[:, :2]
            window["mention_labels"] = array[:, 2]
            window["mention_index"] = array[:, 3]
    return windows


def stitch_word_predictions(
    windows: Sequence[dict[str, np.ndarray]],
    predictions: Sequence[Sequence[int]],
    num_words: int,
    fill: int = 0,
) -> list[int]:
    """One prediction per word from overlapping windows.

    ``predictions[k]`` holds a value for each position of ``windows[k]`` (extra trailing padding
    is ignored). A word takes the value at its first sub-token in the window where that
    sub-token is most central (farthest from the window's edges, earliest window on ties).
    Words that no window holds get ``fill``.
    """
    if len(windows) != len(predictions):
        raise ValueError(f"{len(windows)} windows but {len(predictions)} prediction rows")
    best_score = np.full(num_words, -1, dtype=np.int64)
    stitched = np.full(num_words, fill, dtype=np.int64)
    for window, prediction in zip(windows, predictions):
        word_index = window["word_index"]
        length = len(word_index)
        prediction = np.asarray(prediction)[:length]
        if len(prediction) < length:
            raise ValueError(f"a prediction row has {len(prediction)} values for a window of {length} tokens")
        # Centrality over content positions 1..length-2 (the window minus [CLS] and [SEP]).
        score = np.concatenate([[-1], _centrality(length - 2), [-1]])
        positions = np.flatnonzero(word_index >= 0)
        targets = word_index[positions]
        better = score[positions] > best_score[targets]
        best_score[targets[better]] = score[positions[better]]
        stitched[targets[better]] = prediction[positions[better]]
    return stitched.tolist()


def scirex_windows(
    docs: Sequence[dict],
    tokenizer: Any,
    *,
    labels: str,
    max_seq_length: int,
    stride: int,
    global_attention_types: Sequence[str] = (),
    use_structure: bool = True,
    mentions: Sequence[Sequence[tuple[int, int, int]]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Windows for every document, with ``doc_index`` (position in ``docs``) added.

    ``labels`` is ``"bio"`` (BIO ``labels`` over ``NER_LABELS``, the scirex-ner task) or ``"mentions"``
    (a label per mention span, scirex-salient): the gold mentions of :func:`salient_mentions`, or, when
    ``mentions`` is given, ``mentions[i]`` for ``docs[i]`` (e.g. a NER model's predicted spans).
    With ``use_structure``, sub-tokens of headings whose level is in ``global_attention_types``
    are global and ``section_ids`` follow SciREX's sections; without it, no token is global and
    every token is in section 0, as in the plain corpus.
    """
    if labels not in ("bio", "mentions"):
        raise ValueError(f"unknown SciREX labels {labels!r}; expected 'bio' or 'mentions'")
    if mentions is not None and len(mentions) != len(docs):
        raise ValueError(f"{len(mentions)} mention lists for {len(docs)} documents")
    label_ids = {label: index for index, label in enumerate(NER_LABELS)}
    global_types = set(global_attention_types)
    all_windows: list[dict[str, np.ndarray]] = []
    for doc_index, doc in enumerate(docs):
        if use_structure:
            word_global = [level is not None and level in global_types for level in heading_levels(doc)]
            word_sections: list[int] | None = section_ids(doc)
        else:
            word_global, word_sections = None, None
        doc_mentions = None
        if labels == "mentions":
            doc_mentions = salient_mentions(doc) if mentions is None else list(mentions[doc_index])
        windows = make_windows(
            tokenizer,
            doc["words"],
            max_seq_length=max_seq_length,
            stride=stride,
            word_labels=[label_ids[label] for label in bio_labels(doc)] if labels == "bio" else None,
            word_global=word_global,
            word_sections=word_sections,
            mentions=doc_mentions,
        )
        for window in windows:
            window["doc_index"] = np.int64(doc_index)
        all_windows.extend(windows)
    return all_windows
