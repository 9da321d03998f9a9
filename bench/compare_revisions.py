"""The StructBERT encoder of a git revision against the working tree's, side by side in one process.

For changes that must not change speed (a refactor of the attention code): ``modeling/`` of ``--base``
is loaded from git into a temporary package, both models get the same weights and the same inputs, and
the training step of the encoder (forward and backward, dropout on, no vocabulary projection) is timed
round robin, base and working tree alternating, with and without global heading tokens. Alternating in
one process cancels most of this VM's drift between runs; the ratio of the medians is the result.

    python bench/compare_revisions.py --base 972e15d --lengths 4096 --repeats 12

Writes ``compare_revisions.json`` and a PNG under ``--output-dir`` and prints a Markdown section; with
``--write-benchmarks`` that section replaces this script's section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchmarks_md import write_section

from structformer.modeling import StructBertConfig, StructBertForMaskedLM

SECTION = "## Attention code against an earlier revision (`bench/compare_revisions.py`)"
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096])
    parser.add_argument("--repeats", type=int, default=12, help="timed steps per model and input (median)")
    parser.add_argument(
        "--global-tokens", type=int, default=53, help="heading tokens in the structured input"
    )
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--attention-window", type=int, default=256)
    parser.add_argument("--output-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--benchmarks-file", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--write-benchmarks", action="store_true", help="replace this script's section")
    return parser.parse_args(argv)


def load_base(revision: str, folder: Path) -> type:
    """``StructBertForMaskedLM`` of ``modeling/`` at ``revision``, imported as the package ``base_modeling``."""
    package = folder / "base_modeling"
    package.mkdir()
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{revision}:modeling"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # Every remote-code file of that revision (the kernels got their own module later).
    for name in (n for n in listing if n.endswith(".py") and n != "__init__.py"):
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{revision}:modeling/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / name).write_text(source, encoding="utf-8")
    (package / "__init__.py").write_text(
        "from .configuration_structbert import StructBertConfig\nfrom .modeling_structbert import StructBertForMaskedLM\n",
        encoding="utf-8",
    )
    sys.path.insert(0, str(folder))
    return importlib.import_module("base_modeling").StructBertForMaskedLM


def inputs(length: int, global_tokens: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 30000, (1, length), generator=generator)
    structured = torch.zeros(1, length, dtype=torch.long)
    structured[0, torch.linspace(0, length - 1, global_tokens).long()] = 1
    common = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return {
        "structured": {**common, "global_attention_mask": structured},
        "plain": {**common, "global_attention_mask": torch.zeros_like(structured)},
    }


def step_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model.structbert(**batch).last_hidden_state.sum().backward()
    return time.perf_counter() - start


def run(args: argparse.Namespace, base_class: type) -> list[dict]:
    rows = []
    for length in args.lengths:
        config = {
            "vocab_size": 30522,
            "hidden_size": args.hidden_size,
            "num_hidden_layers": args.num_layers,
            "num_attention_heads": args.num_heads,
            "intermediate_size": 4 * args.hidden_size,
            "attention_window": args.attention_window,
            "max_position_embeddings": length,
        }
        torch.manual_seed(0)
        current = StructBertForMaskedLM(StructBertConfig(**config)).train()
        base = base_class(base_class.config_class(**config)).train()
        base.load_state_dict(current.state_dict())
        models = {"base": base, "working tree": current}
        batches = inputs(length, args.global_tokens)
        seconds: dict[tuple[str, str], list[float]] = {(m, b): [] for m in models for b in batches}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for data, batch in batches.items():
                for name, model in models.items():
                    elapsed = step_seconds(model, batch)
                    if repeat:
                        seconds[(name, data)].append(elapsed)
        for data in batches:
            base_median = statistics.median(seconds[("base", data)])
            ours = statistics.median(seconds[("working tree", data)])
            rows.append(
                {
                    "length": length,
                    "data": data,
                    "base_seconds": base_median,
                    "working_tree_seconds": ours,
                    "ratio": ours / base_median,
                    "base_all": seconds[("base", data)],
                    "working_tree_all": seconds[("working tree", data)],
                }
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['data']}\nL={r['length']}" for r in rows]
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.6))
    width = 0.38
    for offset, key, name in (
        (-width / 2, "base_all", "base"),
        (width / 2, "working_tree_all", "working tree"),
    ):
        positions = [i + offset for i in range(len(rows))]
        axis.boxplot([r[key] for r in rows], positions=positions, widths=width * 0.9, showfliers=False)
        axis.scatter(positions, [statistics.median(r[key]) for r in rows], label=name, zorder=3)
    axis.set_xticks(range(len(rows)), labels)
    axis.set_ylabel("encoder step (s)")
    axis.set_title("encoder forward + backward, base revision vs working tree")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}` ({torch.get_num_threads()} threads). Base `{args.base}` and the working tree, same "
        f"weights and inputs, alternating round robin; {args.repeats} timed steps each, median. Encoder forward + "
        f"backward, {args.num_layers} layers of hidden {args.hidden_size}, window {args.attention_window}, dropout on; "
        f"structured = {args.global_tokens} global heading tokens.",
        "",
        "| length | data | base (s) | working tree (s) | working tree / base |",
        "|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['length']} | {r['data']} | {r['base_seconds']:.3f} | {r['working_tree_seconds']:.3f} | {r['ratio']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="structformer-base-") as folder:
        rows = run(args, load_base(args.base, Path(folder)))
    command = "python bench/compare_revisions.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command.strip(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    (args.output_dir / "compare_revisions.json").write_text(
        json.dumps(payload, indent=2) + "\n", encoding="utf-8"
    )
    plot(rows, args.output_dir / "compare_revisions.png")
    section = markdown(rows, args, command.strip())
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
