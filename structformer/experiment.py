"""The main job: the structured-versus-plain experiment, end to end, in one command.

``structformer experiment --output-dir EXP`` runs every step:

1. build the corpus (default: the bundled sample papers packed into an arXiv-style ``.tar``);
2. train a WordPiece tokenizer on its training split (deterministic; or take ``--tokenizer`` /
   ``--init-from``'s) and record its SHA-256;
3. for every pre-training seed (``--seeds``), pre-train every arm (``--arms``: by default the paper's
   *structured* arm, title and heading tokens global, and its *plain* arm, no global token at all)
   with that seed, so that within a seed the arms see the same sequences in the same order;
4. read each model's bits per ``[MASK]`` token on the same validation documents and the same
   ``[MASK]`` positions (``--eval-seed``), with the untrained model and a unigram model as baselines,
   and compare the arms: the paired per-document difference with a bootstrap interval per seed, and
   the mean over seeds with a t-interval;
5. analyse the attention patterns of the first seed's models on the validation split;
6. fine-tune each model on SciREX when ``--scirex PATH`` is given (both tasks, every fine-tuning seed);
7. write ``report.md`` (tables and figures) and ``results.json``, and a model card per model.

Nothing is written halfway: the work happens in a temporary folder beside ``EXP`` that is moved into
place only when every step has succeeded, so a failed run leaves any earlier ``EXP`` untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from structformer.arguments import parse_dataclass
from structformer.command_arguments import ARMS, ExperimentArguments
from structformer.dataset_scripts.build import BuildOptions, build_corpus
from structformer.dataset_scripts.sample import pack_sample_archive
from structformer.dataset_scripts.schema import REPORT_FILE, STRUCTURED, find_shards, shard_glob
from structformer.errors import InputError, run_command
from structformer.hub_cards.cards import write_model_card
from structformer.trainers import pretrain
from structformer.trainers.analyze_attention import analyze
from structformer.trainers.arguments import FinetuneArguments, PretrainArguments
from structformer.trainers.finetune import run_finetune
from structformer.trainers.pretrain import run_pretraining
from structformer.trainers.report import write_report
from structformer.trainers.results import ExperimentResults, write_results
from structformer.trainers.run_files import EVAL_DOCUMENTS_FILE, EVAL_RESULTS_FILE, RESULTS_FILE
from structformer.trainers.statistics import PAPER_BITS, assess_scale, paired_bootstrap, t_interval, verdict
from structformer.trainers.tasks import CLUSTER_METRICS, END_TO_END_METRICS, SCIREX_TASKS, TASKS
from structformer.trainers.tokenizer import tokenizer_hash, train_wordpiece

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> ExperimentArguments:
    return parse_dataclass(ExperimentArguments, argv)


# ----------------------------------------------------------------------------- steps


def build_corpus_step(args: ExperimentArguments, work: Path) -> tuple[Path, dict]:
    """The corpus folder and its build report; builds from the sources unless ``--corpus-dir``."""
    if args.corpus_dir:
        corpus = Path(args.corpus_dir)
        report_file = corpus / REPORT_FILE
        return corpus, json.loads(report_file.read_text()) if report_file.exists() else {}

    if args.sources:
        sources = [Path(s) for s in args.sources]
    else:
        sources = [pack_sample_archive(work / "sources")]
    options = BuildOptions(
        num_proc=args.num_proc,
        metadata=args.metadata,
        validation_fraction=args.validation_fraction,
        min_validation=args.min_validation,
    )
    # A build without records raises InputError itself.
    return work / "corpus", build_corpus(sources, work / "corpus", options)


def corpus_texts(corpus: Path, split: str = "train") -> list[str]:
    """The ``text`` column of one split of a built corpus, for the tokenizer."""
    files = find_shards(corpus)[STRUCTURED].get(split)
    if not files:
        raise InputError(f"{corpus}: no {split} shards under {shard_glob(STRUCTURED, split)}")
    return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]


def tokenizer_step(args: ExperimentArguments, work: Path, corpus: Path) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    if args.init_from:
        # A pre-trained checkpoint only makes sense with its own vocabulary.
        return Path(args.init_from)

    out = work / "tokenizer"
    train_wordpiece(corpus_texts(corpus), args.vocab_size, out)
    return out


def arm_global_types(args: ExperimentArguments, arm: str) -> list[str]:
    """The model's ``global_attention_types`` in an arm."""
    types = ARMS[arm].global_attention_types
    if types is None:
        return list(args.global_attention_types)
    if ARMS[arm].dataset_config == STRUCTURED:
        return [*args.global_attention_types, *(t for t in types if t not in args.global_attention_types)]
    return list(types)


def pretrain_arguments(
    args: ExperimentArguments, corpus: Path, tokenizer: Path, arm: str, seed: int, out: Path
) -> PretrainArguments:
    """The same options for every arm; only the corpus config, the global types and the output differ."""
    return PretrainArguments(
        dataset=str(corpus),
        dataset_config=ARMS[arm].dataset_config,
        global_attention_types=arm_global_types(args, arm),
        document_chunks=args.document_chunks,
        min_document_tokens=args.min_document_tokens,
        max_document_tokens=args.max_document_tokens,
        eval_seed=args.eval_seed,
        tokenizer=str(tokenizer),
        max_seq_length=args.max_seq_length,
        per_device_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10),
        max_steps=args.max_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        logging_steps=max(1, args.max_steps // 25),
        seed=seed,
        mixed_precision=args.mixed_precision,
        cache_dir=str(out.parent / f".cache-{arm}"),
        output_dir=str(out),
        init_from=str(args.init_from) if args.init_from else None,
        model_config=args.model_config,
        attention_window=args.attention_window,
    )


def pretrain_step(args: ExperimentArguments, pretrain_args: PretrainArguments) -> None:
    """In this process, or through ``accelerate launch --config_file`` with the same options."""
    if args.accelerate_config:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(args.accelerate_config),
            str(Path(pretrain.__file__)), *pretrain_args.to_argv(),
        ]  # fmt: skip
        logger.info("running %s", " ".join(command))
        subprocess.run(command, check=True)
        return
    run_pretraining(pretrain_args)


def read_pretrain_metrics(model_dir: Path) -> tuple[dict, dict]:
    """The model's scalar scores (``eval_results.json``) and its per-document figures."""
    path = model_dir / EVAL_RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: pre-training wrote no evaluation results")
    results = json.loads(path.read_text())
    scores = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    documents = json.loads((model_dir / EVAL_DOCUMENTS_FILE).read_text())
    return scores, documents


def finetune_step(
    args: ExperimentArguments, arm: str, model_dir: Path, out: Path, runs: dict | None = None
) -> dict:
    """The SciREX tasks (``SCIREX_TASKS``) for one model: ``{task: {metric: {"mean", "std", "values"}}}`` over
    fine-tuning seeds, the metrics of each task's ``TASKS`` entry.

    Metrics: ``f1``, ``precision``, ``recall`` for both tasks (``scirex-salient``: over gold mentions),
    and for ``scirex-salient`` also ``cluster_f1``, ``cluster_precision``, ``cluster_recall``: SciREX's
    salient-entity-cluster metric with gold clusters given (``finetune``'s ``salient_clusters``), and
    ``end_to_end_f1`` / ``_precision`` / ``_recall``: the same metric end to end, on the mentions that this
    model's scirex-ner run predicted (paired by fine-tuning seed), clustered by ``PREDICTED_CLUSTER_RULE``.

    ``runs`` (when given) receives, per task, the split sizes, scored split, steps, the structure
    setting (``finetune_structure``, ``use_structure``) and the heading ``global_attention_types`` used;
    for ``scirex-salient`` also ``eval_documents``, the model-independent ``baselines`` of the run,
    ``per_paper_cluster_f1`` (``{fine-tuning seed: {doc_id: F1}}``, to pair papers across models), the
    ``cluster_rule`` and the clusters files (``cluster_files``, ``{seed: path relative to out}``); and, end
    to end, ``end_to_end_baselines`` (trivial predictors on the same predicted clusters, mean over seeds),
    ``per_paper_end_to_end_f1``, ``end_to_end_rule`` and ``end_to_end_files``.
    """
    runs = {} if runs is None else runs
    if arm not in ARMS:
        raise InputError(f"finetune_step: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    setting = args.finetune_structure
    if setting == "always":
        structure = True
    elif setting == "never":
        structure = False
    elif setting == "matched":
        structure = ARMS[arm].dataset_config == STRUCTURED
    else:
        raise InputError(f"--finetune-structure: {setting!r} is not one of always, never, matched")
    # One set of heading globals for every model (the experiment's), so that with "always" the plain model
    # gets the same global tokens in fine-tuning as the structured one; "cls" is the model config's own.
    heading_types = [t for t in args.global_attention_types if t != "cls"]

    length = args.finetune_max_seq_length or args.max_seq_length
    downstream = {}
    for task in SCIREX_TASKS:
        # scirex-ner runs first: scirex-salient is also scored end to end on its predicted mentions, seed by seed.
        ner_out = Path(out) / "scirex-ner"
        end_to_end = task == "scirex-salient" and "scirex-ner" in SCIREX_TASKS
        results = run_finetune(
            FinetuneArguments(
                task=task,
                scirex=str(args.scirex),
                model=str(model_dir),
                output_dir=str(Path(out) / task),
                seeds=list(args.finetune_seeds),
                num_train_epochs=args.finetune_epochs,
                learning_rate=args.finetune_learning_rate,
                per_device_batch_size=args.per_device_batch_size,
                max_seq_length=length,
                stride=length // 4,
                mixed_precision=args.mixed_precision,
                use_structure=structure,
                global_attention_types=heading_types,
                max_docs=args.scirex_max_docs,
                max_steps=args.finetune_max_steps,
                ner_predictions=str(ner_out) if end_to_end else None,
            )
        )
        name = task
        run = {
            "split_sizes": results.get("split_sizes"),
            "eval_split": results.get("eval_split"),
            "split_source": results.get("split_source"),
            "steps_per_seed": results.get("steps_per_seed"),
            "finetune_structure": setting,
            "use_structure": results.get("use_structure", structure),
            "global_attention_types": heading_types if structure else [],
        }
        metrics = results["metrics"]
        # The task's metrics (trainers/tasks.py): its own, then SciREX's cluster scores where it has them.
        flat = {
            **metrics,
            **{key: metrics.get("salient_clusters", {}).get(key.split("_")[-1]) for key in CLUSTER_METRICS},
            **{key: metrics.get("end_to_end", {}).get(key.split("_")[-1]) for key in END_TO_END_METRICS},
        }
        downstream[name] = {m: flat[m] for m in TASKS[task].metrics if flat.get(m) is not None}
        if "end_to_end" in metrics:
            run.update(
                {
                    "end_to_end_baselines": metrics["end_to_end"]["baselines"],
                    "per_paper_end_to_end_f1": {
                        str(entry["seed"]): dict(entry["end_to_end"]["per_paper"])
                        for entry in results.get("per_seed", [])
                    },
                    "end_to_end_rule": (results.get("end_to_end") or {}).get("rule"),
                    "end_to_end_files": {
                        seed: f"{task}/{path}"
                        for seed, path in ((results.get("end_to_end") or {}).get("files") or {}).items()
                    },
                }
            )
        clusters = metrics.get("salient_clusters")
        if clusters:
            baselines = results.get("baselines") or {}
            run.update(
                {
                    "eval_documents": baselines.get("documents"),
                    "baselines": baselines,
                    "per_paper_cluster_f1": {
                        str(entry["seed"]): dict(entry["salient_clusters"]["per_paper"])
                        for entry in results.get("per_seed", [])
                        if "salient_clusters" in entry
                    },
                    "cluster_rule": (results.get("salient_clusters") or {}).get("rule"),
                    # Relative to ``out`` (the experiment's finetune/<model key>/ folder).
                    "cluster_files": {
                        seed: f"{task}/{path}"
                        for seed, path in ((results.get("salient_clusters") or {}).get("files") or {}).items()
                    },
                }
            )
        runs[name] = run
    return downstream


def write_model_cards(model_dirs: dict[str, Path], results: dict) -> list[str]:
    for key, model_dir in model_dirs.items():
        write_model_card(model_dir, results={**results, "variant": key})
    return list(model_dirs)


# ----------------------------------------------------------------------------- the run


def _settings(args: ExperimentArguments) -> dict:
    settings = dataclasses.asdict(args)
    settings["arm_global_attention_types"] = {arm: arm_global_types(args, arm) for arm in args.arms}
    settings["probe_max_length"] = args.probe_max_length or args.max_seq_length
    settings["finetune_max_seq_length"] = args.finetune_max_seq_length or args.max_seq_length
    return settings


def run_experiment(args: ExperimentArguments) -> Path:
    """Run every step in a temporary folder beside the output, then move it into place."""
    output = Path(args.output_dir).resolve()
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        _run_steps(args, work, output)
        _move_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return output


def _move_into_place(work: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
    work.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_key(arm: str, seed: int) -> str:
    """The name of one pre-trained model in ``results.json`` and its folder under ``models/``."""
    return f"{arm}/seed-{seed}"


def _run_steps(args: ExperimentArguments, work: Path, output: Path) -> None:
    keys = [(arm, seed, model_key(arm, seed)) for seed in args.seeds for arm in args.arms]
    models = {key: work / "models" / f"seed-{seed}" / arm for arm, seed, key in keys}
    timings: dict[str, float] = {}
    state: dict = {"pretrain": {}, "documents": {}, "downstream": {}}

    def corpus() -> None:
        state["corpus"], state["build_report"] = build_corpus_step(args, work)

    def tokenizer() -> None:
        state["tokenizer"] = tokenizer_step(args, work, state["corpus"])

    def pretrain(arm: str, seed: int, key: str) -> Callable[[], None]:
        def step() -> None:
            pretrain_step(
                args, pretrain_arguments(args, state["corpus"], state["tokenizer"], arm, seed, models[key])
            )
            state["pretrain"][key], state["documents"][key] = read_pretrain_metrics(models[key])
            # The tokenized-dataset cache is rebuilt cheaply and would only bloat the experiment folder.
            shutil.rmtree(models[key].parent / f".cache-{arm}", ignore_errors=True)

        return step

    first_seed = [(arm, key) for arm, seed, key in keys if seed == args.seeds[0]]

    def attention() -> None:
        state["attention"] = analyze(
            [models[key] for _, key in first_seed],
            state["corpus"],
            work / "attention",
            labels=[arm for arm, _ in first_seed],
            max_length=args.probe_max_length or args.max_seq_length,
            max_docs=args.probe_max_docs,
        )

    def finetune(arm: str, key: str) -> Callable[[], None]:
        def step() -> None:
            runs = state.setdefault("scirex_runs", {}).setdefault(key, {})
            state["downstream"][key] = finetune_step(args, arm, models[key], work / "finetune" / key, runs)

        return step

    steps: list[tuple[str, Callable[[], None]]] = [
        ("build corpus", corpus),
        ("tokenizer", tokenizer),
        *[(f"pre-train {key}", pretrain(arm, seed, key)) for arm, seed, key in keys],
        ("attention analysis", attention),
    ]
    if args.scirex:
        steps += [(f"SciREX fine-tune {key}", finetune(arm, key)) for arm, _, key in keys]

    with tqdm(total=len(steps) + 1, desc="experiment", unit="step", position=0) as bar:
        for name, step in steps:
            bar.set_postfix_str(name)
            logger.info("experiment step: %s", name)
            start = time.perf_counter()
            step()
            timings[name] = time.perf_counter() - start
            bar.update(1)

        bar.set_postfix_str("report")
        results: ExperimentResults = {
            "settings": _settings(args),
            "tokenizer": {
                # Where it will be: the work folder becomes the output folder.
                "path": str(_final_path(Path(state["tokenizer"]), work, output)),
                "sha256": tokenizer_hash(state["tokenizer"]),
            },
            "models": {
                key: {
                    "arm": arm,
                    "seed": seed,
                    "checkpoint": str(output / "models" / f"seed-{seed}" / arm),
                    "pretrain": state["pretrain"][key],
                    "downstream": state["downstream"].get(key, {}),
                }
                for arm, seed, key in keys
            },
            "bits": compare_arms(args, state["pretrain"], state["documents"]),
            "attention": {
                "labels": [arm for arm, _ in first_seed],
                "summary": state["attention"]["summary"],
                "probe": state["attention"]["probe"],
                "figures": [f"attention/{name}" for name in state["attention"]["figures"]],
            },
        }
        if state.get("scirex_runs"):
            # Per model and task: split, baselines, per-paper scores (the paired comparison reads them).
            results["scirex_runs"] = state["scirex_runs"]
        write_results(work / RESULTS_FILE, results)
        cards = write_model_cards(models, results)
        write_report(
            results,
            work,
            build_report=state["build_report"],
            timings=timings,
            model_cards=cards,
            model_dirs=models,
            scirex_runs=state.get("scirex_runs"),
        )
        bar.update(1)


def _final_path(path: Path, work: Path, output: Path) -> Path:
    return output / path.relative_to(work) if path.is_relative_to(work) else path


def compare_arms(args: ExperimentArguments, scores: dict, documents: dict) -> dict:
    """The ``bits`` section of ``results.json``: every arm's bits per ``[MASK]`` token per seed, the
    paired comparisons with the reference arm, the baselines, and what the scale of the run allows."""
    reference = "plain" if "plain" in args.arms else args.arms[-1]
    first = model_key(args.arms[0], args.seeds[0])
    ids, mask_tokens = documents[first]["ids"], documents[first]["mask_tokens"]
    for key, docs in documents.items():
        # The comparison is paired: the same documents and the same [MASK] positions in every model.
        if docs["ids"] != ids or docs["mask_tokens"] != mask_tokens:
            raise RuntimeError(
                f"{key} was evaluated on other documents or masks than {first}: not comparable"
            )
    scored = [k for k, n in enumerate(mask_tokens) if n > 0]

    def per_doc(key: str, field: str = "bits") -> list[float]:
        return [documents[key][field][k] for k in scored]

    per_seed: dict[str, dict] = {}
    comparisons: dict[str, dict] = {}
    for seed in args.seeds:
        entry: dict[str, dict] = {"arms": {}, "differences": {}}
        for arm in args.arms:
            s = scores[model_key(arm, seed)]
            entry["arms"][arm] = {
                "bits_per_mask_token": s["eval_bits_per_mask_token"],
                "bits_per_mask_token_pooled": s["eval_bits_per_mask_token_pooled"],
                "initial_bits_per_mask_token": s["initial_eval_bits_per_mask_token"],
                "initial_bits_per_mask_token_pooled": s["initial_eval_bits_per_mask_token_pooled"],
                "global_tokens_per_sequence": s["global_tokens_per_sequence"],
                "train_tokens_seen": s["train_tokens_seen"],
            }
        for arm in args.arms:
            if arm != reference:
                entry["differences"][f"{arm} - {reference}"] = paired_bootstrap(
                    per_doc(model_key(arm, seed)), per_doc(model_key(reference, seed))
                )
        per_seed[str(seed)] = entry
    for arm in args.arms:
        if arm == reference:
            continue
        name = f"{arm} - {reference}"
        across = t_interval([per_seed[str(seed)]["differences"][name]["mean"] for seed in args.seeds])
        comparisons[name] = {**across, "verdict": verdict(across["ci"])}

    unigram = scores[first]
    tokens_seen = min(model["train_tokens_seen"] for model in scores.values())
    widths = [c["ci"][1] - c["ci"][0] for c in comparisons.values() if c["ci"] is not None] or [
        d["ci"][1] - d["ci"][0] for e in per_seed.values() for d in e["differences"].values()
    ]
    return {
        "definition": (
            "bits per [MASK] token: cross-entropy / ln 2 over the positions whose input is [MASK] (random and "
            "kept tokens are not scored); each validation document cut to its first max_seq_length tokens; "
            "'bits_per_mask_token' is the mean of per-document means (the paper's figure), '_pooled' the "
            "total over all [MASK] tokens"
        ),
        "reference_arm": reference,
        "documents": len(scored),
        "mask_tokens": int(sum(mask_tokens)),
        "eval_seed": args.eval_seed,
        "seeds": per_seed,
        "comparisons": comparisons,
        "baselines": {
            "unigram_bits_per_mask_token": unigram["unigram_bits_per_mask_token"],
            "unigram_bits_per_mask_token_pooled": unigram["unigram_bits_per_mask_token_pooled"],
        },
        "scale": assess_scale(tokens_seen, max(widths) if widths else None),
        "paper": dict(PAPER_BITS),
    }


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: ExperimentArguments) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    output = run_experiment(args)
    minutes = (time.perf_counter() - start) / 60
    print(f"experiment finished in {minutes:.1f} min; report: {output / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("experiment", main))
