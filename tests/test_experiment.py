"""The experiment end to end with the smallest settings, and its all-or-nothing output."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structformer import experiment
from structformer.trainers import pretrain
from structformer.trainers.report import _fmt
from structformer.trainers.statistics import verdict
from structformer.trainers.tasks import TASKS
from structformer.trainers.tokenizer import tokenizer_hash, train_wordpiece

TINY = [
    "--max-steps", "2",
    "--max-seq-length", "64",
    "--per-device-batch-size", "2",
    "--vocab-size", "300",
    "--probe-max-docs", "2",
    "--num-proc", "1",
]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finite_numbers(value, where: str = "") -> None:
    if isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for k, v in value.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite_numbers(v, f"{where}[{i}]")


def tiny_scirex(path: Path) -> Path:
    """SciREX-format papers, with ids chosen so that the doc_id split has train and test documents."""
    from structformer.trainers.scirex import split_bucket

    ids = [f"paper-{k}" for k in range(40)]
    train = [i for i in ids if split_bucket(i) < 0.7][:4]
    test = [i for i in ids if split_bucket(i) >= 0.85][:2]
    lines = []
    for doc_id in train + test:
        words = ["document", ":", "Graph", "Parsing", "we", "use", "BERT", "for", "parsing", "."]
        sentences, sections, ner = [[0, 4], [4, 10]], [], [[6, 7, "Method"], [8, 9, "Task"]]
        start = len(words)
        words += ["section", ":", "Method"]
        sentences.append([start, len(words)])
        for _ in range(3):
            s = len(words)
            words += ["the", "BERT", "model", "improves", "parsing", "accuracy", "on", "PTB", "."]
            sentences.append([s, len(words)])
            ner += [
                [s + 1, s + 2, "Method"],
                [s + 4, s + 5, "Task"],
                [s + 5, s + 6, "Metric"],
                [s + 7, s + 8, "Material"],
            ]
        sections = [[0, start], [start, len(words)]]
        coref = {"BERT": [[6, 7]] + [[s[0], s[1]] for s in ner[2:] if s[2] == "Method"], "PTB": []}
        lines.append(
            json.dumps(
                {
                    "doc_id": doc_id,
                    "words": words,
                    "sentences": sentences,
                    "sections": sections,
                    "ner": ner,
                    "coref": coref,
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exp")
    scirex = tiny_scirex(root / "scirex.jsonl")
    out = root / "experiment"
    argv = [
        "--output-dir",
        str(out),
        *TINY,
        "--scirex",
        str(scirex),
        "--seeds",
        "1",
        "2",
        "--finetune-seeds",
        "1",
        "2",
        "--finetune-max-steps",
        "1",
    ]
    assert experiment.main(argv) == 0
    return out


MODELS = ("structured/seed-1", "plain/seed-1", "structured/seed-2", "plain/seed-2")


@pytest.mark.slow
def test_results_json_follows_the_contract(finished: Path) -> None:
    results = json.loads((finished / "results.json").read_text())
    assert set(results) == {"settings", "tokenizer", "models", "bits", "attention", "scirex_runs"}
    assert results["settings"]["max_steps"] == 2 and results["settings"]["seeds"] == [1, 2]
    assert results["tokenizer"]["sha256"] == tokenizer_hash(finished / "tokenizer")
    assert results["tokenizer"]["path"] == str(finished / "tokenizer")
    assert set(results["models"]) == set(MODELS)
    for key, entry in results["models"].items():
        arm, seed = key.split("/seed-")
        assert (entry["arm"], entry["seed"]) == (arm, int(seed))
        assert entry["checkpoint"] == str(finished / "models" / f"seed-{seed}" / arm)
        assert (Path(entry["checkpoint"]) / "config.json").is_file()
        scores = entry["pretrain"]
        assert 0 < scores["eval_bits_per_mask_token"] < 20
        assert math.isclose(scores["eval_perplexity"], math.exp(scores["eval_loss"]), rel_tol=1e-6)
        assert math.isclose(scores["eval_bits_per_mask_token_pooled"], scores["eval_loss"] / math.log(2))
        assert set(entry["downstream"]) == {"scirex-ner", "scirex-salient"}
        for name, task in entry["downstream"].items():
            assert set(task) == set(TASKS[name].metrics)  # salient: gold clusters given and end to end
            for metric in task.values():
                assert len(metric["values"]) == 2 and 0 <= metric["mean"] <= 1 and metric["std"] >= 0
    _finite_numbers(results["models"], "models")

    bits = results["bits"]
    assert bits["reference_arm"] == "plain" and bits["documents"] > 0 and bits["mask_tokens"] > 0
    for seed in ("1", "2"):
        arms = bits["seeds"][seed]["arms"]
        # The paper's vanilla arm has no global token at all; the structured arm has its headings.
        assert arms["plain"]["global_tokens_per_sequence"] == 0
        assert arms["structured"]["global_tokens_per_sequence"] > 0
        difference = bits["seeds"][seed]["differences"]["structured - plain"]
        assert difference["documents"] == bits["documents"]
        assert difference["ci"][0] <= difference["mean"] <= difference["ci"][1]
        expected = arms["structured"]["bits_per_mask_token"] - arms["plain"]["bits_per_mask_token"]
        assert difference["mean"] == pytest.approx(expected)
    comparison = bits["comparisons"]["structured - plain"]
    assert comparison["n"] == 2 and len(comparison["ci"]) == 2
    assert comparison["verdict"] == verdict(comparison["ci"])
    assert bits["scale"]["smoke_test"] is True and bits["scale"]["tokens_seen_per_arm"] < 10_000
    assert bits["paper"] == {"structured": 2.2136, "plain": 2.3051}
    # The same positions in every model: the unigram baseline is one number for all of them.
    unigram = {m["pretrain"]["unigram_bits_per_mask_token"] for m in results["models"].values()}
    assert len(unigram) == 1 and bits["baselines"]["unigram_bits_per_mask_token"] in unigram
    summary = results["attention"]["summary"]
    assert results["attention"]["labels"] == ["structured", "plain"]
    assert len(summary) == 2 * 2 * 4
    assert all(v is None or math.isfinite(v) for v in summary.values())
    assert summary["structured/structure/entropy"] > 0


@pytest.mark.slow
def test_every_model_is_scored_on_the_same_documents_and_masks(finished: Path) -> None:
    documents = [
        json.loads((finished / "models" / f"seed-{seed}" / arm / "eval_documents.json").read_text())
        for seed in (1, 2)
        for arm in ("structured", "plain")
    ]
    assert all(
        d["ids"] == documents[0]["ids"] and d["mask_tokens"] == documents[0]["mask_tokens"] for d in documents
    )
    assert documents[0]["unigram_bits"] == documents[-1]["unigram_bits"]


@pytest.mark.slow
def test_report_matches_results_and_figures_exist(finished: Path) -> None:
    results = json.loads((finished / "results.json").read_text())
    report = (finished / "report.md").read_text()
    assert "smoke test, not evidence" in report
    bits = results["bits"]
    for seed, entry in bits["seeds"].items():
        row = f"| {seed} | {entry['arms']['structured']['bits_per_mask_token']:.4f} | "
        assert row in report
    comparison = bits["comparisons"]["structured - plain"]
    assert f"**structured - plain**: {comparison['verdict']}" in report
    assert "| structured | 2.2136 |" in report and "Departures from the paper's setup" in report
    assert "unigram model of the training tokens" in report
    assert _fmt(results["attention"]["summary"]["structured/structure/heading_share"]) in report
    f1 = results["models"]["plain/seed-1"]["downstream"]["scirex-ner"]["f1"]
    assert "| scirex-ner | f1 | " in report and f"{f1['mean']:.4f} ± {f1['std']:.4f} (n=2) |" in report
    for name in ("scirex_f1.png", "bits_differences.png", "pretrain_loss.png"):
        assert (finished / "figures" / name).is_file(), name
    figures = results["attention"]["figures"]
    assert "attention/attention_per_layer.png" in figures
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(figures) <= set(embedded)
    for figure in embedded:
        assert (finished / figure).read_bytes()[:4] == b"\x89PNG", figure
    for option in ("max_steps", "model_config", "seeds", "max_seq_length", "eval_seed"):
        assert f"`{option}`" in report
    assert not list(finished.parent.glob(".experiment.*")), "temporary folders left behind"


def test_two_runs_give_identical_numbers_and_a_third_arm_works(tmp_path) -> None:
    """Determinism: the same corpus and options give the same tokenizer and the same bits, byte for byte."""
    argv = [*TINY, "--seeds", "3", "--arms", "structured", "plain", "cls"]
    runs = []
    for name in ("a", "b"):
        assert experiment.main(["--output-dir", str(tmp_path / name), *argv]) == 0
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert runs[0]["tokenizer"]["sha256"] == runs[1]["tokenizer"]["sha256"]
    assert runs[0]["bits"] == runs[1]["bits"]
    arms = runs[0]["bits"]["seeds"]["3"]["arms"]
    assert arms["cls"]["global_tokens_per_sequence"] == 1 and arms["plain"]["global_tokens_per_sequence"] == 0
    assert set(runs[0]["bits"]["comparisons"]) == {"structured - plain", "cls - plain"}
    # One seed: no interval across seeds, and the report says n/a rather than a zero spread.
    assert runs[0]["bits"]["comparisons"]["structured - plain"]["ci"] is None
    assert "n/a" in (tmp_path / "a" / "report.md").read_text()
    saved = json.loads((tmp_path / "a" / "models" / "seed-3" / "plain" / "config.json").read_text())
    assert saved["global_attention_types"] == []


@pytest.mark.slow
def test_existing_output_needs_overwrite_and_survives_a_failed_run(finished: Path, monkeypatch) -> None:
    before = _files(finished)
    with pytest.raises(FileExistsError, match="--overwrite"):
        experiment.main(["--output-dir", str(finished), *TINY])

    def broken(*args, **kwargs):
        raise RuntimeError("pre-training failed on purpose")

    # It fails after the corpus and the tokenizer were written to the temporary folder.
    monkeypatch.setattr(experiment, "pretrain_step", broken)
    with pytest.raises(RuntimeError, match="on purpose"):
        experiment.main(["--output-dir", str(finished), "--overwrite", *TINY])
    assert _files(finished) == before
    assert not list(finished.parent.glob(".experiment.*")), "temporary folders left behind"


def test_accelerate_config_launches_pretraining_through_accelerate(tmp_path, monkeypatch) -> None:
    config = tmp_path / "ddp.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\n")
    args = experiment.parse_args(["--accelerate-config", str(config)])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append((command, check)))
    options = experiment.pretrain_arguments(
        args, tmp_path / "corpus", tmp_path / "tok", "plain", 7, tmp_path / "m"
    )
    assert options.global_attention_types == [] and options.seed == 7
    experiment.pretrain_step(args, options)
    ((command, check),) = calls
    assert check is True
    assert command[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(config)]
    assert command[5].endswith("pretrain.py")
    # The launched script parses the same options back.
    assert pretrain.parse_args(command[6:]) == options


def test_bad_options_fail_before_any_work(tmp_path) -> None:
    with pytest.raises(SystemExit):
        experiment.parse_args(["--scirex", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit):
        experiment.parse_args(["--max-steps", "0"])
    with pytest.raises(SystemExit):
        experiment.parse_args(["--arms", "structured", "vanilla"])
    with pytest.raises(SystemExit):
        experiment.parse_args(["--seeds", "1", "1"])


def test_arms_and_defaults_follow_the_paper(tmp_path) -> None:
    args = experiment.parse_args(["--arms", "structured", "plain", "cls", "structured-cls"])
    assert args.seeds == [1, 2, 3] and args.finetune_seeds == [1] and args.document_chunks == "first"
    types = {arm: experiment.arm_global_types(args, arm) for arm in args.arms}
    assert types == {
        "structured": ["title", "section", "subsection", "subsubsection"],
        "plain": [],
        "cls": ["cls"],
        "structured-cls": ["title", "section", "subsection", "subsubsection", "cls"],
    }
    configs = {
        arm: experiment.pretrain_arguments(args, tmp_path, tmp_path, arm, 1, tmp_path / arm).dataset_config
        for arm in args.arms
    }
    assert configs == {
        "structured": "arxiv_structured",
        "plain": "arxiv_plain",
        "cls": "arxiv_plain",
        "structured-cls": "arxiv_structured",
    }
    # A pre-trained start gets the paper's window unless told otherwise.
    start = tmp_path / "start"
    start.mkdir()
    assert experiment.parse_args(["--init-from", str(start)]).attention_window == 256
    assert (
        experiment.parse_args(["--init-from", str(start), "--attention-window", "128"]).attention_window
        == 128
    )


@pytest.mark.slow
def test_the_paper_command_runs_on_a_tiny_converted_longformer(tmp_path) -> None:
    """README's paper command (continue a Longformer, window and length set, heading globals, bf16,
    the length filter) with tiny sizes, on CPU."""
    from transformers import LongformerConfig, LongformerForMaskedLM

    from structformer.dataset_scripts.sample import sample_dir

    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted(sample_dir().rglob("*.tex"))]
    tokenizer = train_wordpiece(texts, 400, tmp_path / "longformer")
    torch.manual_seed(0)
    config = LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=[32, 32],
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    LongformerForMaskedLM(config).save_pretrained(tmp_path / "longformer")
    out = tmp_path / "paper"
    argv = [
        "--output-dir", str(out),
        "--init-from", str(tmp_path / "longformer"),
        "--attention-window", "16",
        "--max-seq-length", "64",
        "--min-document-tokens", "200",
        "--max-document-tokens", "1000000",
        "--mixed-precision", "bf16",
        "--per-device-batch-size", "2",
        "--max-steps", "2",
        "--seeds", "1",
        "--probe-max-docs", "1",
    ]  # fmt: skip
    # A fresh process, as from the shell: accelerate's state (bf16 here) is one per process.
    subprocess.run(
        [sys.executable, "-m", "structformer", "experiment", *argv], check=True, capture_output=True
    )
    results = json.loads((out / "results.json").read_text())
    assert results["tokenizer"]["sha256"] == tokenizer_hash(tmp_path / "longformer")
    for arm, types in (("structured", ["title", "section", "subsection", "subsubsection"]), ("plain", [])):
        saved = json.loads((out / "models" / "seed-1" / arm / "config.json").read_text())
        assert saved["attention_window"] == 16 and saved["global_attention_types"] == types
        # Longformer's separate global projections came along: it continued the checkpoint.
        assert saved["separate_global_projections"] is True
    arms = results["bits"]["seeds"]["1"]["arms"]
    assert arms["plain"]["global_tokens_per_sequence"] == 0 < arms["structured"]["global_tokens_per_sequence"]
    assert "continued pre-training of" in (out / "report.md").read_text()


def _fake_model(bits: list[float], mask_tokens: list[int], seen: int = 2_000_000) -> tuple[dict, dict]:
    scored = [b for b, n in zip(bits, mask_tokens) if n]
    mean = sum(scored) / len(scored)
    scores = {
        "eval_bits_per_mask_token": mean,
        "eval_bits_per_mask_token_pooled": mean,
        "initial_eval_bits_per_mask_token": 12.0,
        "initial_eval_bits_per_mask_token_pooled": 12.0,
        "unigram_bits_per_mask_token": 9.0,
        "unigram_bits_per_mask_token_pooled": 9.0,
        "global_tokens_per_sequence": 0.0,
        "train_tokens_seen": seen,
    }
    documents = {
        "ids": ["a", "b", "c"],
        "mask_tokens": mask_tokens,
        "bits": [b if n else None for b, n in zip(bits, mask_tokens)],
    }
    return scores, documents


def test_compare_arms_pairs_documents_and_refuses_other_masks() -> None:
    args = experiment.parse_args(["--seeds", "1", "2"])
    scores, documents = {}, {}
    # Structured is better by exactly 0.1 bits on every document in seed 1, by 0.3 in seed 2; document c has no mask.
    for seed, gain in ((1, 0.1), (2, 0.3)):
        for arm, offset in (("structured", -gain), ("plain", 0.0)):
            key = experiment.model_key(arm, seed)
            scores[key], documents[key] = _fake_model([5.0 + offset, 7.0 + offset, 99.0], [10, 20, 0])
    bits = experiment.compare_arms(args, scores, documents)
    assert bits["documents"] == 2 and bits["mask_tokens"] == 30
    first = bits["seeds"]["1"]["differences"]["structured - plain"]
    assert first["mean"] == pytest.approx(-0.1) and first["ci"] == pytest.approx([-0.1, -0.1])
    comparison = bits["comparisons"]["structured - plain"]
    assert comparison["mean"] == pytest.approx(-0.2) and comparison["n"] == 2
    # t(0.975, 1) = 12.706: two seeds 0.2 apart give a wide interval that holds 0.
    assert comparison["verdict"] == "no detectable effect"
    assert bits["baselines"]["unigram_bits_per_mask_token"] == 9.0
    assert not bits["scale"]["resolves_paper_effect"] and bits["scale"]["smoke_test"]

    documents[experiment.model_key("plain", 2)]["mask_tokens"] = [10, 19, 0]
    with pytest.raises(RuntimeError, match="other documents or masks"):
        experiment.compare_arms(args, scores, documents)
