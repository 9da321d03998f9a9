"""``structformer publish``: stage, validate, then upload a model or a corpus to the Hugging Face Hub.

``structformer publish model DIR --repo-id ORG/NAME`` and ``structformer publish dataset DIR --repo-id ORG/NAME``
run three steps, and stop at the first that fails:

1. assemble a staging folder holding exactly what will be sent, with a freshly generated card;
2. load the staging folder in a fresh Python process that cannot import ``structformer``, offline and with an
   empty remote-code cache, as a Hub user would: the model must give the same logits as ``DIR``, the dataset
   must load with both configs and default to ``arxiv_structured``;
3. upload it with ``huggingface_hub`` (``create_repo`` then ``upload_folder``).

``--dry-run`` stops after step 2 and prints what would be sent. Nothing is sent when validation fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files

import structformer.modeling
from structformer.arguments import parse_dataclass
from structformer.dataset_scripts.card import write_dataset_card
from structformer.dataset_scripts.schema import CONFIG_NAMES, PLAIN, find_shards
from structformer.errors import USER_ERRORS, InputError, run_command
from structformer.hub_cards import cards
from structformer.hub_cards.arguments import PublishArguments
from structformer.modeling import StructBertForMaskedLM
from structformer.modeling.modeling_structbert import AUTO_MAP
from structformer.trainers.run_files import EVAL_RESULTS_FILE, TRAINING_ARGS_FILE

# Marks a folder this command created, so that a re-run may clear it; never uploaded.
STAGING_MARKER = ".structformer-staging"


def remote_code_files() -> tuple[str, ...]:
    """The remote-code files a model needs: modeling_structbert.py and what it imports relatively, found as
    transformers' save_pretrained finds them (so a new module in modeling/ is uploaded without a list to edit)."""
    model_file = Path(structformer.modeling.__file__).parent / "modeling_structbert.py"
    return tuple(sorted({model_file.name, *(Path(f).name for f in get_relative_import_files(model_file))}))


MODELING_FILES = remote_code_files()
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# Records of the run that a reader of the repository may want; the card quotes them.
MODEL_EXTRA_FILES = (TRAINING_ARGS_FILE, EVAL_RESULTS_FILE)
VALIDATION_SENTENCE = "Structure-aware pre-training gives headings global attention."
# Files above this size are hard-linked into the staging folder when possible instead of copied.
LINK_THRESHOLD = 1 << 20


class PublishError(RuntimeError):
    """A step of ``publish`` failed; the message says what, and where the staging folder is."""


# ----------------------------------------------------------------------------- staging


def prepare_staging_dir(staging_dir: str | Path | None, kind: str) -> Path:
    """An empty staging folder: the given one (created, or cleared if a previous run made it) or a new temp dir."""
    if staging_dir is None:
        path = Path(tempfile.mkdtemp(prefix=f"structformer-publish-{kind}-"))
    else:
        # Absolute, because the fresh-process check runs in another working directory.
        path = Path(staging_dir).resolve()
        if path.exists() and any(path.iterdir()):
            if not (path / STAGING_MARKER).is_file():
                raise InputError(
                    f"staging folder {path} is not empty and was not made by publish; choose another"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    (path / STAGING_MARKER).write_text("made by structformer publish; safe to delete\n", encoding="utf-8")
    return path


def without_local_paths(value: Any) -> Any:
    """A JSON value with every absolute path cut to its last component: the run records name folders of
    the publisher's machine (``--output-dir /home/me/...``), which mean nothing elsewhere and leak its layout."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    return value


def _strip_local_paths(staged: Path) -> None:
    """Rewrite a staged JSON record with :func:`without_local_paths` (a missing file is left missing)."""
    if not staged.is_file():
        return
    record = json.loads(staged.read_text(encoding="utf-8"))
    staged.unlink()  # it may be a hard link to the source: write a new file
    staged.write_text(json.dumps(without_local_paths(record), indent=2) + "\n", encoding="utf-8")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_size > LINK_THRESHOLD:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links not supported: copy instead
    shutil.copy2(src, dst)


def _place_all(pairs: Sequence[tuple[Path, Path]], desc: str) -> None:
    for src, dst in tqdm(pairs, desc=desc, unit="file", disable=len(pairs) < 5):
        _place(src, dst)


def _modeling_source(model_dir: Path) -> Path:
    """Where the remote-code files come from: the model folder if it has them, else the installed package."""
    if all((model_dir / name).is_file() for name in MODELING_FILES):
        return model_dir
    return Path(structformer.modeling.__file__).parent


def check_model_dir(model_dir: Path) -> tuple[list[Path], list[Path]]:
    """The weights and tokenizer files of ``model_dir``; InputError when something a Hub model needs is absent."""
    if not (model_dir / "config.json").is_file():
        raise InputError(
            f"{model_dir}: no config.json, so not a saved model folder; "
            "give the folder written by `structformer pretrain --output-dir` or save_pretrained"
        )
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise InputError(
            f"{model_dir}: no *.safetensors weights; save the model with save_pretrained "
            "(pickled .bin weights are not published)"
        )
    tokenizer = [model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not any(p.name in ("tokenizer.json", "vocab.txt", "vocab.json") for p in tokenizer):
        raise InputError(
            f"no tokenizer in {model_dir} (tokenizer.json, vocab.txt or vocab.json); "
            "save the model's tokenizer there with tokenizer.save_pretrained"
        )
    return weights, tokenizer


def stage_model(
    model_dir: Path,
    staging: Path,
    *,
    results: str | Path | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    model_key: str | None = None,
) -> list[Path]:
    """Copy what a model repository needs into ``staging`` and write its card; returns the staged files."""
    weights, tokenizer = check_model_dir(model_dir)
    config_path = model_dir / "config.json"
    index = model_dir / "model.safetensors.index.json"

    modeling = _modeling_source(model_dir)
    pairs = [(p, staging / p.name) for p in weights + tokenizer]
    pairs += [(modeling / name, staging / name) for name in MODELING_FILES]
    pairs += [(model_dir / n, staging / n) for n in MODEL_EXTRA_FILES if (model_dir / n).is_file()]
    if index.is_file():
        pairs.append((index, staging / index.name))
    _place_all(pairs, "stage model")
    for name in MODEL_EXTRA_FILES:
        _strip_local_paths(staging / name)

    config = json.loads(config_path.read_text(encoding="utf-8"))
    # Older folders may predate auto_map; the Hub needs it to find the remote code.
    config["auto_map"] = {**AUTO_MAP, **(config.get("auto_map") or {})}
    (staging / "config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    cards.write_model_card(
        model_dir,
        results,
        base_model=base_model,
        datasets=datasets,
        license=license,
        repo_id=repo_id,
        revision=revision,
        model_key=model_key,
        output_dir=staging,
    )
    return staged_files(staging)


def stage_dataset(
    corpus_dir: Path, staging: Path, *, repo_id: str | None = None, tokenizer: str | Path | None = None
) -> list[Path]:
    """Copy the Parquet shards and ``build_report.json`` into ``staging`` and write the dataset card."""
    shards = find_shards(corpus_dir)  # raises when there are no arxiv_structured shards
    if PLAIN not in shards:
        raise InputError(
            f"{corpus_dir}: no Parquet shards under data/{PLAIN}/; rebuild it with structformer build-corpus"
        )
    pairs = [
        (path, staging / path.relative_to(corpus_dir))
        for splits in shards.values()
        for paths in splits.values()
        for path in paths
    ]
    report = corpus_dir / "build_report.json"
    if report.is_file():
        pairs.append((report, staging / report.name))
    _place_all(pairs, "stage dataset")
    _strip_local_paths(staging / "build_report.json")  # its options and rejects name local files
    write_dataset_card(staging, repo_id=repo_id, tokenizer=tokenizer)
    return staged_files(staging)


def staged_files(staging: Path) -> list[Path]:
    """Every file that ``upload_folder`` will send, relative to ``staging``."""
    return sorted(
        p.relative_to(staging) for p in staging.rglob("*") if p.is_file() and p.name != STAGING_MARKER
    )


# ----------------------------------------------------------------------------- validation

# Runs in a fresh interpreter (python -I), so nothing from this process leaks into it; structformer is made
# unimportable, so the staging folder must stand on its own exactly as it will on the Hub.
_BLOCK_STRUCTFORMER = """
import json, sys
class _NoStructformer:
    def find_spec(self, name, path=None, target=None):
        if name == "structformer" or name.startswith("structformer."):
            raise ImportError("the staged repository imports structformer, which Hub users do not have")
        return None
sys.meta_path.insert(0, _NoStructformer())
spec = json.loads(sys.argv[1])
"""

_MODEL_CHECK = (
    _BLOCK_STRUCTFORMER
    + """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

model = AutoModelForMaskedLM.from_pretrained(spec["staging"], trust_remote_code=True).eval()
inputs = load_file(spec["inputs"])
with torch.no_grad():
    logits = model(**inputs).logits
save_file({"logits": logits.float().contiguous()}, spec["outputs"])
# transformers 5 reads config.json (remote code) before it picks the tokenizer class.
tokenizer = AutoTokenizer.from_pretrained(spec["staging"], trust_remote_code=True)
print(json.dumps({
    "class": type(model).__name__,
    "module": type(model).__module__,
    "token_ids": tokenizer(spec["sentence"])["input_ids"],
}))
"""
)

_DATASET_CHECK = (
    _BLOCK_STRUCTFORMER
    + """
import datasets

datasets.disable_progress_bars()
staging, cache = spec["staging"], spec["cache"]
names = datasets.get_dataset_config_names(staging)
default = datasets.load_dataset_builder(staging, cache_dir=cache).config.name
structured = datasets.load_dataset(staging, cache_dir=cache)
plain = datasets.load_dataset(staging, "arxiv_plain", cache_dir=cache)
problems = []
if sorted(structured) != sorted(plain):
    problems.append(f"splits differ: arxiv_structured {sorted(structured)}, arxiv_plain {sorted(plain)}")
for split in structured:
    if split not in plain:
        continue
    a, b = structured[split].data, plain[split].data
    if not (a.column("id").equals(b.column("id")) and a.column("text").equals(b.column("text"))):
        problems.append(f"split {split}: the two configs do not hold the same ids and text")
print(json.dumps({
    "configs": names,
    "default": default,
    "structured_columns": structured[next(iter(structured))].column_names,
    "splits": {split: structured[split].num_rows for split in structured},
    "problems": problems,
}))
"""
)


def _fresh_env(cache_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(cache_root / "hf_home"),
        "HF_MODULES_CACHE": str(cache_root / "modules"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    return env


def _run_check(script: str, spec: dict, cache_root: Path, what: str, timeout: float) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", script, json.dumps(spec)],
            env=_fresh_env(cache_root),
            cwd=cache_root,
            capture_output=True,
            stdin=subprocess.DEVNULL,  # a "trust this code?" prompt must fail, not wait
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise PublishError(f"{what}: the fresh-process check took more than {timeout:.0f} s") from err
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise PublishError(f"{what}: loading the staged folder in a fresh process failed:\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise PublishError(f"{what}: the fresh-process check printed no result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def validation_inputs(config: dict, length: int = 48, seed: int = 0) -> dict:
    """A fixed batch exercising padding, global tokens and sections: two rows, the second padded."""
    length = min(length, int(config.get("max_position_embeddings", length)))
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, int(config["vocab_size"]), (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, length * 3 // 4 :] = 0
    global_attention_mask = torch.zeros(2, length, dtype=torch.long)
    section_ids = torch.zeros(2, length, dtype=torch.long)
    for row, starts in enumerate(([length // 4, length // 2], [length // 3])):
        for section, start in enumerate(starts, start=1):
            global_attention_mask[row, start : start + 2] = 1
            section_ids[row, start:] = section
    global_attention_mask[:, 1:3] = 1  # a title
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "global_attention_mask": global_attention_mask,
        "section_ids": section_ids,
    }


def model_reference(model_dir: Path) -> dict:
    """Load ``model_dir`` with this package's classes; its logits and tokens on fixed inputs are the reference."""
    try:
        model = StructBertForMaskedLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # any load failure (truncated weights, bad config) means: do not publish
        raise PublishError(f"{model_dir}: the model does not load: {type(err).__name__}: {err}") from err
    inputs = validation_inputs(model.config.to_dict())
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    return {"inputs": inputs, "logits": logits, "token_ids": tokenizer(VALIDATION_SENTENCE)["input_ids"]}


def validate_model(
    model_dir: Path, staging: Path, *, reference: dict | None = None, timeout: float = 900.0
) -> dict:
    """Check that ``staging`` loads without structformer and gives the same logits and tokens as ``model_dir``."""
    reference = reference or model_reference(model_dir)
    inputs, expected, expected_ids = reference["inputs"], reference["logits"], reference["token_ids"]
    with tempfile.TemporaryDirectory(prefix="structformer-validate-") as tmp:
        tmp_path = Path(tmp)
        save_file(inputs, str(tmp_path / "inputs.safetensors"))
        spec = {
            "staging": str(staging),
            "inputs": str(tmp_path / "inputs.safetensors"),
            "outputs": str(tmp_path / "logits.safetensors"),
            "sentence": VALIDATION_SENTENCE,
        }
        result = _run_check(_MODEL_CHECK, spec, tmp_path, f"model {staging}", timeout)
        logits = load_file(spec["outputs"])["logits"]
    if result["class"] != "StructBertForMaskedLM" or not result["module"].startswith("transformers_modules"):
        raise PublishError(
            f"model {staging}: loaded {result['module']}.{result['class']}, not the repository's remote code"
        )
    if logits.shape != expected.shape:
        raise PublishError(
            f"model {staging}: logits of shape {tuple(logits.shape)}, expected {tuple(expected.shape)}"
        )
    difference = (logits - expected).abs().max().item()
    if not torch.allclose(logits, expected, atol=1e-4, rtol=1e-4):
        raise PublishError(
            f"model {staging}: the staged model's logits differ from {model_dir}'s by up to {difference:.3g}"
        )
    if result["token_ids"] != expected_ids:
        raise PublishError(f"model {staging}: the staged tokenizer does not tokenize like {model_dir}'s")
    return {"max_abs_logit_difference": difference, "class": result["class"]}


def validate_dataset(staging: Path, *, timeout: float = 900.0) -> dict:
    """Check that ``staging`` loads with both configs, defaults to ``arxiv_structured``, and agrees with its report."""
    with tempfile.TemporaryDirectory(prefix="structformer-validate-") as tmp:
        spec = {"staging": str(staging), "cache": str(Path(tmp) / "datasets")}
        result = _run_check(_DATASET_CHECK, spec, Path(tmp), f"dataset {staging}", timeout)
    problems = list(result["problems"])
    if sorted(result["configs"]) != sorted(CONFIG_NAMES):
        problems.append(f"configs are {result['configs']}, expected {list(CONFIG_NAMES)}")
    if result["default"] != cards.STRUCTURED:
        problems.append(f"the default config is {result['default']!r}, expected {cards.STRUCTURED!r}")
    if "headers" not in result["structured_columns"]:
        problems.append("the default config has no 'headers' column")
    report_path = staging / "build_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if isinstance(report.get("records"), int) and sum(result["splits"].values()) != report["records"]:
            problems.append(
                f"the shards hold {sum(result['splits'].values())} rows but build_report.json says {report['records']}"
            )
    if problems:
        raise PublishError(f"dataset {staging}: " + "; ".join(problems))
    return result


# ----------------------------------------------------------------------------- upload


def describe(staging: Path, files: Sequence[Path]) -> str:
    """The file list with sizes, as printed before an upload or by ``--dry-run``."""
    sizes = [(staging / f).stat().st_size for f in files]
    width = max((len(str(f)) for f in files), default=0)
    lines = [f"  {str(f):<{width}}  {_size(s):>10}" for f, s in zip(files, sizes)]
    lines.append(f"  {len(files)} files, {_size(sum(sizes))} in all")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def upload(
    staging: Path,
    repo_id: str,
    repo_type: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Create the repository (and branch) if needed and upload ``staging``; returns the commit URL."""
    # Looked up on the module at call time, so that tests can stand in for the Hub.
    token = token or huggingface_hub.get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login`. "
            f"Nothing was sent; the validated staging folder is {staging}"
        )
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or f"Publish {repo_type} with structformer",
            ignore_patterns=[STAGING_MARKER],
        )
    except Exception as err:  # network, auth and Hub errors come in many types; all end the same way
        raise PublishError(
            f"upload to {repo_id} failed ({type(err).__name__}: {err}); "
            f"nothing more was sent; the validated staging folder is {staging}: re-run this command to retry"
        ) from err
    return str(getattr(commit, "commit_url", commit))


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> PublishArguments:
    return parse_dataclass(PublishArguments, argv)


def check_arguments(args: PublishArguments) -> None:
    """Refuse what would fail later (or on the Hub), before anything is loaded or staged, dry run or not."""
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        raise InputError(f"--repo-id {args.repo_id!r}: give the Hub repository as ORG/NAME")
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as err:
        raise InputError(f"--repo-id {args.repo_id!r} is not a valid Hub repository id: {err}") from err
    if not args.dir.is_dir():
        raise InputError(f"{args.dir}: no such folder; give the {args.kind} folder to publish")
    if args.kind == "model":
        check_model_dir(args.dir)


def publish(args: PublishArguments) -> Path:
    """Run the three steps; returns the staging folder.

    A staging folder made in the temp directory (no ``--staging-dir``) is removed when the command ends,
    after success, failure or Ctrl-C alike; a ``--staging-dir`` is kept for inspection.
    Raises InputError (or an OSError of :data:`USER_ERRORS`) for bad input and PublishError when a step fails.
    """
    check_arguments(args)
    source = args.dir.resolve()
    # The model must load here first: a folder that does not load gives no reference to compare with.
    reference = model_reference(source) if args.kind == "model" else None
    temporary = args.staging_dir is None
    staging = prepare_staging_dir(args.staging_dir, args.kind)
    try:
        _stage_validate_upload(args, source, reference, staging)
    except PublishError as err:
        if not temporary:
            raise
        raise PublishError(
            f"{err} (that folder was temporary and is removed; pass --staging-dir to keep one)"
        ) from err
    finally:
        if temporary:
            shutil.rmtree(staging, ignore_errors=True)
    return staging


def _stage_validate_upload(
    args: PublishArguments, source: Path, reference: dict | None, staging: Path
) -> None:
    try:
        if args.kind == "model":
            files = stage_model(
                source,
                staging,
                results=args.results,
                repo_id=args.repo_id,
                revision=args.revision,
                base_model=args.base_model,
                datasets=args.datasets,
                license=args.license,
                model_key=args.model_key,
            )
        else:
            files = stage_dataset(source, staging, repo_id=args.repo_id, tokenizer=args.tokenizer)
    except USER_ERRORS:
        raise  # bad input is reported as such (status 2), not as a failed step
    except (OSError, ValueError) as err:
        raise PublishError(f"staging {source} failed: {err}") from err
    print(f"staged {args.kind} {source} in {staging}")

    if args.kind == "model":
        check = validate_model(source, staging, reference=reference, timeout=args.timeout)
        print(
            f"validated: {check['class']} loads with trust_remote_code in a fresh process; "
            f"logits match {source} (max |difference| {check['max_abs_logit_difference']:.2g})"
        )
    else:
        check = validate_dataset(staging, timeout=args.timeout)
        rows = ", ".join(f"{split} {n:,}" for split, n in check["splits"].items())
        print(
            f"validated: configs {check['configs']} load in a fresh process, default {check['default']} ({rows})"
        )

    repo_type = "model" if args.kind == "model" else "dataset"
    target = f"{repo_type} repository {args.repo_id}" + (
        f" (branch {args.revision})" if args.revision else ""
    )
    visibility = "private" if args.private else "public"
    if args.dry_run:
        print(f"dry run: would upload to {visibility} {target}:\n{describe(staging, files)}")
        return
    print(f"uploading to {visibility} {target}:\n{describe(staging, files)}")
    url = upload(
        staging,
        args.repo_id,
        repo_type,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.token,
    )
    print(f"published: {url}")


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: PublishArguments) -> int:
    try:
        publish(args)
    except PublishError as err:
        print(f"structformer publish: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command("publish", main))
