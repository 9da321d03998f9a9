"""bench/attention.py's GPU mode: ready for the day a GPU is lent, and refusing cleanly until then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "attention.py"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be tested")
def test_cuda_mode_refuses_in_one_line_without_a_gpu(tmp_path: Path) -> None:
    result = run("--device", "cuda", "--dtype", "bf16", "--lengths", "4096", "--output-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "bench/attention.py --device cuda: no CUDA device here (torch.cuda.is_available() is False)"
    )
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_flex_configs_are_gpu_only() -> None:
    result = run("--configs", "structbert-flex", "--lengths", "512")
    assert result.returncode == 2 and "FlexAttention has no CPU backward" in result.stderr
    sys.path.insert(0, str(BENCH.parent))
    try:
        import attention
    finally:
        sys.path.remove(str(BENCH.parent))
    assert "structbert-flex" in attention.parse_args(["--device", "cuda"]).configs
    assert "structbert-flex" not in attention.parse_args([]).configs
