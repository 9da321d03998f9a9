"""The training core shared by pretrain and finetune (trainers/core.py): arguments, checkpoints, optimizer."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from structformer.arguments import parse_dataclass
from structformer.errors import InputError
from structformer.trainers import core
from structformer.trainers.arguments import TrainingArguments


@dataclass(kw_only=True)
class _Args(TrainingArguments):
    names: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "a list"})
    flag: bool = field(default=True, metadata={"help": "a switch"})


def test_arguments_parse_validate_and_round_trip_through_argv(tmp_path: Path) -> None:
    args = parse_dataclass(
        _Args,
        [
            "--output-dir",
            str(tmp_path),
            "--learning-rate",
            "3e-4",
            "--names",
            "x",
            "y",
            "--no-flag",
            "--lr-scheduler",
            "cosine",
        ],
    )
    assert (args.learning_rate, args.names, args.flag, args.lr_scheduler_type) == (
        3e-4,
        ["x", "y"],
        False,
        "cosine",
    )
    assert parse_dataclass(_Args, args.to_argv()) == args
    assert args.to_argv() == [
        "--output-dir", str(tmp_path), "--learning-rate", "0.0003", "--lr-scheduler-type", "cosine",
        "--names", "x", "y", "--no-flag",
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # validation failures are usage errors, exit 2
        parse_dataclass(_Args, ["--output-dir", "o", "--save-total-limit", "0"])
    with pytest.raises(InputError, match="--warmup-ratio must be in"):
        _Args(output_dir="o", warmup_ratio=1.5)
    assert _Args(output_dir="o", warmup_ratio=0.1).warmup(95) == 10
    assert _Args(output_dir="o", warmup_ratio=0.1, warmup_steps=3).warmup(95) == 3


def test_epoch_shuffle_is_a_function_of_seed_and_epoch() -> None:
    sampler = core.EpochShuffleSampler(50, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first == list(core.EpochShuffleSampler(50, seed=7))


def test_weight_decay_skips_biases_and_one_dimensional_weights() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = core.build_optimizer(model, _Args(output_dir="o", weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 3])] and decayed["weight_decay"] == 0.1
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


def _tiny_run(tmp_path: Path, **overrides):
    args = _Args(output_dir=str(tmp_path), learning_rate=1e-3, warmup_steps=2, **overrides)
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = core.build_optimizer(model, args)
    scheduler = core.build_scheduler(optimizer, args, total_steps=10)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return args, accelerator, model, optimizer, scheduler


def test_checkpoints_are_verified_and_latest_skips_broken_ones(tmp_path: Path, caplog) -> None:
    args, accelerator, model, optimizer, scheduler = _tiny_run(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        core.save_checkpoint(accelerator, checkpoints, step, {"healthy": True}, keep=None)
    (checkpoints / ".tmp-checkpoint-8").mkdir()  # killed mid-save: never a candidate
    assert [s for s, _ in core.list_checkpoints(checkpoints)] == [2, 4, 6]
    path, state = core.resolve_checkpoint("latest", checkpoints)
    assert path.name == "checkpoint-6" and state["step"] == 6 and "model.safetensors" in state["files"]

    weights = checkpoints / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    flipped = bytearray((checkpoints / "checkpoint-4" / "optimizer.bin").read_bytes())
    flipped[-20] ^= 0xFF  # same size, corrupted
    (checkpoints / "checkpoint-4" / "optimizer.bin").write_bytes(bytes(flipped))
    with caplog.at_level(logging.WARNING):
        path, state = core.resolve_checkpoint("latest", checkpoints)
    assert path.name == "checkpoint-2" and state["step"] == 2
    assert "skipping checkpoint checkpoint-6" in caplog.text and "were written" in caplog.text
    assert "skipping checkpoint checkpoint-4" in caplog.text and "checksum" in caplog.text
    with pytest.raises(InputError, match=r"--resume-from-checkpoint: .*checkpoint-6: model.safetensors has"):
        core.resolve_checkpoint(str(checkpoints / "checkpoint-6"), checkpoints)
    (checkpoints / "checkpoint-2" / "trainer_state.json").write_text("{oops")
    # Every checkpoint broken: refused, each named with its reason, never a silent fresh start.
    with pytest.raises(
        InputError, match=r"no intact checkpoint.*checkpoint-6: .*checkpoint-4: .*checkpoint-2: "
    ):
        core.resolve_checkpoint("latest", checkpoints)
    assert core.resolve_checkpoint("latest", tmp_path / "no-checkpoints-yet") is None
    with pytest.raises(InputError, match="not a checkpoint"):
        core.resolve_checkpoint(str(tmp_path / "nowhere"), checkpoints)
    assert core.resolve_checkpoint(None, checkpoints) is None


def test_save_total_limit_rotates_old_checkpoints(tmp_path: Path) -> None:
    _, accelerator, *_ = _tiny_run(tmp_path)
    for step in (1, 2, 3):
        core.save_checkpoint(
            accelerator, tmp_path / "c", step, {}, keep=2, save_extra=lambda d: (d / "x").write_text("x")
        )
    assert [p.name for _, p in core.list_checkpoints(tmp_path / "c")] == ["checkpoint-2", "checkpoint-3"]
    assert (
        "x" in core.read_checkpoint_state(tmp_path / "c" / "checkpoint-3")["files"]
    )  # extras are in the manifest


def test_healthy_checkpoint_is_the_newest_marked_healthy(tmp_path: Path) -> None:
    _, accelerator, *_ = _tiny_run(tmp_path)
    for step, healthy in ((1, True), (2, True), (3, False)):
        core.save_checkpoint(accelerator, tmp_path / "c", step, {"healthy": healthy}, keep=None)
    assert core.healthy_checkpoint(tmp_path / "c").name == "checkpoint-2"
    assert core.healthy_checkpoint(tmp_path / "none") is None


def test_changed_optimizer_flags_are_applied_after_load_state(tmp_path: Path) -> None:
    args, accelerator, model, optimizer, scheduler = _tiny_run(tmp_path)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    saved = {name: getattr(args, name) for name in core.OPTIMIZER_FLAGS}
    new = _Args(
        output_dir=str(tmp_path), learning_rate=4e-3, warmup_steps=2, weight_decay=0.2, adam_beta2=0.9
    )
    changes = core.apply_optimizer_flags(optimizer, scheduler, new, saved)
    assert changes == [
        "--learning-rate 0.001 -> 0.004",
        "--weight-decay 0.01 -> 0.2",
        "--adam-beta2 0.98 -> 0.9",
    ]
    # Step 3 of a linear schedule with 2 warm-up steps over 10: 4e-3 * (10 - 3) / (10 - 2).
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(4e-3 * 7 / 8)] * 2
    assert (
        optimizer.param_groups[0]["weight_decay"] == 0.2 and optimizer.param_groups[1]["weight_decay"] == 0.0
    )
    assert all(g["betas"] == (0.9, 0.9) for g in optimizer.param_groups)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * 6 / 8)


def test_metrics_logger_drops_records_after_the_resume_step(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    logger = core.MetricsLogger(accelerator, path, resume_step=2, extra={"seed": 5})
    logger.log({"step": 3, "loss": 0.5})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 1.0},
        {"seed": 5, "step": 3, "loss": 0.5},
    ]


class _Regression(nn.Module):
    """A linear model whose loss_fn returns summed squared errors over the rows of a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.linear(x).squeeze(-1) - y) ** 2).sum()


def _loop_setup(tmp_path: Path, accumulation: int, total_steps: int, **overrides):
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    args = _Args(
        output_dir=str(tmp_path),
        learning_rate=0.05,
        gradient_accumulation_steps=accumulation,
        save_steps=2,
        **overrides,
    )
    accelerator = core.make_accelerator(args)
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    rows = [{"x": x[i], "y": x[i].sum()} for i in range(8)]
    loader = DataLoader(rows, batch_size=2, sampler=core.EpochShuffleSampler(8, args.seed))
    model = _Regression()
    optimizer = core.build_optimizer(model, args)
    scheduler = core.build_scheduler(optimizer, args, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    loop = core.Loop(
        loss_fn=lambda batch: model(**batch),
        weight_fn=lambda batch: len(batch["y"]),
        total_steps=total_steps,
        metrics=core.MetricsLogger(accelerator, tmp_path / "metrics.jsonl", 0),
        progress=tqdm(disable=True),
        checkpoint_dir=tmp_path / "checkpoints",
    )
    return accelerator, model, optimizer, scheduler, loader, args, loop


def test_loop_logs_the_mean_loss_of_each_step_and_checkpoints(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler, loader, args, loop = _loop_setup(
        tmp_path, 2, 4, logging_steps=1
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first_two = [b for _, b in zip(range(2), iter(loader))]
    with torch.no_grad():
        expected = sum(float(model(**b)) for b in first_two) / 4  # 4 rows in the first step
    core.train(accelerator, model, optimizer, scheduler, loader, args, loop)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and [r["epoch"] for r in records] == [0, 0, 1, 1]
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-6)
    assert records[-1]["loss"] < records[0]["loss"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s for s, _ in core.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert core.read_checkpoint_state(tmp_path / "checkpoints" / "checkpoint-4")["healthy"] is True


def test_loop_refuses_more_accumulation_steps_than_an_epoch_has(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler, loader, args, loop = _loop_setup(tmp_path, 5, 2)
    with pytest.raises(
        InputError, match="one epoch has 4 batches per process, fewer than --gradient-accumulation-steps 5"
    ):
        core.train(accelerator, model, optimizer, scheduler, loader, args, loop)


@pytest.mark.parametrize(
    ("examples", "batch", "processes"), [(8, 2, 1), (9, 2, 1), (9, 2, 2), (7, 3, 4), (1, 4, 2)]
)
def test_batches_per_process_is_what_accelerate_deals_each_process(
    examples: int, batch: int, processes: int
) -> None:
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    sampler = BatchSampler(SequentialSampler(range(examples)), batch_size=batch, drop_last=False)
    shards = [BatchSamplerShard(sampler, processes, rank, even_batches=True) for rank in range(processes)]
    args = _Args(output_dir="o", per_device_batch_size=batch)
    assert {len(list(shard)) for shard in shards} == {core.batches_per_process(examples, args, processes)}


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(InputError, match="already holds checkpoints of another run"):
        core.resume_point(_Args(output_dir=str(tmp_path)), checkpoints)
    assert core.resume_point(_Args(output_dir=str(tmp_path)), tmp_path / "elsewhere") is None


def test_fit_prepares_resumes_and_calls_the_hooks_in_order(tmp_path: Path) -> None:
    """The lifecycle both trainers use: a run of 4 steps, then a resume of its checkpoint-2 to 4 steps, give
    the same weights; the hooks see the prepared objects, before training and at every evaluation."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    def run(out: Path, resume: str | None) -> tuple[core.Fitting, list[str]]:
        args = _Args(output_dir=str(out), learning_rate=0.05, save_steps=2, logging_steps=1)
        calls: list[str] = []
        torch.manual_seed(0)
        x = torch.randn(8, 3)
        rows = [{"x": x[i], "y": x[i].sum()} for i in range(8)]
        with core.training_run(args, "test", {}) as accelerator:
            checkpoints = out / "checkpoints"
            resumed = core.resume_point(dataclasses.replace(args, resume_from_checkpoint=resume), checkpoints)
            fitting = core.fit(
                accelerator,
                args,
                _Regression(),
                DataLoader(rows, batch_size=2, sampler=core.EpochShuffleSampler(8, args.seed)),
                DataLoader(rows, batch_size=4),
                loss_fn=lambda model, batch: model(**batch),
                weight_fn=lambda batch: len(batch["y"]),
                total_steps=4,
                checkpoint_dir=checkpoints,
                resumed=resumed,
                identity={"data": "rows"},
                progress=tqdm(disable=True),
                metrics_file=out / "metrics.jsonl",
                hooks=core.Hooks(
                    before_training=lambda f: calls.append(f"before {f.resumed['step'] if f.resumed else 0}"),
                    evaluate=lambda f: calls.append(f"eval {len(f.eval_loader)}") or {"eval_loss": 0.0},
                ),
                eval_steps=2,
            )
        return fitting, calls

    whole, calls = run(tmp_path / "a", None)
    assert calls == ["before 0", "eval 2", "eval 2"] and whole.eval_results == {"step": 4, "eval_loss": 0.0}
    assert whole.epoch_steps == 4 and not (tmp_path / "a" / core.OUTPUT_LOCK).exists()
    resumed, calls = run(tmp_path / "a", "latest")  # resumes checkpoint-4: nothing left to train
    assert calls == ["before 4"]
    for name in ("checkpoint-3", "checkpoint-4"):
        shutil.rmtree(tmp_path / "a" / "checkpoints" / name, ignore_errors=True)
    again, calls = run(tmp_path / "a", "latest")
    assert calls == ["before 2", "eval 2"]
    for ours, theirs in zip(again.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4]  # a loss and an eval record at steps 2 and 4, nothing duplicated
