"""The ``structformer`` command: one entry point, one sub-command per job.

Each sub-command has an arguments dataclass in a light module (nothing heavy imported) and a ``run(args)`` in
its own module; ``main(argv)`` there is ``run(parse_args(argv))``. This file parses the arguments first, with the
one parser of :mod:`structformer.arguments`, and imports the sub-command's module (and torch) only to run it: so
``structformer pretrain --help`` shows the trainer's own options in well under a second, and ``structformer
--help`` imports no sub-command. Bad input raised by a sub-command (:data:`structformer.errors.USER_ERRORS`)
ends with one line on stderr and status 2.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from structformer import __version__
from structformer.arguments import parse_dataclass
from structformer.errors import run_command


@dataclass(frozen=True)
class Command:
    """A sub-command: its arguments dataclass and the module whose ``run(args)`` does the work."""

    arguments: str  # "module:Class", a light module
    module: str
    help: str

    def arguments_class(self) -> type:
        module, _, name = self.arguments.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "experiment": Command(
        "structformer.command_arguments:ExperimentArguments",
        "structformer.experiment",
        "run the structured-vs-plain experiment end to end",
    ),
    "build-corpus": Command(
        "structformer.dataset_scripts.build:BuildArguments",
        "structformer.dataset_scripts.build",
        "build arxiv_structured / arxiv_plain from LaTeX",
    ),
    "train-tokenizer": Command(
        "structformer.trainers.arguments:TokenizerArguments",
        "structformer.trainers.tokenizer",
        "train a WordPiece tokenizer on a corpus",
    ),
    "pretrain": Command(
        "structformer.trainers.arguments:PretrainArguments",
        "structformer.trainers.pretrain",
        "masked-LM pre-training (an Accelerate loop)",
    ),
    "finetune": Command(
        "structformer.trainers.arguments:FinetuneArguments",
        "structformer.trainers.finetune",
        "fine-tune on SciREX or your own CSV/JSON files",
    ),
    "analyze-attention": Command(
        "structformer.trainers.arguments:AnalyzeAttentionArguments",
        "structformer.trainers.analyze_attention",
        "attention-pattern analysis of checkpoints",
    ),
    "convert": Command(
        "structformer.command_arguments:ConvertArguments",
        "structformer.convert",
        "convert a BERT/RoBERTa/Longformer checkpoint to StructBERT",
    ),
    "publish": Command(
        "structformer.hub_cards.arguments:PublishArguments",
        "structformer.hub_cards.publish",
        "stage, validate and upload a model or dataset to the Hub",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: structformer <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
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
    command = COMMANDS[name]

    def parse_then_run(argv: list[str]) -> int | None:
        args = parse_dataclass(command.arguments_class(), argv)  # --help and usage errors exit here
        return importlib.import_module(command.module).run(args)

    return run_command(name, parse_then_run, rest)


if __name__ == "__main__":
    sys.exit(main())
