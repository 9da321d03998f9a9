"""StructBERT: the remote code that ships to the Hub (it imports only torch and transformers).

This ``__init__`` is not shipped: it registers StructBERT with the transformers Auto classes when the
package is imported, so that ``AutoModelForMaskedLM.from_config(StructBertConfig(...))`` and
``AutoConfig.from_pretrained(folder)`` work in-process without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_structbert import StructBertConfig
from .modeling_structbert import (
    StructBertAttentionInterface,
    StructBertForMaskedLM,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
    StructBertPreTrainedModel,
)

AutoConfig.register(StructBertConfig.model_type, StructBertConfig, exist_ok=True)
AutoModel.register(StructBertConfig, StructBertModel, exist_ok=True)
AutoModelForMaskedLM.register(StructBertConfig, StructBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    StructBertConfig, StructBertForSequenceClassification, exist_ok=True
)
AutoModelForTokenClassification.register(StructBertConfig, StructBertForTokenClassification, exist_ok=True)

__all__ = [
    "StructBertAttentionInterface",
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "StructBertPreTrainedModel",
]
