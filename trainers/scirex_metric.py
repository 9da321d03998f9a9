"""SciREX's salient-cluster (and relation) metric for the rest of the package, plus trivial baselines.

The metric itself is the offline ``evaluate`` module in ``trainers/metrics/scirex_salient_clusters``
(see its README for the exact definitions). :func:`load_metric` goes through ``evaluate.load``; the
pure scoring functions are re-exported here by importing the module file with ``importlib``, so callers
need none of ``evaluate``'s machinery (no module cache, no Arrow files).

Baselines score predictions built from a paper's GOLD mentions and GOLD coreference clusters (every
non-empty cluster of ``coref`` and ``coref_non_salient``, as annotated, method sub-entities not
merged); they only differ in which clusters they call salient:

- :func:`all_clusters_salient`: every cluster;
- :func:`min_mentions_salient`: clusters with at least ``k`` mentions (:func:`choose_k_on` picks ``k``);
- :func:`oracle_salient`: exactly the gold salient clusters (:func:`gold_salient_clusters`) that have a
  mention. Its recall stays below 1 because gold relation entities without any mention cannot be
  predicted but still count.

:func:`salient_baselines` computes all three on one evaluation split (``k`` chosen on another split).

For a model that classifies gold mentions ("gold clusters given", the setting of the paper's 0.7195 /
0.7185), :func:`clusters_from_salient_mentions` turns its salient mentions into predicted salient
clusters (:data:`CLUSTER_RULE`), and :func:`clusters_file_records` / :func:`write_clusters_file` /
:func:`read_clusters_file` store them as a SciREX ``--clusters-file`` that anyone can re-score.

End to end (the paper's 0.342 / 0.318 setting), the mentions are a NER model's: :func:`cluster_predicted_mentions`
groups them by :data:`PREDICTED_CLUSTER_RULE` (type and normalized text, since SciREX's coreference model is not
available offline), :func:`salient_predicted_clusters` keeps the clusters with a mention predicted salient, and
:func:`end_to_end_baselines` scores the trivial predictors on the same predicted clusters.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

METRIC_NAME = "scirex_salient_clusters"
METRIC_PATH: Path = Path(__file__).resolve().parent / "metrics" / METRIC_NAME
_MODULE_NAME = f"_structformer_metric_{METRIC_NAME}"  # a private, top-level module name


def _import_metric_module() -> ModuleType:
    """Import the metric script as a plain module (once per process)."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, METRIC_PATH / f"{METRIC_NAME}.py")
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with the package
        raise ImportError(f"cannot import the SciREX metric from {METRIC_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE_NAME]
        raise
    return module


_metric = _import_metric_module()

USED_ENTITIES: tuple[str, ...] = _metric.USED_ENTITIES
SPAN_MATCH_THRESHOLD: float = _metric.SPAN_MATCH_THRESHOLD
CLUSTER_MATCH_THRESHOLD: float = _metric.CLUSTER_MATCH_THRESHOLD
EPS: float = _metric.EPS
TIE_BREAKS: tuple[str, ...] = _metric.TIE_BREAKS
span_match = _metric.span_match
map_spans_to_gold = _metric.map_spans_to_gold
relation_entities = _metric.relation_entities
gold_salient_clusters = _metric.gold_salient_clusters
predicted_clusters_from_record = _metric.predicted_clusters_from_record
cluster_overlap_scores = _metric.cluster_overlap_scores
match_clusters = _metric.match_clusters
paper_cluster_scores = _metric.paper_cluster_scores
salient_cluster_scores = _metric.salient_cluster_scores
relation_scores = _metric.relation_scores

Clusters = dict[str, list[tuple[int, int]]]

__all__ = [
    "BASELINE_KS",
    "CLUSTER_MATCH_THRESHOLD",
    "CLUSTER_RULE",
    "EPS",
    "METRIC_PATH",
    "PREDICTED_CLUSTER_RULE",
    "SPAN_MATCH_THRESHOLD",
    "TIE_BREAKS",
    "USED_ENTITIES",
    "all_clusters_salient",
    "choose_k_on",
    "cluster_overlap_scores",
    "cluster_predicted_mentions",
    "clusters_file_records",
    "clusters_from_salient_mentions",
    "compact_scores",
    "end_to_end_baselines",
    "gold_mention_clusters",
    "gold_salient_clusters",
    "load_metric",
    "map_spans_to_gold",
    "match_clusters",
    "min_mentions_salient",
    "min_mentions_sweep",
    "normalize_mention",
    "oracle_salient",
    "paper_cluster_scores",
    "predicted_clusters_from_record",
    "read_clusters_file",
    "relation_entities",
    "relation_scores",
    "salient_baselines",
    "salient_cluster_scores",
    "salient_predicted_clusters",
    "span_match",
    "write_clusters_file",
]


def load_metric(**kwargs: Any) -> Any:
    """``evaluate.load`` of the metric folder (offline: a local path needs no network)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), **kwargs)


# --------------------------------------------------------------------------------------------
# Baselines on gold mentions and gold clusters
# --------------------------------------------------------------------------------------------


def gold_mention_clusters(doc: Mapping[str, Any]) -> Clusters:
    """Every non-empty gold coreference cluster of a paper: ``coref`` (salient) and ``coref_non_salient``.

    Names are prefixed ``salient:`` / ``other:`` so that the two key spaces cannot collide. Method
    sub-entities stay separate clusters, as annotated.
    """
    clusters: Clusters = {}
    for prefix, key in (("salient", "coref"), ("other", "coref_non_salient")):
        for name, spans in doc.get(key, {}).items():
            if spans:
                clusters[f"{prefix}:{name}"] = [(int(s[0]), int(s[1])) for s in spans]
    return clusters


def _score(
    docs: Sequence[Mapping[str, Any]], predicted: Mapping[str, Clusters], tie_break: str
) -> dict[str, Any]:
    return salient_cluster_scores(docs, predicted, tie_break=tie_break)


def all_clusters_salient(docs: Iterable[Mapping[str, Any]], tie_break: str = "name") -> dict[str, Any]:
    """Every gold cluster predicted salient (high recall, low precision).

    Like every baseline here, it returns :func:`salient_cluster_scores`'s dict; ``tie_break`` is
    :func:`match_clusters`'s.
    """
    docs = list(docs)
    return _score(docs, {str(d["doc_id"]): gold_mention_clusters(d) for d in docs}, tie_break)


def min_mentions_salient(
    docs: Iterable[Mapping[str, Any]], k: int, tie_break: str = "name"
) -> dict[str, Any]:
    """A gold cluster is predicted salient when it has at least ``k`` mentions (distinct spans)."""
    docs = list(docs)
    predicted = {
        str(d["doc_id"]): {
            name: spans for name, spans in gold_mention_clusters(d).items() if len(set(spans)) >= k
        }
        for d in docs
    }
    return _score(docs, predicted, tie_break)


def min_mentions_sweep(
    docs: Iterable[Mapping[str, Any]], ks: Iterable[int] = range(1, 11), tie_break: str = "name"
) -> dict[int, float]:
    """F1 of :func:`min_mentions_salient` for each ``k``."""
    docs = list(docs)
    return {int(k): min_mentions_salient(docs, int(k), tie_break)["f1"] for k in ks}


def choose_k_on(
    docs: Iterable[Mapping[str, Any]], ks: Iterable[int] = range(1, 11), tie_break: str = "name"
) -> int:
    """The ``k`` with the best :func:`min_mentions_salient` F1 on ``docs`` (the smallest on ties)."""
    sweep = min_mentions_sweep(docs, ks, tie_break)
    if not sweep:
        raise ValueError("choose_k_on needs at least one k")
    return max(sweep, key=lambda k: (sweep[k], -k))


def oracle_salient(docs: Iterable[Mapping[str, Any]], tie_break: str = "name") -> dict[str, Any]:
    """Exactly the gold salient clusters that have a mention (SciREX's own gold-clusters input).

    Recall stays below 1: gold relation entities without mentions cannot be predicted, and a gold
    cluster whose spans are all inside another gold cluster can lose the tie to it (see
    :func:`match_clusters`).
    """
    docs = list(docs)
    predicted = {
        str(d["doc_id"]): {name: spans for name, spans in gold_salient_clusters(d).items() if spans}
        for d in docs
    }
    return _score(docs, predicted, tie_break)


# --------------------------------------------------------------------------------------------
# All baselines on one split
# --------------------------------------------------------------------------------------------

# The k tried by the ">= k mentions" baseline (SciREX's training papers peak at k = 8 or 9).
BASELINE_KS: tuple[int, ...] = tuple(range(1, 21))


def compact_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`salient_cluster_scores`'s dict, with ``per_paper`` reduced to ``{doc_id: f1}``."""
    return {
        "precision": float(scores["precision"]),
        "recall": float(scores["recall"]),
        "f1": float(scores["f1"]),
        "n_papers": int(scores["n_papers"]),
        "per_paper": {str(row["doc_id"]): float(row["f1"]) for row in scores["per_paper"]},
    }


def salient_baselines(
    eval_docs: Iterable[Mapping[str, Any]],
    k_docs: Iterable[Mapping[str, Any]],
    k_split: str,
    ks: Iterable[int] = BASELINE_KS,
    tie_break: str = "name",
) -> dict[str, Any]:
    """The trivial baselines and the oracle on ``eval_docs``, by the same metric (:func:`compact_scores`).

    ``all_salient``: :func:`all_clusters_salient`; ``min_mentions``: :func:`min_mentions_salient` with the
    ``k`` of ``ks`` that scores best on ``k_docs`` (named ``k_split``; the smallest ``k`` on ties, as
    :func:`choose_k_on`), with the sweep on ``k_docs`` kept under ``k_sweep``; ``oracle``:
    :func:`oracle_salient`. ``best_trivial`` names the better of the first two (the oracle uses the gold
    salience, so it is no trivial baseline but a ceiling).
    """
    eval_docs, k_docs = list(eval_docs), list(k_docs)
    if not k_docs:
        raise ValueError("salient_baselines needs documents to choose k on")
    sweep = min_mentions_sweep(k_docs, ks, tie_break)
    if not sweep:
        raise ValueError("salient_baselines needs at least one k")
    k = max(sweep, key=lambda value: (sweep[value], -value))
    baselines: dict[str, Any] = {
        "all_salient": compact_scores(all_clusters_salient(eval_docs, tie_break)),
        "min_mentions": {
            "k": k,
            "k_chosen_on": k_split,
            "k_documents": len(k_docs),
            "k_sweep": {str(value): f1 for value, f1 in sweep.items()},
            **compact_scores(min_mentions_salient(eval_docs, k, tie_break)),
        },
        "oracle": compact_scores(oracle_salient(eval_docs, tie_break)),
        "tie_break": tie_break,
    }
    best = max(("all_salient", "min_mentions"), key=lambda name: baselines[name]["f1"])
    baselines["best_trivial"] = {"name": best, "f1": baselines[best]["f1"]}
    return baselines


# --------------------------------------------------------------------------------------------
# A mention classifier's predictions as salient clusters, and the clusters file
# --------------------------------------------------------------------------------------------

CLUSTER_RULE = (
    "the candidate clusters are the paper's gold clusters (every non-empty cluster of coref and "
    "coref_non_salient, as annotated); a cluster is predicted salient when at least one of its mentions "
    "(gold ner spans) is predicted salient; a mention is predicted salient when any window that scores it "
    "says so (each mention is scored in exactly one window); a mention shared by several clusters makes "
    "each of them salient"
)


def _neutral_names(clusters: Clusters) -> dict[str, str]:
    """``cluster-<i>``, numbered by the clusters' sorted spans: the same name in every run, and no hint
    of which clusters are gold salient (``gold_mention_clusters`` prefixes its names with that)."""
    order = sorted(clusters, key=lambda name: (sorted(clusters[name]), name))
    return {name: f"cluster-{index}" for index, name in enumerate(order)}


def clusters_from_salient_mentions(
    doc: Mapping[str, Any], salient_spans: Iterable[Sequence[int]]
) -> Clusters:
    """The gold clusters of ``doc`` predicted salient from its predicted salient mentions (:data:`CLUSTER_RULE`).

    ``salient_spans`` are the ``[start, end)`` word spans of the mentions predicted salient. Candidates
    are :func:`gold_mention_clusters` (``coref`` and ``coref_non_salient``); the ones holding at least
    one of those spans are returned, named neutrally (``cluster-<i>``, numbered over all candidates of
    the paper by their sorted spans), spans sorted.
    """
    salient = {(int(s[0]), int(s[1])) for s in salient_spans}
    candidates = gold_mention_clusters(doc)
    names = _neutral_names(candidates)
    predicted = {
        names[name]: sorted(set(spans))
        for name, spans in candidates.items()
        if any(s in salient for s in spans)
    }
    return dict(sorted(predicted.items(), key=lambda item: int(item[0].split("-")[1])))


# --------------------------------------------------------------------------------------------
# End to end: predicted mentions, clustered by one fixed rule
# --------------------------------------------------------------------------------------------

PREDICTED_CLUSTER_RULE = (
    "end to end: the candidate clusters are the PREDICTED mentions (the NER model's spans) grouped by entity "
    "type and normalized text (lowercased, every character that is not a letter or a digit removed; a "
    "mention with no letter or digit is a cluster of its own); a cluster is predicted salient when at least "
    "one of its mentions is predicted salient by the salient-mention classifier. SciREX's coreference model "
    "is not available offline, so this fixed string-match rule clusters for every model alike"
)


def normalize_mention(words: Sequence[str]) -> str:
    """The clustering key of a mention's words: lowercased letters and digits only ("BERT-base" == "bert base")."""
    return "".join(ch for ch in " ".join(words).lower() if ch.isalnum())


def cluster_predicted_mentions(
    doc: Mapping[str, Any], mentions: Iterable[Sequence[Any]]
) -> dict[str, list[tuple[int, int]]]:
    """The predicted mentions of ``doc`` (``[start, end, type]`` word spans) clustered by
    :data:`PREDICTED_CLUSTER_RULE`, named neutrally (``cluster-<i>``, numbered by sorted spans), spans sorted."""
    words = doc["words"]
    groups: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for mention in mentions:
        start, end, kind = int(mention[0]), int(mention[1]), str(mention[2])
        key = normalize_mention(words[start:end]) or f"@{start}:{end}"
        groups.setdefault((kind, key), set()).add((start, end))
    clusters = {f"{kind}:{key}": sorted(spans) for (kind, key), spans in groups.items()}
    names = _neutral_names(clusters)
    return {
        names[name]: clusters[name] for name in sorted(clusters, key=lambda n: int(names[n].split("-")[1]))
    }


def salient_predicted_clusters(
    doc: Mapping[str, Any], mentions: Sequence[Sequence[Any]], salient: Sequence[bool]
) -> Clusters:
    """The clusters of :func:`cluster_predicted_mentions` that hold a mention flagged in ``salient`` (one flag
    per entry of ``mentions``)."""
    if len(mentions) != len(salient):
        raise ValueError(f"{len(mentions)} mentions but {len(salient)} salience flags")
    flagged = {(int(m[0]), int(m[1])) for m, flag in zip(mentions, salient) if flag}
    clusters = cluster_predicted_mentions(doc, mentions)
    return {name: spans for name, spans in clusters.items() if any(span in flagged for span in spans)}


def end_to_end_baselines(
    docs: Sequence[Mapping[str, Any]],
    mentions: Mapping[str, Sequence[Sequence[Any]]],
    k: int,
    tie_break: str = "name",
) -> dict[str, Any]:
    """Trivial predictors on the same predicted mentions and clusters (:data:`PREDICTED_CLUSTER_RULE`), by the
    same metric (:func:`compact_scores`): ``all_salient`` (every predicted cluster) and ``min_mentions``
    (predicted clusters with at least ``k`` distinct spans; ``k`` is the gold-cluster baseline's, chosen on
    another split). ``mentions`` maps doc_id to ``[start, end, type]`` spans; a paper without any is empty."""
    clusters = {
        str(d["doc_id"]): cluster_predicted_mentions(d, mentions.get(str(d["doc_id"]), [])) for d in docs
    }
    frequent = {
        doc_id: {name: spans for name, spans in doc_clusters.items() if len(spans) >= k}
        for doc_id, doc_clusters in clusters.items()
    }
    return {
        "all_salient": compact_scores(_score(docs, clusters, tie_break)),
        "min_mentions": {"k": int(k), **compact_scores(_score(docs, frequent, tie_break))},
    }


def clusters_file_records(
    docs: Iterable[Mapping[str, Any]], predicted: Mapping[str, Mapping[str, Sequence[Sequence[int]]]]
) -> list[dict[str, Any]]:
    """One SciREX ``--clusters-file`` record per paper of ``docs`` (in order):
    ``{"doc_id": ..., "clusters": {name: [[start, end], ...]}}``; a paper without prediction gets
    ``"clusters": {}`` (SciREX's script needs a line for every gold paper)."""
    return [
        {
            "doc_id": str(doc["doc_id"]),
            "clusters": {
                str(name): [[int(s[0]), int(s[1])] for s in spans]
                for name, spans in predicted.get(str(doc["doc_id"]), {}).items()
            },
        }
        for doc in docs
    ]


def write_clusters_file(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` as JSON lines (what ``scirex_relation_evaluate.py --clusters-file`` reads)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    partial.replace(path)
    return path


def read_clusters_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a clusters file (blank lines skipped); feed them to :func:`salient_cluster_scores`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
