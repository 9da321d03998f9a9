"""The folders depend one way: modeling <- dataset_scripts <- trainers <- hub_cards <- cli (structformer/: the
command line, and the experiment, which runs every part and writes the model cards)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first; a module may import its own layer and the layers before it. structformer/'s small shared
# modules (errors, folder_lock, arguments) are importable from every layer.
LAYERS = ["modeling", "dataset_scripts", "trainers", "hub_cards"]
SHARED = {"structformer.errors", "structformer.folder_lock", "structformer.arguments"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "structformer" and parts[1] in LAYERS else None


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for folder in LAYERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    target = layer_of(name)
                    if name not in SHARED and target and LAYERS.index(target) > LAYERS.index(folder):
                        found.add((str(path.relative_to(ROOT)), target))
    return found


def test_folders_depend_one_way() -> None:
    assert upward_imports() == set()


def test_the_corpus_build_loads_neither_torch_nor_transformers() -> None:
    code = "import sys, structformer.dataset_scripts.build; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
