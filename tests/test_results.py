"""The experiment's results.json contract (trainers/results.py): what experiment writes, cards and report read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from factories import build_results

from structformer.errors import InputError
from structformer.hub_cards import cards
from structformer.trainers import results as contract


def test_summarize_is_mean_sample_std_and_values() -> None:
    assert contract.summarize([0.5, 0.7]) == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.1414213),
        "values": [0.5, 0.7],
    }
    assert contract.summarize([3]) == {"mean": 3.0, "std": 0.0, "values": [3.0]}


def test_written_results_read_back_and_nan_attention_measures_are_allowed(tmp_path: Path) -> None:
    results = json.loads(build_results(tmp_path).read_text())
    assert results["attention"]["summary"]["plain/x"] != results["attention"]["summary"]["plain/x"]  # NaN
    contract.write_results(tmp_path / "out.json", results)
    read = contract.read_results(tmp_path / "out.json")
    assert read["models"]["structured"]["downstream"]["scirex-ner"]["f1"]["values"] == [0.4088, 0.4338]
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("models", "plain", "pretrain", "eval_perplexity"),
            float("nan"),
            r"models\.plain\.pretrain\.eval_perplexity is not finite",
        ),
        (
            ("models", "structured", "downstream", "scirex-ner", "f1", "std"),
            float("inf"),
            r"scirex-ner\.f1\.std is not finite",
        ),
        (
            ("models", "structured", "downstream", "scirex-salient", "recall", "values"),
            [0.1, None],
            r"recall\.values\[1\] is not a number",
        ),
        (("models", "plain", "checkpoint"), 3, r"models\.plain\.checkpoint is not a path"),
        (("models",), [], "models is not an object"),
    ],
)
def test_a_broken_entry_is_named(tmp_path: Path, path: tuple, value, message: str) -> None:
    results = json.loads(build_results(tmp_path).read_text())
    broken = copy.deepcopy(results)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InputError, match=message):
        contract.write_results(tmp_path / "out.json", broken)
    assert not (tmp_path / "out.json").exists()
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match=message):
        contract.read_results(tmp_path / "broken.json")


def test_model_cards_read_results_through_the_contract(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(
        '{"settings": {}, "models": {"m": {"checkpoint": "x"}}, "attention": {}}'
    )
    with pytest.raises(InputError, match=r"bad\.json: models\.m\.pretrain is not an object"):
        cards._load_results(tmp_path / "bad.json")
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        (tmp_path / "worse.json").write_text("{oops")
        cards._load_results(tmp_path / "worse.json")
