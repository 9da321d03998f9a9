"""Masked-LM pre-training of StructBERT: an explicit Accelerate loop.

Runs as ``python trainers/pretrain.py ...``, ``accelerate launch trainers/pretrain.py ...``,
``structformer pretrain ...`` and, from Python, ``run_pretraining(PretrainArguments(...))``. The same
script trains the structured model (``--dataset-config arxiv_structured``: heading tokens are global)
and its plain twin (``arxiv_plain``: same tokens, no global ones).

The steps are functions of their own: :func:`load_data`, :func:`load_or_train_tokenizer`,
:func:`model_config`, :func:`pack_splits`, :func:`make_loaders`, then the shared loop
(:func:`structformer.trainers.core.train`) and :func:`save_final`. Masks are a function of
``(seed, epoch, example)``; the rest of exact resume is the core's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from structformer.arguments import parse_dataclass
from structformer.convert import convert_checkpoint
from structformer.dataset_scripts.schema import DEFAULT_CONFIG, PLAIN, STRUCTURED, find_shards, load_corpus
from structformer.errors import InputError, run_command
from structformer.modeling import StructBertConfig, StructBertForMaskedLM
from structformer.trainers.arguments import PretrainArguments
from structformer.trainers.core import (
    EpochShuffleSampler,
    Fitting,
    Hooks,
    NonFiniteLossError,
    check_resume_identity,
    disk_full_stops,
    fit,
    global_batch_size,
    hub_unreachable,
    resume_point,
    training_run,
    write_json_atomically,
    write_run_arguments,
)
from structformer.trainers.data import (
    DataCollatorForStructuredMLM,
    IndexedDataset,
    corpus_fingerprint,
    pack_batch,
    sequence_features,
)
from structformer.trainers.presets import get_model_config
from structformer.trainers.run_files import (
    EVAL_DOCUMENTS_FILE,
    EVAL_RESULTS_FILE,
    METRICS_FILE,
)
from structformer.trainers.statistics import unigram_log2_probs
from structformer.trainers.tokenizer import load_tokenizer, tokenizer_hash, train_wordpiece

CONVERTIBLE_MODEL_TYPES = ("bert", "roberta", "longformer")

logger = logging.getLogger("structformer.pretrain")

__all__ = ["NonFiniteLossError", "PretrainArguments", "main", "parse_args", "run_pretraining"]


def parse_args(argv: list[str] | None = None) -> PretrainArguments:
    return parse_dataclass(PretrainArguments, argv)


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer


def training_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed loss of the masked positions of ``batch``: the model's own loss (a mean, computed with
    ``config.sparse_prediction`` on those positions only) times their count, so that the loop can weight
    micro-batches and processes by masked tokens (``weight_fn``)."""
    outputs = model(**batch)
    count = int((batch["labels"] != -100).sum())
    # No masked position: the mean is NaN; a zero that keeps the graph (the logits are (0, V)).
    return outputs.loss * count if count else outputs.logits.sum() * 0.0


def masked_lm_scores(
    model: nn.Module, labels: torch.Tensor, **inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss sums (nats) and counts of the positions whose label is not -100, from the model's
    sparse-prediction logits (``(M, V)``, the predicted positions in row-major order): what the evaluation
    needs per document."""
    logits = model(**inputs, labels=labels).logits  # (M, V)
    selected = labels != -100
    losses = F.cross_entropy(logits.float(), labels[selected], reduction="none")  # (M,)
    rows = selected.nonzero()[:, 0]
    loss_sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device).index_add(
        0, rows, losses
    )
    return loss_sums, selected.sum(dim=1)


def check_tokenizer_matches(tokenizer, config, source: str, reference_tokenizer=None) -> None:
    """Fail early when token ids would index the wrong (or no) embedding rows."""
    if len(tokenizer) > config.vocab_size:
        raise InputError(
            f"tokenizer has {len(tokenizer)} tokens but {source} has vocab_size {config.vocab_size}: "
            "the tokenizer does not match the checkpoint"
        )
    if tokenizer.pad_token_id != config.pad_token_id:
        raise InputError(
            f"tokenizer pad id {tokenizer.pad_token_id} differs from {source}'s pad_token_id {config.pad_token_id}: "
            "the tokenizer does not match the checkpoint"
        )
    if reference_tokenizer is not None:
        for name in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id", "unk_token_id"):
            ours, theirs = getattr(tokenizer, name), getattr(reference_tokenizer, name)
            if ours != theirs:
                raise InputError(
                    f"tokenizer {name} = {ours} but {source}'s own tokenizer has {theirs}: "
                    "the tokenizer does not match the checkpoint"
                )
        if len(tokenizer) != len(reference_tokenizer):
            raise InputError(
                f"tokenizer has {len(tokenizer)} tokens but {source}'s own tokenizer has {len(reference_tokenizer)}: "
                "the tokenizer does not match the checkpoint"
            )


@dataclass
class InitSource:
    """``--init-from``: the checkpoint folder, its model type and its own tokenizer (if any)."""

    path: Path
    model_type: str
    tokenizer: Any = None

    @classmethod
    def read(cls, value: str | None) -> InitSource | None:
        if value is None:
            return None
        path = Path(value)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise InputError(f"--init-from {path}: no config.json (expected a model checkpoint folder)")
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8"))["model_type"]
        except (json.JSONDecodeError, KeyError) as err:
            raise InputError(f"{config_path}: cannot read model_type ({err})") from None
        if model_type != StructBertConfig.model_type and model_type not in CONVERTIBLE_MODEL_TYPES:
            raise InputError(
                f"--init-from {path}: model_type {model_type!r} is neither structbert nor one of "
                f"{CONVERTIBLE_MODEL_TYPES}"
            )
        return cls(path, model_type, load_tokenizer(path) if _has_tokenizer(path) else None)


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json"))


def _max_window(window: int | list[int]) -> int:
    return max(window) if isinstance(window, list) else window


def _config_overrides(args: PretrainArguments) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.attention_window is not None:
        overrides["attention_window"] = args.attention_window
    if args.global_attention_types is not None:
        overrides["global_attention_types"] = list(args.global_attention_types)
    return overrides


def load_data(args: PretrainArguments, accelerator: Accelerator) -> tuple[dict[str, Any], bool]:
    """The corpus splits (a validation split held out of train when there is none) and whether the
    rows carry headers that make their heading tokens global."""
    structured = (args.dataset_config or DEFAULT_CONFIG) == STRUCTURED
    required = [args.text_column] + (["headers"] if structured else [])
    local = Path(args.dataset).expanduser().exists()
    if not local and hub_unreachable():
        # Fail now: the Hub client would retry for a minute, then end in a 30-line ConnectionError.
        raise InputError(
            f"--dataset {args.dataset}: no corpus folder or Hub dataset named {args.dataset!r}, and the Hub is "
            "unreachable; give a built corpus folder (structformer build-corpus) or check the name and the network"
        )
    with accelerator.main_process_first():  # one process downloads / prepares the Arrow cache
        try:
            raw = dict(
                load_corpus(
                    args.dataset, args.dataset_config, cache_dir=args.cache_dir, required_columns=required
                )
            )
        except ConnectionError as err:
            raise InputError(
                f"--dataset {args.dataset}: no corpus folder or Hub dataset named {args.dataset!r}, and the Hub "
                f"is unreachable ({err})"
            ) from err
        except (pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError, OSError) as err:
            broken = _unreadable_shard(Path(args.dataset).expanduser()) if local else None
            if broken is None:
                raise
            raise InputError(
                f"{broken[0]}: not a readable Parquet shard ({broken[1]}); the file is truncated or corrupt: "
                "rebuild the corpus with structformer build-corpus"
            ) from err
    if "train" not in raw:
        raise InputError(f"--dataset {args.dataset}: no 'train' split; splits are {sorted(raw)}")
    use_headers = "headers" in raw["train"].column_names and args.dataset_config != PLAIN
    if "validation" not in raw and args.validation_split > 0 and len(raw["train"]) > 1:
        held_out = raw["train"].train_test_split(test_size=args.validation_split, seed=args.seed)
        raw = {"train": held_out["train"], "validation": held_out["test"]}
    return raw, use_headers


def _unreadable_shard(corpus: Path) -> tuple[Path, str] | None:
    """The first shard of a corpus folder whose Parquet footer cannot be read, and why."""
    for splits in find_shards(corpus).values():
        for paths in splits.values():
            for path in paths:
                try:
                    pq.read_metadata(path)
                except (pyarrow.ArrowException, OSError) as err:
                    return path, str(err)
    return None


def _tokenizer_folder(args: PretrainArguments, init: InitSource | None, resume: Path | None) -> Path:
    """Where this run's tokenizer is: the checkpoint's, --tokenizer, --init-from's, or OUT/tokenizer (trained)."""
    if resume is not None and _has_tokenizer(resume):
        return resume
    if args.tokenizer:
        return Path(args.tokenizer)
    if init is not None:
        if init.tokenizer is None:
            raise InputError(f"--init-from {init.path} has no tokenizer files; pass --tokenizer")
        return init.path
    return Path(args.output_dir) / "tokenizer"


def load_or_train_tokenizer(
    args: PretrainArguments,
    accelerator: Accelerator,
    raw: dict[str, Any],
    init: InitSource | None,
    resume: Path | None,
) -> Any:
    """The checkpoint's tokenizer on resume, else --tokenizer, else --init-from's, else one trained
    on the training split."""
    folder = _tokenizer_folder(args, init, resume)
    if folder != Path(args.output_dir) / "tokenizer":
        return init.tokenizer if init is not None and folder == init.path else load_tokenizer(folder)
    tokenizer_dir = folder
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            logger.info(
                "training a %d-token WordPiece tokenizer on the corpus -> %s", args.vocab_size, tokenizer_dir
            )
            texts = (row[args.text_column] for row in raw["train"])
            train_wordpiece(texts, args.vocab_size, tokenizer_dir, model_max_length=args.max_seq_length)
    return load_tokenizer(tokenizer_dir)


def model_config(
    args: PretrainArguments, accelerator: Accelerator, tokenizer: Any, init: InitSource | None
) -> tuple[StructBertConfig, Path | None]:
    """The model's config and the folder to load weights from (None = from scratch). A BERT, RoBERTa
    or Longformer ``--init-from`` is converted into ``OUT/converted_init`` first."""
    overrides = _config_overrides(args)
    if init is None:
        config = get_model_config(
            args.model_config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides
        )
        check_tokenizer_matches(tokenizer, config, f"--model-config {args.model_config}")
        source = None
    elif init.model_type == StructBertConfig.model_type:
        config = StructBertConfig.from_pretrained(init.path, **overrides)
        check_tokenizer_matches(tokenizer, config, f"--init-from {init.path}", init.tokenizer)
        source = init.path
    else:
        source_config = json.loads((init.path / "config.json").read_text(encoding="utf-8"))
        source_config.setdefault("pad_token_id", 0)
        check_tokenizer_matches(
            tokenizer,
            StructBertConfig(
                vocab_size=source_config["vocab_size"], pad_token_id=source_config["pad_token_id"]
            ),
            f"--init-from {init.path}",
            init.tokenizer,
        )
        source = Path(args.output_dir) / "converted_init"
        source_window = args.attention_window or (
            source_config.get("attention_window") if init.model_type == "longformer" else None
        )
        needed = args.padded_length(_max_window(source_window or StructBertConfig().attention_window))
        usable = source_config["max_position_embeddings"] - (0 if init.model_type == "bert" else 2)
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                logger.info("converting %s checkpoint %s -> %s", init.model_type, init.path, source)
                # The run's own derived copy, made again by every run and resume (convert refuses a used folder).
                shutil.rmtree(source, ignore_errors=True)
                convert_checkpoint(
                    init.path,
                    source,
                    # Longer inputs than the source covers: tile its learned positions (as Longformer did).
                    max_position_embeddings=needed if needed > usable else None,
                    attention_window=args.attention_window,
                    global_attention_types=args.global_attention_types,
                )
        config = StructBertConfig.from_pretrained(source, **overrides)
    padded = args.padded_length(_max_window(config.attention_window))
    if padded > config.max_position_embeddings:
        raise InputError(
            f"--max-seq-length {args.max_seq_length} (padded to {padded}) exceeds the model's "
            f"max_position_embeddings {config.max_position_embeddings}"
        )
    return config, source


def filter_by_length(args: PretrainArguments, accelerator: Accelerator, raw: dict[str, Any], tokenizer: Any):
    """Drop documents outside ``[--min-document-tokens, --max-document-tokens]`` from every split.

    Both corpus configs hold the same texts, so both arms keep the same documents.
    """
    low, high = args.min_document_tokens or 0, args.max_document_tokens or math.inf
    if not (args.min_document_tokens or args.max_document_tokens):
        return raw

    def keep(batch: dict[str, list]) -> list[bool]:
        lengths = tokenizer(batch[args.text_column], add_special_tokens=False, return_length=True)["length"]
        return [low <= n <= high for n in lengths]

    kept = {}
    with accelerator.main_process_first():
        for split, dataset in raw.items():
            kept[split] = dataset.filter(keep, batched=True, batch_size=32, desc=f"length filter {split}")
            logger.info(
                "%s: %d of %d documents have %s to %s tokens",
                split, len(kept[split]), len(dataset), low, high,
            )  # fmt: skip
    if len(kept.get("train", [])) == 0:
        raise InputError(
            f"--min-document-tokens {args.min_document_tokens} / --max-document-tokens "
            f"{args.max_document_tokens} leave no training document"
        )
    return kept


def pack_splits(
    args: PretrainArguments,
    accelerator: Accelerator,
    raw: dict[str, Any],
    tokenizer: Any,
    config: StructBertConfig,
    use_headers: bool,
) -> dict[str, Any]:
    """Tokenize and pack every split once (cached by datasets, main process first).

    Training sequences follow ``--document-chunks``; validation is always one sequence per document,
    its first ``--max-seq-length`` tokens (the paper's evaluation), in the split's order.
    """
    pack_kwargs = {
        "tokenizer": tokenizer,
        "max_seq_length": args.max_seq_length,
        "global_attention_types": list(config.global_attention_types),
        "use_headers": use_headers,
        "text_column": args.text_column,
    }
    chunks = {"train": args.document_chunks, "validation": "first"}
    workers = args.preprocessing_num_workers if (args.preprocessing_num_workers or 0) > 1 else None
    packed = {}
    with accelerator.main_process_first():
        for split in ("train", "validation"):
            if split in raw:
                packed[split] = (
                    raw[split]
                    .map(
                        pack_batch,
                        batched=True,
                        batch_size=32,
                        num_proc=workers,
                        remove_columns=raw[split].column_names,
                        features=sequence_features(),
                        fn_kwargs={**pack_kwargs, "document_chunks": chunks[split]},
                        desc=f"tokenizing and packing {split}",
                    )
                    .with_format("numpy")
                )
    if "validation" in packed and len(packed["validation"]) != len(raw["validation"]):
        raise InputError(
            f"--dataset {args.dataset}: {len(raw['validation']) - len(packed['validation'])} validation "
            "documents have no tokens; every validation document must give one sequence"
        )
    per_step = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    if len(packed["train"]) < per_step:
        raise InputError(
            f"--dataset {args.dataset}: {len(packed['train'])} training sequences are fewer than one optimizer "
            f"step's {per_step} (batch x processes x accumulation)"
        )
    return packed


def make_loaders(
    args: PretrainArguments, packed: dict[str, Any], tokenizer: Any, config: StructBertConfig
) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (epoch-seeded shuffle and masking) and the validation loader, if any."""

    def collator(seed: int, mask_headings: bool) -> DataCollatorForStructuredMLM:
        return DataCollatorForStructuredMLM(
            tokenizer,
            mlm_probability=args.mlm_probability,
            mask_headings=mask_headings,
            pad_to_multiple_of=args.pad_multiple(_max_window(config.attention_window)),
            seed=seed,
            vocab_size=config.vocab_size,
        )

    train_loader = DataLoader(
        IndexedDataset(packed["train"]),
        batch_size=args.per_device_batch_size,
        sampler=EpochShuffleSampler(len(packed["train"]), args.seed),
        collate_fn=collator(args.seed, args.mask_headings),
        drop_last=True,
        num_workers=args.dataloader_num_workers,
    )
    if len(packed.get("validation", [])) == 0:
        return train_loader, None
    eval_loader = DataLoader(
        IndexedDataset(packed["validation"]),
        batch_size=args.per_device_batch_size,
        # Validation masks depend on the eval seed and the document alone (headings maskable like any
        # word), so every arm and every pre-training seed is scored on the same [MASK] positions.
        collate_fn=collator(args.eval_seed, True),
        num_workers=args.dataloader_num_workers,
    )
    return train_loader, eval_loader


def build_model(
    args: PretrainArguments, config: StructBertConfig, source: Path | None
) -> StructBertForMaskedLM:
    if source is None:
        model = StructBertForMaskedLM(config)
    else:
        model = StructBertForMaskedLM.from_pretrained(source, config=config)
    if args.gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (deprecated, removed in v6).
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader,
    max_batches: int | None,
    mask_token_id: int,
    per_document: dict[str, list] | None = None,
    unigram: torch.Tensor | None = None,
) -> dict[str, float]:
    """Validation bits per ``[MASK]`` token, the paper's metric.

    Only positions whose input is ``[MASK]`` are scored (the 10% random and 10% kept tokens of BERT's
    masking are labels in training, not here). Each validation row is one document (its first
    ``--max-seq-length`` tokens), so:

    - ``eval_bits_per_mask_token``: the mean over documents of each document's mean bits (the paper's
      figure, measured with evaluation batch 1);
    - ``eval_bits_per_mask_token_pooled``: total bits over total ``[MASK]`` tokens;
    - ``eval_loss`` (nats, pooled) and ``eval_perplexity`` = exp(``eval_loss``);
    - ``eval_documents`` (with at least one ``[MASK]``) and ``eval_mask_tokens``.

    ``per_document`` (when given) receives each document's ``mask_tokens`` and ``bits`` in split order.
    With ``unigram`` (log2 probabilities per token id), the same figures of that trivial model on the
    same positions come back as ``unigram_*`` (and ``unigram_bits`` per document).
    """
    model.eval()
    sums, counts, unigram_sums = [], [], []
    for k, batch in enumerate(dataloader):
        if max_batches is not None and k >= max_batches:
            break
        labels = batch["labels"].masked_fill(batch["input_ids"] != mask_token_id, -100)
        loss_sums, mask_counts = masked_lm_scores(model, **{**batch, "labels": labels})
        loss_sums, mask_counts = accelerator.gather_for_metrics((loss_sums.double(), mask_counts.double()))
        sums.append(loss_sums.cpu())
        counts.append(mask_counts.cpu())
        if unigram is not None:
            table = unigram.to(labels.device)
            row_bits = torch.where(labels != -100, -table[labels.clamp(min=0)], 0.0).sum(dim=1)
            unigram_sums.append(accelerator.gather_for_metrics(row_bits.double()).cpu() * math.log(2))
    model.train()
    count = torch.cat(counts)
    results = _bits_figures("eval", torch.cat(sums), count, per_document, "bits")
    if unigram is not None:
        unigram_figures = _bits_figures(
            "unigram", torch.cat(unigram_sums), count, per_document, "unigram_bits"
        )
        results.update({k: v for k, v in unigram_figures.items() if "bits" in k})
    return results


def _bits_figures(
    prefix: str, loss_sum: torch.Tensor, count: torch.Tensor, per_document: dict | None, key: str
) -> dict[str, float]:
    """The mean of per-document means and the pooled figure, from per-document nat sums and counts."""
    scored = count > 0
    bits = (loss_sum[scored] / count[scored] / math.log(2)).tolist()
    pooled = (loss_sum.sum() / count.sum().clamp(min=1)).item()
    if per_document is not None:
        per_document["mask_tokens"] = [int(c) for c in count.tolist()]
        per_document[key] = [
            (s / c / math.log(2)) if c > 0 else None for s, c in zip(loss_sum.tolist(), count.tolist())
        ]
    return {
        f"{prefix}_bits_per_mask_token": sum(bits) / max(len(bits), 1),
        f"{prefix}_bits_per_mask_token_pooled": pooled / math.log(2),
        f"{prefix}_loss": pooled,
        f"{prefix}_perplexity": math.exp(min(pooled, 700.0)),
        f"{prefix}_documents": len(bits),
        f"{prefix}_mask_tokens": int(count.sum().item()),
    }


EVAL_KEYS = (
    "eval_bits_per_mask_token",
    "eval_bits_per_mask_token_pooled",
    "eval_loss",
    "eval_perplexity",
    "eval_documents",
    "eval_mask_tokens",
)
UNIGRAM_KEYS = ("unigram_bits_per_mask_token", "unigram_bits_per_mask_token_pooled")


def save_final(
    accelerator: Accelerator,
    model: nn.Module,
    tokenizer: Any,
    output_dir: Path,
    eval_results: dict | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``save_pretrained`` of the model (OUT is the final model) and ``eval_results.json`` (the final
    evaluation's :data:`EVAL_KEYS` and ``step``, plus ``extra``)."""
    accelerator.wait_for_everyone()
    # get_state_dict gathers sharded (FSDP) or partitioned (DeepSpeed) weights into one full state dict.
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    then = "rerun with --resume-from-checkpoint latest (the checkpoints are intact)"
    # Sparse prediction is how this run trains; the saved config keeps transformers' usual full logits.
    sparse, unwrapped.config.sparse_prediction = unwrapped.config.sparse_prediction, False
    try:
        with disk_full_stops("the final model", output_dir / "model.safetensors", then):
            unwrapped.save_pretrained(
                output_dir,
                is_main_process=accelerator.is_main_process,
                save_function=accelerator.save,
                state_dict=state_dict,
            )
    finally:
        unwrapped.config.sparse_prediction = sparse
    summary: dict[str, Any] = {}
    if eval_results is not None:
        summary = {k: eval_results[k] for k in (*EVAL_KEYS, "step")}
        summary.update(extra or {})
    if accelerator.is_main_process:
        # The tokenizer saved beside the model must not promise more tokens than the model has positions
        # (truncation=True, the fill-mask pipeline); the hash covers tokenizer.json, which this leaves alone.
        tokenizer.model_max_length = unwrapped.config.max_position_embeddings
        tokenizer.save_pretrained(output_dir)
        if summary:
            summary["tokenizer_sha256"] = tokenizer_hash(output_dir)
            write_json_atomically(output_dir / EVAL_RESULTS_FILE, summary)
            logger.info(
                "validation: %.4f bits per [MASK] token (mean of %d documents), %.4f pooled",
                summary["eval_bits_per_mask_token"],
                summary["eval_documents"],
                summary["eval_bits_per_mask_token_pooled"],
            )
        logger.info("saved the final model and tokenizer to %s", output_dir)
    return summary


# ----------------------------------------------------------------------------------------------------
# The run


def _summary(
    args: PretrainArguments,
    config: StructBertConfig,
    packed: dict,
    use_headers: bool,
    model,
    epoch_steps: int,
    accelerator: Accelerator,
) -> str:
    global_batch = global_batch_size(accelerator, args)
    globals_ = (
        list(config.global_attention_types)
        if use_headers
        else "none from the data"
        + (" ([CLS] by the model)" if "cls" in config.global_attention_types else "")
    )
    return (
        f"run summary: {'structured' if use_headers else 'plain'} config of {args.dataset} | "
        f"{len(packed['train'])} train / {len(packed.get('validation', []))} validation sequences of <= "
        f"{args.max_seq_length} tokens | model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"window {config.attention_window}, global tokens: {globals_} | {accelerator.num_processes} process(es) x "
        f"{args.per_device_batch_size} x {args.gradient_accumulation_steps} accumulation = {global_batch} sequences "
        f"per step | {args.max_steps} steps ({epoch_steps} per epoch), lr {args.learning_rate:g}, warmup "
        f"{args.warmup(args.max_steps)}, {args.mixed_precision} precision | -> {args.output_dir}"
    )


# The flags that decide the training data and the model: a resume must keep them (run_identity).
IDENTITY_FLAGS = (
    "dataset_config",
    "text_column",
    "max_seq_length",
    "validation_split",
    "mlm_probability",
    "document_chunks",
    "min_document_tokens",
    "max_document_tokens",
    "mask_headings",
    "pad_to_multiple_of",
    "init_from",
    "model_config",
    "attention_window",
    "global_attention_types",
    "vocab_size",
)


def run_identity(args: PretrainArguments) -> dict[str, Any]:
    """What a checkpoint of this run depends on: the corpus (folder and fingerprint), the given tokenizer's
    hash (None when the run trains its own) and the data and model flags."""
    dataset = Path(args.dataset).expanduser()
    tokenizer = next(
        (Path(p) for p in (args.tokenizer, args.init_from) if p and _has_tokenizer(Path(p))), None
    )
    return {
        "dataset": str(dataset.resolve()) if dataset.exists() else args.dataset,
        "corpus_fingerprint": corpus_fingerprint(args.dataset),
        # A missing --tokenizer folder is reported by load_tokenizer, with the usual message.
        "tokenizer_sha256": tokenizer_hash(tokenizer) if tokenizer else None,
        **{name: getattr(args, name) for name in IDENTITY_FLAGS},
    }


def run_pretraining(args: PretrainArguments) -> dict[str, Any]:
    """Pre-train and save; returns the final evaluation summary (empty without a validation split).

    ``--output-dir`` may not overlap an input folder, and is locked for the run (one run per folder)."""
    inputs = {"--init-from": args.init_from, "--tokenizer": args.tokenizer, "--dataset": args.dataset}
    with training_run(args, "pretrain", inputs) as accelerator:
        return _pretrain(args, accelerator, Path(args.output_dir))


def _pretrain(args: PretrainArguments, accelerator: Accelerator, output_dir: Path) -> dict[str, Any]:
    checkpoints = output_dir / "checkpoints"
    resumed = resume_point(args, checkpoints)
    resume_dir = resumed[0] if resumed else None
    identity = run_identity(args)
    if resumed:
        check_resume_identity(*resumed, identity)

    # Everything that can fail on bad input fails here, before any training.
    raw, use_headers = load_data(args, accelerator)
    init = InitSource.read(args.init_from)
    if init is None:
        get_model_config(args.model_config, **_config_overrides(args))  # validate before training a tokenizer
    tokenizer = load_or_train_tokenizer(args, accelerator, raw, init, resume_dir)
    raw = filter_by_length(args, accelerator, raw, tokenizer)
    config, source = model_config(args, accelerator, tokenizer, init)
    set_seed(args.seed)
    packed = pack_splits(args, accelerator, raw, tokenizer, config, use_headers)
    train_loader, eval_loader = make_loaders(args, packed, tokenizer, config)
    model = build_model(args, config, source)
    # The masked-LM head projects only the masked positions (~15% of a row): most of its memory and time.
    model.config.sparse_prediction = True

    documents: dict[str, list] = {}
    initial_file = output_dir / "eval_initial.json"

    def evaluate_now(fitting: Fitting, unigram: torch.Tensor | None = None) -> dict[str, float]:
        return evaluate(
            accelerator,
            fitting.model,
            fitting.eval_loader,
            args.max_eval_batches,
            tokenizer.mask_token_id,
            documents,
            unigram,
        )

    def before_training(fitting: Fitting) -> None:
        write_run_arguments(
            accelerator,
            args,
            str(resume_dir) if resume_dir else None,
            {
                "corpus_fingerprint": identity["corpus_fingerprint"],
                "tokenizer_sha256": tokenizer_hash(_tokenizer_folder(args, init, resume_dir)),
                "structured": use_headers,
                "train_sequences": len(packed["train"]),
                "validation_sequences": len(packed.get("validation", [])),
            },
        )
        logger.info(
            _summary(args, config, packed, use_headers, fitting.model, fitting.epoch_steps, accelerator)
        )
        if fitting.eval_loader is None or fitting.resumed:
            return
        # Two baselines on the same [MASK] positions: the untrained model (where every arm starts) and a unigram
        # model of the training sequences' tokens.
        sequences = (ids for batch in _batches(packed["train"], ["input_ids"]) for ids in batch["input_ids"])
        unigram = torch.from_numpy(
            unigram_log2_probs(sequences, config.vocab_size, tokenizer.all_special_ids)
        )
        initial = evaluate_now(fitting, unigram.float())
        initial = {"step": 0, **initial, "bits": documents["bits"], "unigram_bits": documents["unigram_bits"]}
        if accelerator.is_main_process:
            write_json_atomically(initial_file, initial)

    progress = tqdm(total=args.max_steps, desc="pretrain", disable=not accelerator.is_local_main_process)
    with progress:
        fitting = fit(
            accelerator,
            args,
            model,
            train_loader,
            eval_loader,
            loss_fn=training_loss,
            weight_fn=lambda batch: int((batch["labels"] != -100).sum()),
            total_steps=args.max_steps,
            checkpoint_dir=checkpoints,
            resumed=resumed,
            identity=identity,
            progress=progress,
            metrics_file=output_dir / METRICS_FILE,
            hooks=Hooks(
                evaluate=evaluate_now if eval_loader is not None else None,
                before_training=before_training,
                save_extra=tokenizer.save_pretrained,
            ),
            eval_steps=args.eval_steps,
        )
    eval_results = fitting.eval_results
    if eval_loader is not None and (eval_results is None or eval_results["step"] != args.max_steps):
        eval_results = {"step": args.max_steps, **evaluate_now(fitting)}
        fitting.metrics.log(eval_results)
    extra = run_facts(args, config, packed, accelerator)
    if eval_loader is not None and initial_file.is_file():
        initial = json.loads(initial_file.read_text(encoding="utf-8"))
        extra.update({f"initial_{k}": initial[k] for k in EVAL_KEYS})
        extra.update({k: initial[k] for k in UNIGRAM_KEYS})
        documents["initial_bits"] = initial["bits"]
        documents["unigram_bits"] = initial["unigram_bits"]
    summary = save_final(accelerator, fitting.model, tokenizer, output_dir, eval_results, extra)
    if eval_loader is not None and accelerator.is_main_process:
        ids = raw["validation"]["id"] if "id" in raw["validation"].column_names else None
        ids = ids[: len(documents["mask_tokens"])] if ids is not None else None  # --max-eval-batches
        write_json_atomically(output_dir / EVAL_DOCUMENTS_FILE, {"ids": ids, **documents})
    return summary


def _batches(dataset: Any, columns: list[str], size: int = 1024):
    """Column batches of a (large) dataset, so no column is held in memory whole."""
    return dataset.select_columns(columns).iter(batch_size=size)


def run_facts(
    args: PretrainArguments, config: StructBertConfig, packed: dict[str, Any], accelerator: Accelerator
) -> dict[str, Any]:
    """What a reader needs to compare arms: global tokens per sequence and training tokens seen."""
    sequences = tokens = global_tokens = 0
    for batch in _batches(packed["train"], ["length", "global_attention_mask"]):
        sequences += len(batch["length"])
        tokens += int(sum(int(n) for n in batch["length"]))
        global_tokens += int(sum(int(sum(row)) for row in batch["global_attention_mask"]))
    # "cls" is made global by the model, not by the data: counted here so 0 means no global token.
    cls_global = int("cls" in config.global_attention_types)
    mean_length = tokens / sequences
    return {
        "global_tokens_per_sequence": global_tokens / sequences + cls_global,
        "train_sequences": sequences,
        "mean_train_sequence_length": mean_length,
        # Steps x global batch x mean length: exact in expectation, since every epoch draws each sequence once.
        "train_tokens_seen": round(args.max_steps * global_batch_size(accelerator, args) * mean_length),
        "global_attention_types": list(config.global_attention_types),
        "attention_window": _max_window(config.attention_window),
        "document_chunks": args.document_chunks,
        "eval_seed": args.eval_seed,
    }


def run(args: PretrainArguments) -> int:
    run_pretraining(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command("pretrain", main))
