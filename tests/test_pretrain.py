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
from factories import make_corpus, make_record
from safetensors.torch import load_file

from structformer.cli import main as cli_main
from structformer.errors import InputError
from structformer.trainers import pretrain
from structformer.trainers.arguments import PretrainArguments
from structformer.trainers.core import resolve_checkpoint
from structformer.trainers.run_files import EVAL_DOCUMENTS_FILE
from structformer.trainers.tokenizer import tokenizer_hash, train_wordpiece

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
        # The tiny corpus has 6 training documents: every token packed gives more sequences than that.
        "--document-chunks", "all",
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
    assert {
        *pretrain.EVAL_KEYS,
        *(f"initial_{k}" for k in pretrain.EVAL_KEYS),
        *pretrain.UNIGRAM_KEYS,
    } <= set(results)
    assert results["step"] == 4
    assert results["eval_bits_per_mask_token_pooled"] == pytest.approx(
        results["eval_loss"] / 0.6931471805599453
    )
    assert results["tokenizer_sha256"] == tokenizer_hash(out)
    # The structured config's heading tokens are global; no [CLS] (not in the default types).
    assert results["global_tokens_per_sequence"] > 0 and results["global_attention_types"] == [
        "title", "section", "subsection", "subsubsection"
    ]  # fmt: skip
    assert results["train_tokens_seen"] == round(4 * 4 * results["mean_train_sequence_length"])
    documents = json.loads((out / EVAL_DOCUMENTS_FILE).read_text())
    assert len(documents["ids"]) == len(documents["bits"]) == len(documents["mask_tokens"]) == 2  # validation
    assert sum(documents["mask_tokens"]) == results["eval_mask_tokens"] > 0
    scored = [b for b in documents["bits"] if b is not None]
    assert results["eval_bits_per_mask_token"] == pytest.approx(sum(scored) / len(scored))
    assert len(documents["initial_bits"]) == len(documents["unigram_bits"]) == 2
    args = json.loads((out / "training_args.json").read_text())
    assert (
        args["max_steps"] == 4 and args["dataset_config"] == "arxiv_structured" and args["structured"] is True
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "tokenizer.json").is_file()
    assert resolve_checkpoint("latest", out / "checkpoints")[0] == checkpoint

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


@pytest.mark.slow
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
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
    original = pretrain.training_loss
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss = original(model, batch)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(pretrain, "training_loss", poisoned)
    out = tmp_path / "out"
    # Step 3's finite loss, measured with checkpoint-2's weights, confirms that checkpoint as healthy.
    with pytest.raises(
        pretrain.NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 4.*checkpoint-2"
    ):
        pretrain.main(base_args(setup, out, "--eval-steps", "0"))
    assert resolve_checkpoint("latest", out / "checkpoints")[0] == out / "checkpoints" / "checkpoint-2"
    weights = load_file(out / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model.safetensors").exists()


def test_bad_options_fail_before_any_work(setup, reference, tmp_path):
    with pytest.raises(InputError, match="already holds checkpoints"):
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
    # Again into the same folder (no checkpoint to resume, so from the start): the conversion is redone.
    assert (
        pretrain.main(
            [*common, "--eval-steps", "0", "--save-steps", "0", "--resume-from-checkpoint", "latest"]
        )
        == 0
    )
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


def test_nan_stop_names_the_last_healthy_checkpoint_not_an_exploding_one(setup, tmp_path, monkeypatch):
    original = pretrain.training_loss
    calls = {"n": 0}

    def diverging(model, batch):
        # Steps 4-5 explode (loss x 100, checkpoint-4 is saved then), step 6 is NaN; step 3's loss is
        # checkpoint-2's after its update, still fine. --max-loss-factor 0: no divergence stop before the NaN.
        calls["n"] += 1
        factor = {4: 100.0, 5: 100.0, 6: float("nan")}.get(calls["n"], 1.0)
        return original(model, batch) * factor

    monkeypatch.setattr(pretrain, "training_loss", diverging)
    out = tmp_path / "out"
    with pytest.raises(
        pretrain.NonFiniteLossError, match=r"at step 6.*healthy checkpoint is \S*checkpoint-2\b"
    ):
        pretrain.main(base_args(setup, out, "--eval-steps", "0", "--max-loss-factor", "0", steps=8))
    states = {
        n: json.loads((out / "checkpoints" / f"checkpoint-{n}" / "trainer_state.json").read_text())
        for n in (2, 4)
    }
    assert states[2]["healthy"] is True and states[4]["healthy"] is False
    assert states[4]["loss"] > 2 * states[2]["best_loss"]


def test_resume_applies_a_changed_learning_rate(setup, tmp_path):
    out = tmp_path / "out"
    assert pretrain.main(base_args(setup, out, "--eval-steps", "0", steps=2)) == 0
    resume = [*base_args(setup, out, "--eval-steps", "0", steps=3), "--resume-from-checkpoint", "latest"]
    assert pretrain.main([*resume, "--learning-rate", "3e-4", "--weight-decay", "0.05"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert rates == {1: 1e-3, 2: 1e-3, 3: pytest.approx(3e-4)}
    assert json.loads((out / "training_args.json").read_text())["learning_rate"] == 3e-4


def test_corpus_without_validation_split_trains_without_evaluation(setup, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_validation=0, words=12)
    out = tmp_path / "out"
    argv = base_args(setup, out, "--validation-split", "0", "--save-steps", "0", steps=2)
    argv[argv.index("--dataset") + 1] = str(corpus)
    assert pretrain.main(argv) == 0
    assert not (out / "eval_results.json").exists()
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "training_args.json").read_text())["validation_sequences"] == 0


def test_resume_skips_a_corrupt_newest_checkpoint(setup, reference, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("model.safetensors", "eval_results.json"):
        (out / name).unlink()
    weights = out / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert pretrain.main([*base_args(setup, out), "--resume-from-checkpoint", "latest"]) == 0
    assert "skipping checkpoint checkpoint-4" in caplog.text
    assert json.loads((out / "training_args.json").read_text())["resumed_from"].endswith("checkpoint-2")
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=0) for k in theirs)


# ---------------------------------------------------------------------------------- the steps, one by one


def _options(setup, out: Path, *extra: str) -> PretrainArguments:
    return pretrain.parse_args(base_args(setup, out, *extra))


def test_load_data_holds_out_validation_only_when_the_corpus_has_none(setup, tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    raw, structured = pretrain.load_data(_options(setup, tmp_path / "o"), accelerator)
    assert structured and {k: len(v) for k, v in raw.items()} == {"train": 2, "validation": 2}
    corpus = make_corpus(tmp_path / "train-only", n_train=20, n_validation=0, words=12)
    options = _options(setup, tmp_path / "o", "--dataset", str(corpus), "--validation-split", "0.25")
    raw, _ = pretrain.load_data(options, accelerator)
    assert {k: len(v) for k, v in raw.items()} == {"train": 15, "validation": 5}
    options = _options(setup, tmp_path / "o", "--dataset", str(corpus), "--dataset-config", "arxiv_plain")
    raw, structured = pretrain.load_data(options, accelerator)
    assert not structured and raw["train"].column_names == ["id", "text"]


def test_tokenizer_model_config_packing_and_loaders(setup, tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    options = _options(setup, tmp_path / "o", "--vocab-size", "120")
    options.tokenizer = None
    raw, structured = pretrain.load_data(options, accelerator)
    tokenizer = pretrain.load_or_train_tokenizer(options, accelerator, raw, None, None)
    assert (tmp_path / "o" / "tokenizer" / "tokenizer.json").is_file() and len(tokenizer) <= 120
    config, source = pretrain.model_config(options, accelerator, tokenizer, None)
    assert source is None and config.vocab_size == len(tokenizer) and config.attention_window == 16
    packed = pretrain.pack_splits(options, accelerator, raw, tokenizer, config, structured)
    train_loader, eval_loader = pretrain.make_loaders(options, packed, tokenizer, config)
    batch = next(iter(train_loader))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] % 16 == 0
    assert int(batch["global_attention_mask"].sum()) > 0 and eval_loader is not None
    with pytest.raises(InputError, match="exceeds the model's max_position_embeddings 256"):
        pretrain.model_config(
            _options(setup, tmp_path / "o", "--max-seq-length", "300"), accelerator, tokenizer, None
        )
    with pytest.raises(InputError, match="fewer than one optimizer step's 64"):
        pretrain.pack_splits(
            _options(setup, tmp_path / "o", "--per-device-batch-size", "64"),
            accelerator,
            raw,
            tokenizer,
            config,
            True,
        )


def test_build_model_and_save_final_write_a_loadable_model(setup, tmp_path):
    from accelerate import Accelerator

    from structformer.modeling import StructBertForMaskedLM
    from structformer.trainers.tokenizer import load_tokenizer

    accelerator = Accelerator(cpu=True)
    options = _options(setup, tmp_path / "o")
    tokenizer = load_tokenizer(setup["tokenizer"])
    config, _ = pretrain.model_config(options, accelerator, tokenizer, None)
    model = pretrain.build_model(options, config, None)
    model.config.sparse_prediction = True  # as the run trains it
    model = accelerator.prepare(model)
    evaluation = {
        "step": 7,
        "eval_loss": 2.0,
        "eval_bits_per_mask_token": 2.9,
        "eval_bits_per_mask_token_pooled": 2.885,
        "eval_perplexity": 7.39,
        "eval_documents": 2,
        "eval_mask_tokens": 3,
    }
    out = tmp_path / "final"
    summary = pretrain.save_final(
        accelerator, model, tokenizer, out, {**evaluation, "not_kept": 1}, {"train_tokens_seen": 5}
    )
    expected = {**evaluation, "train_tokens_seen": 5, "tokenizer_sha256": tokenizer_hash(out)}
    assert summary == expected == json.loads((out / "eval_results.json").read_text())
    reloaded = StructBertForMaskedLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    # Saved as is (no key renamed), with transformers' usual full logits; the run's model keeps its setting.
    assert reloaded.config.sparse_prediction is False and model.config.sparse_prediction is True
    assert (out / "tokenizer.json").is_file() and (out / "modeling_structbert.py").is_file()
    assert load_tokenizer(out).model_max_length == config.max_position_embeddings
    assert pretrain.save_final(accelerator, model, tokenizer, tmp_path / "no-eval", None) == {}
    assert not (tmp_path / "no-eval" / "eval_results.json").exists()


def test_resume_refuses_another_seed_or_global_batch(setup, tmp_path):
    out = tmp_path / "out"
    assert pretrain.main(base_args(setup, out, "--eval-steps", "0", steps=2)) == 0
    resume = [*base_args(setup, out, "--eval-steps", "0", steps=3), "--resume-from-checkpoint", "latest"]
    with pytest.raises(
        InputError, match=r"checkpoint-2 was saved with global_batch_size 4 and this run has 2"
    ):
        pretrain.main([*resume, "--per-device-batch-size", "2"])
    with pytest.raises(InputError, match=r"saved with seed 42 and this run has 7"):
        pretrain.main([*resume, "--seed", "7"])
    # The same global batch in another layout continues the run.
    assert pretrain.main([*resume, "--per-device-batch-size", "2", "--gradient-accumulation-steps", "2"]) == 0
