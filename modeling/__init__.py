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

from .attention_structbert import StructBertAttentionInterface, StructBertMaskInterface
from .configuration_structbert import StructBertConfig
from .modeling_structbert import (
    MentionClassifierOutput,
    StructBertForMaskedLM,
    StructBertForMentionClassification,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
    StructBertPreTrainedModel,
)

AutoConfig.register(StructBertConfig.model_type, StructBertConfig, exist_ok=True)
# A tuple: transformers picks the class named in a checkpoint's `architectures` (the encoder by default), so
# AutoModel loads a mention-classification checkpoint with its head in-process as it does through remote code.
AutoModel.register(StructBertConfig, (StructBertModel, StructBertForMentionClassification), exist_ok=True)
AutoModelForMaskedLM.register(StructBertConfig, StructBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    StructBertConfig, StructBertForSequenceClassification, exist_ok=True
)
AutoModelForTokenClassification.register(StructBertConfig, StructBertForTokenClassification, exist_ok=True)

__all__ = [
    "MentionClassifierOutput",
    "StructBertAttentionInterface",
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForMentionClassification",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertMaskInterface",
    "StructBertModel",
    "StructBertPreTrainedModel",
]
