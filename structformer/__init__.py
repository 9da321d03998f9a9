"""StructFormer: structure-aware pre-training of long-document encoders.

The model classes are loaded on first use (PEP 562), because they import torch and transformers
(seconds) and ``structformer --help`` needs neither. Importing ``structformer.modeling``, directly or
by getting a class from this package (``structformer.StructBertConfig``), registers StructBERT with the
transformers Auto classes (``modeling/__init__.py``), so ``AutoModelForMaskedLM.from_config(config)``
and ``AutoConfig.from_pretrained(folder)`` work in-process without ``trust_remote_code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structformer.modeling import (
        StructBertConfig,
        StructBertForMaskedLM,
        StructBertForMentionClassification,
        StructBertForSequenceClassification,
        StructBertForTokenClassification,
        StructBertModel,
    )

__all__ = [
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForMentionClassification",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "__version__",
]
__version__ = "0.1.0"

# Loaded by __getattr__ on first use.
_MODEL_CLASSES = frozenset(name for name in __all__ if name.startswith("StructBert"))


def __getattr__(name: str) -> Any:
    if name in _MODEL_CLASSES:
        from structformer import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODEL_CLASSES])
