"""The statistics of the arm comparison, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from structformer.trainers.statistics import (
    PAPER_EFFECT,
    PAPER_TOKENS_PER_ARM,
    assess_scale,
    paired_bootstrap,
    t_interval,
    unigram_log2_probs,
    verdict,
)


def test_paired_bootstrap_of_a_constant_difference_is_that_constant() -> None:
    result = paired_bootstrap([3.0, 4.0, 5.0, 9.0], [2.5, 3.5, 4.5, 8.5])
    assert result["mean"] == pytest.approx(0.5)
    assert result["ci"] == pytest.approx([0.5, 0.5])
    assert result["documents"] == 4 and result["resamples"] == 10_000


def test_paired_bootstrap_pairs_by_document_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    difficulty = rng.normal(5.0, 2.0, size=50)  # shared by both arms: it must cancel
    first = difficulty + rng.normal(-0.1, 0.05, size=50)
    second = difficulty
    result = paired_bootstrap(first, second)
    assert result == paired_bootstrap(first, second)
    low, high = result["ci"]
    assert low < result["mean"] < high < 0
    # Unpaired, the document spread (std 2) would swamp a 0.1 difference; paired, the interval is narrow.
    assert high - low < 0.05


def test_paired_bootstrap_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_t_interval_matches_the_textbook() -> None:
    result = t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, t(0.975, df=2) = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert result["mean"] == 2.0 and result["std"] == 1.0 and result["n"] == 3
    assert result["ci"] == pytest.approx([2 - half, 2 + half])
    one = t_interval([0.25])
    assert one == {"mean": 0.25, "ci": None, "std": None, "n": 1}


def test_verdict_says_no_detectable_effect_when_the_interval_holds_zero() -> None:
    assert verdict([-0.1, 0.2]) == "no detectable effect"
    assert verdict([0.0, 0.2]) == "no detectable effect"
    assert verdict([-0.3, -0.1]) == "first arm better (lower)"
    assert verdict([0.1, 0.3]) == "first arm worse (higher)"
    assert verdict(None).startswith("n/a")


def test_unigram_probabilities_are_add_one_smoothed_and_skip_excluded_ids() -> None:
    log2p = unigram_log2_probs([[2, 3, 3], [3, 4]], vocab_size=5, exclude=[0, 1])
    # counts + 1 over ids 2, 3, 4: 2, 4, 2 -> total 8; ids 0 and 1 get no mass.
    assert log2p[2] == pytest.approx(math.log2(2 / 8))
    assert log2p[3] == pytest.approx(math.log2(4 / 8))
    assert log2p[4] == pytest.approx(math.log2(2 / 8))
    assert np.isneginf(log2p[0]) and np.isneginf(log2p[1])


def test_scale_assessment_reads_tokens_and_interval_width() -> None:
    small = assess_scale(256, 0.001)
    assert small["smoke_test"] and "256 training tokens" in small["reasons"][0]
    wide = assess_scale(5_000_000, 4 * abs(PAPER_EFFECT))
    assert wide["smoke_test"] and not wide["resolves_paper_effect"]
    fine = assess_scale(5_000_000, abs(PAPER_EFFECT))
    assert not fine["smoke_test"] and fine["resolves_paper_effect"] and fine["reasons"] == []
    assert fine["fraction_of_paper"] == pytest.approx(5_000_000 / PAPER_TOKENS_PER_ARM)
    assert PAPER_TOKENS_PER_ARM == 73_728_000
    assert assess_scale(5_000_000, None)["smoke_test"]
