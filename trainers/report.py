"""Figures and the Markdown report of the attention analysis and the experiment.

Everything here reads the JSON results (``attention.json``, ``results.json``) and writes files;
no model code, so the report can be rebuilt from the numbers alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from structformer.trainers.run_files import METRICS_FILE
from structformer.trainers.statistics import (  # noqa: E402
    BOOTSTRAP_RESAMPLES,
    paired_bootstrap,
    t_interval,
    verdict,
)
from structformer.trainers.tasks import BASE_METRICS, TASKS  # noqa: E402

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


def per_layer_line_styles(labels: Sequence[str]) -> dict[tuple[str, str], dict]:
    """``plot`` keywords for each (checkpoint, mode) line of the per-layer figure.

    With two or three layers a dashed line looks solid, so the modes differ by more than the dash: each
    checkpoint has a colour pair (dark with the structure mask, light without), each mode its marker
    (filled circle with, hollow square without), and no two lines share colour and marker.
    """
    pairs = plt.get_cmap("tab20").colors  # 10 (dark, light) pairs
    styles = {}
    for k, label in enumerate(labels):
        dark, light = pairs[(2 * k) % len(pairs)], pairs[(2 * k + 1) % len(pairs)]
        # Smaller markers for later checkpoints keep a model visible when its line lies on another's.
        size = max(9 - 2 * k, 4)
        styles[label, "structure"] = {"color": dark, "ls": "-", "marker": "o", "ms": size}
        styles[label, "plain"] = {
            "color": light,
            "ls": "--",
            "marker": "s",
            "ms": size,
            "mfc": "none",
            "mew": 1.5,
        }
    return styles


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
    styles = per_layer_line_styles(labels)
    for ax, measure in zip(axes.ravel(), measures):
        layers = 0
        for label in labels:
            for mode in MODE_TITLES:
                per_layer = _row_means(_grid(results["checkpoints"][label]["modes"][mode][measure]))
                layers = max(layers, len(per_layer))
                name = f"{label}, {MODE_TITLES[mode]}"
                ax.plot(range(len(per_layer)), per_layer, label=name, **styles[label, mode])
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
            for row in _read_jsonl(Path(model_dir) / METRICS_FILE)
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


def downstream_figure(results: dict, output: Path, scirex_runs: dict[str, dict] | None = None) -> Path | None:
    """F1 (mean and std over fine-tuning seeds) per SciREX task and model; for scirex-salient both the
    mention-level F1 and SciREX's salient-cluster F1, with the baselines of ``scirex_runs`` (when given)
    as horizontal lines over their group."""
    variants = list(results["models"])
    tasks = sorted({t for v in variants for t in results["models"][v]["downstream"]})
    if not tasks:
        return None
    groups: list[tuple[str, str, str]] = []  # (task, metric, label)
    for task in tasks:
        groups.append((task, "f1", f"{task}\n(mentions)" if task == "scirex-salient" else task))
        if any("cluster_f1" in results["models"][v]["downstream"].get(task, {}) for v in variants):
            groups.append((task, "cluster_f1", f"{task}\n(salient clusters, SciREX)"))
        if any("end_to_end_f1" in results["models"][v]["downstream"].get(task, {}) for v in variants):
            groups.append((task, "end_to_end_f1", f"{task}\n(salient clusters, end to end)"))
    baselines = next(
        (
            run["baselines"]
            for runs in (scirex_runs or {}).values()
            for name, run in (runs or {}).items()
            if name == "scirex-salient" and run.get("baselines")
        ),
        {},
    )
    lines: dict[int, list[tuple[str, float, str]]] = {}
    for index, (task, metric, _) in enumerate(groups):
        if task != "scirex-salient" or not baselines:
            continue
        if metric == "f1" and "mentions" in baselines:
            lines[index] = [("all mentions salient", baselines["mentions"]["all_positive"]["f1"], ":")]
        elif metric == "cluster_f1" and "salient_clusters" in baselines:
            clusters = baselines["salient_clusters"]
            k = clusters["min_mentions"]["k"]
            lines[index] = [
                ("all clusters salient", clusters["all_salient"]["f1"], ":"),
                (f">= {k} mentions", clusters["min_mentions"]["f1"], "--"),
                ("oracle", clusters["oracle"]["f1"], "-."),
            ]
    fig, ax = plt.subplots(figsize=(max(7, 2.6 * len(groups)), 4.2), constrained_layout=True)
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        scores = [results["models"][variant]["downstream"].get(t, {}).get(m, {}) for t, m, _ in groups]
        ax.bar(
            [x + i * width for x in range(len(groups))],
            [s.get("mean", float("nan")) for s in scores],
            width,
            yerr=[s.get("std", 0.0) for s in scores],
            capsize=4,
            label=variant,
        )
    for index, entries in lines.items():
        for name, value, style in entries:
            ax.hlines(
                value,
                index - width / 2 - 0.05,
                index + 0.8 - width / 2 + 0.05,
                colors="dimgray",
                linestyles=style,
                zorder=3,
            )
            ax.text(index + 0.8 - width / 2 + 0.06, value, f"{name} {value:.3f}", fontsize=7, va="center")
    ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(groups))], [g[2] for g in groups])
    split = next(
        (run.get("eval_split") for runs in (scirex_runs or {}).values() for run in (runs or {}).values()),
        None,
    )
    ax.set_title(f"SciREX {split or 'held-out'} F1 (mean and std over fine-tuning seeds; gray: baselines)")
    ax.set_xlabel("task")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, len(groups) + 0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def is_smoke_test(results: dict) -> bool:
    """From the tokens each arm saw and the width of the interval (``results["bits"]["scale"]``)."""
    return bool(results.get("bits", {}).get("scale", {}).get("smoke_test", True))


def _intro(results: dict, build_report: dict) -> list[str]:
    bits = results.get("bits", {})
    scale = bits.get("scale", {})
    seeds = results["settings"].get("seeds", [])
    fraction = scale.get("fraction_of_paper")
    seen = (
        f"{scale.get('tokens_seen_per_arm', 0):,} training tokens per arm, "
        f"{fraction:.2%} of the paper's {scale.get('paper_tokens_per_arm', 0):,}"
        if fraction is not None
        else "an unknown number of training tokens"
    )
    if is_smoke_test(results):
        reasons = "; ".join(scale.get("reasons", [])) or "no interval"
        lines = [
            f"> **This run is a smoke test, not evidence** ({reasons}). It saw {seen}, with "
            f"{len(seeds)} pre-training seed(s) and {bits.get('documents', '?')} validation documents. It shows "
            "that the pipeline works end to end; it cannot say whether structure helps. Scale it up with "
            "`--sources`, `--model-config`/`--init-from`, `--max-steps`, `--seeds` and `--scirex`.",
            "",
        ]
    else:
        lines = [
            f"> A small-scale replication: {seen}, {len(seeds)} paired pre-training seeds. Its interval can "
            "resolve an effect of the paper's size; read each number with its interval.",
            "",
        ]
    arms = ", ".join(
        f"**{arm}** (global: {', '.join(types) or 'none'})"
        for arm, types in results["settings"].get("arm_global_attention_types", {}).items()
    )
    return lines + [
        f"Arms: {arms}. Within a pre-training seed every arm was trained with the same tokenizer, steps, "
        "sequences and data order, and every model was scored on the same validation documents and the same "
        "[MASK] positions.",
        "",
    ]


def _corpus_section(build_report: dict) -> list[str]:
    splits = build_report.get("splits", {})
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(build_report.get("reasons", {}).items())) or "none"
    row = [build_report.get(k) for k in ("inputs", "records", "rejects")]
    row += [splits.get("train"), splits.get("validation"), reasons]
    header = ["inputs", "records", "rejects", "train", "validation", "reject reasons"]
    return ["## Corpus", "", *_table(header, [row])]


def _bits(value: float | None) -> str | None:
    """Bits with four decimals: differences between arms live in the third."""
    return None if value is None else f"{value:.4f}"


def _ci(interval) -> str:
    return f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "n/a"


def _bits_section(results: dict, output_dir: Path, model_dirs: dict[str, Path] | None) -> list[str]:
    bits = results.get("bits")
    lines = ["", "## Bits per [MASK] token", ""]
    if not bits:
        return lines + ["Not measured (no validation split).", ""]
    arms = list(results["settings"].get("arms", []))
    lines += [
        f"Definition: {bits['definition']}. Lower is better. {bits['documents']} validation documents, "
        f"{bits['mask_tokens']:,} [MASK] tokens, the same in every model (eval seed {bits['eval_seed']}).",
        "",
    ]
    header = ["seed", *arms]
    names = [n for n in next(iter(bits["seeds"].values()))["differences"]]
    header += [f"{n} (95% bootstrap CI over documents)" for n in names]
    rows = []
    for seed, entry in bits["seeds"].items():
        row = [seed, *[_bits(entry["arms"][arm]["bits_per_mask_token"]) for arm in arms]]
        row += [f"{d['mean']:+.4f} {_ci(d['ci'])}" for d in (entry["differences"][n] for n in names)]
        rows.append(row)
    mean_row = ["mean over seeds"]
    for arm in arms:
        values = [e["arms"][arm]["bits_per_mask_token"] for e in bits["seeds"].values()]
        mean_row.append(_bits(sum(values) / len(values)))
    mean_row += [
        f"{c['mean']:+.4f} {_ci(c['ci'])} (t, n={c['n']})" for c in (bits["comparisons"][n] for n in names)
    ]
    lines += _table(header, [*rows, mean_row])
    lines += [""]
    for name, comparison in bits["comparisons"].items():
        lines.append(
            f"- **{name}**: {comparison['verdict']} (mean over seeds {comparison['mean']:+.4f} bits, "
            f"95% t-interval {_ci(comparison['ci'])})."
        )
    lines += [
        "",
        "Per seed, the difference is paired by document (each document's mean bits in one arm minus the "
        f"other's) with a {BOOTSTRAP_RESAMPLES:,}-resample percentile bootstrap over documents; across seeds, "
        'the mean of the per-seed differences with a Student-t interval. "no detectable effect" means '
        "the interval holds 0.",
        "",
        "### Baselines on the same positions",
        "",
    ]
    baseline_rows = [
        [
            "unigram model of the training tokens (add-one)",
            _bits(bits["baselines"]["unigram_bits_per_mask_token"]),
            _bits(bits["baselines"]["unigram_bits_per_mask_token_pooled"]),
        ]
    ]
    for arm in arms:
        initial = [e["arms"][arm]["initial_bits_per_mask_token"] for e in bits["seeds"].values()]
        pooled = [e["arms"][arm]["initial_bits_per_mask_token_pooled"] for e in bits["seeds"].values()]
        baseline_rows.append(
            [
                f"{arm}, untrained (step 0, mean over seeds)",
                _bits(sum(initial) / len(initial)),
                _bits(sum(pooled) / len(pooled)),
            ]
        )
    for arm in arms:
        pooled = [e["arms"][arm]["bits_per_mask_token_pooled"] for e in bits["seeds"].values()]
        means = [e["arms"][arm]["bits_per_mask_token"] for e in bits["seeds"].values()]
        baseline_rows.append(
            [
                f"{arm}, trained (mean over seeds)",
                _bits(sum(means) / len(means)),
                _bits(sum(pooled) / len(pooled)),
            ]
        )
    lines += _table(
        ["model", "bits per [MASK] token (mean of documents)", "pooled over tokens"], baseline_rows
    )
    lines += ["", "### Global tokens and training tokens", ""]
    first = next(iter(bits["seeds"].values()))["arms"]
    lines += _table(
        ["arm", "global tokens per sequence (mean)", "training tokens seen per model (≈)"],
        [
            [arm, first[arm]["global_tokens_per_sequence"], f"{first[arm]['train_tokens_seen']:,}"]
            for arm in arms
        ],
    )
    lines += [""]
    if figure := bits_figure(bits, output_dir / "figures" / "bits_differences.png"):
        lines += [f"![paired differences]({figure.relative_to(output_dir)})", ""]
    if model_dirs and (figure := pretrain_figure(model_dirs, output_dir / "figures" / "pretrain_loss.png")):
        lines += [f"![training loss]({figure.relative_to(output_dir)})", ""]
    return lines + _paper_section(results, bits)


def _paper_section(results: dict, bits: dict) -> list[str]:
    """The paper's numbers beside ours, and every way this run departs from the paper's setup."""
    settings = results["settings"]
    scale = bits["scale"]
    paper = bits["paper"]
    ours = {
        arm: sum(e["arms"][arm]["bits_per_mask_token"] for e in bits["seeds"].values()) / len(bits["seeds"])
        for arm in ("structured", "plain")
        if arm in settings.get("arms", [])
    }
    rows = [
        ["structured", _bits(paper["structured"]), _bits(ours.get("structured"))],
        ["plain (the paper's vanilla)", _bits(paper["plain"]), _bits(ours.get("plain"))],
        ["structured - plain", f"{paper['structured'] - paper['plain']:+.4f}",
         f"{ours['structured'] - ours['plain']:+.4f}" if len(ours) == 2 else None],
    ]  # fmt: skip
    start = (
        f"continued pre-training of `{settings['init_from']}`"
        if settings.get("init_from")
        else f"from scratch (model config `{settings.get('model_config')}`, a trained {settings.get('vocab_size')}-token WordPiece vocabulary)"
    )
    filters = settings.get("min_document_tokens"), settings.get("max_document_tokens")
    window = next((m["pretrain"].get("attention_window") for m in results["models"].values()), None)
    departures = [
        f"start point: {start}; the paper continued `allenai/longformer-base-4096` (its own BPE vocabulary).",
        f"tokens seen per arm: {scale['tokens_seen_per_arm']:,} against the paper's 9,000 steps x 2 x 4,096 = "
        f"{scale['paper_tokens_per_arm']:,} ({scale['fraction_of_paper']:.2%}).",
        f"sequence length {settings.get('max_seq_length')} (the paper: 4,096), window "
        f"{window or settings.get('attention_window') or 'of the model config'} (the paper: 256), training sequences: "
        f"{settings.get('document_chunks')} (the paper: each document's first 4,096 tokens).",
        f"corpus: {bits['documents']} validation documents from the given sources (the paper: arXiv LaTeX, "
        "1.13M papers); document length filter "
        + (f"{filters[0] or 0}-{filters[1] or 'inf'} tokens" if any(filters) else "none")
        + " (the paper: 2,000-12,000 tokens).",
        f"pre-training seeds: {len(settings.get('seeds', []))} paired (the paper: one run per arm, no interval).",
        "metric: the same definition ([MASK] positions only, mean of per-document means, first tokens of each "
        "document); evaluation batches are padded, which changes nothing but floating-point rounding.",
    ]
    return [
        "### Beside the paper",
        "",
        *_table(["", "paper (bits per [MASK] token)", "this run"], rows),
        "",
        "Departures from the paper's setup:",
        "",
        *[f"- {d}" for d in departures],
        "",
    ]


def bits_figure(bits: dict, output: Path) -> Path | None:
    """Each seed's paired difference with its bootstrap interval, and the mean over seeds with its t-interval."""
    names = list(bits["comparisons"])
    if not names:
        return None
    fig, axes = plt.subplots(
        1, len(names), figsize=(6 * len(names), 3.8), constrained_layout=True, squeeze=False
    )
    for ax, name in zip(axes[0], names):
        labels, means, lows, highs = [], [], [], []
        for seed, entry in bits["seeds"].items():
            d = entry["differences"][name]
            labels.append(f"seed {seed}")
            means.append(d["mean"])
            lows.append(d["mean"] - d["ci"][0])
            highs.append(d["ci"][1] - d["mean"])
        c = bits["comparisons"][name]
        labels.append("mean")
        means.append(c["mean"])
        lows.append(c["mean"] - c["ci"][0] if c["ci"] else 0.0)
        highs.append(c["ci"][1] - c["mean"] if c["ci"] else 0.0)
        y = list(range(len(labels)))[::-1]
        ax.errorbar(means, y, xerr=[lows, highs], fmt="o", capsize=4, color="tab:blue")
        ax.axvline(0.0, color="black", lw=1)
        paper = bits["paper"]["structured"] - bits["paper"]["plain"]
        if name.startswith("structured -"):
            ax.axvline(paper, color="tab:red", ls="--", lw=1, label=f"paper {paper:+.4f}")
            ax.legend(fontsize=8)
        ax.set_yticks(y, labels)
        ax.set_xlabel("difference in bits per [MASK] token (negative: first arm better)")
        ax.set_title(f"{name}: {c['verdict']}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _attention_section(results: dict) -> list[str]:
    attention = results["attention"]
    probe = attention.get("probe", {})
    lines = [
        "## Attention patterns",
        "",
        f"Models of the first pre-training seed. Probe: {probe.get('documents', '?')} validation documents, {probe.get('tokens', '?')} tokens "
        f"(at most {probe.get('max_length', '?')} per document), {probe.get('heading_tokens', '?')} heading "
        f"tokens, {probe.get('keyword_tokens', '?')} keyword tokens; keywords: {probe.get('keywords', '?')}. "
        "Each model is probed with its structure mask and without it. Values are means over all layers "
        "and heads; the figures show every layer and head.",
        "",
    ]
    measures = ["heading_share", "keyword_attention", "entropy", "distance"]
    labels = attention.get("labels") or sorted({key.split("/")[0] for key in attention.get("summary", {})})
    columns = [(v, m) for v in labels for m in MODE_TITLES]
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


# scirex-salient's trivial predictors on predicted mentions (finetune's end_to_end baselines) and their labels.
END_TO_END_BASELINES = {
    "all_salient": "every predicted cluster salient",
    "min_mentions": "predicted clusters with >= k mentions",
}


def _paired_section(
    results: dict,
    variants: list[str],
    run_of: Callable[[str, str], dict],
    key: str,
    title: str,
    paper_difference: float,
) -> list[str]:
    """Each arm against the reference arm (plain), paper by paper, for the per-paper F1 stored under ``key`` of
    the scirex-salient runs: a paired bootstrap per pre-training seed, a t-interval across seeds, the verdict."""
    arms = list(
        results["settings"].get("arms") or sorted({results["models"][v].get("arm") for v in variants})
    )
    reference = "plain" if "plain" in arms else arms[-1] if arms else None
    seeds = list(
        results["settings"].get("seeds") or sorted({results["models"][v].get("seed") for v in variants})
    )

    def per_paper(variant: str) -> dict[str, float] | None:
        per_seed = run_of(variant, "scirex-salient").get(key) or {}
        if not per_seed:
            return None
        papers = set.intersection(*(set(p) for p in per_seed.values()))
        return {doc: sum(p[doc] for p in per_seed.values()) / len(per_seed) for doc in papers}

    comparisons = []
    for arm in (a for a in arms if a != reference):
        rows, means = [], []
        for seed in seeds:
            first, second = per_paper(f"{arm}/seed-{seed}"), per_paper(f"{reference}/seed-{seed}")
            if first is None or second is None:
                rows.append([seed, "n/a", "n/a (no per-paper scores)"])
                continue
            papers = sorted(set(first) & set(second))
            if not papers:
                rows.append([seed, 0, "n/a (no paper in common)"])
                continue
            boot = paired_bootstrap([first[p] for p in papers], [second[p] for p in papers])
            means.append(boot["mean"])
            rows.append([seed, len(papers), f"{boot['mean']:+.4f} {_ci(boot['ci'])}"])
        if not means:
            continue
        across = t_interval(means)
        word = verdict(across["ci"], lower_is_better=False)
        rows.append(
            ["mean over seeds", "", f"{across['mean']:+.4f} {_ci(across['ci'])} (t, n={across['n']})"]
        )
        comparisons.append((f"{arm} - {reference}", rows, word, across))
    if not comparisons:
        return [
            f"Arms compared paper by paper ({title}): not available (no per-paper scores for a pair of arms).",
            "",
        ]
    lines = [f"### Arms compared paper by paper ({title})", ""]
    for name, rows, word, across in comparisons:
        lines += _table(["pre-training seed", "papers", f"{name}: mean difference in F1 [95% CI]"], rows)
        lines += [
            "",
            f"- **{name}** ({title}, higher is better): {word} (mean over seeds {across['mean']:+.4f}, 95% "
            f"t-interval {_ci(across['ci'])}; the paper: {paper_difference:+.4f} for structured - vanilla).",
            "",
        ]
    return lines + [
        "Per pre-training seed, each paper's F1 is averaged over the fine-tuning seeds, the difference is taken "
        f"paper by paper, and a {BOOTSTRAP_RESAMPLES:,}-resample percentile bootstrap over papers gives its "
        "interval; across pre-training seeds, the mean of the per-seed differences with a Student-t interval. "
        '"no detectable effect" means the interval holds 0.',
        "",
    ]


def _scirex_section(results: dict, output_dir: Path, scirex_runs: dict[str, dict] | None) -> list[str]:
    # The paper's SciREX salient-cluster F1: gold clusters given, and end to end.
    paper_gold = {"structured": 0.7195, "plain": 0.7185}
    paper_end_to_end = {"structured": 0.342, "plain": 0.318}
    variants = list(results["models"])
    runs = scirex_runs or results.get("scirex_runs") or {}
    lines = ["## SciREX", ""]
    tasks = sorted({t for v in variants for t in results["models"][v]["downstream"]})
    if not tasks:
        return lines + ["Not run: pass `--scirex PATH/train.jsonl` to fine-tune both models on SciREX.", ""]

    def run_of(variant: str, task: str) -> dict:
        return (runs.get(variant) or {}).get(task) or {}

    def score_text(score: dict | None) -> str:
        if not score:
            return "n/a"
        return f"{score['mean']:.4f} ± {score['std']:.4f} (n={len(score['values'])})"

    def trivial(variant: str, task: str, metric: str) -> tuple[str, float] | None:
        """The best trivial baseline of this model's run for ``metric``, as (name, F1)."""
        baselines = run_of(variant, task).get("baselines") or {}
        if metric == "f1" and "mentions" in baselines:
            return "all mentions salient", baselines["mentions"]["all_positive"]["f1"]
        if metric == "cluster_f1" and "salient_clusters" in baselines:
            clusters = baselines["salient_clusters"]
            names = {
                "all_salient": "all clusters salient",
                "min_mentions": f">= {clusters['min_mentions']['k']} mentions",
            }
            best = max(names, key=lambda name: clusters[name]["f1"])
            return names[best], clusters[best]["f1"]
        end_to_end = run_of(variant, task).get("end_to_end_baselines") or {}
        if metric == "end_to_end_f1" and end_to_end:
            name, score = max(end_to_end.items(), key=lambda item: item[1]["mean"])
            return END_TO_END_BASELINES.get(name, name), score["mean"]
        return None

    def flagged(variant: str, task: str, metric: str, score: dict | None) -> str:
        text = score_text(score)
        baseline = trivial(variant, task, metric) if score else None
        if baseline and score["mean"] <= baseline[1] + 1e-12:
            text += f" **at or below the best trivial baseline** ({baseline[0]}: {baseline[1]:.4f})"
        return text

    rows = []
    for task in tasks:
        for metric in TASKS[task].metrics if task in TASKS else BASE_METRICS:
            scores = [results["models"][v]["downstream"].get(task, {}).get(metric) for v in variants]
            if metric not in BASE_METRICS and not any(scores):
                continue
            rows.append([task, metric, *[flagged(v, task, metric, s) for v, s in zip(variants, scores)]])
    lines += _table(["task", "metric", *variants], rows)
    lines += [
        "",
        f"Mean ± std over fine-tuning seeds {results['settings'].get('finetune_seeds')}, on the held-out part of "
        "SciREX's deterministic doc_id split (documents per split below). Higher is better for every metric.",
        "",
        "Definitions:",
        "",
        *(
            f"- `{name}` f1 / precision / recall: {TASKS[name].definition}."
            for name in tasks
            if name in TASKS
        ),
        "- `scirex-salient` cluster_f1 / cluster_precision / cluster_recall: SciREX's salient-entity-cluster "
        "metric (a port of `scirex_relation_evaluate.py`, `trainers/metrics/scirex_salient_clusters`) with "
        "gold clusters given: a gold cluster (`coref` or `coref_non_salient`) is predicted salient when at "
        "least one of its mentions is predicted salient; a predicted cluster is correct when more than half of "
        "its mentions lie in one gold salient entity (method sub-entities merged, as SciREX does); P, R and F1 "
        "per paper, averaged over papers. Gold salient entities without any mention stay in the recall "
        "denominator, so even the oracle stays below 1.",
        "- `scirex-salient` end_to_end_f1 / end_to_end_precision / end_to_end_recall: the same metric end to "
        "end, the paper's 0.342 / 0.318 setting: the model's own scirex-ner run predicts the mentions, the "
        "salient-mention classifier labels them, a fixed rule clusters them (below); no gold mention or cluster "
        "is used.",
        "",
    ]

    salient = [
        v for v in variants if results["models"][v]["downstream"].get("scirex-salient", {}).get("cluster_f1")
    ]
    baselines = next(
        (
            run_of(v, "scirex-salient").get("baselines")
            for v in salient
            if run_of(v, "scirex-salient").get("baselines")
        ),
        None,
    )
    if salient:
        lines += ["### Salient clusters beside the baselines and the paper", ""]
        if baselines:
            sizes = run_of(salient[0], "scirex-salient").get("split_sizes") or {}
            clusters = baselines["salient_clusters"]
            k = clusters["min_mentions"]
            lines += [
                f"Scored split: **{baselines['split']}**, {baselines['documents']} papers "
                f"(documents train / dev / test: {' / '.join(str(sizes.get(s, '?')) for s in ('train', 'dev', 'test'))}, "
                f"{run_of(salient[0], 'scirex-salient').get('split_source') or 'split by doc_id hash'}); "
                f"{baselines['mentions']['mentions']:,} gold mentions, {baselines['mentions']['salient_mentions']:,} of "
                f"them salient. k of the '>= k mentions' baseline: {k['k']}, chosen on the {k['k_chosen_on']} split"
                + (
                    (
                        " because the dev split is the scored one"
                        if baselines["split"] == "dev"
                        else " (no dev papers)"
                    )
                    if k["k_chosen_on"] == "train"
                    else ""
                )
                + f" ({k['k_documents']} papers; the best F1 over k = {min(int(x) for x in k['k_sweep'])}.."
                f"{max(int(x) for x in k['k_sweep'])}, the smallest k on ties).",
                "",
            ]
            if baselines.get("documents_without_gold_salient_clusters"):
                lines += [
                    f"{baselines['documents_without_gold_salient_clusters']} of the scored papers have no "
                    "`n_ary_relations`, hence no gold salient cluster: every predictor scores 0 on them.",
                    "",
                ]
            other = [
                v
                for v in salient
                if (run_of(v, "scirex-salient").get("baselines") or {})
                .get("salient_clusters", {})
                .get("oracle", {})
                .get("f1")
                != clusters["oracle"]["f1"]
            ]
            if other:
                lines += [
                    f"Note: the baselines differ for {', '.join(other)} (another split); the table shows {salient[0]}'s.",
                    "",
                ]
        rows = []
        for v in salient:
            down = results["models"][v]["downstream"]["scirex-salient"]
            baseline = trivial(v, "scirex-salient", "cluster_f1")
            note = "fine-tuned on gold mentions"
            if baseline and down["cluster_f1"]["mean"] <= baseline[1] + 1e-12:
                note = f"**at or below the best trivial baseline** ({baseline[0]}: {baseline[1]:.4f})"
            rows.append(
                [
                    v,
                    score_text(down["cluster_precision"]),
                    score_text(down["cluster_recall"]),
                    score_text(down["cluster_f1"]),
                    note,
                ]
            )
        if baselines:
            clusters = baselines["salient_clusters"]
            k = clusters["min_mentions"]
            for name, label, note in (
                (
                    "all_salient",
                    "every gold cluster salient",
                    "trivial baseline (also what predicting every mention salient gives)",
                ),
                (
                    "min_mentions",
                    f"gold clusters with >= {k['k']} mentions",
                    f"trivial baseline, k chosen on {k['k_chosen_on']}",
                ),
                (
                    "oracle",
                    "oracle: the gold salient clusters that have a mention",
                    "ceiling (uses the gold salience)",
                ),
            ):
                entry = clusters[name]
                rows.append(
                    [label, f"{entry['precision']:.4f}", f"{entry['recall']:.4f}", f"{entry['f1']:.4f}", note]
                )
        for arm, label in (("structured", "structured"), ("plain", "vanilla")):
            rows.append(
                [f"paper: {label}", "n/a", "n/a", f"{paper_gold[arm]:.4f}",
                 f"the paper, gold clusters given (end to end: {paper_end_to_end[arm]:.3f}); SciREX's official test split, Longformer-base"]
            )  # fmt: skip
        lines += _table(["predictor", "precision", "recall", "F1", "note"], rows)
        lines += [""]
        if baselines:
            mention = baselines["mentions"]["all_positive"]
            lines += [
                f"Mention level (`scirex-salient` f1), trivial baseline on the same mentions: every mention salient, "
                f"P {mention['precision']:.4f}, R {mention['recall']:.4f}, F1 {mention['f1']:.4f}.",
                "",
            ]
        lines += [
            "The paper's numbers come from SciREX's official test papers and a Longformer-base model at full scale; "
            "the numbers here come from a held-out part of SciREX's training papers and from this run's models, "
            "so they are not directly comparable.",
            "",
        ]

        lines += _paired_section(
            results, variants, run_of, "per_paper_cluster_f1", "salient-cluster F1, gold clusters given",
            paper_gold["structured"] - paper_gold["plain"],
        )  # fmt: skip

    end_to_end = [
        v
        for v in variants
        if results["models"][v]["downstream"].get("scirex-salient", {}).get("end_to_end_f1")
    ]
    if end_to_end:
        lines += ["### End to end: predicted mentions, predicted clusters", ""]
        rule = run_of(end_to_end[0], "scirex-salient").get("end_to_end_rule")
        rows = []
        for v in end_to_end:
            down = results["models"][v]["downstream"]["scirex-salient"]
            trivial_scores = run_of(v, "scirex-salient").get("end_to_end_baselines") or {}
            best = max(trivial_scores.items(), key=lambda item: item[1]["mean"], default=None)
            note = ""
            if best is not None:
                label = END_TO_END_BASELINES.get(best[0], best[0])
                note = f"best trivial on its own predicted mentions: {label} {best[1]['mean']:.4f}"
                if down["end_to_end_f1"]["mean"] <= best[1]["mean"] + 1e-12:
                    note = f"**at or below the best trivial baseline** ({label}: {best[1]['mean']:.4f})"
            rows.append(
                [
                    v,
                    score_text(down["end_to_end_precision"]),
                    score_text(down["end_to_end_recall"]),
                    score_text(down["end_to_end_f1"]),
                    note,
                ]
            )
        for arm, label in (("structured", "structured"), ("plain", "vanilla")):
            rows.append(
                [f"paper: {label}", "n/a", "n/a", f"{paper_end_to_end[arm]:.4f}",
                 "the paper, end to end; SciREX's official test split, Longformer-base, SciREX's coreference model"]
            )  # fmt: skip
        rows.append(
            ["paper: SciREX baseline", "n/a", "n/a", "0.3070", "the paper's SciREX baseline, end to end"]
        )
        lines += _table(["predictor", "precision", "recall", "F1", "note"], rows)
        lines += [
            "",
            "Pipeline: each model's scirex-ner run predicts the mentions of the scored papers (fine-tuning seed N "
            "of scirex-ner feeds seed N of scirex-salient); its scirex-salient classifier, trained on gold "
            "mentions, classifies those predicted mentions; the mentions are clustered by one fixed rule, the "
            f"same for every model: {rule or 'see finetune results.json'}. SciREX's scorer then matches "
            "predicted spans to gold spans (overlap threshold) and clusters to gold salient entities, per paper, "
            "averaged over papers. Trivial predictors on the same predicted clusters: "
            + "; ".join(f"{label}" for label in END_TO_END_BASELINES.values())
            + " (k of the gold-cluster baseline). They depend on each model's NER, so each row names its own.",
            "",
        ]
        lines += _paired_section(
            results, variants, run_of, "per_paper_end_to_end_f1", "salient-cluster F1, end to end",
            paper_end_to_end["structured"] - paper_end_to_end["plain"],
        )  # fmt: skip

    lines += [
        "Not measured:",
        "",
        "- relation F1 (SciREX's binary and 4-ary relation metrics): no relation model is trained here, so "
        "no relations file is written and the metric's relation scorer (ported and tested) has nothing to score;",
        *(
            []
            if end_to_end
            else [
                "- the end-to-end setting (predicted mentions and predicted clusters; the paper: 0.342 structured, "
                "0.318 vanilla salient-cluster F1): no scirex-salient run was scored on predicted mentions;"
            ]
        ),
        "- SciREX's coreference model: the end-to-end clusters come from a fixed string-match rule instead.",
        "",
    ]
    if runs:
        header = ["model", "task", "documents (train / dev / test)", "scored split", "steps per seed"]
        rows = []
        for variant, tasks_run in runs.items():
            for task, run in tasks_run.items():
                types = run.get("global_attention_types")
                headings = [t for t in (types or []) if t != "cls"]
                if not run.get("use_structure"):
                    structure = "no"
                elif types is not None and not headings:
                    structure = "section ids only (the model has no heading type to make global)"
                else:
                    structure = "yes" + (f" ({', '.join(headings)})" if headings else "")
                rows.append(
                    [
                        variant,
                        task,
                        " / ".join(
                            str((run.get("split_sizes") or {}).get(k, "?")) for k in ("train", "dev", "test")
                        ),
                        run.get("eval_split"),
                        run.get("steps_per_seed"),
                        structure,
                    ]
                )
        lines += [*_table([*header, "headings global"], rows), ""]
    if figure := downstream_figure(results, output_dir / "figures" / "scirex_f1.png", scirex_runs):
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
    lines += _bits_section(results, output_dir, model_dirs)
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
