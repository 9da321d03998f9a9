"""Shared fixtures: tiny StructBERT configs, models and a structured batch (no downloads)."""

from __future__ import annotations

import os

# Nothing may download at test time: the Hub clients fail at once instead of retrying a network that
# is not there (set before transformers and huggingface_hub read it at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from structformer import StructBertConfig, StructBertForMaskedLM

# The house tiny size: hidden 32, 2 layers, 4 heads, intermediate 37, vocab 99.
TINY_CONFIG_KWARGS = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 512,
    "attention_window": 4,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


@pytest.fixture
def tiny_config_kwargs() -> dict:
    """The keyword arguments of the tiny config (a fresh copy; edit freely)."""
    return dict(TINY_CONFIG_KWARGS)


@pytest.fixture
def make_tiny_config() -> Callable[..., StructBertConfig]:
    """Factory: `make_tiny_config(attention_window=8, ...)` is the tiny config with overrides."""

    def make(**overrides) -> StructBertConfig:
        return StructBertConfig(**{**TINY_CONFIG_KWARGS, **overrides})

    return make


@pytest.fixture
def tiny_config(make_tiny_config) -> StructBertConfig:
    return make_tiny_config()


@pytest.fixture
def tiny_mlm(tiny_config) -> StructBertForMaskedLM:
    """A seeded tiny masked-LM model in eval mode."""
    torch.manual_seed(0)
    return StructBertForMaskedLM(tiny_config).eval()


@pytest.fixture(scope="session")
def save_tiny_checkpoint() -> Callable[..., Path]:
    """Factory: ``save_tiny_checkpoint(directory, tokenizer, **config_overrides)`` saves a seeded tiny
    StructBERT masked-LM and the tokenizer there (the house tiny size, vocabulary sized to the tokenizer
    unless overridden) and returns the folder: a checkpoint as ``pretrain`` writes it."""

    def save(directory: Path, tokenizer: Any, **overrides: Any) -> Path:
        torch.manual_seed(0)
        config = StructBertConfig(**{**TINY_CONFIG_KWARGS, "vocab_size": len(tokenizer), **overrides})
        StructBertForMaskedLM(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return Path(directory)

    return save


@pytest.fixture
def structured_batch() -> dict[str, torch.Tensor]:
    """Four rows of length 24: padding in rows 1-3, a different number and position of global tokens per
    row (row 3 has none, so without a global [CLS] its padding rows have no key at all), and section ids
    that change at each global (heading) token."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 99, (4, 24), generator=generator)
    attention_mask = torch.ones(4, 24, dtype=torch.long)
    attention_mask[1, 17:] = 0
    attention_mask[2, 9:] = 0
    attention_mask[3, 7:] = 0
    global_attention_mask = torch.zeros(4, 24, dtype=torch.long)
    global_attention_mask[0, [3, 11, 20]] = 1
    global_attention_mask[1, [6]] = 1
    global_attention_mask[2, [2, 5]] = 1
    section_ids = global_attention_mask.cumsum(dim=1)
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "global_attention_mask": global_attention_mask,
        "section_ids": section_ids,
    }
