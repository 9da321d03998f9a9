"""The arguments of ``structformer publish``, a dataclass parsed by :mod:`structformer.arguments`.

This module imports nothing heavy, so that ``structformer publish --help`` answers before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from structformer.arguments import require

# Options that only describe a model, and the one that only describes a corpus.
MODEL_OPTIONS = ("results", "model_key", "base_model", "datasets")
DATASET_OPTIONS = ("tokenizer",)


@dataclass(kw_only=True)
class PublishArguments:
    """``structformer publish {model,dataset} DIR --repo-id ORG/NAME`` options."""

    command: ClassVar[str] = "publish"
    description: ClassVar[str] = (
        "Stage, validate in a fresh process, then upload a model (a pretrain --output-dir) or a corpus (a "
        "build-corpus --output) to the Hugging Face Hub."
    )

    kind: Literal["model", "dataset"] = field(metadata={"help": "what DIR holds", "positional": True})
    dir: Path = field(metadata={"help": "the folder to publish", "positional": True})
    repo_id: str = field(metadata={"help": "ORG/NAME on the Hub"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(
        default=None, metadata={"help": "branch to upload to (created if missing); default main"}
    )
    commit_message: str | None = field(default=None, metadata={"help": "the Hub commit's message"})
    dry_run: bool = field(default=False, metadata={"help": "stage and validate, print what would be sent"})
    staging_dir: Path | None = field(
        default=None, metadata={"help": "where to stage (default: a new temp dir)"}
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)"}
    )
    timeout: float = field(default=900.0, metadata={"help": "seconds allowed for the fresh-process check"})
    # model only
    results: Path | None = field(
        default=None, metadata={"help": "model: the experiment's results.json, for the card"}
    )
    model_key: str | None = field(
        default=None, metadata={"help": "model: which model of results.json this is (e.g. structured)"}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "model: Hub id of the checkpoint this one was converted from"}
    )
    datasets: list[str] | None = field(default=None, metadata={"help": "model: Hub ids of the training data"})
    license: str = field(default="apache-2.0", metadata={"help": "the license (Hub identifier)"})
    # dataset only
    tokenizer: Path | None = field(
        default=None, metadata={"help": "dataset: a tokenizer folder, for token counts in the card"}
    )

    def __post_init__(self) -> None:
        other = DATASET_OPTIONS if self.kind == "model" else MODEL_OPTIONS
        given = [name for name in other if getattr(self, name) is not None]
        require(
            not given,
            f"publish {self.kind}: {', '.join('--' + n.replace('_', '-') for n in given)} "
            f"describe{'s' if len(given) == 1 else ''} a {'dataset' if self.kind == 'model' else 'model'}",
        )
        require(self.timeout > 0, f"--timeout must be positive, got {self.timeout}")
