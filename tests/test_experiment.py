"""The experiment end to end with the smallest settings, and its all-or-nothing output."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from structformer.trainers import experiment, pretrain
from structformer.trainers.report import _fmt

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
        "--finetune-max-steps",
        "1",
    ]
    assert experiment.main(argv) == 0
    return out


@pytest.mark.slow
def test_results_json_follows_the_contract(finished: Path) -> None:
    results = json.loads((finished / "results.json").read_text())
    assert set(results) == {"settings", "models", "attention"}
    assert results["settings"]["max_steps"] == 2 and results["settings"]["seed"] == 42
    assert set(results["models"]) == {"structured", "plain"}
    for variant, entry in results["models"].items():
        assert entry["checkpoint"] == str(finished / "models" / variant)
        assert (Path(entry["checkpoint"]) / "config.json").is_file()
        bits = entry["pretrain"]["eval_bits_per_masked_token"]
        ppl = entry["pretrain"]["eval_perplexity"]
        assert 0 < bits < 20 and ppl > 1
        # Perplexity is 2 ** bits per masked token.
        assert math.isclose(ppl, 2**bits, rel_tol=1e-3)
        assert set(entry["downstream"]) == {"scirex_ner", "scirex_salient"}
        for task in entry["downstream"].values():
            assert set(task) == {"f1", "precision", "recall"}
            for metric in task.values():
                assert len(metric["values"]) == 2 and 0 <= metric["mean"] <= 1 and metric["std"] >= 0
    _finite_numbers(results["models"], "models")
    summary = results["attention"]["summary"]
    assert len(summary) == 2 * 2 * 4
    assert all(v is None or math.isfinite(v) for v in summary.values())
    assert summary["structured/structure/entropy"] > 0


@pytest.mark.slow
def test_report_matches_results_and_figures_exist(finished: Path) -> None:
    results = json.loads((finished / "results.json").read_text())
    report = (finished / "report.md").read_text()
    assert "smoke test, not evidence" in report
    for variant, entry in results["models"].items():
        assert f"| {variant} | {_fmt(entry['pretrain']['eval_bits_per_masked_token'])} |" in report
    assert _fmt(results["attention"]["summary"]["structured/structure/heading_share"]) in report
    f1 = results["models"]["plain"]["downstream"]["scirex_ner"]["f1"]
    assert "| scirex_ner | f1 | " in report and f"{f1['mean']:.4f} ± {f1['std']:.4f} (n=2) |" in report
    assert (finished / "figures" / "scirex_f1.png").is_file()
    figures = results["attention"]["figures"]
    assert "attention/attention_per_layer.png" in figures
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(figures) <= set(embedded)
    for figure in embedded:
        assert (finished / figure).read_bytes()[:4] == b"\x89PNG", figure
    for option in ("max_steps", "model_config", "seed", "max_seq_length"):
        assert f"`{option}`" in report
    assert not list(finished.parent.glob(".experiment.*")), "temporary folders left behind"


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
        args, tmp_path / "corpus", tmp_path / "tok", "plain", tmp_path / "m"
    )
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
