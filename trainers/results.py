"""The experiment's ``results.json``, typed: ``experiment`` writes it, the report and the model cards read it.

docs/ARCHITECTURE.md shows an example. Every score over seeds is a :class:`Score`; pre-training and
fine-tuning scores must be finite (a NaN there is a failed run, not a result), attention measures may
be NaN (a measure with nothing to average, e.g. keyword attention in a probe without keywords).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from structformer.errors import InputError
from structformer.trainers.run_files import RESULTS_FILE


class Score(TypedDict):
    """One metric over seeds: mean, sample standard deviation (0 for one seed), the values."""

    mean: float
    std: float
    values: list[float]


class PretrainScores(TypedDict, total=False):
    """A model's numbers at the end of pre-training (``eval_results.json``; every entry a number).

    ``eval_bits_per_mask_token`` is the paper's metric (``[MASK]`` positions only, mean of per-document
    means), ``eval_bits_per_mask_token_pooled`` the token-pooled figure; ``initial_*`` the same before
    training, ``unigram_*`` a unigram model's on the same positions.
    """

    eval_bits_per_mask_token: float
    eval_bits_per_mask_token_pooled: float
    eval_perplexity: float
    eval_loss: float
    eval_documents: int
    eval_mask_tokens: int
    initial_eval_bits_per_mask_token: float
    unigram_bits_per_mask_token: float
    global_tokens_per_sequence: float
    train_tokens_seen: int
    step: int


class ModelResults(TypedDict, total=False):
    arm: str  # "structured", "plain", ...
    seed: int  # pre-training seed
    checkpoint: str
    pretrain: PretrainScores
    # task (``scirex-ner``, ``scirex-salient``) -> metric (``f1``, ``precision``, ``recall``) -> Score
    downstream: dict[str, dict[str, Score]]


class AttentionResults(TypedDict, total=False):
    summary: dict[str, float]  # "variant/mode/measure" -> mean over layers and heads
    probe: dict[str, Any]  # what was probed: documents, tokens, heading and keyword tokens
    figures: list[str]  # PNG paths relative to the experiment folder


class BitsResults(TypedDict, total=False):
    """The arms compared on bits per ``[MASK]`` token (``experiment.compare_arms`` documents each key)."""

    definition: str
    reference_arm: str
    documents: int
    mask_tokens: int
    eval_seed: int
    seeds: dict[str, Any]  # seed -> {"arms": {arm: figures}, "differences": {"a - b": bootstrap}}
    comparisons: dict[str, Any]  # "a - b" -> mean over seeds, t-interval, verdict
    baselines: dict[str, float]
    scale: dict[str, Any]
    paper: dict[str, float]


class ExperimentResults(TypedDict, total=False):
    settings: dict[str, Any]
    tokenizer: dict[str, str]  # path, sha256 of tokenizer.json
    models: dict[str, ModelResults]  # "<arm>/seed-<seed>"
    bits: BitsResults
    attention: AttentionResults
    # with --scirex: model key -> task -> split sizes, baselines, per-paper cluster F1, structure setting
    scirex_runs: dict[str, Any]


def summarize(values: Sequence[float]) -> Score:
    """The :class:`Score` of per-seed values."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def _finite(value: Any, where: str, source: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{source}: {where} is not a number ({value!r})")
    if not math.isfinite(value):
        raise InputError(f"{source}: {where} is not finite ({value})")


def _mapping(value: Any, where: str, source: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise InputError(f"{source}: {where} is not an object")
    return value


def check_results(results: Any, source: str = RESULTS_FILE) -> ExperimentResults:
    """``results`` as :class:`ExperimentResults`; an ``InputError`` names the first entry that is wrong."""
    results = _mapping(results, "the top level", source)
    for key in ("settings", "models", "attention"):
        _mapping(results.get(key), key, source)
    if "bits" in results:
        _check_numbers(_mapping(results["bits"], "bits", source), "bits", source)
    for variant, model in results["models"].items():
        where = f"models.{variant}"
        model = _mapping(model, where, source)
        if not isinstance(model.get("checkpoint"), str):
            raise InputError(f"{source}: {where}.checkpoint is not a path")
        for name, value in _mapping(model.get("pretrain"), f"{where}.pretrain", source).items():
            _finite(value, f"{where}.pretrain.{name}", source)
        for task, metrics in _mapping(model.get("downstream"), f"{where}.downstream", source).items():
            for metric, score in _mapping(metrics, f"{where}.downstream.{task}", source).items():
                at = f"{where}.downstream.{task}.{metric}"
                score = _mapping(score, at, source)
                for part in ("mean", "std"):
                    _finite(score.get(part), f"{at}.{part}", source)
                for index, value in enumerate(score.get("values") or []):
                    _finite(value, f"{at}.values[{index}]", source)
    return results  # type: ignore[return-value]


def _check_numbers(value: Any, where: str, source: str) -> None:
    """Every float inside ``value`` is finite (None stands for "not available", e.g. one seed's interval)."""
    if isinstance(value, float):
        _finite(value, where, source)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}", source)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, f"{where}[{index}]", source)


def write_results(path: Path, results: ExperimentResults) -> None:
    """Check, then write atomically: a reader never sees half a file or a NaN score."""
    check_results(results, str(path))
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_results(path: str | Path) -> ExperimentResults:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {path} does not exist")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    return check_results(results, str(path))
