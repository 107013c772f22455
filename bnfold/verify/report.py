"""The verification report: what was compared, the metrics, the verdict, and its renderings.

JSON is for machines, Markdown for pull requests, HTML (``report_html``) for reviews; ``write``
puts all three in one directory.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.errors import OutputError
from bnfold.verify.compare import TOLERANCES, Metrics
from bnfold.verify.localize import Localization


@dataclass(frozen=True)
class Case:
    """One run of both models: provider, where the inputs came from, their shapes."""

    name: str
    provider: str
    source: str                   # "random seed=0" or the .npz path
    input_shapes: dict[str, str]  # input name -> "1x3x8x8"


@dataclass(frozen=True)
class OutputCheck:
    """One output of one case, compared against its tolerance."""

    case: str
    output: str
    dtype: str
    shape: str
    atol: float
    rtol: float
    metrics: Metrics

    @property
    def passed(self) -> bool:
        return self.metrics.mismatched == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = self.metrics.to_dict()
        d["passed"] = self.passed
        return d


@dataclass(frozen=True)
class Accuracy:
    """Task accuracy of both models on labelled data (argmax of ``output`` against the labels)."""

    output: str
    samples: int
    original: float
    folded: float
    agreement: float  # fraction of samples where both models predict the same class


@dataclass
class Report:
    """Everything one verification found; ``passed`` is the verdict."""

    original: str
    folded: str
    cases: list[Case] = field(default_factory=list)
    checks: list[OutputCheck] = field(default_factory=list)
    localization: Localization | None = None
    localization_note: str = ""
    accuracy: Accuracy | None = None
    fold: dict[str, Any] | None = None        # FoldResult.to_dict() when verifying a fold
    environment: dict[str, Any] = field(default_factory=dict)
    user_tolerance: tuple[float | None, float | None] = (None, None)
    errors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # output -> |diff|

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def outputs(self) -> list[str]:
        return list(dict.fromkeys(c.output for c in self.checks))

    def worst(self) -> OutputCheck | None:
        """The failing check with the largest max_abs, or the largest max_abs overall if none fail."""
        return max(self.checks, key=lambda c: (not c.passed, c.metrics.max_abs), default=None)

    def tolerances(self) -> dict[str, dict[str, float]]:
        """The (atol, rtol) in force per dtype, defaults overridden by the user's values."""
        atol, rtol = self.user_tolerance
        return {k: {"atol": v[0] if atol is None else atol, "rtol": v[1] if rtol is None else rtol}
                for k, v in TOLERANCES.items()}

    def summary(self) -> str:
        """One line for the CLI: verdict, scope, worst error, and the blamed BN when it failed."""
        n_out, n_case = len(self.outputs), len(self.cases)
        w = self.worst()
        worst = "" if w is None else (
            f"; worst {w.output!r}: max_abs {w.metrics.max_abs:.3g} = "
            f"{w.metrics.peak_rel:.2g} x peak (allowed: {w.atol:g} + {w.rtol:g} x peak)")
        if self.passed:
            return f"PASS: {n_out} output(s) x {n_case} case(s) within tolerance{worst}"
        failed = len([c for c in self.checks if not c.passed])
        line = f"FAIL: {failed} of {len(self.checks)} output check(s) out of tolerance{worst}"
        loc = self.localization
        if loc is not None:
            blamed = f"BN {loc.bn!r} ({loc.direction} fold)" if loc.bn else "no BN fold"
            line += f"; first divergence at tensor {loc.tensor!r} -> {blamed}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "original": self.original,
            "folded": self.folded,
            "environment": self.environment,
            "tolerances": self.tolerances(),
            "tolerance_rule": "|folded - original| <= atol + rtol * max|original| for every element "
                              "(max over the output); integer/bool outputs exact",
            "cases": [asdict(c) for c in self.cases],
            "checks": [c.to_dict() for c in self.checks],
            "localization": self.localization.to_dict() if self.localization else None,
            "localization_note": self.localization_note,
            "accuracy": asdict(self.accuracy) if self.accuracy else None,
            "fold": self.fold,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default, allow_nan=True)

    def to_markdown(self) -> str:
        from bnfold.verify.report_md import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        from bnfold.verify.report_html import render_html

        return render_html(self)

    def write(self, directory: str | Path) -> list[Path]:
        """Write report.json, report.md and report.html into ``directory`` (created if needed)."""
        d = Path(directory)
        texts = {"report.json": self.to_json(), "report.md": self.to_markdown(),
                 "report.html": self.to_html()}
        try:
            d.mkdir(parents=True, exist_ok=True)
            paths = []
            for name, text in texts.items():
                (d / name).write_text(text, encoding="utf-8")
                paths.append(d / name)
        except OSError as exc:
            raise OutputError(f"cannot write the report to {d}: {exc.strerror or exc}") from exc
        return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
