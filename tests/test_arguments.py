"""The one argument parser (structformer/arguments.py) and every sub-command's arguments dataclass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from structformer.arguments import parse_dataclass, require, to_argv
from structformer.cli import COMMANDS
from structformer.errors import InputError


@dataclass(kw_only=True)
class _Example:
    command: ClassVar[str] = "example"
    description: ClassVar[str] = "an example"

    sources: list[str] = field(metadata={"help": "inputs", "positional": True})
    output_dir: str = field(metadata={"help": "out", "aliases": ["--output", "-o"]})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "a mode"})
    size: int | None = field(default=None, metadata={"help": "a size"})
    bound: int | None = field(default=10, metadata={"help": "'none' for no bound"})
    label: str | None = field(default="x", metadata={"help": "a string"})
    ratio: float = field(default=0.5, metadata={"help": "a ratio"})
    shuffle: bool = field(default=True, metadata={"help": "on by default"})
    verbose: bool = field(default=False, metadata={"help": "off by default"})
    option: list[str] = field(default_factory=list, metadata={"help": "repeatable", "append": True})
    names: list[str] | None = field(default=None, metadata={"help": "several values"})

    def __post_init__(self) -> None:
        require(self.ratio < 1, f"--ratio must be below 1, got {self.ratio}")


def test_flags_follow_the_hf_argument_parser_conventions() -> None:
    args = parse_dataclass(
        _Example,
        ["a.tar", "b", "-o", "out", "--mode", "b", "--size", "3", "--no-shuffle", "--verbose", "false"]
        + ["--option", "x=1", "--option", "y=2", "--names", "p", "q", "--ratio", "0.25"],
    )
    assert args == _Example(
        sources=["a.tar", "b"],
        output_dir="out",
        mode="b",
        size=3,
        ratio=0.25,
        shuffle=False,
        verbose=False,
        option=["x=1", "y=2"],
        names=["p", "q"],
    )
    # "none" is None for an optional number, and a string for a string.
    none = parse_dataclass(_Example, ["s", "-o", "o", "--bound", "none", "--label", "none"])
    assert (none.bound, none.label) == (None, "none")
    # Underscored spellings (run_mlm's) and the long alias work too.
    assert parse_dataclass(_Example, ["s", "--output_dir", "o", "--verbose"]).verbose is True
    assert parse_dataclass(_Example, ["s", "--output", "o"]).option == []
    # The repeatable flag's default list is not shared between parses.
    first = parse_dataclass(_Example, ["s", "-o", "o", "--option", "x"])
    assert parse_dataclass(_Example, ["s", "-o", "o"]).option == [] and first.option == ["x"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "out"],  # the positional is required
        ["s"],  # so is --output-dir
        ["s", "-o", "o", "--mode", "c"],  # not a choice
        ["s", "-o", "o", "--size", "many"],  # not an int
        ["s", "-o", "o", "--ratio", "2"],  # refused by __post_init__
        ["s", "-o", "o", "--unknown"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_dataclass(_Example, argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("usage: structformer example")


def test_to_argv_round_trips() -> None:
    args = _Example(
        sources=["x", "y"], output_dir="o", mode="b", shuffle=False, verbose=True, option=["k=v"], names=[]
    )
    assert to_argv(args) == ["x", "y", "--output-dir", "o", "--mode", "b", "--no-shuffle", "--verbose"] + [
        "--option",
        "k=v",
        "--names",
        "none",
    ]
    for changed in (dataclasses.replace(args, names=["n"]), dataclasses.replace(args, bound=None, size=3)):
        assert parse_dataclass(_Example, to_argv(changed)) == changed
    with pytest.raises(ValueError, match="--label: None cannot be spelled"):
        to_argv(dataclasses.replace(args, label=None))
    with pytest.raises(InputError, match="--ratio must be below 1"):
        _Example(sources=["s"], output_dir="o", ratio=1.0)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_sub_command_parses_dataclasses_with_the_one_parser(name: str) -> None:
    cls = COMMANDS[name].arguments_class()
    assert dataclasses.is_dataclass(cls) and cls.command == name and cls.description
    with pytest.raises(SystemExit) as exit_:
        parse_dataclass(cls, ["--help"])
    assert exit_.value.code == 0


def test_sub_command_help_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    """What keeps ``structformer CMD --help`` under a second: no sub-command module, no torch, no
    transformers, no datasets (timings in the closing note, not in a test)."""
    code = (
        "import sys, contextlib, io\n"
        "from structformer.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit as exit_:\n"
        "            assert exit_.code == 0, (name, exit_.code)\n"
        "heavy = ('torch', 'transformers', 'datasets', 'accelerate')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_pretrain_arguments_round_trip_through_the_command_line(tmp_path: Path) -> None:
    from structformer.trainers.arguments import FinetuneArguments, PretrainArguments

    pretrain = PretrainArguments(
        dataset="corpus",
        output_dir=str(tmp_path),
        max_steps=5,
        global_attention_types=[],
        mask_headings=False,
    )
    assert parse_dataclass(PretrainArguments, pretrain.to_argv()) == pretrain
    finetune = FinetuneArguments(task="scirex_ner", model="m", scirex="s", output_dir="o", seeds=[1, 2])
    assert finetune.task == "scirex-ner"
    assert parse_dataclass(FinetuneArguments, finetune.to_argv()) == finetune
