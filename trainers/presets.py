"""Named model sizes for pre-training from scratch, and loading a config from a preset or a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from structformer.errors import InputError
from structformer.modeling import StructBertConfig

PRESETS: dict[str, dict[str, Any]] = {
    # For CPU smoke tests and the bundled sample: trains in seconds.
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "attention_window": 64,
        "max_position_embeddings": 1024,
    },
    # A laptop- or single-GPU-sized model for quick experiments on long documents.
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "attention_window": 256,
        "max_position_embeddings": 4096,
    },
    # BERT-base / Longformer-base shape, the paper's model size.
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        # The paper's window (Longformer-base's own is 512).
        "attention_window": 256,
        "max_position_embeddings": 4096,
    },
}


def get_model_config(name_or_path: str | Path, **overrides: Any) -> StructBertConfig:
    """Build a ``StructBertConfig`` from a preset name (``tiny``, ``small``, ``base``) or a JSON file.

    The JSON file holds config fields (a ``config.json`` written by ``save_pretrained`` works too);
    a ``"preset"`` key in it starts from that preset. ``overrides`` win over both, so callers set
    ``vocab_size`` and ``pad_token_id`` from their tokenizer here.
    """
    name = str(name_or_path)
    if name in PRESETS:
        fields = dict(PRESETS[name])
    else:
        path = Path(name)
        if not path.is_file():
            raise InputError(
                f"unknown model config {name!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file"
            )
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(fields, dict):
            raise InputError(f"{path}: expected a JSON object of config fields")
        preset = fields.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(f"{path}: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
            fields = {**PRESETS[preset], **fields}
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            fields.pop(key, None)
    fields.update(overrides)
    try:
        return StructBertConfig(**fields)
    except (TypeError, ValueError) as err:  # an unknown field or a value the config rejects
        raise InputError(f"model config {name}: {err}") from None
