"""What recalibration changed, per BN: old and new statistics, and how far they moved."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx


@dataclass(frozen=True)
class BnRecalibration:
    """One BN: its statistics before and after (float64), or why it was left alone."""

    bn: str
    graph: str                           # where it lives: main, main/<node>.<attr>, function:<d>.<f>
    level: int = -1                      # pass that measured it (-1: not measured)
    eps: float = 0.0
    old_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    old_var: np.ndarray = field(default_factory=lambda: np.zeros(0))
    new_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    new_var: np.ndarray = field(default_factory=lambda: np.zeros(0))
    skipped: str | None = None           # why it was not recalibrated

    @classmethod
    def skipped_bn(cls, bn: str, graph: str, why: str) -> BnRecalibration:
        return cls(bn=bn, graph=graph, skipped=why)

    @property
    def channels(self) -> int:
        return int(self.new_mean.shape[0])

    @property
    def shift_sd(self) -> np.ndarray:
        """|new mean - old mean| per channel, in old standard deviations."""
        return np.abs(self.new_mean - self.old_mean) / np.sqrt(self.old_var + self.eps)

    @property
    def near_zero_var(self) -> list[int]:
        """Channels whose new variance is below epsilon: eps, not the data, sets their scale."""
        return [int(i) for i in np.flatnonzero(self.new_var < self.eps)]

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"bn": self.bn, "graph": self.graph, "skipped": self.skipped}
        if self.skipped:
            return d
        ratio = self.new_var / np.maximum(self.old_var, np.finfo(np.float64).tiny)
        d.update({"level": self.level, "channels": self.channels, "epsilon": self.eps,
                  "max_shift_sd": float(self.shift_sd.max()),
                  "mean_shift_sd": float(self.shift_sd.mean()),
                  "var_ratio_min": float(ratio.min()), "var_ratio_max": float(ratio.max()),
                  "near_zero_var_channels": self.near_zero_var})
        if arrays:
            d.update({k: getattr(self, k).tolist() for k in
                      ("old_mean", "old_var", "new_mean", "new_var")})
        return d


@dataclass
class RecalibrationResult:
    """The recalibrated model (BNs kept, statistics replaced) and what changed."""

    model: onnx.ModelProto
    records: list[BnRecalibration]
    batches: int
    samples: int
    passes: int
    settings: dict[str, Any]

    @property
    def recalibrated(self) -> list[BnRecalibration]:
        return [r for r in self.records if not r.skipped]

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        return {"bn": len(self.records), "recalibrated": len(self.recalibrated),
                "batches_per_pass": self.batches, "samples_per_pass": self.samples,
                "passes": self.passes, "settings": dict(self.settings),
                "records": [r.to_dict(arrays) for r in self.records]}

    def to_markdown(self) -> str:
        s = self.settings
        how = s["mode"] + (f", momentum {s['momentum']}" if s["mode"] == "momentum" else "")
        lines = ["# BatchNorm recalibration", "",
                 f"{len(self.recalibrated)} of {len(self.records)} BN recalibrated in "
                 f"{self.passes} pass(es) over {self.samples} sample(s) in {self.batches} "
                 f"batch(es); estimator: {how}; variance convention: {s['convention']}.", "",
                 "Shift = |new mean - old mean| in old standard deviations. "
                 "Near-zero variance = channels whose new variance is below epsilon.", "",
                 "Graph: where the BN lives (main, a subgraph as main/<node>.<attribute>, or a "
                 "function body as function:<domain>.<name>, whose statistics pool every call).",
                 "",
                 "| BN | graph | pass | channels | max shift (sd) | mean shift (sd) | new/old "
                 "variance | near-zero variance |",
                 "|---|---|---:|---:|---:|---:|---|---|"]
        for r in self.records:
            if r.skipped:
                lines.append(f"| {r.bn} | {r.graph} | - | - | - | - | - | skipped: {r.skipped} |")
                continue
            d = r.to_dict(arrays=False)
            zero = d["near_zero_var_channels"]
            lines.append(f"| {r.bn} | {r.graph} | {r.level + 1} | {r.channels} | "
                         f"{d['max_shift_sd']:.3g} | "
                         f"{d['mean_shift_sd']:.3g} | {d['var_ratio_min']:.3g} .. "
                         f"{d['var_ratio_max']:.3g} | "
                         f"{len(zero)}{' (' + ', '.join(map(str, zero[:8])) + ')' if zero else ''} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> list[str]:
        """report.json (with every channel's statistics) and report.md in ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "report.md").write_text(self.to_markdown())
        return [str(out / "report.json"), str(out / "report.md")]
