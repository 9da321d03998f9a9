"""Fine-tune a StructBERT checkpoint on SciREX or on your own files: an explicit Accelerate loop.

Tasks (one entry each of ``trainers/tasks.py``'s ``TASKS``, which names the head in ``structformer.modeling``):

- ``scirex-ner``: BIO tagging of Method / Task / Metric / Material over whole SciREX papers,
  windowed with overlap and stitched back to words; seqeval micro F1 plus per-type scores.
- ``scirex-salient``: for every gold mention, is its entity salient (in a ``coref`` cluster)?
  A mention is the mean of its sub-token states, classified by a linear head
  (``StructBertForMentionClassification``); binary F1 / precision / recall over mentions. Also SciREX's
  salient-entity-cluster P/R/F1 with gold clusters given (the paper's 0.7195 / 0.7185 setting):
  a gold cluster (``coref`` or ``coref_non_salient``) is predicted salient when one of its mentions
  is (``scirex_metric.CLUSTER_RULE``), scored per paper and averaged over papers by the port of
  SciREX's scorer (``metrics/scirex_salient_clusters``), under ``metrics["salient_clusters"]``;
  each seed writes its predicted clusters as a SciREX clusters file (``seed-N/salient_clusters.jsonl``),
  and ``results["baselines"]`` holds the trivial baselines and the oracle on the same split.
  With ``--ner-predictions`` (a scirex-ner output folder, seeds paired, or one SciREX ``--ner-file``) it is
  also scored end to end: the classifier labels the PREDICTED mentions, ``PREDICTED_CLUSTER_RULE`` clusters
  them, the same metric scores them (``metrics["end_to_end"]``, beside the trivial predictors on the same
  predicted clusters) and each seed writes ``seed-N/end_to_end_clusters.jsonl``.
- ``sequence-classification``: one or two text columns and a label column from CSV / JSON /
  JSON-lines files (``run_glue`` style); accuracy and F1 / precision / recall (binary for two
  labels, with the second label in sorted order as positive; macro-averaged otherwise).
- ``token-classification``: a tokens column and a tags column (``run_ner`` style), windowed
  like SciREX when longer than ``--max-seq-length``; seqeval.

Every seed in ``--seeds`` trains a fresh model from ``--model``; ``OUT/results.json`` holds the
mean, sample standard deviation and per-seed values of every metric, ``OUT/results.png`` plots
them. Metrics are computed with seqeval and scikit-learn directly, exactly as the ``evaluate``
modules ``seqeval``/``f1``/``precision``/``recall``/``accuracy`` do: those modules are scripts on
the Hub that ``evaluate.load`` would download, and nothing here may download at run time.

Python use: ``results = run_finetune(FinetuneArguments(...))`` (or ``run_finetune(parse_args([...]))``)
returns the ``results.json`` dict.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from huggingface_hub import constants as hub_constants
from matplotlib.figure import Figure
from seqeval.metrics import accuracy_score as seqeval_accuracy
from seqeval.metrics import classification_report
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

import structformer.modeling
from structformer.arguments import parse_dataclass
from structformer.errors import InputError, run_command
from structformer.trainers.arguments import FinetuneArguments
from structformer.trainers.core import (
    EpochShuffleSampler,
    batches_per_process,
    fit,
    hub_unreachable,
    resume_point,
    steps_per_epoch,
    training_run,
    write_json_atomically,
    write_run_arguments,
)
from structformer.trainers.results import summarize
from structformer.trainers.run_files import (
    EVAL_RESULTS_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    RESULTS_PLOT,
    TRAINING_ARGS_FILE,
)
from structformer.trainers.scirex import (
    NER_LABELS,
    bio_labels,
    bio_spans,
    json_lines,
    load_scirex_splits,
    make_windows,
    read_ner_predictions,
    salient_mentions,
    scirex_windows,
    stitch_word_predictions,
)
from structformer.trainers.scirex_metric import (
    CLUSTER_RULE,
    PREDICTED_CLUSTER_RULE,
    clusters_file_records,
    clusters_from_salient_mentions,
    compact_scores,
    end_to_end_baselines,
    relation_entities,
    salient_baselines,
    salient_cluster_scores,
    salient_predicted_clusters,
    write_clusters_file,
)
from structformer.trainers.tasks import TASKS

logger = logging.getLogger(__name__)

# scirex-salient: each seed's predicted salient clusters, a SciREX --clusters-file.
CLUSTERS_FILE = "salient_clusters.jsonl"
# scirex-salient with --ner-predictions: each seed's salient clusters on predicted mentions (a --clusters-file).
END_TO_END_FILE = "end_to_end_clusters.jsonl"
# scirex-ner: each seed's predicted mentions, a SciREX --ner-file.
NER_FILE = "ner_predictions.jsonl"
# How the salient-cluster metric breaks ties between gold clusters (see scirex_metric.match_clusters).
TIE_BREAK = "name"
# Per-feature arrays the collator pads, with their padding values; everything else in a feature
# (word_index, doc_index, mention_index, ...) stays on the host for evaluation.
PAD_VALUES: dict[str, int] = {
    "input_ids": 0,
    "global_attention_mask": 0,
    "section_ids": 0,
    "token_type_ids": 0,
    "labels": -100,
    "mention_labels": -100,
}


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> FinetuneArguments:
    return parse_dataclass(FinetuneArguments, argv)


# --------------------------------------------------------------------------------------------
# Reading the user's files
# --------------------------------------------------------------------------------------------


class DataFormatError(InputError):
    """A data file that cannot be read; the message names the file (and line)."""


def read_records(path: Path) -> list[dict]:
    """Rows of a CSV/TSV file, a JSON-lines file, or a JSON file (a list of objects, ``{"data": [...]}``,
    or JSON lines under a ``.json`` name, as ``datasets``' json builder accepts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = []
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            try:
                for row in reader:
                    if None in row or None in row.values():
                        raise DataFormatError(
                            f"{path}:{reader.line_num}: expected {len(reader.fieldnames or [])} fields"
                        )
                    rows.append(row)
            except csv.Error as error:
                raise DataFormatError(f"{path}:{reader.line_num}: {error}") from None
        return rows
    if suffix not in (".json", ".jsonl", ".jsonlines"):
        raise DataFormatError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            content = None  # maybe JSON lines under a .json name
        if isinstance(content, dict) and isinstance(content.get("data"), list):
            content = content["data"]
        if isinstance(content, list):
            for index, row in enumerate(content):
                if not isinstance(row, dict):
                    raise DataFormatError(f"{path}: item {index} is not a JSON object")
            return content
    rows = []
    for line_number, row in json_lines(text.splitlines(), path, DataFormatError):
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{line_number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _column(rows: list[dict], name: str, path: Path) -> list[Any]:
    for index, row in enumerate(rows):
        if name not in row:
            raise DataFormatError(
                f"{path}: row {index + 1} has no column {name!r}; columns: {', '.join(row)}"
            )
    return [row[name] for row in rows]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def ner_metrics(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, Any]:
    """seqeval entity-level micro precision/recall/F1, token accuracy, and per-type scores.

    The same numbers as ``evaluate.load("seqeval")`` with its defaults (IOB2-style chunks in
    seqeval's default, non-strict mode), with zero where a ratio is undefined.
    """
    report = classification_report(references, predictions, output_dict=True, zero_division=0)
    overall = report.pop("micro avg")
    report.pop("macro avg", None)
    report.pop("weighted avg", None)
    return {
        "f1": float(overall["f1-score"]),
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "accuracy": float(seqeval_accuracy(references, predictions)),
        "per_type": {
            kind: {
                "f1": float(scores["f1-score"]),
                "precision": float(scores["precision"]),
                "recall": float(scores["recall"]),
                "number": int(scores["support"]),
            }
            for kind, scores in sorted(report.items())
        },
    }


def classification_metrics(
    references: Sequence[int], predictions: Sequence[int], *, num_labels: int = 2, positive_label: int = 1
) -> dict[str, Any]:
    """Accuracy and F1/precision/recall: binary on ``positive_label`` for two labels, else macro."""
    average = "binary" if num_labels == 2 else "macro"
    labels = None if num_labels == 2 else list(range(num_labels))
    precision, recall, f1, _ = precision_recall_fscore_support(
        references, predictions, average=average, pos_label=positive_label, labels=labels, zero_division=0
    )
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "accuracy": float(accuracy_score(references, predictions)),
        "average": average,
    }


def aggregate_metrics(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fold per-seed metric dicts into ``{metric: summarize(...)}`` (per type too, for NER; the
    salient-cluster precision/recall/F1 too, for scirex-salient, whose per-paper values stay per seed)."""
    first = per_seed[0]
    result: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, (int, float)):
            result[key] = summarize([seed[key] for seed in per_seed])
        elif isinstance(value, str):
            result[key] = value
    for key in ("salient_clusters", "end_to_end"):
        if key in first:
            rows = [seed[key] for seed in per_seed]
            result[key] = {m: summarize([row[m] for row in rows]) for m in ("f1", "precision", "recall")}
            result[key]["n_papers"] = int(first[key]["n_papers"])
    if "end_to_end" in first:
        # The trivial predictors on each seed's predicted mentions (they depend on the NER model's seed).
        result["end_to_end"]["baselines"] = {
            name: summarize([seed["end_to_end"]["baselines"][name]["f1"] for seed in per_seed])
            for name in first["end_to_end"]["baselines"]
        }
    if "per_type" in first:
        kinds = sorted({kind for seed in per_seed for kind in seed["per_type"]})
        empty = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "number": 0}
        result["per_type"] = {}
        for kind in kinds:
            rows = [seed["per_type"].get(kind, empty) for seed in per_seed]
            entry: dict[str, Any] = {
                m: summarize([row[m] for row in rows]) for m in ("f1", "precision", "recall")
            }
            entry["number"] = max(row["number"] for row in rows)
            result["per_type"][kind] = entry
    return result


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def check_structbert(path: str) -> Any:
    """The checkpoint's config; a clear error when ``path`` is not a StructBERT checkpoint."""
    config_file = Path(path) / "config.json"
    if not Path(path).exists() and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
        raise InputError(f"--model {path}: no such folder; give a StructBERT checkpoint folder")
    if not Path(path).exists() and hub_unreachable():
        # Fail now: the Hub client would retry for a minute first.
        raise InputError(
            f"--model {path}: no such folder, and the Hub is unreachable; give a StructBERT checkpoint folder"
        )
    if Path(path).is_dir() and not config_file.is_file():
        raise InputError(f"--model {path}: no config.json there; expected a StructBERT checkpoint folder")
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except json.JSONDecodeError as error:
            raise InputError(f"{config_file}:{error.lineno}: invalid JSON ({error.msg})") from None
        if model_type != "structbert":
            raise InputError(
                f"--model {path}: a {model_type!r} checkpoint, not StructBERT; convert it first with "
                f"`structformer convert --from {path} --to DST`"
            )
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as error:
        if not Path(path).exists() and hub_constants.HF_HUB_OFFLINE:
            raise InputError(
                f"--model {path}: no checkpoint folder there, nor one in the Hub cache (offline mode); give a "
                "StructBERT checkpoint folder"
            ) from None
        raise InputError(
            f"--model {path}: no checkpoint folder there, nor one in the Hub cache ({error})"
        ) from None
    if config.model_type != "structbert":
        raise InputError(f"--model {path}: a {config.model_type!r} checkpoint, not StructBERT")
    return config


def build_model(args: FinetuneArguments, num_labels: int, id2label: dict[int, str]) -> nn.Module:
    """The task's head (``TASKS[args.task].head`` in ``structformer.modeling``) on ``--model``; a head the
    checkpoint lacks starts fresh."""
    kwargs: dict[str, Any] = {}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    head = getattr(structformer.modeling, TASKS[args.task].head)
    with _quiet_transformers():
        return head.from_pretrained(
            args.model,
            num_labels=num_labels,
            id2label=id2label,
            label2id={label: index for index, label in id2label.items()},
            **kwargs,
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the per-seed loading bar and report (a new head is always missing from the checkpoint)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# Task data
# --------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Features ready for the collator, and how to score predictions on the eval features.

    ``score(predictions)`` takes one array per eval feature (token-, mention- or row-level,
    matching the feature) and returns the metric dict. ``write_predictions(predictions, folder)``, when
    set, stores a seed's predictions there (scirex-salient: its clusters file); ``extra_results`` are
    model-independent entries of ``results.json`` (scirex-salient: the baselines and definitions).
    """

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    eval_split: str
    label_names: list[str]
    split_sizes: dict[str, int]
    score: Callable[[list[np.ndarray]], dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    write_predictions: Callable[[list[np.ndarray], Path], Path] | None = None
    extra_results: dict[str, Any] = field(default_factory=dict)
    end_to_end: Callable[[int], EndToEnd] | None = None


@dataclass
class EndToEnd:
    """scirex-salient with ``--ner-predictions``: one seed's second evaluation, on predicted mentions.

    ``features`` are windows over the eval papers whose mentions are the NER model's spans; ``score`` and
    ``write`` take one prediction array per feature, as :class:`TaskData`'s do.
    """

    features: list[dict[str, Any]]
    score: Callable[[list[np.ndarray]], dict[str, Any]]
    write: Callable[[list[np.ndarray], Path], Path]


def _limit(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def _group(owners: Sequence[int]) -> dict[int, list[int]]:
    """Feature positions per owner (document or row), in order."""
    groups: dict[int, list[int]] = {}
    for position, owner in enumerate(owners):
        groups.setdefault(owner, []).append(position)
    return groups


def scirex_task_data(
    args: FinetuneArguments, tokenizer: Any, global_attention_types: Sequence[str]
) -> TaskData:
    splits, split_source = load_scirex_splits(args.scirex, args.max_docs)
    train_docs = _limit(splits["train"], args.max_train_samples)
    eval_docs = _limit(splits[args.eval_split], args.max_eval_samples)
    if not train_docs or not eval_docs:
        raise InputError(
            f"{args.scirex}: the split leaves {len(train_docs)} train and {len(eval_docs)} {args.eval_split} "
            "documents; use more documents (--max-docs)"
        )
    labels = TASKS[args.task].labels
    options = {
        "labels": labels,
        "max_seq_length": args.max_seq_length,
        "stride": args.stride,
        "global_attention_types": global_attention_types,
        "use_structure": args.use_structure,
    }
    train = scirex_windows(train_docs, tokenizer, **options)
    evaluation = scirex_windows(eval_docs, tokenizer, **options)
    split_sizes = {name: len(split) for name, split in splits.items()}
    logger.info("SciREX split: %s (%s documents)", split_source, split_sizes)

    if labels == "bio":
        windows_of = _group([int(window["doc_index"]) for window in evaluation])

        def word_tags(predictions: list[np.ndarray]) -> list[list[str]]:
            """Each eval document's predicted BIO tag per word, windows stitched back."""
            tags = []
            for doc_index, doc in enumerate(eval_docs):
                rows = windows_of.get(doc_index, [])
                stitched = stitch_word_predictions(
                    [evaluation[k] for k in rows], [predictions[k] for k in rows], len(doc["words"])
                )
                tags.append([NER_LABELS[label] for label in stitched])
            return tags

        def score(predictions: list[np.ndarray]) -> dict[str, Any]:
            return ner_metrics([bio_labels(doc) for doc in eval_docs], word_tags(predictions))

        def write_ner(predictions: list[np.ndarray], folder: Path) -> Path:
            """SciREX's ``--ner-file`` (as its ``predict_ner.py`` writes it): one paper per line."""
            path = Path(folder) / NER_FILE
            with path.open("w", encoding="utf-8") as handle:
                for doc, tags in zip(eval_docs, word_tags(predictions)):
                    keys = ("doc_id", "words", "sentences", "sections")
                    handle.write(json.dumps({**{k: doc[k] for k in keys}, "ner": bio_spans(tags)}) + "\n")
            return path

        return TaskData(
            train,
            evaluation,
            args.eval_split,
            list(NER_LABELS),
            split_sizes,
            score,
            write_predictions=write_ner,
            extra_results={"split_source": split_source, "ner_file": NER_FILE},
        )

    # Salient: only windows that carry mentions train or score anything.
    train = [window for window in train if len(window["mention_labels"])]
    evaluation = [window for window in evaluation if len(window["mention_labels"])]
    eval_mentions = [salient_mentions(doc) for doc in eval_docs]
    references = [label for mentions in eval_mentions for _, _, label in mentions]

    def mention_predictions(predictions: list[np.ndarray]) -> list[np.ndarray]:
        return _mention_flags(evaluation, predictions, [len(mentions) for mentions in eval_mentions])

    def predicted_clusters(predicted: list[np.ndarray]) -> dict[str, dict[str, list[tuple[int, int]]]]:
        return {
            str(doc["doc_id"]): clusters_from_salient_mentions(
                doc, [mention[:2] for mention, flag in zip(mentions, flags) if flag]
            )
            for doc, mentions, flags in zip(eval_docs, eval_mentions, predicted)
        }

    def score_salient(predictions: list[np.ndarray]) -> dict[str, Any]:
        predicted = mention_predictions(predictions)
        flat = np.concatenate(predicted).astype(int).tolist() if predicted else []
        metrics = classification_metrics(references, flat)
        clusters = salient_cluster_scores(eval_docs, predicted_clusters(predicted), tie_break=TIE_BREAK)
        metrics["salient_clusters"] = compact_scores(clusters)
        return metrics

    def write_clusters(predictions: list[np.ndarray], folder: Path) -> Path:
        records = clusters_file_records(eval_docs, predicted_clusters(mention_predictions(predictions)))
        return write_clusters_file(Path(folder) / CLUSTERS_FILE, records)

    counts = {"eval_mentions": len(references)}
    baselines = salient_task_baselines(args, splits, train_docs, eval_docs, references)
    end_to_end = None
    if args.ner_predictions is not None:
        end_to_end = _end_to_end(
            args, tokenizer, options, eval_docs, baselines["salient_clusters"]["min_mentions"]["k"]
        )
    extra = {
        "split_source": split_source,
        "salient_clusters": {
            "metric": "SciREX salient-entity-cluster precision/recall/F1 with gold clusters given: per paper, "
            "averaged over papers (metrics/scirex_salient_clusters, a port of SciREX's "
            "scirex_relation_evaluate.py)",
            "rule": CLUSTER_RULE,
            "tie_break": TIE_BREAK,
            "clusters_file": CLUSTERS_FILE,
        },
        "baselines": baselines,
    }
    if end_to_end is not None:
        extra["end_to_end"] = {
            "metric": "SciREX salient-entity-cluster precision/recall/F1 on PREDICTED mentions and clusters: "
            "per paper, averaged over papers (the paper's 0.342 / 0.318 setting)",
            "rule": PREDICTED_CLUSTER_RULE,
            "ner_predictions": str(args.ner_predictions),
            "clusters_file": END_TO_END_FILE,
        }
    return TaskData(
        train,
        evaluation,
        args.eval_split,
        ["not-salient", "salient"],
        split_sizes,
        score_salient,
        counts,
        write_clusters,
        extra,
        end_to_end,
    )


def _mention_flags(
    windows: Sequence[dict[str, Any]], predictions: Sequence[np.ndarray], counts: Sequence[int]
) -> list[np.ndarray]:
    """Per document, one bool per mention (in the order the windows were built with): salient when any
    window that scores the mention says so (``make_windows`` puts each mention in exactly one window)."""
    predicted = [np.zeros(count, dtype=bool) for count in counts]
    scored = [np.zeros(count, dtype=bool) for count in counts]
    for window, row in zip(windows, predictions):
        doc_index, indices = int(window["doc_index"]), np.asarray(window["mention_index"])
        np.logical_or.at(predicted[doc_index], indices, np.asarray(row)[: len(indices)] == 1)
        scored[doc_index][indices] = True
    unscored = sum(int((~flags).sum()) for flags in scored)
    if unscored:
        raise RuntimeError(f"{unscored} mentions were scored in no window")
    return predicted


def ner_predictions_file(path: str | Path, seed: int) -> Path:
    """The ``--ner-predictions`` file for fine-tuning seed ``seed``: ``PATH/seed-<seed>/ner_predictions.jsonl``
    when PATH is a scirex-ner output folder (seeds paired), else PATH itself (one file for every seed)."""
    path = Path(path)
    if path.is_dir():
        paired = path / f"seed-{seed}" / NER_FILE
        if not paired.is_file():
            raise InputError(
                f"--ner-predictions {path}: no seed-{seed}/{NER_FILE} there; run scirex-ner with the same --seeds"
            )
        return paired
    if not path.is_file():
        raise InputError(f"--ner-predictions {path}: no such file or scirex-ner output folder")
    return path


def _end_to_end(
    args: FinetuneArguments,
    tokenizer: Any,
    options: dict[str, Any],
    eval_docs: list[dict],
    k: int,
) -> Callable[[int], EndToEnd]:
    """The end-to-end evaluation of one seed (:class:`EndToEnd`): the salient-mention classifier on the NER
    model's predicted mentions, clustered by ``PREDICTED_CLUSTER_RULE``, scored by SciREX's metric beside
    the trivial predictors on the same predicted clusters (``end_to_end_baselines``, ``k`` the gold-cluster
    baseline's)."""

    def for_seed(seed: int) -> EndToEnd:
        source = ner_predictions_file(args.ner_predictions, seed)
        try:
            mentions = read_ner_predictions(source, eval_docs)
        except ValueError as error:
            raise InputError(str(error)) from None
        # Salience labels are unknown for predicted spans: 1 where the span is a gold salient mention, for
        # the record only (nothing trains on these features).
        gold = [{(s, e) for s, e, label in salient_mentions(doc) if label} for doc in eval_docs]
        labelled = [
            [(start, end, int((start, end) in gold_spans)) for start, end, _ in doc_mentions]
            for doc_mentions, gold_spans in zip(mentions, gold)
        ]
        windows = scirex_windows(eval_docs, tokenizer, **options, mentions=labelled)
        features = [window for window in windows if len(window["mention_labels"])]
        for index, feature in enumerate(features):
            feature["feature_index"] = index
        by_id = {str(doc["doc_id"]): doc_mentions for doc, doc_mentions in zip(eval_docs, mentions)}
        trivial = end_to_end_baselines(eval_docs, by_id, k, tie_break=TIE_BREAK)

        def clusters(predictions: list[np.ndarray]) -> dict[str, dict[str, list[tuple[int, int]]]]:
            flags = _mention_flags(features, predictions, [len(m) for m in mentions])
            return {
                str(doc["doc_id"]): salient_predicted_clusters(doc, doc_mentions, doc_flags)
                for doc, doc_mentions, doc_flags in zip(eval_docs, mentions, flags)
            }

        def score(predictions: list[np.ndarray]) -> dict[str, Any]:
            scores = salient_cluster_scores(eval_docs, clusters(predictions), tie_break=TIE_BREAK)
            return {
                **compact_scores(scores),
                "predicted_mentions": sum(len(m) for m in mentions),
                "ner_predictions": str(source),
                "baselines": trivial,
            }

        def write(predictions: list[np.ndarray], folder: Path) -> Path:
            records = clusters_file_records(eval_docs, clusters(predictions))
            return write_clusters_file(Path(folder) / END_TO_END_FILE, records)

        return EndToEnd(features, score, write)

    return for_seed


def salient_task_baselines(
    args: FinetuneArguments,
    splits: dict[str, list[dict]],
    train_docs: list[dict],
    eval_docs: list[dict],
    references: list[int],
) -> dict[str, Any]:
    """Model-independent scores on the eval documents, by the same metrics as the model's.

    Mention level: the all-positive predictor (every gold mention salient). Salient clusters:
    every gold cluster salient, gold clusters with at least ``k`` mentions, and the oracle
    (``scirex_metric.salient_baselines``). ``k`` is chosen on the dev split when the test split is
    scored, and on the training documents when dev is scored (or when the dev split is empty).
    """
    if args.eval_split != "dev" and splits["dev"]:
        k_split, k_docs = "dev", splits["dev"]
    else:
        k_split, k_docs = "train", train_docs
    all_positive = classification_metrics(references, [1] * len(references))
    without = sum(1 for doc in eval_docs if not relation_entities(doc))
    if without:
        logger.warning(
            "%d of %d %s documents have no n_ary_relations, hence no gold salient cluster: the salient-"
            "cluster recall and F1 of those papers are 0 for every predictor",
            without,
            len(eval_docs),
            args.eval_split,
        )
    return {
        "split": args.eval_split,
        "documents": len(eval_docs),
        "documents_without_gold_salient_clusters": without,
        "mentions": {
            "all_positive": {k: v for k, v in all_positive.items() if k != "average"},
            "mentions": len(references),
            "salient_mentions": int(sum(references)),
        },
        "salient_clusters": salient_baselines(eval_docs, k_docs, k_split, tie_break=TIE_BREAK),
    }


def _check_no_unseen_labels(files: dict[str, str | None], labels: dict[str, set[str]]) -> None:
    """Refuse evaluation labels absent from the training file, naming them: they would become classes
    the model never saw, and metrics over impossible classes."""
    for name, found in labels.items():
        unseen = sorted(found - labels["train"])
        if name != "train" and unseen:
            raise DataFormatError(
                f"{files[name]}: label(s) {unseen} never occur in --train-file {files['train']}; a class the "
                "model never trains on cannot be predicted: fix the labels or add training rows"
            )


def _text_columns(args: FinetuneArguments, rows: list[dict], path: Path) -> list[str]:
    if args.text_columns:
        return list(args.text_columns)
    columns = rows[0].keys() if rows else []
    for candidate in (["text"], ["sentence1", "sentence2"], ["sentence"]):
        if all(name in columns for name in candidate):
            return candidate
    raise DataFormatError(f"{path}: no text, sentence1/sentence2 or sentence column; pass --text-columns")


def sequence_task_data(args: FinetuneArguments, tokenizer: Any) -> TaskData:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    rows = {name: read_records(path) for name, path in files.items() if path is not None}
    for name, split_rows in rows.items():
        if not split_rows:
            raise DataFormatError(f"{files[name]}: no rows")
    text_columns = _text_columns(args, rows["train"], args.train_file)
    if len(text_columns) > 2:
        raise InputError(f"--text-columns takes one or two columns, got {text_columns}")
    raw_labels = {
        name: _column(split_rows, args.label_column, files[name]) for name, split_rows in rows.items()
    }
    for name, labels in raw_labels.items():
        for index, label in enumerate(labels):
            if label is None or (isinstance(label, float) and math.isnan(label)) or not str(label).strip():
                raise DataFormatError(
                    f"{files[name]}: row {index + 1} has an empty {args.label_column!r}; every row needs a label"
                )
            if isinstance(label, float) and not label.is_integer():
                raise DataFormatError(
                    f"{files[name]}: row {index + 1} has label {label}; regression is not supported"
                )
    # The classes are the training labels: a class seen only in evaluation would be scored, never learned.
    label_names = sorted({str(label) for label in raw_labels["train"]})
    _check_no_unseen_labels(
        files, {name: {str(label) for label in labels} for name, labels in raw_labels.items()}
    )
    label_ids = {label: index for index, label in enumerate(label_names)}
    eval_split = "test" if "test" in rows else "validation"

    def features(name: str, limit: int | None) -> list[dict[str, Any]]:
        split_rows = _limit(rows[name], limit)
        texts = [
            [str(value) for value in _column(split_rows, column, files[name])] for column in text_columns
        ]
        encoding = tokenizer(*texts, truncation=True, max_length=args.max_seq_length, verbose=False)
        labels = _limit(raw_labels[name], limit)
        result = []
        for index in range(len(split_rows)):
            feature = {
                key: np.asarray(encoding[key][index], dtype=np.int64)
                for key in ("input_ids", "token_type_ids")
                if key in encoding
            }
            feature["labels"] = np.int64(label_ids[str(labels[index])])
            result.append(feature)
        return result

    train, evaluation = features("train", args.max_train_samples), features(eval_split, args.max_eval_samples)

    def score(predictions: list[np.ndarray]) -> dict[str, Any]:
        references = [int(feature["labels"]) for feature in evaluation]
        return classification_metrics(references, [int(p) for p in predictions], num_labels=len(label_names))

    sizes = {name: len(split_rows) for name, split_rows in rows.items()}
    return TaskData(train, evaluation, eval_split, label_names, sizes, score)


def _as_list(value: Any) -> list:
    # CSV cells hold whitespace-separated tokens/tags; JSON holds lists.
    return value.split() if isinstance(value, str) else list(value)


def token_task_data(args: FinetuneArguments, tokenizer: Any) -> TaskData:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    rows = {name: read_records(path) for name, path in files.items() if path is not None}
    tags_column = args.tags_column
    if tags_column is None:
        columns = rows["train"][0].keys() if rows["train"] else []
        tags_column = next((c for c in ("ner_tags", "tags", "labels") if c in columns), None)
        if tags_column is None:
            raise DataFormatError(
                f"{args.train_file}: no ner_tags, tags or labels column; pass --tags-column"
            )
    tokens = {
        name: [_as_list(v) for v in _column(r, args.tokens_column, files[name])] for name, r in rows.items()
    }
    tags = {name: [_as_list(v) for v in _column(r, tags_column, files[name])] for name, r in rows.items()}
    for name in rows:
        for index, (row_tokens, row_tags) in enumerate(zip(tokens[name], tags[name])):
            if len(row_tokens) != len(row_tags):
                raise DataFormatError(
                    f"{files[name]}: row {index + 1} has {len(row_tokens)} tokens but {len(row_tags)} tags"
                )
            if not row_tokens:
                raise DataFormatError(f"{files[name]}: row {index + 1} has no tokens")
            if args.label_names:
                try:
                    tags[name][index] = [args.label_names[int(tag)] for tag in row_tags]
                except (ValueError, IndexError):
                    raise DataFormatError(
                        f"{files[name]}: row {index + 1} has tags {row_tags} that are not ids into --label-names"
                    ) from None
            elif any(not isinstance(tag, str) or tag.lstrip("-").isdigit() for tag in row_tags):
                raise DataFormatError(
                    f"{files[name]}: row {index + 1} has integer tags; pass their names with --label-names"
                )
    label_names = sorted({tag for row in tags["train"] for tag in row}, key=lambda t: (t != "O", t))
    _check_no_unseen_labels(
        files, {name: {tag for row in split for tag in row} for name, split in tags.items()}
    )
    label_ids = {label: index for index, label in enumerate(label_names)}
    eval_split = "test" if "test" in rows else "validation"

    def features(name: str, limit: int | None) -> tuple[list[dict[str, Any]], list[int]]:
        windows, owners = [], []
        for index, (row_tokens, row_tags) in enumerate(
            zip(_limit(tokens[name], limit), _limit(tags[name], limit))
        ):
            row_windows = make_windows(
                tokenizer,
                row_tokens,
                max_seq_length=args.max_seq_length,
                stride=args.stride,
                word_labels=[label_ids[tag] for tag in row_tags],
            )
            windows.extend(row_windows)
            owners.extend([index] * len(row_windows))
        return windows, owners

    train, _ = features("train", args.max_train_samples)
    evaluation, owners = features(eval_split, args.max_eval_samples)
    eval_tags = _limit(tags[eval_split], args.max_eval_samples)

    def score(predictions: list[np.ndarray]) -> dict[str, Any]:
        predicted = []
        windows_of = _group(owners)
        for index, row_tags in enumerate(eval_tags):
            rows_of = windows_of.get(index, [])
            stitched = stitch_word_predictions(
                [evaluation[k] for k in rows_of], [predictions[k] for k in rows_of], len(row_tags)
            )
            predicted.append([label_names[label] for label in stitched])
        return ner_metrics(eval_tags, predicted)

    sizes = {name: len(split_rows) for name, split_rows in rows.items()}
    return TaskData(train, evaluation, eval_split, label_names, sizes, score)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def collate(features: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad the model inputs of a list of features; adds ``attention_mask`` and ``feature_index``."""
    batch: dict[str, torch.Tensor] = {}
    length = max(len(feature["input_ids"]) for feature in features)
    for key, pad in PAD_VALUES.items():
        if key not in features[0]:
            continue
        values = [np.asarray(feature[key]) for feature in features]
        if values[0].ndim == 0:
            batch[key] = torch.as_tensor(np.stack(values), dtype=torch.long)
            continue
        width = max(len(v) for v in values) if key == "mention_labels" else length
        pad_value = pad_token_id if key == "input_ids" else pad
        padded = np.full((len(values), width), pad_value, dtype=np.int64)
        for row, value in enumerate(values):
            padded[row, : len(value)] = value
        batch[key] = torch.from_numpy(padded)
    batch["attention_mask"] = (
        torch.arange(length)[None, :] < torch.tensor([len(f["input_ids"]) for f in features])[:, None]
    ).long()
    if "mention_spans" in features[0]:
        width = batch["mention_labels"].shape[1]
        spans = np.zeros((len(features), width, 2), dtype=np.int64)
        for row, feature in enumerate(features):
            spans[row, : len(feature["mention_spans"])] = feature["mention_spans"]
        batch["mention_spans"] = torch.from_numpy(spans)
    batch["feature_index"] = torch.tensor([int(f["feature_index"]) for f in features], dtype=torch.long)
    return batch


def _model_inputs(batch: dict[str, torch.Tensor], with_labels: bool) -> dict[str, torch.Tensor]:
    inputs = {key: value for key, value in batch.items() if key != "feature_index"}
    # Mention features carry their labels as mention_labels (padded to mentions, not tokens); the head reads labels.
    if "mention_labels" in inputs:
        inputs["labels"] = inputs.pop("mention_labels")
    if not with_labels:
        inputs.pop("labels", None)
    return inputs


# --------------------------------------------------------------------------------------------
# Training and evaluation of one seed
# --------------------------------------------------------------------------------------------


def _logits(outputs: Any) -> torch.Tensor:
    return outputs[1] if isinstance(outputs, tuple) else outputs.logits


def predict(model: nn.Module, dataloader: DataLoader, accelerator: Any, count: int) -> list[np.ndarray]:
    """The argmax predictions of the ``count`` features of ``dataloader``, gathered across processes, in
    feature order (``feature_index``)."""
    model.eval()
    predictions: list[np.ndarray | None] = [None] * count
    for batch in dataloader:
        with torch.no_grad():
            logits = _logits(model(**_model_inputs(batch, with_labels=False)))
        predicted = logits.argmax(-1)
        if predicted.ndim > 1:
            # Rows differ in length across processes: pad before gathering.
            predicted = accelerator.pad_across_processes(predicted, dim=1, pad_index=-100)
        indices, predicted = accelerator.gather_for_metrics((batch["feature_index"], predicted))
        for index, row in zip(indices.tolist(), predicted.cpu().numpy()):
            predictions[index] = row
    missing = sum(p is None for p in predictions)
    if missing:
        raise RuntimeError(f"evaluation lost {missing} of {len(predictions)} features")
    model.train()
    return predictions  # type: ignore[return-value]


def evaluate_model(
    model: nn.Module, dataloader: DataLoader, accelerator: Any, data: TaskData
) -> dict[str, Any]:
    return data.score(predict(model, dataloader, accelerator, len(data.eval)))


def _batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    outputs = model(**_model_inputs(batch, with_labels=True))
    return outputs[0] if isinstance(outputs, tuple) else outputs.loss


def run_identity(args: FinetuneArguments, data: TaskData) -> dict[str, Any]:
    """What a seed's checkpoints depend on (the model, the data files, the windows and the classes): a resume
    that changes any of it is refused (``restore_checkpoint``)."""

    def where(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    identity = {
        name: where(getattr(args, name))
        for name in ("model", "scirex", "train_file", "validation_file", "test_file")
    }
    identity |= {
        name: getattr(args, name)
        for name in ("task", "max_seq_length", "stride", "use_structure", "global_attention_types")
    }
    return identity | {"label_names": list(data.label_names)}


def train_one_seed(
    args: FinetuneArguments,
    accelerator: Any,
    data: TaskData,
    seed: int,
    pad_token_id: int,
    progress: Any,
    total_steps: int,
) -> dict[str, Any]:
    """Train a fresh model from ``--model`` with ``seed``, resuming its newest intact checkpoint when
    asked, then score it on the eval features."""
    set_seed(seed)
    seed_dir = Path(args.output_dir) / f"seed-{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    seed_args = dataclasses.replace(args, seed=seed)
    model = build_model(args, len(data.label_names), dict(enumerate(data.label_names)))

    def collate_fn(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(features, pad_token_id)

    train_loader = DataLoader(
        data.train,
        batch_size=args.per_device_batch_size,
        sampler=EpochShuffleSampler(len(data.train), seed),
        collate_fn=collate_fn,
    )
    eval_loader = DataLoader(data.eval, batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn)
    checkpoints = seed_dir / "checkpoints"
    fitting = fit(
        accelerator,
        seed_args,
        model,
        train_loader,
        eval_loader,
        loss_fn=_batch_loss,
        weight_fn=lambda batch: 1,  # the models' losses are batch means
        total_steps=total_steps,
        checkpoint_dir=checkpoints,
        resumed=resume_point(seed_args, checkpoints),
        identity=run_identity(args, data),
        progress=progress,
        metrics_file=seed_dir / METRICS_FILE,
        metrics_extra={"seed": seed},
    )
    model, eval_loader = fitting.model, fitting.eval_loader

    progress.set_postfix(seed=seed, status="evaluating")
    predictions = predict(model, eval_loader, accelerator, len(data.eval))
    metrics = data.score(predictions)
    end_to_end = data.end_to_end(seed) if data.end_to_end is not None else None
    if end_to_end is not None:
        loader = accelerator.prepare(
            DataLoader(end_to_end.features, batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn)
        )
        predicted = predict(model, loader, accelerator, len(end_to_end.features))
        metrics["end_to_end"] = end_to_end.score(predicted)
    if accelerator.is_main_process:
        if data.write_predictions is not None:
            data.write_predictions(predictions, seed_dir)
        if end_to_end is not None:
            end_to_end.write(predicted, seed_dir)
        write_json_atomically(
            seed_dir / EVAL_RESULTS_FILE,
            {"seed": seed, "step": total_steps, "split": data.eval_split, **metrics},
        )
        if args.save_model:
            accelerator.unwrap_model(model).save_pretrained(seed_dir / "model")
    accelerator.free_memory(model, fitting.optimizer, fitting.train_loader, eval_loader, fitting.scheduler)
    return metrics


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Bars of mean ± std over seeds: overall metrics, F1 per type when there are types, and SciREX's
    salient-cluster scores with the baselines as horizontal lines when there are those."""
    metrics = results["metrics"]
    overall = [name for name in ("f1", "precision", "recall", "accuracy") if name in metrics]
    per_type = metrics.get("per_type", {})
    clusters = metrics.get("salient_clusters", {})
    all_positive = results.get("baselines", {}).get("mentions", {}).get("all_positive")
    panels: list[tuple[list[str], list[dict[str, Any]], str, dict[str, float]]] = [
        (
            overall,
            [metrics[n] for n in overall],
            "overall",
            {"all mentions salient": all_positive["f1"]} if all_positive else {},
        )
    ]
    if per_type:
        panels.append((list(per_type), [per_type[k]["f1"] for k in per_type], "F1 per entity type", {}))
    if clusters:
        names = ["f1", "precision", "recall"]
        baselines = results.get("baselines", {}).get("salient_clusters", {})
        k = baselines.get("min_mentions", {}).get("k")
        lines = {
            label: baselines[key]["f1"]
            for key, label in (
                ("all_salient", "all salient"),
                ("min_mentions", f">= {k} mentions"),
                ("oracle", "oracle"),
            )
            if key in baselines
        }
        panels.append(
            (names, [clusters[n] for n in names], "salient clusters (SciREX, gold clusters)", lines)
        )
    end_to_end = metrics.get("end_to_end", {})
    if end_to_end:
        names = ["f1", "precision", "recall"]
        labels = {"all_salient": "every predicted cluster", "min_mentions": ">= k predicted mentions"}
        lines = {labels.get(k, k): v["mean"] for k, v in end_to_end.get("baselines", {}).items()}
        panels.append((names, [end_to_end[n] for n in names], "salient clusters (SciREX, end to end)", lines))
    figure = Figure(figsize=(5.5 * len(panels) + 0.5, 4))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (names, entries, title, lines) in zip(axes[0], panels):
        means = [entry["mean"] for entry in entries]
        stds = [entry["std"] for entry in entries]
        axis.bar(names, means, yerr=stds, capsize=4, color="#4c72b0")
        for x, (mean, std) in enumerate(zip(means, stds)):
            axis.text(x, mean + std + 0.01, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
        for (label, value), style in zip(lines.items(), (":", "--", "-.")):
            axis.axhline(value, color="gray", linestyle=style, linewidth=1, label=f"F1 {label}: {value:.3f}")
        if lines:
            axis.legend(fontsize=7, loc="upper right")
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("score (mean ± std over seeds)")
        axis.set_title(title)
    seeds = ", ".join(str(s) for s in results["seeds"])
    figure.suptitle(
        f"{results['task']} on {results['eval_split']}: {Path(results['model']).name} (seeds {seeds})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


# What a finetune run writes at the top of its --output-dir (besides the seed-* folders).
RUN_FILES = (RESULTS_FILE, RESULTS_PLOT, TRAINING_ARGS_FILE)


def _finished_seed(seed_dir: Path, total_steps: int) -> dict[str, Any] | None:
    """The metrics of a seed that already trained ``total_steps`` and was scored, else None."""
    path = seed_dir / EVAL_RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    if results.get("step") != total_steps:
        return None
    return {key: value for key, value in results.items() if key not in ("seed", "step", "split")}


def run_finetune(args: FinetuneArguments) -> dict[str, Any]:
    """Train and score one model per seed; write and return the ``results.json`` content.

    ``--output-dir`` may not overlap the model or tokenizer folder, is locked for the run, and an earlier
    run's results in it are kept unless ``--overwrite-output-dir`` (or continued with a resume)."""
    config = check_structbert(args.model)
    if args.max_seq_length > config.max_position_embeddings:
        raise InputError(
            f"--max-seq-length {args.max_seq_length} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}) in {args.model}"
        )
    tokenizer_path = args.tokenizer or args.model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"--tokenizer {tokenizer_path}: a fast tokenizer (tokenizer.json) is needed for word alignment"
        )
    if len(tokenizer) > config.vocab_size:
        raise InputError(
            f"--tokenizer {tokenizer_path} has {len(tokenizer)} tokens but {args.model} has vocab_size {config.vocab_size}"
        )

    inputs = {"--model": args.model, "--tokenizer": args.tokenizer}
    with training_run(args, "finetune", inputs) as accelerator:
        return _finetune(args, accelerator, Path(args.output_dir), config, tokenizer)


def _earlier_run(output_dir: Path) -> list[str]:
    """The files and folders of an earlier finetune run in ``output_dir``."""
    if not output_dir.is_dir():
        return []
    return sorted(
        path.name
        for path in output_dir.iterdir()
        if path.name in RUN_FILES or (path.is_dir() and path.name.startswith("seed-"))
    )


def _finetune(
    args: FinetuneArguments, accelerator: Any, output_dir: Path, config: Any, tokenizer: Any
) -> dict[str, Any]:
    earlier = _earlier_run(output_dir)
    if earlier and args.resume_from_checkpoint is None:
        if not args.overwrite_output_dir:
            # Writing here would replace results.json and mix the old seed-* folders with the new ones.
            raise InputError(
                f"--output-dir {output_dir} holds an earlier finetune run ({', '.join(earlier[:4])}"
                f"{', ...' if len(earlier) > 4 else ''}): pass --overwrite-output-dir to replace it, "
                "--resume-from-checkpoint latest to continue it, or choose a new --output-dir"
            )
        if accelerator.is_main_process:
            logger.warning("--overwrite-output-dir: removing %s from %s", ", ".join(earlier), output_dir)
            for name in earlier:
                path = output_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        accelerator.wait_for_everyone()
    write_run_arguments(accelerator, args, args.resume_from_checkpoint)

    with accelerator.main_process_first():
        if TASKS[args.task].inputs == "scirex":
            types = args.global_attention_types
            data = scirex_task_data(
                args, tokenizer, config.global_attention_types if types is None else types
            )
        elif TASKS[args.task].labels == "rows":
            data = sequence_task_data(args, tokenizer)
        else:
            data = token_task_data(args, tokenizer)
    if not data.train or not data.eval:
        raise InputError(
            f"nothing to train on ({len(data.train)} features) or to score ({len(data.eval)} features)"
        )
    for index, feature in enumerate(data.train):
        feature["feature_index"] = index
    for index, feature in enumerate(data.eval):
        feature["feature_index"] = index

    epoch_steps = steps_per_epoch(batches_per_process(len(data.train), args, accelerator.num_processes), args)
    total_steps = args.max_steps or max(1, math.ceil(args.num_train_epochs * epoch_steps))
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logger.info(
        "finetune %s: model %s, %d train / %d eval features (%s), split sizes %s, %d steps x %d seeds, "
        "batch %d x %d processes x %d accumulation, lr %g, max length %d, stride %d, structure %s",
        args.task, args.model, len(data.train), len(data.eval), data.eval_split, data.split_sizes, total_steps,
        len(args.seeds), args.per_device_batch_size, accelerator.num_processes, args.gradient_accumulation_steps,
        args.learning_rate, args.max_seq_length, args.stride, args.use_structure,
    )  # fmt: skip

    per_seed = []
    progress = tqdm(
        total=total_steps * len(args.seeds),
        desc=f"finetune {args.task}",
        disable=not accelerator.is_local_main_process,
    )
    with progress:
        for seed in args.seeds:
            resuming = args.resume_from_checkpoint is not None
            finished = _finished_seed(output_dir / f"seed-{seed}", total_steps) if resuming else None
            seed_dir = output_dir / f"seed-{seed}"
            if args.task == "scirex-salient" and finished is not None:
                # A seed scored without some of this run's scores: score it again (from its last checkpoint).
                stale = "salient_clusters" not in finished or not (seed_dir / CLUSTERS_FILE).is_file()
                if args.ner_predictions is not None:
                    stale = (
                        stale or "end_to_end" not in finished or not (seed_dir / END_TO_END_FILE).is_file()
                    )
                finished = None if stale else finished
            if finished is not None:
                progress.update(total_steps)
                per_seed.append(finished)
                continue
            per_seed.append(
                train_one_seed(args, accelerator, data, seed, pad_token_id, progress, total_steps)
            )

    results = {
        "task": args.task,
        "model": str(args.model),
        "seeds": list(args.seeds),
        "eval_split": data.eval_split,
        "split_sizes": data.split_sizes,
        "features": {"train": len(data.train), "eval": len(data.eval), **data.counts},
        "steps_per_seed": total_steps,
        "use_structure": args.use_structure,
        "max_seq_length": args.max_seq_length,
        "stride": args.stride,
        "metrics": aggregate_metrics(per_seed),
        "per_seed": [{"seed": seed, **metrics} for seed, metrics in zip(args.seeds, per_seed)],
        **data.extra_results,
    }
    for key, name in (("salient_clusters", CLUSTERS_FILE), ("end_to_end", END_TO_END_FILE)):
        if key in results:
            results[key]["files"] = {
                str(seed): f"seed-{seed}/{name}"
                for seed in args.seeds
                if (output_dir / f"seed-{seed}" / name).is_file()
            }
    nothing = learned_nothing(results) if TASKS[args.task].inputs == "scirex" else None
    if TASKS[args.task].inputs == "scirex":
        results["learned_nothing"] = nothing is not None
    if accelerator.is_main_process:
        if nothing is not None:
            logger.warning("%s: THE MODEL LEARNED NOTHING: %s", args.task, nothing)
        write_json_atomically(output_dir / RESULTS_FILE, results)
        plot_results(results, output_dir / RESULTS_PLOT)
        f1 = results["metrics"]["f1"]
        logger.info(
            "%s: f1 %.4f ± %.4f over %d seeds; wrote %s",
            args.task,
            f1["mean"],
            f1["std"],
            len(args.seeds),
            output_dir / RESULTS_FILE,
        )
        if "salient_clusters" in results["metrics"]:
            cluster_f1 = results["metrics"]["salient_clusters"]["f1"]
            best = results["baselines"]["salient_clusters"]["best_trivial"]
            logger.info(
                "%s: salient-cluster F1 %.4f ± %.4f (best trivial baseline, %s: %.4f)",
                args.task,
                cluster_f1["mean"],
                cluster_f1["std"],
                best["name"],
                best["f1"],
            )
        if "end_to_end" in results["metrics"]:
            entry = results["metrics"]["end_to_end"]
            trivial = max(entry["baselines"].items(), key=lambda item: item[1]["mean"])
            logger.info(
                "%s: end-to-end salient-cluster F1 %.4f ± %.4f (best trivial baseline on the same predicted "
                "mentions, %s: %.4f)",
                args.task,
                entry["f1"]["mean"],
                entry["f1"]["std"],
                trivial[0],
                trivial[1]["mean"],
            )
    accelerator.wait_for_everyone()
    return results


def learned_nothing(results: dict[str, Any]) -> str | None:
    """Why a run's scores say its model learned nothing (every F1, precision and recall mean is 0), naming
    the best trivial baseline it fails to beat; None when some score is above 0."""
    metrics = results["metrics"]
    scores = [metrics[m]["mean"] for m in ("f1", "precision", "recall") if m in metrics]
    scores += [
        metrics["salient_clusters"][m]["mean"]
        for m in ("f1", "precision", "recall")
        if "salient_clusters" in metrics
    ]
    if not scores or any(score > 0 for score in scores):
        return None
    baselines = results.get("baselines", {})
    if "salient_clusters" in baselines:
        best = baselines["salient_clusters"]["best_trivial"]
        trivial = f"the best trivial baseline ({best['name']}) has salient-cluster F1 {best['f1']:.4f}"
        if "all_positive" in baselines.get("mentions", {}):
            trivial += f", and calling every mention salient has F1 {baselines['mentions']['all_positive']['f1']:.4f}"
    else:
        trivial = "the trivial baseline (predicting no entity) scores 0.0000 too"
    return (
        f"every score is 0.0000 over {len(results['seeds'])} seed(s), no better than a constant prediction; "
        f"{trivial}. Train longer (--num-train-epochs / --max-steps) or with another --learning-rate"
    )


def run(args: FinetuneArguments) -> int:
    run_finetune(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command("finetune", main))
