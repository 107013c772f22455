"""Benchmark results: per-config variant statistics, speedups, JSON and a terminal table."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from bnfold.bench.runner import RunConfig, VariantRun
from bnfold.bench.stats import LatencyStats, Speedup


@dataclass
class VariantResult:
    """One variant in one config: session creation time, latency summary, raw samples."""

    name: str
    create_ms: float
    stats: LatencyStats
    samples_ms: list[float]

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "session_create_ms": self.create_ms,
                             **self.stats.to_dict()}
        if samples:
            d["samples_ms"] = list(self.samples_ms)
        return d


@dataclass
class ConfigResult:
    """All variants measured in one config, with each non-baseline's speedup over the baseline."""

    config: RunConfig
    variants: list[VariantResult]
    speedups: dict[str, Speedup]

    @property
    def speedup(self) -> Speedup:
        """Speedup of the second variant (the folded model in ``bnfold bench``)."""
        return self.speedups[self.variants[1].name]

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        c = self.config
        return {"provider": c.provider, "opt_level": c.opt_level, "threads": c.threads,
                "batch": c.batch, "variants": [v.to_dict(samples) for v in self.variants],
                "speedup_vs_" + self.variants[0].name: {k: s.to_dict() for k, s in self.speedups.items()}}


@dataclass
class BenchResult:
    """Everything ``bnfold.benchmark`` measured, plus the settings and machine it ran on."""

    models: dict[str, str]
    configs: list[ConfigResult]
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())
    fold: dict[str, Any] | None = None

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        return {"models": dict(self.models), "fold": self.fold, "settings": dict(self.settings),
                "machine": dict(self.machine), "configs": [c.to_dict(samples) for c in self.configs]}

    def table(self) -> str:
        """Fixed-width table: one row per variant per config, speedup on non-baseline rows."""
        head = ["provider", "opt", "thr", "batch", "variant", "create ms", "p50 ms", "p90 ms",
                "p99 ms", "mean ± sd ms", "items/s", "speedup [CI]"]
        rows = [head]
        for cr in self.configs:
            c = cr.config
            for i, v in enumerate(cr.variants):
                s = v.stats
                sp = cr.speedups.get(v.name)
                rows.append([
                    c.provider if i == 0 else "", c.opt_level if i == 0 else "",
                    str(c.threads) if i == 0 else "", str(c.batch) if i == 0 else "",
                    v.name, f"{v.create_ms:.1f}", f"{s.p50:.3f}", f"{s.p90:.3f}", f"{s.p99:.3f}",
                    f"{s.mean:.3f} ± {s.stdev:.3f}", f"{s.throughput:.1f}",
                    f"{sp.ratio:.3f}x [{sp.ci_low:.3f}, {sp.ci_high:.3f}]" if sp else "",
                ])
        widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def build_config_result(config: RunConfig, runs: list[VariantRun], *, confidence: float,
                        seed: int) -> ConfigResult:
    """Summaries per variant and paired speedups of every variant over the first one."""
    from bnfold.bench.stats import paired_speedup, summarize

    variants = [VariantResult(r.name, r.create_ms, summarize(r.samples_ms, config.batch), r.samples_ms)
                for r in runs]
    base = runs[0].samples_ms
    speedups = {r.name: paired_speedup(base, r.samples_ms, confidence=confidence, seed=seed)
                for r in runs[1:]}
    return ConfigResult(config, variants, speedups)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS and library versions, for the report header."""
    import onnx
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "os": platform.platform(), "python": sys.version.split()[0],
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers()}
