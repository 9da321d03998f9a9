"""Tokenization with structure, packing, whole-word masking and corpus loading (trainers/data.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from factories import WORDS, make_corpus, make_record  # noqa: F401

from structformer.dataset_scripts.schema import load_corpus
from structformer.trainers.core import EpochShuffleSampler
from structformer.trainers.data import (
    DataCollatorForStructuredMLM,
    first_sequence,
    pack_batch,
    pack_document,
    sequence_features,
    tokenize_with_structure,
)
from structformer.trainers.tokenizer import train_wordpiece


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(1)
    texts = [make_record(rng, str(i))["text"] for i in range(40)]
    return train_wordpiece(texts, 160, tmp_path_factory.mktemp("tok"), min_frequency=1)


def test_global_mask_sections_and_headings_follow_the_spans(tokenizer):
    record = make_record(random.Random(3), "x", n_sections=4)
    out = tokenize_with_structure(tokenizer, record["text"], record["headers"], ["title", "section"])
    enc = tokenizer(record["text"], add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert out["input_ids"] == [tokenizer.cls_token_id, *enc["input_ids"], tokenizer.sep_token_id]
    headings = [h for h in record["headers"] if h["level"] != "title"]
    for i, (start, end) in enumerate(offsets, start=1):
        inside = [h for h in record["headers"] if start < h["end"] and end > h["start"]]
        assert out["heading_mask"][i] == int(bool(inside))
        assert out["global_attention_mask"][i] == int(any(h["level"] in ("title", "section") for h in inside))
        assert out["section_ids"][i] == sum(h["start"] <= start for h in headings)
    assert out["global_attention_mask"][0] == out["global_attention_mask"][-1] == 0
    assert max(out["section_ids"]) == len(headings) == 4
    # subsection headings exist but are not global with these types
    sub = next(h for h in record["headers"] if h["level"] == "subsection")
    sub_tokens = [i + 1 for i, (s, e) in enumerate(offsets) if s < sub["end"] and e > sub["start"]]
    assert sub_tokens and all(
        out["heading_mask"][i] == 1 and out["global_attention_mask"][i] == 0 for i in sub_tokens
    )
    assert out["title_length"] == len(tokenizer(record["title"], add_special_tokens=False)["input_ids"])
    tensors = tokenize_with_structure(
        tokenizer, record["text"], record["headers"], return_tensors="pt", max_length=16
    )
    assert set(tensors) == {"input_ids", "attention_mask", "global_attention_mask", "section_ids"}
    assert tensors["input_ids"].shape == (1, 16) and tensors["input_ids"][0, -1] == tokenizer.sep_token_id


def test_plain_gives_the_same_ids_without_structure(tokenizer):
    record = make_record(random.Random(4), "y")
    structured = tokenize_with_structure(tokenizer, record["text"], record["headers"])
    plain = tokenize_with_structure(tokenizer, record["text"], None)
    assert plain["input_ids"] == structured["input_ids"]
    assert sum(structured["global_attention_mask"]) > 0
    assert sum(plain["global_attention_mask"]) == 0 and set(plain["section_ids"]) == {0}
    assert plain["word_ids"] == structured["word_ids"]


def test_bad_headers_are_rejected(tokenizer):
    with pytest.raises(ValueError, match=r"headers\[0\].*outside"):
        tokenize_with_structure(tokenizer, "short", [{"start": 0, "end": 99, "level": "title"}])
    with pytest.raises(ValueError, match="unknown level"):
        tokenize_with_structure(tokenizer, "short", [{"start": 0, "end": 2, "level": "part"}])


def test_packing_keeps_every_token_and_prefixes_the_title(tokenizer):
    record = make_record(random.Random(5), "z", n_sections=5, paragraphs=4)
    doc = tokenize_with_structure(tokenizer, record["text"], record["headers"], add_special_tokens=False)
    max_len = 64
    seqs = pack_document(doc, max_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert len(seqs) > 3
    title_len = min(doc["title_length"], max_len // 4)
    title = doc["input_ids"][:title_len]
    content, cuts = [], []
    for k, seq in enumerate(seqs):
        ids = seq["input_ids"]
        assert len(ids) <= max_len
        assert all(
            len(seq[f]) == len(ids)
            for f in ("global_attention_mask", "section_ids", "heading_mask", "word_ids")
        )
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        body = ids[1:-1]
        if k > 0:
            assert body[:title_len] == title and body[title_len] == tokenizer.sep_token_id
            assert (
                seq["global_attention_mask"][1 : 1 + title_len] == [1] * title_len
            )  # the title stays global
            assert seq["section_ids"][1 : 1 + title_len] == [0] * title_len
            body = body[title_len + 1 :]
            cuts.append(len(content))
        content.extend(body)
    assert content == doc["input_ids"]  # nothing dropped, nothing duplicated, order kept
    word_starts = {i for i in range(1, len(doc["word_ids"])) if doc["word_ids"][i] != doc["word_ids"][i - 1]}
    assert all(c in word_starts for c in cuts)
    assert any(c in doc["paragraph_starts"] for c in cuts)
    # section ids of the continuation are the document's own
    flat_sections = []
    for k, seq in enumerate(seqs):
        skip = 1 if k == 0 else 2 + title_len
        flat_sections.extend(seq["section_ids"][skip:-1])
    assert flat_sections == doc["section_ids"]
    # The repeated title is context only: never a label, whatever the masking draws.
    collator = DataCollatorForStructuredMLM(tokenizer, mlm_probability=0.9, seed=0)
    for k, seq in enumerate(seqs[1:]):
        assert seq["word_ids"][: 2 + title_len] == [-1] * (2 + title_len)
        _, labels = collator.mask_whole_words({**seq, "idx": k})
        assert (labels[: 2 + title_len] == -100).all() and (labels != -100).any()


def test_first_sequence_is_the_documents_first_tokens(tokenizer):
    record = make_record(random.Random(5), "z", n_sections=5, paragraphs=4)
    doc = tokenize_with_structure(tokenizer, record["text"], record["headers"], add_special_tokens=False)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    seq = first_sequence(doc, 64, cls_id, sep_id)
    assert seq["input_ids"] == [cls_id, *doc["input_ids"][:62], sep_id]
    assert seq["global_attention_mask"] == [0, *doc["global_attention_mask"][:62], 0]
    assert seq["section_ids"][1:-1] == doc["section_ids"][:62]
    assert all(len(seq[k]) == 64 for k in seq)
    # The same as truncating with the special tokens (the paper's evaluation of the first N tokens).
    truncated = tokenize_with_structure(tokenizer, record["text"], record["headers"], max_length=64)
    assert seq["input_ids"] == truncated["input_ids"]
    short = first_sequence(doc, 10_000, cls_id, sep_id)
    assert short["input_ids"][1:-1] == doc["input_ids"]
    assert first_sequence({k: [] for k in doc}, 64, cls_id, sep_id) is None
    batch = {"text": [record["text"]] * 2, "headers": [record["headers"]] * 2}
    packed = pack_batch(
        batch, tokenizer=tokenizer, max_seq_length=64, global_attention_types=["title"], use_headers=True
    )
    assert packed["input_ids"] == [seq["input_ids"]] * 2 and packed["length"] == [64, 64]


def test_whole_word_masking_masks_whole_words(tokenizer):
    rng = random.Random(6)
    collator = DataCollatorForStructuredMLM(tokenizer, seed=0)
    actions = {"mask": 0, "random_or_kept": 0}
    total_labels = total_words = 0
    for k in range(30):
        record = make_record(rng, str(k))
        doc = tokenize_with_structure(tokenizer, record["text"], record["headers"], add_special_tokens=False)
        seq = pack_document(doc, 256, tokenizer.cls_token_id, tokenizer.sep_token_id)[0]
        masked, labels = collator.mask_whole_words({**seq, "idx": k})
        word_ids = np.asarray(seq["word_ids"])
        chosen = labels != -100
        for w in set(word_ids[word_ids >= 0].tolist()):
            members = chosen[word_ids == w]
            assert members.all() or not members.any(), "a word was partly masked"
        assert not chosen[word_ids < 0].any()  # special tokens never
        assert (labels[chosen] == np.asarray(seq["input_ids"])[chosen]).all()
        assert (masked[~chosen] == np.asarray(seq["input_ids"])[~chosen]).all()
        actions["mask"] += int((masked[chosen] == tokenizer.mask_token_id).sum())
        actions["random_or_kept"] += int((masked[chosen] != tokenizer.mask_token_id).sum())
        total_labels += int(chosen.sum())
        total_words += int((word_ids >= 0).sum())
    assert abs(total_labels / total_words - 0.15) < 0.02
    assert 0.7 < actions["mask"] / total_labels < 0.9
    # masking depends only on (seed, epoch, idx)
    a = collator.mask_whole_words({**seq, "idx": 7})[1]
    assert (a == collator.mask_whole_words({**seq, "idx": 7})[1]).all()
    collator.set_epoch(1)
    assert not (a == collator.mask_whole_words({**seq, "idx": 7})[1]).all()


def test_headings_can_be_protected_from_masking(tokenizer):
    collator = DataCollatorForStructuredMLM(tokenizer, mask_headings=False, mlm_probability=0.5)
    record = make_record(random.Random(8), "h")
    doc = tokenize_with_structure(tokenizer, record["text"], record["headers"], add_special_tokens=False)
    seq = pack_document(doc, 512, tokenizer.cls_token_id, tokenizer.sep_token_id)[0]
    for idx in range(10):
        _, labels = collator.mask_whole_words({**seq, "idx": idx})
        assert not (labels[np.asarray(seq["heading_mask"]) == 1] != -100).any()
        assert (labels != -100).sum() > 0


def test_collator_pads_every_field_to_window_multiples(tokenizer):
    rng = random.Random(9)
    features = []
    for k, n in enumerate((3, 1, 2)):
        record = make_record(rng, str(k), n_sections=n, paragraphs=1, words=5)
        doc = tokenize_with_structure(tokenizer, record["text"], record["headers"], add_special_tokens=False)
        features.append(
            {**pack_document(doc, 1024, tokenizer.cls_token_id, tokenizer.sep_token_id)[0], "idx": k}
        )
    lengths = [len(f["input_ids"]) for f in features]
    batch = DataCollatorForStructuredMLM(tokenizer, pad_to_multiple_of=64)(features)
    width = -(-max(lengths) // 64) * 64
    assert set(batch) == {"input_ids", "attention_mask", "global_attention_mask", "section_ids", "labels"}
    for key, tensor in batch.items():
        assert tensor.shape == (3, width) and tensor.dtype == torch.long, key
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == -100).all()
        assert (batch["global_attention_mask"][row, n:] == 0).all()
        assert batch["global_attention_mask"][row, :n].tolist() == features[row]["global_attention_mask"]
        assert batch["section_ids"][row, :n].tolist() == features[row]["section_ids"]
    unpadded = DataCollatorForStructuredMLM(tokenizer)(features)
    assert unpadded["input_ids"].shape == (3, max(lengths))


def test_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(EpochShuffleSampler(50, seed=3))
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == list(range(50)) and list(sampler) != first


def test_corpus_loading_and_packing_match_between_configs(tokenizer, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=6, n_validation=2)
    cache = str(tmp_path / "cache")
    structured = load_corpus(
        str(corpus), "arxiv_structured", cache_dir=cache, required_columns=["text", "headers"]
    )
    plain = load_corpus(str(corpus), "arxiv_plain", cache_dir=cache)
    assert structured["train"]["text"] == plain["train"]["text"]
    kwargs = {
        "tokenizer": tokenizer,
        "max_seq_length": 48,
        "global_attention_types": ["title", "section"],
        "document_chunks": "all",
    }
    packed = {}
    for name, ds, use_headers in (("s", structured, True), ("p", plain, False)):
        packed[name] = ds["train"].map(
            pack_batch,
            batched=True,
            remove_columns=ds["train"].column_names,
            features=sequence_features(),
            fn_kwargs={**kwargs, "use_headers": use_headers},
        )
    assert len(packed["s"]) == len(packed["p"]) > len(structured["train"])
    assert packed["s"]["input_ids"] == packed["p"]["input_ids"]
    assert sum(map(sum, packed["s"]["global_attention_mask"])) > 0
    assert sum(map(sum, packed["p"]["global_attention_mask"])) == 0

    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_corpus(str(tmp_path / "missing"), "arxiv_plain")
    with pytest.raises(ValueError, match="no config 'arxiv_other'.*arxiv_plain"):
        load_corpus(str(corpus), "arxiv_other")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['headers'\]"):
        load_corpus(str(corpus), "arxiv_plain", cache_dir=cache, required_columns=["text", "headers"])


def test_train_tokenizer_command_writes_a_loadable_wordpiece(tmp_path):
    from transformers import AutoTokenizer

    from structformer.trainers import tokenizer as tokenizer_module

    corpus = make_corpus(tmp_path / "corpus", n_train=4, n_validation=1)
    out = tmp_path / "tok"
    argv = [
        "--dataset",
        str(corpus),
        "--vocab-size",
        "150",
        "--output-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert tokenizer_module.main(argv) == 0
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded.is_fast and 30 < len(loaded) <= 150
    assert loaded.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = loaded("Attention heading")["input_ids"]
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id
    with pytest.raises(ValueError, match="vocab_size must be larger"):
        train_wordpiece(["a b"], 3, tmp_path / "small")
