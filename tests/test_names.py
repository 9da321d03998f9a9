"""Names defined once: the model config's heading types are the corpus schema's levels."""

from __future__ import annotations

from structformer.dataset_scripts.schema import HEADING_LEVELS
from structformer.modeling import configuration_structbert as configuration


def test_config_heading_types_are_the_schema_levels() -> None:
    # The config is remote code (no import of the schema): the two lists are tied here instead.
    assert ("cls", *HEADING_LEVELS) == configuration.GLOBAL_ATTENTION_TYPES
    assert set(configuration.DEFAULT_GLOBAL_ATTENTION_TYPES) <= set(HEADING_LEVELS)


def test_convert_uses_the_config_default() -> None:
    from structformer import convert

    assert convert.DEFAULT_GLOBAL_ATTENTION_TYPES is configuration.DEFAULT_GLOBAL_ATTENTION_TYPES
