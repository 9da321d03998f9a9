"""SciREX salient-entity-cluster metric and n-ary relation metric (an offline `evaluate` module).

A fresh, typed port of the scoring in allenai/SciREX (as of master, commit 7daad660):

- ``scirex/evaluation_scripts/scirex_relation_evaluate.py`` (``main``, ``ner_metrics``,
  ``clustering_metrics``, ``has_all_mentions`` and the relation loop of ``main``);
- ``scirex/metrics/clustering_metrics.py`` (``match_predicted_clusters_to_gold``);
- ``scirex/predictors/utils.py`` (``span_match``, ``map_predicted_spans_to_gold``,
  ``intersect_predicted_clusters_to_gold``, ``map_and_intersect_predicted_clusters_to_gold``,
  ``merge_method_subrelations``);
- ``scirex_utilities/entity_utils.py`` (``used_entities``).

The file is self-contained (standard library, ``numpy``, ``evaluate`` and ``datasets`` only), because
``evaluate.load`` copies it into its module cache. The scoring functions live at module level so that
they can be imported directly (e.g. with ``importlib``) without ``evaluate``'s machinery.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

try:  # Only the evaluate module class at the bottom needs these; the scoring functions do not.
    import datasets
    import evaluate
except ImportError:  # pragma: no cover - exercised only where evaluate is not installed
    datasets = None  # type: ignore[assignment]
    evaluate = None  # type: ignore[assignment]

Span = tuple[int, int]
Clusters = dict[str, list[Span]]

# scirex_utilities/entity_utils.py: used_entities = list(map_available_entity_to_true.keys()).
# The order matters: predicted relations are tuples of cluster names in this order.
USED_ENTITIES: tuple[str, ...] = ("Material", "Metric", "Task", "Method")
# scirex/predictors/utils.py, map_predicted_spans_to_gold: `span_match(p, g) > 0.5` (strict).
SPAN_MATCH_THRESHOLD: float = 0.5
# scirex/metrics/clustering_metrics.py, match_predicted_clusters_to_gold: `v > 0.5` (strict).
CLUSTER_MATCH_THRESHOLD: float = 0.5
# The smoothing SciREX adds to every denominator of P, R and F1.
EPS: float = 1e-7
# scirex_relation_evaluate.py, main: `for n in [2, 4]`.
DEFAULT_CARDINALITIES: tuple[int, ...] = (2, 4)
# How a predicted cluster chooses between gold clusters that hold the same (largest) share of its
# spans; see `match_clusters`.
TIE_BREAKS: tuple[str, ...] = ("name", "smallest")


# --------------------------------------------------------------------------------------------
# Gold side
# --------------------------------------------------------------------------------------------


def _as_span(span: Sequence[Any]) -> Span:
    return (int(span[0]), int(span[1]))


def relation_entities(doc: Mapping[str, Any]) -> set[str]:
    """Names of every entity that fills a slot of a gold n-ary relation (SciREX's ``true_entities``)."""
    return {str(rel[kind]) for rel in doc.get("n_ary_relations", []) for kind in USED_ENTITIES}


def gold_salient_clusters(doc: Mapping[str, Any]) -> Clusters:
    """The gold salient clusters of a SciREX document, as SciREX's scorer builds them.

    Port of ``merge_method_subrelations`` (scirex/predictors/utils.py):

    1. for each method in ``method_subrelations`` (file order) and each of its parts
       ``[[char_start, char_end], part_name]`` with ``part_name != method``, the part's mentions are
       appended to the method's cluster. This is sequential: when a part is itself a method whose
       parts were merged earlier, its merged mentions come along;
    2. only the entities that appear in some ``n_ary_relations`` entry are kept, each with its set of
       distinct spans. Relation entities with no mention are kept with an empty list: they still count
       in the recall denominator, so even a perfect system cannot reach recall 1 on such a paper.

    Other ``coref`` keys (sub-method names that are not relation entities) are dropped. SciREX raises
    ``KeyError`` when a name is missing from ``coref``; here a missing name is an empty cluster (it
    never happens in the released data). The input is not modified. Clusters are sorted by name and
    spans by position.
    """
    coref: dict[str, list[Span]] = {
        str(name): [_as_span(s) for s in spans] for name, spans in doc.get("coref", {}).items()
    }
    for method, parts in doc.get("method_subrelations", {}).items():
        for part in parts:
            part_name = str(part[1])
            if part_name != method:
                coref[method] = coref.get(method, []) + coref.get(part_name, [])
    return {name: sorted(set(coref.get(name, []))) for name in sorted(relation_entities(doc))}


def predicted_clusters_from_record(record: Mapping[str, Any]) -> Clusters:
    """The predicted clusters of one line of a SciREX ``--clusters-file``.

    SciREX (``scirex_relation_evaluate.py``, ``main``) reads ``record["clusters"]`` when present
    (``{"doc_id": ..., "clusters": {name: [[start, end], ...]}}``, as written by
    ``scirex/predictors/predict_salient_clusters.py``). Otherwise the record is a gold-format document
    and its clusters are :func:`gold_salient_clusters` without the empty ones (that is how SciREX scores
    relations on gold clusters). ``clusters`` may also be a list of span lists (named ``"0"``, ``"1"``...).
    """
    if "clusters" in record:
        clusters = record["clusters"]
        if isinstance(clusters, Mapping):
            return {str(name): [_as_span(s) for s in spans] for name, spans in clusters.items()}
        return {str(i): [_as_span(s) for s in spans] for i, spans in enumerate(clusters)}
    return {name: spans for name, spans in gold_salient_clusters(record).items() if spans}


# --------------------------------------------------------------------------------------------
# Span and cluster matching
# --------------------------------------------------------------------------------------------


def span_match(span_a: Sequence[int], span_b: Sequence[int]) -> float:
    """SciREX's ``span_match``: (overlap length) / (length of the hull of both spans).

    For overlapping spans the hull is the union, so this is the intersection-over-union of the two
    word ranges; for disjoint spans it is negative. Spans are ``[start, end)``.
    """
    (sa, ea), (sb, eb) = span_a, span_b
    hull = max(ea, eb) - min(sa, sb)
    if hull <= 0:  # two empty spans at the same position (SciREX divides by zero)
        return 0.0
    return (min(ea, eb) - max(sa, sb)) / hull


def map_spans_to_gold(
    predicted_spans: Iterable[Sequence[int]], gold_ner: Sequence[Sequence[Any]]
) -> dict[Span, Span]:
    """Port of ``map_predicted_spans_to_gold``: each predicted span -> a gold mention span, or itself.

    A predicted span maps to the FIRST gold mention (in the order of the gold ``ner`` list, which
    is not sorted in the released files) whose :func:`span_match` is strictly greater than 0.5;
    when there is none, it maps to itself. Entity types play no role (SciREX's type check is commented
    out). The test is ``overlap > 0.5 * hull``: ``span_match > 0.5`` without a division.
    """
    spans = sorted({_as_span(s) for s in predicted_spans})
    mapping = {span: span for span in spans}
    if not spans or not gold_ner:
        return mapping
    gold = np.asarray([[int(g[0]), int(g[1])] for g in gold_ner], dtype=np.int64)
    pred = np.asarray(spans, dtype=np.int64)
    ps, pe = pred[:, :1], pred[:, 1:]
    gs, ge = gold[None, :, 0], gold[None, :, 1]
    overlap = np.minimum(pe, ge) - np.maximum(ps, gs)
    hull = np.maximum(pe, ge) - np.minimum(ps, gs)
    matches = (hull > 0) & (overlap > SPAN_MATCH_THRESHOLD * hull)
    has_match = matches.any(axis=1)
    first = matches.argmax(axis=1)
    for i, span in enumerate(spans):
        if has_match[i]:
            g = gold[first[i]]
            mapping[span] = (int(g[0]), int(g[1]))
    return mapping


def cluster_overlap_scores(
    predicted_clusters: Mapping[str, Sequence[Sequence[int]]],
    gold_clusters: Mapping[str, Sequence[Sequence[int]]],
    gold_ner: Sequence[Sequence[Any]],
) -> dict[str, dict[str, float]]:
    """Port of ``map_and_intersect_predicted_clusters_to_gold`` + ``intersect_predicted_clusters_to_gold``.

    Each predicted span is first mapped to a gold mention (:func:`map_spans_to_gold`); a predicted
    cluster is then the SET of its mapped spans P, and its score against gold cluster G is
    ``|P & G| / |P|``. Only positive scores are kept. Empty predicted clusters are skipped (SciREX
    would divide by zero).
    """
    span_map = map_spans_to_gold((s for spans in predicted_clusters.values() for s in spans), gold_ner)
    gold_sets = {name: {_as_span(s) for s in spans} for name, spans in gold_clusters.items()}
    scores: dict[str, dict[str, float]] = {}
    for name, spans in predicted_clusters.items():
        mapped = {span_map[_as_span(s)] for s in spans}
        if not mapped:
            continue
        scores[name] = {
            g_name: len(mapped & g_set) / len(mapped) for g_name, g_set in gold_sets.items() if mapped & g_set
        }
    return scores


def match_clusters(
    predicted_clusters: Mapping[str, Sequence[Sequence[int]]],
    gold_clusters: Mapping[str, Sequence[Sequence[int]]],
    gold_ner: Sequence[Sequence[Any]],
    tie_break: str = "name",
) -> dict[str, str]:
    """Port of ``match_predicted_clusters_to_gold``: predicted cluster name -> gold cluster name.

    A predicted cluster maps to the gold cluster holding the largest share of its (mapped, distinct)
    spans, when that share is strictly more than 0.5. Several predicted clusters may map to the same
    gold cluster.

    Ties happen when gold clusters share spans (common in SciREX: e.g. the mentions of ``KITTI`` sit
    in several ``KITTI_Cars_*`` entities). SciREX takes the first maximum in its gold-cluster order,
    which is the iteration order of a Python ``set`` of names and so changes with ``PYTHONHASHSEED``:
    its recall moves by about +-0.001 from run to run. ``tie_break="name"`` (default) takes the
    alphabetically first name, a fixed stand-in for that arbitrary order; ``"smallest"`` prefers the
    gold cluster with the fewest spans (then the name), i.e. the most specific entity, which scores a
    little higher than SciREX's script does.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, not {tie_break!r}")
    sizes = {name: len({_as_span(s) for s in spans}) for name, spans in gold_clusters.items()}

    def order(item: tuple[str, float]) -> tuple[float, int, str]:
        return (-item[1], sizes[item[0]] if tie_break == "smallest" else 0, item[0])

    mapping: dict[str, str] = {}
    for p_name, scores in cluster_overlap_scores(predicted_clusters, gold_clusters, gold_ner).items():
        if not scores:
            continue
        g_name, best = min(scores.items(), key=order)
        if best > CLUSTER_MATCH_THRESHOLD:
            mapping[p_name] = g_name
    return mapping


def _prf(n_correct_p: int, n_pred: int, n_correct_r: int, n_gold: int, eps: float) -> dict[str, float]:
    precision = n_correct_p / (n_pred + eps)
    recall = n_correct_r / (n_gold + eps)
    f1 = 2 * precision * recall / (precision + recall + eps)
    return {"precision": precision, "recall": recall, "f1": f1}


def paper_cluster_scores(
    predicted_clusters: Mapping[str, Sequence[Sequence[int]]],
    gold_doc: Mapping[str, Any],
    eps: float = EPS,
    tie_break: str = "name",
) -> dict[str, Any]:
    """Salient-cluster P/R/F1 of one paper (``match_predicted_clusters_to_gold``'s ``metrics``).

    ``precision = #matched predicted clusters / (#predicted clusters + eps)``,
    ``recall = #distinct gold clusters matched / (#gold salient clusters + eps)`` and
    ``f1 = 2PR / (P + R + eps)``, with ``eps = 1e-7`` as in SciREX. The gold clusters are
    :func:`gold_salient_clusters` (mention-less relation entities included). Empty predicted clusters
    are ignored (they neither match nor count). ``tie_break``: see :func:`match_clusters`.
    """
    predicted = {str(k): [_as_span(s) for s in v] for k, v in predicted_clusters.items() if len(v) > 0}
    gold = gold_salient_clusters(gold_doc)
    mapping = match_clusters(predicted, gold, gold_doc.get("ner", []), tie_break)
    n_matched_gold = len(set(mapping.values()))
    return {
        "doc_id": gold_doc.get("doc_id"),
        **_prf(len(mapping), len(predicted), n_matched_gold, len(gold), eps),
        "n_predicted": len(predicted),
        "n_gold": len(gold),
        "n_gold_without_mentions": sum(1 for spans in gold.values() if not spans),
        "n_matched_predicted": len(mapping),
        "n_matched_gold": n_matched_gold,
        "mapping": mapping,
    }


# --------------------------------------------------------------------------------------------
# Corpus level
# --------------------------------------------------------------------------------------------


def _index_predictions(
    predicted: Mapping[str, Any] | Iterable[Mapping[str, Any]],
) -> dict[str, Clusters]:
    """Predictions keyed by doc_id: a mapping doc_id -> clusters, or SciREX clusters-file records."""
    out: dict[str, Clusters] = {}
    if isinstance(predicted, Mapping):
        for doc_id, value in predicted.items():
            # A value with a doc_id is a whole record; anything else is the clusters themselves.
            is_record = isinstance(value, Mapping) and "doc_id" in value
            out[str(doc_id)] = predicted_clusters_from_record(value if is_record else {"clusters": value})
        return out
    for record in predicted:
        doc_id = str(record["doc_id"])
        if doc_id in out:
            raise ValueError(f"doc_id {doc_id} appears twice in the predictions")
        out[doc_id] = predicted_clusters_from_record(record)
    return out


def _missing(gold_docs: Sequence[Mapping[str, Any]], keys: Iterable[str], what: str) -> None:
    known = set(keys)
    missing = [str(d["doc_id"]) for d in gold_docs if str(d["doc_id"]) not in known]
    if missing:
        raise ValueError(
            f"{len(missing)} gold paper(s) have no {what} (SciREX's script fails with KeyError; "
            f"pass missing_as_empty=True to score them as empty): {missing[:5]}"
        )


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(np.mean([row[key] for row in rows])) if rows else 0.0


def salient_cluster_scores(
    gold_docs: Iterable[Mapping[str, Any]],
    predicted: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    eps: float = EPS,
    missing_as_empty: bool = False,
    tie_break: str = "name",
) -> dict[str, Any]:
    """SciREX's "Salient Clustering Metrics": per-paper P/R/F1 (:func:`paper_cluster_scores`), averaged.

    ``predicted`` is either a mapping ``doc_id -> clusters`` (``{name: [[start, end], ...]}`` or a list
    of span lists) or an iterable of SciREX clusters-file records (see
    :func:`predicted_clusters_from_record`). Every gold paper counts once in each mean (SciREX:
    ``pd.DataFrame(all_metrics).describe().loc['mean']``), so ``f1`` is the mean of per-paper F1s, not
    the harmonic mean of the averaged P and R. A paper with no predicted cluster scores P = R = F1 = 0;
    a paper with no gold salient cluster (no relation) scores R = F1 = 0; both stay in the mean. A gold
    paper absent from ``predicted`` raises ``ValueError`` (SciREX: ``KeyError``) unless
    ``missing_as_empty``. Predictions for papers not in ``gold_docs`` are ignored.
    """
    gold_docs = list(gold_docs)
    index = _index_predictions(predicted)
    if not missing_as_empty:
        _missing(gold_docs, index, "predicted clusters")
    per_paper = [paper_cluster_scores(index.get(str(d["doc_id"]), {}), d, eps, tie_break) for d in gold_docs]
    return {
        "precision": _mean(per_paper, "precision"),
        "recall": _mean(per_paper, "recall"),
        "f1": _mean(per_paper, "f1"),
        "n_papers": len(per_paper),
        "per_paper": per_paper,
    }


def _relation_tuples(record: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, ...]]:
    """The positive predicted relations of one relations-file record, as name tuples.

    SciREX's ``--relations-file`` line (``scirex/predictors/predict_n_ary_relations.py``) is
    ``{"doc_id": ..., "predicted_relations": [[[material, metric, task, method], score, label], ...]}``;
    only entries with ``label == 1`` count. Entries may also be dicts ``{"Material": ..., ...}``
    (taken as positive).
    """
    items = record.get("predicted_relations", []) if isinstance(record, Mapping) else record
    tuples = []
    for item in items:
        if isinstance(item, Mapping):
            tuples.append(tuple(str(item[kind]) for kind in USED_ENTITIES))
        elif item[2] == 1:
            names = tuple(None if n is None else str(n) for n in item[0])
            if len(names) != len(USED_ENTITIES):
                raise ValueError(f"a predicted relation needs {len(USED_ENTITIES)} names: {item!r}")
            tuples.append(names)
    return tuples


def relation_scores(
    gold_docs: Iterable[Mapping[str, Any]],
    predicted_clusters: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    predicted_relations: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    cardinalities: Sequence[int] = DEFAULT_CARDINALITIES,
    eps: float = EPS,
    missing_as_empty: bool = False,
    tie_break: str = "name",
) -> dict[str, Any]:
    """SciREX's "Relation Metrics n=2 / n=4" (the relation loop of ``scirex_relation_evaluate.main``).

    For each paper, predicted cluster names are mapped to gold names with :func:`match_clusters`
    (an unmatched name is kept as is: ``mapping.get(v, v)``). For each cardinality n and each n-subset
    ``types`` of (Material, Metric, Task, Method), the positive predicted 4-ary relations and the gold
    ``n_ary_relations`` are projected onto ``types`` and deduplicated (sets); gold projections with
    an entity without mentions are dropped (``has_all_mentions``). P = |pred & gold| / (|pred| + eps),
    R = |pred & gold| / (|gold| + eps), F1 = 2PR / (P + R + eps). Only (types, paper) pairs with a
    non-empty gold set count, and the mean runs over all those pairs of the same n together.

    ``predicted_relations`` is a mapping doc_id -> record (or list of relations), or an iterable of
    relations-file records with ``doc_id``. Returns ``{n: {"precision", "recall", "f1", "count"}}``.
    """
    gold_docs = list(gold_docs)
    clusters_index = _index_predictions(predicted_clusters)
    if isinstance(predicted_relations, Mapping):
        relations_index = {str(k): _relation_tuples(v) for k, v in predicted_relations.items()}
    else:
        relations_index = {str(r["doc_id"]): _relation_tuples(r) for r in predicted_relations}
    if not missing_as_empty:
        _missing(gold_docs, clusters_index, "predicted clusters")
        _missing(gold_docs, relations_index, "predicted relations")

    rows: dict[int, list[dict[str, float]]] = {int(n): [] for n in cardinalities}
    for doc in gold_docs:
        doc_id = str(doc["doc_id"])
        gold_clusters = gold_salient_clusters(doc)
        predicted = {k: v for k, v in clusters_index.get(doc_id, {}).items() if v}
        mapping = match_clusters(predicted, gold_clusters, doc.get("ner", []), tie_break)
        mapped = {tuple(mapping.get(v, v) for v in rel) for rel in relations_index.get(doc_id, [])}
        mapped_dicts = [dict(zip(USED_ENTITIES, rel)) for rel in mapped]
        for n in rows:
            for types in combinations(USED_ENTITIES, n):
                pred = {tuple((t, rel[t]) for t in types) for rel in mapped_dicts}
                gold = {tuple((t, str(rel[t])) for t in types) for rel in doc.get("n_ary_relations", [])}
                gold = {g for g in gold if all(gold_clusters.get(name) for _, name in g)}
                if gold:
                    matched = len(pred & gold)
                    rows[n].append(_prf(matched, len(pred), matched, len(gold), eps))
    return {
        n: {
            "precision": _mean(r, "precision"),
            "recall": _mean(r, "recall"),
            "f1": _mean(r, "f1"),
            "count": len(r),
        }
        for n, r in rows.items()
    }


# --------------------------------------------------------------------------------------------
# The evaluate module
# --------------------------------------------------------------------------------------------

_CITATION = """\
@inproceedings{jain-etal-2020-scirex,
    title = "{S}ci{REX}: A Challenge Dataset for Document-Level Information Extraction",
    author = "Jain, Sarthak  and  van Zuylen, Madeleine  and  Hajishirzi, Hannaneh  and  Beltagy, Iz",
    booktitle = "Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics",
    year = "2020",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2020.acl-main.670",
    doi = "10.18653/v1/2020.acl-main.670",
    pages = "7506--7516",
}
"""

_DESCRIPTION = """\
SciREX salient-entity-cluster precision, recall and F1, ported from allenai/SciREX
(scirex/evaluation_scripts/scirex_relation_evaluate.py and scirex/metrics/clustering_metrics.py).
Gold salient clusters are the entities of the paper's n-ary relations (method sub-entities merged
into their method; entities without mentions kept, which caps recall). A predicted span stands for the
first gold mention it overlaps with IoU > 0.5; a predicted cluster matches the gold cluster that holds
more than half of its spans. P, R and F1 are computed per paper and averaged over papers. Optionally
also SciREX's binary (n=2) and 4-ary (n=4) relation metrics.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one JSON object per paper, a line of a SciREX clusters file:
        `{"doc_id": ..., "clusters": {cluster_name: [[start, end], ...], ...}}` (word spans, end
        exclusive; `clusters` may also be a list of span lists). A record without `clusters` is read
        as a gold-format document (its gold salient clusters, empty ones dropped).
    references (`list` of `str`): one gold SciREX document per paper, as JSON (a line of
        `train.jsonl`); needs `doc_id`, `ner`, `coref`, `n_ary_relations` and `method_subrelations`
        (`words` and the rest may be left out). Pairs are matched by `doc_id`, not by position; both
        lists must have one entry per paper.
    relations (`list` of `str`, optional): lines of a SciREX relations file,
        `{"doc_id": ..., "predicted_relations": [[[material, metric, task, method], score, label], ...]}`
        (cluster names of `predictions`; only `label == 1` counts). When given, relation metrics are
        added.
    cardinalities (`list` of `int`, optional, default `[2, 4]`): relation sizes to score.
    missing_as_empty (`bool`, default `False`): score a paper without predictions as empty instead of
        raising.
    include_per_paper (`bool`, default `True`): also return the per-paper rows.
    tie_break (`str`, default `"name"`): which gold cluster a predicted cluster maps to when several
        hold the same largest share of its spans: `"name"` (alphabetically first) or `"smallest"`
        (fewest spans). SciREX's own choice depends on `PYTHONHASHSEED`.
Returns:
    precision (`float`), recall (`float`), f1 (`float`): means over papers of the per-paper values.
    n_papers (`int`).
    per_paper (`list` of `dict`): doc_id, precision, recall, f1, n_predicted, n_gold,
        n_gold_without_mentions, n_matched_predicted, n_matched_gold, mapping.
    relations (`dict`, only with `relations`): `{"2": {"precision", "recall", "f1", "count"}, "4": ...}`.
Examples:
    >>> import json, evaluate
    >>> metric = evaluate.load("path/to/scirex_salient_clusters")
    >>> gold = {"doc_id": "d", "ner": [[0, 2, "Method"], [5, 6, "Method"], [8, 9, "Task"]],
    ...         "coref": {"M": [[0, 2], [5, 6]], "T": [[8, 9]], "D": [], "Acc": []},
    ...         "method_subrelations": {},
    ...         "n_ary_relations": [{"Material": "D", "Metric": "Acc", "Task": "T", "Method": "M"}]}
    >>> pred = {"doc_id": "d", "clusters": {"a": [[0, 2], [5, 6]]}}
    >>> out = metric.compute(predictions=[json.dumps(pred)], references=[json.dumps(gold)])
    >>> round(out["precision"], 4), round(out["recall"], 4), round(out["f1"], 4)
    (1.0, 0.25, 0.4)
"""


def _load(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


if evaluate is not None:

    @evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
    class ScirexSalientClusters(evaluate.Metric):
        """SciREX salient-cluster P/R/F1 (and, optionally, relation P/R/F1), averaged over papers."""

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                module_type="metric",
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
                homepage="https://github.com/allenai/SciREX",
                codebase_urls=["https://github.com/allenai/SciREX"],
                reference_urls=["https://aclanthology.org/2020.acl-main.670"],
            )

        def _compute(
            self,
            predictions: Sequence[str],
            references: Sequence[str],
            relations: Sequence[str] | None = None,
            cardinalities: Sequence[int] = DEFAULT_CARDINALITIES,
            missing_as_empty: bool = False,
            include_per_paper: bool = True,
            tie_break: str = "name",
        ) -> dict[str, Any]:
            gold_docs = [_load(r) for r in references]
            predicted = [_load(p) for p in predictions]
            out = salient_cluster_scores(
                gold_docs, predicted, missing_as_empty=missing_as_empty, tie_break=tie_break
            )
            if not include_per_paper:
                out.pop("per_paper")
            if relations is not None:
                scores = relation_scores(
                    gold_docs,
                    predicted,
                    [_load(r) for r in relations],
                    cardinalities=cardinalities,
                    missing_as_empty=missing_as_empty,
                    tie_break=tie_break,
                )
                out["relations"] = {str(n): v for n, v in scores.items()}
            return out
