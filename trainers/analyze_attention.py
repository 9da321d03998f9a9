"""Attention-pattern analysis: does structure change what the model attends to?

``structformer analyze-attention --checkpoints A B --probe PATH --output-dir OUT`` runs every
checkpoint over the same held-out probe documents, twice: once WITH the structure mask (title and
heading tokens of the levels in the checkpoint's ``global_attention_types`` are global) and once
WITHOUT it (no global heading tokens), so a structured and a plain model are compared on equal
terms. For every layer and head it measures

* ``heading_share``: the share of attention mass that body tokens give to heading tokens;
* ``keyword_attention``: the attention mass that heading tokens give to the keywords of their own
  section (the paper's measure);
* ``entropy``: the mean entropy of attention rows, in nats;
* ``distance``: the mean attention distance ``sum_j p_ij |i - j|``, in tokens.

Each measure is a token-weighted mean over all qualifying query rows of all probe documents.

Probe sets and keywords:

* a built corpus folder (``data/arxiv_structured/<split>-*.parquet``, split ``validation`` by
  default) or one such Parquet file. The keywords of a section are its ``--keywords-per-section``
  most frequent content words (lower-cased words of at least three letters that are not stop
  words) in the section's body, ties broken alphabetically; every body occurrence of those words
  in that section is a keyword token;
* a SciREX JSON-lines file: the keywords of a section are its annotated entity mentions (``ner``).

Outputs in ``OUT``: ``attention.json``, one heatmap PNG per checkpoint and measure (layer x head,
with and without the structure mask side by side), a difference map per measure between the first
two checkpoints, and ``attention_per_layer.png`` (head-averaged measures per layer).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from structformer import modeling
from structformer.arguments import parse_dataclass
from structformer.dataset_scripts.schema import STRUCTURED, CorpusNotFoundError, find_shards, shard_glob
from structformer.errors import InputError, run_command
from structformer.modeling import StructBertConfig, StructBertModel
from structformer.trainers.arguments import AnalyzeAttentionArguments
from structformer.trainers.data import tokenize_with_structure
from structformer.trainers.report import attention_figures
from structformer.trainers.scirex import encode_words, heading_levels, load_scirex, section_ids

logger = logging.getLogger(__name__)
# Below this many probe documents the command warns: the means are anecdotes of a few documents.
MIN_PROBE_DOCUMENTS = 5

MEASURES: dict[str, str] = {
    "heading_share": "share of attention mass that body tokens give to heading tokens",
    "keyword_attention": "attention mass that heading tokens give to the keywords of their own section",
    "entropy": "mean entropy of attention rows (nats)",
    "distance": "mean attention distance (tokens)",
}
MODES: dict[str, str] = {
    "structure": "with the structure mask (heading tokens global)",
    "plain": "without the structure mask (no global heading tokens)",
}

# A small closed list keeps the keyword definition reproducible without any download.
_STOP_WORDS_TEXT = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how however i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over own
same she should so some such than that the their theirs them themselves then there these they this
those through thus to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves one two three use used using we our paper
section figure table show shown shows given may can based first second new well via let also each
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]*[A-Za-z]")


@dataclass
class ProbeDocument:
    """One tokenized probe document; every field is a 1-D tensor of length ``L``.

    ``section_ids``, ``heading_mask`` and ``keyword_mask`` describe the real structure and are used
    by the measures in both modes; ``global_attention_mask`` is what the model gets WITH structure.
    """

    doc_id: str
    input_ids: torch.Tensor  # long
    global_attention_mask: torch.Tensor  # long, heading tokens of the configured levels
    section_ids: torch.Tensor  # long
    heading_mask: torch.Tensor  # bool, title and heading tokens of any level
    keyword_mask: torch.Tensor  # bool, keyword tokens (of the section they sit in)
    special_mask: torch.Tensor  # bool, [CLS]/[SEP]-like tokens


# ----------------------------------------------------------------------------- measures


def attention_measures(attentions: Sequence[torch.Tensor], doc: ProbeDocument) -> dict[str, torch.Tensor]:
    """Per-(layer, head) sums of every measure over its query rows, for one document.

    ``attentions``: one ``(1, H, L, L)`` probability tensor per layer. Returns ``{measure: (layers, H)
    sums}`` and ``{measure + "_count": rows}``, so that documents pool token-weighted by summing.
    """
    length = attentions[0].shape[-1]
    positions = torch.arange(length, dtype=torch.float64)
    distances = (positions[:, None] - positions[None, :]).abs()  # (L, L)
    heading = doc.heading_mask.bool()
    body = ~heading & ~doc.special_mask.bool()
    every = torch.ones_like(body)
    same_section = doc.section_ids[:, None] == doc.section_ids[None, :]  # (L, L)
    own_keywords = (same_section & doc.keyword_mask.bool()[None, :]).double()  # (L, L)
    # Only heading rows whose section has keyword tokens in view can attend to them at all.
    heading_rows = heading & (own_keywords.sum(-1) > 0)
    rows = {"heading_share": body, "keyword_attention": heading_rows, "entropy": every, "distance": every}

    per_layer: dict[str, list[torch.Tensor]] = {name: [] for name in rows}
    # One layer at a time keeps the float64 temporaries at (H, L, L).
    for layer in attentions:
        probs = layer[0].double()  # (H, L, L)
        values = {
            "heading_share": probs[..., heading].sum(-1),
            "keyword_attention": (probs * own_keywords).sum(-1),
            "entropy": -torch.where(probs > 0, probs * probs.clamp_min(1e-300).log(), 0.0).sum(-1),
            "distance": (probs * distances).sum(-1),
        }  # each (H, L)
        for name, value in values.items():
            per_layer[name].append(value[:, rows[name]].sum(-1))
    out: dict[str, torch.Tensor] = {name: torch.stack(sums) for name, sums in per_layer.items()}
    out.update({f"{name}_count": torch.tensor(int(mask.sum())) for name, mask in rows.items()})
    return out


@torch.no_grad()
def probe_model(model: torch.nn.Module, docs: Sequence[ProbeDocument], mode: str, desc: str = "") -> dict:
    """Run ``model`` over ``docs`` in ``mode`` ("structure" or "plain"); per-(layer, head) means."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    totals: dict[str, torch.Tensor] = {}
    for doc in tqdm(docs, desc=desc or f"probe ({mode})", leave=False):
        structured = mode == "structure"
        inputs = {
            "input_ids": doc.input_ids[None],
            "attention_mask": torch.ones_like(doc.input_ids)[None],
            "global_attention_mask": (
                doc.global_attention_mask if structured else torch.zeros_like(doc.global_attention_mask)
            )[None],
            "section_ids": (doc.section_ids if structured else torch.zeros_like(doc.section_ids))[None],
        }
        device = next(model.parameters()).device
        outputs = model(
            **{k: v.to(device) for k, v in inputs.items()}, output_attentions=True, return_dict=True
        )
        if not outputs.attentions:
            raise RuntimeError("the model returned no attentions although output_attentions=True")
        attentions = [a.float().cpu() for a in outputs.attentions]
        for key, value in attention_measures(attentions, doc).items():
            totals[key] = totals[key] + value if key in totals else value
    result: dict[str, list[list[float]] | int] = {}
    for name in MEASURES:
        count = int(totals[f"{name}_count"])
        values = totals[name] / count if count else torch.full_like(totals[name], float("nan"))
        result[name] = values.tolist()
        result[f"{name}_rows"] = count
    return result


# ----------------------------------------------------------------------------- probe sets


def _section_starts(headers: Sequence[dict]) -> list[int]:
    """Character offsets where sections 1, 2, ... begin: every heading except the title."""
    return sorted(int(h["start"]) for h in headers if h["level"] != "title")


def corpus_keywords(text: str, headers: Sequence[dict], per_section: int) -> list[tuple[int, int]]:
    """Character spans of the keyword occurrences of every section (see the module docstring)."""
    starts = _section_starts(headers)
    bounds = list(zip([0, *starts], [*starts, len(text)]))
    heading_spans = [(int(h["start"]), int(h["end"])) for h in headers]
    spans: list[tuple[int, int]] = []
    for begin, end in bounds:
        words = [
            (m.group().lower(), m.start() + begin, m.end() + begin)
            for m in _WORD.finditer(text[begin:end])
            if not any(s <= m.start() + begin < e for s, e in heading_spans)
        ]
        counts = Counter(w for w, _, _ in words if len(w) >= 3 and w not in STOP_WORDS)
        keywords = {w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:per_section]}
        spans += [(s, e) for w, s, e in words if w in keywords]
    return spans


def _char_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """True for tokens whose character span overlaps one of ``spans`` (non-overlapping word spans)."""
    spans = sorted(spans)
    starts = [s for s, _ in spans]
    mask = torch.zeros(len(offsets), dtype=torch.bool)
    for i, (start, end) in enumerate(offsets):
        # Spans do not overlap, so only the last one that starts before the token ends can reach it.
        k = bisect.bisect_left(starts, end) - 1
        if end > start and k >= 0 and spans[k][1] > start:
            mask[i] = True
    return mask


def encode_record(
    tokenizer,
    doc_id: str,
    text: str,
    headers: Sequence[dict],
    global_attention_types: Sequence[str],
    max_length: int,
    keywords_per_section: int,
) -> ProbeDocument:
    """One corpus record, truncated to ``max_length`` tokens, with its keyword tokens marked."""

    encoded = tokenize_with_structure(
        tokenizer, text, headers, list(global_attention_types), max_length=max_length
    )
    n = len(encoded["input_ids"])
    # tokenize_with_structure wraps the text as [CLS] ... [SEP]; the same call without specials gives offsets.
    plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [(0, 0), *[tuple(o) for o in plain["offset_mapping"]]][: n - 1] + [(0, 0)]
    special = torch.tensor([w < 0 for w in encoded["word_ids"]], dtype=torch.bool)
    spans = corpus_keywords(text, headers, keywords_per_section)
    return ProbeDocument(
        doc_id=doc_id,
        input_ids=torch.tensor(encoded["input_ids"], dtype=torch.long),
        global_attention_mask=torch.tensor(encoded["global_attention_mask"], dtype=torch.long),
        section_ids=torch.tensor(encoded["section_ids"], dtype=torch.long),
        heading_mask=torch.tensor(encoded["heading_mask"], dtype=torch.bool) & ~special,
        keyword_mask=_char_mask(offsets, spans) & ~special,
        special_mask=special,
    )


def encode_scirex(
    tokenizer, doc: dict, global_attention_types: Sequence[str], max_length: int
) -> ProbeDocument:
    """One SciREX paper, truncated to ``max_length`` tokens; its entity mentions are the keywords."""

    # Every word yields at least one sub-token, so the first max_length words are enough.
    ids, word_index = encode_words(tokenizer, doc["words"][:max_length])
    ids, word_index = ids[: max_length - 2].tolist(), word_index[: max_length - 2].tolist()
    levels = heading_levels(doc)
    sections = section_ids(doc)
    mention = [False] * len(doc["words"])
    for start, end, _ in doc["ner"]:
        mention[start:end] = [True] * (end - start)
    wanted = set(global_attention_types)
    heading = torch.tensor([False, *[levels[w] is not None for w in word_index], False])
    keyword = torch.tensor([False, *[mention[w] for w in word_index], False])
    return ProbeDocument(
        doc_id=doc["doc_id"],
        input_ids=torch.tensor([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], dtype=torch.long),
        global_attention_mask=torch.tensor([0, *[int(levels[w] in wanted) for w in word_index], 0]),
        section_ids=torch.tensor([0, *[sections[w] for w in word_index], sections[word_index[-1]]]),
        heading_mask=heading,
        keyword_mask=keyword & ~heading,
        special_mask=torch.tensor([True, *[False] * len(ids), True]),
    )


def _read_corpus_rows(path: Path, split: str) -> tuple[list[dict], Path]:

    if path.is_dir():
        files = find_shards(path)[STRUCTURED].get(split)
        if not files:
            raise CorpusNotFoundError(
                f"{path}: no {shard_glob(STRUCTURED, split)} (is this a built corpus folder?)"
            )
    else:
        files = [path]
    rows: list[dict] = []
    for file in files:
        table = pq.read_table(file)
        missing = {"id", "text", "headers"} - set(table.column_names)
        if missing:
            raise InputError(f"{file}: not {STRUCTURED} records, missing columns {sorted(missing)}")
        rows += table.select(["id", "text", "headers"]).to_pylist()
    return rows, files[0]


def load_probe(
    path: str | Path,
    tokenizer,
    global_attention_types: Sequence[str],
    *,
    max_length: int = 512,
    max_docs: int | None = None,
    split: str = "validation",
    keywords_per_section: int = 5,
) -> tuple[list[ProbeDocument], dict]:
    """Tokenized probe documents and a description of the probe set."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"probe set {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        kind = "scirex"
        papers = load_scirex(path)[:max_docs] if max_docs else load_scirex(path)
        docs = [
            encode_scirex(tokenizer, doc, global_attention_types, max_length)
            for doc in tqdm(papers, desc="tokenize probe", leave=False)
        ]
    else:
        kind = "corpus"
        rows, source = _read_corpus_rows(path, split)
        rows = rows[:max_docs] if max_docs else rows
        docs = []
        for row_number, row in enumerate(tqdm(rows, desc="tokenize probe", leave=False)):
            headers = row["headers"]
            if headers is None or any(not {"start", "end", "level"} <= set(h) for h in headers):
                raise InputError(f"{source}: row {row_number} (id {row['id']!r}) has malformed headers")
            docs.append(
                encode_record(
                    tokenizer,
                    row["id"],
                    row["text"],
                    headers,
                    global_attention_types,
                    max_length,
                    keywords_per_section,
                )
            )
    if not docs:
        raise InputError(f"probe set {path} holds no documents")
    if not any(bool(d.heading_mask.any()) for d in docs):
        raise InputError(
            f"probe set {path}: no document has heading tokens within the first {max_length} tokens"
        )
    info = {
        "path": str(path),
        "kind": kind,
        "split": split if kind == "corpus" else None,
        "documents": len(docs),
        "tokens": sum(len(d.input_ids) for d in docs),
        "heading_tokens": sum(int(d.heading_mask.sum()) for d in docs),
        "keyword_tokens": sum(int(d.keyword_mask.sum()) for d in docs),
        "max_length": max_length,
        "keywords": (
            "SciREX entity mentions (ner) inside each section"
            if kind == "scirex"
            else f"the {keywords_per_section} most frequent content words of each section's body"
        ),
    }
    return docs, info


# ----------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path):
    """The encoder of a StructBERT checkpoint, with a clear error for anything else."""

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise InputError(f"{config_file}: invalid JSON (line {err.lineno}): {err.msg}") from err
    if model_type != StructBertConfig.model_type:
        raise InputError(
            f"{config_file}: model_type is {model_type!r}, not 'structbert'; "
            "convert it first with `structformer convert`"
        )
    # Loading the checkpoint's own class keeps every weight (a bare encoder would drop the head, with a
    # warning per checkpoint); any head returns the encoder's attentions.
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    model_class = getattr(modeling, architectures[0], None) if architectures else None
    if not (isinstance(model_class, type) and issubclass(model_class, modeling.StructBertPreTrainedModel)):
        model_class = StructBertModel
    model = model_class.from_pretrained(path)
    model.eval()
    return model


def analyze(
    checkpoints: Sequence[str | Path],
    probe: str | Path,
    output_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    tokenizer_path: str | Path | None = None,
    max_length: int = 512,
    max_docs: int | None = None,
    split: str = "validation",
    keywords_per_section: int = 5,
    device: str | None = None,
) -> dict:
    """Probe every checkpoint in both modes; write ``attention.json`` and the figures.

    ``device``: where the models run (default: CUDA when available, else the CPU).
    """
    labels = list(labels) if labels else _default_labels(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise InputError("--labels needs one distinct label per checkpoint")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "settings": {
            "checkpoints": [str(c) for c in checkpoints],
            "labels": labels,
            "probe": str(probe),
            "split": split,
            "max_length": max_length,
            "max_docs": max_docs,
            "keywords_per_section": keywords_per_section,
        },
        "measures": MEASURES,
        "modes": MODES,
        "checkpoints": {},
    }
    probe_cache: dict[tuple, tuple[list[ProbeDocument], dict]] = {}
    for label, checkpoint in zip(labels, checkpoints):
        model = load_checkpoint(checkpoint).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        types = [t for t in model.config.global_attention_types if t != "cls"]
        tok_path = tokenizer_path or checkpoint
        key = (str(tok_path), tuple(types))
        if key not in probe_cache:
            tokenizer = AutoTokenizer.from_pretrained(tok_path)
            probe_cache[key] = load_probe(
                probe,
                tokenizer,
                types,
                max_length=min(max_length, model.config.max_position_embeddings),
                max_docs=max_docs,
                split=split,
                keywords_per_section=keywords_per_section,
            )
        docs, info = probe_cache[key]
        results["probe"] = info
        entry = {
            "path": str(checkpoint),
            "global_attention_types": list(model.config.global_attention_types),
            "modes": {mode: probe_model(model, docs, mode, desc=f"{label} ({mode})") for mode in MODES},
        }
        results["checkpoints"][label] = entry
    results["summary"] = summarize(results)
    # Strict JSON: a measure with no qualifying rows (e.g. no keywords in view) is null, not NaN.
    results = json_safe(results)
    results["figures"] = [p.name for p in attention_figures(results, output_dir)]
    (output_dir / "attention.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return results


def json_safe(value):
    """``value`` with every non-finite float replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def summarize(results: dict) -> dict[str, float]:
    """Mean over all layers and heads of every measure, keyed ``label/mode/measure``."""
    summary: dict[str, float] = {}
    for label, entry in results["checkpoints"].items():
        for mode, measures in entry["modes"].items():
            for name in MEASURES:
                values = [v for row in measures[name] for v in row if not math.isnan(v)]
                summary[f"{label}/{mode}/{name}"] = sum(values) / len(values) if values else float("nan")
    return summary


def _default_labels(checkpoints: Sequence[str | Path]) -> list[str]:
    names = [Path(c).name or str(c) for c in checkpoints]
    if len(set(names)) == len(names):
        return names
    return [f"{i}_{name}" for i, name in enumerate(names)]


def parse_args(argv: list[str] | None = None) -> AnalyzeAttentionArguments:
    return parse_dataclass(AnalyzeAttentionArguments, argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: AnalyzeAttentionArguments) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = analyze(
        args.checkpoints,
        args.probe,
        args.output_dir,
        labels=args.labels,
        tokenizer_path=args.tokenizer,
        max_length=args.max_length,
        max_docs=args.max_docs,
        split=args.split,
        keywords_per_section=args.keywords_per_section,
        device=args.device,
    )
    output_dir = Path(args.output_dir)
    documents = results["probe"]["documents"]
    print(
        f"analyze-attention: probed {len(results['checkpoints'])} checkpoint(s) on {documents} document(s); "
        f"wrote {output_dir / 'attention.json'} and {len(results['figures'])} figures in {output_dir}"
    )
    if documents < MIN_PROBE_DOCUMENTS:
        print(
            f"analyze-attention: warning: only {documents} document(s) probed, fewer than {MIN_PROBE_DOCUMENTS}: "
            "the measures describe these documents, not the model; probe more (--max-docs, --split, --probe)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_command("analyze-attention", main))
