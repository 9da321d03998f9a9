"""Figures and the Markdown report of the attention analysis and the experiment.

Everything here reads the JSON results (``attention.json``, ``results.json``) and writes files;
no model code, so the report can be rebuilt from the numbers alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MEASURE_TITLES = {
    "heading_share": "body -> heading attention share",
    "keyword_attention": "heading -> own-section keyword attention",
    "entropy": "attention entropy (nats)",
    "distance": "mean attention distance (tokens)",
}
MODE_TITLES = {"structure": "with structure mask", "plain": "without structure mask"}


def _grid(values: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array(values, dtype=float)


def _heatmap(
    ax, grid: np.ndarray, title: str, *, cmap: str, vmin: float, vmax: float, label: str, fig
) -> None:
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    # Print values in the cells when the grid is small enough to read them.
    if grid.size <= 64:
        for (row, col), value in np.ndenumerate(grid):
            if not math.isnan(value):
                # White on the dark end of viridis, black elsewhere (the diverging map is light at 0).
                dark = cmap == "viridis" and (value - vmin) < 0.5 * (vmax - vmin)
                ax.text(
                    col,
                    row,
                    f"{value:.2g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    if not np.isfinite(grid).any():
        ax.text(0.5, 0.5, "no qualifying tokens", transform=ax.transAxes, ha="center", va="center")
    fig.colorbar(image, ax=ax, label=label)


def _row_means(grid: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each row; NaN for a row with none (nanmean would warn)."""
    finite = np.isfinite(grid)
    counts = finite.sum(axis=1)
    sums = np.where(finite, grid, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(grid), np.nan), where=counts > 0)


def _finite_range(*grids: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([g[np.isfinite(g)].ravel() for g in grids] or [np.zeros(0)])
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def attention_figures(results: dict, output_dir: Path) -> list[Path]:
    """One heatmap figure per measure and the per-layer line plot.

    A measure's figure has one row per checkpoint (layer x head, with and without the structure
    mask side by side, on one colour scale) and, with two or more checkpoints, a last row with the
    difference of the first two on a diverging scale centred at zero.
    """
    output_dir = Path(output_dir)
    labels = list(results["checkpoints"])
    measures = list(results["measures"])
    probe = results.get("probe", {})
    subtitle = f"probe: {probe.get('kind', '?')}, {probe.get('documents', '?')} documents"
    paths: list[Path] = []

    for measure in measures:
        grids = {
            label: [_grid(results["checkpoints"][label]["modes"][m][measure]) for m in MODE_TITLES]
            for label in labels
        }
        vmin, vmax = _finite_range(*[g for pair in grids.values() for g in pair])
        rows = len(labels) + (1 if len(labels) >= 2 else 0)
        fig, axes = plt.subplots(rows, 2, figsize=(10, 3.2 * rows), constrained_layout=True, squeeze=False)
        for row, label in enumerate(labels):
            for col, mode in enumerate(MODE_TITLES):
                _heatmap(
                    axes[row, col],
                    grids[label][col],
                    f"{label}, {MODE_TITLES[mode]}",
                    cmap="viridis",
                    vmin=vmin,
                    vmax=vmax,
                    label=measure,
                    fig=fig,
                )
        if len(labels) >= 2:
            first, second = labels[:2]
            diffs = [grids[first][col] - grids[second][col] for col in range(2)]
            low, high = _finite_range(*diffs)
            bound = max(abs(low), abs(high), 1e-12)
            for col, mode in enumerate(MODE_TITLES):
                _heatmap(
                    axes[-1, col],
                    diffs[col],
                    f"{first} minus {second}, {MODE_TITLES[mode]}",
                    cmap="RdBu_r",
                    vmin=-bound,
                    vmax=bound,
                    label=f"difference in {measure}",
                    fig=fig,
                )
        fig.suptitle(f"{MEASURE_TITLES.get(measure, measure)} per layer and head\n{subtitle}")
        path = output_dir / f"attention_heatmap_{measure}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, measure in zip(axes.ravel(), measures):
        layers = 0
        for k, label in enumerate(labels):
            for mode, style in zip(MODE_TITLES, ("-", "--")):
                per_layer = _row_means(_grid(results["checkpoints"][label]["modes"][mode][measure]))
                layers = max(layers, len(per_layer))
                color = colors[k % len(colors)]
                name = f"{label}, {MODE_TITLES[mode]}"
                # Distinct markers keep a model visible when its line lies on top of another's.
                marker, size = ("o", 8) if k == 0 else ("x", 7) if k == 1 else ("s", 5)
                ax.plot(
                    range(len(per_layer)), per_layer, style, color=color, marker=marker, ms=size, label=name
                )
        ax.set_title(MEASURE_TITLES.get(measure, measure), fontsize=10)
        ax.set_xticks(range(layers))
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{measure} (mean over heads)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Attention measures per layer\n{subtitle}")
    path = output_dir / "attention_per_layer.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    # The per-layer summary reads first; the heatmaps give the detail.
    return [path, *paths]


# ----------------------------------------------------------------------------- experiment report

SMOKE_MAX_STEPS = 10_000
SMOKE_MAX_DOCS = 1_000


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pretrain_figure(model_dirs: dict[str, Path], output: Path) -> Path | None:
    """Training loss per step of every model, from each ``metrics.jsonl``."""
    curves = {}
    for variant, model_dir in model_dirs.items():
        points = [
            (row["step"], row[key])
            for row in _read_jsonl(Path(model_dir) / "metrics.jsonl")
            for key in ("loss", "train_loss")
            if key in row and "step" in row
        ]
        if points:
            curves[variant] = points
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for variant, points in curves.items():
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker=".", label=variant)
    ax.set_title("Masked-LM training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats per masked token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def downstream_figure(results: dict, output: Path) -> Path | None:
    """F1 (mean and std over seeds) per SciREX task and model."""
    variants = list(results["models"])
    tasks = sorted({t for v in variants for t in results["models"][v]["downstream"]})
    if not tasks:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        scores = [results["models"][variant]["downstream"].get(t, {}).get("f1", {}) for t in tasks]
        ax.bar(
            [x + i * width for x in range(len(tasks))],
            [s.get("mean", float("nan")) for s in scores],
            width,
            yerr=[s.get("std", 0.0) for s in scores],
            capsize=4,
            label=variant,
        )
    ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(tasks))], tasks)
    ax.set_title("SciREX test F1 (mean and std over seeds)")
    ax.set_xlabel("task")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def is_smoke_test(results: dict, build_report: dict) -> bool:
    settings = results["settings"]
    records = build_report.get("records") or 0
    return settings.get("max_steps", 0) < SMOKE_MAX_STEPS or records < SMOKE_MAX_DOCS


def _intro(results: dict, build_report: dict) -> list[str]:
    settings = results["settings"]
    if is_smoke_test(results, build_report):
        lines = [
            f"> **This run is a smoke test, not evidence.** It pre-trained for {settings.get('max_steps')} steps "
            f"on {build_report.get('records', '?')} documents. Differences between the two models at this "
            "scale are noise; they show that the pipeline works end to end, nothing about whether structure "
            "helps. Scale it up with `--sources`, `--model-config`, `--init-from`, `--max-steps` and `--scirex`.",
            "",
        ]
    else:
        lines = [
            "> Read the numbers with their spread: differences smaller than the std over seeds are not "
            "differences, and the pre-training bits are from one seed.",
            "",
        ]
    return lines + [
        "Two models were pre-trained with the same tokenizer, seed, steps and data order. They see the same "
        "tokens; the **structured** model's title and heading tokens attend globally (`arxiv_structured`), "
        "the **plain** model's do not (`arxiv_plain`).",
        "",
    ]


def _corpus_section(build_report: dict) -> list[str]:
    splits = build_report.get("splits", {})
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(build_report.get("reasons", {}).items())) or "none"
    row = [build_report.get(k) for k in ("inputs", "records", "rejects")]
    row += [splits.get("train"), splits.get("validation"), reasons]
    header = ["inputs", "records", "rejects", "train", "validation", "reject reasons"]
    return ["## Corpus", "", *_table(header, [row])]


def _pretrain_section(results: dict, output_dir: Path, model_dirs: dict[str, Path] | None) -> list[str]:
    rows = []
    for variant, model in results["models"].items():
        scores = model["pretrain"]
        keys = ("eval_bits_per_masked_token", "eval_perplexity", "eval_loss", "step")
        rows.append([variant, *[scores.get(k) for k in keys], f"`{model['checkpoint']}`"])
    lines = ["", "## Pre-training", ""]
    lines += _table(["model", "bits per masked token", "perplexity", "eval loss", "step", "checkpoint"], rows)
    lines += ["", "Bits per masked token are measured on the validation split (lower is better).", ""]
    if model_dirs and (figure := pretrain_figure(model_dirs, output_dir / "figures" / "pretrain_loss.png")):
        lines += [f"![training loss]({figure.relative_to(output_dir)})", ""]
    return lines


def _attention_section(results: dict) -> list[str]:
    attention = results["attention"]
    probe = attention.get("probe", {})
    lines = [
        "## Attention patterns",
        "",
        f"Probe: {probe.get('documents', '?')} validation documents, {probe.get('tokens', '?')} tokens "
        f"(at most {probe.get('max_length', '?')} per document), {probe.get('heading_tokens', '?')} heading "
        f"tokens, {probe.get('keyword_tokens', '?')} keyword tokens; keywords: {probe.get('keywords', '?')}. "
        "Each model is probed with its structure mask and without it. Values are means over all layers "
        "and heads; the figures show every layer and head.",
        "",
    ]
    measures = ["heading_share", "keyword_attention", "entropy", "distance"]
    columns = [(v, m) for v in results["models"] for m in MODE_TITLES]
    lines += _table(
        ["measure", *[f"{v}, {MODE_TITLES[m]}" for v, m in columns]],
        [
            [MEASURE_TITLES[name], *[attention["summary"].get(f"{v}/{m}/{name}") for v, m in columns]]
            for name in measures
        ],
    )
    lines += [
        "",
        "Dashed lines and right-hand panels: the same model run without its structure mask. The last row of "
        "each heatmap figure is the structured model minus the plain one.",
        "",
    ]
    return lines + [f"![{Path(f).stem}]({f})" for f in attention.get("figures", [])] + [""]


def _scirex_section(results: dict, output_dir: Path, scirex_runs: dict[str, dict] | None) -> list[str]:
    variants = list(results["models"])
    lines = ["## SciREX", ""]
    tasks = sorted({t for v in variants for t in results["models"][v]["downstream"]})
    if not tasks:
        return lines + ["Not run: pass `--scirex PATH/train.jsonl` to fine-tune both models on SciREX.", ""]
    rows = []
    for task in tasks:
        for metric in ("f1", "precision", "recall"):
            row = [task, metric]
            for v in variants:
                score = results["models"][v]["downstream"].get(task, {}).get(metric)
                row.append(
                    f"{score['mean']:.4f} ± {score['std']:.4f} (n={len(score['values'])})" if score else "n/a"
                )
            rows.append(row)
    lines += _table(["task", "metric", *variants], rows)
    lines += [
        "",
        f"Mean ± std over seeds {results['settings'].get('seeds')}, on the held-out part of SciREX's deterministic "
        "doc_id split (documents per split below).",
        "",
    ]
    if scirex_runs:
        header = ["model", "task", "documents (train / dev / test)", "scored split", "steps per seed"]
        rows = [
            [
                variant,
                task,
                " / ".join(str((run.get("split_sizes") or {}).get(k, "?")) for k in ("train", "dev", "test")),
                run.get("eval_split"),
                run.get("steps_per_seed"),
                "yes" if run.get("use_structure") else "no",
            ]
            for variant, tasks_run in scirex_runs.items()
            for task, run in tasks_run.items()
        ]
        lines += [*_table([*header, "headings global"], rows), ""]
    if figure := downstream_figure(results, output_dir / "figures" / "scirex_f1.png"):
        lines += [f"![SciREX F1]({figure.relative_to(output_dir)})", ""]
    return lines


def write_report(
    results: dict,
    output_dir: Path,
    *,
    build_report: dict,
    timings: dict[str, float],
    model_cards: Sequence[str] = (),
    model_dirs: dict[str, Path] | None = None,
    scirex_runs: dict[str, dict] | None = None,
) -> Path:
    """``report.md`` with every setting, the tables, and the figures embedded.

    ``scirex_runs``: per model and task, the fine-tuning runs' ``split_sizes``, ``eval_split``,
    ``steps_per_seed`` and ``use_structure`` (as ``finetune`` reports them).
    """
    output_dir = Path(output_dir)
    (output_dir / "figures").mkdir(exist_ok=True)
    lines = ["# StructFormer experiment: structured versus plain pre-training", ""]
    lines += _intro(results, build_report)
    lines += _corpus_section(build_report)
    lines += _pretrain_section(results, output_dir, model_dirs)
    lines += _attention_section(results)
    lines += _scirex_section(results, output_dir, scirex_runs)
    lines += ["## Run", ""]
    lines += _table(["step", "seconds"], [[name, round(seconds, 1)] for name, seconds in timings.items()])
    lines += ["", f"Total: {sum(timings.values()):.1f} s.", ""]
    if model_cards:
        lines += [f"Model cards: {', '.join(f'`models/{v}/README.md`' for v in model_cards)}.", ""]
    lines += ["## Settings", ""]
    lines += _table(
        ["option", "value"], [[f"`{k}`", f"`{v}`"] for k, v in sorted(results["settings"].items())]
    )
    lines += ["", "All numbers are also in `results.json`.", ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
