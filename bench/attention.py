"""Time and memory of StructBERT's attention paths against dense attention and Longformer, by length.

One run measures, at each length (512 ... 16384 by default), with hidden size 768, 12 heads, 2 layers,
window 256 and one global token per 128 tokens (batch 1, fp32, CPU):

- a masked-LM training step (forward, the MLM head on the 15% masked positions as
  ``trainers/pretrain.py`` runs it, and backward; dropout on) of
  ``StructBertForMaskedLM`` with its default path, with ``eager`` and with ``sdpa``, and of transformers'
  ``LongformerForMaskedLM`` of the same size and window;
- the self-attention layer alone (mask construction, forward and backward): the linear ``blocked`` path
  against the dense ``eager`` and ``sdpa`` paths.

On a GPU (``--device cuda``, e.g. ``--dtype bf16 --lengths 4096 8192 16384``) the same configurations run
there, plus FlexAttention (``structbert-flex``, ``attention-flex``: what "auto" picks on CUDA, compiled by
transformers); memory is then ``torch.cuda.max_memory_allocated``. Without a CUDA device it refuses at once.

Every configuration runs in its own subprocess, so peak memory (``ru_maxrss``) is its own, under an
address-space cap (``--max-memory-gb``, CPU only). A configuration predicted to exceed the cap (or the time limit)
from its smaller lengths is skipped, and a run that hits the cap is recorded as OOM; both report the
estimated memory. Results go to a JSON file, a PNG plot and a markdown table; ``--write-benchmarks``
puts the table into BENCHMARKS.md:

    python bench/attention.py --write-benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

SECTION = "## Attention and training step (`bench/attention.py`)"
SECTION_CUDA = "## Attention and training step on a GPU (`bench/attention.py --device cuda`)"
DEFAULT_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]
HIDDEN, HEADS, LAYERS, INTERMEDIATE, WINDOW, GLOBAL_EVERY = 768, 12, 2, 3072, 256, 128

# name -> (kind, attention implementation, whether its memory and time grow quadratically)
CONFIGS = {
    "structbert": ("step", None, False),
    "structbert-eager": ("step", "eager", True),
    "structbert-sdpa": ("step", "sdpa", True),
    "longformer": ("step", None, False),
    "attention-blocked": ("layer", "blocked", False),
    "attention-eager": ("layer", "eager", True),
    "attention-sdpa": ("layer", "sdpa", True),
    # FlexAttention has no backward on CPU: GPU only.
    "structbert-flex": ("step", "flex_attention", False),
    "attention-flex": ("layer", "flex_attention", False),
}
GPU_ONLY = ("structbert-flex", "attention-flex")
LABELS = {
    "structbert": "StructBERT (default path)",
    "structbert-eager": "StructBERT eager",
    "structbert-sdpa": "StructBERT sdpa",
    "longformer": "Longformer",
    "attention-blocked": "attention layer, blocked",
    "attention-eager": "attention layer, eager",
    "attention-sdpa": "attention layer, sdpa",
    "structbert-flex": "StructBERT flex_attention",
    "attention-flex": "attention layer, flex_attention",
}
GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=None, help="default: all that run on --device"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="parameters and activations"
    )
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=8.0,
        help="address-space cap of each measuring subprocess, beyond what it holds after start-up",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to one configuration")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step (median)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="MLM vocabulary (default: BERT's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--note", default=None, help="a sentence for BENCHMARKS.md, e.g. how loaded the machine was"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--benchmarks-file", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument(
        "--write-benchmarks", action="store_true", help="replace this script's section of BENCHMARKS.md"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the report from an earlier run's JSON, run nothing",
    )
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = [name for name in CONFIGS if args.device == "cuda" or name not in GPU_ONLY]
    elif args.device == "cpu" and set(args.configs) & set(GPU_ONLY):
        parser.error(
            f"{', '.join(sorted(set(args.configs) & set(GPU_ONLY)))}: FlexAttention has no CPU backward"
        )
    return args


def check_device(device: str) -> None:
    """Refuse at once, in one line, a device this machine does not have."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench/attention.py --device cuda: no CUDA device here (torch.cuda.is_available() is False)"
        )


# --------------------------------------------------------------------------- measuring subprocess


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _cap_address_space(max_memory_gb: float) -> None:
    with open("/proc/self/status", encoding="ascii") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + int(max_memory_gb * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _inputs(length: int, vocab_size: int, device: str = "cpu"):
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab_size, (1, length), generator=generator)
    global_attention_mask = torch.zeros(1, length, dtype=torch.long)
    global_attention_mask[:, ::GLOBAL_EVERY] = 1
    labels = torch.full_like(input_ids, -100)
    masked = torch.rand(1, length, generator=generator) < 0.15
    labels[masked] = input_ids[masked]
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "global_attention_mask": global_attention_mask,
        "labels": labels,
    }
    return {key: value.to(device) for key, value in batch.items()}


def _training_step(
    name: str,
    implementation: str | None,
    length: int,
    vocab_size: int,
    device: str = "cpu",
    dtype: str = "fp32",
):
    """A closure running one masked-LM forward and backward."""
    import torch
    from transformers import LongformerConfig, LongformerForMaskedLM

    from structformer.modeling import StructBertConfig, StructBertForMaskedLM

    sizes = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "attention_window": WINDOW,
    }
    if name == "longformer":
        # RoBERTa-style positions start at pad_token_id + 1 = 2.
        model = LongformerForMaskedLM(LongformerConfig(**sizes, max_position_embeddings=length + 2))
    else:
        # The global tokens come from global_attention_mask alone, exactly as for Longformer.
        # FlexAttention has no attention dropout: its step runs without it (the others keep BERT's 0.1).
        dropout = {"attention_probs_dropout_prob": 0.0} if implementation == "flex_attention" else {}
        config = StructBertConfig(
            **sizes, **dropout, max_position_embeddings=length, global_attention_types=[]
        )
        kwargs = {} if implementation is None else {"attn_implementation": implementation}
        model = StructBertForMaskedLM._from_config(config, **kwargs)
    model.to(device=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32).train()
    inputs = _inputs(length, vocab_size, device)
    labels = inputs.pop("labels")
    selected = labels != -100
    encoder = getattr(model, model.base_model_prefix)
    head = model.lm_head if name == "longformer" else model.cls

    def step() -> None:
        # As trainers/pretrain.py does: the MLM head only on the masked positions.
        model.zero_grad(set_to_none=True)
        hidden = encoder(**inputs)[0]  # (1, L, E)
        logits = head(hidden[selected])  # (M, vocab)
        torch.nn.functional.cross_entropy(logits, labels[selected]).backward()

    return step, torch


def _attention_layer(implementation: str, length: int, device: str = "cpu", dtype: str = "fp32"):
    """Closures running the self-attention layer alone (its mask, forward and backward), and its core.

    The core is what differs between the paths: the mask and the attention given the projected
    queries, keys and values. The layer adds the three (L, E) x (E, E) projections every path shares.
    """
    import torch

    from structformer.modeling import StructBertConfig
    from structformer.modeling import modeling_structbert as structbert

    config = StructBertConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=1, attention_window=WINDOW
    )
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    layer = (
        structbert.StructBertSelfAttention(config, layer_idx=0).to(device=device, dtype=torch_dtype).train()
    )
    if implementation == "flex_attention":
        layer.dropout.p = 0.0  # FlexAttention has no attention dropout
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, length, HIDDEN, generator=generator).to(device=device, dtype=torch_dtype)
    hidden.requires_grad_()
    key_ok = torch.ones(1, length, dtype=torch.bool, device=device)
    is_global = torch.zeros(1, length, dtype=torch.bool, device=device)
    is_global[:, ::GLOBAL_EVERY] = True

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        hidden.grad = None
        pattern = structbert.build_attention_pattern(implementation, WINDOW, key_ok, is_global, None)
        out, _ = layer(hidden, pattern)
        out.sum().backward()

    # The core: the same module with identity projections, so that Q = K = V = the input and only the
    # mask and the attention itself are timed, through the model's own dispatch.
    core_layer = (
        structbert.StructBertSelfAttention(config, layer_idx=0).to(device=device, dtype=torch_dtype).train()
    )
    core_layer.dropout.p = layer.dropout.p
    core_layer.query = core_layer.key = core_layer.value = torch.nn.Identity()

    def core() -> None:
        hidden.grad = None
        pattern = structbert.build_attention_pattern(implementation, WINDOW, key_ok, is_global, None)
        out, _ = core_layer(hidden, pattern)
        out.sum().backward()

    return step, core, torch


def _timed(step, repeats: int, synchronize=lambda: None) -> list[float]:
    """Seconds of `repeats` calls after one warm-up call (`synchronize` waits for a GPU's queued work)."""
    step()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)


def run_worker(name: str, length: int, args: argparse.Namespace) -> dict:
    kind, implementation, _ = CONFIGS[name]
    # Import first: the cap applies to what the measurement allocates, not to loading the libraries.
    import transformers.models.longformer.modeling_longformer  # noqa: F401

    import structformer.modeling  # noqa: F401

    cuda = args.device == "cuda"
    if not cuda:  # an address-space cap breaks CUDA's initialisation
        _cap_address_space(args.max_memory_gb)
    core = None
    try:
        if kind == "step":
            step, torch = _training_step(
                name, implementation, length, args.vocab_size, args.device, args.dtype
            )
        else:
            step, core, torch = _attention_layer(implementation, length, args.device, args.dtype)
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        synchronize = torch.cuda.synchronize if cuda else lambda: None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = torch.cuda.memory_allocated() if cuda else _rss_bytes()
        times = _timed(step, args.repeats, synchronize)
        # The peak is read before the core runs, so it is the layer's (the core needs less).
        peak = (
            torch.cuda.max_memory_allocated()
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        core_times = _timed(core, args.repeats, synchronize) if core else None
    except (RuntimeError, MemoryError) as error:
        if isinstance(error, MemoryError) or "alloc" in str(error).lower() or "memory" in str(error).lower():
            return {"status": "oom", "error": str(error).splitlines()[0][:200]}
        raise
    result = {
        "status": "ok",
        "seconds": times[len(times) // 2],
        "seconds_all": times,
        "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before,
        "step_memory_bytes": peak - rss_before,
        "threads": torch.get_num_threads(),
    }
    if core_times:
        result["core_seconds"] = core_times[len(core_times) // 2]
    return result


# --------------------------------------------------------------------------- orchestration


def _fit(points: list[tuple[int, float]], quadratic: bool):
    """Least-squares fit of y = a*L (+ b*L^2, for dense attention) with non-negative coefficients."""
    import numpy as np

    candidates = [[2], [1, 2], [1]] if quadratic else [[1]]
    best = None
    for powers in candidates:
        if len(powers) > len(points):
            continue
        design = np.array([[float(L) ** p for p in powers] for L, _ in points])
        values = np.array([y for _, y in points], dtype=float)
        coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
        if (coefficients < 0).any():
            continue
        residual = float(((design @ coefficients - values) ** 2).sum())
        if best is None or residual < best[0]:
            best = (residual, powers, coefficients)
    _, powers, coefficients = best if best else (0.0, [1], np.zeros(1))

    def predict(length: int) -> float:
        return float(sum(c * float(length) ** p for c, p in zip(coefficients, powers)))

    return predict


def _estimate(results: dict, name: str, length: int) -> dict | None:
    """Predicted step memory (and peak RSS) and time of a configuration at `length` from its smaller runs."""
    done = [(L, r) for L, r in sorted(results[name].items()) if r["status"] == "ok" and length > L]
    if not done:
        return None
    quadratic = CONFIGS[name][2]
    memory = _fit([(L, r["step_memory_bytes"]) for L, r in done], quadratic)(length)
    seconds = _fit([(L, r["seconds"]) for L, r in done], quadratic)(length)
    baseline = done[-1][1]["rss_before_bytes"]
    estimate = {"step_memory_bytes": memory, "peak_rss_bytes": baseline + memory, "seconds": seconds}
    if all("core_seconds" in r for _, r in done):
        estimate["core_seconds"] = _fit([(L, r["core_seconds"]) for L, r in done], quadratic)(length)
    return estimate


def run_one(name: str, length: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        str(length),
        "--max-memory-gb",
        str(args.max_memory_gb),
        "--repeats",
        str(args.repeats),
        "--vocab-size",
        str(args.vocab_size),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--configs",
        name,
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode == 0 and lines:
        return json.loads(lines[-1])
    error = (completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"])[-1]
    # The address-space cap can also surface outside torch's allocator (a killed or aborted process).
    oom = "memory" in completed.stderr.lower() or completed.returncode in (-9, -6)
    return {"status": "oom" if oom else "error", "error": error[:300]}


def run_all(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    results: dict[str, dict[int, dict]] = {name: {} for name in args.configs}
    cap = args.max_memory_gb * GIB
    jobs = [(length, name) for length in sorted(args.lengths) for name in args.configs]
    with tqdm(jobs, desc="bench/attention", unit="run") as progress:
        for length, name in progress:
            progress.set_postfix_str(f"{name} L={length}")
            estimate = _estimate(results, name, length)
            reason = None
            if estimate and estimate["step_memory_bytes"] > cap:
                reason = "memory cap"
            elif estimate and estimate["seconds"] * (args.repeats + 1) > args.timeout:
                reason = "time limit"
            elif any(r["status"] != "ok" for L, r in results[name].items() if length > L):
                reason = "shorter length failed"
            if reason:
                results[name][length] = {"status": "skipped", "reason": reason, "estimate": estimate}
                continue
            result = run_one(name, length, args)
            if result["status"] != "ok":
                result["estimate"] = estimate
            results[name][length] = result
    return results


# --------------------------------------------------------------------------- report


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def _time_cell(result: dict, key: str) -> str:
    if result["status"] == "ok":
        return f"{result[key]:.3f}"
    estimate = result.get("estimate") or {}
    guess = f" (est. {estimate[key]:.0f})" if key in estimate else ""
    return {"oom": "OOM", "timeout": "timeout", "skipped": "skipped"}.get(result["status"], "error") + guess


def _memory_cell(result: dict, cap_gb: float) -> str:
    if result["status"] == "ok":
        return f"{_gib(result['peak_rss_bytes'])} ({_gib(result['step_memory_bytes'])})"
    estimate = result.get("estimate")
    guess = f", est. {_gib(estimate['peak_rss_bytes'])}" if estimate else ""
    if result["status"] == "oom" or result.get("reason") == "memory cap":
        return f"OOM/skipped at cap {cap_gb:g}{guess}"
    if result["status"] == "skipped":
        return f"skipped ({result['reason']}){guess}"
    return result["status"] + guess


def _ratio(results: dict, numerator: str, denominator: str, length: int, key: str) -> str:
    a = results.get(numerator, {}).get(length)
    b = results.get(denominator, {}).get(length)
    if not a or not b or a["status"] != "ok":
        return "-"
    if b["status"] == "ok":
        return f"{b[key] / a[key]:.2f}x"
    if key in (b.get("estimate") or {}):
        return f"~{b['estimate'][key] / a[key]:.1f}x (est.)"
    return "-"


SHORT = {
    "structbert": "default",
    "structbert-eager": "eager",
    "structbert-sdpa": "sdpa",
    "longformer": "Longformer",
    "attention-blocked": "blocked",
    "attention-eager": "eager",
    "attention-sdpa": "sdpa",
    "structbert-flex": "flex",
    "attention-flex": "flex",
}


def _tables(
    results: dict,
    names: list[str],
    baseline: str,
    lengths: list[int],
    cap_gb: float,
    units: list[tuple[str, str]],
) -> list[str]:
    """One table per (unit, result key); ratio columns are other / baseline (> 1: the baseline wins)."""
    names = [n for n in names if n in results]
    if not names:
        return []
    others = [n for n in names if n != baseline] if baseline in results else []
    lines: list[str] = []
    for unit, key in units:
        header = ["length"] + [f"{SHORT[n]} {unit}" for n in names]
        header += [f"{SHORT[n]} / {SHORT[baseline]}" for n in others]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for length in lengths:
            row = [str(length)]
            row += [
                _memory_cell(results[n][length], cap_gb)
                if unit == "GiB"
                else _time_cell(results[n][length], key)
                for n in names
            ]
            row += [_ratio(results, baseline, n, length, key) for n in others]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _targets(results: dict, lengths: list[int]) -> list[str]:
    lines = []
    if "structbert" in results and "longformer" in results and 4096 in lengths:
        ratio = _ratio(results, "structbert", "longformer", 4096, "seconds")
        lines.append(
            f"- Training step at 4096 tokens, Longformer time / StructBERT time: {ratio} (target >= 1.6x)."
        )
    if "attention-blocked" in results:
        for dense in ("attention-eager", "attention-sdpa"):
            if dense in results:
                ran = [L for L in lengths if results[dense][L]["status"] == "ok"]
                for L in sorted({4096, ran[-1]} & set(ran)) if ran else []:
                    layer = _ratio(results, "attention-blocked", dense, L, "seconds")
                    core = _ratio(results, "attention-blocked", dense, L, "core_seconds")
                    lines.append(
                        f"- Attention alone at {L} tokens, {SHORT[dense]} time / blocked time: layer {layer}, "
                        f"core {core} (target >= 5x)."
                    )
    memory = results.get("structbert", {})
    ran = [L for L in lengths if memory.get(L, {}).get("status") == "ok"]
    if len(ran) >= 2:
        per_token = ", ".join(f"{memory[L]['step_memory_bytes'] / L / 1024:.0f}" for L in ran)
        lines.append(
            f"- StructBERT step memory per token (KiB) at {', '.join(map(str, ran))}: {per_token} "
            "(flat = linear in length)."
        )
        top = ran[-1]
        for dense in ("structbert-eager", "structbert-sdpa"):
            if dense in results:
                ratio = _ratio(results, "structbert", dense, top, "step_memory_bytes")
                lines.append(
                    f"- At {top} tokens {LABELS[dense]} needs {ratio} StructBERT's step memory (target >= 4x)."
                )
    return lines


def _load(args: argparse.Namespace) -> str:
    """The machine's load around the run: other jobs on the same cores slow every cell."""
    loads = getattr(args, "load_average", None)
    return f"{loads[0]:.1f} at the start, {loads[1]:.1f} at the end" if loads else "not recorded"


def markdown(results: dict, args: argparse.Namespace, command: str) -> str:
    lengths = sorted(args.lengths)
    threads = {r.get("threads") for runs in results.values() for r in runs.values() if r.get("threads")}
    lines = [
        SECTION_CUDA if args.device == "cuda" else SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {sorted(threads) or '-'}, "
        f"python {platform.python_version()}, 5-minute load average {_load(args)}. Batch 1, {args.dtype}, device {args.device}, hidden {HIDDEN}, {HEADS} heads, {LAYERS} layers, "
        f"intermediate {INTERMEDIATE}, window {WINDOW}, one global token per {GLOBAL_EVERY} tokens, "
        f"MLM vocabulary {args.vocab_size} with the head on the 15% masked positions only (as "
        f"`trainers/pretrain.py` does), dropout on. Times are the median of {args.repeats} steps after a "
        f"warm-up. Memory is the peak RSS of a fresh process per cell in GiB, with the step's own part "
        f"(peak minus the RSS before the first step) in brackets; each process is capped at "
        f"{args.max_memory_gb:g} GiB beyond its start-up size. Cells predicted from the smaller lengths to "
        f"exceed the cap or the {args.timeout:g} s limit are skipped, with the estimate (a*L + b*L^2 fit)."
        + (
            " On the GPU, memory is torch.cuda.max_memory_allocated (no cap) in place of the RSS."
            if args.device == "cuda"
            else ""
        ),
        *(["", f"Note: {args.note}"] if args.note else []),
        "",
        "Masked-LM training step (forward + backward, no optimizer); `default` is StructBERT's default path, ratios are "
        "other / default:",
        "",
        *_tables(
            results,
            ["structbert", "structbert-eager", "structbert-sdpa", "longformer"],
            "structbert",
            lengths,
            args.max_memory_gb,
            [("s", "seconds"), ("GiB", "step_memory_bytes")],
        ),
        "Self-attention alone, forward + backward with its mask: `layer` is StructBertSelfAttention "
        "(with the Q/K/V projections every path shares), `core` the attention given Q, K and V; "
        "ratios are dense / blocked:",
        "",
        *_tables(
            results,
            ["attention-blocked", "attention-eager", "attention-sdpa"],
            "attention-blocked",
            lengths,
            args.max_memory_gb,
            [("layer s", "seconds"), ("core s", "core_seconds"), ("GiB", "step_memory_bytes")],
        ),
        "Targets:",
        "",
        *_targets(results, lengths),
        "",
        f"Raw numbers: `{args.output_dir / 'attention.json'}`; plot: `{args.output_dir / 'attention.png'}`.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    for row, kind in enumerate(("step", "layer")):
        for name, runs in results.items():
            if CONFIGS[name][0] != kind:
                continue
            ok = sorted((L, r) for L, r in runs.items() if r["status"] == "ok")
            estimated = sorted(
                (L, r["estimate"]) for L, r in runs.items() if r["status"] != "ok" and r.get("estimate")
            )
            for column, key in enumerate(("seconds", "step_memory_bytes")):
                scale = 1 if key == "seconds" else GIB
                (line,) = axes[row][column].plot(
                    [L for L, _ in ok], [r[key] / scale for _, r in ok], marker="o", label=LABELS[name]
                )
                if estimated and ok:
                    axes[row][column].plot(
                        [ok[-1][0]] + [L for L, _ in estimated],
                        [ok[-1][1][key] / scale] + [e[key] / scale for _, e in estimated],
                        linestyle="--",
                        marker="x",
                        color=line.get_color(),
                    )
    titles = [
        ["training step: time (s)", "training step: step memory (GiB)"],
        ["attention layer: time (s)", "attention layer: step memory (GiB)"],
    ]
    for row in range(2):
        for column in range(2):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("sequence length (tokens)")
            axis.set_title(titles[row][column])
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(
        "StructBERT attention paths vs dense and Longformer (dashed: estimates where skipped/OOM)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_section(benchmarks_file: Path, section: str) -> None:
    """Replace the text under the section's heading, up to the next ``## `` heading (a new heading is appended)."""
    lines = benchmarks_file.read_text(encoding="utf-8").splitlines()
    heading = section.splitlines()[0]
    if heading not in lines:
        lines += ["", heading]
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:]
    benchmarks_file.write_text("\n".join(new) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        name, length = args.worker
        print(json.dumps(run_worker(name, int(length), args)))
        return 0
    if args.from_json:
        payload = json.loads(args.from_json.read_text(encoding="utf-8"))
        results = {name: {int(L): r for L, r in runs.items()} for name, runs in payload["results"].items()}
        for key in ("lengths", "repeats", "vocab_size", "max_memory_gb", "timeout", "load_average"):
            setattr(args, key, payload["settings"].get(key))
        args.configs = list(results)
        command = payload.get("command") or shlex.join(["python", "bench/attention.py"])
        for runs in results.values():
            for result in runs.values():
                estimate = result.get("estimate")
                # The memory cap comes first, as in run_all.
                if (
                    result["status"] == "skipped"
                    and estimate
                    and estimate["step_memory_bytes"] > args.max_memory_gb * GIB
                ):
                    result["reason"] = "memory cap"
    else:
        check_device(args.device)
        command = shlex.join(["python", "bench/attention.py", *(sys.argv[1:] if argv is None else argv)])
        load_before = os.getloadavg()[1]
        results = run_all(args)
        args.load_average = (load_before, os.getloadavg()[1])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "results": {name: {str(L): r for L, r in runs.items()} for name, runs in results.items()},
        "command": command,
    }
    stem = "attention" if args.device == "cpu" else f"attention-{args.device}-{args.dtype}"
    (args.output_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plot(results, args.output_dir / f"{stem}.png")
    section = markdown(results, args, command)
    print(section)
    if args.write_benchmarks:
        write_section(args.benchmarks_file, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
