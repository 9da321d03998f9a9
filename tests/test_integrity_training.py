"""Training runs lose nothing and are never silently wrong: output folders that overlap their inputs or
another run, resumes that change the data, divergence, broken checkpoints and one-line failures
(issues 14 and 17)."""

# The fixtures imported from the other test modules are redefined as test arguments, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from factories import make_corpus
from test_finetune import scirex_file, tiny_model  # noqa: F401  (fixtures)
from test_pretrain import base_args, setup  # noqa: F401  (setup is a fixture)

from structformer.errors import InputError, RunStopped, run_command
from structformer.trainers import finetune, pretrain
from structformer.trainers.core import output_lock
from structformer.trainers.tokenizer import tokenizer_hash, train_wordpiece

QUICK = ("--eval-steps", "0")


def run(setup, out: Path, *extra: str, steps: int = 2) -> int:
    return pretrain.main(base_args(setup, out, *QUICK, *extra, steps=steps))


def test_output_dir_may_not_be_or_touch_the_init_folder(setup, tmp_path):
    sb = tmp_path / "sb"
    assert run(setup, sb, "--save-steps", "0", steps=1) == 0
    before = (sb / "model.safetensors").read_bytes()
    for out in (sb, sb / "inside"):
        argv = [*base_args(setup, out, *QUICK, steps=1), "--init-from", str(sb)]
        with pytest.raises(InputError, match="overlaps --init-from"):
            pretrain.main(argv)
    assert (sb / "model.safetensors").read_bytes() == before
    assert not (sb / "inside").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run(setup, a_file)


def test_a_second_run_into_a_locked_output_dir_is_refused(setup, tmp_path):
    out = tmp_path / "out"
    holder = output_lock(SimpleNamespace(is_main_process=True), out, "pretrain")
    with holder, pytest.raises(InputError, match=r"another pretrain run \(pid \d+\) is writing"):
        run(setup, out)
    assert not out.exists()  # the holder created it and left nothing behind
    assert run(setup, out) == 0
    assert not list(out.glob(".*lock"))


def test_resume_refuses_changed_data_and_records_safe_changes(setup, tmp_path):
    out = tmp_path / "out"
    assert run(setup, out) == 0
    args_file = out / "training_args.json"
    first = json.loads(args_file.read_text())
    assert first["corpus_fingerprint"] and first["tokenizer_sha256"] == tokenizer_hash(setup["tokenizer"])
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["identity"]["corpus_fingerprint"] == first["corpus_fingerprint"]

    other_tokenizer = tmp_path / "tok"
    train_wordpiece(["other words entirely here"] * 3, 60, other_tokenizer, min_frequency=1)
    other_corpus = make_corpus(tmp_path / "corpus", n_train=2, n_validation=2, seed=5, words=12)
    resume = ("--resume-from-checkpoint", "latest")
    for flags, named in (
        (("--max-seq-length", "64"), "max_seq_length 128 -> 64"),
        (("--dataset-config", "arxiv_plain"), "dataset_config 'arxiv_structured' -> 'arxiv_plain'"),
        (("--tokenizer", str(other_tokenizer)), "tokenizer_sha256"),
        (("--dataset", str(other_corpus)), "corpus_fingerprint"),
    ):
        argv = base_args(setup, out, *QUICK, steps=3) + [*resume, *flags]
        with pytest.raises(InputError, match=named):
            pretrain.main(argv)
    assert json.loads(args_file.read_text()) == first

    assert run(setup, out, *resume, "--learning-rate", "5e-4", steps=3) == 0
    changes = json.loads(args_file.read_text())["resumed_with_changes"]
    assert (
        len(changes) == 1
        and changes[0]["learning_rate"] == [1e-3, 5e-4]
        and changes[0]["max_steps"] == [2, 3]
    )


def _state(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())


def test_a_checkpoint_whose_update_blew_up_is_not_healthy(setup, tmp_path):
    out = tmp_path / "huge"
    with pytest.raises(pretrain.NonFiniteLossError, match="at step 2.*no healthy checkpoint") as raised:
        run(setup, out, "--learning-rate", "1e6", "--save-steps", "1", steps=4)
    assert isinstance(raised.value, RunStopped)
    assert _state(out, 1)["healthy"] is False and "loss_after_update" in _state(out, 1)
    assert not (out / "model.safetensors").exists()


def test_an_exploding_finite_loss_stops_the_run(setup, tmp_path):
    out = tmp_path / "thirty"
    with pytest.raises(pretrain.NonFiniteLossError, match=r"--max-loss-factor"):
        run(setup, out, "--learning-rate", "30", "--save-steps", "1", "--max-grad-norm", "0", steps=6)
    assert not (out / "model.safetensors").exists()
    with pytest.raises(SystemExit):
        pretrain.parse_args(base_args(setup, out, "--max-loss-factor", "0.5"))


def test_latest_refuses_when_every_checkpoint_is_corrupt(setup, tmp_path):
    out = tmp_path / "out"
    assert run(setup, out, steps=4) == 0
    for step in (2, 4):
        weights = out / "checkpoints" / f"checkpoint-{step}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match=r"no intact checkpoint.*checkpoint-4: .*checkpoint-2: "):
        run(setup, out, "--resume-from-checkpoint", "latest", steps=4)


def test_corpus_problems_are_one_line(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = base_args(setup, out, *QUICK)
    argv[argv.index("--dataset") + 1] = "mycorpus"
    with pytest.raises(InputError, match="no corpus folder or Hub dataset named 'mycorpus'"):
        pretrain.main(argv)
    monkeypatch.setattr(pretrain, "hub_unreachable", lambda: True)
    with pytest.raises(InputError, match="Hub is unreachable"):
        pretrain.main(argv)

    corpus = tmp_path / "corpus"
    shutil.copytree(setup["corpus"], corpus)
    shard = corpus / "data" / "arxiv_structured" / "train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    argv[argv.index("--dataset") + 1] = str(corpus)
    with pytest.raises(InputError, match=r"train-00000-of-00001.parquet: not a readable Parquet shard"):
        pretrain.main(argv)


def test_a_full_disk_while_checkpointing_keeps_nothing_half_written(setup, tmp_path, monkeypatch):
    import accelerate

    def full(self, output_dir, **kwargs):
        Path(output_dir, "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir, "model.safetensors")))

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    out = tmp_path / "out"
    with pytest.raises(
        RunStopped, match=r"no space left.*checkpoint 2 \(\S*model.safetensors\).*nothing half-written"
    ):
        run(setup, out)
    assert not list((out / "checkpoints").iterdir())


def test_stops_and_interrupts_print_one_line(capsys):
    def stopped(argv):
        raise pretrain.NonFiniteLossError("non-finite training loss (nan) at step 3;\nstopped")

    assert run_command("pretrain", stopped, []) == 1
    assert (
        capsys.readouterr().err.strip()
        == "structformer pretrain: stopped: non-finite training loss (nan) at step 3; stopped"
    )

    def interrupted(argv):
        raise KeyboardInterrupt

    argv = ["--dataset", "c", "--output-dir", "my out", "--resume-from-checkpoint", "x"]
    assert run_command("pretrain", interrupted, argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.endswith(
        "structformer pretrain --dataset c --output-dir 'my out' --resume-from-checkpoint latest"
    )
    assert run_command("build-corpus", interrupted, ["src", "--output-dir", "c"]) == 130
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "rerun the same command to resume (finished papers are kept): structformer build-corpus src --output-dir c"
        )
    )
    assert run_command("experiment", interrupted, ["--output-dir", "e"]) == 130
    assert "structformer experiment --output-dir e" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- finetune


def _classification_files(
    tmp_path: Path, train_labels: list[str], dev_labels: list[str]
) -> tuple[Path, Path]:
    train, dev = tmp_path / "train.csv", tmp_path / "dev.jsonl"
    train.write_text("sentence,label\n" + "".join(f"good movie,{label}\n" for label in train_labels))
    dev.write_text(
        "".join(json.dumps({"sentence": "bad movie", "label": label}) + "\n" for label in dev_labels)
    )
    return train, dev


def _finetune_args(model: Path, out: Path, train: Path, dev: Path, *extra: str) -> list[str]:
    return [
        "--task", "sequence-classification", "--model", str(model), "--output-dir", str(out),
        "--train-file", str(train), "--validation-file", str(dev), "--max-steps", "1",
        "--per-device-batch-size", "2", "--max-seq-length", "16", *extra,
    ]  # fmt: skip


def test_finetune_labels_are_the_training_labels(tiny_model, tmp_path):
    train, dev = _classification_files(tmp_path, ["pos", "", "neg"], ["pos"])
    with pytest.raises(InputError, match=r"train.csv: row 2 has an empty 'label'"):
        finetune.run_finetune(finetune.parse_args(_finetune_args(tiny_model, tmp_path / "a", train, dev)))
    train, dev = _classification_files(tmp_path, ["pos", "neg"] * 2, ["pos", "maybe", None])
    with pytest.raises(InputError, match=r"dev.jsonl: row 3 has an empty 'label'"):
        finetune.run_finetune(finetune.parse_args(_finetune_args(tiny_model, tmp_path / "b", train, dev)))
    train, dev = _classification_files(tmp_path, ["pos", "neg"] * 2, ["pos", "maybe", "neg"])
    with pytest.raises(InputError, match=r"dev.jsonl: label\(s\) \['maybe'\] never occur in --train-file"):
        finetune.run_finetune(finetune.parse_args(_finetune_args(tiny_model, tmp_path / "c", train, dev)))


def test_finetune_keeps_an_earlier_run_unless_asked_to_overwrite(tiny_model, tmp_path):
    train, dev = _classification_files(tmp_path, ["pos", "neg"] * 2, ["pos", "neg"])
    out = tmp_path / "out"

    def run_into(folder: Path, *extra: str) -> dict:
        return finetune.run_finetune(
            finetune.parse_args(_finetune_args(tiny_model, folder, train, dev, *extra))
        )

    run_into(out, "--seeds", "1", "2", "--save-steps", "1")
    results = (out / "results.json").read_text()
    with pytest.raises(InputError, match="holds an earlier finetune run .*--overwrite-output-dir"):
        run_into(out, "--seeds", "3")
    assert (out / "results.json").read_text() == results
    run_into(out, "--seeds", "1", "2", "--resume-from-checkpoint", "latest")
    # A resume that changes the windows would continue another run.
    with pytest.raises(InputError, match="saved with other data or another model .*max_seq_length 16 -> 12"):
        run_into(
            out,
            "--seeds",
            "1",
            "--max-steps",
            "2",
            "--max-seq-length",
            "12",
            "--resume-from-checkpoint",
            "latest",
        )
    assert run_into(out, "--seeds", "3", "--overwrite-output-dir")["seeds"] == [3]
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-3"]
    with pytest.raises(InputError, match="overlaps --model"):
        run_into(tiny_model / "out")


def test_finetune_a_mistyped_model_fails_at_once(tmp_path, monkeypatch):
    train, dev = _classification_files(tmp_path, ["pos", "neg"], ["pos"])
    argv = _finetune_args(Path("typo"), tmp_path / "out", train, dev)
    with pytest.raises(
        InputError,
        match=r"--model typo: no checkpoint folder there, nor one in the Hub cache \(offline mode\);",
    ):
        finetune.run_finetune(finetune.parse_args(argv))
    monkeypatch.setattr(finetune.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(finetune, "hub_unreachable", lambda: True)
    with pytest.raises(InputError, match=r"--model typo: no such folder, and the Hub is unreachable"):
        finetune.run_finetune(finetune.parse_args(argv))


def test_all_zero_scirex_scores_say_the_model_learned_nothing(tiny_model, scirex_file, tmp_path, caplog):
    zero = {m: {"mean": 0.0} for m in ("f1", "precision", "recall")}
    results = {
        "seeds": [1, 2],
        "metrics": {**zero, "salient_clusters": zero},
        "baselines": {
            "salient_clusters": {"best_trivial": {"name": "min_mentions", "f1": 0.21}},
            "mentions": {"all_positive": {"f1": 0.4}},
        },
    }
    assert "best trivial baseline (min_mentions) has salient-cluster F1 0.2100" in finetune.learned_nothing(
        results
    )
    results["metrics"]["salient_clusters"]["f1"] = {"mean": 0.1}
    assert finetune.learned_nothing(results) is None

    argv = [
        "--task",
        "scirex-ner",
        "--scirex",
        str(scirex_file),
        "--model",
        str(tiny_model),
        "--max-steps",
        "1",
    ]
    argv += [
        "--output-dir",
        str(tmp_path / "ner"),
        "--max-seq-length",
        "24",
        "--stride",
        "6",
        "--learning-rate",
        "1e-9",
    ]
    with caplog.at_level("WARNING"):
        results = finetune.run_finetune(finetune.parse_args(argv))
    nothing = all(results["metrics"][m]["mean"] == 0 for m in ("f1", "precision", "recall"))
    assert json.loads((tmp_path / "ner" / "results.json").read_text())["learned_nothing"] is nothing
    assert ("THE MODEL LEARNED NOTHING" in caplog.text) is nothing
