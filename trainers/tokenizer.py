"""Tokenizers for pre-training: load a local Hugging Face tokenizer folder, or train a WordPiece one.

``structformer train-tokenizer`` trains a BERT-style WordPiece vocabulary on a corpus, the way
SciBERT built its scientific vocabulary, and saves it as a ``transformers`` tokenizer folder.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

import structformer.modeling  # noqa: F401  (registers structbert: AutoTokenizer reads a checkpoint's config.json)
from structformer.arguments import parse_dataclass
from structformer.dataset_scripts.schema import load_corpus
from structformer.errors import InputError, run_command
from structformer.trainers.arguments import TokenizerArguments

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
# WordPiece's mark of a token that continues a word.
CONTINUATION = "##"


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

    The vocabulary is learned by :func:`learn_wordpiece_vocab`, which is deterministic: the same texts
    and options give a byte-identical ``tokenizer.json``. (``tokenizers``' own ``WordPieceTrainer``
    breaks ties between equally frequent pairs by hash order, so two trainings differ.)
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise InputError(
            f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}"
        )
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(counts, vocab_size, list(SPECIAL_TOKENS.values()), min_frequency)

    tokenizer = Tokenizer(WordPiece(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(output_dir)
    return wrapped


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int], vocab_size: int, special_tokens: Sequence[str], min_frequency: int = 2
) -> dict[str, int]:
    """A WordPiece vocabulary by BPE merges over word counts, as ``tokenizers``' trainer learns it.

    Words are split into characters (``"##"`` before each non-initial one); the most frequent adjacent
    pair is merged until the vocabulary holds ``vocab_size`` tokens or no pair occurs ``min_frequency``
    times. Ties go to the lexicographically smallest pair, so the result depends only on the counts.
    Order: special tokens, the alphabet (sorted), then merged tokens in merge order.
    """
    words = sorted(word_counts)
    freqs = [int(word_counts[w]) for w in words]
    symbols = [[w[0], *(CONTINUATION + c for c in w[1:])] for w in words]
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *sorted({s for word in symbols for s in word})]:
        vocab.setdefault(token, len(vocab))

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, (word, freq) in enumerate(zip(symbols, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # a stale entry: the count changed since it was pushed
        if -negative < min_frequency:
            break
        merged = pair[0] + pair[1].removeprefix(CONTINUATION)
        vocab.setdefault(merged, len(vocab))
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            word, freq = symbols[index], freqs[index]
            for old in zip(word, word[1:]):
                pair_counts[old] -= freq
                changed.add(old)
            new_word, k = [], 0
            while k < len(word):
                if k + 1 < len(word) and (word[k], word[k + 1]) == pair:
                    new_word.append(merged)
                    k += 2
                else:
                    new_word.append(word[k])
                    k += 1
            symbols[index] = new_word
            for new in zip(new_word, new_word[1:]):
                pair_counts[new] += freq
                where[new].add(index)
                changed.add(new)
        pair_counts.pop(pair, None)
        for other in sorted(changed - {pair}):
            if pair_counts[other] > 0:
                heapq.heappush(heap, (-pair_counts[other], other))
            else:
                pair_counts.pop(other, None)
    return vocab


def tokenizer_hash(path: str | Path) -> str:
    """SHA-256 of a tokenizer folder's ``tokenizer.json`` (or ``vocab.txt``): which vocabulary a run used."""
    path = Path(path)
    for name in ("tokenizer.json", "vocab.txt", "vocab.json"):
        if (path / name).is_file():
            return hashlib.sha256((path / name).read_bytes()).hexdigest()
    raise InputError(f"{path}: no tokenizer.json, vocab.txt or vocab.json to hash")


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


def parse_args(argv: list[str] | None = None) -> TokenizerArguments:
    return parse_dataclass(TokenizerArguments, argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: TokenizerArguments) -> int:
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
