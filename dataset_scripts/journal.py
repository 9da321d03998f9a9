"""The build's journal: one JSON line per input, a record or a reject, in one file per task.

A line is ``{"key", "stamp", "source", "id", "version", "kind"}`` (see :class:`.archive.PaperInput`) and
either ``"record"`` (the ``arxiv_structured`` row, with ``"parse_warnings"`` when the parser had any) or
``"reason"`` and ``"detail"``; ``"warnings"`` lists what the reader skipped in the paper's archive. Task
``r`` appends to ``r``'s file only, so tasks never share a file, and the last line of a key wins: a
resumed task writes a new line for a paper edited since. A kill can leave half a line at the end of a
file; readers ignore it and the writer cuts it off before it appends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# 4: one journal per task (``NNNNN.jsonl`` in the work folder's ``journal/``), written by datatrove tasks.
JOURNAL_FORMAT = 4


def journal_file(folder: str | Path, rank: int) -> Path:
    """Task ``rank``'s journal in ``folder``: ``00003.jsonl``."""
    return Path(folder) / f"{rank:05d}.jsonl"


def complete_lines(path: Path) -> bytes:
    """The bytes of ``path`` up to its last newline (a killed writer's half line left out); empty if none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    return data[: data.rfind(b"\n") + 1]


def cut_half_line(path: Path) -> None:
    """Drop a half-written last line, so that what is appended next starts a line of its own."""
    if not path.is_file():
        return
    keep = len(complete_lines(path))
    if keep < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(keep)


def done_inputs(path: Path) -> dict[str, str]:
    """``{key: stamp}`` of the inputs a journal holds: what a resumed task does not read again."""
    return {item["key"]: item["stamp"] for item in map(json.loads, complete_lines(path).splitlines())}


def line(input_fields: dict[str, Any], outcome: dict[str, Any], warnings: list[str]) -> bytes:
    """One journal line: the input's fields, its outcome, and the reader's warnings when there are any."""
    item = {**input_fields, **outcome}
    if warnings:
        item["warnings"] = warnings
    return json.dumps(item, ensure_ascii=False).encode() + b"\n"
