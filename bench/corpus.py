"""Corpus build at scale: today's build against the datatrove build, a projection to all of arXiv, and pandoc.

Builds the corpus from a folder of paper folders (by default the 119 real papers of ``../shared/data/latex``,
listed in its ``MANIFEST.tsv``), each build in a fresh process whose process tree is sampled for memory:

- *today's build*: ``build_corpus`` of revision ``BASELINE_REV``, the last one whose ``build-corpus`` ran its
  own process pool (exported with ``git archive`` into a temporary folder; ``--num-proc`` processes);
- *the datatrove build*: ``build_corpus`` of this checkout, as 1 and 2 tasks run 1 and 2 at a time
  (``--workers``), one parse process each.

It reports papers per second, the parse and merge times, CPU time and peak memory (the summed PSS of the build's
processes), checks that every build wrote the same Parquet bytes, and projects the full arXiv (1.13M papers) on
one machine of 64 cores and on 16 such nodes from the measured per-paper cost. When pandoc is installed it also
runs pandoc on the same papers and compares headings (the section "Corpus build against pandoc").

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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks_md import write_section
from tqdm.auto import tqdm

SECTION = "## Corpus build against pandoc (`bench/corpus.py`)"
SCALE_SECTION = "## Corpus build at scale: today's build and the datatrove build (`bench/corpus.py`)"
REPO_ROOT = Path(__file__).resolve().parents[1]
# The last revision whose build-corpus ran its own process pool, before it became datatrove blocks.
BASELINE_REV = "cab39496fdda1ee7af5954a3f15e7e0a7aad426e"
ARXIV_PAPERS = 1_130_000  # what the StructFormer paper parsed
# Not measured: the order of size of arXiv's bulk source tars ("several TB"), for the read rate they need.
ARXIV_SOURCE_TB = 5.0
CORES_PER_NODE = 64
NODES = 16
_SAMPLE_SECONDS = 0.1
MERGE_COPIES = (1, 20)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "latex",
        help="folder of paper folders with a MANIFEST.tsv (folder and main_tex columns)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="parallelism of each engine")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of today's build")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-paper time limit, seconds")
    parser.add_argument("--pandoc", default="pandoc", help="pandoc executable (skipped when not found)")
    parser.add_argument("--pandoc-timeout", type=int, default=60, help="seconds per paper")
    parser.add_argument("--pandoc-memory-kb", type=int, default=4_000_000, help="ulimit -v for pandoc, KiB")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "corpus.json")
    parser.add_argument(
        "--scale-output", type=Path, default=REPO_ROOT / "bench" / "results" / "corpus_scale.json"
    )
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "bench" / "results" / "corpus.png")
    parser.add_argument("--benchmarks-file", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace this script's sections of BENCHMARKS.md"
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


# ----------------------------------------------------------------------------- the builds

# Runs one build in a fresh process and prints its timings and report as the last line of stdout. The
# parse stage of today's build is its _parse_all; the merge of the datatrove build is merge_corpus.
DRIVER = """
import json, sys, time
from pathlib import Path
spec = json.loads(sys.argv[1])
from structformer.dataset_scripts import build
timings = {}
def timed(module, name, key, before=None):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        if before:
            before(*args)
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            timings[key] = time.perf_counter() - start
    setattr(module, name, wrapper)
if spec["engine"] == "today":
    timed(build, "_parse_all", "parse")
else:
    from structformer.dataset_scripts import merge
    import shutil
    def journal_bytes(work, *rest):
        timings["journal_bytes"] = sum(p.stat().st_size for p in (Path(work) / "journal").glob("*.jsonl"))
        if spec.get("keep_journal"):
            shutil.copytree(Path(work) / "journal", spec["keep_journal"])
    timed(merge, "merge_corpus", "merge", journal_bytes)
start = time.perf_counter()
report = build.build_corpus(spec["sources"], spec["output"], build.BuildOptions(**spec["options"]))
timings["total"] = time.perf_counter() - start
print(json.dumps({"timings": timings, "report": {k: report[k] for k in ("inputs", "records", "rejects", "reasons", "rejected")}}))
"""


# The merge alone on COPIES copies of a build's journal (ids and keys made distinct), timed in a fresh process.
MERGE_DRIVER = """
import json, sys, time
from pathlib import Path
journal, work, output, copies, options = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
from structformer.dataset_scripts import build, merge
(work / "journal").mkdir(parents=True)
lines = [json.loads(line) for path in sorted(Path(journal).glob("*.jsonl")) for line in path.open()]
with (work / "journal" / "00000.jsonl").open("w") as sink:
    for copy in range(copies):
        for item in lines:
            item = dict(item, key=f"{item['key']}~{copy}", id=f"{item['id']}~{copy}")
            sink.write(json.dumps(item, ensure_ascii=False) + "\\n")
start = time.perf_counter()
report = merge.merge_corpus(work, output, build.BuildOptions(**json.loads(options)))
print(json.dumps({"seconds": time.perf_counter() - start, "inputs": report["inputs"]}))
"""


def time_merge(journal: Path, copies: int, tmp: Path, options: dict) -> dict:
    """The merge's seconds on ``copies`` copies of ``journal``'s papers (``inputs`` of them)."""
    work, output = tmp / f"merge-{copies}" / ".build-corpus", tmp / f"merge-{copies}"
    command = [sys.executable, "-c", MERGE_DRIVER, str(journal), str(work), str(output), str(copies)]
    done = subprocess.run(
        [*command, json.dumps(options)], cwd=tmp, capture_output=True, text=True, check=True
    )
    shutil.rmtree(output)
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_revision(rev: str, dest: Path) -> Path:
    """``structformer`` of revision ``rev`` as an importable package under ``dest`` (the folders laid out
    as ``package-dir`` maps them); returns the folder to put on ``PYTHONPATH``."""
    raw = dest / "raw"
    raw.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "structformer", "dataset_scripts"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(raw)], input=archive, check=True)
    package = dest / "site" / "structformer"
    shutil.copytree(raw / "structformer", package)
    shutil.copytree(raw / "dataset_scripts", package / "dataset_scripts")
    return dest / "site"


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sample_memory(pid: int, peak: list[int], done: threading.Event) -> None:
    """Keep in ``peak[0]`` the largest summed PSS (KiB) of ``pid``'s process tree: shared pages of forked
    processes are counted once, as they are in memory."""
    while not done.is_set():
        peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(pid)))
        time.sleep(_SAMPLE_SECONDS)


def run_build(
    name: str,
    engine: str,
    options: dict,
    data: Path,
    work: Path,
    pythonpath: Path | None,
    keep_journal: Path | None = None,
) -> dict:
    """One build in a fresh process; its timings, CPU time, peak memory and the Parquet it wrote."""
    output = work / name.replace(" ", "_").replace(",", "").replace("=", "")
    spec = {"engine": engine, "sources": [str(data)], "output": str(output), "options": options}
    if keep_journal is not None:
        spec["keep_journal"] = str(keep_journal)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    log = work / f"{output.name}.log"
    # From the temporary folder: run from the repository, `python -c` would import its structformer first.
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(spec)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        peak, done = [0], threading.Event()
        sampler = threading.Thread(target=_sample_memory, args=(process.pid, peak, done), daemon=True)
        sampler.start()
        stdout, _ = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name}: the build failed (exit code {process.returncode}):\n{tail}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    timings = result["timings"]
    if "parse" not in timings:
        timings["parse"] = timings["total"] - timings["merge"]
    timings.setdefault("merge", timings["total"] - timings["parse"])
    parquet = {
        path.relative_to(output).as_posix(): path.read_bytes()
        for path in sorted((output / "data").rglob("*.parquet"))
    }
    papers = result["report"]["inputs"]
    return {
        "engine": engine,
        "options": {k: v for k, v in options.items() if k in ("num_proc", "tasks", "workers")},
        "papers": papers,
        "records": result["report"]["records"],
        "reasons": result["report"]["reasons"],
        "rejected": result["report"]["rejected"],
        "seconds": seconds,
        "papers_per_second": papers / seconds,
        "build_seconds": timings["total"],
        "parse_seconds": timings["parse"],
        "merge_seconds": timings["merge"],
        "journal_bytes": timings.get("journal_bytes"),
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_memory_mib": peak[0] / 1024,
        "load_average_before_after": (load_before, os.getloadavg()[0]),
        "parquet": parquet,
        "output": str(output),
    }


def structured_rows(output: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    for shard in sorted((output / "data" / "arxiv_structured").glob("*.parquet")):
        rows.update({row["id"]: row for row in pq.read_table(shard).to_pylist()})
    return rows


def projection(runs: dict[str, dict], merges: list[dict]) -> dict[str, Any]:
    """The full arXiv from the measured per-paper cost of the datatrove build (see the assumptions in
    the BENCHMARKS.md section). The merge is timed alone on 1 and on many copies of the build's journal:
    seconds = fixed (imports, the card) + per paper, through those two points."""
    one = next(
        run for run in runs.values() if run["engine"] == "datatrove" and run["options"]["workers"] == 1
    )
    two = next(
        (run for run in runs.values() if run["engine"] == "datatrove" and run["options"]["workers"] == 2),
        None,
    )
    papers = one["papers"]
    parse_per_paper = one["parse_seconds"] / papers  # one core, reading and parsing
    small, large = merges[0], merges[-1]
    merge_per_paper = (large["seconds"] - small["seconds"]) / (large["inputs"] - small["inputs"])
    fixed = max(0.0, small["seconds"] - merge_per_paper * small["inputs"])
    bytes_per_paper = one["journal_bytes"] / papers
    efficiency = min(1.0, one["parse_seconds"] / two["parse_seconds"] / 2) if two else 1.0
    cores = {"1 node x 64 cores": CORES_PER_NODE, f"{NODES} nodes x 64 cores": NODES * CORES_PER_NODE}
    result: dict[str, Any] = {
        "papers": ARXIV_PAPERS,
        "measured_papers": papers,
        "parse_seconds_per_paper": parse_per_paper,
        "merge_fixed_seconds": fixed,
        "merge_seconds_per_paper": merge_per_paper,
        "merge_timed_inputs": [merge["inputs"] for merge in merges],
        "cpu_seconds_per_paper": one["cpu_seconds"] / papers,
        "two_worker_efficiency": efficiency,
        "journal_bytes_per_paper": bytes_per_paper,
        "peak_memory_mib_per_task": one["peak_memory_mib"],
        "setups": {},
    }
    for name, count in cores.items():
        parse_hours = ARXIV_PAPERS * parse_per_paper / (count * efficiency) / 3600
        merge_hours = (fixed + ARXIV_PAPERS * merge_per_paper) / 3600
        result["setups"][name] = {
            "cores": count,
            "parse_hours": parse_hours,
            "merge_hours": merge_hours,
            "total_hours": parse_hours + merge_hours,
            "journal_gib": ARXIV_PAPERS * bytes_per_paper / 2**30,
            "memory_gib_per_node": min(count, CORES_PER_NODE) * one["peak_memory_mib"] / 1024,
            # to read ARXIV_SOURCE_TB while the tasks parse, all nodes together
            "read_gb_per_second": ARXIV_SOURCE_TB * 1000 / (parse_hours * 3600),
        }
    return result


def scale_markdown(results: dict, command: str) -> str:
    runs = results["runs"]
    rows = "\n".join(
        f"| {name} | {run['papers']} | {run['seconds']:.1f} | {run['papers_per_second']:.2f} | "
        f"{run['parse_seconds']:.1f} | {run['merge_seconds']:.1f} | {run['cpu_seconds']:.1f} | "
        f"{run['peak_memory_mib']:.0f} | "
        + " -> ".join(f"{x:.1f}" for x in run["load_average_before_after"])
        + " |"
        for name, run in runs.items()
    )
    proj = results["projection"]
    setups = "\n".join(
        f"| {name} | {s['cores']} | {s['parse_hours']:.1f} | {s['merge_hours']:.1f} | {s['total_hours']:.1f} | "
        f"{s['journal_gib']:.0f} | {s['memory_gib_per_node']:.0f} |"
        for name, s in proj["setups"].items()
    )
    first = next(iter(runs.values()))
    papers, records = first["papers"], first["records"]
    other = ", ".join(f"{count} {reason}" for reason, count in sorted(first["reasons"].items())) or "none"
    setups_by_name = list(proj["setups"].values())
    return (
        f"{SCALE_SECTION}\n\n"
        f"Command: `{command}` ({platform.machine()}, {results['cpus']} CPUs shared with other jobs, python "
        f"{platform.python_version()}; today's build is revision `{results['baseline_rev'][:12]}`).\n\n"
        f"The {papers} inputs of `../shared/data/latex` (read in place): {records} real papers become records, "
        f"the rest are rejects ({other}: the folder's own README and manifest). No length filter, no "
        "deduplication. Each "
        "build runs in a fresh process: *today's build* is the build of the revision before datatrove (one "
        "process pool of `num_proc` parse processes), *datatrove* is this checkout's `build-corpus` as N tasks "
        "run N at a time by `LocalPipelineExecutor`, one parse process each, then the merge. Seconds are wall "
        "time from start to the written corpus; *parse* and *merge* split it (for today's build, *merge* is "
        "everything after its parse loop: index, Parquet, report, card). CPU is user + system time of every "
        "process of the build; memory is the peak of the summed PSS of its processes, sampled every "
        f"{_SAMPLE_SECONDS * 1000:.0f} ms.\n\n"
        "| build | inputs | seconds | inputs/s | parse s | merge s | CPU s | peak memory MiB | 1-min load, before -> after |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Every build wrote the same Parquet bytes: **{results['deterministic']}**. Both engines run the same "
        "parse code, one paper per process; the machine is shared (see the load column), and two runs of one "
        "build differ here by up to about 20%, which is as much as the engines differ.\n\n"
        f"**Projection to arXiv ({proj['papers']:,} papers).** From the 1-worker datatrove build: "
        f"{proj['parse_seconds_per_paper']:.3f} s of parse stage per paper on one core "
        f"({proj['cpu_seconds_per_paper']:.3f} s of CPU per paper, all stages), a merge of "
        f"{proj['merge_fixed_seconds']:.1f} s plus {1000 * proj['merge_seconds_per_paper']:.2f} ms per paper "
        f"(the merge alone, timed on {proj['merge_timed_inputs'][0]} and {proj['merge_timed_inputs'][-1]} inputs: "
        "copies of this build's journal), "
        f"{proj['journal_bytes_per_paper'] / 1024:.0f} KiB of journal per paper, "
        f"{proj['peak_memory_mib_per_task']:.0f} MiB peak per task; 2 workers ran at "
        f"{100 * proj['two_worker_efficiency']:.0f}% of linear speed-up here.\n\n"
        "| setup | cores | parse hours | merge hours | total hours | journals, GiB | memory per node, GiB |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{setups}\n\n"
        "Assumptions: arXiv's papers cost what these do on average (they are real papers of every size, but "
        "GitHub-hosted ones; arXiv has more short ones, so this leans pessimistic); the parse stage is CPU-bound "
        "and keeps the 2-worker efficiency measured here on every core (one task per core, `--num-proc 1`, "
        "tasks >> cores so that none waits for a straggler); the sources can be read as fast as the tasks "
        f"parse them: for {ARXIV_SOURCE_TB:.0f} TB of bulk tars (an assumption, not measured) that is "
        f"{setups_by_name[0]['read_gb_per_second']:.1f} GB/s on one node and "
        f"{setups_by_name[-1]['read_gb_per_second']:.0f} GB/s for the cluster, a parallel file system's rate "
        "rather than one NFS server's; the merge is one process whatever the cluster (it sorts every record "
        "by id and reads them back by offset), so it is the same on 1 and on 16 nodes, projected linearly from "
        f"{proj['merge_timed_inputs'][-1]} inputs: on 16 nodes it takes longer than the parse, "
        "and it is what to spread next (by id range). Memory per node is the measured peak of a 1-task build "
        "(the build process, datatrove's manager, the task and its parse process) times the tasks a node runs "
        "at once: an upper bound, since only the task and its parse process repeat. "
        f"Per-run numbers: `{results['scale_output']}`.\n"
    )


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "`": "'"})


def normalize_heading(title: str, canonical: bool = False) -> str:
    """Case-folded with whitespace collapsed, as the issue defines agreement. ``canonical``
    also applies NFKC and folds typographic quotes to ASCII (pandoc renders ``'`` as a right
    quote, we keep it)."""
    if canonical:
        title = unicodedata.normalize("NFKC", title).translate(_QUOTES)
    return " ".join(title.casefold().split())


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


def pandoc_markdown(results: dict, command: str) -> str:
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
        f"{quality['papers']} real papers (`../shared/data/latex`, read in place). Our builds are the runs of "
        "the section above (parse, Parquet, report, card; no length filter, no deduplication); pandoc "
        "converts each manifest main file to JSON from inside its folder, one process, capped at "
        f"{results['pandoc_memory_kb'] // 1000} MB and {results['pandoc_timeout']} s.\n\n"
        "| run | papers | seconds | papers/s | 1-min load average, before -> after |\n|---|---|---|---|---|\n"
        f"{speed_rows}\n\n"
        "pandoc's total is dominated by the papers it gives up on (time limit, memory cap); the last row "
        "counts only the papers it converts (median "
        f"{results['speed']['pandoc, converted papers only']['median_seconds']:.3f} s each). The load "
        "average says how busy the machine's cores were with other work: scaling with workers needs "
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
        f"| same Parquet bytes in every build | {results['deterministic']} |\n\n"
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
    common = {"min_chars": None, "max_chars": None, "dedupe": False, "resume": False, "progress": False}
    common["timeout"] = args.timeout
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="structformer-corpus-bench-") as tmp:
        baseline = export_revision(args.baseline_rev, Path(tmp) / "baseline")
        plan = [(f"today's build, num_proc={n}", "today", {"num_proc": n}, baseline) for n in args.workers]
        plan += [
            (
                f"datatrove, {n} task(s), {n} worker(s)",
                "datatrove",
                {"num_proc": 1, "tasks": n, "workers": n},
                None,
            )
            for n in args.workers
        ]
        for name, engine, options, pythonpath in plan:
            print(f"building: {name}", file=sys.stderr)
            keep = Path(tmp) / "journal" if engine == "datatrove" and options["workers"] == 1 else None
            runs[name] = run_build(name, engine, {**common, **options}, data, Path(tmp), pythonpath, keep)
        # The merge alone on a larger journal: its fixed cost (imports, the card) against its cost per paper.
        options = {**common, "num_proc": 1, "tasks": 1, "workers": 1}
        merges = [time_merge(Path(tmp) / "journal", copies, Path(tmp), options) for copies in MERGE_COPIES]
        parquet = [run.pop("parquet") for run in runs.values()]
        first_rows = structured_rows(Path(next(iter(runs.values()))["output"]))
    rejected = next(iter(runs.values()))["rejected"]
    for run in runs.values():
        run.pop("output")
        run.pop("rejected")
    scale = {
        "data": str(data),
        "cpus": os.cpu_count(),
        "baseline_rev": args.baseline_rev,
        "runs": runs,
        "deterministic": all(files == parquet[0] for files in parquet) and bool(parquet[0]),
        "merges": merges,
        "projection": projection(runs, merges),
        "scale_output": str(args.scale_output.relative_to(REPO_ROOT))
        if args.scale_output.is_relative_to(REPO_ROOT)
        else str(args.scale_output),
    }
    args.scale_output.parent.mkdir(parents=True, exist_ok=True)
    args.scale_output.write_text(json.dumps(scale, indent=2) + "\n", encoding="utf-8")
    command = "python bench/corpus.py" + (" --write-benchmarks" if args.write_benchmarks else "")
    section = scale_markdown(scale, command)
    print(section)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SCALE_SECTION, section)

    if shutil.which(args.pandoc) is None:
        print(f"{args.pandoc}: not found, the comparison with pandoc is skipped (apt-get install pandoc)")
        return 0
    compare_with_pandoc(
        args,
        data,
        manifest,
        runs,
        first_rows,
        rejected,
        deterministic=scale["deterministic"],
        command=command,
    )
    return 0


def compare_with_pandoc(
    args: argparse.Namespace,
    data: Path,
    manifest: list[dict[str, str]],
    runs: dict[str, dict],
    rows: dict[str, dict],
    rejected: list[dict],
    *,
    deterministic: bool,
    command: str,
) -> None:
    version = subprocess.run([args.pandoc, "--version"], capture_output=True, text=True, check=True).stdout
    pandoc: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for row in tqdm(manifest, desc="pandoc", unit=" papers"):
        pandoc[row["folder"]] = run_pandoc(data / row["folder"], row["main_tex"], args)
    pandoc_seconds = time.perf_counter() - start
    speed = {
        name: {
            key: run[key] for key in ("papers", "seconds", "papers_per_second", "load_average_before_after")
        }
        for name, run in runs.items()
    }
    speed["pandoc, 1 process"] = {
        "papers": len(manifest),
        "seconds": pandoc_seconds,
        "papers_per_second": len(manifest) / pandoc_seconds,
        "load_average_before_after": (load_before, os.getloadavg()[0]),
    }
    successes = [r["seconds"] for r in pandoc.values() if r["status"] == "ok"]
    speed["pandoc, converted papers only"] = {
        "papers": len(successes),
        "seconds": sum(successes),
        "papers_per_second": len(successes) / sum(successes) if successes else 0.0,
        "median_seconds": statistics.median(successes) if successes else None,
    }
    first = next(iter(runs.values()))
    build = {"rows": rows, "report": {"rejected": rejected}}
    results = {
        "data": str(data),
        "cpus": os.cpu_count(),
        "pandoc_version": version.splitlines()[0],
        "pandoc_timeout": args.pandoc_timeout,
        "pandoc_memory_kb": args.pandoc_memory_kb,
        "speed": speed,
        "crashes": 0,  # a build that fails stops the benchmark
        "deterministic": deterministic,
        "build_inputs": first["papers"],
        "quality": evaluate(manifest, build, pandoc),
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
    section = pandoc_markdown(results, command)
    print(section)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, SECTION, section)


if __name__ == "__main__":
    sys.exit(main())
