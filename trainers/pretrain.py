"""Masked-LM pre-training of StructBERT: an explicit Accelerate loop.

Runs as ``python trainers/pretrain.py ...``, ``accelerate launch trainers/pretrain.py ...`` and
``structformer pretrain ...``. The same script trains the structured model (``--dataset-config
arxiv_structured``: heading tokens are global) and its plain twin (``arxiv_plain``: same tokens, no
global ones).

Exact resume rests on three choices: the data order is a function of ``(seed, epoch)``
(:class:`EpochShuffleSampler`), the masks a function of ``(seed, epoch, example)``, and the dropout
RNG is re-seeded from ``(seed, step, process)`` at every optimizer step. So a resumed run needs only
the weights, optimizer, scheduler and step from the checkpoint to continue bit for bit.

The loss is the mean over every masked token of the global batch (all processes, all accumulation
micro-batches), so 2 processes give the same loss and gradients as 1 with the same global batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
CONVERTIBLE_MODEL_TYPES = ("bert", "roberta", "longformer")

logger = logging.getLogger("structformer.pretrain")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before applying the update."""


def _pad_multiple(value: str) -> int | str:
    if value == "window":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'window', got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'window', got {value!r}")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="structformer pretrain",
        description="Masked-LM pre-training of StructBERT (structured or plain corpus config).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="corpus folder (Parquet + README.md) or Hub id")
    data.add_argument(
        "--dataset-config",
        default=None,
        help="arxiv_structured (headings are global) or arxiv_plain (no global tokens); default: the dataset's default",
    )
    data.add_argument("--text-column", default="text")
    data.add_argument("--max-seq-length", type=int, default=4096, help="tokens per packed sequence")
    data.add_argument(
        "--validation-split",
        type=float,
        default=0.05,
        help="fraction of training documents held out when the corpus has no validation split (0 = none)",
    )
    data.add_argument(
        "--preprocessing-num-workers", type=int, default=None, help="processes for datasets.map"
    )
    data.add_argument("--dataloader-num-workers", type=int, default=0)
    data.add_argument("--cache-dir", default=None, help="datasets cache folder")
    data.add_argument("--mlm-probability", type=float, default=0.15)
    data.add_argument(
        "--pad-to-multiple-of",
        type=_pad_multiple,
        default="window",
        help="pad batches to a multiple of this length (default: the attention window, which keeps the number of "
        "distinct shapes small for kernel caches and whole attention blocks); 0 = the longest row",
    )
    data.add_argument(
        "--no-mask-headings",
        dest="mask_headings",
        action="store_false",
        help="never mask heading and title tokens (default: they may be masked like any token)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--tokenizer", default=None, help="local tokenizer folder (default: the --init-from one)"
    )
    model.add_argument(
        "--vocab-size",
        type=int,
        default=30522,
        help="without --tokenizer or --init-from: train a WordPiece tokenizer of this size on the corpus",
    )
    model.add_argument(
        "--init-from",
        default=None,
        help="StructBERT checkpoint, or a BERT/RoBERTa/Longformer one (converted on the fly)",
    )
    model.add_argument(
        "--model-config", default="tiny", help="preset (tiny, small, base) or JSON file, from scratch"
    )
    model.add_argument(
        "--attention-window", type=int, default=None, help="override the config's window (even)"
    )
    model.add_argument(
        "--global-attention-types",
        nargs="+",
        default=None,
        help="override the config's global_attention_types (e.g. cls title section)",
    )
    model.add_argument("--gradient-checkpointing", action="store_true")

    train = parser.add_argument_group("optimization")
    train.add_argument("--per-device-batch-size", type=int, default=8)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--adam-beta1", type=float, default=0.9)
    train.add_argument("--adam-beta2", type=float, default=0.98)
    train.add_argument("--adam-epsilon", type=float, default=1e-6)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    train.add_argument(
        "--lr-scheduler", choices=["linear", "cosine", "constant_with_warmup"], default="linear"
    )
    train.add_argument("--warmup-steps", type=int, default=0)
    train.add_argument("--max-steps", type=int, required=True, help="optimizer steps")
    train.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    train.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--eval-steps", type=int, default=500, help="0 = evaluate only at the end")
    run.add_argument(
        "--max-eval-batches", type=int, default=None, help="cap on validation batches per evaluation"
    )
    run.add_argument("--save-steps", type=int, default=500, help="0 = no intermediate checkpoints")
    run.add_argument("--save-total-limit", type=int, default=None, help="keep only the newest N checkpoints")
    run.add_argument("--resume-from-checkpoint", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--report-to", choices=["tensorboard", "none"], default="none")
    args = parser.parse_args(argv)

    positive = ("per_device_batch_size", "gradient_accumulation_steps", "max_steps", "logging_steps")
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("warmup_steps", "eval_steps", "save_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.attention_window is not None and (args.attention_window <= 0 or args.attention_window % 2):
        parser.error(
            f"--attention-window must be a positive even number (+-window/2 each side), got {args.attention_window}"
        )
    if args.max_seq_length < 8:
        parser.error(f"--max-seq-length must be at least 8, got {args.max_seq_length}")
    if not 0.0 <= args.validation_split < 1.0:
        parser.error(f"--validation-split must be in [0, 1), got {args.validation_split}")
    if not 0.0 < args.mlm_probability < 1.0:
        parser.error(f"--mlm-probability must be in (0, 1), got {args.mlm_probability}")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        parser.error("--save-total-limit must be at least 1")
    return args


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. A folder only gets its final name once fully written."""
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if (
                path.name.startswith(CHECKPOINT_PREFIX)
                and suffix.isdigit()
                and (path / TRAINER_STATE).is_file()
            ):
                found.append((int(suffix), path))
    return sorted(found)


def resolve_checkpoint(value: str | None, output_dir: Path) -> Path | None:
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir / "checkpoints")
        return found[-1][1] if found else None
    path = Path(value)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"--resume-from-checkpoint {value}: not a complete checkpoint (no {TRAINER_STATE})"
        )
    return path


def save_checkpoint(
    accelerator, output_dir: Path, step: int, tokenizer, state: dict, keep: int | None
) -> Path:
    """``save_state`` into a temporary folder, then rename it: a kill mid-save leaves no half checkpoint."""
    checkpoint_dir = output_dir / "checkpoints"
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tokenizer.save_pretrained(tmp)
        _write_json(tmp / TRAINER_STATE, state)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(checkpoint_dir)
        if keep is not None:
            for _, old in list_checkpoints(checkpoint_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer


class MaskedLMObjective(nn.Module):
    """Wraps a ``*ForMaskedLM`` and scores only the masked positions.

    The vocabulary projection of a 4096-token sequence is ``4096 x V`` logits; projecting only the
    ~15% masked positions saves most of that memory and time. Returns per-row loss sums and counts,
    so callers can weight by masked tokens across micro-batches and processes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = getattr(self.model, self.model.base_model_prefix)
        hidden = encoder(**inputs)[0]  # (B, L, hidden)
        selected = labels != -100
        logits = self.model.cls(hidden[selected])  # (M, V)
        losses = F.cross_entropy(logits.float(), labels[selected], reduction="none")
        rows = selected.nonzero()[:, 0]
        loss_sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device).index_add(
            0, rows, losses
        )
        counts = selected.sum(dim=1)
        return loss_sums, counts


def _read_model_type(path: Path) -> str:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--init-from {path}: no config.json (expected a model checkpoint folder)")
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))["model_type"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{config_path}: cannot read model_type ({err})") from err


def _has_tokenizer(path: Path) -> bool:
    return (
        (path / "tokenizer.json").is_file()
        or (path / "vocab.txt").is_file()
        or (path / "vocab.json").is_file()
    )


def _max_window(window: int | list[int]) -> int:
    return max(window) if isinstance(window, list) else window


def _padded_length(args: argparse.Namespace, window: int) -> int:
    """The longest batch the collator can produce: --max-seq-length rounded up to --pad-to-multiple-of."""
    multiple = window if args.pad_to_multiple_of == "window" else args.pad_to_multiple_of
    return math.ceil(args.max_seq_length / multiple) * multiple if multiple else args.max_seq_length


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.attention_window is not None:
        overrides["attention_window"] = args.attention_window
    if args.global_attention_types is not None:
        overrides["global_attention_types"] = list(args.global_attention_types)
    return overrides


def check_tokenizer_matches(tokenizer, config, source: str, reference_tokenizer=None) -> None:
    """Fail early when token ids would index the wrong (or no) embedding rows."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but {source} has vocab_size {config.vocab_size}: "
            "the tokenizer does not match the checkpoint"
        )
    if tokenizer.pad_token_id != config.pad_token_id:
        raise ValueError(
            f"tokenizer pad id {tokenizer.pad_token_id} differs from {source}'s pad_token_id {config.pad_token_id}: "
            "the tokenizer does not match the checkpoint"
        )
    if reference_tokenizer is not None:
        for name in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id", "unk_token_id"):
            ours, theirs = getattr(tokenizer, name), getattr(reference_tokenizer, name)
            if ours != theirs:
                raise ValueError(
                    f"tokenizer {name} = {ours} but {source}'s own tokenizer has {theirs}: "
                    "the tokenizer does not match the checkpoint"
                )
        if len(tokenizer) != len(reference_tokenizer):
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but {source}'s own tokenizer has {len(reference_tokenizer)}: "
                "the tokenizer does not match the checkpoint"
            )


# ----------------------------------------------------------------------------------------------------
# Training


def _scheduler(name: str, optimizer, warmup: int, total: int):
    from transformers import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


@torch.no_grad()
def evaluate(accelerator, objective: nn.Module, dataloader, max_batches: int | None) -> dict[str, float]:
    """Validation loss per masked token, in nats, bits, and as perplexity."""
    objective.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for k, batch in enumerate(dataloader):
        if max_batches is not None and k >= max_batches:
            break
        sums, counts = objective(**batch)
        sums, counts = accelerator.gather_for_metrics((sums.double(), counts.double()))
        loss_sum += sums.sum()
        count += counts.sum()
    objective.train()
    mean = (loss_sum / count.clamp(min=1)).item()
    return {
        "eval_loss": mean,
        "eval_bits_per_masked_token": mean / math.log(2),
        "eval_perplexity": math.exp(min(mean, 700.0)),
        "eval_masked_tokens": int(count.item()),
    }


def _setup_logging(accelerator) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, stream=sys.stderr)
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    import datasets
    import transformers

    if not accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_error()
        datasets.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from structformer.modeling import StructBertConfig, StructBertForMaskedLM
    from structformer.trainers.data import (
        DataCollatorForStructuredMLM,
        EpochShuffleSampler,
        IndexedDataset,
        load_corpus,
        pack_batch,
        sequence_features,
    )
    from structformer.trainers.presets import get_model_config
    from structformer.trainers.tokenizer import load_tokenizer, train_wordpiece

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        # The scheduler steps once per optimizer step whatever the number of processes.
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )
    _setup_logging(accelerator)
    resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if args.resume_from_checkpoint is None and list_checkpoints(output_dir / "checkpoints"):
        # A fresh run would mix its checkpoints with the old ones, and "latest" could pick the old run's.
        raise FileExistsError(
            f"{output_dir} already holds checkpoints of another run: pass --resume-from-checkpoint latest "
            "to continue it, or choose a new --output-dir"
        )
    if args.resume_from_checkpoint == "latest" and resume_from is None:
        logger.info(
            "--resume-from-checkpoint latest: no checkpoint in %s yet, starting from scratch", output_dir
        )

    # ---- 1. Options that can be checked without work: dataset, config, columns, tokenizer, model.
    required = [args.text_column] + (["headers"] if args.dataset_config == "arxiv_structured" else [])
    with accelerator.main_process_first():  # one process downloads / prepares the Arrow cache
        raw = load_corpus(
            args.dataset, args.dataset_config, cache_dir=args.cache_dir, required_columns=required
        )
    if "train" not in raw:
        raise ValueError(f"{args.dataset}: no 'train' split; splits are {sorted(raw)}")
    use_headers = "headers" in raw["train"].column_names and args.dataset_config != "arxiv_plain"

    init_from = Path(args.init_from) if args.init_from else None
    init_type = _read_model_type(init_from) if init_from else None
    if (
        init_type is not None
        and init_type != StructBertConfig.model_type
        and init_type not in CONVERTIBLE_MODEL_TYPES
    ):
        raise ValueError(
            f"--init-from {init_from}: model_type {init_type!r} is neither structbert nor one of {CONVERTIBLE_MODEL_TYPES}"
        )
    overrides = _config_overrides(args)
    if init_from is None:
        # Validates the preset or JSON file (and the overrides) before any tokenizer training.
        get_model_config(args.model_config, **overrides)
    reference_tokenizer = load_tokenizer(init_from) if init_from and _has_tokenizer(init_from) else None
    if resume_from is not None and _has_tokenizer(resume_from):
        tokenizer = load_tokenizer(resume_from)
    elif args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif reference_tokenizer is not None:
        tokenizer = reference_tokenizer
    elif init_from is not None:
        raise ValueError(f"--init-from {init_from} has no tokenizer files; pass --tokenizer")
    else:
        tokenizer_dir = output_dir / "tokenizer"
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                logger.info(
                    "training a %d-token WordPiece tokenizer on the corpus -> %s",
                    args.vocab_size,
                    tokenizer_dir,
                )
                texts = (row[args.text_column] for row in raw["train"])
                train_wordpiece(texts, args.vocab_size, tokenizer_dir, model_max_length=args.max_seq_length)
        tokenizer = load_tokenizer(tokenizer_dir)

    if init_from is None:
        config = get_model_config(
            args.model_config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides
        )
        check_tokenizer_matches(tokenizer, config, f"--model-config {args.model_config}")
        model_source = None
    elif init_type == StructBertConfig.model_type:
        config = StructBertConfig.from_pretrained(init_from, **overrides)
        check_tokenizer_matches(tokenizer, config, f"--init-from {init_from}", reference_tokenizer)
        model_source = init_from
    else:
        source_config = json.loads((init_from / "config.json").read_text(encoding="utf-8"))
        source_config.setdefault("pad_token_id", 0)
        check_tokenizer_matches(
            tokenizer,
            argparse.Namespace(
                vocab_size=source_config["vocab_size"], pad_token_id=source_config["pad_token_id"]
            ),
            f"--init-from {init_from}",
            reference_tokenizer,
        )
        model_source = output_dir / "converted_init"
        source_window = args.attention_window or (
            source_config.get("attention_window") if init_type == "longformer" else None
        )
        needed = _padded_length(args, _max_window(source_window or StructBertConfig().attention_window))
        usable = source_config["max_position_embeddings"] - (0 if init_type == "bert" else 2)
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                from structformer.convert import convert_checkpoint

                logger.info("converting %s checkpoint %s -> %s", init_type, init_from, model_source)
                convert_checkpoint(
                    init_from,
                    model_source,
                    # Longer inputs than the source covers: tile its learned positions (as Longformer did).
                    max_position_embeddings=needed if needed > usable else None,
                    attention_window=args.attention_window,
                    global_attention_types=args.global_attention_types,
                )
        config = StructBertConfig.from_pretrained(model_source, **overrides)

    window = _max_window(config.attention_window)
    pad_multiple = window if args.pad_to_multiple_of == "window" else args.pad_to_multiple_of or None
    padded_length = _padded_length(args, window)
    if padded_length > config.max_position_embeddings:
        raise ValueError(
            f"--max-seq-length {args.max_seq_length} (padded to {padded_length}) exceeds the model's "
            f"max_position_embeddings {config.max_position_embeddings}"
        )
    if args.gradient_checkpointing and not StructBertForMaskedLM.supports_gradient_checkpointing:
        raise ValueError("--gradient-checkpointing: StructBERT does not support gradient checkpointing")

    # ---- 2. Preprocessing: tokenize + pack once, cached by datasets, main process first.
    set_seed(args.seed)
    if "validation" not in raw and args.validation_split > 0 and len(raw["train"]) > 1:
        held_out = raw["train"].train_test_split(test_size=args.validation_split, seed=args.seed)
        raw = {"train": held_out["train"], "validation": held_out["test"]}
    pack_kwargs = {
        "tokenizer": tokenizer,
        "max_seq_length": args.max_seq_length,
        "global_attention_types": list(config.global_attention_types),
        "use_headers": use_headers,
        "text_column": args.text_column,
    }
    packed = {}
    with accelerator.main_process_first():
        for split in ("train", "validation"):
            if split not in raw:
                continue
            packed[split] = (
                raw[split]
                .map(
                    pack_batch,
                    batched=True,
                    batch_size=32,
                    num_proc=args.preprocessing_num_workers
                    if (args.preprocessing_num_workers or 0) > 1
                    else None,
                    remove_columns=raw[split].column_names,
                    features=sequence_features(),
                    fn_kwargs=pack_kwargs,
                    desc=f"tokenizing and packing {split}",
                )
                .with_format("numpy")
            )
    global_batch = args.per_device_batch_size * accelerator.num_processes
    if len(packed["train"]) < global_batch * args.gradient_accumulation_steps:
        raise ValueError(
            f"{args.dataset}: {len(packed['train'])} training sequences are fewer than one optimizer step's "
            f"{global_batch * args.gradient_accumulation_steps} (batch x processes x accumulation)"
        )

    collator = DataCollatorForStructuredMLM(
        tokenizer,
        mlm_probability=args.mlm_probability,
        mask_headings=args.mask_headings,
        pad_to_multiple_of=pad_multiple,
        seed=args.seed,
        vocab_size=config.vocab_size,
    )
    sampler = EpochShuffleSampler(len(packed["train"]), args.seed)
    train_loader = DataLoader(
        IndexedDataset(packed["train"]),
        batch_size=args.per_device_batch_size,
        sampler=sampler,
        collate_fn=collator,
        drop_last=True,
        num_workers=args.dataloader_num_workers,
    )
    eval_loader = None
    if "validation" in packed and len(packed["validation"]) > 0:
        eval_collator = DataCollatorForStructuredMLM(
            tokenizer,
            mlm_probability=args.mlm_probability,
            mask_headings=args.mask_headings,
            pad_to_multiple_of=pad_multiple,
            seed=args.seed + 1,
            vocab_size=config.vocab_size,
        )
        eval_loader = DataLoader(
            IndexedDataset(packed["validation"]),
            batch_size=args.per_device_batch_size,
            collate_fn=eval_collator,
            num_workers=args.dataloader_num_workers,
        )

    # ---- 3. Model, optimizer, scheduler; one prepare call.
    if model_source is None:
        model = StructBertForMaskedLM(config)
    else:
        model = StructBertForMaskedLM.from_pretrained(model_source, config=config)
    if args.gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (deprecated, removed in v6).
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    objective = MaskedLMObjective(model)
    optimizer = _optimizer(objective, args)
    scheduler = _scheduler(args.lr_scheduler, optimizer, args.warmup_steps, args.max_steps)
    prepared = accelerator.prepare(
        objective, optimizer, train_loader, scheduler, *([eval_loader] if eval_loader else [])
    )
    objective, optimizer, train_loader, scheduler = prepared[:4]
    eval_loader = prepared[4] if eval_loader else None

    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError("one epoch has fewer batches than --gradient-accumulation-steps")
    completed_steps = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        completed_steps = json.loads((resume_from / TRAINER_STATE).read_text(encoding="utf-8"))["step"]
        logger.info("resumed from %s at step %d", resume_from, completed_steps)

    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, completed_steps)
        run_args = {
            **vars(args),
            "num_processes": accelerator.num_processes,
            "global_batch_size": global_batch * args.gradient_accumulation_steps,
            "structured": use_headers,
            "train_sequences": len(packed["train"]),
            "validation_sequences": len(packed.get("validation", [])),
            "resumed_from": str(resume_from) if resume_from else None,
        }
        _write_json(output_dir / "training_args.json", run_args)
    if args.report_to != "none":
        accelerator.init_trackers(
            "pretrain",
            config={
                k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()
            },
        )

    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "run summary: %s config of %s | %d train / %d validation sequences of <= %d tokens | "
        "model %.1fM parameters, window %s, global tokens: %s | %d process(es) x %d x %d accumulation = %d "
        "sequences per step | %d steps (%d per epoch), lr %g, warmup %d, %s precision | -> %s",
        "structured" if use_headers else "plain",
        args.dataset,
        len(packed["train"]),
        len(packed.get("validation", [])),
        args.max_seq_length,
        n_params / 1e6,
        config.attention_window,
        list(config.global_attention_types)
        if use_headers
        else "none from the data"
        + (" ([CLS] by the model)" if "cls" in config.global_attention_types else ""),
        accelerator.num_processes,
        args.per_device_batch_size,
        args.gradient_accumulation_steps,
        global_batch * args.gradient_accumulation_steps,
        args.max_steps,
        steps_per_epoch,
        args.learning_rate,
        args.warmup_steps,
        args.mixed_precision,
        output_dir,
    )

    # ---- 4. The loop.
    progress = tqdm(
        total=args.max_steps,
        initial=completed_steps,
        desc="pretrain",
        disable=not accelerator.is_local_main_process,
    )
    epoch, skip = divmod(completed_steps, steps_per_epoch)
    skip *= args.gradient_accumulation_steps
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    last_checkpoint = list_checkpoints(output_dir / "checkpoints")
    last_checkpoint = last_checkpoint[-1][1] if last_checkpoint else None
    eval_results: dict[str, float] | None = None
    objective.train()
    while completed_steps < args.max_steps:
        collator.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        skip = 0
        # Accelerate's loader re-applies its own epoch counter to the sampler when iterated; a loader made
        # by skip_first_batches starts that counter at 0, so the epoch is set on the loader itself.
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = iter(loader)
        while completed_steps < args.max_steps:
            micro = list(itertools.islice(batches, args.gradient_accumulation_steps))
            if len(micro) < args.gradient_accumulation_steps:
                break
            # Dropout randomness is a function of (seed, step, process), so a resumed run replays it.
            torch.manual_seed(
                args.seed + 1_000_003 * (completed_steps + 1) + 7919 * accelerator.process_index
            )
            local_masked = sum(int((b["labels"] != -100).sum()) for b in micro)
            n_masked = accelerator.reduce(torch.tensor(float(local_masked), device=accelerator.device), "sum")
            n_masked = n_masked.clamp(min=1.0)
            step_loss = torch.zeros((), device=accelerator.device)
            for batch in micro:
                # accumulate() skips the gradient all-reduce (DDP) and the update (DeepSpeed) until the
                # last micro-batch of the step.
                with accelerator.accumulate(objective):
                    loss_sums, _ = objective(**batch)
                    loss_sum = loss_sums.sum()
                    # backward() divides by the accumulation steps and DDP averages over processes;
                    # undoing both leaves the mean over every masked token of the global batch.
                    scale = accelerator.num_processes * args.gradient_accumulation_steps
                    accelerator.backward(loss_sum * scale / n_masked)
                step_loss += loss_sum.detach().float()
                window_tokens += int(batch["attention_mask"].sum())
            if not accelerator.sync_gradients:
                raise RuntimeError(
                    "gradient accumulation lost step with the data: no sync on the last micro-batch"
                )
            loss = (accelerator.reduce(step_loss, "sum") / n_masked).item()
            if not math.isfinite(loss):
                progress.close()
                accelerator.end_training()
                where = (
                    f"the last good checkpoint is {last_checkpoint}"
                    if last_checkpoint
                    else "no checkpoint was saved"
                )
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss}) at step {completed_steps + 1}; stopped before the update, "
                    f"{where}. Lower --learning-rate or use --mixed-precision bf16/no, then resume with "
                    "--resume-from-checkpoint latest."
                )
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(objective.parameters(), args.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            completed_steps += 1
            progress.update(1)
            window_loss += loss
            window_steps += 1

            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_steps:
                tokens = accelerator.reduce(
                    torch.tensor(float(window_tokens), device=accelerator.device), "sum"
                )
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": completed_steps,
                    "epoch": epoch,
                    "loss": window_loss / window_steps,
                    "learning_rate": lr,
                    "tokens_per_second": tokens.item() / max(elapsed, 1e-9),
                }
                _log_metrics(accelerator, metrics_path, record)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()

            if eval_loader is not None and args.eval_steps and completed_steps % args.eval_steps == 0:
                eval_results = {
                    "step": completed_steps,
                    **evaluate(accelerator, objective, eval_loader, args.max_eval_batches),
                }
                _log_metrics(accelerator, metrics_path, eval_results)
                window_start = time.perf_counter()
            if args.save_steps and completed_steps % args.save_steps == 0:
                state = {"step": completed_steps, "epoch": epoch, "seed": args.seed}
                last_checkpoint = save_checkpoint(
                    accelerator, output_dir, completed_steps, tokenizer, state, args.save_total_limit
                )
                window_start = time.perf_counter()
        epoch += 1
    progress.close()

    if eval_loader is not None and (eval_results is None or eval_results["step"] != completed_steps):
        eval_results = {
            "step": completed_steps,
            **evaluate(accelerator, objective, eval_loader, args.max_eval_batches),
        }
        _log_metrics(accelerator, metrics_path, eval_results)
    accelerator.wait_for_everyone()
    # get_state_dict gathers sharded (FSDP) or partitioned (DeepSpeed) weights into one full state dict.
    state_dict = accelerator.get_state_dict(objective)
    final_model = accelerator.unwrap_model(objective).model
    final_model.save_pretrained(
        output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict={k.removeprefix("model."): v for k, v in state_dict.items()}
        if state_dict is not None
        else None,
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        if eval_results is not None:
            summary = {
                k: eval_results[k]
                for k in ("eval_loss", "eval_bits_per_masked_token", "eval_perplexity", "step")
            }
            _write_json(output_dir / "eval_results.json", summary)
            logger.info(
                "validation: %.4f bits per masked token, perplexity %.2f",
                summary["eval_bits_per_masked_token"],
                summary["eval_perplexity"],
            )
        logger.info("saved the final model and tokenizer to %s", output_dir)
    accelerator.end_training()
    return 0


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint so the file reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _log_metrics(accelerator, path: Path, record: dict[str, Any]) -> None:
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    if accelerator.is_main_process:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info(
            " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        )


if __name__ == "__main__":
    raise SystemExit(main())
