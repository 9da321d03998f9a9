"""Fine-tuning: metrics against hand-computed values, bad input, and tiny end-to-end runs of every task."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from structformer.errors import InputError
from structformer.modeling import StructBertForMentionClassification
from structformer.trainers import scirex_metric as sm
from structformer.trainers.finetune import (
    CLUSTERS_FILE,
    END_TO_END_FILE,
    NER_FILE,
    DataFormatError,
    aggregate_metrics,
    check_structbert,
    classification_metrics,
    main,
    ner_metrics,
    parse_args,
    read_records,
    run_finetune,
    scirex_task_data,
    summarize,
)
from structformer.trainers.scirex import ENTITY_TYPES, load_scirex, salient_mentions, split_scirex
from structformer.trainers.tasks import BASE_METRICS, TASKS, get_task

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = [
    "document",
    "section",
    "subsection",
    ":",
    ".",
    "deep",
    "net",
    "##work",
    "learn",
    "##ing",
    "we",
    "use",
]
PIECES += [
    "a",
    "for",
    "segmentation",
    "accuracy",
    "cityscapes",
    "intro",
    "results",
    "title",
    "good",
    "bad",
    "movie",
]
BODY = ["we", "use", "a", "network", "for", "segmentation", "learning", "accuracy", "cityscapes"]
KINDS = {"network": "Method", "segmentation": "Task", "accuracy": "Metric", "cityscapes": "Material"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, save_tiny_checkpoint) -> Path:
    """A random StructBERT masked-LM (hidden 32, 2 layers) with a WordPiece vocab of the test's words."""
    directory = tmp_path_factory.mktemp("tiny-structbert")
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(SPECIALS + PIECES)})
    save_tiny_checkpoint(directory, tokenizer, vocab_size=99, attention_window=8, max_position_embeddings=128)
    return directory


def scirex_doc(doc_id: str, seed: int) -> dict:
    rng = random.Random(seed)
    words = ["document", ":", "deep", "network", "title"]
    sentences, sections = [[0, 5]], []
    for index, heading in enumerate(["intro", "results"]):
        start = len(words) if index else 0
        if index:
            words += ["section", ":", heading]
            sentences.append([start, len(words)])
        body_start = len(words)
        words += [rng.choice(BODY) for _ in range(25)] + ["."]
        sentences.append([body_start, len(words)])
        sections.append([start, len(words)])
    ner = [[i, i + 1, KINDS[w]] for i, w in enumerate(words) if w in KINDS]
    coref = {"Net": [span[:2] for span in ner if span[2] == "Method"], "Seg": []}
    return {
        "doc_id": doc_id,
        "words": words,
        "sentences": sentences,
        "sections": sections,
        "ner": ner,
        "coref": coref,
    }


@pytest.fixture(scope="module")
def scirex_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scirex") / "train.jsonl"
    path.write_text("\n".join(json.dumps(scirex_doc(f"paper-{i}", i)) for i in range(20)) + "\n")
    return path


def scirex_doc_with_relations(doc_id: str, seed: int) -> dict:
    """:func:`scirex_doc` with SciREX's other keys: salient Net (Method) and Seg (Task), salient Acc and
    City without mentions, one 4-ary relation of those four, and non-salient clusters of the Metric and
    Material mentions (two each, so that their clusters share no span)."""
    doc = scirex_doc(doc_id, seed)
    spans = {kind: [span[:2] for span in doc["ner"] if span[2] == kind] for kind in KINDS.values()}
    doc["coref"] = {"Net": spans["Method"], "Seg": spans["Task"], "Acc": [], "City": []}
    doc["coref_non_salient"] = {
        str(index): spans[kind][half::2]
        for index, (kind, half) in enumerate([(k, h) for k in ("Metric", "Material") for h in (0, 1)])
        if spans[kind][half::2]
    }
    doc["n_ary_relations"] = [
        {"Material": "City", "Metric": "Acc", "Task": "Seg", "Method": "Net", "score": "1"}
    ]
    doc["method_subrelations"] = {}
    return doc


@pytest.fixture(scope="module")
def scirex_relations_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scirex-relations") / "train.jsonl"
    docs = [scirex_doc_with_relations(f"paper-{i}", i) for i in range(20)]
    path.write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")
    return path


# ---------------------------------------------------------------------------------- metrics


def test_ner_metrics_match_hand_computed_values() -> None:
    # The example of the evaluate `seqeval` module's documentation: overall_f1 0.5, PER f1 1.0.
    references = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predictions = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    metrics = ner_metrics(references, predictions)
    assert metrics["f1"] == pytest.approx(0.5) and metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5) and metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["per_type"]["PER"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "number": 1}
    assert metrics["per_type"]["MISC"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "number": 1}

    # Gold: Method x2, Task x1. Predicted: one Method right, one Method with a wrong end, one spurious Task,
    # the gold Task missed, an I- tag after O (seqeval's default mode counts it as an entity).
    references = [["B-Method", "I-Method", "O", "B-Task", "O", "B-Method", "O"]]
    predictions = [["B-Method", "I-Method", "O", "O", "B-Task", "B-Method", "I-Method"]]
    metrics = ner_metrics(references, predictions)
    # tp 1 (Method 0-2), pred 3, gold 3 -> P = R = F1 = 1/3.
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(1 / 3)
    assert metrics["per_type"]["Method"]["precision"] == pytest.approx(1 / 2)
    assert metrics["per_type"]["Method"]["recall"] == pytest.approx(1 / 2)
    assert metrics["per_type"]["Task"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "number": 1}
    assert metrics["accuracy"] == pytest.approx(4 / 7)


def test_classification_metrics_match_hand_computed_values() -> None:
    binary = classification_metrics([1, 0, 1, 1, 0], [1, 1, 0, 1, 0])  # tp 2, fp 1, fn 1
    assert binary == pytest.approx(
        {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "accuracy": 3 / 5, "average": "binary"}
    )
    # Three classes, macro: class 0 P 1/2 R 1; class 1 P 1 R 1/2; class 2 P 0 R 0 (never right).
    macro = classification_metrics([0, 1, 1, 2], [0, 1, 0, 0], num_labels=3)
    assert macro["precision"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert macro["recall"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert macro["f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert macro["accuracy"] == pytest.approx(2 / 4) and macro["average"] == "macro"


def test_summaries_over_seeds() -> None:
    summary = summarize([0.5, 0.7])
    assert summary["values"] == [0.5, 0.7] and summary["mean"] == pytest.approx(0.6)
    assert summary["std"] == pytest.approx(0.1414213562)  # sample std (n - 1)
    assert summarize([0.4]) == {"mean": 0.4, "std": 0.0, "values": [0.4]}
    seeds = [
        {
            "f1": 0.2,
            "precision": 0.4,
            "recall": 0.1,
            "per_type": {"Task": {"f1": 0.2, "precision": 0.4, "recall": 0.1, "number": 3}},
        },
        {"f1": 0.4, "precision": 0.4, "recall": 0.4, "per_type": {}},
    ]
    result = aggregate_metrics(seeds)
    assert result["f1"]["values"] == [0.2, 0.4] and result["precision"]["std"] == 0.0
    assert (
        result["per_type"]["Task"]["f1"]["values"] == [0.2, 0.0] and result["per_type"]["Task"]["number"] == 3
    )


# ---------------------------------------------------------------------------------- bad input


def test_read_records_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("text,label\nhello,1\n")
    (tmp_path / "b.json").write_text(json.dumps({"data": [{"text": "x", "label": 0}]}))
    (tmp_path / "c.json").write_text('{"text": "x", "label": 0}\n{"text": "y", "label": 1}\n')
    assert read_records(tmp_path / "a.csv") == [{"text": "hello", "label": "1"}]
    assert read_records(tmp_path / "b.json") == [{"text": "x", "label": 0}]
    assert len(read_records(tmp_path / "c.json")) == 2
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n\n{"text": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("text,label\nok,1\ntoo,many,fields\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv:3: expected 2 fields"):
        read_records(tmp_path / "bad.csv")


def test_a_checkpoint_that_is_not_structbert_is_named(tmp_path: Path) -> None:
    bert = tmp_path / "bert-checkpoint"
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37
    )
    BertForMaskedLM(config).save_pretrained(bert)
    with pytest.raises(ValueError, match=r"bert-checkpoint: a 'bert' checkpoint, not StructBERT; convert"):
        check_structbert(str(bert))
    with pytest.raises(ValueError, match="no config.json"):
        check_structbert(str(tmp_path))
    with pytest.raises(ValueError, match="missing-folder: no such folder"):
        check_structbert(str(tmp_path / "missing-folder"))
    with pytest.raises(
        ValueError, match="no-such-org/no-such-model: no checkpoint folder there, nor one in the Hub cache"
    ):
        check_structbert("no-such-org/no-such-model")


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--task", "scirex-ner", "--model", "m", "--output-dir", str(tmp_path)])  # no --scirex
    with pytest.raises(SystemExit):
        parse_args(["--task", "qa", "--model", "m", "--output-dir", str(tmp_path)])
    args = parse_args(
        [
            "--task",
            "scirex_salient",
            "--model",
            "m",
            "--scirex",
            "s",
            "--output-dir",
            str(tmp_path),
            "--no-use-structure",
        ]
    )
    assert args.task == "scirex-salient" and args.use_structure is False
    assert parse_args(
        ["--task", "scirex-ner", "--model", "m", "--scirex", "s", "--output-dir", "o"]
    ).use_structure
    assert args.stride == 128  # the default, for --max-seq-length 512


# ---------------------------------------------------------------------------------- end to end


def finetune(argv: list[str]) -> dict:
    """One run through the command line's parser; the results.json content."""
    return run_finetune(parse_args(argv))


def common(model: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--output-dir", str(out), "--seeds", "1", "2", "--max-steps", "2"]


def check_results(results: dict, out: Path, task: str, per_type: bool) -> None:
    assert json.loads((out / "results.json").read_text()) == results
    assert results["task"] == task and results["seeds"] == [1, 2]
    for name in ("f1", "precision", "recall", "accuracy"):
        entry = results["metrics"][name]
        assert len(entry["values"]) == 2 and all(0.0 <= v <= 1.0 for v in entry["values"])
        assert entry["mean"] == pytest.approx(sum(entry["values"]) / 2)
        assert entry["std"] == pytest.approx(abs(entry["values"][0] - entry["values"][1]) / 2**0.5)
    assert ("per_type" in results["metrics"]) == per_type
    assert (out / "results.png").stat().st_size > 1000
    for seed in (1, 2):
        assert not (out / f"seed-{seed}" / "checkpoints").exists()  # --save-steps 0: none
        assert json.loads((out / f"seed-{seed}" / "eval_results.json").read_text())["step"] == 2


def test_scirex_ner_end_to_end(tiny_model: Path, scirex_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ner"
    results = finetune(
        [
            "--task",
            "scirex-ner",
            "--scirex",
            str(scirex_file),
            "--max-seq-length",
            "24",
            "--stride",
            "6",
            *common(tiny_model, out),
        ]
    )
    check_results(results, out, "scirex-ner", per_type=True)
    docs = [json.loads(line) for line in scirex_file.read_text().splitlines()]
    assert results["split_sizes"] == {name: len(part) for name, part in split_scirex(docs).items()}
    assert sum(results["split_sizes"].values()) == 20
    assert set(results["metrics"]["per_type"]) <= {"Method", "Task", "Metric", "Material"}
    assert results["features"]["eval"] > 3  # the documents are windowed
    # Each seed's predicted mentions as SciREX's --ner-file: one line per eval paper, spans inside the words.
    assert results["ner_file"] == "ner_predictions.jsonl" and results["split_source"].startswith(
        "doc_id hash"
    )
    for seed in results["seeds"]:
        lines = [
            json.loads(x) for x in (out / f"seed-{seed}" / "ner_predictions.jsonl").read_text().splitlines()
        ]
        assert len(lines) == results["split_sizes"][results["eval_split"]]
        for paper in lines:
            assert set(paper) == {"doc_id", "words", "sentences", "sections", "ner"}
            assert all(0 <= s < e <= len(paper["words"]) and t in ENTITY_TYPES for s, e, t in paper["ner"])


def test_scirex_salient_end_to_end(tiny_model: Path, scirex_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "salient"
    results = finetune(
        [
            "--task",
            "scirex-salient",
            "--scirex",
            str(scirex_file),
            "--max-seq-length",
            "32",
            "--stride",
            "8",
            "--no-use-structure",
            *common(tiny_model, out),
        ]
    )
    check_results(results, out, "scirex-salient", per_type=False)
    assert results["use_structure"] is False
    assert results["features"]["eval_mentions"] > 0


def test_sequence_classification_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    rows = [
        {"sentence1": "good movie", "sentence2": "we use a network", "label": "pos" if i % 3 else "neg"}
        for i in range(12)
    ]
    (tmp_path / "train.csv").write_text(
        "sentence1,sentence2,label\n"
        + "".join(f"{r['sentence1']},{r['sentence2']},{r['label']}\n" for r in rows)
    )
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    out = tmp_path / "seq"
    results = finetune(
        [
            "--task",
            "sequence-classification",
            "--train-file",
            str(tmp_path / "train.csv"),
            "--validation-file",
            str(tmp_path / "dev.jsonl"),
            "--per-device-batch-size",
            "4",
            "--max-seq-length",
            "64",
            *common(tiny_model, out),
        ]
    )
    check_results(results, out, "sequence-classification", per_type=False)
    assert (
        results["split_sizes"] == {"train": 12, "validation": 5} and results["metrics"]["average"] == "binary"
    )


def test_token_classification_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = []
    for _ in range(10):
        tokens = [rng.choice(BODY) for _ in range(30)]
        rows.append({"tokens": tokens, "ner_tags": [f"B-{KINDS[t]}" if t in KINDS else "O" for t in tokens]})
    for name, part in (("train", rows[:7]), ("test", rows[7:])):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    out = tmp_path / "tok"
    results = finetune(
        [
            "--task",
            "token-classification",
            "--train-file",
            str(tmp_path / "train.json"),
            "--test-file",
            str(tmp_path / "test.json"),
            "--max-seq-length",
            "16",
            "--stride",
            "4",
            *common(tiny_model, out),
        ]
    )
    check_results(results, out, "token-classification", per_type=True)
    assert results["eval_split"] == "test" and results["features"]["eval"] > 3


def test_resume_after_a_kill_is_exact(tiny_model: Path, scirex_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base = ["--task", "scirex-ner", "--scirex", str(scirex_file), "--model", str(tiny_model), "--seeds", "3"]
    base += ["--max-seq-length", "24", "--stride", "6", "--per-device-batch-size", "4", "--max-steps", "4"]
    base += ["--save-steps", "2", "--logging-steps", "1", "--save-model"]
    full = finetune([*base, "--output-dir", str(tmp_path / "full")])
    # A run killed after checkpoint-2 (mid-epoch: 18 batches per epoch), then resumed.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    seed_dir = tmp_path / "cut" / "seed-3"
    shutil.rmtree(seed_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(seed_dir / "model")
    (seed_dir / "eval_results.json").unlink()
    (tmp_path / "cut" / "results.json").unlink()
    log_lines = (seed_dir / "metrics.jsonl").read_text().splitlines()
    (seed_dir / "metrics.jsonl").write_text("\n".join(log_lines[:2]) + "\n")
    resumed = finetune([*base, "--output-dir", str(tmp_path / "cut"), "--resume-from-checkpoint", "latest"])

    expected = load_file(tmp_path / "full" / "seed-3" / "model" / "model.safetensors")
    actual = load_file(seed_dir / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.allclose(tensor, actual[name], atol=1e-6), name

    def untimed(lines: list[str]) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_second"} for line in lines]

    assert untimed((seed_dir / "metrics.jsonl").read_text().splitlines()) == untimed(log_lines)
    assert resumed["metrics"] == full["metrics"]
    # Every seed finished: --resume reuses the scores without training.
    assert (
        finetune([*base, "--output-dir", str(tmp_path / "cut"), "--resume-from-checkpoint", "latest"])[
            "metrics"
        ]
        == full["metrics"]
    )


def test_cli_main_returns_zero_and_the_mention_head_round_trips(
    tiny_model: Path, scirex_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoModel

    out = tmp_path / "salient"
    argv = [
        "--task",
        "scirex-salient",
        "--scirex",
        str(scirex_file),
        "--max-seq-length",
        "32",
        "--stride",
        "8",
    ]
    argv += ["--model", str(tiny_model), "--output-dir", str(out), "--max-steps", "1", "--save-model"]
    assert main(argv) == 0
    saved = out / "seed-1" / "model"
    model = AutoModel.from_pretrained(saved)  # the head's class is in the checkpoint's architectures
    assert type(model) is StructBertForMentionClassification
    assert model.config.id2label == {0: "not-salient", 1: "salient"}
    fresh = StructBertForMentionClassification.from_pretrained(tiny_model)  # a new head on the encoder
    assert not torch.equal(model.classifier.weight, fresh.classifier.weight)
    assert not (saved / "mention_head.safetensors").exists()


def test_every_task_names_a_modeling_head_and_one_spelling() -> None:
    import structformer.modeling

    for name, task in TASKS.items():
        assert task.name == name and get_task(name.replace("-", "_")) is task
        head = getattr(structformer.modeling, task.head)
        assert issubclass(head, structformer.modeling.StructBertPreTrainedModel)
        assert set(BASE_METRICS) <= set(task.metrics)
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        get_task("qa")


# ---------------------------------------------------------------------------------- salient clusters


def salient_args(model: Path, scirex: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", "scirex-salient", "--scirex", str(scirex), "--max-seq-length", "32", "--stride", "8",
            "--model", str(model), "--output-dir", str(out), *extra]  # fmt: skip


def test_mention_predictions_are_scored_as_salient_clusters(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    args = parse_args(salient_args(tiny_model, scirex_relations_file, tmp_path / "out"))
    data = scirex_task_data(args, AutoTokenizer.from_pretrained(tiny_model), ())
    eval_docs = split_scirex(load_scirex(scirex_relations_file))["test"]
    baselines = data.extra_results["baselines"]
    assert baselines["split"] == "test" and baselines["documents"] == len(eval_docs) > 0
    assert baselines["documents_without_gold_salient_clusters"] == 0
    clusters = baselines["salient_clusters"]
    assert clusters["min_mentions"]["k_chosen_on"] == "dev"  # test is scored: k comes from dev
    assert clusters["min_mentions"]["k_documents"] == len(
        split_scirex(load_scirex(scirex_relations_file))["dev"]
    )
    assert clusters["all_salient"] == sm.compact_scores(sm.all_clusters_salient(eval_docs))
    assert clusters["oracle"] == sm.compact_scores(sm.oracle_salient(eval_docs))
    assert data.extra_results["salient_clusters"]["rule"] == sm.CLUSTER_RULE

    # Every mention salient: the all-positive mention baseline and the all-clusters baseline, exactly.
    ones = data.score([np.ones(len(w["mention_labels"]), dtype=np.int64) for w in data.eval])
    assert {k: ones[k] for k in ("f1", "precision", "recall", "accuracy")} == baselines["mentions"][
        "all_positive"
    ]
    assert ones["recall"] == 1.0 and 0 < ones["precision"] < 1
    assert ones["salient_clusters"] == clusters["all_salient"]
    assert set(ones["salient_clusters"]["per_paper"]) == {d["doc_id"] for d in eval_docs}
    # No mention salient: no cluster predicted, every paper 0.
    zeros = data.score([np.zeros(len(w["mention_labels"]), dtype=np.int64) for w in data.eval])
    assert zeros["f1"] == 0.0 and zeros["salient_clusters"]["f1"] == 0.0

    # A mention scored in two windows is salient when either says so (and counts once).
    first = data.eval[0]
    data.eval.append({key: value for key, value in first.items()})
    rows = [np.zeros(len(w["mention_labels"]), dtype=np.int64) for w in data.eval]
    rows[-1][0] = 1
    metrics = data.score(rows)
    doc = eval_docs[int(first["doc_index"])]
    start, end, label = salient_mentions(doc)[int(first["mention_index"][0])]
    span = [start, end]
    labels = [m[2] for d in eval_docs for m in salient_mentions(d)]
    assert metrics["precision"] == float(label)
    assert metrics["recall"] == pytest.approx(1 / sum(labels) if label else 0.0)
    path = data.write_predictions(rows, tmp_path)
    assert path == tmp_path / CLUSTERS_FILE
    records = sm.read_clusters_file(path)
    assert [r["doc_id"] for r in records] == [d["doc_id"] for d in eval_docs]
    predicted = {r["doc_id"]: r["clusters"] for r in records if r["clusters"]}
    assert list(predicted) == [doc["doc_id"]]
    assert all(span in spans for spans in predicted[doc["doc_id"]].values())
    assert len(predicted[doc["doc_id"]]) == 1  # the span is in one cluster (Net, Seg or one non-salient)
    rescored = sm.compact_scores(sm.salient_cluster_scores(eval_docs, records))
    assert rescored == metrics["salient_clusters"]


def test_k_is_chosen_on_train_when_dev_is_scored(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    args = parse_args(salient_args(tiny_model, scirex_relations_file, tmp_path, "--eval-split", "dev"))
    data = scirex_task_data(args, AutoTokenizer.from_pretrained(tiny_model), ())
    frequent = data.extra_results["baselines"]["salient_clusters"]["min_mentions"]
    assert data.extra_results["baselines"]["split"] == "dev"
    assert frequent["k_chosen_on"] == "train"
    assert frequent["k_documents"] == len(split_scirex(load_scirex(scirex_relations_file))["train"])


def test_scirex_salient_run_reports_clusters_baselines_and_files(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "salient"
    results = finetune(
        salient_args(tiny_model, scirex_relations_file, out, "--seeds", "1", "2", "--max-steps", "2")
    )
    check_results(results, out, "scirex-salient", per_type=False)
    eval_docs = split_scirex(load_scirex(scirex_relations_file))["test"]
    clusters = results["metrics"]["salient_clusters"]
    assert clusters["n_papers"] == len(eval_docs)
    for name in ("f1", "precision", "recall"):
        entry = clusters[name]
        assert len(entry["values"]) == 2 and all(0.0 <= v <= 1.0 for v in entry["values"])
        assert np.isfinite([entry["mean"], entry["std"]]).all()
    baselines = results["baselines"]
    assert baselines["split"] == "test" and baselines["documents"] == len(eval_docs)
    assert set(baselines["salient_clusters"]) >= {"all_salient", "min_mentions", "oracle", "best_trivial"}
    assert set(baselines["mentions"]["all_positive"]) == {"f1", "precision", "recall", "accuracy"}
    assert results["salient_clusters"]["files"] == {
        "1": f"seed-1/{CLUSTERS_FILE}",
        "2": f"seed-2/{CLUSTERS_FILE}",
    }
    for entry in results["per_seed"]:
        seed_scores = entry["salient_clusters"]
        assert set(seed_scores["per_paper"]) == {d["doc_id"] for d in eval_docs}
        assert np.isfinite(list(seed_scores["per_paper"].values())).all()
        # Re-scoring the seed's clusters file gives the same numbers.
        records = sm.read_clusters_file(out / results["salient_clusters"]["files"][str(entry["seed"])])
        assert sm.compact_scores(sm.salient_cluster_scores(eval_docs, records)) == seed_scores
        saved = json.loads((out / f"seed-{entry['seed']}" / "eval_results.json").read_text())
        assert saved["salient_clusters"] == seed_scores


# ---------------------------------------------------------------------------------- end to end


def write_ner_file(path: Path, docs: list[dict], spans_of) -> Path:
    path.write_text("".join(json.dumps({"doc_id": d["doc_id"], "ner": spans_of(d)}) + "\n" for d in docs))
    return path


def test_end_to_end_scores_the_salient_model_on_predicted_mentions(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    eval_docs = split_scirex(load_scirex(scirex_relations_file))["test"]
    # Perfect NER: the predicted mentions are the gold ones.
    ner = write_ner_file(tmp_path / "ner.jsonl", eval_docs, lambda d: d["ner"])
    args = parse_args(
        salient_args(tiny_model, scirex_relations_file, tmp_path / "out", "--ner-predictions", str(ner))
    )
    data = scirex_task_data(args, AutoTokenizer.from_pretrained(tiny_model), ())
    assert data.extra_results["end_to_end"]["rule"] == sm.PREDICTED_CLUSTER_RULE
    run = data.end_to_end(1)
    assert sum(len(f["mention_labels"]) for f in run.features) == sum(len(d["ner"]) for d in eval_docs)
    ones = run.score([np.ones(len(f["mention_labels"]), dtype=np.int64) for f in run.features])
    # Every predicted cluster salient is the all-salient baseline on the same clusters, exactly.
    trivial = ones["baselines"]["all_salient"]
    assert {k: ones[k] for k in ("precision", "recall", "f1", "n_papers", "per_paper")} == trivial
    assert ones["predicted_mentions"] == sum(len(d["ner"]) for d in eval_docs)
    zeros = run.score([np.zeros(len(f["mention_labels"]), dtype=np.int64) for f in run.features])
    assert zeros["f1"] == 0.0
    path = run.write([np.ones(len(f["mention_labels"]), dtype=np.int64) for f in run.features], tmp_path)
    assert path == tmp_path / END_TO_END_FILE
    records = sm.read_clusters_file(path)
    assert sm.compact_scores(sm.salient_cluster_scores(eval_docs, records)) == trivial
    # The word-level rule: every Method mention of the fixture is "network", so one predicted Method cluster.
    doc = eval_docs[0]
    methods = [span[:2] for span in doc["ner"] if span[2] == "Method"]
    assert [list(spans) for spans in sm.cluster_predicted_mentions(doc, doc["ner"]).values()].count(
        [tuple(s) for s in methods]
    ) == (1 if methods else 0)

    # No predicted mention at all: nothing to classify, every paper 0, the baselines 0 too.
    empty = write_ner_file(tmp_path / "empty.jsonl", eval_docs, lambda d: [])
    args = parse_args(
        salient_args(tiny_model, scirex_relations_file, tmp_path / "o2", "--ner-predictions", str(empty))
    )
    run = scirex_task_data(args, AutoTokenizer.from_pretrained(tiny_model), ()).end_to_end(1)
    assert run.features == [] and run.score([])["f1"] == 0.0
    assert run.score([])["baselines"]["all_salient"]["f1"] == 0.0


def test_ner_predictions_must_cover_the_scored_papers(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    eval_docs = split_scirex(load_scirex(scirex_relations_file))["test"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def end_to_end(path: Path):
        args = parse_args(
            salient_args(tiny_model, scirex_relations_file, tmp_path / "o", "--ner-predictions", str(path))
        )
        return scirex_task_data(args, tokenizer, ()).end_to_end(1)

    with pytest.raises(InputError, match="no predictions for 1 of"):
        end_to_end(write_ner_file(tmp_path / "a.jsonl", eval_docs[1:], lambda d: d["ner"]))
    with pytest.raises(InputError, match=r"a\.jsonl:1: ner span"):
        end_to_end(write_ner_file(tmp_path / "a.jsonl", eval_docs, lambda d: [[0, 10**6, "Method"]]))
    with pytest.raises(InputError, match="not one of Method"):
        end_to_end(write_ner_file(tmp_path / "a.jsonl", eval_docs, lambda d: [[0, 1, "Person"]]))
    (tmp_path / "ner-run").mkdir()
    with pytest.raises(InputError, match=f"no seed-1/{NER_FILE} there"):
        end_to_end(tmp_path / "ner-run")
    with pytest.raises(SystemExit):
        parse_args(
            [
                "--task",
                "scirex-ner",
                "--scirex",
                "s",
                "--model",
                "m",
                "--output-dir",
                str(tmp_path),
                "--ner-predictions",
                "x",
            ]
        )


def test_scirex_ner_then_salient_end_to_end_pairs_seeds(
    tiny_model: Path, scirex_relations_file: Path, tmp_path: Path
) -> None:
    common = ["--scirex", str(scirex_relations_file), "--max-seq-length", "32", "--stride", "8",
              "--model", str(tiny_model), "--seeds", "1", "2", "--max-steps", "1"]  # fmt: skip
    ner = run_finetune(parse_args(["--task", "scirex-ner", "--output-dir", str(tmp_path / "ner"), *common]))
    assert ner["ner_file"] == NER_FILE
    salient = run_finetune(
        parse_args(
            [
                "--task",
                "scirex-salient",
                "--output-dir",
                str(tmp_path / "salient"),
                "--ner-predictions",
                str(tmp_path / "ner"),
                *common,
            ]  # fmt: skip
        )
    )
    eval_docs = split_scirex(load_scirex(scirex_relations_file))["test"]
    end_to_end = salient["metrics"]["end_to_end"]
    assert end_to_end["n_papers"] == len(eval_docs) and len(end_to_end["f1"]["values"]) == 2
    assert set(end_to_end["baselines"]) == {"all_salient", "min_mentions"}
    assert salient["end_to_end"]["files"] == {
        "1": f"seed-1/{END_TO_END_FILE}",
        "2": f"seed-2/{END_TO_END_FILE}",
    }
    for entry in salient["per_seed"]:
        seed = entry["seed"]
        assert entry["end_to_end"]["ner_predictions"] == str(tmp_path / "ner" / f"seed-{seed}" / NER_FILE)
        records = sm.read_clusters_file(tmp_path / "salient" / f"seed-{seed}" / END_TO_END_FILE)
        rescored = sm.compact_scores(sm.salient_cluster_scores(eval_docs, records))
        assert rescored == {k: entry["end_to_end"][k] for k in rescored}
