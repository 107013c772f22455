"""Latency statistics: percentiles, mean ± stdev, throughput, and a paired bootstrap CI.

The speedup ratio is median(baseline) / median(candidate) over paired, interleaved
runs; its confidence interval resamples whole pairs so machine drift that hit both
runs of a pair stays paired.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one variant's timed runs, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    throughput: float  # samples per second at this batch size, from the mean latency

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Speedup:
    """median(baseline) / median(candidate) with a bootstrap percentile interval."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentile of an empty sample")
    return float(np.percentile(arr, q))


def summarize(samples_ms: Sequence[float], batch: int) -> LatencyStats:
    """Percentiles, mean, sample stdev (ddof=1) and throughput of one variant's latencies."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timed runs to summarize")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    mean = float(arr.mean())
    stdev = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return LatencyStats(n=int(arr.size), p50=float(p50), p90=float(p90), p99=float(p99),
                        mean=mean, stdev=stdev, min=float(arr.min()), max=float(arr.max()),
                        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"))


def paired_speedup(baseline_ms: Sequence[float], candidate_ms: Sequence[float], *,
                   confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Speedup:
    """Speedup of candidate over baseline (>1 means candidate is faster), bootstrap CI on pairs.

    ``baseline_ms[i]`` and ``candidate_ms[i]`` must come from the same interleaved round.
    """
    a = np.asarray(baseline_ms, dtype=np.float64)
    b = np.asarray(candidate_ms, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired samples must be two non-empty 1-D sequences of equal length")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must lie strictly between 0 and 1")
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return Speedup(ratio=ratio, ci_low=float(low), ci_high=float(high), confidence=confidence)
