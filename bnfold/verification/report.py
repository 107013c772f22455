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
from bnfold.verification.compare import TOLERANCES, Metrics
from bnfold.verification.localize import Localization
from bnfold.verification.engines import REFERENCE
from bnfold.verification.compare import PrecisionCheck
from bnfold.verification.truth import TruthCheck


@dataclass(frozen=True)
class Case:
    """One run of both models: provider, where the inputs came from, their shapes, what ran them."""

    name: str
    provider: str
    source: str                   # "random seed=0" or the .npz path
    input_shapes: dict[str, str]  # input name -> "1x3x8x8"
    engine: str = "onnxruntime"   # "onnxruntime CPUExecutionProvider", or "onnx.reference"


@dataclass(frozen=True)
class OutputCheck:
    """One output of one case, compared against its tolerance.

    Out of tolerance, it still passes when ``truth`` shows the folded model at least as close to
    the original's float64 ground truth as the original itself (the difference is the original's
    rounding). A ``nondeterministic`` output (two runs of the original differ) judges nothing.
    """

    case: str
    output: str
    dtype: str
    shape: str
    atol: float
    rtol: float
    metrics: Metrics
    nondeterministic: bool = False
    truth: TruthCheck | None = None
    precision: PrecisionCheck | None = None  # float16/bfloat16: both models vs a float32 truth

    @property
    def within_tolerance(self) -> bool:
        return self.metrics.mismatched == 0

    @property
    def passed(self) -> bool:
        """Counts toward the verdict and passes it; a nondeterministic output never does."""
        if self.nondeterministic:
            return False
        if self.precision is not None and not self.precision.passed:
            return False
        return self.within_tolerance or (self.truth is not None and self.truth.folded_closer)

    @property
    def status(self) -> str:
        if self.nondeterministic:
            return "nondeterministic"
        if self.precision is not None and not self.precision.passed:
            return "FAIL (precision)"
        if self.within_tolerance:
            return "pass"
        return "pass (closer to float64 truth)" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = self.metrics.to_dict()
        d["truth"] = self.truth.to_dict() if self.truth is not None else None
        d["precision"] = self.precision.to_dict() if self.precision is not None else None
        d["passed"] = self.passed
        d["status"] = self.status
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
    crash: str | None = None       # "onnxruntime crashed (SIGSEGV) on the folded model ..."
    notes: list[str] = field(default_factory=list)  # engines used, truth verdicts, exclusions
    input_size: str = ""  # how symbolic input dims were sized ("... set to 32 (...)"), if any

    @property
    def judged(self) -> list[OutputCheck]:
        """The checks the verdict rests on: all but the nondeterministic ones."""
        return [c for c in self.checks if not c.nondeterministic]

    @property
    def nondeterministic(self) -> list[str]:
        """Outputs that differed between two runs of the original on the same feed."""
        return list(dict.fromkeys(c.output for c in self.checks if c.nondeterministic))

    @property
    def unverified(self) -> bool:
        """Nothing could be compared: every output of every case is nondeterministic."""
        return bool(self.checks) and not self.judged

    @property
    def passed(self) -> bool:
        """No crash, something was run, and every judged check passes. When every output is
        nondeterministic this is a PASS that ``unverified`` and the summary flag: the end-to-end
        run cannot see the folds, so the verdict rests on the folds' own (local) proofs."""
        return self.crash is None and bool(self.checks) and all(c.passed for c in self.judged)

    @property
    def outputs(self) -> list[str]:
        return list(dict.fromkeys(c.output for c in self.checks))

    def worst(self) -> OutputCheck | None:
        """The failing judged check with the largest max_abs, else the largest max_abs judged."""
        return max(self.judged, key=lambda c: (not c.passed, c.metrics.max_abs), default=None)

    def tolerances(self) -> dict[str, dict[str, float]]:
        """The (atol, rtol) in force per dtype, defaults overridden by the user's values."""
        atol, rtol = self.user_tolerance
        return {k: {"atol": v[0] if atol is None else atol, "rtol": v[1] if rtol is None else rtol}
                for k, v in TOLERANCES.items()}

    def summary(self) -> str:
        """One line for the CLI: verdict, scope, worst error, what it was judged on, and the
        blamed BN when it failed."""
        if self.crash is not None:
            return f"FAIL: {self.crash}"
        nondet = ", ".join(map(repr, self.nondeterministic))
        if self.unverified:
            return (f"PASS (UNVERIFIED): no output could be compared end to end, every output is "
                    f"nondeterministic ({nondet}); the folds rest on their local proofs")
        w = self.worst()
        worst = "" if w is None else (
            f"; worst {w.output!r}: max_abs {w.metrics.max_abs:.3g} = "
            f"{w.metrics.peak_rel:.2g} x peak (allowed: {w.atol:g} + {w.rtol:g} x peak)")
        tail = worst + (f"; nondeterministic (two runs of the original differ), not compared: "
                        f"{nondet}" if nondet else "")
        if any(c.engine == REFERENCE for c in self.cases):
            tail += f"; run on {REFERENCE} (onnxruntime has no kernel for the model)"
        if self.input_size:
            tail += f"; {self.input_size}"
        scope = f"{len(self.outputs) - len(self.nondeterministic)} output(s) x {len(self.cases)} case(s)"
        closer = [c.truth for c in self.judged if c.passed and not c.within_tolerance and c.truth]
        if self.passed and not closer:
            return f"PASS: {scope} within tolerance{tail}"
        if self.passed:
            t = max(closer, key=lambda t: t.folded_error)
            return (f"PASS: {scope}; {len(closer)} check(s) out of tolerance but the folded model "
                    f"is closer to the float64 truth than the original (max abs error "
                    f"{t.folded_error:.3g} vs {t.original_error:.3g}){tail}")
        failed = len([c for c in self.judged if not c.passed])
        truth = "" if w is None or w.truth is None else (
            f" (float64 truth: folded error {w.truth.folded_error:.3g} > original's "
            f"{w.truth.original_error:.3g})")
        line = f"FAIL: {failed} of {len(self.judged)} output check(s) out of tolerance{truth}{tail}"
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
            "crash": self.crash,
            "unverified": self.unverified,
            "nondeterministic_outputs": self.nondeterministic,
            "notes": self.notes,
            "input_size": self.input_size,
            "localization": self.localization.to_dict() if self.localization else None,
            "localization_note": self.localization_note,
            "accuracy": asdict(self.accuracy) if self.accuracy else None,
            "fold": self.fold,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default, allow_nan=True)

    def to_markdown(self) -> str:
        from bnfold.verification.report_md import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        from bnfold.verification.report_html import render_html

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
