"""The arguments of the trainers' sub-commands, as dataclasses parsed by :mod:`structformer.arguments`.

This module imports nothing heavy: ``structformer pretrain --help`` reads it without torch, and a script can build
the arguments of a run (``PretrainArguments(...)``) before it pays for the model's imports.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from structformer.arguments import flag, require, to_argv
from structformer.dataset_scripts.schema import PLAIN
from structformer.trainers.tasks import TASKS, get_task

# How a document becomes training sequences: "first" = its first max_seq_length tokens (the paper's
# choice), "all" = every token, packed into as many sequences as it takes (trainers/data.py).
DOCUMENT_CHUNKS = ("first", "all")


@dataclass(kw_only=True)
class TrainingArguments:
    """Options every trainer shares; the flag is the field name with dashes (``--learning-rate``)."""

    output_dir: str = field(metadata={"help": "where checkpoints, metrics and the results are written"})
    seed: int = field(default=42, metadata={"help": "seed of the data order, masking and dropout"})
    per_device_batch_size: int = field(
        default=8,
        metadata={
            "help": "sequences per process and micro-batch",
            "aliases": ["--per-device-train-batch-size"],
        },
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (never on biases and LayerNorm weights)"}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradient clipping norm; 0 disables clipping"}
    )
    lr_scheduler_type: Literal["linear", "cosine", "constant_with_warmup"] = field(
        default="linear", metadata={"help": "learning-rate schedule", "aliases": ["--lr-scheduler"]}
    )
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps (wins over --warmup-ratio)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up as a share of the steps"})
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "autocast dtype"})
    logging_steps: int = field(default=10, metadata={"help": "log the mean loss every N steps"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps; 0 = no checkpoints"})
    save_total_limit: int | None = field(
        default=None, metadata={"help": "keep only the newest N checkpoints"}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (the newest intact checkpoint in --output-dir) or a checkpoint folder"},
    )
    report_to: Literal["tensorboard", "none"] = field(default="none", metadata={"help": "experiment tracker"})
    max_loss_factor: float = field(
        default=10.0,
        metadata={
            "help": "stop as diverged when a step's loss exceeds this multiple of the run's first step's loss, "
            "or of 1 when that was lower (a finite loss can explode too; 0 = only NaN/inf stops)"
        },
    )

    def __post_init__(self) -> None:
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps"):
            require(getattr(self, name) >= 1, f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_steps", "max_grad_norm", "weight_decay"):
            require(getattr(self, name) >= 0, f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        require(self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}")
        require(
            self.max_loss_factor == 0 or self.max_loss_factor > 1,
            f"--max-loss-factor must be 0 (off) or above 1, got {self.max_loss_factor}",
        )
        require(0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        require(
            self.max_steps is None or self.max_steps >= 1,
            f"--max-steps must be at least 1, got {self.max_steps}",
        )
        require(
            self.save_total_limit is None or self.save_total_limit >= 1,
            f"--save-total-limit must be at least 1, got {self.save_total_limit}",
        )

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps or math.ceil(self.warmup_ratio * total_steps)

    def to_argv(self) -> list[str]:
        """The command line that parses back into these arguments (for ``accelerate launch``)."""
        return to_argv(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(kw_only=True)
class PretrainArguments(TrainingArguments):
    """``structformer pretrain`` options (the shared ones are in :class:`TrainingArguments`)."""

    command: ClassVar[str] = "pretrain"
    description: ClassVar[str] = "Masked-LM pre-training of StructBERT (structured or plain corpus config)."

    dataset: str = field(metadata={"help": "corpus folder (Parquet + README.md) or Hub id"})
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "arxiv_structured (headings are global) or arxiv_plain; default: the dataset's default"
        },
    )
    text_column: str = field(default="text", metadata={"help": "column holding the document text"})
    max_seq_length: int = field(default=4096, metadata={"help": "tokens per packed sequence"})
    validation_split: float = field(
        default=0.05,
        metadata={
            "help": "share of training documents held out when the corpus has no validation split (0 = none)"
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "processes for datasets.map"}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of words masked"})
    document_chunks: str = field(
        default="first",
        metadata={
            "help": "first = each document's first --max-seq-length tokens (the paper's sequences); all = "
            "every token, packed (later sequences repeat the title as context, never as a label)"
        },
    )
    min_document_tokens: int | None = field(
        default=None,
        metadata={"help": "drop documents with fewer tokens, in every split (the paper: 2000)"},
    )
    max_document_tokens: int | None = field(
        default=None,
        metadata={"help": "drop documents with more tokens, in every split (the paper: 12000)"},
    )
    eval_seed: int = field(
        default=0,
        metadata={
            "help": "seed of the validation masks, independent of --seed: runs with the same eval seed are "
            "scored on the same [MASK] positions"
        },
    )
    pad_to_multiple_of: str = field(
        default="window",
        metadata={
            "help": "pad batches to a multiple of this length: an integer, 0 = the longest row, or 'window' "
            "(the attention window: few distinct shapes and whole attention blocks)"
        },
    )
    mask_headings: bool = field(
        default=True,
        metadata={"help": "heading and title tokens may be masked like any token (--no-mask-headings)"},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer folder (default: the --init-from one)"}
    )
    vocab_size: int = field(
        default=30522,
        metadata={
            "help": "without --tokenizer or --init-from: train a WordPiece tokenizer of this size on the corpus"
        },
    )
    init_from: str | None = field(
        default=None, metadata={"help": "StructBERT checkpoint, or a BERT/RoBERTa/Longformer one (converted)"}
    )
    model_config: str = field(default="tiny", metadata={"help": "preset (tiny, small, base) or JSON file"})
    attention_window: int | None = field(
        default=None, metadata={"help": "override the config's window (even)"}
    )
    global_attention_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "override the config's global_attention_types (e.g. title section; 'none' for no global token)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward"}
    )
    eval_steps: int = field(default=500, metadata={"help": "evaluate every N steps; 0 = only at the end"})
    max_eval_batches: int | None = field(
        default=None, metadata={"help": "cap on validation batches per evaluation"}
    )
    max_steps: int = field(metadata={"help": "optimizer steps"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_seq_length >= 8, f"--max-seq-length must be at least 8, got {self.max_seq_length}")
        require(
            0.0 <= self.validation_split < 1.0,
            f"--validation-split must be in [0, 1), got {self.validation_split}",
        )
        require(
            0.0 < self.mlm_probability < 1.0,
            f"--mlm-probability must be in (0, 1), got {self.mlm_probability}",
        )
        require(self.eval_steps >= 0, f"--eval-steps must be >= 0, got {self.eval_steps}")
        require(
            self.document_chunks in DOCUMENT_CHUNKS,
            f"--document-chunks must be one of {DOCUMENT_CHUNKS}, got {self.document_chunks!r}",
        )
        for name in ("min_document_tokens", "max_document_tokens"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"--{name.replace('_', '-')} must be positive, got {value}")
        require(
            not (self.min_document_tokens and self.max_document_tokens)
            or self.min_document_tokens <= self.max_document_tokens,
            "--min-document-tokens must not exceed --max-document-tokens",
        )
        require(self.dataloader_num_workers >= 0, "--dataloader-num-workers must be >= 0")
        require(
            self.attention_window is None or (self.attention_window > 0 and self.attention_window % 2 == 0),
            f"--attention-window must be a positive even number (+-window/2 each side), got {self.attention_window}",
        )
        require(
            self.pad_to_multiple_of == "window" or (self.pad_to_multiple_of.isdigit()),
            f"--pad-to-multiple-of: expected an integer >= 0 or 'window', got {self.pad_to_multiple_of!r}",
        )

    def pad_multiple(self, window: int) -> int | None:
        """The collator's padding multiple for a model of this (largest) window; None = no rounding."""
        return window if self.pad_to_multiple_of == "window" else int(self.pad_to_multiple_of) or None

    def padded_length(self, window: int) -> int:
        """The longest batch the collator can produce: --max-seq-length rounded up to the multiple."""
        multiple = self.pad_multiple(window)
        return math.ceil(self.max_seq_length / multiple) * multiple if multiple else self.max_seq_length


@dataclass(kw_only=True)
class FinetuneArguments(TrainingArguments):
    """``structformer finetune`` options (the shared ones are in :class:`TrainingArguments`)."""

    command: ClassVar[str] = "finetune"
    description: ClassVar[str] = (
        "Fine-tune a StructBERT checkpoint on SciREX or on CSV/JSON/JSON-lines files, over several seeds."
    )

    task: str = field(metadata={"help": f"one of {', '.join(TASKS)} (trainers/tasks.py)"})
    model: str = field(metadata={"help": "a StructBERT checkpoint folder"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "a fast tokenizer folder (default: --model)"}
    )
    scirex: str | None = field(
        default=None,
        metadata={
            "help": "SciREX for the scirex-* tasks: a folder with the official train/dev/test.jsonl, or one "
            "JSON-lines file split 70/15/15 by a hash of doc_id"
        },
    )
    max_docs: int | None = field(
        default=None, metadata={"help": "SciREX: use the first N documents of the file"}
    )
    eval_split: Literal["dev", "test"] = field(default="test", metadata={"help": "SciREX split to score"})
    train_file: str | None = field(default=None, metadata={"help": "CSV, TSV, JSON or JSON-lines"})
    validation_file: str | None = field(default=None, metadata={"help": "scored unless --test-file is given"})
    test_file: str | None = field(default=None, metadata={"help": "scored instead of validation when given"})
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "default: text, or sentence1 sentence2, or sentence"}
    )
    label_column: str = field(default="label", metadata={"help": "sequence-classification label column"})
    tokens_column: str = field(default="tokens", metadata={"help": "token-classification words column"})
    tags_column: str | None = field(default=None, metadata={"help": "default: ner_tags, tags or labels"})
    label_names: list[str] | None = field(
        default=None, metadata={"help": "names of integer tags, in id order"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "documents (SciREX) or rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "documents (SciREX) or rows"})
    max_seq_length: int = field(default=512, metadata={"help": "tokens per window"})
    stride: int | None = field(
        default=None,
        metadata={
            "help": "overlap in tokens between consecutive windows (default: 128, at most half a window)"
        },
    )
    use_structure: bool = field(
        default=True,
        metadata={
            "help": "headings get global attention and their section ids (--no-use-structure: plain text)"
        },
    )
    global_attention_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "heading levels whose tokens are global with --use-structure (default: the model config's); "
            "the experiment sets the same for every model"
        },
    )
    ner_predictions: str | None = field(
        default=None,
        metadata={
            "help": "scirex-salient: also score end to end, on a NER model's predicted mentions: a scirex-ner "
            "output folder (seed-N/ner_predictions.jsonl, paired by seed) or one SciREX --ner-file"
        },
    )
    seeds: list[int] = field(default_factory=lambda: [1], metadata={"help": "one fine-tuning run per seed"})
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "default: the train size"})
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "epochs (--max-steps wins)", "aliases": ["--num-epochs"]}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa, ... (default: the model's)"}
    )
    save_model: bool = field(default=False, metadata={"help": "save_pretrained each seed's model"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak AdamW learning rate"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "warm-up as a share of the steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps; 0 = no checkpoints"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "replace an earlier run's results in --output-dir (its results, arguments and seed-* folders "
            "are removed first); without it such a folder is refused, unless --resume-from-checkpoint"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.task.replace("_", "-") in TASKS,
            f"--task: unknown task {self.task!r}; choose from {', '.join(TASKS)}",
        )
        self.task = get_task(self.task).name
        if TASKS[self.task].inputs == "scirex":
            require(
                self.scirex is not None, f"--task {self.task} needs --scirex PATH (a SciREX JSON-lines file)"
            )
        else:
            require(
                self.train_file is not None and (self.validation_file or self.test_file) is not None,
                f"--task {self.task} needs --train-file and --validation-file or --test-file",
            )
        require(
            self.ner_predictions is None or self.task == "scirex-salient",
            "--ner-predictions goes with --task scirex-salient",
        )
        require(self.max_seq_length >= 8, "--max-seq-length must be at least 8")
        if self.stride is None:
            self.stride = min(128, (self.max_seq_length - 2) // 2)
        require(
            0 <= self.stride < self.max_seq_length - 2,
            f"--stride must be in [0, {self.max_seq_length - 2}) for --max-seq-length {self.max_seq_length}",
        )
        require(
            self.resume_from_checkpoint in (None, "latest") or len(self.seeds) == 1,
            "--resume-from-checkpoint PATH needs one seed; use 'latest' to resume every seed",
        )
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_batch_size


@dataclass(kw_only=True)
class TokenizerArguments:
    """``structformer train-tokenizer`` options."""

    command: ClassVar[str] = "train-tokenizer"
    description: ClassVar[str] = "Train a WordPiece tokenizer on a corpus."

    dataset: str = field(metadata={"help": "corpus folder or Hub id"})
    output_dir: str = field(metadata={"help": "where the tokenizer is saved"})
    dataset_config: str = field(
        default=PLAIN, metadata={"help": "config to read (the plain one is the same text without spans)"}
    )
    split: str = field(default="train", metadata={"help": "split to train on"})
    text_column: str = field(default="text", metadata={"help": "column holding the document text"})
    vocab_size: int = field(
        default=30522, metadata={"help": "tokens in the vocabulary, special ones included"}
    )
    min_frequency: int = field(default=2, metadata={"help": "a merge must be seen at least this often"})
    lowercase: bool = field(
        default=True, metadata={"help": "lowercase the text (--no-lowercase: a cased vocab)"}
    )
    max_documents: int | None = field(default=None, metadata={"help": "train on at most this many documents"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder"})

    def __post_init__(self) -> None:
        require(self.vocab_size >= 1, f"--vocab-size must be positive, got {self.vocab_size}")
        require(self.min_frequency >= 1, f"--min-frequency must be at least 1, got {self.min_frequency}")
        require(
            self.max_documents is None or self.max_documents >= 1,
            f"--max-documents must be positive, got {self.max_documents}",
        )


@dataclass(kw_only=True)
class AnalyzeAttentionArguments:
    """``structformer analyze-attention`` options."""

    command: ClassVar[str] = "analyze-attention"
    description: ClassVar[str] = (
        "Attention-pattern analysis of StructBERT checkpoints, with and without the structure mask."
    )

    checkpoints: list[str] = field(metadata={"help": "StructBERT model folders"})
    probe: str = field(
        metadata={"help": "a built corpus folder, an arxiv_structured Parquet file, or a SciREX .jsonl"}
    )
    output_dir: str = field(metadata={"help": "where attention.json and the figures are written"})
    labels: list[str] | None = field(
        default=None, metadata={"help": "one name per checkpoint (default: folder names)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer folder (default: each checkpoint's own)"}
    )
    split: str = field(default="validation", metadata={"help": "corpus split to probe (corpus folders only)"})
    max_length: int = field(
        default=512,
        metadata={
            "help": "tokens kept per document; memory grows as layers x heads x length^2",
            "aliases": ["--max-seq-length"],
        },
    )
    max_docs: int | None = field(default=None, metadata={"help": "probe at most this many documents"})
    keywords_per_section: int = field(default=5, metadata={"help": "keywords listed per section"})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda when available)"}
    )

    def __post_init__(self) -> None:
        require(self.max_length >= 2, f"--max-length must be at least 2, got {self.max_length}")
