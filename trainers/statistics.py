"""Statistics for comparing two pre-trained arms on the same documents and the same ``[MASK]`` positions.

- :func:`paired_bootstrap`: the mean per-document difference (structured - plain) and its percentile
  bootstrap interval over documents, for one pre-training seed;
- :func:`t_interval`: the mean of per-seed differences and its Student-t interval, across seeds;
- :func:`verdict`: what an interval says, in words ("no detectable effect" when it holds 0);
- :func:`unigram_log2_probs`: the trivial baseline, a unigram model of the training tokens.

Pure functions on numbers (numpy and scipy only), so the report can be recomputed from ``results.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
# Fixed, so that a rerun of the same experiment reports the same interval.
BOOTSTRAP_SEED = 0


def paired_bootstrap(
    first: Sequence[float],
    second: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float | int | list[float]]:
    """Mean of ``first[i] - second[i]`` over documents and its percentile bootstrap interval.

    Documents are resampled with replacement; pairs stay together, so what the two arms share (a
    document's difficulty) cancels. Returns ``mean``, ``ci`` ([low, high]), ``documents``, ``resamples``.
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"paired values must be two non-empty lists of one length, got {a.shape} and {b.shape}"
        )
    diffs = a - b
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {
        "mean": float(diffs.mean()),
        "ci": [float(low), float(high)],
        "documents": len(diffs),
        "resamples": resamples,
    }


def t_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float | int | list | None]:
    """Mean of ``values`` (one per seed) with its Student-t interval; ``ci`` is None for fewer than 2."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci": None, "std": None, "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, df=len(x) - 1)) * std / math.sqrt(len(x))
    return {"mean": mean, "ci": [mean - half, mean + half], "std": std, "n": len(x)}


def verdict(ci: Sequence[float] | None, lower_is_better: bool = True) -> str:
    """In words: "no detectable effect" when the interval holds 0, else which arm is better."""
    if ci is None:
        return "n/a (one seed: no interval across seeds)"
    low, high = ci
    if low <= 0 <= high:
        return "no detectable effect"
    first_lower = high < 0
    better = first_lower if lower_is_better else not first_lower
    return f"first arm {'better' if better else 'worse'} ({'lower' if first_lower else 'higher'})"


def unigram_log2_probs(
    sequences: Iterable[Sequence[int]], vocab_size: int, exclude: Iterable[int] = ()
) -> np.ndarray:
    """log2 of add-one smoothed unigram probabilities of the tokens in ``sequences`` (``exclude``: ids
    never counted, e.g. special tokens). The trivial model every masked LM must beat."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for ids in sequences:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
    excluded = np.asarray(sorted(set(exclude)), dtype=np.int64)
    counts[excluded] = 0
    counts += 1
    counts[excluded] = 0
    with np.errstate(divide="ignore"):
        return np.log2(counts / counts.sum())


# The paper's reported bits per [MASK] token (Table 2: structured vs vanilla continued pre-training of
# longformer-base-4096) and its pre-training budget per arm: 9,000 steps x batch 2 x 4,096 tokens.
PAPER_BITS = {"structured": 2.2136, "plain": 2.3051}
PAPER_EFFECT = PAPER_BITS["structured"] - PAPER_BITS["plain"]
PAPER_TOKENS_PER_ARM = 9_000 * 2 * 4_096
# Under this many training tokens per arm a run only shows that the pipeline works.
SMOKE_MAX_TOKENS = 1_000_000


def assess_scale(tokens_seen: int, interval_width: float | None) -> dict:
    """What a run of this size can say: a smoke test when it saw fewer than :data:`SMOKE_MAX_TOKENS`
    tokens per arm, or when its interval is too wide to resolve an effect of the paper's size (half
    the width larger than :data:`PAPER_EFFECT`, in absolute value)."""
    reasons = []
    if tokens_seen < SMOKE_MAX_TOKENS:
        reasons.append(f"{tokens_seen:,} training tokens per arm, under {SMOKE_MAX_TOKENS:,}")
    resolves = interval_width is not None and interval_width / 2 < abs(PAPER_EFFECT)
    if interval_width is None:
        reasons.append("no interval")
    elif not resolves:
        reasons.append(
            f"the 95% interval is {interval_width:.3f} bits wide, too wide to resolve an effect of the "
            f"paper's size ({abs(PAPER_EFFECT):.4f} bits)"
        )
    return {
        "tokens_seen_per_arm": int(tokens_seen),
        "paper_tokens_per_arm": PAPER_TOKENS_PER_ARM,
        "fraction_of_paper": tokens_seen / PAPER_TOKENS_PER_ARM,
        "interval_width": interval_width,
        "resolves_paper_effect": resolves,
        "smoke_test": bool(reasons),
        "reasons": reasons,
    }
