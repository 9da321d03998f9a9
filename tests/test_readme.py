"""Every code block of README.md and docs/ARCHITECTURE.md runs as written, or says why it is not run.

Python blocks of one document run in order in one fresh process, each in a fresh namespace, in a
temporary folder (so a block may read the files an earlier one wrote, as a reader following the page
would, but not its variables). A bash block runs unless the line before its fence is
``<!-- not run in tests: REASON -->``. Illustrative blocks are fenced ``json``, ``text`` or ``yaml``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/ARCHITECTURE.md")
LANGUAGES = {"python", "bash", "json", "text", "yaml"}
SKIP_MARK = re.compile(r"^<!-- not run in tests: (?P<reason>\S.*\S) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None


def code_blocks(document: str) -> list[Block]:
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{document}:{i + 1}: unclosed code block"
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = SKIP_MARK.match(previous)
        blocks.append(
            Block(
                document,
                i + 1,
                opening["lang"],
                "\n".join(lines[i + 1 : end]) + "\n",
                mark["reason"] if mark else None,
            )
        )
        i = end + 1
    return blocks


def test_code_blocks_are_found_and_labelled():
    blocks = [b for d in DOCUMENTS for b in code_blocks(d)]
    unlabelled = [f"{b.document}:{b.line}" for b in blocks if b.lang not in LANGUAGES]
    assert unlabelled == [], f"fence these as one of {sorted(LANGUAGES)}"
    by_lang = {lang: sum(b.lang == lang for b in blocks) for lang in ("python", "bash")}
    assert by_lang["python"] >= 5 and by_lang["bash"] >= 8, by_lang
    marked_non_bash = [f"{b.document}:{b.line}" for b in blocks if b.skip_reason and b.lang != "bash"]
    assert marked_non_bash == [], "only bash blocks may be marked as not run"


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    return env


# Runs each block in a fresh namespace; stops at the first failure and names its line.
DRIVER = """
import json, sys, traceback
blocks = json.loads(sys.argv[1])
for line, code in blocks:
    try:
        exec(compile(code, f"<block at line {line}>", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: the block at line {line}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document, tmp_path):
    blocks = [(b.line, b.code) for b in code_blocks(document) if b.lang == "python"]
    assert blocks
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(blocks)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{document}:\n{result.stderr[-4000:]}"


def bash_blocks() -> list[Block]:
    return [b for d in DOCUMENTS for b in code_blocks(d) if b.lang == "bash"]


@pytest.mark.parametrize("block", bash_blocks(), ids=lambda b: f"{b.document}:{b.line}")
def test_bash_block_runs_or_says_why_not(block, tmp_path):
    if block.skip_reason:
        pytest.skip(f"{block.document}:{block.line}: {block.skip_reason}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{block.document}:{block.line}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    )


# What the README's commands and snippets write (a folder relative to where they run) ...
OUTPUTS = (
    r"--output-dir\s+([^\s\\]+)",
    r"--to\s+([^\s\\]+)",
    r"--local-dir\s+([^\s\\]+)",
    r"save_pretrained\(\"([^\"]+)\"\)",
    r"output_dir=\"([^\"]+)\"",
    r"build_corpus\(\[[^\]]*\],\s*\"([^\"]+)\"",
)
# ... and the outputs of earlier commands that later ones read.
INPUTS = (
    r"--checkpoints((?:\s+(?!--)[^\s\\]+)+)",
    r"--probe\s+([^\s\\]+)",
    r"--results\s+([^\s\\]+)",
    r"--ner-predictions\s+([^\s\\]+)",
    r"publish\s+(?:model|dataset)\s+([^\s\\]+)",
)


def _top_folder(path: str) -> str:
    return path.strip().rstrip("/").split("/")[0]


def readme_paths() -> tuple[set[str], list[str]]:
    code = "\n".join(
        b.code.replace("\\\n", " ") for b in code_blocks("README.md") if b.lang in ("bash", "python")
    )
    written = {_top_folder(m) for pattern in OUTPUTS for m in re.findall(pattern, code)}
    read = [p for pattern in INPUTS for m in re.findall(pattern, code) for p in m.split()]
    return written, read


def test_readme_commands_read_what_earlier_commands_write():
    written, read = readme_paths()
    assert {"experiment", "my-structbert", "corpus", "attn"} <= written
    assert len(read) >= 6
    # Placeholders (MODEL_DIR, ORG/...) are the reader's to fill in; every other path must have a writer.
    orphans = [p for p in read if not p.isupper() and _top_folder(p) not in written]
    assert orphans == []


def test_folders_the_readme_writes_are_git_ignored():
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    written, _ = readme_paths()
    not_ignored = [
        folder
        for folder in sorted(written)
        if subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", f"{folder}/file"], cwd=ROOT, capture_output=True
        ).returncode
        != 0
    ]
    assert not_ignored == []


def test_model_inputs_are_cut_to_the_tokenizers_length_but_packing_input_is_not(tmp_path):
    from structformer.trainers.data import tokenize_with_structure
    from structformer.trainers.tokenizer import train_wordpiece

    text = "A Title\n\n" + " ".join(f"word{i % 7} text" for i in range(40))
    tokenizer = train_wordpiece([text], 60, tmp_path, min_frequency=1, model_max_length=16)
    headers = [{"start": 0, "end": 7, "level": "title"}]
    inputs = tokenize_with_structure(tokenizer, text, headers, ["title"], return_tensors="pt")
    assert inputs["input_ids"].shape == (1, 16) and inputs["input_ids"][0, -1] == tokenizer.sep_token_id
    assert tokenize_with_structure(tokenizer, text, headers, return_tensors="pt", max_length=20)[
        "input_ids"
    ].shape == (1, 20)
    whole = tokenize_with_structure(tokenizer, text, headers)  # lists: for packing, every token
    assert len(whole["input_ids"]) > 16


def test_command_1_is_a_short_labelled_smoke_run():
    from structformer.experiment import parse_args

    top = code_blocks("README.md")[0]
    line = next(line for line in top.code.splitlines() if "structformer experiment" in line)
    args = parse_args(line.split("structformer experiment", 1)[1].split())
    # 6 models of 50 steps: 28 s wall, 43 s of CPU on 2 idle cores (README); 200 steps each take about 4x that.
    assert len(args.seeds) * len(args.arms) * args.max_steps <= 300
    assert "smoke run" in top.code and args.output_dir == "experiment"
