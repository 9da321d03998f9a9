"""The ``structformer`` command: one entry point, one sub-command per job.

Each sub-command lives in its own module as ``main(argv: list[str] | None) -> int | None``
with its own ``parse_args``; this file only dispatches, so ``structformer pretrain --help``
shows the trainer's own options and ``structformer --help`` imports no sub-command (nor torch). Bad input
raised by a sub-command (:data:`structformer.errors.USER_ERRORS`) ends with one line on stderr and status 2.
"""

from __future__ import annotations

import importlib
import sys

from structformer import __version__
from structformer.errors import run_command

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "experiment": ("structformer.experiment", "run the structured-vs-plain experiment end to end"),
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
        print(f"structformer {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"structformer: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_command(name, module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
