"""Tokenizers for pre-training: load a local Hugging Face tokenizer folder, or train a WordPiece one.

``structformer train-tokenizer`` trains a BERT-style WordPiece vocabulary on a corpus, the way
SciBERT built its scientific vocabulary, and saves it as a ``transformers`` tokenizer folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

import structformer.modeling  # noqa: F401  (registers structbert: AutoTokenizer reads a checkpoint's config.json)
from structformer.dataset_scripts.schema import PLAIN
from structformer.errors import InputError, run_command
from structformer.trainers.data import load_corpus

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    output_dir: str | Path,
    *,
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts`` and save it to ``output_dir``.

    The special tokens are BERT's (``[PAD]`` = 0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``), and
    encodings are wrapped as ``[CLS] A [SEP]``. The folder loads with ``AutoTokenizer.from_pretrained``.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise InputError(
            f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}"
        )
    tokenizer = Tokenizer(WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id = tokenizer.token_to_id(SPECIAL_TOKENS["cls_token"])
    sep_id = tokenizer.token_to_id(SPECIAL_TOKENS["sep_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(output_dir)
    return wrapped


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a local tokenizer folder, requiring what the data pipeline needs (offsets, [MASK], [PAD])."""

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a loadable tokenizer folder ({err})") from err
    if not tokenizer.is_fast:
        raise InputError(f"{path}: a fast tokenizer is required (character offsets map headings onto tokens)")
    for name in ("mask_token", "pad_token", "cls_token", "sep_token"):
        if getattr(tokenizer, name) is None:
            raise InputError(f"{path}: the tokenizer has no {name}; masked-LM pre-training needs one")
    return tokenizer


def _iter_texts(dataset, column: str, batch_size: int = 256) -> Iterator[list[str]]:
    for start in range(0, len(dataset), batch_size):
        yield dataset[start : start + batch_size][column]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="structformer train-tokenizer", description="Train a WordPiece tokenizer on a corpus."
    )
    parser.add_argument("--dataset", required=True, help="corpus folder or Hub id")
    parser.add_argument(
        "--dataset-config",
        default=PLAIN,
        help=f"config to read (default: {PLAIN}, the same text without spans)",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument(
        "--no-lowercase", dest="lowercase", action="store_false", help="keep case (cased vocab)"
    )
    parser.add_argument(
        "--max-documents", type=int, default=None, help="train on at most this many documents"
    )
    parser.add_argument("--cache-dir", default=None, help="datasets cache folder")
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    dataset = load_corpus(
        args.dataset, args.dataset_config, cache_dir=args.cache_dir, required_columns=[args.text_column]
    )
    if args.split not in dataset:
        raise InputError(f"{args.dataset}: no split {args.split!r}; available: {sorted(dataset)}")
    split = dataset[args.split]
    if args.max_documents is not None:
        split = split.select(range(min(args.max_documents, len(split))))
    tokenizer = train_wordpiece(
        (text for batch in _iter_texts(split, args.text_column) for text in batch),
        args.vocab_size,
        args.output_dir,
        lowercase=args.lowercase,
        min_frequency=args.min_frequency,
    )
    logger.info(
        "trained a %d-token WordPiece vocabulary on %d documents -> %s",
        len(tokenizer),
        len(split),
        args.output_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_command("train-tokenizer", main))
