"""SciREX loading, the split, structure, and the windowing round trip (tiny tokenizer, no model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from transformers import BertTokenizer

from structformer.errors import InputError
from structformer.trainers.scirex import (
    HASH_SPLIT,
    NER_LABELS,
    OFFICIAL_SPLIT,
    ScirexFormatError,
    bio_labels,
    bio_spans,
    encode_words,
    heading_levels,
    load_scirex,
    load_scirex_splits,
    make_windows,
    salient_mentions,
    scirex_windows,
    section_ids,
    split_scirex,
    stitch_word_predictions,
    window_starts,
)

REAL_SCIREX = Path(__file__).resolve().parents[2] / "shared" / "data" / "scirex" / "train.jsonl"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "network" and "learning" split into two sub-tokens; "zzz" is unknown; "" produces no sub-token.
PIECES = [
    "document",
    "section",
    "subsection",
    "theorem",
    ":",
    ".",
    ",",
    "deep",
    "net",
    "##work",
    "learn",
    "##ing",
]
PIECES += [
    "we",
    "use",
    "a",
    "for",
    "segmentation",
    "accuracy",
    "cityscapes",
    "intro",
    "results",
    "title",
    "model",
]
BODY_WORDS = [
    "we",
    "use",
    "a",
    "network",
    "for",
    "segmentation",
    "learning",
    "accuracy",
    "cityscapes",
    "model",
    "zzz",
    "",
]


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={token: index for index, token in enumerate(SPECIALS + PIECES)})


def make_doc(
    doc_id: str, n_sections: int = 3, body_length: int = 12, seed: int = 0, marked_title: bool = True
) -> dict:
    """A SciREX-format document: title section, then '<marker> : heading' sections with body text."""
    rng = random.Random(seed)
    words: list[str] = []
    sentences, sections = [], []
    title = ["document", ":", "deep", "network", "title"] if marked_title else ["deep", "network", "title"]
    words += title
    sentences.append([0, len(words)])
    markers = ["section", "subsection", "theorem"]
    for index in range(n_sections + 1):
        start = len(words)
        if index > 0:
            heading = [markers[(index - 1) % 3], ":", "intro" if index == 1 else "results"]
            words += heading
            sentences.append([start, len(words)])
        body_start = len(words)
        words += [rng.choice(BODY_WORDS) for _ in range(body_length)] + ["."]
        sentences.append([body_start, len(words)])
        sections.append([start if index > 0 else 0, len(words)])
    # Mentions: every "network"/"segmentation"/"accuracy" word, and "deep network" pairs.
    ner, i = [], 0
    while i < len(words):
        if words[i] == "deep" and i + 1 < len(words) and words[i + 1] == "network":
            ner.append([i, i + 2, "Method"])
            i += 2
            continue
        kind = {
            "network": "Method",
            "segmentation": "Task",
            "accuracy": "Metric",
            "cityscapes": "Material",
        }.get(words[i])
        if kind:
            ner.append([i, i + 1, kind])
        i += 1
    rng.shuffle(ner)  # SciREX does not sort ner
    salient = [span[:2] for span in ner if span[2] in ("Method", "Task")]
    coref = {"Deep_Network": salient, "Empty_Entity": []}
    return {
        "doc_id": doc_id,
        "words": words,
        "sentences": sentences,
        "sections": sections,
        "ner": ner,
        "coref": coref,
        "coref_non_salient": {},
        "n_ary_relations": [],
        "method_subrelations": {},
    }


def write_jsonl(path: Path, docs: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(doc) for doc in docs]
    for index, line in (raw_lines or {}).items():
        lines[index] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- loading


def test_load_reads_documents_and_sorts_ner(tmp_path: Path) -> None:
    docs = [make_doc(f"doc{i}", seed=i) for i in range(3)]
    loaded = load_scirex(write_jsonl(tmp_path / "train.jsonl", docs))
    assert [d["doc_id"] for d in loaded] == ["doc0", "doc1", "doc2"]
    for original, doc in zip(docs, loaded):
        assert doc["words"] == original["words"]
        assert doc["ner"] == sorted(original["ner"], key=lambda s: s[0])
        assert len(doc["ner"]) == len(original["ner"]) > 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"doc_id": "x", "words": ["a"]}), "missing key(s) sentences, sections, ner, coref"),
        ("NER_OUT_OF_RANGE", "ner span [3, 99, 'Method'] is not a non-empty [start, end) span"),
        ("NER_OVERLAP", "overlap"),
        ("NER_TYPE", "has type 'Dataset'"),
        ("SECTIONS_GAP", "sections do not tile the words"),
        ("COREF_SPAN", "coref['Deep_Network'] span"),
        ("DUPLICATE", "doc_id doc0 repeats line 1"),
    ],
)
def test_broken_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    docs = [make_doc(f"doc{i}", seed=i) for i in range(3)]
    bad = make_doc("bad", seed=7)
    if line == "NER_OUT_OF_RANGE":
        bad["ner"].append([3, 99, "Method"])
    elif line == "NER_OVERLAP":
        bad["ner"] = [[0, 3, "Task"], [2, 4, "Method"]]
    elif line == "NER_TYPE":
        bad["ner"] = [[0, 1, "Dataset"]]
    elif line == "SECTIONS_GAP":
        bad["sections"][1][0] += 1
    elif line == "COREF_SPAN":
        bad["coref"]["Deep_Network"].append([5, 5])
    elif line == "DUPLICATE":
        bad["doc_id"] = "doc0"
    raw = line if line.startswith(("{", "[")) else json.dumps(bad)
    path = write_jsonl(tmp_path / "broken.jsonl", docs, {2: raw})
    with pytest.raises(ScirexFormatError) as error:
        load_scirex(path)
    assert str(error.value).startswith(f"{path}:3")
    assert message in str(error.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_scirex(tmp_path / "nothing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ScirexFormatError, match="empty.jsonl: no documents"):
        load_scirex(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_order_free() -> None:
    docs = [{"doc_id": f"{i:040x}"} for i in range(600)]
    splits = split_scirex(docs)
    ids = {name: [d["doc_id"] for d in part] for name, part in splits.items()}
    assert set(ids) == {"train", "dev", "test"}
    assert sum(len(v) for v in ids.values()) == 600
    assert set(ids["train"]).isdisjoint(ids["dev"]) and set(ids["dev"]).isdisjoint(ids["test"])
    assert set(ids["train"]).isdisjoint(ids["test"])
    assert 0.62 < len(ids["train"]) / 600 < 0.78 and 0.09 < len(ids["dev"]) / 600 < 0.21
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    again = split_scirex(shuffled[:300])  # another order, a subset: membership does not move
    for name, part in again.items():
        assert {d["doc_id"] for d in part} <= set(ids[name])
    assert {name: [d["doc_id"] for d in part] for name, part in split_scirex(docs).items()} == ids


def test_official_split_files_are_used_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "scirex"
    folder.mkdir()
    names = {"train": ["t1", "t2", "t3"], "dev": ["d1"], "test": ["x1", "x2"]}
    for split, ids in names.items():
        write_jsonl(folder / f"{split}.jsonl", [make_doc(i, seed=k) for k, i in enumerate(ids)])
    splits, source = load_scirex_splits(folder)
    assert source == OFFICIAL_SPLIT
    assert {name: [d["doc_id"] for d in docs] for name, docs in splits.items()} == names
    assert [d["doc_id"] for d in load_scirex_splits(folder, max_docs=1)[0]["train"]] == ["t1"]
    one_file, source = load_scirex_splits(folder / "train.jsonl")
    assert source == HASH_SPLIT and sum(map(len, one_file.values())) == 3
    write_jsonl(folder / "dev.jsonl", [make_doc("t2")])
    with pytest.raises(InputError, match="'t2' is in both train and dev"):
        load_scirex_splits(folder)
    (folder / "test.jsonl").unlink()
    with pytest.raises(InputError, match="needs train.jsonl, dev.jsonl and test.jsonl"):
        load_scirex_splits(folder)


@pytest.mark.skipif(not REAL_SCIREX.is_file(), reason="the SciREX training file is not present")
def test_real_scirex_file_loads_and_splits() -> None:
    docs = load_scirex(REAL_SCIREX)
    assert len(docs) == 306
    assert {name: len(part) for name, part in split_scirex(docs).items()} == {
        "train": 224,
        "dev": 39,
        "test": 43,
    }
    levels = heading_levels(docs[0])
    assert [w for w, lv in zip(docs[0]["words"], levels) if lv == "title"][:3] == ["Full", "-", "Resolution"]
    assert levels[13] == "section" and docs[0]["words"][13] == "Abstract"


# ---------------------------------------------------------------------------------- structure and labels


def test_heading_levels_and_sections() -> None:
    doc = make_doc("d", n_sections=3, body_length=4)
    levels = heading_levels(doc)
    words = doc["words"]
    headed = [(i, words[i], level) for i, level in enumerate(levels) if level]
    # Title after "document :", then "section : intro" and "subsection : results"; theorem has no level.
    assert [(w, lv) for _, w, lv in headed] == [
        ("deep", "title"),
        ("network", "title"),
        ("title", "title"),
        ("intro", "section"),
        ("results", "subsection"),
    ]
    assert words[headed[3][0] - 2 : headed[3][0]] == ["section", ":"]
    ids = section_ids(doc)
    assert ids[0] == 0 and ids[-1] == 3 and sorted(set(ids)) == [0, 1, 2, 3]
    for number, (start, end) in enumerate(doc["sections"]):
        assert ids[start:end] == [number] * (end - start)

    unmarked = make_doc("u", marked_title=False)
    assert heading_levels(unmarked)[:3] == ["title"] * 3
    # A first sentence ending with a period is the abstract, not a title.
    unmarked["words"][unmarked["sentences"][0][1] - 1] = "."
    assert heading_levels(unmarked)[:3] == [None] * 3


def test_bio_and_salient_labels() -> None:
    doc = make_doc("d", seed=4, body_length=30)
    doc["ner"] = sorted(doc["ner"])
    labels = bio_labels(doc)
    for start, end, kind in doc["ner"]:
        assert labels[start] == f"B-{kind}" and labels[start + 1 : end] == [f"I-{kind}"] * (end - start - 1)
    assert sum(label != "O" for label in labels) == sum(end - start for start, end, _ in doc["ner"])
    assert set(labels) <= set(NER_LABELS)
    mentions = salient_mentions(doc)
    assert [(s, e) for s, e, _ in mentions] == [(s, e) for s, e, _ in doc["ner"]]
    assert [label for _, _, label in mentions] == [
        int(kind in ("Method", "Task")) for _, _, kind in doc["ner"]
    ]
    assert 0 < sum(label for *_, label in mentions) < len(mentions)


def test_bio_spans_invert_bio_labels_and_read_stray_tags_as_seqeval_does() -> None:
    doc = make_doc("d", seed=4, body_length=30)
    assert bio_spans(bio_labels(doc)) == [list(span) for span in sorted(map(tuple, doc["ner"]))]
    tags = ["I-Task", "I-Task", "O", "B-Method", "I-Method", "I-Task", "B-Metric", "B-Metric", "I-Metric"]
    assert bio_spans(tags) == [
        [0, 2, "Task"],
        [3, 5, "Method"],
        [5, 6, "Task"],
        [6, 7, "Metric"],
        [7, 9, "Metric"],
    ]
    assert bio_spans([]) == [] and bio_spans(["O", "O"]) == []


def test_global_tokens_land_on_heading_words() -> None:
    tokenizer = tiny_tokenizer()
    doc = make_doc("d", n_sections=3, body_length=6)
    windows = scirex_windows(
        [doc],
        tokenizer,
        labels="bio",
        max_seq_length=512,
        stride=0,
        global_attention_types=["cls", "title", "section"],
    )
    assert len(windows) == 1
    window = windows[0]
    ids, token_words = encode_words(tokenizer, doc["words"])
    levels = heading_levels(doc)
    expected = [int(levels[w] in ("title", "section")) for w in token_words]
    assert window["global_attention_mask"].tolist() == [0, *expected, 0]
    # Exactly one position per word (its first sub-token) carries the word index and label.
    word_index = window["word_index"]
    assert word_index[word_index >= 0].tolist() == list(range(len(doc["words"])))
    assert (window["labels"] >= 0).tolist() == (word_index >= 0).tolist()
    # "network" in the title is two sub-tokens, both global; the subsection heading is not.
    global_tokens = tokenizer.convert_ids_to_tokens(window["input_ids"][window["global_attention_mask"] == 1])
    assert global_tokens == ["deep", "net", "##work", "title", "intro"]
    plain = scirex_windows([doc], tokenizer, labels="bio", max_seq_length=512, stride=0, use_structure=False)[
        0
    ]
    assert plain["global_attention_mask"].sum() == 0 and plain["section_ids"].sum() == 0
    assert plain["input_ids"].tolist() == window["input_ids"].tolist()


def test_words_without_subtokens_become_unknown() -> None:
    tokenizer = tiny_tokenizer()
    ids, word_ids = encode_words(tokenizer, ["we", "", "network", "\u200b"])
    assert word_ids.tolist() == [0, 1, 2, 2, 3]
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == ["we", "[UNK]", "net", "##work", "[UNK]"]


# ---------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("num_tokens", "content", "stride"), [(5, 10, 3), (10, 10, 0), (11, 10, 0), (100, 10, 4), (37, 6, 5)]
)
def test_window_starts_cover_with_overlap(num_tokens: int, content: int, stride: int) -> None:
    starts = window_starts(num_tokens, content, stride)
    assert starts[0] == 0 and min(starts[-1] + content, num_tokens) == num_tokens
    for previous, start in zip(starts, starts[1:]):
        assert previous < start and previous + content - start >= stride  # overlap at least `stride`
    with pytest.raises(ValueError, match="stride"):
        window_starts(num_tokens, content, content)


@pytest.mark.parametrize(("max_seq_length", "stride"), [(8, 0), (8, 3), (12, 5), (33, 10), (512, 128)])
def test_round_trip_labels_through_windows(max_seq_length: int, stride: int) -> None:
    tokenizer = tiny_tokenizer()
    doc = make_doc("long", n_sections=5, body_length=40, seed=1)
    gold = [NER_LABELS.index(label) for label in bio_labels(doc)]
    windows = make_windows(
        tokenizer, doc["words"], max_seq_length=max_seq_length, stride=stride, word_labels=gold
    )
    num_tokens = len(encode_words(tokenizer, doc["words"])[0])
    assert num_tokens > len(doc["words"])  # some words are split
    if max_seq_length < num_tokens:
        assert len(windows) > 2
    rng = np.random.default_rng(0)
    predictions = []
    for window in windows:
        assert len(window["input_ids"]) <= max_seq_length
        # Garbage everywhere except first sub-tokens: stitching must read only those.
        row = rng.integers(0, len(NER_LABELS), size=len(window["input_ids"]) + 3)
        first = window["word_index"] >= 0
        row[: len(first)][first] = window["labels"][first]
        assert (window["labels"][~first] == -100).all()
        predictions.append(row)
    assert stitch_word_predictions(windows, predictions, len(doc["words"])) == gold


def test_stitching_takes_the_most_central_window() -> None:
    tokenizer = tiny_tokenizer()
    words = ["we", "use", "a", "model", "for", "segmentation"] * 6
    windows = make_windows(tokenizer, words, max_seq_length=12, stride=6)
    predictions = [np.full(len(w["input_ids"]), k) for k, w in enumerate(windows)]
    chosen = stitch_word_predictions(windows, predictions, len(words))
    for word, window_index in enumerate(chosen):
        scores = []
        for window in windows:
            positions = np.flatnonzero(window["word_index"] == word)
            length = len(window["input_ids"]) - 2
            scores.append(min(positions[0] - 1, length - positions[0]) if len(positions) else -1)
        assert window_index == int(np.argmax(scores))
    assert len(set(chosen)) == len(windows)


@pytest.mark.parametrize(("max_seq_length", "stride"), [(8, 4), (16, 6), (512, 0)])
def test_mentions_land_in_exactly_one_window(max_seq_length: int, stride: int) -> None:
    tokenizer = tiny_tokenizer()
    doc = make_doc("m", n_sections=4, body_length=30, seed=2)
    doc["ner"] = sorted(doc["ner"])
    mentions = salient_mentions(doc)
    windows = make_windows(
        tokenizer, doc["words"], max_seq_length=max_seq_length, stride=stride, mentions=mentions
    )
    _, token_words = encode_words(tokenizer, doc["words"])
    seen = {}
    for window in windows:
        start = int(window["token_start"])
        for (span_start, span_end), label, index in zip(
            window["mention_spans"], window["mention_labels"], window["mention_index"]
        ):
            assert index not in seen
            seen[int(index)] = int(label)
            word_start, word_end, gold = mentions[index]
            assert label == gold
            # The span covers exactly the mention's sub-tokens ([CLS] shifts positions by one).
            covered = token_words[start + span_start - 1 : start + span_end - 1].tolist()
            expected = [w for w in token_words.tolist() if word_start <= w < word_end]
            assert covered == expected
    assert sorted(seen) == list(range(len(mentions)))
