"""The training core shared by ``pretrain`` and ``finetune``: the run's lifecycle, checkpoints, the loop.

One of each: the run's lifecycle (:func:`training_run` sets a run up and tears it down, :func:`fit` resumes,
prepares, trains and hands back the prepared objects; the trainers supply their model, loaders, evaluation and
save hooks), the shuffle that makes resume exact, the optimizer and scheduler rule, the checkpoint save / verify
/ resume / rotate cycle, the metrics logger and the optimizer-step loop with its non-finite-loss stop. The
arguments both trainers extend are in :mod:`structformer.trainers.arguments`.

Exact resume rests on three choices: the data order is a function of ``(seed, epoch)``
(:class:`EpochShuffleSampler`), anything random in a batch a function of ``(seed, epoch, example)``,
and the dropout RNG is re-seeded from ``(seed, step, process)`` at every optimizer step. So a resumed
run needs only the weights, optimizer, scheduler and step of its checkpoint to continue bit for bit.

The loss of a step is ``sum(loss_sums) / sum(weights)`` over every micro-batch of every process, as
returned by the caller's ``loss_fn``; 2 processes give the same loss and gradients as 1 with the same
global batch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from huggingface_hub import constants as hub_constants
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from structformer import folder_lock
from structformer.arguments import flag, require
from structformer.errors import InputError, RunStopped
from structformer.trainers.arguments import TrainingArguments
from structformer.trainers.run_files import TRAINER_STATE_FILE, TRAINING_ARGS_FILE

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHECKPOINT_PREFIX = "checkpoint-"
# Held (flock) by the run writing an output folder; holds that run's pid for the refusal message.
OUTPUT_LOCK = ".structformer-train.lock"
# A checkpoint whose recent loss is above this multiple of the best loss so far is "exploding": the NaN
# stop does not offer it as the one to resume from.
EXPLODING_LOSS_FACTOR = 2.0
# Flags a resumed run may change; they are applied to the restored optimizer and scheduler.
OPTIMIZER_FLAGS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")

logger = get_logger("structformer.trainers")


class NonFiniteLossError(RunStopped):
    """The training loss became NaN or infinite, or rose above ``--max-loss-factor`` times its first value;
    the run stopped before applying the update."""


# ----------------------------------------------------------------------------------------------------
# The run: set up, resumed, prepared, trained and torn down the same way by every trainer


@contextlib.contextmanager
def training_run(
    args: TrainingArguments, command: str, inputs: dict[str, str | None]
) -> Iterator[Accelerator]:
    """One run into ``args.output_dir``: the folder is checked against the run's ``inputs`` (flag -> value, see
    :func:`check_output_dir`) and locked while the run lasts, the Accelerator, logging and the tracker are set
    up, and the tracker is closed when the run ends."""
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, inputs)
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    with output_lock(accelerator, output_dir, command):
        if args.report_to != "none":
            tracked = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in args.to_dict().items()
            }
            accelerator.init_trackers(command, config=tracked)
        yield accelerator
        accelerator.end_training()


def resume_point(args: TrainingArguments, checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The checkpoint ``--resume-from-checkpoint`` names and its state, or None for a fresh start.

    A fresh start into a folder that already holds checkpoints is refused: its checkpoints would mix with the
    old run's, and a later ``latest`` could pick the old run's."""
    found = resolve_checkpoint(args.resume_from_checkpoint, checkpoint_dir)
    if args.resume_from_checkpoint is None and list_checkpoints(checkpoint_dir):
        raise InputError(
            f"{checkpoint_dir} already holds checkpoints of another run: pass --resume-from-checkpoint latest "
            "to continue it, or choose a new --output-dir"
        )
    if args.resume_from_checkpoint == "latest" and found is None:
        logger.info(
            "--resume-from-checkpoint latest: no intact checkpoint in %s, starting from scratch",
            checkpoint_dir,
            main_process_only=True,
        )
    return found


def write_run_arguments(
    accelerator: Accelerator,
    args: TrainingArguments,
    resumed_from: str | None,
    facts: dict[str, Any] | None = None,
) -> None:
    """``OUT/training_args.json``: the arguments, the processes and global batch, the run's ``facts`` and, for
    a resumed run, where it resumed from and each flag it changed (earlier resumes' changes are kept: the file
    describes the whole run)."""
    if not accelerator.is_main_process:
        return
    path = Path(args.output_dir) / TRAINING_ARGS_FILE
    previous = json.loads(path.read_text(encoding="utf-8")) if resumed_from and path.is_file() else {}
    changes = changed_arguments(previous, args.to_dict())
    if changes:
        logger.warning(
            "resumed with changed flags: %s",
            ", ".join(f"{flag(k)} {a} -> {b}" for k, (a, b) in changes.items()),
            main_process_only=True,
        )
    history = previous.get("resumed_with_changes", [])
    content = {
        **args.to_dict(),
        "num_processes": accelerator.num_processes,
        "global_batch_size": global_batch_size(accelerator, args),
        **(facts or {}),
        "resumed_from": resumed_from,
        "resumed_with_changes": [*history, {"from": resumed_from, **changes}] if changes else history,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, content)


@dataclass
class Fitting:
    """A run's prepared objects, handed to the trainer's hooks during :func:`fit` and back to it after."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any | None
    epoch_steps: int
    metrics: MetricsLogger | None = None
    # The state of the checkpoint the run resumed from (None: a fresh start).
    resumed: dict[str, Any] | None = None
    # The last evaluation of the loop (``Hooks.evaluate`` every ``eval_steps``), if any.
    eval_results: dict[str, float] | None = None


@dataclass
class Hooks:
    """What a trainer adds to :func:`fit`: each is optional."""

    # (fitting) -> metrics; called every ``eval_steps`` optimizer steps.
    evaluate: Callable[[Fitting], dict[str, float]] | None = None
    # (fitting), once prepared and restored, before the first step: baselines, the summary, the arguments file.
    before_training: Callable[[Fitting], None] | None = None
    # (folder): files added to every checkpoint (e.g. the tokenizer).
    save_extra: Callable[[Path], None] | None = None


def fit(
    accelerator: Accelerator,
    args: TrainingArguments,
    model: nn.Module,
    train_loader: Any,
    eval_loader: Any | None,
    *,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    weight_fn: Callable[[dict[str, torch.Tensor]], float],
    total_steps: int,
    checkpoint_dir: Path,
    resumed: tuple[Path, dict] | None,
    identity: dict[str, Any],
    progress: tqdm,
    metrics_file: Path,
    metrics_extra: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    eval_steps: int = 0,
) -> Fitting:
    """Optimizer and scheduler, ``prepare``, the restore of ``resumed`` (see :func:`resume_point`), then the loop
    up to ``total_steps``; returns the prepared objects for the trainer's evaluation and saving.

    ``loss_fn(model, batch)`` is the batch's summed loss and ``weight_fn(batch)`` its weight (see :class:`Loop`);
    ``progress`` is advanced by the resumed steps and every step after them (the caller owns and closes it).
    """
    hooks = hooks or Hooks()
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, total_steps)
    prepared = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *([eval_loader] if eval_loader is not None else [])
    )
    model, optimizer, train_loader, scheduler = prepared[:4]
    fitting = Fitting(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_loader=prepared[4] if eval_loader is not None else None,
        epoch_steps=steps_per_epoch(len(train_loader), args),
    )
    if resumed is not None:
        fitting.resumed = restore_checkpoint(accelerator, resumed, optimizer, scheduler, args, identity)
        progress.update(fitting.resumed["step"])
    start = fitting.resumed["step"] if fitting.resumed else 0
    fitting.metrics = MetricsLogger(accelerator, metrics_file, start, metrics_extra)
    if hooks.before_training is not None:
        hooks.before_training(fitting)
    evaluate = hooks.evaluate
    loop = Loop(
        loss_fn=lambda batch: loss_fn(model, batch),
        weight_fn=weight_fn,
        total_steps=total_steps,
        metrics=fitting.metrics,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        save_extra=hooks.save_extra,
        identity=identity,
        evaluate=(lambda: evaluate(fitting)) if evaluate is not None else None,
        eval_steps=eval_steps,
    )
    fitting.eval_results = train(
        accelerator, model, optimizer, scheduler, train_loader, args, loop, fitting.resumed
    )
    return fitting


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


def launched_processes() -> int:
    """How many processes the launcher says it started (torchrun/accelerate's ``WORLD_SIZE`` and
    ``LOCAL_WORLD_SIZE``, MPI's sizes); 1 when the script was run directly."""
    sizes = []
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        try:
            sizes.append(int(os.environ.get(name, "1")))
        except ValueError:
            sizes.append(1)
    return max(sizes)


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The run's Accelerator; refuses a multi-process launch whose processes did not join one group.

    accelerate starts several processes only through torchrun (a ``MULTI_GPU`` config), and its processes
    join a group only on GPUs unless ``ACCELERATE_USE_CPU`` is set. On a machine without a GPU such a launch
    therefore joins the processes in a gloo group on CPU (``examples/accelerate_configs/cpu_ddp.yaml``);
    a launch that still leaves every process alone (each would train the whole run by itself, all writing
    the same folder) is stopped.
    """
    launched = launched_processes()
    torchrun_on_cpu = launched > 1 and "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=torchrun_on_cpu,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # The scheduler steps once per optimizer step whatever the number of processes.
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )
    if launched > 1 and accelerator.num_processes == 1:
        raise InputError(
            f"the launcher started {launched} processes (WORLD_SIZE={os.environ.get('WORLD_SIZE', '-')}, "
            f"LOCAL_WORLD_SIZE={os.environ.get('LOCAL_WORLD_SIZE', '-')}) but they did not join one process "
            "group, so each would train alone into the same --output-dir; on CPU launch with "
            "`accelerate launch --config_file examples/accelerate_configs/cpu_ddp.yaml`, or run without a launcher"
        )
    return accelerator


def hub_unreachable(timeout: float = 3.0) -> bool:
    """Online mode, but the Hub's host takes no connection: a Hub lookup would retry for a minute before
    failing, so a mistyped local path is better refused at once. (Offline mode fails fast by itself.)"""
    if hub_constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(hub_constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return False
    except OSError:
        return True


def check_output_dir(output_dir: str | Path, inputs: dict[str, str | None]) -> None:
    """Refuse an output folder that is a file, or that is, contains or is inside an input folder
    (``inputs``: flag -> value; Hub ids and unset flags are skipped): the run would overwrite its input."""
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file, not a folder; choose a folder path")
    out = out.resolve()
    for option, value in inputs.items():
        source = Path(value).expanduser() if value else None
        if source is None or not source.exists():
            continue
        source = source.resolve()
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise InputError(
                f"--output-dir {output_dir} overlaps {option} {value}: the run would overwrite what it reads; "
                "choose an output folder outside it"
            )


@contextlib.contextmanager
def output_lock(accelerator: Accelerator, output_dir: Path, command: str) -> Iterator[None]:
    """Hold ``OUT/.structformer-train.lock`` for the whole run (main process), as build-corpus locks its
    output: a second run into ``OUT`` is refused at once, naming the holder's pid, instead of mixing its
    checkpoints, metrics and arguments with this run's. The kernel drops the lock if the run dies."""
    if not accelerator.is_main_process:
        yield
        return
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file, not a folder; choose a folder path")
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / OUTPUT_LOCK
    fd = folder_lock.acquire(
        path,
        f"{output_dir}: another {command} run (pid {{pid}}) is writing this folder; wait for it to end "
        "or choose another --output-dir",
    )
    try:
        yield
    finally:
        folder_lock.release(path, fd)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a run refused before writing anything leaves no trace


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
    return [f"{flag(name)} {saved[name]} -> {getattr(args, name)}" for name in changed]


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
        if path.is_file() and path.name != TRAINER_STATE_FILE
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
    state_file = path / TRAINER_STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files, step = state["files"], int(state["step"])
    except FileNotFoundError:
        raise InputError(f"{path}: not a checkpoint (no {TRAINER_STATE_FILE})") from None
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
    broken = []
    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            return path, read_checkpoint_state(path)
        except InputError as err:
            logger.warning("skipping checkpoint %s: %s", path.name, err, main_process_only=True)
            broken.append(f"{path.name}: {err}")
    if broken:
        # Starting over here would silently discard the run the user asked to continue.
        raise InputError(
            f"--resume-from-checkpoint latest: no intact checkpoint in {checkpoint_dir} ({'; '.join(broken)}); "
            "resume from a checkpoint folder you repair or choose a new --output-dir to start again"
        )
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
    with disk_full_stops(f"checkpoint {step}", tmp, "rerun with --resume-from-checkpoint latest"):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if save_extra is not None:
                save_extra(tmp)
            write_json_atomically(tmp / TRAINER_STATE_FILE, {**state, "step": step, "files": _manifest(tmp)})
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


def _disk_full(err: BaseException) -> bool:
    # torch's writer reports a full disk as a RuntimeError that only says so in its text.
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


@contextlib.contextmanager
def disk_full_stops(what: str, partial: Path, then: str) -> Iterator[None]:
    """A full disk while writing ``what`` removes the half-written ``partial`` (file or folder) and stops the
    run with one line that names the file; other errors pass through."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        where = getattr(err, "filename", None) or partial
        raise RunStopped(
            f"no space left on the device while writing {what} ({where}); the half-written {partial} was "
            f"removed, nothing half-written was kept: free some space, then {then}"
        ) from err


def check_resume_identity(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint saved with other data or another model (``Loop.identity``), naming
    each difference. Checkpoints saved before identities were recorded carry none and are not checked."""
    saved = state.get("identity") or {}
    changes = [
        f"{name} {saved[name]!r} -> {identity.get(name)!r}"
        for name in sorted(saved)
        if saved[name] != identity.get(name)
    ]
    if changes:
        raise InputError(
            f"{path} was saved with other data or another model ({'; '.join(changes)}); a resume continues "
            "the same run: resume with the same values, or start a new --output-dir"
        )


def changed_arguments(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """``{flag: [old, new]}`` for each argument a resumed run changed (those the resume allows)."""
    return {
        name: [previous.get(name), value]
        for name, value in current.items()
        if name != "resume_from_checkpoint" and name in previous and previous[name] != value
    }


def global_batch_size(accelerator: Accelerator, args: TrainingArguments) -> int:
    """Sequences per optimizer step: per-device batch x processes x accumulation."""
    return args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps


def restore_checkpoint(
    accelerator: Accelerator,
    checkpoint: tuple[Path, dict],
    optimizer: Any,
    scheduler: Any,
    args: TrainingArguments,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``load_state`` of a resolved checkpoint, once it is clear that this run can continue it exactly;
    changed optimizer flags are applied and logged. Returns the checkpoint's state.

    The data order and the position in it follow from the seed and the global batch, so a resume that
    changes either would silently train on other data than the run it continues: refused, as is one
    whose data or model (``identity``, see :class:`Loop`) differs.
    """
    path, state = checkpoint
    check_resume_identity(path, state, identity or {})
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
    # What the data and the model depend on (corpus fingerprint, tokenizer hash, data flags), saved in every
    # checkpoint: a resume that changes it would continue another run (restore_checkpoint refuses).
    identity: dict[str, Any] = field(default_factory=dict)
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
    epoch, skip = divmod(step, steps_per_epoch(len(loader), args))
    skip *= args.gradient_accumulation_steps
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "lr": 0.0, "start": time.perf_counter()}
    health = _Health(best=(resumed or {}).get("best_loss", math.inf), first=(resumed or {}).get("first_loss"))
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
            health.confirm(accelerator, loss)
            problem = health.problem(loss, args.max_loss_factor)
            if problem:
                loop.progress.close()
                raise NonFiniteLossError(_stop_message(problem, step + 1, loop.checkpoint_dir))
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
                state["identity"] = loop.identity
                health.pending = save_checkpoint(
                    accelerator, loop.checkpoint_dir, step, state, args.save_total_limit, loop.save_extra
                )
                window["start"] = time.perf_counter()
        epoch += 1
    return eval_results


def batches_per_process(examples: int, args: TrainingArguments, processes: int) -> int:
    """Batches each process draws in one epoch of ``examples``: accelerate deals the ``ceil(examples / batch)``
    batches round-robin and evens them out (``even_batches``)."""
    return math.ceil(math.ceil(examples / args.per_device_batch_size) / processes)


def steps_per_epoch(batches: int, args: TrainingArguments) -> int:
    """Optimizer steps in one pass over ``batches`` batches per process (a last incomplete accumulation group is
    dropped); an epoch too short for one step is the user's error."""
    steps = batches // args.gradient_accumulation_steps
    require(
        steps > 0,
        f"one epoch has {batches} batches per process, fewer than --gradient-accumulation-steps "
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
    """Whether a checkpoint is safe to resume from, and whether the run has diverged.

    A checkpoint is healthy when its recent loss is finite and not exploding (at most
    ``EXPLODING_LOSS_FACTOR`` times the best logged loss), its weights are finite, and the loss measured
    *after* its last update (the next step's, computed with its weights) is finite and not exploding
    either: an update can blow the weights up while every loss before it looked fine. Until that next
    step, the checkpoint is ``pending``.
    """

    best: float = math.inf
    first: float | None = None
    losses: list[float] = field(default_factory=list)
    pending: Path | None = None

    def exploding(self, loss: float) -> bool:
        return not math.isfinite(loss) or loss > EXPLODING_LOSS_FACTOR * self.best

    def problem(self, loss: float, factor: float) -> str | None:
        """Why the run must stop at this loss, or None."""
        if not math.isfinite(loss):
            return f"non-finite training loss ({loss})"
        if self.first is None:
            self.first = loss
        # At least 1 nat as the reference: a first batch that happens to be easy is no sign of divergence.
        reference = max(self.first, 1.0)
        if factor and loss > factor * reference:
            return (
                f"training diverged: loss {loss:.4g} is above {factor:g} x {reference:.4g} (the first step's loss, "
                "at least 1; --max-loss-factor)"
            )
        return None

    def confirm(self, accelerator: Accelerator, loss: float) -> None:
        """Record in the pending checkpoint the loss its weights give, and whether that keeps it healthy."""
        if self.pending is None:
            return
        if accelerator.is_main_process:
            state_file = self.pending / TRAINER_STATE_FILE
            state = json.loads(state_file.read_text(encoding="utf-8"))
            state["loss_after_update"] = loss if math.isfinite(loss) else str(loss)
            state["healthy"] = bool(state["healthy"]) and not self.exploding(loss)
            write_json_atomically(state_file, state)
        self.pending = None
        accelerator.wait_for_everyone()

    def checkpoint(self, accelerator: Accelerator, model: nn.Module) -> dict[str, Any]:
        recent = sum(self.losses) / max(len(self.losses), 1)
        self.losses.clear()
        self.best = min(self.best, recent)
        finite = torch.tensor(
            float(all(bool(torch.isfinite(p).all()) for p in model.parameters())), device=accelerator.device
        )
        finite = accelerator.reduce(finite, "sum").item() == accelerator.num_processes
        healthy = finite and not self.exploding(recent)
        return {"loss": recent, "best_loss": self.best, "first_loss": self.first, "healthy": healthy}


def _stop_message(problem: str, step: int, checkpoint_dir: Path | None) -> str:
    healthy = healthy_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    where = f"the last healthy checkpoint is {healthy}" if healthy else "no healthy checkpoint was saved"
    resume = f"--resume-from-checkpoint {healthy}" if healthy else "a fresh --output-dir"
    return (
        f"{problem} at step {step}; stopped before the update, {where}. "
        f"Lower --learning-rate or use --mixed-precision bf16/no, then rerun with {resume}."
    )
