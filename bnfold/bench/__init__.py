"""Paired latency benchmarks on ONNX Runtime: ``benchmark`` (original vs folded) and
``measure_variants`` (any named model files), returning a ``BenchResult``."""
from __future__ import annotations

from bnfold.bench.benchmark import benchmark, check_provider, measure_variants
from bnfold.bench.result import BenchResult, ConfigResult, VariantResult
from bnfold.bench.runner import RunConfig

__all__ = ["BenchResult", "ConfigResult", "RunConfig", "VariantResult", "benchmark",
           "check_provider", "measure_variants"]
