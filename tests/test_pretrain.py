"""The pre-training loop: outputs, exact resume after SIGKILL, 2-process DDP, failures (trainers/pretrain.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from structformer.cli import main as cli_main
from structformer.trainers import pretrain
from structformer.trainers.tokenizer import train_wordpiece

sys.path.insert(0, str(Path(__file__).parent))
from test_data import make_corpus, make_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "trainers" / "pretrain.py"
TINY = {
    "preset": "tiny",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_window": 16,
    "max_position_embeddings": 256,
    # Dropout off: the DDP test compares losses across process layouts, whose dropout draws differ.
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    # Small enough that an epoch is 2 steps of 4 sequences: the 4-step runs below cross an epoch boundary.
    corpus = make_corpus(root / "corpus", n_train=2, n_validation=2, words=12)
    import random

    rng = random.Random(2)
    tokenizer_dir = root / "tokenizer"
    train_wordpiece([make_record(rng, str(i))["text"] for i in range(30)], 99, tokenizer_dir, min_frequency=1)
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    return {
        "root": root,
        "corpus": corpus,
        "tokenizer": tokenizer_dir,
        "config": config,
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted 4-step run through the ``structformer`` CLI, shared by the tests below."""
    out = setup["root"] / "reference"
    assert cli_main(["pretrain", *base_args(setup, out)]) == 0
    return out


def base_args(setup, out: Path, *extra: str, steps: int = 4) -> list[str]:
    return [
        "--dataset", str(setup["corpus"]),
        "--dataset-config", "arxiv_structured",
        "--tokenizer", str(setup["tokenizer"]),
        "--model-config", str(setup["config"]),
        "--max-seq-length", "128",
        "--per-device-batch-size", "4",
        "--max-steps", str(steps),
        "--learning-rate", "1e-3",
        # A constant rate makes the first steps of runs of different lengths comparable.
        "--lr-scheduler", "constant_with_warmup",
        "--warmup-steps", "0",
        "--logging-steps", "1",
        "--eval-steps", "2",
        "--save-steps", "2",
        "--cache-dir", str(setup["cache"]),
        "--output-dir", str(out),
        *extra,
    ]  # fmt: skip


def train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_smoke_run_writes_every_output_and_reloads(reference, tmp_path):
    out = reference
    assert sorted(train_losses(out)) == [1, 2, 3, 4]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "learning_rate", "tokens_per_second", "epoch"} <= set(records[0])
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"eval_loss", "eval_bits_per_masked_token", "eval_perplexity", "step"}
    assert results["step"] == 4
    assert results["eval_bits_per_masked_token"] == pytest.approx(results["eval_loss"] / 0.6931471805599453)
    args = json.loads((out / "training_args.json").read_text())
    assert (
        args["max_steps"] == 4 and args["dataset_config"] == "arxiv_structured" and args["structured"] is True
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "tokenizer.json").is_file()
    assert pretrain.resolve_checkpoint("latest", out) == checkpoint

    # The final folder loads in a process that never imported structformer.
    from structformer.modeling import StructBertForMaskedLM

    model = StructBertForMaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    expected = model(input_ids=ids).logits.sum().item()
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        "m = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert 'structformer' not in sys.modules and len(t) <= m.config.vocab_size\n"
        "print(m(input_ids=torch.tensor([[2, 10, 11, 12, 13, 3]])).logits.sum().item())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)


def test_resume_after_sigkill_is_exact(setup, reference, tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        # Checkpoints at step 3, in the middle of the second epoch (the reference saved at 2 and 4).
        [sys.executable, str(SCRIPT), *base_args(setup, killed, "--save-steps", "3", steps=4)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "checkpoint-3" / "trainer_state.json").exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (killed / "model.safetensors").exists()

    resume = [*base_args(setup, killed, "--save-steps", "3", steps=4), "--resume-from-checkpoint", "latest"]
    assert pretrain.main(resume) == 0
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "loss" in r] == [0, 0, 1, 1]  # step 4 resumes mid-epoch
    assert train_losses(killed) == train_losses(reference)  # the same logged losses, step for step
    ours, theirs = load_file(killed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6, rtol=0), name
    assert json.loads((killed / "training_args.json").read_text())["resumed_from"].endswith("checkpoint-3")


def test_latest_skips_unfinished_checkpoints(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-2").mkdir(parents=True)
    (checkpoints / "checkpoint-2" / pretrain.TRAINER_STATE).write_text('{"step": 2}')
    (checkpoints / ".tmp-checkpoint-4").mkdir()  # killed mid-save
    (checkpoints / "checkpoint-6").mkdir()  # no trainer state: not complete
    assert pretrain.resolve_checkpoint("latest", tmp_path) == checkpoints / "checkpoint-2"
    assert pretrain.resolve_checkpoint("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        pretrain.resolve_checkpoint(str(checkpoints / "checkpoint-6"), tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_with_accumulation_matches_one_process(setup, reference, tmp_path):
    ddp = tmp_path / "ddp"

    # accelerate 1.15 runs `--cpu --num_processes 2` as ONE process unless mpirun is set up; torchrun's
    # launcher (--multi_gpu) with ACCELERATE_USE_CPU=1 gives 2 CPU processes on gloo.
    def launch() -> subprocess.CompletedProcess:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            str(SCRIPT),
            *base_args(setup, ddp, "--save-steps", "0", steps=2),
            # 2 processes x 1 sequence x 2 accumulation steps = the reference's 4 sequences per step
            "--per-device-batch-size", "1", "--gradient-accumulation-steps", "2",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
        # A new session, so that a timeout kills the launcher's workers too instead of orphaning them.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return subprocess.CompletedProcess(command, -9, stdout, "TIMEOUT\n" + stderr)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    result = launch()
    if result.returncode == -9:
        # The gloo rendezvous on a free port picked beforehand can race with another process taking
        # that port; one retry on a fresh port tells that apart from a real hang.
        shutil.rmtree(ddp, ignore_errors=True)
        result = launch()
    assert result.returncode == 0, result.stderr[-3000:]
    args = json.loads((ddp / "training_args.json").read_text())
    assert args["num_processes"] == 2 and args["global_batch_size"] == 4
    ours, theirs = train_losses(ddp), train_losses(reference)
    assert sorted(ours) == [1, 2]
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], abs=1e-5), step
    eval_ddp = json.loads((ddp / "eval_results.json").read_text())
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    eval_single = next(r for r in records if r["step"] == 2 and "eval_loss" in r)
    assert eval_ddp["step"] == 2
    assert eval_ddp["eval_loss"] == pytest.approx(eval_single["eval_loss"], abs=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(setup, tmp_path, monkeypatch):
    original = pretrain.MaskedLMObjective.forward
    calls = {"n": 0}

    def poisoned(self, labels, **inputs):
        calls["n"] += 1
        sums, counts = original(self, labels, **inputs)
        return (sums * float("nan") if calls["n"] == 3 else sums), counts

    monkeypatch.setattr(pretrain.MaskedLMObjective, "forward", poisoned)
    out = tmp_path / "out"
    with pytest.raises(
        pretrain.NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 3.*checkpoint-2"
    ):
        pretrain.main(base_args(setup, out, "--eval-steps", "0"))
    assert pretrain.resolve_checkpoint("latest", out) == out / "checkpoints" / "checkpoint-2"
    weights = load_file(out / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model.safetensors").exists()


def test_bad_options_fail_before_any_work(setup, reference, tmp_path):
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        pretrain.main(base_args(setup, reference))
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        pretrain.parse_args(base_args(setup, out, "--attention-window", "15"))
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        pretrain.main([*base_args(setup, out), "--dataset", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="no config 'arxiv_nope'"):
        pretrain.main([*base_args(setup, out), "--dataset-config", "arxiv_nope"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['body'\]"):
        pretrain.main([*base_args(setup, out), "--text-column", "body"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['headers'\]"):
        pretrain.main([*base_args(setup, out), "--dataset", str(_plain_only(tmp_path))])
    assert not out.exists()


def _plain_only(tmp_path: Path) -> Path:
    """A corpus whose arxiv_structured config lacks the headers column."""
    import datasets

    corpus = tmp_path / "broken"
    folder = corpus / "data" / "arxiv_structured"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list([{"id": "a", "text": "t\n\nabc"}]).to_parquet(
        str(folder / "train-00000-of-00001.parquet")
    )
    (corpus / "README.md").write_text(
        "---\nconfigs:\n- config_name: arxiv_structured\n  data_files:\n  - split: train\n"
        "    path: data/arxiv_structured/train-*.parquet\n---\n"
    )
    return corpus


def test_init_from_checks_the_tokenizer_and_converts_bert(setup, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from structformer.trainers.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(setup["tokenizer"])
    bert_dir = tmp_path / "bert"
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)

    other = tmp_path / "other_tokenizer"
    train_wordpiece(["completely different words here"] * 3, 60, other, min_frequency=1)
    out = tmp_path / "out"
    common = [*base_args(setup, out, steps=1), "--init-from", str(bert_dir), "--attention-window", "16"]
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        pretrain.main([*common, "--tokenizer", str(other)])
    assert not out.exists()
    assert pretrain.main([*common, "--eval-steps", "0", "--save-steps", "0"]) == 0
    from structformer.modeling import StructBertForMaskedLM

    model = StructBertForMaskedLM.from_pretrained(out)
    assert model.config.attention_window == 16 and model.config.vocab_size == len(tokenizer)


def test_presets_and_json_model_configs(tmp_path):
    from structformer.trainers.presets import PRESETS, get_model_config

    assert {"tiny", "small", "base"} <= set(PRESETS)
    tiny = get_model_config("tiny", vocab_size=99)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.attention_window, tiny.vocab_size) == (
        64,
        2,
        64,
        99,
    )
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"preset": "tiny", "attention_window": 32, "local_attention_scope": "section"})
    )
    config = get_model_config(path, vocab_size=50)
    assert (config.hidden_size, config.attention_window, config.local_attention_scope) == (64, 32, "section")
    with pytest.raises(ValueError, match="not a preset"):
        get_model_config("huge")
    path.write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(ValueError, match=r"config.json:3: invalid JSON"):
        get_model_config(path)
    path.write_text(json.dumps({"attention_window": 15}))
    with pytest.raises(ValueError, match="attention_window"):
        get_model_config(path)
