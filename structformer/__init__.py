"""StructFormer: structure-aware pre-training of long-document encoders.

Importing the package registers StructBERT with the transformers Auto classes, so
``AutoModelForMaskedLM.from_config(StructBertConfig(...))`` works in-process without
``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from structformer.modeling import (
    StructBertConfig,
    StructBertForMaskedLM,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
)

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    AutoConfig.register(StructBertConfig.model_type, StructBertConfig, exist_ok=True)
    AutoModel.register(StructBertConfig, StructBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(StructBertConfig, StructBertForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(
        StructBertConfig, StructBertForSequenceClassification, exist_ok=True
    )
    AutoModelForTokenClassification.register(
        StructBertConfig, StructBertForTokenClassification, exist_ok=True
    )


_register_auto_classes()

__all__ = [
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "__version__",
]
