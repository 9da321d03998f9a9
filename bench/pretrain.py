"""Pre-training throughput: training tokens per second of StructBERT, BERT (SDPA) and Longformer.

At each length (512 and 4096 by default) one batch of real pre-training sequences is built with the
project's own pipeline (``tokenize_with_structure`` -> ``pack_document`` -> the whole-word-masking
collator) from synthetic papers with a heading every ``--tokens-per-heading`` tokens, once with the
``arxiv_structured`` headers (title and headings global) and once as ``arxiv_plain``. A training step
is what ``trainers/pretrain.py`` runs: forward, the MLM head on the masked positions, backward and an
AdamW update, with dropout on. Models of the same size:

- ``StructBertForMaskedLM`` with its default attention path;
- transformers' ``BertForMaskedLM`` with ``attn_implementation="sdpa"`` (full attention, so only at
  lengths within BERT's reach, <= 512 by default);
- transformers' ``LongformerForMaskedLM`` with the same window and the same global tokens.

Configurations are timed round-robin (one step of each, repeated), so a load change on a shared
machine hits them alike; the table reports the median. Results go to ``bench/results/pretrain.json``,
a PNG plot, and with ``--write-benchmarks`` to this script's section of BENCHMARKS.md:

    python bench/pretrain.py --write-benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks_md import write_section

SECTION = "## Pre-training throughput (`bench/pretrain.py`)"
WORDS = [
    "we",
    "propose",
    "a",
    "model",
    "for",
    "long",
    "scientific",
    "documents",
    "whose",
    "structure",
    "guides",
    "attention",
    "the",
    "encoder",
    "reads",
    "titles",
    "headings",
    "and",
    "paragraphs",
    "results",
    "show",
    "that",
    "global",
    "tokens",
    "help",
    "retrieval",
    "and",
    "classification",
    "experiments",
    "on",
    "arxiv",
    "papers",
    "compare",
    "sparse",
    "attention",
    "with",
    "dense",
    "baselines",
    "under",
    "equal",
    "compute",
    "budgets",
    "tokenization",
    "of",
    "equations",
    "citations",
    "tables",
    "and",
    "figures",
    "remains",
    "an",
    "open",
    "problem",
    "for",
    "language",
    "models",
]
LEVELS = ("section", "subsection", "section", "subsubsection", "subsection")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--bert-max-length", type=int, default=512, help="longest length BERT is run at")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--intermediate-size", type=int, default=3072)
    parser.add_argument("--attention-window", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--tokens-per-heading", type=int, default=250, help="heading density of the synthetic papers"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=15,
        help="timed steps per configuration, after one warm-up (a 512-token step is ~0.6 s: fewer repeats "
        "leave about +-10%% noise on a shared machine)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--benchmarks-file", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace this script's BENCHMARKS.md section"
    )
    args = parser.parse_args(argv)
    if args.attention_window % 2:
        parser.error("--attention-window must be even")
    return args


# --------------------------------------------------------------------------- data


def synthetic_paper(rng: random.Random, n_words: int, words_per_heading: int) -> dict:
    """A structured record (text + header spans) in the corpus format."""
    title = " ".join(rng.choice(WORDS) for _ in range(8)).capitalize()
    text = title + "\n\n" + " ".join(rng.choice(WORDS) for _ in range(150))
    headers = [{"start": 0, "end": len(title), "level": "title"}]
    written, k = 150, 0
    while written < n_words:
        heading = " ".join(rng.choice(WORDS) for _ in range(3)).capitalize()
        text += "\n\n"
        headers.append(
            {"start": len(text), "end": len(text) + len(heading), "level": LEVELS[k % len(LEVELS)]}
        )
        text += heading
        remaining = words_per_heading
        while remaining > 0:
            n = min(remaining, rng.randint(40, 120))
            text += "\n" + " ".join(rng.choice(WORDS) for _ in range(n)) + "."
            remaining -= n
        written += words_per_heading
        k += 1
    return {"text": text, "headers": headers}


def make_batches(args: argparse.Namespace, length: int, tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """One batch per data config, from the same papers: sequences of exactly ``length`` tokens where possible."""
    from structformer.trainers.data import (
        DataCollatorForStructuredMLM,
        pack_document,
        tokenize_with_structure,
    )

    rng = random.Random(args.seed)
    papers = [
        synthetic_paper(rng, int(length * 1.2), args.tokens_per_heading) for _ in range(args.batch_size)
    ]
    collator = DataCollatorForStructuredMLM(
        tokenizer, pad_to_multiple_of=args.attention_window, seed=args.seed, vocab_size=args.vocab_size
    )
    batches = {}
    for name, use_headers in (("structured", True), ("plain", False)):
        features = []
        for idx, paper in enumerate(papers):
            doc = tokenize_with_structure(
                tokenizer, paper["text"], paper["headers"] if use_headers else None, add_special_tokens=False
            )
            first = pack_document(doc, length, tokenizer.cls_token_id, tokenizer.sep_token_id)[0]
            features.append({**first, "idx": idx})
        batches[name] = collator(features)
    return batches


def bench_tokenizer(args: argparse.Namespace, workdir: Path):
    from structformer.trainers.tokenizer import train_wordpiece

    rng = random.Random(args.seed)
    texts = [synthetic_paper(rng, 2000, args.tokens_per_heading)["text"] for _ in range(20)]
    return train_wordpiece(texts, 2000, workdir / "tokenizer", min_frequency=1)


# --------------------------------------------------------------------------- models


def build_model(name: str, args: argparse.Namespace, length: int, pad_token_id: int):
    common = {
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_heads,
        "intermediate_size": args.intermediate_size,
        "pad_token_id": pad_token_id,
    }
    if name == "structbert":
        from structformer.modeling import StructBertConfig, StructBertForMaskedLM

        config = StructBertConfig(
            **common, attention_window=args.attention_window, max_position_embeddings=max(length, 512)
        )
        return StructBertForMaskedLM(config), "cls"
    if name == "bert":
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(**common, max_position_embeddings=max(length, 512))
        config._attn_implementation = "sdpa"
        model = BertForMaskedLM(config)
        if model.config._attn_implementation != "sdpa":
            raise RuntimeError(f"BERT runs {model.config._attn_implementation!r} attention, not sdpa")
        return model, "cls"
    if name == "longformer":
        from transformers import LongformerConfig, LongformerForMaskedLM

        config = LongformerConfig(
            **common,
            attention_window=[args.attention_window] * args.num_layers,
            max_position_embeddings=length + 2,
        )
        return LongformerForMaskedLM(config), "lm_head"
    raise ValueError(name)


class Trainee:
    """A model, its optimizer and one pre-training step (the sparse MLM head of trainers/pretrain.py)."""

    def __init__(
        self, name: str, args: argparse.Namespace, length: int, pad_token_id: int, batch: dict
    ) -> None:
        torch.manual_seed(args.seed)
        self.model, self.head_name = build_model(name, args, length, pad_token_id)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.batch = batch
        self.uses_global = name != "bert"
        self.uses_sections = name == "structbert"

    def step(self) -> float:
        batch = self.batch
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.uses_global:
            inputs["global_attention_mask"] = batch["global_attention_mask"]
        if self.uses_sections:
            inputs["section_ids"] = batch["section_ids"]
        start = time.perf_counter()
        encoder = getattr(self.model, self.model.base_model_prefix)
        hidden = encoder(**inputs)[0]
        selected = batch["labels"] != -100
        logits = getattr(self.model, self.head_name)(hidden[selected])
        loss = F.cross_entropy(logits, batch["labels"][selected])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict]:
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = bench_tokenizer(args, Path(workdir))
    rows = []
    for length in args.lengths:
        batches = make_batches(args, length, tokenizer)
        configs = [
            ("structbert", "structured"),
            ("structbert", "plain"),
            ("longformer", "structured"),
            ("longformer", "plain"),
        ]
        if length <= args.bert_max_length:
            configs.append(("bert", "plain"))
        trainees = {c: Trainee(c[0], args, length, tokenizer.pad_token_id, batches[c[1]]) for c in configs}
        times: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
        for trainee in trainees.values():
            trainee.step()  # warm-up: allocator, kernel caches
        for _ in tqdm(range(args.repeats), desc=f"length {length}", file=sys.stderr):
            for config, trainee in trainees.items():
                times[config].append(trainee.step())
        for (model, data), measured in times.items():
            batch = batches[data]
            tokens = int(batch["attention_mask"].sum())
            median = statistics.median(measured)
            rows.append(
                {
                    "model": model,
                    "data": data,
                    "length": length,
                    "padded_length": batch["input_ids"].shape[1],
                    "tokens": tokens,
                    "global_tokens": int(batch["global_attention_mask"].sum()),
                    "step_seconds": median,
                    "step_seconds_all": measured,
                    "tokens_per_second": tokens / median,
                }
            )
        del trainees
    return rows


# --------------------------------------------------------------------------- reporting


def _find(rows: list[dict], model: str, data: str, length: int) -> dict | None:
    return next(
        (r for r in rows if r["model"] == model and r["data"] == data and r["length"] == length), None
    )


def targets(rows: list[dict], lengths: list[int]) -> list[dict]:
    """The issue's three targets, each as measured ratio, goal and verdict."""
    checks = []
    long_length, short_length = max(lengths), min(lengths)
    ours, theirs = (
        _find(rows, "structbert", "structured", long_length),
        _find(rows, "longformer", "structured", long_length),
    )
    if ours and theirs:
        ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
        checks.append(
            {
                "target": f"StructBERT / Longformer speed at {long_length}",
                "value": ratio,
                "goal": ">= 1.5",
                "met": ratio >= 1.5,
            }
        )
    ours, bert = _find(rows, "structbert", "plain", short_length), _find(rows, "bert", "plain", short_length)
    if ours and bert:
        ratio = ours["tokens_per_second"] / bert["tokens_per_second"]
        checks.append(
            {
                "target": f"StructBERT / BERT-SDPA speed at {short_length}",
                "value": ratio,
                "goal": ">= 0.9",
                "met": ratio >= 0.9,
            }
        )
    for length in lengths:
        structured, plain = (
            _find(rows, "structbert", "structured", length),
            _find(rows, "structbert", "plain", length),
        )
        if structured and plain:
            cost = structured["step_seconds"] / plain["step_seconds"] - 1
            checks.append(
                {
                    "target": f"extra cost of structured data at {length}",
                    "value": cost,
                    "goal": "<= 10%",
                    "met": cost <= 0.10,
                }
            )
    return checks


def markdown(
    rows: list[dict], checks: list[dict], args: argparse.Namespace, command: str, load: tuple[float, float]
) -> str:
    labels = {"structbert": "StructBERT", "bert": "BERT (SDPA)", "longformer": "Longformer"}
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Training step (forward, MLM head on masked tokens, backward, AdamW) of models with hidden size "
        f"{args.hidden_size}, {args.num_layers} layers, {args.num_heads} heads, window {args.attention_window}, "
        f"vocabulary {args.vocab_size}, batch {args.batch_size}, fp32, on {platform.processor() or platform.machine()} "
        f"with {torch.get_num_threads()} torch threads; median of {args.repeats} round-robin steps. Data: synthetic "
        f"papers packed by the project's pipeline, a heading every ~{args.tokens_per_heading} words.",
        "",
        f"Load average (1 min) at start and end: {load[0]:.1f} and {load[1]:.1f} on {os.cpu_count()} CPUs; "
        "on a loaded machine compare ratios within one run, not absolute numbers.",
        "",
        "| length | model | data | global tokens in data | step (s), median | min - max (s) | tokens/s |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length']} | {labels[r['model']]} | {r['data']} | {r['global_tokens']} | "
            f"{r['step_seconds']:.3f} | {min(r['step_seconds_all']):.3f} - {max(r['step_seconds_all']):.3f} | "
            f"{r['tokens_per_second']:.0f} |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for c in checks:
        value = f"{c['value']:+.1%}" if "cost" in c["target"] else f"{c['value']:.2f}x"
        lines.append(f"| {c['target']} | {value} | {c['goal']} | {'yes' if c['met'] else 'no'} |")
    lines += ["", "Plot: `bench/results/pretrain.png`; raw numbers: `bench/results/pretrain.json`.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    series = sorted({(r["model"], r["data"]) for r in rows})
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for k, (model, data) in enumerate(series):
        values = [(_find(rows, model, data, L) or {}).get("tokens_per_second", 0.0) for L in lengths]
        axis.bar([i + k * width for i in range(len(lengths))], values, width, label=f"{model} ({data})")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(lengths))], [str(L) for L in lengths])
    axis.set_xlabel("sequence length")
    axis.set_ylabel("training tokens / s")
    axis.set_title("Pre-training throughput")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = run(args)
    load = (load_start, os.getloadavg()[0])
    checks = targets(rows, args.lengths)
    command = "python bench/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "command": command.strip(),
        "settings": settings,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "targets": checks,
    }
    (args.output_dir / "pretrain.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.output_dir / "pretrain.png")
    section = markdown(rows, checks, args, command.strip(), load)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
