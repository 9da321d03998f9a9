"""Corpus build against pandoc on real LaTeX papers: speed, records with sections, heading agreement.

Runs ``structformer.dataset_scripts.build.build_corpus`` over a folder of paper folders (by
default the 119 real papers of ``../shared/data/latex``, listed in its ``MANIFEST.tsv``) at
each ``--num-proc``, and pandoc (``pandoc -f latex -t json`` on each manifest main file, from
inside the paper's folder, under a memory cap and a time limit) on the same papers in the same
run. Reports papers per second for each, the share of papers whose record has at least one
section, crashes, and heading agreement: the share of pandoc's section and subsection titles
that our record also has as headings, after normalizing whitespace and case, over the papers
pandoc converts.

    python bench/corpus.py --write-benchmarks

The data is read in place and never copied; the built corpora go to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks_md import write_section
from tqdm.auto import tqdm

SECTION = "## Corpus build against pandoc (`bench/corpus.py`)"
REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "latex",
        help="folder of paper folders with a MANIFEST.tsv (folder and main_tex columns)",
    )
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="build once per value")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="per-paper time limit of our build, seconds"
    )
    parser.add_argument("--pandoc", default="pandoc", help="pandoc executable")
    parser.add_argument("--pandoc-timeout", type=int, default=60, help="seconds per paper")
    parser.add_argument("--pandoc-memory-kb", type=int, default=4_000_000, help="ulimit -v for pandoc, KiB")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "corpus.json")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "bench" / "results" / "corpus.png")
    parser.add_argument("--benchmarks-file", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace this script's section of BENCHMARKS.md"
    )
    return parser.parse_args(argv)


def read_manifest(data: Path) -> list[dict[str, str]]:
    manifest = data / "MANIFEST.tsv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: no such file (expected a MANIFEST.tsv with folder and main_tex)"
        )
    with manifest.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for line, row in enumerate(rows, start=2):
        if not row.get("folder") or not row.get("main_tex"):
            raise ValueError(f"{manifest}:{line}: folder or main_tex missing")
    return rows


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "`": "'"})


def normalize_heading(title: str, canonical: bool = False) -> str:
    """Case-folded with whitespace collapsed, as the issue defines agreement. ``canonical``
    also applies NFKC and folds typographic quotes to ASCII (pandoc renders ``'`` as a right
    quote, we keep it)."""
    if canonical:
        title = unicodedata.normalize("NFKC", title).translate(_QUOTES)
    return " ".join(title.casefold().split())


# ----------------------------------------------------------------------------- our build


def run_build(data: Path, num_proc: int, timeout: float) -> dict[str, Any]:
    """Build the corpus once; returns the report, the wall time and the structured rows by id."""
    import pyarrow.parquet as pq

    from structformer.dataset_scripts.build import BuildOptions, build_corpus
    from structformer.dataset_scripts.schema import STRUCTURED, shard_dir

    options = BuildOptions(
        num_proc=num_proc,
        min_chars=None,
        max_chars=None,
        dedupe=False,
        resume=False,
        timeout=timeout,
        progress=True,
    )
    with tempfile.TemporaryDirectory(prefix="structformer-corpus-bench-") as tmp:
        output = Path(tmp) / "corpus"
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        crash = None
        try:
            report = build_corpus([data], output, options)
        except Exception as error:  # the point of the benchmark is to count these
            report, crash = {}, f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - start
        load = (load_before, os.getloadavg()[0])
        rows: dict[str, dict] = {}
        for shard in sorted(shard_dir(output, STRUCTURED).glob("*.parquet")):
            for row in pq.read_table(shard).to_pylist():
                rows[row["id"]] = row
    return {"report": report, "seconds": seconds, "rows": rows, "crash": crash, "load_average": load}


# ----------------------------------------------------------------------------- pandoc


def _inline_text(inlines: list, canonical: bool) -> str:
    """pandoc's ``stringify`` of a heading's inlines (footnotes left out). ``canonical`` writes
    citations and references as our placeholders and renders math with our math rule, so that
    a title is compared on its words rather than on how each tool prints a formula."""
    from structformer.dataset_scripts.latex_text import LatexOptions, inline_text

    out = []
    for item in inlines:
        kind, content = item.get("t"), item.get("c")
        if kind == "Str":
            out.append(content)
        elif kind in ("Space", "SoftBreak", "LineBreak"):
            out.append(" ")
        elif kind in ("Emph", "Strong", "Strikeout", "Superscript", "Subscript", "SmallCaps", "Underline"):
            out.append(_inline_text(content, canonical))
        elif kind == "Quoted":
            marks = "\u201c\u201d" if content[0]["t"] == "DoubleQuote" else "\u2018\u2019"
            out.append(marks[0] + _inline_text(content[1], canonical) + marks[1])
        elif kind == "Cite":
            out.append(LatexOptions().cite_placeholder if canonical else _inline_text(content[1], canonical))
        elif kind == "Link":
            is_ref = any(key == "reference-type" for key, _ in content[0][2])
            out.append(
                LatexOptions().ref_placeholder
                if canonical and is_ref
                else _inline_text(content[1], canonical)
            )
        elif kind in ("Span", "Image"):
            out.append(_inline_text(content[1], canonical))
        elif kind == "Math":
            out.append(inline_text(f"${content[1]}$") if canonical else content[1])
        elif kind == "Code":
            out.append(content[1])
    return "".join(out)


def pandoc_headers(document: dict) -> list[tuple[int, str, str]]:
    """``(level, text, canonical text)`` of every Header block, also inside Divs and other containers."""
    found: list[tuple[int, str, str]] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("t") == "Header":
                level, _, inlines = value["c"]
                found.append((level, _inline_text(inlines, False), _inline_text(inlines, True)))
                return
            for child in value.values():
                visit(child)
        elif isinstance(value, list):
            for child in value:
                visit(child)

    visit(document.get("blocks", []))
    return found


def uses_chapters(folder: Path) -> bool:
    r"""pandoc numbers ``\chapter`` as level 1, moving sections to 2 and subsections to 3."""
    from structformer.dataset_scripts.latex_source import strip_comments

    for path in folder.rglob("*.tex"):
        text = strip_comments(path.read_bytes().decode("utf-8", errors="replace"))
        if re.search(r"\\chapter\*?\s*[\[{]", text):
            return True
    return False


def run_pandoc(folder: Path, main_tex: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        "bash",
        "-c",
        f'ulimit -v {int(args.pandoc_memory_kb)}; exec timeout {int(args.pandoc_timeout)} "$0" -f latex -t json "$1"',
        args.pandoc,
        main_tex,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": seconds, "returncode": done.returncode}
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", errors="replace")
        if done.returncode == 124:
            result["status"] = "timeout"
        elif "memory" in stderr.lower() or done.returncode in (137, 251):
            result["status"] = "out_of_memory"
        else:
            result["status"] = "failed"
        result["error"] = stderr.strip()[-300:]
        return result
    headers = pandoc_headers(json.loads(done.stdout))
    shift = 1 if uses_chapters(folder) else 0
    result["status"] = "ok"
    kept = [(text, canonical) for level, text, canonical in headers if level in (1 + shift, 2 + shift)]
    result["headings"] = [text for text, _ in kept]
    result["headings_canonical"] = [canonical for _, canonical in kept]
    result["all_headings"] = len(headers)
    return result


# ----------------------------------------------------------------------------- comparison


def agreement(
    pandoc_titles: list[str], our_titles: list[str], canonical: bool = False
) -> tuple[int, int, list[str]]:
    """How many of pandoc's (non-empty) titles we also have, as a multiset; how many were
    compared; and the ones we miss."""
    ours = Counter(normalize_heading(t, canonical) for t in our_titles)
    matched = counted = 0
    missed = []
    for title in pandoc_titles:
        key = normalize_heading(title, canonical)
        if not key:
            continue
        counted += 1
        if ours[key] > 0:
            ours[key] -= 1
            matched += 1
        else:
            missed.append(title)
    return matched, counted, missed


def evaluate(manifest: list[dict[str, str]], build: dict, pandoc: dict[str, dict]) -> dict[str, Any]:
    from structformer.dataset_scripts.archive import parse_paper_id

    rejected = {Path(r["source"]).name: r for r in build["report"].get("rejected", [])}
    papers = {}
    totals = {"strict": [0, 0], "canonical": [0, 0]}
    for row in manifest:
        folder = row["folder"]
        paper_id = parse_paper_id(folder)[0]
        record = build["rows"].get(paper_id)
        entry: dict[str, Any] = {"id": paper_id}
        if record is None:
            reject = rejected.get(folder, {})
            entry.update(
                record=False, reason=reject.get("reason", "missing"), detail=reject.get("detail", "")
            )
        else:
            titled = [s["title"] for s in record["sections"] if s["title"]]
            entry.update(record=True, sections=len(record["sections"]), headings=len(titled))
        result = pandoc[folder]
        entry["pandoc"] = result["status"]
        if result["status"] == "ok" and result["headings"]:
            ours = [s["title"] for s in record["sections"]] if record else []
            for name, titles in (("strict", result["headings"]), ("canonical", result["headings_canonical"])):
                matched, counted, missed = agreement(titles, ours, canonical=name == "canonical")
                totals[name][0] += matched
                totals[name][1] += counted
                entry[name] = {"pandoc_headings": counted, "matched": matched, "missed": missed}
        papers[folder] = entry
    n = len(manifest)
    with_sections = sum(1 for e in papers.values() if e.get("sections", 0) >= 1)
    with_headings = sum(1 for e in papers.values() if e.get("headings", 0) >= 1)
    return {
        "papers": n,
        "records": sum(1 for e in papers.values() if e["record"]),
        "rejects": dict(Counter(e["reason"] for e in papers.values() if not e["record"])),
        "with_sections": with_sections,
        "with_sections_share": with_sections / n,
        "with_titled_heading": with_headings,
        "with_titled_heading_share": with_headings / n,
        "pandoc_ok": sum(1 for r in pandoc.values() if r["status"] == "ok"),
        "pandoc_status": dict(Counter(r["status"] for r in pandoc.values())),
        "papers_compared": sum(1 for e in papers.values() if "strict" in e),
        "agreement": {
            name: {"matched": m, "pandoc_headings": t, "share": m / t if t else None}
            for name, (m, t) in totals.items()
        },
        "per_paper": papers,
    }


# ----------------------------------------------------------------------------- output


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = results["speed"]
    quality = results["quality"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(speed)
    values = [speed[name]["papers_per_second"] for name in names]
    labels = [name.replace(", ", "\n") for name in names]
    left.bar(labels, values, color=["#ee854a" if name.startswith("pandoc") else "#4878d0" for name in names])
    for x, v in enumerate(values):
        left.text(x, v, f"{v:.2f}", ha="center", va="bottom")
    left.set_ylabel("papers / second")
    left.tick_params(axis="x", labelsize=8)
    left.set_title(f"Throughput on {quality['papers']} real papers")
    shares = {
        "record with\n>= 1 section": quality["with_sections_share"],
        "record with\n>= 1 titled\nheading": quality["with_titled_heading_share"],
        "heading\nagreement,\nstrict": quality["agreement"]["strict"]["share"] or 0.0,
        "heading\nagreement,\ncanonical": quality["agreement"]["canonical"]["share"] or 0.0,
    }
    right.bar(list(shares), list(shares.values()), color="#6acc64")
    right.tick_params(axis="x", labelsize=8)
    for x, v in enumerate(shares.values()):
        right.text(x, v, f"{100 * v:.1f}%", ha="center", va="bottom")
    right.axhline(0.97, color="grey", linestyle="--", linewidth=1)
    right.axhline(0.90, color="grey", linestyle=":", linewidth=1)
    right.set_ylim(0, 1.08)
    right.set_title(f"Quality (agreement over {quality['papers_compared']} papers pandoc converts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict, command: str) -> str:
    quality = results["quality"]
    speed_rows = "\n".join(
        f"| {name} | {s['papers']} | {s['seconds']:.1f} | {s['papers_per_second']:.2f} | "
        + (
            " -> ".join(f"{x:.1f}" for x in s["load_average_before_after"])
            if "load_average_before_after" in s
            else ""
        )
        + " |"
        for name, s in results["speed"].items()
    )
    rejects = ", ".join(f"{k}: {v}" for k, v in sorted(quality["rejects"].items())) or "none"
    pandoc_status = ", ".join(f"{k}: {v}" for k, v in sorted(quality["pandoc_status"].items()))
    strict, canonical = quality["agreement"]["strict"], quality["agreement"]["canonical"]
    return (
        f"{SECTION}\n\n"
        f"Command: `{command}` ({platform.machine()}, {results['cpus']} CPUs shared with other jobs, "
        f"{results['pandoc_version']}).\n\n"
        f"{quality['papers']} real papers (`../shared/data/latex`, read in place). Our build is the full "
        "`build_corpus` (parse, Parquet, report, card) with no length filter and no deduplication; pandoc "
        "converts each manifest main file to JSON from inside its folder, one process, capped at "
        f"{results['pandoc_memory_kb'] // 1000} MB and {results['pandoc_timeout']} s.\n\n"
        "| run | papers | seconds | papers/s | 1-min load average, before -> after |\n|---|---|---|---|---|\n"
        f"{speed_rows}\n\n"
        "pandoc's total is dominated by the papers it gives up on (time limit, memory cap); the last row "
        "counts only the papers it converts (median "
        f"{results['speed']['pandoc, converted papers only']['median_seconds']:.3f} s each). The load "
        "average says how busy the machine's cores were with other work: scaling with `num_proc` needs "
        f"idle cores, so compare it with the {results['cpus']} CPUs.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| records | {quality['records']} of {quality['papers']} (rejects: {rejects}) |\n"
        f"| crashes of the build | {results['crashes']} |\n"
        f"| record with >= 1 section | {quality['with_sections']} ({100 * quality['with_sections_share']:.1f}%) |\n"
        f"| record with >= 1 titled heading | {quality['with_titled_heading']} "
        f"({100 * quality['with_titled_heading_share']:.1f}%) |\n"
        f"| pandoc | {pandoc_status} |\n"
        f"| heading agreement, strict | {strict['matched']} of {strict['pandoc_headings']} "
        f"({100 * (strict['share'] or 0):.1f}%) over {quality['papers_compared']} papers |\n"
        f"| heading agreement, canonical | {canonical['matched']} of {canonical['pandoc_headings']} "
        f"({100 * (canonical['share'] or 0):.1f}%) |\n"
        f"| same records at every num_proc | {results['deterministic']} |\n\n"
        "Heading agreement is the share of pandoc's section and subsection titles (levels 1-2, or 2-3 "
        "when the paper has chapters) that our record also has as a heading, matched as a multiset. "
        "*Strict* compares after case folding and whitespace collapsing only. *Canonical* also applies "
        "NFKC, folds typographic quotes, and writes pandoc's citations, references and math the way we "
        "do (`[CITE]`, `[REF]`, our math rule), so that a title is compared on its words rather than on "
        "how each tool prints a formula. A section is any entry of `sections`: a paper without any "
        "heading (a letter) has one untitled section holding its text, hence the separate row for "
        "titled headings. Per-paper counts: `bench/results/corpus.json` (the missed titles are printed, "
        "not stored: they are the papers' words); figure: `bench/results/corpus.png`.\n"
    )


def without_titles(results: dict) -> dict:
    """The results without any heading text: titles are the papers' own words, and the papers'
    text stays out of the project. Counts remain."""
    results = json.loads(json.dumps(results))
    for entry in results["quality"]["per_paper"].values():
        for name in ("strict", "canonical"):
            if name in entry:
                entry[name]["missed"] = len(entry[name]["missed"])
    for result in results["pandoc"].values():
        for key in ("headings", "headings_canonical"):
            if key in result:
                result[key] = len(result[key])
        result.pop("error", None)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data.resolve()
    manifest = read_manifest(data)
    if shutil.which(args.pandoc) is None:
        raise SystemExit(f"{args.pandoc}: not found (apt-get install pandoc)")
    version = subprocess.run([args.pandoc, "--version"], capture_output=True, text=True, check=True).stdout
    pandoc: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for row in tqdm(manifest, desc="pandoc", unit=" papers"):
        pandoc[row["folder"]] = run_pandoc(data / row["folder"], row["main_tex"], args)
    pandoc_seconds = time.perf_counter() - start
    pandoc_load = (load_before, os.getloadavg()[0])

    builds = {n: run_build(data, n, args.timeout) for n in args.num_proc}
    first = builds[args.num_proc[0]]
    speed = {
        f"ours, num_proc={n}": {
            "papers": build["report"].get("inputs", 0),
            "seconds": build["seconds"],
            "papers_per_second": build["report"].get("inputs", 0) / build["seconds"],
            "load_average_before_after": build["load_average"],
        }
        for n, build in builds.items()
    }
    speed["pandoc, 1 process"] = {
        "papers": len(manifest),
        "seconds": pandoc_seconds,
        "papers_per_second": len(manifest) / pandoc_seconds,
        "load_average_before_after": pandoc_load,
    }
    successes = [r["seconds"] for r in pandoc.values() if r["status"] == "ok"]
    speed["pandoc, converted papers only"] = {
        "papers": len(successes),
        "seconds": sum(successes),
        "papers_per_second": len(successes) / sum(successes) if successes else 0.0,
        "median_seconds": statistics.median(successes) if successes else None,
    }
    texts = [{i: r["text"] for i, r in b["rows"].items()} for b in builds.values()]
    results = {
        "data": str(data),
        "cpus": os.cpu_count(),
        "pandoc_version": version.splitlines()[0],
        "pandoc_timeout": args.pandoc_timeout,
        "pandoc_memory_kb": args.pandoc_memory_kb,
        "speed": speed,
        "crashes": sum(1 for b in builds.values() if b["crash"]),
        "crash_messages": [b["crash"] for b in builds.values() if b["crash"]],
        "deterministic": all(t == texts[0] for t in texts),
        "build_inputs": first["report"].get("inputs"),
        "quality": evaluate(manifest, first, pandoc),
        "pandoc": pandoc,
    }
    for folder, entry in results["quality"]["per_paper"].items():
        for name in ("strict", "canonical"):
            for title in entry.get(name, {}).get("missed", []):
                print(f"missed ({name}) in {folder}: {title}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(without_titles(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    plot(results, args.plot)
    command = "python bench/corpus.py" + (" --write-benchmarks" if args.write_benchmarks else "")
    section = markdown(results, command)
    print(section)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
