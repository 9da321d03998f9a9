"""Shared by the bench scripts: replace one script's section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path


def write_section(benchmarks_file: Path, heading: str, section: str) -> None:
    """Replace the text under ``heading`` (a ``## `` line), up to the next ``## `` heading.

    ``section`` starts with the heading itself, so each script owns its whole section.
    """
    lines = benchmarks_file.read_text(encoding="utf-8").splitlines()
    if heading not in lines:
        raise ValueError(f"{benchmarks_file}: heading {heading!r} not found")
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:]
    benchmarks_file.write_text("\n".join(new) + "\n", encoding="utf-8")
