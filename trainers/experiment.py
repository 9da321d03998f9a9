"""The main job: the structured-versus-plain experiment, end to end, in one command.

``structformer experiment --output-dir EXP`` runs every step:

1. build the corpus (default: the bundled sample papers packed into an arXiv-style ``.tar``);
2. train a WordPiece tokenizer on its training split (or take ``--tokenizer`` / ``--init-from``'s);
3. pre-train the structured and the plain model with the same seed, steps and data order;
4. read the bits per masked token of each;
5. analyse their attention patterns on the validation split;
6. fine-tune each on SciREX when ``--scirex PATH`` is given (both tasks, every seed);
7. write ``report.md`` (tables and figures) and ``results.json``, and a model card per model.

Nothing is written halfway: the work happens in a temporary folder beside ``EXP`` that is moved into
place only when every step has succeeded, so a failed run leaves any earlier ``EXP`` untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from structformer.dataset_scripts.build import BuildOptions, build_corpus
from structformer.dataset_scripts.sample import pack_sample_archive
from structformer.dataset_scripts.schema import PLAIN, REPORT_FILE, STRUCTURED, find_shards, shard_glob
from structformer.errors import InputError, run_command
from structformer.hub_cards.cards import write_model_card
from structformer.trainers import pretrain
from structformer.trainers.analyze_attention import analyze
from structformer.trainers.core import parse_arguments, require
from structformer.trainers.finetune import FinetuneArguments, run_finetune
from structformer.trainers.pretrain import PretrainArguments, run_pretraining
from structformer.trainers.report import write_report
from structformer.trainers.results import RESULTS_FILE, ExperimentResults, write_results
from structformer.trainers.tokenizer import train_wordpiece

logger = logging.getLogger(__name__)

VARIANTS = {"structured": STRUCTURED, "plain": PLAIN}
SCIREX_TASKS = ("scirex-ner", "scirex-salient")


@dataclass(kw_only=True)
class ExperimentArguments:
    """``structformer experiment`` options. With none it is a few-minute smoke test on the bundled sample."""

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
    max_steps: int = field(default=200, metadata={"help": "pre-training steps of each model"})
    max_seq_length: int = field(default=256, metadata={"help": "tokens per pre-training sequence"})
    attention_window: int | None = field(default=None, metadata={"help": "override the preset's window"})
    per_device_batch_size: int = field(default=8, metadata={"help": "sequences per process and micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float | None = field(
        default=None, metadata={"help": "default: 5e-4 from scratch, 5e-5 with --init-from"}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "default: 10%% of --max-steps"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: final model only)"})
    seed: int = field(default=42, metadata={"help": "pre-training seed, the same for both models"})
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
    scirex: str | None = field(default=None, metadata={"help": "a SciREX JSON-lines file (e.g. train.jsonl)"})
    scirex_max_docs: int | None = field(
        default=None, metadata={"help": "use at most this many SciREX documents"}
    )
    seeds: list[int] = field(default_factory=lambda: [1], metadata={"help": "fine-tuning seeds"})
    finetune_epochs: float = field(default=1.0, metadata={"help": "fine-tuning epochs"})
    finetune_max_steps: int | None = field(
        default=None, metadata={"help": "cap on fine-tuning steps per run"}
    )
    finetune_learning_rate: float | None = field(
        default=None, metadata={"help": "default: 5e-4 from scratch, 5e-5 with --init-from"}
    )
    finetune_max_seq_length: int | None = field(default=None, metadata={"help": "default: --max-seq-length"})
    finetune_structure: Literal["matched", "always", "never"] = field(
        default="matched",
        metadata={
            "help": "SciREX headings global when fine-tuning: matched = for the structured model only (each model "
            "reads documents as it was pre-trained), always = for both, never = for neither"
        },
    )

    def __post_init__(self) -> None:
        # A pre-trained start needs BERT-sized steps; the tiny from-scratch model learns nothing with them.
        default_lr = 5e-5 if self.init_from else 5e-4
        self.learning_rate = self.learning_rate or default_lr
        self.finetune_learning_rate = self.finetune_learning_rate or default_lr
        require(not (self.sources and self.corpus_dir), "give --sources or --corpus-dir, not both")
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


def parse_args(argv: list[str] | None = None) -> ExperimentArguments:
    return parse_arguments(
        ExperimentArguments,
        argv,
        prog="structformer experiment",
        description=(
            "Pre-train a structured and a plain StructBERT on the same corpus, compare their bits per masked "
            "token, attention patterns and (with --scirex) SciREX scores, and write report.md + results.json. "
            "With no options it is a few-minute smoke test on the bundled sample papers."
        ),
    )


# ----------------------------------------------------------------------------- steps


def build_corpus_step(args: ExperimentArguments, work: Path) -> tuple[Path, dict]:
    """The corpus folder and its build report; builds from the sources unless ``--corpus-dir``."""
    if args.corpus_dir:
        corpus = Path(args.corpus_dir)
        report_file = corpus / REPORT_FILE
        return corpus, json.loads(report_file.read_text()) if report_file.exists() else {}

    if args.sources:
        sources = [Path(s) for s in args.sources]
    else:
        sources = [pack_sample_archive(work / "sources")]
    options = BuildOptions(
        num_proc=args.num_proc,
        metadata=args.metadata,
        validation_fraction=args.validation_fraction,
        min_validation=args.min_validation,
    )
    # A build without records raises InputError itself.
    return work / "corpus", build_corpus(sources, work / "corpus", options)


def corpus_texts(corpus: Path, split: str = "train") -> list[str]:
    """The ``text`` column of one split of a built corpus, for the tokenizer."""
    files = find_shards(corpus)[STRUCTURED].get(split)
    if not files:
        raise InputError(f"{corpus}: no {split} shards under {shard_glob(STRUCTURED, split)}")
    return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]


def tokenizer_step(args: ExperimentArguments, work: Path, corpus: Path) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    if args.init_from:
        # A pre-trained checkpoint only makes sense with its own vocabulary.
        return Path(args.init_from)

    out = work / "tokenizer"
    train_wordpiece(corpus_texts(corpus), args.vocab_size, out)
    return out


def pretrain_arguments(
    args: ExperimentArguments, corpus: Path, tokenizer: Path, variant: str, out: Path
) -> PretrainArguments:
    """The same options for both variants; only the corpus config (and the output) differ."""
    return PretrainArguments(
        dataset=str(corpus),
        dataset_config=VARIANTS[variant],
        tokenizer=str(tokenizer),
        max_seq_length=args.max_seq_length,
        per_device_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10),
        max_steps=args.max_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=max(1, args.max_steps // 25),
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        cache_dir=str(out.parent / f".cache-{variant}"),
        output_dir=str(out),
        init_from=str(args.init_from) if args.init_from else None,
        model_config=args.model_config,
        attention_window=args.attention_window,
    )


def pretrain_step(args: ExperimentArguments, pretrain_args: PretrainArguments) -> None:
    """In this process, or through ``accelerate launch --config_file`` with the same options."""
    if args.accelerate_config:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(args.accelerate_config),
            str(Path(pretrain.__file__)), *pretrain_args.to_argv(),
        ]  # fmt: skip
        logger.info("running %s", " ".join(command))
        subprocess.run(command, check=True)
        return
    run_pretraining(pretrain_args)


def read_pretrain_metrics(model_dir: Path) -> dict:
    path = model_dir / "eval_results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: pre-training wrote no evaluation results")
    results = json.loads(path.read_text())
    return {
        k: results[k]
        for k in ("eval_bits_per_masked_token", "eval_perplexity", "eval_loss", "step")
        if k in results
    }


def finetune_step(
    args: ExperimentArguments, variant: str, model_dir: Path, out: Path, runs: dict | None = None
) -> dict:
    """Both SciREX tasks for one model: ``{task: {metric: {"mean", "std", "values"}}}``.

    ``runs`` (when given) receives, per task, the split sizes, steps and structure setting of the runs.
    """
    runs = {} if runs is None else runs

    length = args.finetune_max_seq_length or args.max_seq_length
    structure = args.finetune_structure == "always" or (
        args.finetune_structure == "matched" and variant == "structured"
    )
    downstream = {}
    for task in SCIREX_TASKS:
        results = run_finetune(
            FinetuneArguments(
                task=task,
                scirex=str(args.scirex),
                model=str(model_dir),
                output_dir=str(out / task),
                seeds=list(args.seeds),
                num_train_epochs=args.finetune_epochs,
                learning_rate=args.finetune_learning_rate,
                per_device_batch_size=args.per_device_batch_size,
                max_seq_length=length,
                stride=length // 4,
                mixed_precision=args.mixed_precision,
                use_structure=structure,
                max_docs=args.scirex_max_docs,
                max_steps=args.finetune_max_steps,
            )
        )
        runs[task.replace("-", "_")] = {
            "split_sizes": results.get("split_sizes"),
            "eval_split": results.get("eval_split"),
            "steps_per_seed": results.get("steps_per_seed"),
            "use_structure": results.get("use_structure"),
        }
        metrics = results["metrics"]
        downstream[task.replace("-", "_")] = {m: metrics[m] for m in ("f1", "precision", "recall")}
    return downstream


def write_model_cards(model_dirs: dict[str, Path], results: dict) -> list[str]:
    written = []
    for variant, model_dir in model_dirs.items():
        write_model_card(model_dir, results=_with_variant(results, variant))
        written.append(variant)
    return written


def _with_variant(results: dict, variant: str) -> dict:
    return {**results, "variant": variant}


# ----------------------------------------------------------------------------- the run


def _settings(args: ExperimentArguments) -> dict:
    settings = dataclasses.asdict(args)
    settings["probe_max_length"] = args.probe_max_length or args.max_seq_length
    settings["finetune_max_seq_length"] = args.finetune_max_seq_length or args.max_seq_length
    return settings


def run_experiment(args: ExperimentArguments) -> Path:
    """Run every step in a temporary folder beside the output, then move it into place."""
    output = Path(args.output_dir).resolve()
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        _run_steps(args, work, output)
        _move_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return output


def _move_into_place(work: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
    work.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_steps(args: ExperimentArguments, work: Path, output: Path) -> None:

    models = {variant: work / "models" / variant for variant in VARIANTS}
    timings: dict[str, float] = {}
    state: dict = {}

    def corpus() -> None:
        state["corpus"], state["build_report"] = build_corpus_step(args, work)

    def tokenizer() -> None:
        state["tokenizer"] = tokenizer_step(args, work, state["corpus"])

    def pretrain(variant: str) -> Callable[[], None]:
        def step() -> None:
            pretrain_step(
                args, pretrain_arguments(args, state["corpus"], state["tokenizer"], variant, models[variant])
            )
            state[f"pretrain_{variant}"] = read_pretrain_metrics(models[variant])
            # The tokenized-dataset cache is rebuilt cheaply and would only bloat the experiment folder.
            shutil.rmtree(models[variant].parent / f".cache-{variant}", ignore_errors=True)

        return step

    def attention() -> None:
        state["attention"] = analyze(
            [models[v] for v in VARIANTS],
            state["corpus"],
            work / "attention",
            labels=list(VARIANTS),
            max_length=args.probe_max_length or args.max_seq_length,
            max_docs=args.probe_max_docs,
        )

    def finetune(variant: str) -> Callable[[], None]:
        def step() -> None:
            runs = state.setdefault("scirex_runs", {}).setdefault(variant, {})
            state[f"downstream_{variant}"] = finetune_step(
                args, variant, models[variant], work / "finetune" / variant, runs
            )

        return step

    steps: list[tuple[str, Callable[[], None]]] = [
        ("build corpus", corpus),
        ("tokenizer", tokenizer),
        *[(f"pre-train {v}", pretrain(v)) for v in VARIANTS],
        ("attention analysis", attention),
    ]
    if args.scirex:
        steps += [(f"SciREX fine-tune {v}", finetune(v)) for v in VARIANTS]

    with tqdm(total=len(steps) + 1, desc="experiment", unit="step", position=0) as bar:
        for name, step in steps:
            bar.set_postfix_str(name)
            logger.info("experiment step: %s", name)
            start = time.perf_counter()
            step()
            timings[name] = time.perf_counter() - start
            bar.update(1)

        bar.set_postfix_str("report")
        results: ExperimentResults = {
            "settings": _settings(args),
            "models": {
                variant: {
                    "checkpoint": str(output / "models" / variant),
                    "pretrain": state[f"pretrain_{variant}"],
                    "downstream": state.get(f"downstream_{variant}", {}),
                }
                for variant in VARIANTS
            },
            "attention": {
                "summary": state["attention"]["summary"],
                "probe": state["attention"]["probe"],
                "figures": [f"attention/{name}" for name in state["attention"]["figures"]],
            },
        }
        write_results(work / RESULTS_FILE, results)
        cards = write_model_cards(models, results)
        write_report(
            results,
            work,
            build_report=state["build_report"],
            timings=timings,
            model_cards=cards,
            model_dirs=models,
            scirex_runs=state.get("scirex_runs"),
        )
        bar.update(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    output = run_experiment(args)
    minutes = (time.perf_counter() - start) / 60
    print(f"experiment finished in {minutes:.1f} min; report: {output / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("experiment", main))
