"""Known-answer tests for bnfold.bench.stats and the interleaving order."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bnfold.bench.runner import round_order
from bnfold.bench.stats import paired_speedup, percentile, summarize


def test_summarize_known_answers() -> None:
    s = summarize([float(i) for i in range(1, 101)], batch=2)
    assert s.n == 100
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    assert s.stdev == pytest.approx(math.sqrt(sum((i - 50.5) ** 2 for i in range(1, 101)) / 99))
    assert (s.min, s.max) == (1.0, 100.0)
    assert s.throughput == pytest.approx(2 * 1000 / 50.5)


def test_summarize_single_sample_has_zero_stdev() -> None:
    s = summarize([4.0], batch=1)
    assert s.stdev == 0.0 and s.p99 == 4.0 and s.throughput == pytest.approx(250.0)


def test_summarize_rejects_empty() -> None:
    with pytest.raises(ValueError):
        summarize([], batch=1)


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 90) == pytest.approx(19.0)


def test_speedup_of_constant_ratio_is_exact_with_zero_width_interval() -> None:
    cand = np.linspace(1.0, 3.0, 40)
    sp = paired_speedup(2.0 * cand, cand)
    assert sp.ratio == pytest.approx(2.0)
    assert sp.ci_low == pytest.approx(2.0) and sp.ci_high == pytest.approx(2.0)


def test_speedup_is_median_ratio_and_interval_brackets_it() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(10.0, 1.0, 200)
    cand = rng.normal(8.0, 1.0, 200)
    sp = paired_speedup(base, cand, confidence=0.9)
    assert sp.ratio == pytest.approx(np.median(base) / np.median(cand))
    assert sp.ci_low < sp.ratio < sp.ci_high
    assert 1.0 < sp.ci_low  # 10 vs 8 ms with n=200 is clearly a speedup
    assert sp.confidence == 0.9


def test_speedup_interval_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(5, 1, 50), rng.normal(5, 1, 50)
    assert paired_speedup(a, b, seed=3) == paired_speedup(a, b, seed=3)


def test_wider_confidence_gives_wider_interval() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(5, 1, 60), rng.normal(5, 1, 60)
    narrow, wide = paired_speedup(a, b, confidence=0.5), paired_speedup(a, b, confidence=0.99)
    assert wide.ci_low < narrow.ci_low and narrow.ci_high < wide.ci_high


@pytest.mark.parametrize("a,b,conf", [([1.0, 2.0], [1.0], 0.95), ([], [], 0.95),
                                      ([1.0], [1.0], 1.0)])
def test_speedup_rejects_bad_input(a: list[float], b: list[float], conf: float) -> None:
    with pytest.raises(ValueError):
        paired_speedup(a, b, confidence=conf)


def test_round_order_alternates_abba() -> None:
    seq = [i for r in range(4) for i in round_order(2, r)]
    assert seq == [0, 1, 1, 0, 0, 1, 1, 0]
    rounds = [round_order(3, r) for r in range(6)]
    assert rounds[:4] == [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]]
    for v in range(3):  # over 3 rotations every variant takes every position equally often
        assert sorted(r.index(v) for r in rounds) == [0, 0, 1, 1, 2, 2]
