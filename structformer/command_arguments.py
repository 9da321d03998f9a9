"""The arguments of the commands that live in ``structformer/`` itself: ``experiment`` and ``convert``.

Like every sub-command's arguments they are dataclasses parsed by :mod:`structformer.arguments`, in a module that
imports nothing heavy, so that ``--help`` answers before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from structformer.arguments import require
from structformer.dataset_scripts.schema import PLAIN, STRUCTURED


def _default_global_attention_types() -> list[str]:
    # The model config's default; imported when a run needs it (it loads transformers), not for --help.
    from structformer.modeling.configuration_structbert import DEFAULT_GLOBAL_ATTENTION_TYPES

    return list(DEFAULT_GLOBAL_ATTENTION_TYPES)


@dataclass(frozen=True)
class Arm:
    """One pre-training arm: the corpus config it reads and the model's global attention types
    (None: the experiment's ``--global-attention-types``)."""

    dataset_config: str
    global_attention_types: tuple[str, ...] | None
    description: str


ARMS: dict[str, Arm] = {
    "structured": Arm(STRUCTURED, None, "title and heading tokens global (the paper's structured arm)"),
    "plain": Arm(PLAIN, (), "no global token at all (the paper's vanilla arm)"),
    "cls": Arm(PLAIN, ("cls",), "only [CLS] global (BERT-style, not in the paper)"),
    "structured-cls": Arm(STRUCTURED, ("cls",), "heading tokens and [CLS] global (not in the paper)"),
}


@dataclass(kw_only=True)
class ExperimentArguments:
    """``structformer experiment`` options. With none it is a few-minute smoke test on the bundled sample."""

    command: ClassVar[str] = "experiment"
    description: ClassVar[str] = (
        "Pre-train a structured and a plain StructBERT on the same corpus, compare their bits per masked token, "
        "attention patterns and (with --scirex) SciREX scores, and write report.md + results.json. With no "
        "options it is a few-minute smoke test on the bundled sample papers."
    )

    output_dir: str = field(default="experiment", metadata={"help": "where the experiment is written"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder on success"})
    # corpus
    sources: list[str] | None = field(
        default=None,
        metadata={
            "help": "LaTeX inputs for build-corpus: arXiv source .tar files, paper folders or .tex files "
            "(default: the bundled sample, packed into an arXiv-style tar)"
        },
    )
    corpus_dir: str | None = field(
        default=None, metadata={"help": "an already built corpus folder (skips the build)"}
    )
    metadata: str | None = field(
        default=None, metadata={"help": "arXiv metadata snapshot (JSON lines) for the build"}
    )
    min_document_tokens: int | None = field(
        default=None, metadata={"help": "keep documents of at least this many tokens (the paper: 2000)"}
    )
    max_document_tokens: int | None = field(
        default=None, metadata={"help": "keep documents of at most this many tokens (the paper: 12000)"}
    )
    num_proc: int = field(default=1, metadata={"help": "processes for the corpus build"})
    validation_fraction: float = field(
        default=0.15, metadata={"help": "share of documents held out (bits, probe)"}
    )
    min_validation: int = field(default=3, metadata={"help": "at least this many held-out documents"})
    # model and pre-training
    tokenizer: str | None = field(
        default=None, metadata={"help": "a tokenizer folder (default: train a WordPiece one)"}
    )
    vocab_size: int = field(default=2000, metadata={"help": "size of the trained WordPiece vocabulary"})
    model_config: str = field(
        default="tiny",
        metadata={"help": "model preset name or config JSON (see trainers.presets)", "aliases": ["--preset"]},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "start both models from this checkpoint (BERT/RoBERTa/Longformer/StructBERT)"},
    )
    arms: list[str] = field(
        default_factory=lambda: ["structured", "plain"],
        metadata={"help": f"pre-training arms, compared with the first that is 'plain': {', '.join(ARMS)}"},
    )
    global_attention_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "heading levels made global in the structured arms (add 'cls' for [CLS] too); default: the "
            "model config's, the paper's structured arm (the title and every heading level it had)"
        },
    )
    document_chunks: Literal["first", "all"] = field(
        default="first",
        metadata={
            "help": "first = each document's first --max-seq-length tokens (the paper); all = every token"
        },
    )
    max_steps: int = field(default=200, metadata={"help": "pre-training steps of each model"})
    max_seq_length: int = field(default=256, metadata={"help": "tokens per pre-training sequence"})
    attention_window: int | None = field(
        default=None,
        metadata={"help": "the local window (default: the preset's; 256, the paper's, with --init-from)"},
    )
    per_device_batch_size: int = field(default=8, metadata={"help": "sequences per process and micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float | None = field(
        default=None, metadata={"help": "default: 5e-4 from scratch, 5e-5 with --init-from"}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "default: 10%% of --max-steps"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: final model only)"})
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "pre-training seeds; within a seed every arm sees the same data order"},
    )
    eval_seed: int = field(
        default=0, metadata={"help": "seed of the validation [MASK] positions, the same for every model"}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "autocast dtype"})
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "run the pre-training through `accelerate launch --config_file FILE` (multi-GPU, FSDP, DeepSpeed)"
        },
    )
    # attention analysis
    probe_max_docs: int = field(default=32, metadata={"help": "validation documents probed"})
    probe_max_length: int | None = field(
        default=None, metadata={"help": "tokens per probe document (default: --max-seq-length)"}
    )
    # SciREX fine-tuning (only with --scirex)
    scirex: str | None = field(
        default=None,
        metadata={
            "help": "SciREX: a folder with the official train/dev/test.jsonl, or one JSON-lines file (e.g. "
            "train.jsonl) split 70/15/15 by a hash of doc_id"
        },
    )
    scirex_max_docs: int | None = field(
        default=None, metadata={"help": "use at most this many SciREX documents"}
    )
    finetune_seeds: list[int] = field(
        default_factory=lambda: [1], metadata={"help": "fine-tuning seeds (per pre-trained model)"}
    )
    finetune_epochs: float = field(default=1.0, metadata={"help": "fine-tuning epochs"})
    finetune_max_steps: int | None = field(
        default=None, metadata={"help": "cap on fine-tuning steps per run"}
    )
    finetune_learning_rate: float | None = field(
        default=None, metadata={"help": "default: 5e-4 from scratch, 5e-5 with --init-from"}
    )
    finetune_max_seq_length: int | None = field(default=None, metadata={"help": "default: --max-seq-length"})
    finetune_structure: Literal["matched", "always", "never"] = field(
        default="always",
        metadata={
            "help": "SciREX headings global when fine-tuning: always = for every model (the default: one setting "
            "for all, so fine-tuning does not confound the pre-training difference), never = for none, "
            "matched = only for models pre-trained with heading globals"
        },
    )

    def __post_init__(self) -> None:
        if self.global_attention_types is None:
            self.global_attention_types = list(_default_global_attention_types())
        # A pre-trained start needs BERT-sized steps; the tiny from-scratch model learns nothing with them.
        default_lr = 5e-5 if self.init_from else 5e-4
        self.learning_rate = self.learning_rate or default_lr
        self.finetune_learning_rate = self.finetune_learning_rate or default_lr
        require(not (self.sources and self.corpus_dir), "give --sources or --corpus-dir, not both")
        if self.init_from and self.attention_window is None:
            self.attention_window = 256  # the paper's window; Longformer-base's own is 512
        unknown = [a for a in self.arms if a not in ARMS]
        require(not unknown, f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
        require(len(set(self.arms)) == len(self.arms) >= 1, "--arms: name each arm once")
        require(len(set(self.seeds)) == len(self.seeds) >= 1, "--seeds: give distinct seeds")
        require(
            "cls" not in self.global_attention_types or len(self.global_attention_types) > 1,
            "--global-attention-types: name heading levels (add 'cls' beside them, or use --arms cls)",
        )
        for name in ("max_steps", "max_seq_length", "per_device_batch_size", "vocab_size", "probe_max_docs"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be positive")
        for name in (
            "sources",
            "corpus_dir",
            "metadata",
            "tokenizer",
            "init_from",
            "accelerate_config",
            "scirex",
        ):
            values = getattr(self, name)
            for value in values if isinstance(values, list) else [values] if values else []:
                require(Path(value).exists(), f"--{name.replace('_', '-')}: {value} does not exist")


@dataclass(kw_only=True)
class ConvertArguments:
    """``structformer convert`` options."""

    command: ClassVar[str] = "convert"
    description: ClassVar[str] = (
        "Convert a local BERT, RoBERTa or Longformer checkpoint (masked-LM or encoder) to StructBERT."
    )

    source: str = field(metadata={"help": "source checkpoint folder", "aliases": ["--from"]})
    output_dir: str = field(metadata={"help": "output folder (empty or new)", "aliases": ["--to"]})
    max_position_embeddings: int | None = field(
        default=None,
        metadata={
            "help": "positions of the result (default: the source's); longer tables tile the learned rows"
        },
    )
    attention_window: str | None = field(
        default=None,
        metadata={
            "help": "even window width, or one per layer separated by commas (default: Longformer's, else "
            "StructBERT's)"
        },
    )
    global_attention_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "structural elements made global (default: the model config's, the title and headings; add "
            "'cls' to make [CLS] global)"
        },
    )

    def __post_init__(self) -> None:
        require(
            self.attention_window is None
            or all(part.strip().isdigit() for part in self.attention_window.split(",")),
            f"--attention-window: expected an integer or integers separated by commas, got {self.attention_window!r}",
        )

    def window(self) -> int | list[int] | None:
        """``--attention-window`` as the config takes it: one width, or one per layer."""
        if self.attention_window is None:
            return None
        parts = [int(part) for part in self.attention_window.split(",")]
        return parts[0] if len(parts) == 1 else parts
