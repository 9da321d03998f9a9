"""The one argument parser of every sub-command: a dataclass in, a validated instance out.

It follows ``transformers.HfArgumentParser``'s conventions, so the flags read as in the ``run_*`` scripts: field
``foo_bar`` is ``--foo-bar`` (``--foo_bar`` too), a ``bool`` is ``--foo`` (``--foo false`` works) and, when it
defaults to True, ``--no-foo``; ``Literal[...]`` gives choices, ``list[X]`` takes one or more values, ``X | None``
is optional (for a non-string ``X``, ``--foo none`` sets None: e.g. no bound), a field without default is
required, and the defaults show in ``--help``. Field metadata adds:

- ``help``: the flag's help text;
- ``aliases``: more option strings (``["--output", "-o"]``);
- ``positional``: a positional argument instead of a flag (with a list type: one or more values);
- ``append``: a repeatable flag whose values collect into a list (``--latex-option a=1 --latex-option b=2``).

A list flag given the one value ``none`` is the empty list (``--global-attention-types none``).

The class names its command and help text with the class variables ``command`` and ``description``. Its
``__post_init__`` validates; an :class:`~structformer.errors.InputError` raised there is a usage error (exit 2).

It imports only the standard library (and :mod:`structformer.errors`): ``structformer CMD --help`` answers
before any sub-command imports torch, and unlike ``HfArgumentParser`` it costs no ``transformers`` import.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from structformer.errors import InputError

T = TypeVar("T")

# A list flag cannot be given zero values (nargs="+"); this word spells the empty list, and None for an
# optional number.
NONE = "none"


def flag(name: str) -> str:
    """The option of a field: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def require(condition: bool, message: str) -> None:
    """Validation in ``__post_init__``: a false condition is the user's error, with ``message``."""
    if not condition:
        raise InputError(message)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _choice(choices: tuple[Any, ...]) -> Any:
    # A Literal's values may be ints or strings; the command line gives strings.
    by_text = {str(choice): choice for choice in choices}

    def parse(value: str) -> Any:
        return by_text.get(value, value)

    return parse


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only X | None unions are supported as arguments, got {annotation}")
        return args[0], True
    return annotation, False


def _or_none(convert: Any) -> Any:
    def parse(value: str) -> Any:
        return None if value.lower() == NONE else convert(value)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its errors
    return parse


def _default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def _add_field(parser: argparse.ArgumentParser, item: dataclasses.Field, annotation: Any) -> None:
    meta = dict(item.metadata)
    kwargs: dict[str, Any] = {"help": meta.get("help")}
    annotation, optional = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    default = _default(item)
    required = default is dataclasses.MISSING
    if annotation is bool:
        kwargs.update(type=_bool, nargs="?", const=True, default=False if required else default)
        required = False
    elif origin is Literal:
        choices = typing.get_args(annotation)
        kwargs.update(type=_choice(choices), choices=choices)
    elif origin in (list, tuple, Sequence):
        kwargs["type"] = typing.get_args(annotation)[0]
        if meta.get("append"):
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+"
    elif optional and annotation is not str:
        kwargs["type"] = _or_none(annotation)
    else:
        kwargs["type"] = annotation
    if not required:
        kwargs["default"] = default
    # A repeatable flag starts empty: argparse would append to the (shared) default list.
    if meta.get("append"):
        kwargs["default"] = None
    if meta.get("positional"):
        if not required and "nargs" not in kwargs:
            kwargs["nargs"] = "?"
        elif not required:
            kwargs["nargs"] = "*"
        parser.add_argument(item.name, **kwargs)
        return
    options = [flag(item.name)]
    if "_" in item.name:
        options.append(f"--{item.name}")
    parser.add_argument(*options, *meta.get("aliases", []), dest=item.name, required=required, **kwargs)
    if annotation is bool and default is True:
        parser.add_argument(
            "--no-" + item.name.replace("_", "-"),
            f"--no_{item.name}",
            action="store_false",
            dest=item.name,
            help=argparse.SUPPRESS,
        )


def build_parser(cls: type) -> argparse.ArgumentParser:
    """The ``argparse`` parser of the arguments dataclass ``cls`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog=f"structformer {getattr(cls, 'command', cls.__name__)}",
        description=getattr(cls, "description", None),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.init:
            _add_field(parser, item, hints[item.name])
    return parser


def parse_dataclass(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into ``cls``; ``--help`` and bad values exit like argparse
    (status 0 and 2), and so does a value that ``cls.__post_init__`` refuses."""
    parser = build_parser(cls)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    values = vars(namespace)
    for item in dataclasses.fields(cls):
        if item.metadata.get("append") and values.get(item.name) is None:
            values[item.name] = _default(item)
        elif isinstance(values.get(item.name), list) and values[item.name] == [NONE]:
            values[item.name] = []
    try:
        return cls(**values)
    except InputError as err:
        parser.error(str(err))


def to_argv(arguments: Any) -> list[str]:
    """The command line that parses back into ``arguments`` (e.g. to relaunch under ``accelerate launch``);
    fields at their default are left out."""
    argv: list[str] = []
    positional: list[str] = []
    for item in dataclasses.fields(arguments):
        value = getattr(arguments, item.name)
        default = _default(item)
        if default is not dataclasses.MISSING and value == default:
            continue
        if value is None:  # at a default that is not None: only an optional number can say so
            if _unwrap_optional(typing.get_type_hints(type(arguments))[item.name])[0] is str:
                raise ValueError(f"{flag(item.name)}: None cannot be spelled on the command line")
            argv += [flag(item.name), NONE]
            continue
        if item.metadata.get("positional"):
            positional += list(map(str, value)) if isinstance(value, (list, tuple)) else [str(value)]
        elif isinstance(value, bool):
            argv.append(flag(item.name) if value else "--no-" + item.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)) and item.metadata.get("append"):
            for entry in value:
                argv += [flag(item.name), str(entry)]
        elif isinstance(value, (list, tuple)):
            argv += [flag(item.name), *(map(str, value) if value else [NONE])]
        else:
            argv += [flag(item.name), str(value)]
    # Positionals first: a list flag before them would take them as its values.
    return positional + argv
