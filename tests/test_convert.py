"""Weight conversion is exact: converted models compute what their sources computed.

Every source is a tiny random model built here with transformers' own classes and saved to a
temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    LongformerConfig,
    LongformerForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from structformer.cli import main as cli_main
from structformer.convert import ConversionError, convert_checkpoint
from structformer.modeling import StructBertForMaskedLM, StructBertModel

TINY = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}
LENGTHS = (24, 19, 13)  # one row per length, right-padded to the first


def _batch(pad_token_id: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Ids above the pad id: a pad id inside the text would shift RoBERTa's position ids.
    input_ids = torch.randint(
        pad_token_id + 1, TINY["vocab_size"], (len(LENGTHS), LENGTHS[0]), generator=generator
    )
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(LENGTHS):
        attention_mask[row, :length] = 1
    input_ids[attention_mask == 0] = pad_token_id
    return input_ids, attention_mask


def _assert_close_on_tokens(
    actual: torch.Tensor, expected: torch.Tensor, attention_mask: torch.Tensor
) -> None:
    keep = attention_mask.bool()
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-4, rtol=0)


def _load(dst: Path, cls=StructBertForMaskedLM, **kwargs):
    model, info = cls.from_pretrained(dst, output_loading_info=True, **kwargs)
    assert not info["missing_keys"], info
    # The bare encoder ignores the MLM head in the file; a masked-LM model must use every weight.
    assert cls is StructBertModel or not info["unexpected_keys"], info
    return model.eval()


def _tokenizer() -> BertTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(TINY["vocab_size"] - 5)]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory) -> tuple[Path, BertForMaskedLM]:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY, max_position_embeddings=40, hidden_act="gelu_new")).eval()
    src = tmp_path_factory.mktemp("bert_mlm")
    model.save_pretrained(src)
    _tokenizer().save_pretrained(src)
    return src, model


@pytest.fixture(scope="module")
def bert_converted(bert_mlm, tmp_path_factory) -> Path:
    src, _ = bert_mlm
    return convert_checkpoint(src, tmp_path_factory.mktemp("bert_converted"), attention_window=48)


@pytest.fixture(scope="module")
def longformer_mlm(tmp_path_factory) -> tuple[Path, LongformerForMaskedLM]:
    torch.manual_seed(1)
    # Windows of 4 and 6 tokens per layer, far shorter than the rows, so local attention matters.
    config = LongformerConfig(**TINY, attention_window=[4, 6], max_position_embeddings=42, pad_token_id=1)
    model = LongformerForMaskedLM(config).eval()
    src = tmp_path_factory.mktemp("longformer_mlm")
    model.save_pretrained(src)
    return src, model


@pytest.mark.parametrize("attn_implementation", [None, "eager", "sdpa"])
def test_bert_mlm_logits_match(bert_mlm, bert_converted, attn_implementation):
    _, reference = bert_mlm
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = _load(bert_converted, **kwargs)
    config = model.config
    assert config.model_type == "structbert"
    assert config.max_position_embeddings == 40 and config.attention_window == 48
    assert config.hidden_act == "gelu_new" and "cls" not in config.global_attention_types
    assert not config.separate_global_projections
    input_ids, attention_mask = _batch(reference.config.pad_token_id)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask).logits
    _assert_close_on_tokens(actual, expected, attention_mask)
    assert model.cls.predictions.decoder.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("attn_implementation", [None, "eager"])
@pytest.mark.parametrize(
    "global_positions",
    [[[0, 5, 17, 22], [3, 10], []], [[0], [0], [0]]],
    ids=["several-per-row", "cls-only"],
)
def test_longformer_mlm_logits_match(longformer_mlm, tmp_path, global_positions, attn_implementation):
    src, reference = longformer_mlm
    dst = convert_checkpoint(src, tmp_path / "converted")
    model = _load(
        dst, **({} if attn_implementation is None else {"attn_implementation": attn_implementation})
    )
    assert model.config.attention_window == [4, 6]
    assert model.config.separate_global_projections
    assert model.config.max_position_embeddings == 40  # 42 rows minus pad_token_id + 1
    input_ids, attention_mask = _batch(reference.config.pad_token_id)
    global_attention_mask = torch.zeros_like(input_ids)
    for row, positions in enumerate(global_positions):
        global_attention_mask[row, positions] = 1
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "global_attention_mask": global_attention_mask,
    }
    with torch.no_grad():
        expected = reference(**inputs).logits
        actual = model(**inputs).logits
    _assert_close_on_tokens(actual, expected, attention_mask)


def test_roberta_bin_checkpoint_logits_match(tmp_path):
    torch.manual_seed(2)
    config = RobertaConfig(**TINY, max_position_embeddings=30, pad_token_id=1, type_vocab_size=1)
    reference = RobertaForMaskedLM(config).eval()
    src = tmp_path / "roberta"
    config.save_pretrained(src)
    torch.save(reference.state_dict(), src / "pytorch_model.bin")
    model = _load(convert_checkpoint(src, tmp_path / "converted", attention_window=48))
    assert model.config.max_position_embeddings == 28 and model.config.type_vocab_size == 1
    input_ids, attention_mask = _batch(config.pad_token_id)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask).logits
    _assert_close_on_tokens(actual, expected, attention_mask)


def test_bare_encoder_and_untied_head(tmp_path):
    torch.manual_seed(3)
    reference = BertModel(BertConfig(**TINY, max_position_embeddings=32), add_pooling_layer=True).eval()
    reference.save_pretrained(tmp_path / "encoder")
    dst = convert_checkpoint(tmp_path / "encoder", tmp_path / "converted", attention_window=48)
    masked_lm = _load(dst)  # the MLM head is new, but nothing is missing from the saved file
    assert masked_lm.config.tie_word_embeddings
    encoder = _load(dst, cls=StructBertModel, add_pooling_layer=False)
    input_ids, attention_mask = _batch(0)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        actual = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    _assert_close_on_tokens(actual, expected, attention_mask)

    untied = BertForMaskedLM(BertConfig(**TINY, max_position_embeddings=32, tie_word_embeddings=False)).eval()
    untied.save_pretrained(tmp_path / "untied")
    model = _load(convert_checkpoint(tmp_path / "untied", tmp_path / "untied_converted", attention_window=48))
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        expected = untied(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = model(input_ids=input_ids, attention_mask=attention_mask).logits
    _assert_close_on_tokens(actual, expected, attention_mask)


def test_position_extension_tiles_learned_rows(longformer_mlm, tmp_path):
    src, reference = longformer_mlm
    model = _load(convert_checkpoint(src, tmp_path / "long", max_position_embeddings=100, attention_window=8))
    assert model.config.attention_window == 8
    learned = reference.longformer.embeddings.position_embeddings.weight[
        2:
    ]  # pad_token_id + 1 = 2 rows dropped
    table = model.structbert.embeddings.position_embeddings.weight
    assert table.shape == (100, TINY["hidden_size"])
    for position in range(100):
        assert torch.equal(table[position], learned[position % 40]), position
    shorter = _load(convert_checkpoint(src, tmp_path / "short", max_position_embeddings=16))
    assert torch.equal(shorter.structbert.embeddings.position_embeddings.weight, learned[:16])


def test_cli_writes_loadable_folder_with_tokenizer(bert_mlm, tmp_path):
    src, _ = bert_mlm
    dst = tmp_path / "cli"
    dst.mkdir()  # an existing empty folder is a valid output
    argv = ["convert", "--from", str(src), "--to", str(dst), "--max-position-embeddings", "64"]
    assert cli_main([*argv, "--attention-window", "8,10", "--global-attention-types", "cls", "section"]) == 0
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "structbert"
    assert config["attention_window"] == [8, 10]
    assert config["max_position_embeddings"] == 64
    assert config["global_attention_types"] == ["cls", "section"]
    assert config["auto_map"]["AutoModelForMaskedLM"].endswith("StructBertForMaskedLM")
    assert (dst / "modeling_structbert.py").is_file() and (dst / "configuration_structbert.py").is_file()
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert tokenizer.model_max_length == 64
    assert tokenizer("w1 w2")["input_ids"] == [2, 6, 7, 3]


def test_fresh_process_loads_with_trust_remote_code(bert_mlm, bert_converted, tmp_path):
    _, reference = bert_mlm
    input_ids, attention_mask = _batch(0)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.save(
        {"input_ids": input_ids, "attention_mask": attention_mask, "expected": expected}, tmp_path / "io.pt"
    )
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForMaskedLM
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        model = AutoModelForMaskedLM.from_pretrained({str(bert_converted)!r}, trust_remote_code=True).eval()
        assert not any(name.startswith("structformer") for name in sys.modules), "imported our package"
        with torch.no_grad():
            logits = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"]).logits
        keep = io["attention_mask"].bool()
        print(type(model).__name__, float((logits[keep] - io["expected"][keep]).abs().max()))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, difference = result.stdout.split()[-2:]
    assert name == "StructBertForMaskedLM"
    assert float(difference) <= 1e-4


def test_errors_name_the_file(bert_mlm, tmp_path):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConversionError, match=r"config\.json.*'gpt2'"):
        convert_checkpoint(gpt, tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 99}))
    with pytest.raises(ConversionError, match=r"config\.json: no hidden_size, num_hidden_layers"):
        convert_checkpoint(partial, tmp_path / "out")
    weightless = tmp_path / "weightless"
    BertConfig(**TINY).save_pretrained(weightless)
    with pytest.raises(FileNotFoundError, match="no weights found"):
        convert_checkpoint(weightless, tmp_path / "out")
    (weightless / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConversionError, match=r"model\.safetensors: not readable weights"):
        convert_checkpoint(weightless, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert",\n  oops}')
    with pytest.raises(ConversionError, match=r"line 2"):
        convert_checkpoint(broken, tmp_path / "out")
    src, _ = bert_mlm
    with pytest.raises(ConversionError, match="max_position_embeddings must be positive"):
        convert_checkpoint(src, tmp_path / "out", max_position_embeddings=0)
    with pytest.raises(ConversionError, match="converted config would be invalid.*attention_window"):
        convert_checkpoint(src, tmp_path / "out", attention_window=7)
    assert not (tmp_path / "out").exists()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder or a link)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() or path.is_symlink() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("same", "is the source folder"),
        ("same-through-a-link", "is the source folder"),
        ("inside", "is inside the source folder"),
        ("contains", "contains the source folder"),
        ("not-empty", "is not empty; choose a new or empty folder"),
        ("file", "is a file"),
    ],
)
def test_output_that_overlaps_the_source_or_holds_files_is_refused(bert_mlm, tmp_path, capsys, case, message):
    src = tmp_path / "outer" / "src" if case == "contains" else tmp_path / "src"
    shutil.copytree(bert_mlm[0], src)
    dst = {
        "same": src,
        "same-through-a-link": tmp_path / "link",
        "inside": src / "converted",
        "contains": tmp_path / "outer",
        "not-empty": tmp_path / "out",
        "file": tmp_path / "out",
    }[case]
    if case == "same-through-a-link":
        dst.symlink_to(src, target_is_directory=True)
    elif case == "not-empty":
        dst.mkdir()
        (dst / "notes.txt").write_text("a previous run's notes")
    elif case == "file":
        dst.write_text("not a folder")
    before = _snapshot(tmp_path)
    assert cli_main(["convert", "--from", str(src), "--to", str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"structformer convert: error: output folder {dst} ") and err.count("\n") == 1
    assert message in err
    assert _snapshot(tmp_path) == before
