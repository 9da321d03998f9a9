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


def test_run_file_names_are_defined_once() -> None:
    """No module but trainers/run_files.py spells a run file's name (a string constant equal to it)."""
    import ast
    from pathlib import Path

    from structformer.trainers import run_files

    names = {value for key, value in vars(run_files).items() if key.isupper()}
    root = Path(__file__).resolve().parents[1]
    spelled = []
    for folder in ("modeling", "dataset_scripts", "trainers", "hub_cards", "structformer"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "run_files.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    spelled.append(f"{path.relative_to(root)}:{node.lineno} {node.value}")
    assert spelled == []
