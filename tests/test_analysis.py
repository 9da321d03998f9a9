"""Attention analysis: measures against closed-form numbers, the full command, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from structformer.modeling import StructBertConfig, StructBertModel
from structformer.trainers import analyze_attention as aa

WINDOW = 4  # a token attends to +-2


def uniform_model(global_types: list[str]) -> StructBertModel:
    """A 1-layer StructBERT whose attention is uniform over the allowed keys (Q = K = 0)."""
    config = StructBertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        attention_window=WINDOW,
        global_attention_types=global_types,
        max_position_embeddings=64,
    )
    model = StructBertModel(config).eval()
    attention = model.encoder.layer[0].attention.self
    with torch.no_grad():
        for linear in (attention.query, attention.key):
            linear.weight.zero_()
            linear.bias.zero_()
    return model


def toy_document() -> aa.ProbeDocument:
    # [CLS] T T b b H b b b [SEP]: a two-token title, a one-token section heading at 5.
    n = 10
    special = torch.zeros(n, dtype=torch.bool)
    special[[0, 9]] = True
    heading = torch.zeros(n, dtype=torch.bool)
    heading[[1, 2, 5]] = True
    keyword = torch.zeros(n, dtype=torch.bool)
    keyword[[3, 7, 8]] = True
    return aa.ProbeDocument(
        doc_id="toy",
        input_ids=torch.arange(5, 5 + n),
        global_attention_mask=heading.long(),
        section_ids=torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]),
        heading_mask=heading,
        keyword_mask=keyword,
        special_mask=special,
    )


def expected_measures(doc: aa.ProbeDocument, global_positions: set[int]) -> dict[str, float]:
    """The four measures by explicit loops over the attention definition (uniform attention)."""
    n = len(doc.input_ids)
    allowed = [
        [i in global_positions or j in global_positions or abs(i - j) <= WINDOW // 2 for j in range(n)]
        for i in range(n)
    ]
    heading = doc.heading_mask.tolist()
    body = [not h and not s for h, s in zip(heading, doc.special_mask.tolist())]
    keyword, sections = doc.keyword_mask.tolist(), doc.section_ids.tolist()
    share, kw, entropy, distance = [], [], [], []
    for i in range(n):
        keys = [j for j in range(n) if allowed[i][j]]
        entropy.append(math.log(len(keys)))
        distance.append(sum(abs(i - j) for j in keys) / len(keys))
        if body[i]:
            share.append(sum(heading[j] for j in keys) / len(keys))
        own = [j for j in range(n) if keyword[j] and sections[j] == sections[i]]
        if heading[i] and own:
            kw.append(sum(j in own for j in keys) / len(keys))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "heading_share": mean(share),
        "keyword_attention": mean(kw),
        "entropy": mean(entropy),
        "distance": mean(distance),
    }


@pytest.mark.parametrize("mode", ["structure", "plain"])
def test_measures_match_closed_form_on_uniform_attention(mode: str) -> None:
    model = uniform_model(["cls", "title", "section"])
    doc = toy_document()
    result = aa.probe_model(model, [doc, doc], mode)
    globals_ = {0, 1, 2, 5} if mode == "structure" else {0}
    expected = expected_measures(doc, globals_)
    for name, value in expected.items():
        grid = np.array(result[name])
        assert grid.shape == (1, 4)
        np.testing.assert_allclose(grid, value, rtol=1e-6, err_msg=name)
    # Rows counted: 5 body tokens (3, 4, 6, 7, 8) and 3 heading tokens with keywords in their section, per document.
    assert result["heading_share_rows"] == 10
    assert result["keyword_attention_rows"] == 6
    assert result["entropy_rows"] == result["distance_rows"] == 20


def test_closed_form_spot_values() -> None:
    """A few numbers by hand, so the loop reference above cannot share a mistake with the code."""
    model = uniform_model(["cls", "title", "section"])
    doc = toy_document()
    with torch.no_grad():
        outputs = model(
            input_ids=doc.input_ids[None],
            global_attention_mask=doc.global_attention_mask[None],
            section_ids=doc.section_ids[None],
            output_attentions=True,
        )
    probs = outputs.attentions[0][0, 0]
    # Global token 1 sees all 10 keys; body token 7 sees 5..9 plus globals 0, 1, 2: 8 keys.
    torch.testing.assert_close(probs[1], torch.full((10,), 0.1))
    assert int((probs[7] > 0).sum()) == 8
    # Entropy of a global row is log(10), of row 7 log(8); distance of row 1 is (1+0+1+...+8)/10 = 3.7.
    per_row_entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    assert math.isclose(float(per_row_entropy[1]), math.log(10), rel_tol=1e-6)
    assert math.isclose(float(per_row_entropy[7]), math.log(8), rel_tol=1e-6)
    per_row_distance = (probs * (torch.arange(10.0)[:, None] - torch.arange(10.0)[None, :]).abs()).sum(-1)
    assert math.isclose(float(per_row_distance[1]), 3.7, rel_tol=1e-6)
    # Body token 7 gives 3/8 of its mass to the headings 1, 2 (global) and 5 (in its window).
    to_heading = probs[7, [1, 2, 5]].sum()
    assert math.isclose(float(to_heading), 3 / 8, rel_tol=1e-6)


def test_structure_mask_changes_heading_share() -> None:
    model = uniform_model(["cls", "title", "section"])
    doc = toy_document()
    with_structure = np.array(aa.probe_model(model, [doc], "structure")["heading_share"])
    without = np.array(aa.probe_model(model, [doc], "plain")["heading_share"])
    assert (with_structure > without).all()


def test_corpus_keywords_are_frequent_section_words() -> None:
    text = "A Title\n\nabstract words here.\n\nIntro\ngraph graph graph node node edge the the the"
    start = text.index("Intro")
    headers = [
        {"start": 0, "end": 7, "level": "title"},
        {"start": start, "end": start + 5, "level": "section"},
    ]
    spans = aa.corpus_keywords(text, headers, per_section=2)
    words = [text[s:e] for s, e in spans]
    # Section 1 keeps its two most frequent content words ("the" is a stop word); headings never count.
    assert sorted(set(words) - {"abstract", "words", "here"}) == ["graph", "node"]
    assert words.count("graph") == 3 and words.count("node") == 2
    assert "Intro" not in words and "Title" not in words


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, save_tiny_checkpoint):
    """Two tiny saved checkpoints, a tokenizer, and a probe corpus folder."""
    from structformer.trainers.tokenizer import train_wordpiece

    root = tmp_path_factory.mktemp("analysis")
    rows = []
    for k in range(3):
        title = f"Graph Methods {k}"
        abstract = "We study graph neural networks and attention on long documents."
        heading = "Method"
        body = (
            "The graph encoder reads each node and each edge of the graph. Attention spreads over the graph."
        )
        text = f"{title}\n\n{abstract}\n\n{heading}\n{body}"
        start = text.index(f"\n{heading}\n") + 1
        headers = [
            {"start": 0, "end": len(title), "level": "title"},
            {"start": start, "end": start + len(heading), "level": "section"},
        ]
        rows.append({"id": f"doc{k}", "text": text, "headers": headers})
    corpus = root / "corpus"
    (corpus / "data" / "arxiv_structured").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows), corpus / "data" / "arxiv_structured" / "validation-00000-of-00001.parquet"
    )
    tokenizer = train_wordpiece([r["text"] for r in rows] * 5, 99, root / "tok", min_frequency=1)
    checkpoints = [
        save_tiny_checkpoint(root / name, tokenizer, attention_window=8, global_attention_types=types)
        for name, types in (("structured", ["cls", "title", "section"]), ("plain", ["cls"]))
    ]
    return root, corpus, checkpoints


def test_analyze_attention_writes_json_and_figures(tiny_setup, tmp_path) -> None:
    root, corpus, checkpoints = tiny_setup
    out = tmp_path / "out"
    assert (
        aa.main(["--checkpoints", *map(str, checkpoints), "--probe", str(corpus), "--output-dir", str(out)])
        == 0
    )
    results = json.loads((out / "attention.json").read_text())
    assert list(results["checkpoints"]) == ["structured", "plain"]
    assert results["probe"]["documents"] == 3 and results["probe"]["heading_tokens"] > 0
    assert results["probe"]["keyword_tokens"] > 0
    for entry in results["checkpoints"].values():
        for mode in ("structure", "plain"):
            for name in aa.MEASURES:
                grid = np.array(entry["modes"][mode][name], dtype=float)
                assert grid.shape == (2, 4) and np.isfinite(grid).all()
    shares = np.array(results["checkpoints"]["structured"]["modes"]["structure"]["heading_share"])
    assert ((shares > 0) & (shares < 1)).all()
    assert len(results["summary"]) == 2 * 2 * len(aa.MEASURES)
    # The per-layer plot first, then one heatmap figure (both models and their difference) per measure.
    assert results["figures"] == ["attention_per_layer.png"] + [
        f"attention_heatmap_{m}.png" for m in aa.MEASURES
    ]
    for name in results["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_not_structbert_checkpoint_is_refused(tiny_setup, tmp_path) -> None:
    _, corpus, _ = tiny_setup
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type is 'bert', not 'structbert'"):
        aa.main(["--checkpoints", str(bert), "--probe", str(corpus), "--output-dir", str(tmp_path / "o")])


def test_probe_without_headings_is_refused(tiny_setup, tmp_path) -> None:
    _, _, checkpoints = tiny_setup
    probe = tmp_path / "noheadings.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"id": "x", "text": "just body text here", "headers": []}] * 2), probe
    )
    with pytest.raises(ValueError, match=r"noheadings\.parquet: no document has heading tokens"):
        aa.main(
            ["--checkpoints", str(checkpoints[0]), "--probe", str(probe), "--output-dir", str(tmp_path / "o")]
        )


def test_broken_scirex_line_is_named(tiny_setup, tmp_path) -> None:
    _, _, checkpoints = tiny_setup
    broken = tmp_path / "scirex.jsonl"
    broken.write_text('{"doc_id": "a"\n')
    with pytest.raises(ValueError, match=r"scirex\.jsonl:1: not valid JSON"):
        aa.main(
            [
                "--checkpoints",
                str(checkpoints[0]),
                "--probe",
                str(broken),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )


def test_scirex_probe_uses_mentions_as_keywords(tiny_setup, tmp_path) -> None:
    _, _, checkpoints = tiny_setup
    words = [
        "document",
        ":",
        "Graph",
        "Methods",
        "section",
        ":",
        "Method",
        "the",
        "graph",
        "encoder",
        "reads",
        ".",
    ]
    doc = {
        "doc_id": "p1",
        "words": words,
        "sentences": [[0, 4], [4, 7], [7, 12]],
        "sections": [[0, 4], [4, 12]],
        "ner": [[8, 10, "Method"]],
        "coref": {"Graph_encoder": [[8, 10]]},
    }
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    results = aa.analyze(checkpoints[:1], path, tmp_path / "o")
    assert results["probe"]["kind"] == "scirex"
    assert results["probe"]["keyword_tokens"] >= 2
    grid = np.array(results["checkpoints"]["structured"]["modes"]["structure"]["keyword_attention"])
    assert np.isfinite(grid).all() and (grid > 0).all()


def test_keyword_tokens_follow_character_spans() -> None:
    # Tokens: "graph" (0-5), "##s" (5-6), "of" (7-9), "node" (10-14), a special token (0, 0).
    offsets = [(0, 5), (5, 6), (7, 9), (10, 14), (0, 0)]
    mask = aa._char_mask(offsets, [(10, 14), (0, 6)])
    assert mask.tolist() == [True, True, False, True, False]
