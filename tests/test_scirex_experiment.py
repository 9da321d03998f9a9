"""SciREX in the experiment: ``finetune_step``'s Scores and runs, and the report's SciREX section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_finetune import PIECES, SPECIALS, scirex_doc_with_relations
from transformers import BertTokenizer

from structformer.command_arguments import ExperimentArguments
from structformer.errors import InputError
from structformer.experiment import finetune_step
from structformer.trainers import scirex_metric as sm
from structformer.trainers.report import _scirex_section
from structformer.trainers.results import check_results, summarize
from structformer.trainers.scirex import load_scirex, split_scirex
from structformer.trainers.statistics import paired_bootstrap, t_interval, verdict


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, save_tiny_checkpoint) -> Path:
    directory = tmp_path_factory.mktemp("tiny-structbert")
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(SPECIALS + PIECES)})
    save_tiny_checkpoint(directory, tokenizer, vocab_size=99, attention_window=8, max_position_embeddings=128)
    return directory


@pytest.fixture(scope="module")
def scirex_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scirex") / "train.jsonl"
    path.write_text("".join(json.dumps(scirex_doc_with_relations(f"paper-{i}", i)) + "\n" for i in range(20)))
    return path


def experiment_args(tmp_path: Path, scirex: Path, **overrides) -> ExperimentArguments:
    options = {
        "output_dir": str(tmp_path / "exp"),
        "scirex": str(scirex),
        "finetune_seeds": [1, 2],
        "finetune_max_steps": 1,
        "finetune_max_seq_length": 32,
        "per_device_batch_size": 4,
        **overrides,
    }
    return ExperimentArguments(**options)


def test_finetune_step_adds_cluster_scores_and_runs(
    tiny_model: Path, scirex_file: Path, tmp_path: Path
) -> None:
    args = experiment_args(tmp_path, scirex_file, finetune_structure="matched")
    runs: dict = {}
    out = tmp_path / "finetune" / "plain-seed-1"
    downstream = finetune_step(args, "plain", tiny_model, out, runs)
    assert set(downstream) == {"scirex-ner", "scirex-salient"}
    assert set(downstream["scirex-ner"]) == {"f1", "precision", "recall"}
    assert set(downstream["scirex-salient"]) == {
        "f1", "precision", "recall", "cluster_f1", "cluster_precision", "cluster_recall",
        "end_to_end_f1", "end_to_end_precision", "end_to_end_recall",
    }  # fmt: skip
    for metrics in downstream.values():
        for score in metrics.values():
            assert set(score) == {"mean", "std", "values"} and len(score["values"]) == 2
            assert all(math.isfinite(v) for v in [score["mean"], score["std"], *score["values"]])
    # The experiment's results contract accepts the new metrics.
    check_results(
        {"settings": {}, "attention": {}, "models": {"plain/seed-1": {"checkpoint": "x", "pretrain": {},
                                                                        "downstream": downstream}}}
    )  # fmt: skip

    salient = runs["scirex-salient"]
    assert (
        salient["finetune_structure"] == "matched" and salient["use_structure"] is False
    )  # plain: matched = off
    eval_docs = split_scirex(load_scirex(scirex_file))["test"]
    assert salient["eval_documents"] == len(eval_docs) == salient["baselines"]["documents"]
    assert set(salient["per_paper_cluster_f1"]) == {"1", "2"}
    for seed, per_paper in salient["per_paper_cluster_f1"].items():
        assert set(per_paper) == {d["doc_id"] for d in eval_docs}
        records = sm.read_clusters_file(out / salient["cluster_files"][seed])
        assert sm.compact_scores(sm.salient_cluster_scores(eval_docs, records))["per_paper"] == per_paper
    mean_f1 = sum(sum(p.values()) / len(p) for p in salient["per_paper_cluster_f1"].values()) / 2
    assert downstream["scirex-salient"]["cluster_f1"]["mean"] == pytest.approx(mean_f1)
    assert salient["cluster_rule"] == sm.CLUSTER_RULE
    assert "baselines" not in runs["scirex-ner"]
    # End to end: on the mentions of this model's own scirex-ner run, seed by seed.
    assert salient["end_to_end_rule"] == sm.PREDICTED_CLUSTER_RULE
    assert set(salient["end_to_end_baselines"]) == {"all_salient", "min_mentions"}
    for seed, per_paper in salient["per_paper_end_to_end_f1"].items():
        records = sm.read_clusters_file(out / salient["end_to_end_files"][seed])
        assert sm.compact_scores(sm.salient_cluster_scores(eval_docs, records))["per_paper"] == per_paper
        ner = json.loads((out / "scirex-salient" / f"seed-{seed}" / "eval_results.json").read_text())
        assert ner["end_to_end"]["ner_predictions"] == str(
            out / "scirex-ner" / f"seed-{seed}" / "ner_predictions.jsonl"
        )
    mean_f1 = sum(sum(p.values()) / len(p) for p in salient["per_paper_end_to_end_f1"].values()) / 2
    assert downstream["scirex-salient"]["end_to_end_f1"]["mean"] == pytest.approx(mean_f1)


def test_finetune_step_refuses_an_unknown_structure_setting(scirex_file: Path, tmp_path: Path) -> None:
    args = experiment_args(tmp_path, scirex_file)
    args.finetune_structure = "sometimes"
    with pytest.raises(InputError, match="sometimes"):
        finetune_step(args, "plain", tmp_path, tmp_path / "out", {})
    with pytest.raises(InputError, match="unknown arm"):
        finetune_step(experiment_args(tmp_path, scirex_file), "nope", tmp_path, tmp_path / "out", {})


# ---------------------------------------------------------------------------------- the report section

PAPERS = [f"p{i}" for i in range(6)]


def fake_run(per_paper_by_seed: dict[str, list[float]]) -> dict:
    baselines = {
        "split": "test",
        "documents": len(PAPERS),
        "documents_without_gold_salient_clusters": 0,
        "mentions": {
            "all_positive": {"f1": 0.5, "precision": 1 / 3, "recall": 1.0, "accuracy": 1 / 3},
            "mentions": 300,
            "salient_mentions": 100,
        },
        "salient_clusters": {
            "all_salient": {"precision": 0.05, "recall": 0.8, "f1": 0.094, "n_papers": 6, "per_paper": {}},
            "min_mentions": {"k": 9, "k_chosen_on": "dev", "k_documents": 39,
                             "k_sweep": {str(k): 0.1 for k in range(1, 21)},
                             "precision": 0.43, "recall": 0.44, "f1": 0.398, "n_papers": 6, "per_paper": {}},
            "oracle": {"precision": 0.99, "recall": 0.8, "f1": 0.872, "n_papers": 6, "per_paper": {}},
            "tie_break": "name",
            "best_trivial": {"name": "min_mentions", "f1": 0.398},
        },
    }  # fmt: skip
    return {
        "split_sizes": {"train": 224, "dev": 39, "test": 43},
        "eval_split": "test",
        "steps_per_seed": 10,
        "finetune_structure": "always",
        "use_structure": True,
        "global_attention_types": [],
        "eval_documents": len(PAPERS),
        "baselines": baselines,
        "per_paper_cluster_f1": {
            seed: dict(zip(PAPERS, values)) for seed, values in per_paper_by_seed.items()
        },
    }


def fake_model(arm: str, seed: int, run: dict) -> dict:
    per_seed = [sum(v.values()) / len(v) for v in run["per_paper_cluster_f1"].values()]
    score = summarize(per_seed)
    return {
        "arm": arm,
        "seed": seed,
        "checkpoint": f"models/seed-{seed}/{arm}",
        "downstream": {
            "scirex-ner": {m: summarize([0.3, 0.32]) for m in ("f1", "precision", "recall")},
            "scirex-salient": {
                **{m: summarize([0.6, 0.62]) for m in ("f1", "precision", "recall")},
                "cluster_f1": score,
                "cluster_precision": summarize([0.5, 0.5]),
                "cluster_recall": summarize([0.4, 0.4]),
            },
        },
    }


def test_report_section_shows_baselines_paper_and_the_paired_comparison(tmp_path: Path) -> None:
    per_paper = {
        "structured/seed-1": {"1": [0.6, 0.5, 0.4, 0.7, 0.2, 0.9], "2": [0.5, 0.5, 0.5, 0.6, 0.3, 0.8]},
        "plain/seed-1": {"1": [0.5, 0.5, 0.3, 0.7, 0.3, 0.7], "2": [0.4, 0.4, 0.5, 0.6, 0.2, 0.8]},
        "structured/seed-2": {"1": [0.6, 0.6, 0.4, 0.6, 0.3, 0.9], "2": [0.5, 0.6, 0.5, 0.7, 0.3, 0.9]},
        # Below the best trivial baseline (0.398): the report must say so.
        "plain/seed-2": {"1": [0.3, 0.2, 0.4, 0.3, 0.2, 0.5], "2": [0.3, 0.3, 0.4, 0.4, 0.2, 0.4]},
    }
    runs = {key: {"scirex-salient": fake_run(value)} for key, value in per_paper.items()}
    results = {
        "settings": {"arms": ["structured", "plain"], "seeds": [1, 2], "finetune_seeds": [1, 2]},
        "models": {
            key: fake_model(key.split("/")[0], int(key.split("-")[-1]), runs[key]["scirex-salient"])
            for key in per_paper
        },
    }
    (tmp_path / "figures").mkdir()
    text = "\n".join(_scirex_section(results, tmp_path, runs))

    assert "| scirex-salient | cluster_f1 |" in text and "| scirex-ner | f1 |" in text
    low = results["models"]["plain/seed-2"]["downstream"]["scirex-salient"]["cluster_f1"]
    assert low["mean"] < 0.398
    assert text.count("**at or below the best trivial baseline** (>= 9 mentions: 0.3980)") == 2  # both tables
    assert "0.7195" in text and "0.7185" in text and "gold clusters given" in text
    assert "gold clusters with >= 9 mentions" in text and "chosen on the dev split (39 papers" in text
    assert "Scored split: **test**, 6 papers" in text and "224 / 39 / 43" in text
    assert "every mention salient, P 0.3333, R 1.0000, F1 0.5000" in text
    assert "relation F1" in text and "not measured" in text.lower() and "end-to-end setting" in text
    assert "section ids only" in text  # structure on, but no heading type global in these models

    # The paired comparison, recomputed: per seed, papers averaged over fine-tuning seeds, then paired.
    def mean_over_finetuning(key: str) -> list[float]:
        values = per_paper[key]
        return [(a + b) / 2 for a, b in zip(values["1"], values["2"])]

    per_seed = []
    for seed in (1, 2):
        boot = paired_bootstrap(
            mean_over_finetuning(f"structured/seed-{seed}"), mean_over_finetuning(f"plain/seed-{seed}")
        )
        per_seed.append(boot["mean"])
        assert f"| {seed} | 6 | {boot['mean']:+.4f} [{boot['ci'][0]:+.4f}, {boot['ci'][1]:+.4f}] |" in text
    across = t_interval(per_seed)
    word = verdict(across["ci"], lower_is_better=False)
    assert (
        f"**structured - plain** (salient-cluster F1, gold clusters given, higher is better): {word}" in text
    )
    assert (tmp_path / "figures" / "scirex_f1.png").read_bytes()[:4] == b"\x89PNG"


def with_end_to_end(
    model: dict, run: dict, per_paper_by_seed: dict[str, list[float]], trivial: float
) -> None:
    """Add end-to-end scores (per paper, per fine-tuning seed) and the trivial predictors to a fake model."""
    run["per_paper_end_to_end_f1"] = {seed: dict(zip(PAPERS, v)) for seed, v in per_paper_by_seed.items()}
    run["end_to_end_baselines"] = {
        "all_salient": summarize([trivial, trivial]),
        "min_mentions": summarize([0.1, 0.1]),
    }
    run["end_to_end_rule"] = "RULE"
    f1 = summarize([sum(v) / len(v) for v in per_paper_by_seed.values()])
    model["downstream"]["scirex-salient"].update(
        {"end_to_end_f1": f1, "end_to_end_precision": f1, "end_to_end_recall": f1}
    )


def test_report_section_end_to_end_with_baselines_paper_and_comparison(tmp_path: Path) -> None:
    gold = {"1": [0.5] * 6, "2": [0.5] * 6}
    runs = {key: {"scirex-salient": fake_run(gold)} for key in ("structured/seed-1", "plain/seed-1")}
    results = {
        "settings": {"arms": ["structured", "plain"], "seeds": [1], "finetune_seeds": [1, 2]},
        "models": {key: fake_model(key.split("/")[0], 1, runs[key]["scirex-salient"]) for key in runs},
    }
    structured = {"1": [0.3, 0.2, 0.4, 0.3, 0.2, 0.5], "2": [0.3, 0.3, 0.4, 0.4, 0.2, 0.4]}
    plain = {"1": [0.3, 0.2, 0.3, 0.3, 0.2, 0.5], "2": [0.3, 0.3, 0.4, 0.3, 0.2, 0.4]}
    with_end_to_end(
        results["models"]["structured/seed-1"], runs["structured/seed-1"]["scirex-salient"], structured, 0.2
    )
    # The plain model sits below the trivial predictor on its own predicted mentions: flagged.
    with_end_to_end(results["models"]["plain/seed-1"], runs["plain/seed-1"]["scirex-salient"], plain, 0.4)
    (tmp_path / "figures").mkdir()
    text = "\n".join(_scirex_section(results, tmp_path, runs))
    assert "### End to end: predicted mentions, predicted clusters" in text
    assert "| scirex-salient | end_to_end_f1 |" in text
    assert "0.3420" in text and "0.3180" in text and "0.3070" in text  # the paper's end-to-end numbers
    assert "best trivial on its own predicted mentions: every predicted cluster salient 0.2000" in text
    assert "**at or below the best trivial baseline** (every predicted cluster salient: 0.4000)" in text
    assert "RULE" in text and "end-to-end setting" not in text  # measured, so not listed as missing
    assert "### Arms compared paper by paper (salient-cluster F1, end to end)" in text
    boot = paired_bootstrap(
        [(a + b) / 2 for a, b in zip(structured["1"], structured["2"])],
        [(a + b) / 2 for a, b in zip(plain["1"], plain["2"])],
    )
    assert f"| 1 | 6 | {boot['mean']:+.4f} [{boot['ci'][0]:+.4f}, {boot['ci'][1]:+.4f}] |" in text


def test_report_section_without_scirex_and_without_runs(tmp_path: Path) -> None:
    results = {"settings": {"arms": ["structured", "plain"]}, "models": {"plain/seed-1": {"downstream": {}}}}
    assert "Not run" in "\n".join(_scirex_section(results, tmp_path, None))
    # Scores but no per-paper runs (e.g. a report rebuilt from results.json alone): no crash, said plainly.
    run = fake_run({"1": [0.5] * 6})
    results = {"settings": {"arms": ["structured", "plain"], "seeds": [1], "finetune_seeds": [1]},
               "models": {"plain/seed-1": fake_model("plain", 1, run), "structured/seed-1": fake_model("structured", 1, run)}}  # fmt: skip
    (tmp_path / "figures").mkdir()
    text = "\n".join(_scirex_section(results, tmp_path, None))
    assert "| scirex-salient | cluster_f1 |" in text and "not available" in text
