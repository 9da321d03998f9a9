"""Model and dataset cards generated from tiny real artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
from factories import CARD_MODEL_CONFIG as TINY
from factories import build_results, build_tiny_corpus, build_tiny_model, make_row
from huggingface_hub import DatasetCard

from structformer.dataset_scripts import card as dataset_card
from structformer.hub_cards import cards

CC_BY = "http://creativecommons.org/licenses/by/4.0/"
ARXIV = "http://arxiv.org/licenses/nonexclusive-distrib/1.0/"


def placeholder_strings() -> list[str]:
    """Every default that huggingface_hub's own card templates print for a missing value."""
    templates = Path(huggingface_hub.__file__).parent / "templates"
    found = set()
    for path in templates.glob("*.md"):
        found.update(re.findall(r'default\("([^"]+)"', path.read_text(encoding="utf-8")))
    found.discard("")
    assert "[More Information Needed]" in found  # the extraction itself must work
    return sorted(found) + ["More Information Needed", "{{", "{%", "<!--", "TODO"]


def assert_no_placeholders(text: str) -> None:
    for placeholder in placeholder_strings():
        assert placeholder.lower() not in text.lower(), placeholder
    assert not re.search(r"\b(None|nan)\b", text.split("\n---\n", 1)[-1]), "a missing value was printed"


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return build_tiny_corpus(tmp_path / "corpus", licenses=[ARXIV, CC_BY])


def test_dataset_card_yaml_and_body(corpus: Path) -> None:
    path = dataset_card.write_dataset_card(corpus)
    assert path == corpus / "README.md"
    card = DatasetCard.load(path)
    data = card.data.to_dict()
    configs = {c["config_name"]: c for c in data["configs"]}
    assert list(configs) == ["arxiv_structured", "arxiv_plain"]
    assert configs["arxiv_structured"]["default"] is True and "default" not in configs["arxiv_plain"]
    for name, config in configs.items():
        assert config["data_files"] == [
            {"split": "train", "path": f"data/{name}/train-*.parquet"},
            {"split": "validation", "path": f"data/{name}/validation-*.parquet"},
        ]
    assert data["language"] == ["en"] and data["size_categories"] == ["n<1K"]
    assert "fill-mask" in data["task_categories"] and data["pretty_name"]
    # Two licenses among the rows: "other", and the body says each paper keeps its own.
    assert data["license"] == "other" and data["license_name"] == "arxiv-per-paper"
    text = card.text
    assert "| input papers | 10 |" in text and "| rejected papers | 3 |" in text
    assert "| `pdf_only` | 2 |" in text and "| `no_main_file` | 1 |" in text
    assert "| documents in `train` | 5 |" in text and "| documents in `validation` | 2 |" in text
    assert f"| {ARXIV} | 4 |" in text and f"| {CC_BY} | 3 |" in text
    assert "exactly the same text" in text and "2411.16618" in text
    words = sum(len(make_row(i)["text"].split()) for i in range(7))
    assert f"| whitespace-separated words | {words:,} |" in text
    assert "| `title` | 7 |" in text and "| `subsection` | 7 |" in text
    assert_no_placeholders(card.content)


def test_dataset_card_is_deterministic(corpus: Path) -> None:
    """The build promises identical bytes for identical inputs; the card is part of the output."""
    first = dataset_card.write_dataset_card(corpus).read_bytes()
    assert dataset_card.write_dataset_card(corpus).read_bytes() == first


def test_dataset_card_loads_with_datasets(corpus: Path) -> None:
    import datasets

    dataset_card.write_dataset_card(corpus)
    structured = datasets.load_dataset(str(corpus), cache_dir=str(corpus.parent / "cache"))
    plain = datasets.load_dataset(str(corpus), "arxiv_plain", cache_dir=str(corpus.parent / "cache"))
    assert {k: v.num_rows for k, v in structured.items()} == {"train": 5, "validation": 2}
    assert "headers" in structured["train"].column_names and plain["train"].column_names == ["id", "text"]
    assert structured["validation"]["text"] == plain["validation"]["text"]


@pytest.mark.parametrize(
    ("licenses", "expected"),
    [
        ([CC_BY], {"license": "cc-by-4.0"}),
        ([ARXIV], {"license": "other", "license_link": ARXIV}),
        (None, {"license": "other"}),
    ],
)
def test_dataset_card_license(tmp_path: Path, licenses: list[str] | None, expected: dict) -> None:
    corpus = build_tiny_corpus(tmp_path / "c", licenses=licenses)
    data = DatasetCard.load(dataset_card.write_dataset_card(corpus)).data.to_dict()
    assert {k: data.get(k) for k in expected} == expected
    if licenses is None:
        assert "without arXiv's metadata snapshot" in DatasetCard.load(corpus / "README.md").text


def test_dataset_card_without_report_and_split(tmp_path: Path) -> None:
    corpus = build_tiny_corpus(tmp_path / "c")
    (corpus / "build_report.json").unlink()
    for path in (corpus / "data").glob("*/validation-*"):
        path.unlink()
    card = DatasetCard.load(dataset_card.write_dataset_card(corpus))
    assert [c["data_files"] for c in card.data.to_dict()["configs"]][0] == [
        {"split": "train", "path": "data/arxiv_structured/train-*.parquet"}
    ]
    assert "input papers" not in card.text and "Rejected papers" not in card.text
    assert_no_placeholders(card.content)


def test_dataset_card_token_counts(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    corpus = build_tiny_corpus(tmp_path / "corpus")
    build_tiny_model(tmp_path / "model")
    text = dataset_card.write_dataset_card(corpus, tokenizer=tmp_path / "model").read_text()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    counts = [len(tokenizer(make_row(i)["text"], add_special_tokens=False)["input_ids"]) for i in range(7)]
    assert f"| tokens (tokenizer `model`, no special tokens) | {sum(counts):,} |" in text
    assert f"| tokens per document (min / max) | {min(counts):,} / {max(counts):,} |" in text


def test_dataset_card_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        dataset_card.write_dataset_card(tmp_path)
    corpus = build_tiny_corpus(tmp_path / "c")
    (corpus / "build_report.json").write_text('{"inputs": 1,\n oops}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"build_report.json: invalid JSON at line 2"):
        dataset_card.write_dataset_card(corpus)


# ----------------------------------------------------------------------------- model card


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("exp")
    build_tiny_model(exp / "models" / "structured", local_attention_scope="section")
    return build_results(exp)


def test_model_card_yaml_and_model_index(experiment: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    results = json.loads(experiment.read_text())
    model_dir = experiment.parent / "models" / "structured"
    path = cards.write_model_card(
        model_dir,
        experiment,
        datasets=["org/arxiv_structured"],
        base_model="org/bert-mini",
        output_dir=tmp_path,
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "fill-mask"
    assert data.license == "apache-2.0" and data.datasets == ["org/arxiv_structured"]
    assert data.base_model == "org/bert-mini"
    assert set(cards.TAGS) <= set(data.tags) and "custom_code" in data.tags
    got = {(r.task_type, r.metric_type): r.metric_value for r in data.eval_results}
    own = results["models"]["structured"]
    expected = {
        ("fill-mask", "bits_per_mask_token"): own["pretrain"]["eval_bits_per_mask_token"],
        ("fill-mask", "perplexity"): own["pretrain"]["eval_perplexity"],
    }
    for task, task_type in (
        ("scirex-ner", "token-classification"),
        ("scirex-salient", "text-classification"),
    ):
        for metric in ("f1", "precision", "recall"):
            expected[(task_type, metric)] = own["downstream"][task][metric]["mean"]
    assert got == expected
    text = card.text
    # The comparison tables show both models, each as mean ± std over the runs.
    # Each model's bits beside its trivial baselines on the same positions.
    assert "| **structured** (this model) | 6.123 | 9.5 | 7.25 | 69.7 |" in text
    assert "| plain | 6.623 | 9.5 | 7.25 | 70.2 |" in text
    assert "| **structured** (this model) | SciREX entity recognition | 0.4213 ± 0.0125 |" in text
    assert "over 2 fine-tuning runs" in text
    assert "| `structured/with_structure/global_share` | 0.25 |" in text
    assert "(attention_heatmap_structured.png)" in text
    assert (tmp_path / "attention_heatmap_structured.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "training_curve.png").read_bytes().startswith(
        b"\x89PNG"
    ) and "(training_curve.png)" in text
    assert "The training loss went from 4.61 at step 1 to 4.52 at step 3" in text
    assert "| `learning_rate` | `0.0005` |" in text and "| `dataset` | `corpus` |" in text
    assert "only to those in **its own section**" in text and "| attention window | 8 |" in text
    assert "trust_remote_code=True" in text and 'revision = "main"' in text
    assert "@article{ponkshe2024structformer" in text and "arXiv:2004.05150" in text
    assert_no_placeholders(card.content)
    assert not (model_dir / "README.md").exists()  # output_dir was honoured


def test_model_card_from_eval_results_only(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    model_dir = build_tiny_model(tmp_path / "m")
    (model_dir / "training_args.json").unlink()
    (model_dir / "metrics.jsonl").unlink()
    card = ModelCard.load(cards.write_model_card(model_dir, repo_id="org/structbert-tiny", revision="v1"))
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "bits_per_mask_token": 6.4921,
        "perplexity": 90.02,
    }
    assert card.data.datasets is None and card.data.base_model is None
    assert "## Training" not in card.text and "SciREX" not in card.text and "own section" not in card.text
    assert 'repo = "org/structbert-tiny"' in card.text and 'revision = "v1"' in card.text
    assert_no_placeholders(card.content)
    # Without any evaluation, there is no model-index and no Evaluation section at all.
    (model_dir / "eval_results.json").unlink()
    card = ModelCard.load(cards.write_model_card(model_dir))
    assert card.data.eval_results is None and "## Evaluation" not in card.text
    assert_no_placeholders(card.content)


def test_model_card_usage_snippets_run(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The card's Python examples, pointed at the local folder, run and give logits of the right shape."""
    from huggingface_hub import ModelCard

    model_dir = experiment.parent / "models" / "structured"
    card = ModelCard.load(cards.write_model_card(model_dir, experiment))
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(blocks) == 2 and 'repo = "."' in blocks[0]
    monkeypatch.chdir(model_dir)
    namespace: dict = {}
    exec(blocks[0] + blocks[1], namespace)  # noqa: S102 - our own generated example
    assert namespace["logits"].shape[-1] == TINY["vocab_size"]
    assert int(namespace["inputs"]["global_attention_mask"].sum()) > 0


def test_model_card_picks_the_model_and_rejects_bad_input(experiment: Path, tmp_path: Path) -> None:
    results = json.loads(experiment.read_text())
    model_dir = experiment.parent / "models" / "structured"
    card, _ = cards.render_model_card(model_dir, {**results, "variant": "plain"})
    assert {r.metric_value for r in card.data.eval_results if r.metric_type == "perplexity"} == {70.2}
    with pytest.raises(ValueError, match="no model 'nope'"):
        cards.render_model_card(model_dir, results, model_key="nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cards.write_model_card(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    with pytest.raises(ValueError, match="expected 'structbert'"):
        cards.write_model_card(tmp_path)
