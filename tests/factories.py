"""Builders of test data shared by several test files: corpus rows and corpus folders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from structformer.dataset_scripts import datatrove_blocks, schema, workers

WORDS = [
    "attention",
    "transformer",
    "document",
    "section",
    "model",
    "token",
    "sequence",
    "global",
    "local",
    "window",
    "training",
    "corpus",
    "structure",
    "heading",
    "paragraph",
    "abstract",
    "result",
    "method",
    "experiment",
    "evaluation",
    "baseline",
    "dataset",
    "encoder",
    "pretraining",
    "representation",
    "long",
    "context",
    "sparse",
    "dense",
    "layer",
]


def make_record(
    rng: random.Random, paper_id: str, n_sections: int = 3, paragraphs: int = 3, words: int = 25
) -> dict:
    """A structured row in the corpus format: text with title/abstract/headings and their char spans."""
    title = " ".join(rng.choice(WORDS).capitalize() for _ in range(4))
    abstract = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
    text = f"{title}\n\n{abstract}"
    headers = [{"start": 0, "end": len(title), "level": "title"}]
    sections = []
    levels = ["section", "subsection", "section", "subsubsection", "paragraph"]
    for k in range(n_sections):
        level = levels[k % len(levels)]
        heading = f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)}"
        paras = [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(paragraphs)]
        text += "\n\n"
        headers.append({"start": len(text), "end": len(text) + len(heading), "level": level})
        text += heading + "\n" + "\n\n".join(paras)
        sections.append({"level": level, "title": heading, "paragraphs": paras})
    return {
        "id": paper_id,
        "title": title,
        "abstract": abstract,
        "sections": sections,
        "text": text,
        "headers": headers,
        "categories": "cs.CL",
        "license": None,
        "version": "v1",
    }


def corpus_card(splits: list[str]) -> str:
    """A dataset card whose YAML ``configs:`` list both configs with the given splits."""
    lines = ["---", "configs:"]
    for config in ("arxiv_structured", "arxiv_plain"):
        lines += [f"- config_name: {config}"] + (["  default: true"] if config == "arxiv_structured" else [])
        lines += ["  data_files:"]
        lines += [f"  - split: {split}\n    path: data/{config}/{split}-*.parquet" for split in splits]
    return "\n".join(lines) + "\n---\n# tiny test corpus\n"


def make_corpus(root: Path, n_train: int = 12, n_validation: int = 3, seed: int = 0, **record_kwargs) -> Path:
    """Write a corpus folder in the built-corpus layout (Parquet per config + README.md with configs)."""
    import datasets

    rng = random.Random(seed)
    splits = [split for split, n in (("train", n_train), ("validation", n_validation)) if n]
    for split, n in (("train", n_train), ("validation", n_validation)):
        if not n:
            continue
        rows = [make_record(rng, f"{split}-{i}", n_sections=2 + i % 3, **record_kwargs) for i in range(n)]
        for config, keep in (("arxiv_structured", None), ("arxiv_plain", ("id", "text"))):
            folder = root / "data" / config
            folder.mkdir(parents=True, exist_ok=True)
            table = [{k: r[k] for k in keep} if keep else r for r in rows]
            datasets.Dataset.from_list(table).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(corpus_card(splits), encoding="utf-8")
    return root


# ---------------------------------------------------------------- card and publish artifacts


def make_row(i: int, license: str | None = None) -> dict:
    """One ``arxiv_structured`` row whose ``headers`` spans really point at its headings."""
    title, abstract = f"Paper number {i}", f"We study problem {i} in depth."
    sections = [
        {"level": "section", "title": "Introduction", "paragraphs": [f"Intro text {i}. " * (i + 1), "More."]},
        {"level": "subsection", "title": "Background", "paragraphs": ["Some background words here."]},
    ]
    text = f"{title}\n\n{abstract}"
    headers = [{"start": 0, "end": len(title), "level": "title"}]
    for section in sections:
        text += "\n\n"
        headers.append(
            {"start": len(text), "end": len(text) + len(section["title"]), "level": section["level"]}
        )
        text += section["title"] + "\n" + "\n\n".join(section["paragraphs"])
    return {
        "id": f"2401.{i:05d}",
        "title": title,
        "abstract": abstract,
        "sections": sections,
        "text": text,
        "headers": headers,
        "categories": "cs.CL cs.LG" if i % 2 else "math.PR",
        "license": license,
        "version": "v1",
    }


def build_tiny_corpus(
    root: Path, n_train: int = 5, n_val: int = 2, licenses: list[str] | None = None
) -> Path:
    """A built corpus folder laid out as in docs/ARCHITECTURE.md, without the builder."""
    rows = [make_row(i, licenses[i % len(licenses)] if licenses else None) for i in range(n_train + n_val)]
    splits = {"train": rows[:n_train], "validation": rows[n_train:]}
    for split, split_rows in splits.items():
        for config in schema.CONFIG_NAMES:
            folder = root / "data" / config
            folder.mkdir(parents=True, exist_ok=True)
            data = (
                split_rows
                if config == schema.STRUCTURED
                else [{"id": r["id"], "text": r["text"]} for r in split_rows]
            )
            pq.write_table(pa.Table.from_pylist(data), folder / f"{split}-00000-of-00001.parquet")
    report = {
        "inputs": len(rows) + 3,
        "records": len(rows),
        "rejects": 3,
        "reasons": {"pdf_only": 2, "no_main_file": 1},
        "rejected": [
            {"id": f"x{i}", "source": "a.tar", "reason": "pdf_only", "detail": ""} for i in range(3)
        ],
        "splits": {split: len(split_rows) for split, split_rows in splits.items()},
        "stats": {"seconds": 1.5},
        "options": {"min_chars": 10, "footnotes": "inline"},
    }
    (root / "build_report.json").write_text(json.dumps(report), encoding="utf-8")
    return root


CARD_MODEL_CONFIG = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 128,
    "attention_window": 8,
}
MODEL_WORDS = [
    "structure",
    "attention",
    "global",
    "heading",
    "headings",
    "model",
    "data",
    "gives",
    "the",
    "of",
    "and",
]


def build_tiny_model(root: Path, **config_overrides) -> Path:
    """A saved tiny StructBERT MLM with its tokenizer and the run records pretrain writes next to it."""
    import string

    import torch
    from transformers import BertTokenizer

    from structformer.modeling import StructBertConfig, StructBertForMaskedLM

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "-", ".", *MODEL_WORDS]
    tokens += [f"##{c}" for c in string.ascii_lowercase]
    tokens += [f"w{i}" for i in range(CARD_MODEL_CONFIG["vocab_size"] - len(tokens))]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=128).save_pretrained(root)
    torch.manual_seed(0)
    model = StructBertForMaskedLM(StructBertConfig(**{**CARD_MODEL_CONFIG, **config_overrides}))
    model.save_pretrained(root)
    args = {"learning_rate": 5e-4, "seed": 0, "max_steps": 3, "dataset": "/data/corpus", "use_headers": True}
    (root / "training_args.json").write_text(json.dumps(args), encoding="utf-8")
    (root / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 4.61}\n{"step": 3, "loss": 4.52}\n', encoding="utf-8"
    )
    eval_results = {
        "eval_loss": 4.5,
        "eval_bits_per_mask_token": 6.4921,
        "eval_perplexity": 90.02,
        "step": 3,
    }
    (root / "eval_results.json").write_text(json.dumps(eval_results), encoding="utf-8")
    return root


def build_results(exp: Path) -> Path:
    """An experiment folder's results.json (docs/ARCHITECTURE.md) and its attention figure."""
    (exp / "attention").mkdir(parents=True, exist_ok=True)
    (exp / "attention" / "attention_heatmap_structured.png").write_bytes(b"\x89PNG\r\n\x1a\n tiny")

    def model(variant: str, offset: float) -> dict:
        def metric(mean: float) -> dict:
            return {"mean": mean, "std": 0.0125, "values": [mean - 0.0125, mean + 0.0125]}

        return {
            "checkpoint": str(exp / "models" / variant),
            "pretrain": {
                "eval_bits_per_mask_token": 6.123 + offset,
                "eval_perplexity": 69.7 + offset,
                "initial_eval_bits_per_mask_token": 9.5,
                "unigram_bits_per_mask_token": 7.25,
            },
            "downstream": {
                "scirex-ner": {
                    "f1": metric(0.4213 + offset),
                    "precision": metric(0.5),
                    "recall": metric(0.35),
                },
                "scirex-salient": {
                    "f1": metric(0.3109 + offset),
                    "precision": metric(0.25),
                    "recall": metric(0.4),
                },
            },
        }

    results = {
        "settings": {"seed": 0},
        "models": {"structured": model("structured", 0.0), "plain": model("plain", 0.5)},
        "attention": {
            "summary": {"structured/with_structure/global_share": 0.25, "plain/x": float("nan")},
            "figures": ["attention/attention_heatmap_structured.png"],
        },
    }
    path = exp / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def log_parsed(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Append the id of every paper sent to a parse process to ``log``: the parse processes are forked,
    so a list in this process would not see them."""
    real_encode = workers._encode_task

    def logged(paper_id: str, files: dict[str, bytes]) -> bytes:
        with log.open("a") as handle:
            handle.write(paper_id + "\n")
        return real_encode(paper_id, files)

    monkeypatch.setattr(workers, "_encode_task", logged)


def interrupt_reading(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make the reader stop after ``after`` inputs, as if the build had been killed there."""
    real_iter = datatrove_blocks.iter_unit
    read = []

    def interrupted(*args, **kwargs):
        for paper in real_iter(*args, **kwargs):
            if len(read) == after:
                raise KeyboardInterrupt
            read.append(paper.key)
            yield paper

    monkeypatch.setattr(datatrove_blocks, "iter_unit", interrupted)
