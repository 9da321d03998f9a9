"""StructFormer: structure-aware pre-training of long-document encoders.

The model classes are loaded on first use (PEP 562), because they import torch and transformers (seconds)
and ``structformer --help`` needs neither. Importing ``structformer.modeling``, directly or by getting a
class from this package (``structformer.StructBertConfig``, ``from structformer import StructBertModel``),
registers StructBERT with the transformers Auto classes, so ``AutoModelForMaskedLM.from_config(config)`` and
``AutoConfig.from_pretrained(folder)`` work in-process without ``trust_remote_code``.
"""

from __future__ import annotations

import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structformer.modeling import (
        StructBertConfig,
        StructBertForMaskedLM,
        StructBertForSequenceClassification,
        StructBertForTokenClassification,
        StructBertModel,
    )

__all__ = [
    "StructBertConfig",
    "StructBertForMaskedLM",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "__version__",
]
__version__ = "0.1.0"

# Loaded by __getattr__ on first use.
_MODEL_CLASSES = frozenset(name for name in __all__ if name.startswith("StructBert"))


def _register_auto_classes(modeling: ModuleType) -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    config = modeling.StructBertConfig
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(config, modeling.StructBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(config, modeling.StructBertForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(
        config, modeling.StructBertForSequenceClassification, exist_ok=True
    )
    AutoModelForTokenClassification.register(config, modeling.StructBertForTokenClassification, exist_ok=True)


class _RegisteringLoader:
    """Executes ``structformer.modeling`` with the loader that found it, then registers its classes."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register_auto_classes(module)

    def __getattr__(self, name: str) -> Any:
        # get_source, get_resource_reader, is_package...: whatever the real loader offers.
        return getattr(self._loader, name)


class _ModelingFinder(MetaPathFinder):
    """Hooks the import of ``structformer.modeling`` however it is spelled.

    ``from structformer.modeling import X`` never reaches this package's ``__getattr__``, and ``modeling/``
    holds only the remote code that ships to the Hub.
    """

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != f"{__name__}.modeling":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                    return spec
        return None


sys.meta_path.insert(0, _ModelingFinder())


def __getattr__(name: str) -> Any:
    if name in _MODEL_CLASSES:
        from structformer import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODEL_CLASSES])
