"""StructBERT's inputs: wrong shapes fail the same way on every attention path, the task heads name every
input, and the remote code imports only torch, transformers and the standard library."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from structformer import (
    StructBertForMaskedLM,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
)

PATHS = ["eager", "sdpa", "flex_attention", "blocked", "auto"]
MASKS = ["attention_mask", "global_attention_mask", "section_ids"]
MODELING_DIR = Path(__file__).resolve().parents[1] / "modeling"


def section_model(make_tiny_config, implementation: str) -> StructBertModel:
    """A model under the section scope, so that every mask input is read."""
    model = StructBertModel(make_tiny_config(local_attention_scope="section")).eval()
    model.set_attn_implementation(implementation)
    return model


def good_inputs(size: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    global_attention_mask = torch.zeros(size, length, dtype=torch.long)
    global_attention_mask[:, 5] = 1
    return {
        "input_ids": torch.randint(5, 99, (size, length), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "global_attention_mask": global_attention_mask,
        "section_ids": global_attention_mask.cumsum(dim=1),
    }


@pytest.mark.parametrize("implementation", PATHS)
@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("shape", [(1, 12), (2, 13), (2, 1, 12)], ids=["broadcast_batch", "length", "rank"])
def test_wrong_shaped_mask_raises_the_same_error_on_every_path(make_tiny_config, implementation, name, shape):
    """A (1, L) mask used to broadcast in the dense paths and fail deep in the blocked one: every path rejects
    any shape but (B, L), naming the input, its shape and the expected shape."""
    model = section_model(make_tiny_config, implementation)
    inputs = good_inputs()
    inputs[name] = torch.ones(shape, dtype=torch.long)
    expected = rf"^{name} has shape {re.escape(str(shape))}, expected \(B, L\) = \(2, 12\)"
    with torch.no_grad(), pytest.raises(ValueError, match=expected):
        model(**inputs)


@pytest.mark.parametrize("implementation", PATHS)
def test_good_inputs_run_on_every_path(make_tiny_config, implementation):
    """The inputs the error tests break are themselves accepted."""
    with torch.no_grad():
        outputs = section_model(make_tiny_config, implementation)(**good_inputs())
    assert outputs.last_hidden_state.shape == (2, 12, 32)


@pytest.mark.parametrize("implementation", PATHS)
def test_section_scope_without_section_ids_raises_on_every_path(make_tiny_config, implementation):
    model = section_model(make_tiny_config, implementation)
    inputs = good_inputs()
    del inputs["section_ids"]
    with torch.no_grad(), pytest.raises(ValueError, match=r"section.*needs section_ids, shape \(B, L\)"):
        model(**inputs)


def test_unbatched_input_ids_raise(make_tiny_config):
    model = StructBertModel(make_tiny_config()).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"input_ids has shape \(12,\), expected \(B, L\)"):
        model(input_ids=torch.ones(12, dtype=torch.long))
    with torch.no_grad(), pytest.raises(ValueError, match=r"inputs_embeds has shape \(12, 32\)"):
        model(inputs_embeds=torch.ones(12, 32))


@pytest.mark.parametrize(
    "head",
    [StructBertForMaskedLM, StructBertForSequenceClassification, StructBertForTokenClassification],
    ids=lambda head: head.__name__,
)
def test_heads_name_every_input(head):
    """The Trainer keeps only the dataset columns that the forward signature names."""
    parameters = set(inspect.signature(head.forward).parameters)
    model_parameters = set(inspect.signature(StructBertModel.forward).parameters)
    assert parameters == model_parameters | {"labels"}


def imported_modules(path: Path) -> list[tuple[str, int, bool]]:
    """(module, relative level, at module level) for each import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [(alias.name, 0, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.module or "", node.level, id(node) in top_level))
    return imports


@pytest.mark.parametrize(
    "filename", ["configuration_structbert.py", "modeling_structbert.py", "attention_structbert.py"]
)
def test_remote_code_imports_only_torch_transformers_and_stdlib(filename):
    """The Hub loads these two files alone: anything but torch, transformers, the standard library and the
    sibling file is a dependency the model card does not declare."""
    imports = imported_modules(MODELING_DIR / filename)
    assert imports
    for module, level, _ in imports:
        root = module.split(".")[0]
        allowed = level > 0 or root in ("torch", "transformers") or root in sys.stdlib_module_names
        assert allowed, f"{filename} imports {module!r}"
    # FlexAttention is a prototype API: importing it at module level would break loading on a torch without it.
    assert not [m for m, _, top in imports if top and m.startswith("torch.nn.attention.flex_attention")]


def test_import_check_catches_a_third_party_import(tmp_path):
    """The import check above can fail: a third-party import in remote code is reported."""
    source = tmp_path / "remote.py"
    source.write_text("import torch\nfrom huggingface_hub.dataclasses import strict\n", encoding="utf-8")
    roots = {module.split(".")[0] for module, _, _ in imported_modules(source)}
    assert "huggingface_hub" in roots and "huggingface_hub" not in sys.stdlib_module_names


def test_empty_and_wrongly_shaped_embedding_inputs_name_the_input(make_tiny_config):
    """Length 0 and a wrong token_type_ids / position_ids shape used to fail with a RuntimeError from a
    reshape or a size mismatch inside the model."""
    model = StructBertModel(make_tiny_config()).eval()
    ids = torch.ones(2, 12, dtype=torch.long)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"^input_ids has shape \(2, 0\): at least one row"):
            model(input_ids=torch.ones(2, 0, dtype=torch.long))
        for name in ("token_type_ids", "position_ids"):
            with pytest.raises(
                ValueError, match=rf"^{name} has shape \(2, 11\), expected \(B, L\) = \(2, 12\)"
            ):
                model(input_ids=ids, **{name: torch.zeros(2, 11, dtype=torch.long)})
        positions = torch.arange(12).unsqueeze(0)  # (1, L) broadcasts, as in BERT
        assert model(
            input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids)
        ).last_hidden_state.shape == (2, 12, 32)
