"""The WordPiece trainer is deterministic, and its merges are the ones BPE's rule gives by hand."""

from __future__ import annotations

import hashlib

from structformer.trainers.tokenizer import learn_wordpiece_vocab, tokenizer_hash, train_wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_merges_follow_counts_then_the_smallest_pair() -> None:
    vocab = learn_wordpiece_vocab({"ab": 3, "abc": 1, "bd": 2}, 100, SPECIALS, min_frequency=2)
    # Pairs: (a, ##b) 4, (##b, ##c) 1, (b, ##d) 2 -> "ab" first, then "bd"; (ab, ##c) occurs once: stop.
    alphabet = ["##b", "##c", "##d", "a", "b"]
    assert list(vocab) == [*SPECIALS, *alphabet, "ab", "bd"]
    assert list(vocab.values()) == list(range(len(vocab)))


def test_ties_break_on_the_pair_not_on_hash_order() -> None:
    vocab = learn_wordpiece_vocab({"xy": 2, "ab": 2}, 100, SPECIALS, min_frequency=2)
    assert list(vocab)[-2:] == ["ab", "xy"]
    capped = learn_wordpiece_vocab({"xy": 2, "ab": 2}, len(SPECIALS) + 4 + 1, SPECIALS, min_frequency=2)
    assert list(capped)[-1] == "ab"


def test_two_trainings_give_a_byte_identical_tokenizer(tmp_path) -> None:
    texts = [
        f"Structure aware pre-training of document {i}: headings, sections and paragraphs." for i in range(40)
    ]
    texts += ["Equally frequent pairs tie: ab cd ef gh ij kl mn op qr st uv wx yz."] * 3
    hashes = []
    for name in ("a", "b"):
        tokenizer = train_wordpiece(texts, 120, tmp_path / name)
        hashes.append(tokenizer_hash(tmp_path / name))
        assert len(tokenizer) == 120
    assert hashes[0] == hashes[1]
    assert hashes[0] == hashlib.sha256((tmp_path / "a" / "tokenizer.json").read_bytes()).hexdigest()
    assert tokenizer.tokenize("structure sections") == ["structure", "sections"]
