"""The fine-tuning tasks, as data: one entry of :data:`TASKS` per task, read by ``finetune`` (model head,
inputs, labels), ``experiment`` (which tasks run on SciREX, which metrics it keeps) and the model cards (Hub
task type, title).

A task's name is its one spelling everywhere: ``--task``, the experiment's folders and the keys of
``results.json``. Adding a task is one entry here; a new kind of input or label also needs its feature builder
in ``finetune`` (``scirex_task_data`` builds ``bio`` and ``mentions``, ``file_task_data`` ``rows`` and ``tags``).
This module imports nothing heavy, so the cards and the command line can read the table without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The metrics every task reports: what its ``f1`` means is the task's ``definition``.
BASE_METRICS: tuple[str, ...] = ("f1", "precision", "recall")
# scirex-salient's salient-cluster metrics (gold clusters given, and end to end on predicted mentions).
CLUSTER_METRICS: tuple[str, ...] = ("cluster_f1", "cluster_precision", "cluster_recall")
END_TO_END_METRICS: tuple[str, ...] = ("end_to_end_f1", "end_to_end_precision", "end_to_end_recall")


@dataclass(frozen=True)
class Task:
    """One fine-tuning task.

    ``head``: the class in ``structformer.modeling`` that ``finetune`` loads with ``from_pretrained``.
    ``inputs``: ``scirex`` (``--scirex``) or ``files`` (``--train-file`` and ``--validation-file`` /
    ``--test-file``). ``labels``: what a feature is labelled with: ``bio`` (a tag per word), ``mentions``
    (a label per gold mention span), ``rows`` (a label per row) or ``tags`` (a tag per token of a row).
    ``metrics``: the keys the experiment copies into ``results.json`` (``models.<key>.downstream.<name>``).
    ``hub_task`` / ``title``: the model card's task type and readable name. ``definition``: what ``f1`` /
    ``precision`` / ``recall`` measure, for the report.
    """

    name: str
    head: str
    inputs: Literal["scirex", "files"]
    labels: Literal["bio", "mentions", "rows", "tags"]
    metrics: tuple[str, ...]
    hub_task: str
    title: str
    definition: str


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="scirex-ner",
            head="StructBertForTokenClassification",
            inputs="scirex",
            labels="bio",
            metrics=BASE_METRICS,
            hub_task="token-classification",
            title="SciREX entity recognition",
            definition="entity-level micro scores (seqeval) of BIO tags over Method / Task / Metric / Material, "
            "every word of the paper tagged (windows stitched back to words)",
        ),
        Task(
            name="scirex-salient",
            head="StructBertForMentionClassification",
            inputs="scirex",
            labels="mentions",
            metrics=BASE_METRICS + CLUSTER_METRICS + END_TO_END_METRICS,
            hub_task="text-classification",
            title="SciREX salient entity classification",
            definition="binary classification of the GOLD mentions (every `ner` span); a mention is positive "
            "when its span is in a `coref` (salient) cluster",
        ),
        Task(
            name="sequence-classification",
            head="StructBertForSequenceClassification",
            inputs="files",
            labels="rows",
            metrics=BASE_METRICS + ("accuracy",),
            hub_task="text-classification",
            title="sequence classification",
            definition="accuracy, and F1 / precision / recall (binary for two labels, macro-averaged otherwise)",
        ),
        Task(
            name="token-classification",
            head="StructBertForTokenClassification",
            inputs="files",
            labels="tags",
            metrics=BASE_METRICS,
            hub_task="token-classification",
            title="token classification",
            definition="entity-level micro scores (seqeval)",
        ),
    )
}
SCIREX_TASKS: tuple[str, ...] = tuple(name for name, task in TASKS.items() if task.inputs == "scirex")


def get_task(name: str) -> Task:
    """The task named ``name`` (``_`` read as ``-``); a ValueError listing the tasks otherwise."""
    task = TASKS.get(name.replace("_", "-"))
    if task is None:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return task
