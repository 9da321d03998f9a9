"""Builders of test data shared by several test files: corpus rows and corpus folders."""

from __future__ import annotations

import random
from pathlib import Path

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
