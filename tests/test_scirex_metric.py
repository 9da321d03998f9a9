"""SciREX salient-cluster and relation metric: tiny hand-computed papers, the evaluate route, baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Nothing may download: evaluate and the Hub clients read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from structformer.trainers import scirex_metric as sm

REAL_SCIREX = Path(__file__).resolve().parents[2] / "shared" / "data" / "scirex" / "train.jsonl"
EPS = 1e-7


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-6)


def rel(material: str, metric: str, task: str, method: str) -> dict[str, str]:
    return {"Material": material, "Metric": metric, "Task": task, "Method": method, "score": "1.0"}


def make_doc(
    doc_id: str,
    ner: list[list[Any]],
    coref: dict[str, list[list[int]]],
    relations: list[dict[str, str]],
    method_subrelations: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "ner": ner,
        "coref": coref,
        "n_ary_relations": relations,
        "method_subrelations": method_subrelations or {},
    }


def basic_doc(doc_id: str = "p1") -> dict[str, Any]:
    """Four relation entities, all with mentions: M = {[0,2), [5,6)}, T, D, A one mention each."""
    return make_doc(
        doc_id,
        ner=[[0, 2, "Method"], [3, 4, "Task"], [5, 6, "Method"], [7, 8, "Material"], [9, 10, "Metric"]],
        coref={"M": [[0, 2], [5, 6]], "T": [[3, 4]], "D": [[7, 8]], "A": [[9, 10]]},
        relations=[rel("D", "A", "T", "M")],
    )


def score_one(doc: dict[str, Any], clusters: Any) -> dict[str, Any]:
    return sm.salient_cluster_scores([doc], {doc["doc_id"]: clusters})


def assert_prf(result: dict[str, Any], p: float, r: float, f1: float) -> None:
    assert (result["precision"], result["recall"], result["f1"]) == (approx(p), approx(r), approx(f1))


# --------------------------------------------------------------------------------------------
# Per-paper cluster scores
# --------------------------------------------------------------------------------------------


def test_perfect_prediction_and_the_epsilon():
    pred = {"a": [[0, 2], [5, 6]], "b": [[3, 4]], "c": [[7, 8]], "d": [[9, 10]]}
    out = score_one(basic_doc(), pred)
    assert_prf(out, 1.0, 1.0, 1.0)
    # SciREX's smoothing, replicated exactly: P = 4 / (4 + 1e-7), F1 = 2PR / (P + R + 1e-7).
    p = 4 / (4 + EPS)
    assert out["precision"] == p and out["recall"] == p
    assert out["f1"] == 2 * p * p / (p + p + EPS)
    row = out["per_paper"][0]
    assert row["mapping"] == {"a": "M", "b": "T", "c": "D", "d": "A"}
    counts = ("n_predicted", "n_gold", "n_matched_predicted", "n_matched_gold")
    assert [row[key] for key in counts] == [4, 4, 4, 4]


def test_empty_predictions_score_zero():
    assert_prf(score_one(basic_doc(), {}), 0.0, 0.0, 0.0)
    # Empty predicted clusters are ignored (SciREX would divide by zero on them).
    out = score_one(basic_doc(), {"a": [], "b": [[0, 2]]})
    assert_prf(out, 1.0, 0.25, 0.4)
    assert out["per_paper"][0]["n_predicted"] == 1


def test_cluster_split_across_two_gold_clusters_matches_nothing():
    # "x": half in M, half in T (0.5 is not > 0.5); "y": a quarter in each; "z": all in M.
    pred = {"x": [[0, 2], [3, 4]], "y": [[0, 2], [3, 4], [7, 8], [9, 10]], "z": [[5, 6]]}
    out = score_one(basic_doc(), pred)
    assert out["per_paper"][0]["mapping"] == {"z": "M"}
    assert_prf(out, 1 / 3, 1 / 4, 2 / 7)  # 2 * (1/3) * (1/4) / (1/3 + 1/4) = 2/7


def test_cluster_mostly_in_one_gold_cluster_matches_it():
    out = score_one(basic_doc(), {"a": [[0, 2], [5, 6], [3, 4]]})  # 2 of 3 spans in M
    assert out["per_paper"][0]["mapping"] == {"a": "M"}
    assert_prf(out, 1.0, 0.25, 0.4)
    # Two predicted clusters on the same gold cluster: both are correct, but M is recalled once.
    out = score_one(basic_doc(), {"a": [[0, 2]], "b": [[5, 6]]})
    assert out["per_paper"][0]["mapping"] == {"a": "M", "b": "M"}
    assert_prf(out, 1.0, 0.25, 0.4)


def test_shares_are_over_distinct_mapped_spans():
    # A repeated span counts once: {[0,2), [3,4)} is half M, half T.
    assert_prf(score_one(basic_doc(), {"a": [[0, 2], [0, 2], [3, 4]]}), 0.0, 0.0, 0.0)
    # [0,3) maps onto the gold mention [0,2) (IoU 2/3), so the cluster is again {[0,2), [3,4)}.
    assert_prf(score_one(basic_doc(), {"a": [[0, 2], [0, 3], [3, 4]]}), 0.0, 0.0, 0.0)


def threshold_doc() -> dict[str, Any]:
    return make_doc(
        "thr",
        ner=[[10, 14, "Method"]],
        coref={"M": [[10, 14]], "T": [], "D": [], "A": []},
        relations=[rel("D", "A", "T", "M")],
    )


@pytest.mark.parametrize(
    ("span", "iou", "matches"),
    [
        ((10, 17), 4 / 7, True),  # just above 0.5
        ((10, 18), 4 / 8, False),  # exactly 0.5: the threshold is strict
        ((11, 14), 3 / 4, True),
        ((12, 14), 2 / 4, False),
        ((9, 14), 4 / 5, True),
        ((14, 16), 0 / 6, False),  # touching, no overlap
        ((20, 22), -6 / 12, False),  # disjoint spans give a negative score
    ],
)
def test_span_overlap_threshold(span, iou, matches):
    assert sm.span_match(span, (10, 14)) == pytest.approx(iou)
    doc = threshold_doc()
    assert sm.map_spans_to_gold([span], doc["ner"]) == {span: (10, 14) if matches else span}
    out = score_one(doc, {"a": [list(span)]})
    if matches:
        assert_prf(out, 1.0, 0.25, 0.4)  # three relation entities without mentions cap R at 1/4
    else:
        assert_prf(out, 0.0, 0.0, 0.0)


def test_first_gold_mention_in_ner_order_wins():
    # [0,2) overlaps the earlier gold mention [0,3) with IoU 2/3 > 0.5, so it stands for [0,3)
    # (SciREX takes the first match in `ner` order, not the exact one) and lands in T, not in M.
    doc = make_doc(
        "order",
        ner=[[0, 3, "Task"], [0, 2, "Method"]],
        coref={"T": [[0, 3]], "M": [[0, 2]], "D": [], "A": []},
        relations=[rel("D", "A", "T", "M")],
    )
    assert sm.map_spans_to_gold([(0, 2)], doc["ner"]) == {(0, 2): (0, 3)}
    out = score_one(doc, {"a": [[0, 2]]})
    assert out["per_paper"][0]["mapping"] == {"a": "T"}
    assert_prf(out, 1.0, 0.25, 0.4)


def test_gold_relation_entities_without_mentions_cap_recall():
    doc = make_doc(
        "cap",
        ner=[[0, 2, "Method"], [3, 4, "Task"]],
        coref={"M": [[0, 2]], "T": [[3, 4]], "D": [], "A": [], "unused": [[0, 2]]},
        relations=[rel("D", "A", "T", "M")],
    )
    # "unused" is in coref but in no relation: not a gold salient cluster.
    assert sm.gold_salient_clusters(doc) == {"A": [], "D": [], "M": [(0, 2)], "T": [(3, 4)]}
    oracle = {"a": [[0, 2]], "b": [[3, 4]]}
    out = score_one(doc, oracle)
    assert_prf(out, 1.0, 0.5, 2 / 3)
    assert out["per_paper"][0]["n_gold_without_mentions"] == 2


def test_method_sub_entities_are_merged_into_their_method():
    doc = make_doc(
        "sub",
        ner=[[0, 3, "Method"], [5, 6, "Method"], [8, 9, "Method"], [11, 12, "Method"], [14, 15, "Task"]],
        coref={"X_+_Y": [[0, 3]], "X": [[5, 6], [8, 9]], "Y": [[11, 12]], "T": [[14, 15]], "D": [], "A": []},
        relations=[rel("D", "A", "T", "X_+_Y")],
        # [char_start, char_end] into the method name, then the part's name; a part equal to the
        # method itself is skipped.
        method_subrelations={"X_+_Y": [[[0, 1], "X"], [[4, 5], "Y"], [[0, 5], "X_+_Y"]]},
    )
    gold = sm.gold_salient_clusters(doc)
    assert gold == {"A": [], "D": [], "T": [(14, 15)], "X_+_Y": [(0, 3), (5, 6), (8, 9), (11, 12)]}
    assert doc["coref"]["X_+_Y"] == [[0, 3]]  # the input is not modified
    # A cluster of X's mentions alone is wholly inside the merged method.
    assert_prf(score_one(doc, {"a": [[5, 6], [8, 9]]}), 1.0, 0.25, 0.4)
    # The annotated clusters kept apart: all three land on the merged method (precision 1, one recall).
    out = score_one(doc, {"a": [[0, 3]], "b": [[5, 6], [8, 9]], "c": [[11, 12]], "t": [[14, 15]]})
    assert out["per_paper"][0]["mapping"] == {"a": "X_+_Y", "b": "X_+_Y", "c": "X_+_Y", "t": "T"}
    assert_prf(out, 1.0, 0.5, 2 / 3)


def test_method_merging_is_sequential_in_file_order():
    coref = {"P": [[0, 1]], "Q": [[2, 3]], "R": [[4, 5]], "T": [], "D": [], "A": []}
    relations = [rel("D", "A", "T", "P")]
    p_first = make_doc("s1", [], coref, relations, {"P": [[[0, 1], "Q"]], "Q": [[[0, 1], "R"]]})
    q_first = make_doc("s2", [], coref, relations, {"Q": [[[0, 1], "R"]], "P": [[[0, 1], "Q"]]})
    assert sm.gold_salient_clusters(p_first)["P"] == [(0, 1), (2, 3)]
    assert sm.gold_salient_clusters(q_first)["P"] == [(0, 1), (2, 3), (4, 5)]


def test_ties_between_overlapping_gold_clusters():
    # Y is a part of X_+_Y and a relation entity itself: its mentions are in both gold clusters, so
    # the cluster "y" has all of its spans in X_+_Y and all of them in Y.
    doc = make_doc(
        "tie",
        ner=[[0, 3, "Method"], [5, 6, "Method"], [8, 9, "Task"]],
        coref={"X_+_Y": [[0, 3]], "Y": [[5, 6]], "T": [[8, 9]], "D": [], "A": []},
        relations=[rel("D", "A", "T", "X_+_Y"), rel("D", "A", "T", "Y")],
        method_subrelations={"X_+_Y": [[[4, 5], "Y"]]},
    )
    pred = {"xy": [[0, 3], [5, 6]], "y": [[5, 6]], "t": [[8, 9]]}
    # Default: the alphabetically first gold name ("X_+_Y" < "Y"); Y is then never recalled.
    out = score_one(doc, pred)
    assert out["per_paper"][0]["mapping"] == {"xy": "X_+_Y", "y": "X_+_Y", "t": "T"}
    assert_prf(out, 1.0, 2 / 5, 4 / 7)
    # "smallest": the gold cluster with the fewest spans (the most specific entity).
    out = sm.salient_cluster_scores([doc], {"tie": pred}, tie_break="smallest")
    assert out["per_paper"][0]["mapping"] == {"xy": "X_+_Y", "y": "Y", "t": "T"}
    assert_prf(out, 1.0, 3 / 5, 0.75)
    with pytest.raises(ValueError, match="tie_break"):
        sm.salient_cluster_scores([doc], {"tie": pred}, tie_break="random")


# --------------------------------------------------------------------------------------------
# Averaging over papers, inputs, missing papers
# --------------------------------------------------------------------------------------------


def test_scores_are_averaged_over_papers():
    perfect = basic_doc("p1")
    partial = basic_doc("p2")
    no_relations = make_doc("p3", [[0, 1, "Task"]], {}, [])
    predicted = {
        "p1": {"a": [[0, 2], [5, 6]], "b": [[3, 4]], "c": [[7, 8]], "d": [[9, 10]]},
        "p2": {"a": [[0, 2]]},  # P 1, R 1/4, F1 0.4
        "p3": {"a": [[0, 1]]},  # no gold salient cluster: P = R = F1 = 0, and it stays in the mean
    }
    two = sm.salient_cluster_scores([perfect, partial], predicted)
    # The mean of per-paper F1s (0.7), not the F1 of the mean P and R (2 * 1 * 0.625 / 1.625).
    assert_prf(two, 1.0, 0.625, 0.7)
    three = sm.salient_cluster_scores([perfect, partial, no_relations], predicted)
    assert_prf(three, 2 / 3, 1.25 / 3, 1.4 / 3)
    assert [row["doc_id"] for row in three["per_paper"]] == ["p1", "p2", "p3"]


def test_prediction_records_and_missing_papers():
    doc = basic_doc("p1")
    records = [{"doc_id": "p1", "clusters": {"a": [[0, 2]]}}, {"doc_id": "extra", "clusters": {}}]
    assert_prf(sm.salient_cluster_scores([doc], records), 1.0, 0.25, 0.4)
    # A list of span lists instead of named clusters.
    assert_prf(sm.salient_cluster_scores([doc], {"p1": [[[0, 2]], [[3, 4]]]}), 1.0, 0.5, 2 / 3)
    # A gold-format record (no "clusters"): its gold salient clusters, as in SciREX's gold-cluster runs.
    assert_prf(sm.salient_cluster_scores([doc], [doc]), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="p1"):
        sm.salient_cluster_scores([doc], {})
    assert_prf(sm.salient_cluster_scores([doc], {}, missing_as_empty=True), 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------


def relation_doc() -> dict[str, Any]:
    doc = basic_doc("r1")
    doc["coref"]["N"] = []  # a method without mentions
    doc["n_ary_relations"] = [rel("D", "A", "T", "M"), rel("D", "A", "T", "N")]
    return doc


RELATION_CLUSTERS = {"0": [[0, 2], [5, 6]], "1": [[3, 4]], "2": [[7, 8]], "3": [[9, 10]]}
RELATION_RECORD = {
    "doc_id": "r1",
    # [[Material, Metric, Task, Method], score, label]; label 0 is ignored; "9" matches no gold cluster.
    "predicted_relations": [
        [["2", "3", "1", "0"], 0.9, 1],
        [["2", "3", "1", "9"], 0.8, 1],
        [["2", "3", "1", "1"], 0.1, 0],
    ],
}


def test_relation_scores_hand_computed():
    out = sm.relation_scores([relation_doc()], {"r1": RELATION_CLUSTERS}, [RELATION_RECORD])
    # n=4: gold {(D,A,T,M)} (the N relation has a mention-less entity); predicted (D,A,T,M), (D,A,T,9).
    assert out[4]["count"] == 1
    assert (out[4]["precision"], out[4]["recall"], out[4]["f1"]) == (approx(0.5), approx(1.0), approx(2 / 3))
    # n=2: the 3 pairs without Method are exact (1, 1, 1); the 3 with Method score P 1/2, R 1, F1 2/3.
    assert out[2]["count"] == 6
    assert (out[2]["precision"], out[2]["recall"], out[2]["f1"]) == (approx(0.75), approx(1.0), approx(5 / 6))
    # Other cardinalities on request; n=1: Method gets P 1/2, the other three types 1.
    one = sm.relation_scores(
        [relation_doc()], {"r1": RELATION_CLUSTERS}, [RELATION_RECORD], cardinalities=[1]
    )
    assert one[1]["count"] == 4 and one[1]["precision"] == approx(3.5 / 4)


def test_relation_scores_skip_papers_without_gold_relations():
    no_rel = make_doc("r2", [[0, 1, "Task"]], {}, [])
    out = sm.relation_scores(
        [relation_doc(), no_rel],
        {"r1": RELATION_CLUSTERS, "r2": {}},
        {"r1": RELATION_RECORD, "r2": {"predicted_relations": []}},
    )
    assert out[4]["count"] == 1 and out[4]["f1"] == approx(2 / 3)


# --------------------------------------------------------------------------------------------
# The evaluate route
# --------------------------------------------------------------------------------------------


def test_evaluate_load_matches_the_direct_functions(tmp_path):
    import evaluate

    metric = sm.load_metric(cache_dir=str(tmp_path), keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric)
    docs = [basic_doc("p1"), basic_doc("p2"), relation_doc()]
    predicted = [
        {"doc_id": "p2", "clusters": {"a": [[0, 2], [5, 6], [3, 4]]}},
        {"doc_id": "p1", "clusters": {"x": [[0, 2], [3, 4]], "z": [[5, 6]]}},
        {"doc_id": "r1", "clusters": RELATION_CLUSTERS},
    ]
    out = metric.compute(
        predictions=[json.dumps(p) for p in predicted],
        references=[json.dumps(d) for d in docs],
        relations=[json.dumps(RELATION_RECORD)],
        missing_as_empty=True,
    )
    direct = sm.salient_cluster_scores(docs, predicted)
    for key in ("precision", "recall", "f1", "n_papers"):
        assert out[key] == direct[key]
    assert [row["f1"] for row in out["per_paper"]] == [row["f1"] for row in direct["per_paper"]]
    relations = sm.relation_scores(docs, predicted, [RELATION_RECORD], missing_as_empty=True)
    assert out["relations"] == {str(n): v for n, v in relations.items()}
    # Hand values: p1 P 1/2 R 1/4 F1 1/3; p2 P 1 R 1/4 F1 0.4; r1 P 1 R 4/5 F1 8/9.
    assert_prf(out, 2.5 / 3, 1.3 / 3, (1 / 3 + 0.4 + 8 / 9) / 3)
    # Without relations and per-paper rows.
    short = metric.compute(
        predictions=[json.dumps(p) for p in predicted],
        references=[json.dumps(d) for d in docs],
        include_per_paper=False,
    )
    assert set(short) == {"precision", "recall", "f1", "n_papers"} and short["f1"] == direct["f1"]


# --------------------------------------------------------------------------------------------
# Baselines on the real training file
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_SCIREX.is_file(), reason="SciREX train.jsonl is not available")
def test_baselines_on_real_scirex():
    docs = [json.loads(line) for line in REAL_SCIREX.read_text().splitlines() if line.strip()]
    assert len(docs) == 306
    everything = sm.all_clusters_salient(docs)["f1"]
    k = sm.choose_k_on(docs, ks=range(1, 11))
    frequent = sm.min_mentions_salient(docs, k)["f1"]
    oracle = sm.oracle_salient(docs)
    assert 0 < everything < sm.min_mentions_salient(docs, 5)["f1"] <= frequent < oracle["f1"] <= 1
    # Relation entities without mentions keep the oracle's recall below 1.
    assert oracle["recall"] < 1


# --------------------------------------------------------------------------------------------
# Mention predictions -> salient clusters (gold clusters given), baselines on a split, clusters file
# --------------------------------------------------------------------------------------------


def cluster_doc(doc_id: str = "c1") -> dict[str, Any]:
    """Seven gold clusters: salient M (2 mentions), T, A, D (no mention); non-salient 0, 1, 2 and 3, where
    3 shares its only span with A. Gold salient entities (the relation's): A, D, M, T."""
    doc = make_doc(
        doc_id,
        ner=[[0, 1, "Method"], [2, 3, "Method"], [4, 5, "Task"], [6, 7, "Task"], [8, 9, "Material"]]
        + [[10, 11, "Metric"], [12, 13, "Method"]],
        coref={"M": [[0, 1], [2, 3]], "T": [[4, 5]], "D": [], "A": [[10, 11]]},
        relations=[rel("D", "A", "T", "M")],
    )
    doc["coref_non_salient"] = {"0": [[6, 7]], "1": [[8, 9]], "2": [[12, 13]], "3": [[10, 11]]}
    return doc


def test_mention_predictions_become_clusters_by_the_documented_rule():
    doc = cluster_doc()
    # b (in M), d (in non-salient 0) and f (in A and in non-salient 3) predicted salient.
    predicted = sm.clusters_from_salient_mentions(doc, [[2, 3], [6, 7], (10, 11)])
    # Neutral names, numbered over all 7 candidates by their sorted spans (ties by the source name:
    # "other:3" < "salient:A"): M 0, T 1, other:0 2, other:1 3, other:3 4, A 5, other:2 6.
    assert predicted == {
        "cluster-0": [(0, 1), (2, 3)],
        "cluster-2": [(6, 7)],
        "cluster-4": [(10, 11)],
        "cluster-5": [(10, 11)],
    }
    # M -> M, A -> A, the copy of A -> A (several predicted clusters may map to one gold), other:0 -> none:
    # P = 3/4, R = |{M, A}| / |{A, D, M, T}| = 1/2, F1 = 2 * 3/4 * 1/2 / (5/4) = 0.6.
    alone = sm.salient_cluster_scores([doc], {"c1": predicted})
    assert_prf(alone, 0.75, 0.5, 0.6)
    assert alone["per_paper"][0]["n_matched_predicted"] == 3
    # A second paper with no salient mention predicted scores 0 and counts in the mean.
    empty = sm.clusters_from_salient_mentions(cluster_doc("c2"), [])
    assert empty == {}
    both = sm.salient_cluster_scores([doc, cluster_doc("c2")], {"c1": predicted, "c2": empty})
    assert_prf(both, 0.375, 0.25, 0.3)
    assert sm.compact_scores(both)["per_paper"] == {"c1": approx(0.6), "c2": 0.0}
    # Every mention salient = every gold cluster salient (the all-clusters baseline).
    every = sm.clusters_from_salient_mentions(doc, [span[:2] for span in doc["ner"]])
    assert len(every) == 7
    assert sm.salient_cluster_scores([doc], {"c1": every})["f1"] == sm.all_clusters_salient([doc])["f1"]


def k_doc() -> dict[str, Any]:
    """Only the 2-mention cluster is salient: ">= 2 mentions" is the best rule on this paper."""
    doc = make_doc(
        "k1",
        ner=[[0, 1, "Method"], [2, 3, "Method"], [4, 5, "Task"], [6, 7, "Task"]],
        coref={"M": [[0, 1], [2, 3]], "T": [], "D": [], "A": []},
        relations=[rel("D", "A", "T", "M")],
    )
    doc["coref_non_salient"] = {"0": [[4, 5]], "1": [[6, 7]]}
    return doc


def test_baselines_on_a_tiny_split():
    out = sm.salient_baselines([cluster_doc()], [k_doc()], "dev")
    # On k1: k=1 gives P 1/3, R 1/4, F1 2/7; k=2 gives P 1, R 1/4, F1 0.4; k >= 3 predicts nothing.
    frequent = out["min_mentions"]
    assert (frequent["k"], frequent["k_chosen_on"], frequent["k_documents"]) == (2, "dev", 1)
    assert frequent["k_sweep"]["1"] == approx(2 / 7) and frequent["k_sweep"]["2"] == approx(0.4)
    assert frequent["k_sweep"]["3"] == 0.0 and set(frequent["k_sweep"]) == {str(k) for k in sm.BASELINE_KS}
    # On c1 with k=2: only M is predicted: P 1, R 1/4, F1 0.4.
    assert_prf(frequent, 1.0, 0.25, 0.4)
    # Every cluster: M, T, A and its copy (other:3) match, 0, 1, 2 do not: P 4/7, R 3/4, F1 24/37.
    assert_prf(out["all_salient"], 4 / 7, 0.75, 24 / 37)
    # The oracle: A, M, T (D has no mention): P 1, R 3/4, F1 6/7.
    assert_prf(out["oracle"], 1.0, 0.75, 6 / 7)
    assert out["all_salient"]["per_paper"] == {"c1": approx(24 / 37)} and out["oracle"]["n_papers"] == 1
    assert out["best_trivial"] == {"name": "all_salient", "f1": out["all_salient"]["f1"]}
    # The same k as choose_k_on, and the same numbers as the single baselines.
    assert sm.choose_k_on([k_doc()], ks=sm.BASELINE_KS) == 2
    assert out["oracle"]["f1"] == sm.oracle_salient([cluster_doc()])["f1"]
    with pytest.raises(ValueError, match="choose k"):
        sm.salient_baselines([cluster_doc()], [], "dev")


def test_clusters_file_round_trip(tmp_path):
    docs = [cluster_doc("c1"), cluster_doc("c2")]
    predicted = {"c1": sm.clusters_from_salient_mentions(docs[0], [[2, 3], [6, 7], [10, 11]])}
    records = sm.clusters_file_records(docs, predicted)
    assert records[1] == {"doc_id": "c2", "clusters": {}}  # a line for every paper, as SciREX needs
    assert records[0]["clusters"]["cluster-0"] == [[0, 1], [2, 3]]
    path = sm.write_clusters_file(tmp_path / "salient_clusters.jsonl", records)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == records == sm.read_clusters_file(path)
    direct = sm.salient_cluster_scores(docs, predicted, missing_as_empty=True)
    rescored = sm.salient_cluster_scores(docs, sm.read_clusters_file(path))
    assert sm.compact_scores(rescored) == sm.compact_scores(direct)
    assert_prf(rescored, 0.375, 0.25, 0.3)
    # Through the evaluate module, reading the file's lines as SciREX's script would.
    metric = sm.load_metric(cache_dir=str(tmp_path / "cache"), keep_in_memory=True)
    out = metric.compute(predictions=lines, references=[json.dumps(d) for d in docs])
    for key in ("precision", "recall", "f1"):
        assert out[key] == direct[key]
