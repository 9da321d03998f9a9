"""StructBERT: the remote code that ships to the Hub (it imports only torch and transformers)."""

from .configuration_structbert import StructBertConfig
from .modeling_structbert import (
    StructBertForMaskedLM,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
    StructBertPreTrainedModel,
)

__all__ = [
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "StructBertPreTrainedModel",
]
