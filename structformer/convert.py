"""Convert a BERT, RoBERTa or Longformer checkpoint into a StructBERT masked-LM checkpoint.

``structformer convert --from SRC --to DST`` reads a local checkpoint folder (``config.json`` plus
safetensors or torch ``.bin`` weights, masked-LM or bare encoder), renames its parameters onto
StructBERT's BERT-style names and writes a folder that loads with
``AutoModelForMaskedLM.from_pretrained(DST, trust_remote_code=True)``.

The conversion is exact, not approximate:

- RoBERTa and Longformer number positions from ``pad_token_id + 1``; StructBERT numbers them from 0.
  The first ``pad_token_id + 1`` rows of the position table are dropped, so every non-padding token
  gets the very vector it had before.
- Longer tables are filled by tiling the learned rows, Longformer's recipe for extending RoBERTa.
- Longformer's ``query_global``/``key_global``/``value_global`` become StructBERT's separate global
  projections, and its per-layer ``attention_window`` is carried over.
- ``[CLS]`` is *not* made global by default (``"cls"`` is left out of ``global_attention_types``):
  neither BERT nor ``LongformerForMaskedLM`` gives position 0 global attention on its own, so a
  converted model computes what its source computed for the same ``global_attention_mask``.
  Pass ``global_attention_types`` (``--global-attention-types``) to choose otherwise.

The output folder must be new or empty, and neither inside the source folder nor containing it: these are
checked before anything is written, so a mistyped ``--to`` never touches the source. A folder that holds a
previous conversion is refused too, rather than overwritten: its files cannot be told apart from a trained
StructBERT checkpoint saved with ``save_pretrained``, which a re-run must not destroy. Delete it to redo a
conversion.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

from structformer.arguments import parse_dataclass
from structformer.command_arguments import ConvertArguments
from structformer.errors import InputError, run_command
from structformer.modeling import StructBertConfig, StructBertForMaskedLM
from structformer.modeling.configuration_structbert import DEFAULT_GLOBAL_ATTENTION_TYPES

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "longformer")

# Files copied verbatim when present, so that AutoTokenizer.from_pretrained(DST) works.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)

# Source prefixes of the encoder (masked-LM checkpoints) and of the MLM head.
_BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "longformer": "longformer."}
_HEAD_PREFIX = {"bert": "cls.predictions.", "roberta": "lm_head.", "longformer": "lm_head."}
# RoBERTa-style heads name their parts differently from BERT's.
_ROBERTA_HEAD_NAMES = {
    "dense.": "transform.dense.",
    "layer_norm.": "transform.LayerNorm.",
    "decoder.": "decoder.",
    "bias": "bias",
}
# Source config fields the conversion cannot do without.
_REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
# Parameters with no StructBERT counterpart: BERT's NSP head and the encoders' poolers
# (masked-LM training does not use them).
_DROPPED_PREFIXES = ("cls.seq_relationship.", "pooler.")


class ConversionError(InputError):
    """A source checkpoint that cannot be converted, or an unusable output folder; the message names it."""


def _check_folders(src: Path, dst: Path) -> None:
    """Refuse an output folder that would overwrite the source or anything else, before a byte is written."""
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src}: no such folder; give the checkpoint folder to convert (config.json and weights)"
        )
    source, output = src.resolve(), dst.resolve()
    if output == source:
        raise ConversionError(
            f"output folder {dst} is the source folder {src}; choose a new folder for the output"
        )
    if output.is_relative_to(source):
        raise ConversionError(f"output folder {dst} is inside the source folder {src}; choose one outside it")
    if source.is_relative_to(output):
        raise ConversionError(
            f"output folder {dst} contains the source folder {src}; choose one that does not contain it"
        )
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"output folder {dst} is a file; choose a new or empty folder")
    if dst.is_dir() and any(dst.iterdir()):
        raise ConversionError(
            f"output folder {dst} is not empty; choose a new or empty folder (delete it to redo a conversion)"
        )


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json, so {src} is not a transformers checkpoint folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from error
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"{path}: model_type {model_type!r} cannot be converted; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in config]
    if missing:
        raise ConversionError(
            f"{path}: no {', '.join(missing)}; is it the config of a complete {model_type} model?"
        )
    return config


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only refuses arbitrary pickled objects: a checkpoint must not run code when read.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign files fail in many types; all mean a bad source
        raise ConversionError(f"{path}: not readable weights ({type(err).__name__}: {err})") from err


def _read_state_dict(src: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The source weights and the file they came from (the index file for sharded checkpoints)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (src / single).is_file():
            return _load_file(src / single), src / single
        if (src / index).is_file():
            try:
                weight_map = json.loads((src / index).read_text(encoding="utf-8")).get("weight_map", {})
            except json.JSONDecodeError as error:
                raise ConversionError(
                    f"{src / index}, line {error.lineno}: invalid JSON ({error.msg})"
                ) from error
            state_dict: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (src / shard).is_file():
                    raise FileNotFoundError(f"{src / index}: lists shard {shard}, which does not exist")
                state_dict.update(_load_file(src / shard))
            return state_dict, src / index
    raise FileNotFoundError(
        f"{src}: no weights found (expected model.safetensors, pytorch_model.bin or a sharded index of either)"
    )


def _rename(key: str, model_type: str) -> str | None:
    """StructBERT's name for a source parameter, or None when it has no counterpart."""
    # Checkpoints converted from TF name LayerNorm parameters gamma/beta.
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    base = _BASE_PREFIX[model_type]
    head = _HEAD_PREFIX[model_type]
    if key.startswith(base):
        key = key[len(base) :]
    if key.startswith(head):
        rest = key[len(head) :]
        if model_type != "bert":
            for old, new in _ROBERTA_HEAD_NAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            else:
                return None
        return "cls.predictions." + rest
    if key.startswith(_DROPPED_PREFIXES) or key.endswith("position_ids"):
        return None
    if key.startswith(("embeddings.", "encoder.")):
        return "structbert." + key
    return None


def _position_table(
    table: torch.Tensor, offset: int, max_position_embeddings: int | None
) -> tuple[torch.Tensor, int]:
    """Drop the ``offset`` rows that RoBERTa-style models never give to a real token, then tile or cut."""
    learned = table[offset:]
    if learned.shape[0] == 0:
        raise ConversionError(f"the position table has {table.shape[0]} rows, none after the first {offset}")
    n = learned.shape[0] if max_position_embeddings is None else max_position_embeddings
    if n < 1:
        raise ConversionError(f"max_position_embeddings must be positive, got {n}")
    repeats = math.ceil(n / learned.shape[0])
    return learned.repeat(repeats, 1)[:n].clone(), n


def _attention_window(
    config: dict, attention_window: int | Sequence[int] | None, num_layers: int
) -> int | list[int] | None:
    if attention_window is not None:
        return attention_window if isinstance(attention_window, int) else list(attention_window)
    window = config.get("attention_window") if config["model_type"] == "longformer" else None
    if isinstance(window, list) and len(window) == 1:
        window = window * num_layers
    return window


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    max_position_embeddings: int | None = None,
    attention_window: int | Sequence[int] | None = None,
    global_attention_types: Sequence[str] | None = None,
) -> Path:
    """Convert the checkpoint folder ``src`` into a StructBERT masked-LM folder ``dst`` and return ``dst``.

    Args:
        src: a local folder with ``config.json`` of model_type ``bert``, ``roberta`` or ``longformer``
            and its weights (``model.safetensors``, ``pytorch_model.bin``, or a sharded index of either),
            from a masked-LM model or a bare encoder. A bare encoder gets a newly initialised MLM
            transform (the decoder is tied to the word embeddings).
        dst: output folder: a new or empty one, not inside ``src`` nor containing it; created if needed.
        max_position_embeddings: positions of the result. ``None`` keeps the source's usable positions
            (512 for BERT and RoBERTa, 4096 for Longformer); more are filled by tiling the learned rows.
        attention_window: window of the result, an even int or one per layer. ``None`` keeps
            Longformer's per-layer windows, and gives BERT/RoBERTa StructBERT's default window.
        global_attention_types: StructBERT's ``global_attention_types``; defaults to the heading levels
            without ``"cls"``, so position 0 is global only when ``global_attention_mask`` says so.
    """
    src, dst = Path(src), Path(dst)
    _check_folders(src, dst)
    source = _read_config(src)
    model_type = source["model_type"]
    state_dict, weights_file = _read_state_dict(src)

    renamed: dict[str, torch.Tensor] = {}
    ignored = []
    for key, tensor in state_dict.items():
        new_key = _rename(key, model_type)
        if new_key is None:
            ignored.append(key)
        else:
            renamed[new_key] = tensor
    if ignored:
        # Poolers, NSP and task heads have no place in a masked-LM model.
        logger.info(
            "%s: ignored %d parameters with no StructBERT counterpart: %s",
            weights_file,
            len(ignored),
            ignored,
        )
    for table in ("word_embeddings", "position_embeddings"):
        if f"structbert.embeddings.{table}.weight" not in renamed:
            raise ConversionError(
                f"{weights_file}: no {model_type} encoder weights (embeddings.{table}.weight is missing)"
            )

    if source.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(
            f"{src / 'config.json'}: position_embedding_type {source['position_embedding_type']!r} "
            "is not supported (StructBERT uses absolute position embeddings)"
        )
    pad_token_id = source.get("pad_token_id")
    offset = 0 if model_type == "bert" else (pad_token_id if pad_token_id is not None else 1) + 1
    position_key = "structbert.embeddings.position_embeddings.weight"
    renamed[position_key], n_positions = _position_table(
        renamed[position_key], offset, max_position_embeddings
    )

    has_head = any(key.startswith("cls.predictions.transform.") for key in renamed)
    decoder = renamed.pop("cls.predictions.decoder.weight", None)
    tied = decoder is None or torch.equal(decoder, renamed["structbert.embeddings.word_embeddings.weight"])
    # Checkpoints hold the output bias as cls.predictions.bias, decoder.bias or both (the same values).
    decoder_bias = renamed.pop("cls.predictions.decoder.bias", None)
    if has_head and "cls.predictions.bias" not in renamed and decoder_bias is not None:
        renamed["cls.predictions.bias"] = decoder_bias
    if not tied:
        # Untied (tie_word_embeddings=False), decoder.bias is a parameter of its own, as in BERT.
        renamed["cls.predictions.decoder.weight"] = decoder
        if "cls.predictions.bias" in renamed:
            renamed["cls.predictions.decoder.bias"] = renamed["cls.predictions.bias"]

    num_layers = source["num_hidden_layers"]
    separate_global = any(".attention.self.query_global." in key for key in renamed)
    window = _attention_window(source, attention_window, num_layers)
    fields = {
        "vocab_size": source["vocab_size"],
        "hidden_size": source["hidden_size"],
        "num_hidden_layers": num_layers,
        "num_attention_heads": source["num_attention_heads"],
        "intermediate_size": source["intermediate_size"],
        "hidden_act": source.get("hidden_act", "gelu"),
        "hidden_dropout_prob": source.get("hidden_dropout_prob", 0.1),
        "attention_probs_dropout_prob": source.get("attention_probs_dropout_prob", 0.1),
        "max_position_embeddings": n_positions,
        "type_vocab_size": source.get("type_vocab_size", 2),
        "initializer_range": source.get("initializer_range", 0.02),
        "layer_norm_eps": source.get("layer_norm_eps", 1e-12),
        "pad_token_id": pad_token_id,
        "separate_global_projections": separate_global,
        "global_attention_types": list(
            DEFAULT_GLOBAL_ATTENTION_TYPES if global_attention_types is None else global_attention_types
        ),
        "tie_word_embeddings": tied,
    }
    for name in ("bos_token_id", "eos_token_id"):
        if source.get(name) is not None:
            fields[name] = source[name]
    if window is not None:
        fields["attention_window"] = window
    if model_type != "bert" and fields["hidden_act"] != "gelu" and has_head:
        # RoBERTa's and Longformer's LM heads apply exact GELU whatever hidden_act says; StructBERT's
        # follows hidden_act (as BERT's does), so the head would compute something else.
        raise ConversionError(
            f"{src / 'config.json'}: hidden_act {fields['hidden_act']!r} with a {model_type} LM head "
            "(which always uses gelu) cannot be converted exactly"
        )
    try:
        config = StructBertConfig(**fields)
    except ValueError as err:  # the config checks its values; here they come from the source or the options
        raise ConversionError(f"{src}: the converted config would be invalid: {err}") from err
    model = StructBertForMaskedLM(config)
    dtype = renamed["structbert.embeddings.word_embeddings.weight"].dtype
    if dtype.is_floating_point and dtype != torch.float32:
        model = model.to(dtype)

    targets = model.state_dict()
    unexpected = sorted(set(renamed) - set(targets))
    if unexpected:
        raise ConversionError(f"{weights_file}: parameters with no StructBERT counterpart: {unexpected}")
    for key, tensor in renamed.items():
        target = targets[key]
        if target.shape != tensor.shape:
            raise ConversionError(
                f"{weights_file}: {key} has shape {tuple(tensor.shape)}, the config implies {tuple(target.shape)}"
            )
    missing = set(model.load_state_dict(renamed, strict=False).missing_keys)
    if tied:
        # Tied parameters appear as missing though they share storage with a loaded one.
        missing -= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    head_keys = {key for key in missing if key.startswith("cls.predictions.")}
    if has_head and head_keys:
        raise ConversionError(f"{weights_file}: incomplete masked-LM head, missing {sorted(head_keys)}")
    if missing - head_keys:
        raise ConversionError(f"{weights_file}: missing encoder parameters {sorted(missing - head_keys)}")
    if not has_head:
        logger.warning("%s has no masked-LM head: cls.predictions is newly initialised", weights_file)
    model.tie_weights()

    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    _copy_tokenizer(src, dst, model_type, n_positions)
    logger.info(
        "converted %s (%s, %d layers) to %s: %d positions, window %s, separate global projections %s",
        src,
        model_type,
        num_layers,
        dst,
        n_positions,
        config.attention_window,
        separate_global,
    )
    return dst


def _copy_tokenizer(src: Path, dst: Path, model_type: str, n_positions: int) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    config_path = dst / "tokenizer_config.json"
    if not config_path.is_file():
        return
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["model_max_length"] = n_positions
    # Without tokenizer_class, AutoTokenizer would look up model_type "structbert", which has no tokenizer.
    if "tokenizer_class" not in tokenizer_config:
        tokenizer_class = TOKENIZER_MAPPING_NAMES.get(model_type)
        if isinstance(tokenizer_class, tuple):
            tokenizer_class = next((name for name in tokenizer_class if name), None)
        if tokenizer_class:
            tokenizer_config["tokenizer_class"] = tokenizer_class
    config_path.write_text(
        json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def parse_args(argv: list[str] | None = None) -> ConvertArguments:
    return parse_dataclass(ConvertArguments, argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: ConvertArguments) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dst = convert_checkpoint(
        Path(args.source),
        Path(args.output_dir),
        max_position_embeddings=args.max_position_embeddings,
        attention_window=args.window(),
        global_attention_types=args.global_attention_types,
    )
    print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(run_command("convert", main))
