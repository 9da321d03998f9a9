"""Every claim of a model card is proven by an artifact (hub_cards/cards.py, model part; issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

from factories import build_tiny_model
from huggingface_hub import ModelCard

from structformer.hub_cards import cards

SMOKE_REPORT = {
    "inputs": 7,
    "records": 6,
    "rejects": 1,
    "reasons": {"pdf_only": 1},
    "splits": {"train": 4, "validation": 2},
    "stats": {},
    "options": {},
}


def _experiment_model(root: Path, **config) -> Path:
    """EXP/models/seed-1/structured with EXP/corpus/build_report.json, as `structformer experiment` lays it out."""
    model_dir = build_tiny_model(root / "models" / "seed-1" / "structured", **config)
    (root / "corpus").mkdir()
    (root / "corpus" / "build_report.json").write_text(json.dumps(SMOKE_REPORT))
    args = json.loads((model_dir / "training_args.json").read_text())
    # the experiment's work folder, renamed into place since: the recorded path no longer exists
    args |= {
        "dataset": "/tmp/.experiment.tmp-x/corpus",
        "max_seq_length": 64,
        "max_steps": 2,
        "vocab_size": 30522,
    }
    (model_dir / "training_args.json").write_text(json.dumps(args))
    (model_dir / "metrics.jsonl").write_text('{"step": 2, "loss": 10.08}\n{"step": 2, "eval_loss": 9.9}\n')
    eval_results = json.loads((model_dir / "eval_results.json").read_text()) | {"train_tokens_seen": 1024}
    (model_dir / "eval_results.json").write_text(json.dumps(eval_results))
    return model_dir


def _card(model_dir: Path, **kwargs) -> ModelCard:
    card, _ = cards.render_model_card(model_dir, **kwargs)
    return card


def test_smoke_model_card_says_what_was_trained_and_claims_nothing_else(tmp_path):
    model_dir = _experiment_model(tmp_path, max_position_embeddings=128)
    card = _card(model_dir)
    text = card.text
    assert (
        "> **A smoke test, not a usable model.**" in text and "1,024 training tokens, under 1,000,000" in text
    )
    # positions and trained length, both
    assert "Its position\nembeddings cover 128 tokens; it was\ntrained on sequences of 64 tokens" in text
    assert "| position embeddings | 128 |" in text and "| trained sequence length | 64 |" in text
    assert "reads\ninputs of up to" not in text
    # the vocabulary the model has, not the unused tokenizer option
    assert "| `vocab_size` | `99 (config.json; the option was 30522)` |" in text
    assert "30522` |" not in text
    # the corpus, from its build report, without a language claim
    corpus = (
        "6 papers converted from LaTeX (4 train, 2 validation), built from 7 inputs (rejected: 1 pdf_only)"
    )
    assert f"**Corpus.** 2 steps on {corpus} (`build_report.json`)." in text
    assert f"- The model was pre-trained on {corpus} (`build_report.json`); expect" in text
    assert "English" not in text and card.data.language is None
    # one logged step: no trend
    assert "went from" not in text
    assert "The training loss was logged once: 10.08 at step 2 (`metrics.jsonl`)." in text
    # an install line that works
    assert "pip install structformer" not in text and "`pip install -e .`" in text


def test_experiment_results_decide_the_smoke_test(tmp_path):
    model_dir = _experiment_model(tmp_path)
    scale = {"smoke_test": True, "reasons": ["the 95% interval is 3.100 bits wide"]}
    results = {"bits": {"scale": scale}}
    assert cards._smoke_test(model_dir, results, None) == ["the 95% interval is 3.100 bits wide"]
    assert cards._smoke_test(model_dir, {"bits": {"scale": {"smoke_test": False}}}, None) is None


def test_a_full_scale_model_has_no_smoke_banner(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    eval_results = json.loads((model_dir / "eval_results.json").read_text()) | {
        "train_tokens_seen": 5_000_000
    }
    (model_dir / "eval_results.json").write_text(json.dumps(eval_results))
    assert "smoke test" not in _card(model_dir).text


def test_init_from_becomes_base_model(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    args = json.loads((model_dir / "training_args.json").read_text())
    (model_dir / "training_args.json").write_text(
        json.dumps(args | {"init_from": "allenai/longformer-base-4096"})
    )
    card = _card(model_dir)
    assert card.data.base_model == "allenai/longformer-base-4096"
    assert (
        "initialised from [`allenai/longformer-base-4096`](https://huggingface.co/allenai/longformer-base-4096)"
        in (card.text)
    )
    # a local checkpoint is named in the text, never as a Hub id in the metadata
    (model_dir / "training_args.json").write_text(
        json.dumps(args | {"init_from": str(tmp_path / "bert-mini")})
    )
    card = _card(model_dir)
    assert card.data.base_model is None
    assert "initialised from a local checkpoint (`bert-mini`)" in card.text
    # an explicit base_model wins
    assert _card(model_dir, base_model="org/bert-mini").data.base_model == "org/bert-mini"
