"""The ``structformer`` command: one entry point, one sub-command per job.

Each sub-command lives in its own module as ``main(argv: list[str] | None) -> int | None``
with its own ``parse_args``; this file only dispatches, so ``structformer pretrain --help``
shows the trainer's own options and importing the CLI stays cheap.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "experiment": ("structformer.trainers.experiment", "run the structured-vs-plain experiment end to end"),
    "build-corpus": ("structformer.dataset_scripts.build", "build arxiv_structured / arxiv_plain from LaTeX"),
    "train-tokenizer": ("structformer.trainers.tokenizer", "train a WordPiece tokenizer on a corpus"),
    "pretrain": ("structformer.trainers.pretrain", "masked-LM pre-training (an Accelerate loop)"),
    "finetune": ("structformer.trainers.finetune", "fine-tune on SciREX or your own CSV/JSON files"),
    "analyze-attention": (
        "structformer.trainers.analyze_attention",
        "attention-pattern analysis of checkpoints",
    ),
    "convert": ("structformer.convert", "convert a BERT/RoBERTa/Longformer checkpoint to StructBERT"),
    "publish": ("structformer.hub_cards.publish", "stage, validate and upload a model or dataset to the Hub"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: structformer <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'structformer <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from structformer import __version__

        print(f"structformer {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"structformer: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
