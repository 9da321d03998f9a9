"""The training core shared by ``pretrain`` and ``finetune``: arguments, checkpoints, the loop.

One of each: the argument dataclass both trainers extend (parsed by ``transformers.HfArgumentParser``),
the shuffle that makes resume exact, the optimizer and scheduler rule, the checkpoint save / verify /
resume / rotate cycle, the metrics logger and the optimizer-step loop with its non-finite-loss stop.

Exact resume rests on three choices: the data order is a function of ``(seed, epoch)``
(:class:`EpochShuffleSampler`), anything random in a batch a function of ``(seed, epoch, example)``,
and the dropout RNG is re-seeded from ``(seed, step, process)`` at every optimizer step. So a resumed
run needs only the weights, optimizer, scheduler and step of its checkpoint to continue bit for bit.

The loss of a step is ``sum(loss_sums) / sum(weights)`` over every micro-batch of every process, as
returned by the caller's ``loss_fn``; 2 processes give the same loss and gradients as 1 with the same
global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from structformer.errors import InputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
# A checkpoint whose recent loss is above this multiple of the best loss so far is "exploding": the NaN
# stop does not offer it as the one to resume from.
EXPLODING_LOSS_FACTOR = 2.0
# Flags a resumed run may change; they are applied to the restored optimizer and scheduler.
OPTIMIZER_FLAGS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")

logger = get_logger("structformer.trainers")

ArgumentsT = TypeVar("ArgumentsT", bound="TrainingArguments")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before applying the update."""


# ----------------------------------------------------------------------------------------------------
# Arguments


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

    def __post_init__(self) -> None:
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps"):
            require(
                getattr(self, name) >= 1, f"--{_flag(name)} must be at least 1, got {getattr(self, name)}"
            )
        for name in ("warmup_steps", "save_steps", "max_grad_norm", "weight_decay"):
            require(getattr(self, name) >= 0, f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        require(self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}")
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
        argv: list[str] = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None or (item.default is not dataclasses.MISSING and value == item.default):
                continue
            if item.default_factory is not dataclasses.MISSING and value == item.default_factory():
                continue
            if isinstance(value, bool):
                argv.append(f"--{_flag(item.name)}" if value else f"--no-{_flag(item.name)}")
            elif isinstance(value, (list, tuple)):
                # An empty list is spelled "none" (argparse's nargs="+" needs one value).
                argv += [f"--{_flag(item.name)}", *(map(str, value) if value else ["none"])]
            else:
                argv += [f"--{_flag(item.name)}", str(value)]
        return argv

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def parse_arguments(
    cls: type[ArgumentsT], argv: Sequence[str] | None, prog: str, description: str
) -> ArgumentsT:
    """``HfArgumentParser`` over ``cls``; a value that fails validation is a usage error (exit 2)."""
    parser = HfArgumentParser(cls, prog=prog, description=description)
    try:
        (args,) = parser.parse_args_into_dataclasses(
            args=list(sys.argv[1:] if argv is None else argv), look_for_args_file=False
        )
    except InputError as err:
        parser.error(str(err))
    return args


# ----------------------------------------------------------------------------------------------------
# Data order, optimizer, scheduler


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(length)`` that depends only on ``(seed, epoch)``.

    Accelerate shards its batches across processes, so every process and every resumed run sees
    the same global order.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.length, generator=generator).tolist()


def make_accelerator(args: TrainingArguments) -> Accelerator:
    return Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # The scheduler steps once per optimizer step whatever the number of processes.
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )


def build_optimizer(model: nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW; no decay on biases and on one-dimensional weights (LayerNorm, embeddings' norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int) -> Any:
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.warmup(total_steps),
        num_training_steps=total_steps,
    )


def apply_optimizer_flags(optimizer: Any, scheduler: Any, args: TrainingArguments, saved: dict) -> list[str]:
    """After ``load_state``: put the flags of this run into the restored optimizer and scheduler.

    ``load_state`` restores the old run's hyper-parameters with the state (the scheduler's base
    learning rate included), so a changed ``--learning-rate`` would otherwise be silently ignored.
    Returns one line per changed flag.
    """
    changed = [name for name in OPTIMIZER_FLAGS if name in saved and saved[name] != getattr(args, name)]
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the torch scheduler
    groups = optimizer.param_groups
    for group in groups:
        group["betas"] = (args.adam_beta1, args.adam_beta2)
        group["eps"] = args.adam_epsilon
    groups[0]["weight_decay"] = args.weight_decay  # the decayed group; the other one never decays
    inner.base_lrs = [args.learning_rate for _ in groups]
    for group, base, rule in zip(groups, inner.base_lrs, inner.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * rule(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in groups]
    return [f"--{_flag(name)} {saved[name]} -> {getattr(args, name)}" for name in changed]


# ----------------------------------------------------------------------------------------------------
# Checkpoints: written atomically, with a manifest of their files; verified before a resume.


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(root)): {"size": path.stat().st_size, "sha256": _digest(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != TRAINER_STATE
    }


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders, oldest first. A folder only gets its final name once fully written."""
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and path.is_dir():
                found.append((int(suffix), path))
    return sorted(found)


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The trainer state of an intact checkpoint; raises :class:`InputError` saying what is broken."""
    state_file = path / TRAINER_STATE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files, step = state["files"], int(state["step"])
    except FileNotFoundError:
        raise InputError(f"{path}: not a checkpoint (no {TRAINER_STATE})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{state_file} is unreadable ({type(err).__name__}: {err})") from None
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise InputError(f"{path}: {name} is missing")
        if file.stat().st_size != expected["size"]:
            raise InputError(
                f"{path}: {name} has {file.stat().st_size} bytes, {expected['size']} were written"
            )
        if _digest(file) != expected["sha256"]:
            raise InputError(f"{path}: {name} does not match its checksum (corrupted)")
    state["step"] = step
    return state


def resolve_checkpoint(value: str | None, checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from and its state, or None to start from scratch.

    ``latest`` is the newest intact checkpoint: broken ones are skipped with a warning that names
    them and says why. An explicit folder must be intact.
    """
    if value is None:
        return None
    if value != "latest":
        path = Path(value)
        try:
            return path, read_checkpoint_state(path)
        except InputError as err:
            raise InputError(f"--resume-from-checkpoint: {err}") from None
    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            return path, read_checkpoint_state(path)
        except InputError as err:
            logger.warning("skipping checkpoint %s: %s", path.name, err, main_process_only=True)
    return None


def save_checkpoint(
    accelerator: Accelerator,
    checkpoint_dir: Path,
    step: int,
    state: dict[str, Any],
    keep: int | None,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """``save_state`` into a temporary folder, add a manifest, then rename it into place.

    A kill mid-save leaves no checkpoint-STEP folder, and a file damaged later fails the manifest
    check on resume. ``keep`` rotates out all but the newest ``keep`` checkpoints.
    """
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if save_extra is not None:
            save_extra(tmp)
        write_json_atomically(tmp / TRAINER_STATE, {**state, "step": step, "files": _manifest(tmp)})
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


def global_batch_size(accelerator: Accelerator, args: TrainingArguments) -> int:
    """Sequences per optimizer step: per-device batch x processes x accumulation."""
    return args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps


def restore_checkpoint(
    accelerator: Accelerator,
    checkpoint: tuple[Path, dict],
    optimizer: Any,
    scheduler: Any,
    args: TrainingArguments,
) -> dict[str, Any]:
    """``load_state`` of a resolved checkpoint, once it is clear that this run can continue it exactly;
    changed optimizer flags are applied and logged. Returns the checkpoint's state.

    The data order and the position in it follow from the seed and the global batch, so a resume that
    changes either would silently train on other data than the run it continues: refused.
    """
    path, state = checkpoint
    for name, ours in (("seed", args.seed), ("global_batch_size", global_batch_size(accelerator, args))):
        if state.get(name) is not None and state[name] != ours:
            raise InputError(
                f"{path} was saved with {name} {state[name]} and this run has {ours}; the data order of a resumed "
                "run follows from both: resume with the same --seed and per-device batch x processes x "
                "accumulation, or start a new --output-dir"
            )
    accelerator.load_state(str(path))
    for change in apply_optimizer_flags(optimizer, scheduler, args, state.get("optimizer_flags", {})):
        logger.info("resume: applying the changed flag %s", change, main_process_only=True)
    logger.info("resumed from %s at step %d", path, state["step"], main_process_only=True)
    return state


def healthy_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint saved with a finite, non-exploding loss and finite weights."""
    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            if read_checkpoint_state(path).get("healthy"):
                return path
        except InputError:
            continue
    return None


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


def write_json_atomically(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Logging


def setup_logging(accelerator: Accelerator) -> None:
    """One handler; INFO on the main process, only warnings from the others (and from datasets there)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, stream=sys.stderr)
    logging.getLogger("structformer").setLevel(logging.INFO)
    if not accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_error()
        datasets.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()


class MetricsLogger:
    """``metrics.jsonl`` (one JSON object per record), the tracker, and one log line per record.

    On resume the records after the checkpoint's step are dropped, so the file reads as one
    uninterrupted run.
    """

    def __init__(
        self, accelerator: Accelerator, path: Path, resume_step: int, extra: dict[str, Any] | None = None
    ) -> None:
        self.accelerator, self.path, self.extra = accelerator, path, extra or {}
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.exists():
                lines = path.read_text(encoding="utf-8").splitlines()
                kept = [line for line in lines if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        record = {**self.extra, **record}
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        logger.info(
            " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
            main_process_only=True,
        )


# ----------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Loop:
    """What the optimizer-step loop needs besides the prepared objects.

    ``loss_fn(batch)`` returns the batch's summed loss and ``weight_fn(batch)`` its weight (masked
    tokens for a per-token mean, 1 for a model's own batch-mean loss), known before the forward pass so
    that each micro-batch's backward is already scaled for the mean over the global batch.
    """

    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    weight_fn: Callable[[dict[str, torch.Tensor]], float]
    total_steps: int
    metrics: MetricsLogger
    progress: tqdm
    checkpoint_dir: Path | None = None
    save_extra: Callable[[Path], None] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    eval_steps: int = 0


def train(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    loader: Any,
    args: TrainingArguments,
    loop: Loop,
    resumed: dict[str, Any] | None = None,
) -> dict[str, float] | None:
    """Optimizer steps up to ``loop.total_steps``, from the step of ``resumed`` (a checkpoint's
    state) or 0; returns the last evaluation, if any."""
    step = resumed["step"] if resumed else 0
    epoch, skip = divmod(step, steps_per_epoch(loader, args))
    skip *= args.gradient_accumulation_steps
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "lr": 0.0, "start": time.perf_counter()}
    health = _Health(best=(resumed or {}).get("best_loss", math.inf))
    eval_results = None
    model.train()
    while step < loop.total_steps:
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        # Accelerate's loader re-applies its own epoch counter to the sampler when iterated; a loader
        # made by skip_first_batches starts that counter at 0, so the epoch is set on the loader itself.
        batches.set_epoch(epoch)
        collate_fn = getattr(loader, "collate_fn", None)
        if hasattr(collate_fn, "set_epoch"):
            collate_fn.set_epoch(epoch)
        iterator = iter(batches)
        while step < loop.total_steps:
            micro = list(itertools.islice(iterator, args.gradient_accumulation_steps))
            if len(micro) < args.gradient_accumulation_steps:
                break
            # Dropout randomness is a function of (seed, step, process), so a resumed run replays it.
            torch.manual_seed(args.seed + 1_000_003 * (step + 1) + 7919 * accelerator.process_index)
            loss = _accumulate(accelerator, model, micro, loop, window)
            if not math.isfinite(loss):
                loop.progress.close()
                raise NonFiniteLossError(_non_finite_message(loss, step + 1, loop.checkpoint_dir))
            window["lr"] = _update(accelerator, model, optimizer, scheduler, args)
            step += 1
            loop.progress.update(1)
            window["loss"] += loss
            window["steps"] += 1
            health.losses.append(loss)
            if step % args.logging_steps == 0 or step == loop.total_steps:
                record = _window_record(accelerator, window, step, epoch)
                health.best = min(health.best, record["loss"])
                loop.metrics.log(record)
                loop.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}")
            if loop.evaluate is not None and loop.eval_steps and step % loop.eval_steps == 0:
                eval_results = {"step": step, **loop.evaluate()}
                loop.metrics.log(eval_results)
                window["start"] = time.perf_counter()
            if loop.checkpoint_dir is not None and args.save_steps and step % args.save_steps == 0:
                state = {"epoch": epoch, "seed": args.seed, **health.checkpoint(accelerator, model)}
                state["global_batch_size"] = global_batch_size(accelerator, args)
                state["optimizer_flags"] = {name: getattr(args, name) for name in OPTIMIZER_FLAGS}
                save_checkpoint(
                    accelerator, loop.checkpoint_dir, step, state, args.save_total_limit, loop.save_extra
                )
                window["start"] = time.perf_counter()
        epoch += 1
    return eval_results


def steps_per_epoch(loader: Any, args: TrainingArguments) -> int:
    """Optimizer steps in one pass over ``loader`` (a last incomplete accumulation group is dropped)."""
    steps = len(loader) // args.gradient_accumulation_steps
    require(
        steps > 0,
        f"one epoch has {len(loader)} batches per process, fewer than --gradient-accumulation-steps "
        f"{args.gradient_accumulation_steps}; lower it or --per-device-batch-size",
    )
    return steps


def _accumulate(
    accelerator: Accelerator,
    model: nn.Module,
    micro: list[dict[str, torch.Tensor]],
    loop: Loop,
    window: dict[str, Any],
) -> float:
    """Forward and backward over one step's micro-batches; returns the step's mean loss."""
    local_weight = sum(float(loop.weight_fn(batch)) for batch in micro)
    weight = accelerator.reduce(torch.tensor(local_weight, device=accelerator.device), "sum").clamp(min=1.0)
    # backward() divides by the accumulation steps and DDP averages over processes; undoing both
    # leaves the mean over the global batch.
    scale = accelerator.num_processes * len(micro)
    step_loss = torch.zeros((), device=accelerator.device)
    for batch in micro:
        # accumulate() skips the gradient all-reduce (DDP) and the update (DeepSpeed) until the last
        # micro-batch of the step.
        with accelerator.accumulate(model):
            loss_sum = loop.loss_fn(batch)
            accelerator.backward(loss_sum * scale / weight)
        step_loss += loss_sum.detach().float()
        window["tokens"] += _tokens(batch)
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation lost step with the data: no sync on the last micro-batch")
    return (accelerator.reduce(step_loss, "sum") / weight).item()


def _tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in a batch, padding excluded, for tokens per second; 0 for inputs without tokens."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel() if "input_ids" in batch else 0


def _update(
    accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any, args: TrainingArguments
) -> float:
    """Clip, step the optimizer and the scheduler; returns the learning rate the update used."""
    if args.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def _window_record(accelerator: Accelerator, window: dict[str, Any], step: int, epoch: int) -> dict[str, Any]:
    tokens = accelerator.reduce(torch.tensor(float(window["tokens"]), device=accelerator.device), "sum")
    elapsed = time.perf_counter() - window["start"]
    record = {
        "step": step,
        "epoch": epoch,
        "loss": window["loss"] / window["steps"],
        "learning_rate": window["lr"],
        "tokens_per_second": tokens.item() / max(elapsed, 1e-9),
    }
    window.update(loss=0.0, steps=0, tokens=0, start=time.perf_counter())
    return record


@dataclass
class _Health:
    """Whether a checkpoint is safe to resume from: its recent loss is finite and not exploding (at
    most ``EXPLODING_LOSS_FACTOR`` times the best logged loss) and its weights are finite."""

    best: float = math.inf
    losses: list[float] = field(default_factory=list)

    def checkpoint(self, accelerator: Accelerator, model: nn.Module) -> dict[str, Any]:
        recent = sum(self.losses) / max(len(self.losses), 1)
        self.losses.clear()
        self.best = min(self.best, recent)
        finite = torch.tensor(
            float(all(bool(torch.isfinite(p).all()) for p in model.parameters())), device=accelerator.device
        )
        finite = accelerator.reduce(finite, "sum").item() == accelerator.num_processes
        healthy = finite and math.isfinite(recent) and recent <= EXPLODING_LOSS_FACTOR * self.best
        return {"loss": recent, "best_loss": self.best, "healthy": healthy}


def _non_finite_message(loss: float, step: int, checkpoint_dir: Path | None) -> str:
    healthy = healthy_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    where = f"the last healthy checkpoint is {healthy}" if healthy else "no healthy checkpoint was saved"
    resume = f"--resume-from-checkpoint {healthy}" if healthy else "a fresh --output-dir"
    return (
        f"non-finite training loss ({loss}) at step {step}; stopped before the update, {where}. "
        f"Lower --learning-rate or use --mixed-precision bf16/no, then rerun with {resume}."
    )
