"""Model cards written from real artifacts (``config.json``, ``training_args.json``, ``results.json``, the
corpus's ``build_report.json``). The YAML metadata goes through ``huggingface_hub``'s card-data classes; the
Markdown body is rendered from the Jinja template in ``templates/``. A value that is missing leaves its section
out: a generated card never carries placeholder text. The dataset card is ``structformer.dataset_scripts.card``.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from matplotlib.figure import Figure
from safetensors import safe_open

from structformer.dataset_scripts.card import (
    LONGFORMER_BIBTEX,
    STRUCTFORMER_BIBTEX,
    flatten,
    is_number,
    read_json,
    render,
)
from structformer.dataset_scripts.schema import SECTION_LEVELS, STRUCTURED
from structformer.errors import InputError
from structformer.trainers.results import check_results, read_results
from structformer.trainers.run_files import EVAL_RESULTS_FILE, METRICS_FILE, TRAINING_ARGS_FILE
from structformer.trainers.statistics import SMOKE_MAX_TOKENS
from structformer.trainers.tasks import TASKS

TEMPLATES_DIR = Path(__file__).parent / "templates"


# ----------------------------------------------------------------------------- model card

# results.json downstream task -> (Hub task type, readable task name), from the task table.
DOWNSTREAM_TASKS: dict[str, tuple[str, str]] = {
    name: (task.hub_task, task.title) for name, task in TASKS.items()
}
TRAINING_CURVE = "training_curve.png"
TAGS = ["structformer", "long-document", "global-attention", "custom_code"]


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}"


def _mean_std(entry: Any) -> str | None:
    """``"0.712 ± 0.013"`` from ``{"mean", "std", "values"}`` (or a bare number); None when missing."""
    if is_number(entry):
        return _fmt(entry)
    if not isinstance(entry, Mapping) or not is_number(entry.get("mean")):
        return None
    text = _fmt(float(entry["mean"]))
    if is_number(entry.get("std")) and len(entry.get("values") or []) > 1:
        text += f" ± {_fmt(float(entry['std']))}"
    return text


def _param_count(model_dir: Path) -> int | None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    total += math.prod(f.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own error type for a damaged header
            raise InputError(f"{path}: unreadable safetensors file: {err}") from err
    return total


def _human(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _architecture(model_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    window = config.get("attention_window", 256)
    windows = window if isinstance(window, list) else [window]
    if len(set(windows)) == 1:
        window_text = f"{windows[0] // 2} positions on either side"
        window_note = f"a window of {windows[0]} tokens"
        window_table = str(windows[0])
    else:
        window_text = f"{min(windows) // 2} to {max(windows) // 2} positions on either side"
        window_note = "the window depends on the layer"
        window_table = "per layer: " + ", ".join(map(str, windows))
    types = list(config.get("global_attention_types") or [])
    described = []
    if "cls" in types:
        described.append("the first token (`[CLS]`)")
    if "title" in types:
        described.append("every token of the title")
    levels = [t for t in SECTION_LEVELS if t in types]
    if levels:
        described.append("every token of each heading of level " + ", ".join(f"`{t}`" for t in levels))
    if not described:
        described.append("only those the caller marks in `global_attention_mask`")
    global_text = described[0] if len(described) == 1 else ", ".join(described[:-1]) + " and " + described[-1]
    parameters = _param_count(model_dir)
    return {
        "layers": config.get("num_hidden_layers"),
        "hidden": config.get("hidden_size"),
        "heads": config.get("num_attention_heads"),
        "intermediate": config.get("intermediate_size"),
        "vocab": config.get("vocab_size"),
        "max_positions": config.get("max_position_embeddings"),
        "window_text": window_text,
        "window_note": window_note,
        "window_table": window_table,
        "scope": config.get("local_attention_scope", "window"),
        "global_text": global_text,
        "global_types_table": ", ".join(f"`{t}`" for t in types) or "none",
        "cls_global": "cls" in types,
        "separate_global": bool(config.get("separate_global_projections")),
        "parameters": parameters,
        "parameters_text": _human(parameters) if parameters else "",
    }


def _mask_token(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    token = read_json(path).get("mask_token") if path.is_file() else None
    if isinstance(token, Mapping):
        token = token.get("content")
    return token if isinstance(token, str) and token else "[MASK]"


def _option_value(value: Any) -> str:
    # Absolute paths only mean something on the training machine; their last component still says what it was.
    if isinstance(value, str) and value.startswith(("/", "~")):
        return Path(value).name
    return str(value)


def _training_args(model_dir: Path) -> dict[str, Any]:
    args_path = model_dir / TRAINING_ARGS_FILE
    return read_json(args_path) if args_path.is_file() else {}


def _training(model_dir: Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    args = _training_args(model_dir)
    options = []
    for k, v in flatten("", args):
        if v is None:
            continue
        # An option that the saved model overrides (--vocab-size only sizes a tokenizer the run trains
        # itself) shows what the model has, from config.json.
        if k in config and is_number(config[k]) and is_number(v) and config[k] != v:
            options.append((k, f"{config[k]} (config.json; the option was {v})"))
        else:
            options.append((k, _option_value(v)))
    data_keys = [
        k for k, _ in options if any(w in k for w in ("dataset", "corpus", "train_file", "use_headers"))
    ]
    data = ", ".join(f"`{k}` = `{v}`" for k, v in options if k in data_keys)

    summary, curve = [], None
    metrics_path = model_dir / METRICS_FILE
    if metrics_path.is_file():
        rows = []
        for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{metrics_path}:{number}: invalid JSON: {err.msg}") from err
        train = [
            (r["step"], r["loss"]) for r in rows if is_number(r.get("step")) and is_number(r.get("loss"))
        ]
        evals = [
            (r["step"], r["eval_bits_per_mask_token"])
            for r in rows
            if is_number(r.get("step")) and is_number(r.get("eval_bits_per_mask_token"))
        ]
        if len({step for step, _ in train}) >= 2:
            summary.append(
                f"The training loss went from {_fmt(float(train[0][1]))} at step {train[0][0]:,} to "
                f"{_fmt(float(train[-1][1]))} at step {train[-1][0]:,} (`metrics.jsonl`)."
            )
            curve = _loss_curve_png(train, evals)
        elif train:  # one logged step shows no trend
            summary.append(
                f"The training loss was logged once: {_fmt(float(train[-1][1]))} at step {train[-1][0]:,} "
                "(`metrics.jsonl`)."
            )
    if not (options or summary):
        return None
    trained_length = args.get("max_seq_length")
    return {
        "data": data,
        "summary": " ".join(summary),
        "args": options,
        "curve": curve,
        "trained_length": trained_length if is_number(trained_length) else None,
    }


def _build_report(model_dir: Path, args: Mapping[str, Any], results_dir: Path | None) -> dict | None:
    """The training corpus's ``build_report.json``: beside the recorded ``--dataset``, or in the
    experiment's ``corpus/`` (EXP/models/seed-N/ARM is three levels below EXP)."""
    candidates = [Path(str(args["dataset"]))] if args.get("dataset") else []
    candidates += [base / "corpus" for base in (results_dir, *model_dir.resolve().parents[2:3]) if base]
    for folder in candidates:
        path = folder / "build_report.json"
        if path.is_file():
            report = read_json(path)
            if is_number(report.get("records")):
                return report
    return None


def _corpus_text(report: Mapping[str, Any] | None) -> tuple[str | None, list[str]]:
    """What the training corpus was, from its build report, and the languages it recorded (none: no claim)."""
    if not report:
        return None, []
    splits = report.get("splits") or {}
    split_text = ", ".join(f"{_fmt(n)} {name}" for name, n in splits.items() if is_number(n))
    text = f"{_fmt(report['records'])} papers converted from LaTeX" + (
        f" ({split_text})" if split_text else ""
    )
    if is_number(report.get("inputs")):
        text += f", built from {_fmt(report['inputs'])} inputs"
        reasons = report.get("reasons") or {}
        if reasons:
            text += " (rejected: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) + ")"
    languages = (report.get("stats") or {}).get("languages")
    codes = sorted(k for k in languages if k != "und") if isinstance(languages, Mapping) else []
    return text + " (`build_report.json`)", codes


def _base_model(args: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``--init-from`` as (a Hub id for the metadata, or the name of a local checkpoint for the text)."""
    init_from = args.get("init_from")
    if not isinstance(init_from, str) or not init_from:
        return None, None
    local = init_from.startswith(("/", ".", "~")) or Path(init_from).exists()
    if not local and re.fullmatch(r"[\w.-]+/[\w.-]+", init_from):
        return init_from, None
    return None, Path(init_from).name


def _smoke_test(
    model_dir: Path, results: Mapping[str, Any], training: Mapping[str, Any] | None
) -> list[str] | None:
    """Why this model is a smoke test (the experiment's ``bits.scale``, else its tokens seen); None if not."""
    scale = (results.get("bits") or {}).get("scale") if results else None
    if isinstance(scale, Mapping) and "smoke_test" in scale:
        return (
            list(scale.get("reasons") or ["the experiment calls it a smoke test"])
            if scale["smoke_test"]
            else None
        )
    path = model_dir / EVAL_RESULTS_FILE
    tokens = read_json(path).get("train_tokens_seen") if path.is_file() else None
    if is_number(tokens) and tokens < SMOKE_MAX_TOKENS:
        return [f"{_fmt(int(tokens))} training tokens, under {_fmt(SMOKE_MAX_TOKENS)}"]
    return None


def _loss_curve_png(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> bytes:
    """The training curve as PNG bytes: training loss, and validation bits per [MASK] token when logged."""
    fig = Figure(figsize=(6, 3.5), dpi=120)
    ax = fig.subplots()
    # The logged loss is cross-entropy in nats; shown in bits so both curves share one axis.
    ax.plot([step for step, _ in train], [loss / math.log(2) for _, loss in train], label="training")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits per [MASK] token")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _load_results(results: Mapping[str, Any] | str | Path | None) -> tuple[dict, Path | None]:
    if results is None:
        return {}, None
    if isinstance(results, (str, Path)):
        return dict(read_results(results)), Path(results).parent
    return dict(check_results(results, "results")), None


def _select_model(results: Mapping[str, Any], model_dir: Path, model_key: str | None) -> str | None:
    models = results.get("models") or {}
    if not models:
        return None
    for key in (model_key, results.get("variant")):
        if key is not None:
            if key not in models:
                raise InputError(f"results have no model {key!r}; known: {sorted(models)}")
            return key
    resolved = model_dir.resolve()
    for key, entry in models.items():
        checkpoint = entry.get("checkpoint") if isinstance(entry, Mapping) else None
        if checkpoint and Path(checkpoint).resolve() == resolved:
            return key
    if model_dir.name in models:
        return model_dir.name
    if len(models) == 1:
        return next(iter(models))
    raise InputError(
        f"cannot tell which of the results' models {sorted(models)} is {model_dir}; pass model_key"
    )


def _evaluation(
    model_dir: Path,
    results: Mapping[str, Any],
    key: str | None,
    results_dir: Path | None,
    dataset_ref: str,
    display_name: str,
) -> tuple[dict[str, Any] | None, list[Any], list[Path]]:
    """The card's evaluation tables, its model-index entries, and the figures to copy."""
    models = results.get("models") or {}
    own_pretrain = (models.get(key) or {}).get("pretrain") if key else None
    pretrain_source = "the experiment's `results.json`"
    if not own_pretrain and (model_dir / EVAL_RESULTS_FILE).is_file():
        own_pretrain = read_json(model_dir / EVAL_RESULTS_FILE)
        pretrain_source = "`eval_results.json`"
        key = key or display_name
        models = {key: {"pretrain": own_pretrain}}

    eval_results: list[Any] = []
    for metric, name in (
        ("eval_bits_per_mask_token", "Bits per [MASK] token"),
        ("eval_perplexity", "Perplexity"),
    ):
        value = (own_pretrain or {}).get(metric)
        if is_number(value):
            eval_results.append(
                EvalResult(
                    task_type="fill-mask",
                    task_name="Masked language modelling",
                    dataset_type=dataset_ref,
                    dataset_name=f"{dataset_ref} (validation split)",
                    dataset_split="validation",
                    metric_type=metric.removeprefix("eval_"),
                    metric_name=name,
                    metric_value=value,
                )
            )
    downstream_own = (models.get(key) or {}).get("downstream") or {} if key else {}
    for task, metrics in downstream_own.items():
        task_type, task_name = DOWNSTREAM_TASKS.get(task, ("other", task))
        for metric in ("f1", "precision", "recall"):
            entry = (metrics or {}).get(metric)
            value = entry.get("mean") if isinstance(entry, Mapping) else entry
            if is_number(value):
                eval_results.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=task_name,
                        dataset_type="scirex",
                        dataset_name="SciREX",
                        dataset_split="test",
                        metric_type=metric,
                        metric_name=metric.upper() if metric == "f1" else metric.capitalize(),
                        metric_value=value,
                    )
                )

    def label(name: str) -> str:
        return f"**{name}** (this model)" if name == key else name

    pretrain_rows = []
    for name, entry in models.items():
        pretrain = (entry or {}).get("pretrain") or {}
        bits, ppl = pretrain.get("eval_bits_per_mask_token"), pretrain.get("eval_perplexity")
        if is_number(bits) or is_number(ppl):
            initial = pretrain.get("initial_eval_bits_per_mask_token")
            unigram = pretrain.get("unigram_bits_per_mask_token")
            pretrain_rows.append(
                {
                    "name": label(name),
                    "bits": _fmt(float(bits)) if is_number(bits) else "",
                    "initial": _fmt(float(initial)) if is_number(initial) else "",
                    "unigram": _fmt(float(unigram)) if is_number(unigram) else "",
                    "ppl": _fmt(float(ppl)) if is_number(ppl) else "",
                }
            )
    downstream_rows, runs = [], set()
    for name, entry in models.items():
        for task, metrics in ((entry or {}).get("downstream") or {}).items():
            cells = {m: _mean_std((metrics or {}).get(m)) for m in ("f1", "precision", "recall")}
            if cells["f1"] is None:
                continue
            runs.update(
                len(m.get("values") or []) for m in (metrics or {}).values() if isinstance(m, Mapping)
            )
            row = {"name": label(name), "task": DOWNSTREAM_TASKS.get(task, ("", task))[1]}
            downstream_rows.append(row | {m: v or "" for m, v in cells.items()})
    runs.discard(0)
    runs_text = (
        f"{runs.pop()} fine-tuning run{'s' if max(runs | {0}) != 1 else ''}"
        if len(runs) == 1
        else "the fine-tuning runs"
    )

    attention = results.get("attention") or {}
    summary = [(k, _fmt(float(v))) for k, v in flatten("", attention.get("summary") or {}) if is_number(v)]
    figures: list[Path] = []
    bases = [b for b in (results_dir, model_dir.parent.parent) if b is not None]
    for entry in (models.get(key) or {}, *models.values()) if key else ():
        checkpoint = (entry or {}).get("checkpoint")
        if checkpoint:
            bases.append(Path(checkpoint).parent.parent)
    for figure in attention.get("figures") or []:
        found = next((b / figure for b in bases if (b / figure).is_file()), None)
        if found is not None:
            figures.append(found)

    if not (pretrain_rows or downstream_rows or summary or figures):
        return None, eval_results, figures
    evaluation = {
        "pretrain": pretrain_rows,
        "pretrain_source": pretrain_source if pretrain_rows else "",
        "downstream": downstream_rows,
        "runs_text": runs_text,
        "attention": summary,
        "figures": [f.name for f in figures],
    }
    return evaluation, eval_results, figures


def render_model_card(
    model_dir: str | Path,
    results: Mapping[str, Any] | str | Path | None = None,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    model_key: str | None = None,
) -> tuple[ModelCard, dict[str, Path | bytes]]:
    """The model card of a trained StructBERT folder, and the files it shows (name -> source file or PNG bytes)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (is it a saved StructBERT model folder?)")
    config = read_json(config_path)
    if config.get("model_type") != "structbert":
        raise InputError(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'structbert'")

    results_dict, results_dir = _load_results(results)
    key = _select_model(results_dict, model_dir, model_key)
    training = _training(model_dir, config)
    args = _training_args(model_dir)
    corpus_text, languages = _corpus_text(_build_report(model_dir, args, results_dir))
    recorded_base, init_local = _base_model(args)
    base_model = base_model or recorded_base
    dataset_ref = datasets[0] if datasets else STRUCTURED
    name = model_name or (repo_id.split("/")[-1] if repo_id else model_dir.resolve().name)
    evaluation, eval_results, figures = _evaluation(
        model_dir, results_dict, key, results_dir, dataset_ref, name
    )
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="fill-mask",
        language=languages or None,  # only what the corpus build recorded
        tags=list(TAGS),
        datasets=list(datasets) if datasets else None,
        base_model=base_model,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    body = render(
        "model_card.md",
        TEMPLATES_DIR,
        card_data=data.to_yaml(),
        model_name=name,
        arch=_architecture(model_dir, config),
        base_model=base_model,
        init_local=None if base_model else init_local,
        smoke_test=_smoke_test(model_dir, results_dict, training),
        corpus_text=corpus_text,
        languages=languages,
        steps=args.get("max_steps") if is_number(args.get("max_steps")) else None,
        repo_ref=repo_id or ".",
        repo_is_local=repo_id is None,
        revision=revision or "main",
        mask_token=_mask_token(model_dir),
        training=training,
        # Only claimed when the card knows the training data: given datasets, or data options of the run.
        trained_on_arxiv=bool(datasets or (training and training["data"])),
        evaluation=evaluation,
        structformer_bibtex=STRUCTFORMER_BIBTEX,
        longformer_bibtex=LONGFORMER_BIBTEX,
    )
    files: dict[str, Path | bytes] = {f.name: f for f in figures}
    if training and training["curve"]:
        files[TRAINING_CURVE] = training["curve"]
    return ModelCard(body), files


def write_model_card(
    model_dir: str | Path,
    results: Mapping[str, Any] | str | Path | None = None,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    model_key: str | None = None,
    output_dir: str | Path | None = None,
) -> Path:
    """Write the model card (``README.md``) of a trained StructBERT folder, and copy its figures next to it.

    ``results`` is the experiment's ``results.json`` (a path, or the loaded dict, optionally with a
    ``"variant"`` key naming this model); without it, ``model_dir/eval_results.json`` gives the evaluation.
    ``output_dir`` (default ``model_dir``) is where the card and figures go, e.g. a staging folder.
    """
    card, files = render_model_card(
        model_dir,
        results,
        base_model=base_model,
        datasets=datasets,
        license=license,
        repo_id=repo_id,
        revision=revision,
        model_name=model_name,
        model_key=model_key,
    )
    out = Path(output_dir) if output_dir is not None else Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if isinstance(source, bytes):
            (out / name).write_bytes(source)
        elif source.resolve() != (out / name).resolve():
            shutil.copyfile(source, out / name)
    path = out / "README.md"
    card.save(path)
    return path
