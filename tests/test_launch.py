"""Multi-process launches: processes that do not form one group are refused; the CPU config forms one."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from factories import make_corpus, make_record

from structformer.errors import InputError
from structformer.trainers.arguments import TrainingArguments
from structformer.trainers.core import make_accelerator
from structformer.trainers.tokenizer import train_wordpiece

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "examples" / "accelerate_configs" / "cpu_ddp.yaml"
TINY = {
    "preset": "tiny",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_window": 16,
    "max_position_embeddings": 256,
}


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
def test_processes_outside_one_group_are_refused(variable, monkeypatch, tmp_path, fresh_accelerate_state):
    # What a GPU config launched where the processes cannot join gives each process: a world size of 8
    # with a single-process Accelerator. Each would train the whole run alone into the same folder.
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "RANK", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "8")
    with pytest.raises(InputError) as caught:
        make_accelerator(TrainingArguments(output_dir=str(tmp_path / "out")))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the launcher started 8 processes")
    assert f"{variable}=8" in message and "cpu_ddp.yaml" in message
    assert not (tmp_path / "out").exists()


def test_a_single_process_is_not_refused(monkeypatch, tmp_path, fresh_accelerate_state):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert make_accelerator(TrainingArguments(output_dir=str(tmp_path))).num_processes == 1


def test_cpu_config_describes_two_cpu_processes():
    config = dict(
        line.split(": ", 1)
        for line in CPU_CONFIG.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert config["num_processes"] == "2" and config["use_cpu"] == "true" and config["num_machines"] == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cpu_ddp_config_trains_one_run_in_two_processes(tmp_path):
    if sys.platform != "linux":
        pytest.skip("gloo process groups are tested on Linux only")
    corpus = make_corpus(tmp_path / "corpus", n_train=4, n_validation=2, words=12)
    rng = random.Random(2)
    train_wordpiece(
        [make_record(rng, str(i))["text"] for i in range(30)], 99, tmp_path / "tok", min_frequency=1
    )
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG),
        "--main_process_port", str(_free_port()),
        str(REPO / "trainers" / "pretrain.py"),
        "--dataset", str(corpus), "--dataset-config", "arxiv_structured", "--tokenizer", str(tmp_path / "tok"),
        "--model-config", str(tmp_path / "tiny.json"), "--max-seq-length", "64", "--document-chunks", "all",
        "--per-device-batch-size", "2", "--max-steps", "2", "--logging-steps", "1", "--save-steps", "0",
        "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the 2-process CPU launch did not finish in 240 s")
    assert process.returncode == 0, stderr[-3000:]
    args = json.loads((out / "training_args.json").read_text())
    assert args["num_processes"] == 2
    assert args["global_batch_size"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({s for s in steps}) == [1, 2]  # one run: each step logged once, by the main process
