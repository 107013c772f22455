"""Second looks at a case with outputs out of tolerance, before anything is blamed on a fold.

1. Nondeterminism: the original runs again on the same feed (``cases``: twice, in a new session);
   an output that moves beyond tolerance between two of its runs (an unseeded RandomNormal,
   Dropout in training mode) cannot judge a fold, so it is marked nondeterministic and left out
   of the verdict.
2. Noise: the remaining failures are compared with a float64 ground truth of the original
   (``truth.float64_model``, on ORT where it has float64 kernels, else onnx.reference); a folded
   output at least as close to the truth as the original's passes, with a note.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import onnx

from bnfold.errors import BnfoldError
from bnfold.verification import compare, engines, truth
from bnfold.verification.report import OutputCheck, Report


def _moved(a: np.ndarray, b: np.ndarray, atol: float | None, rtol: float | None) -> bool:
    if a.shape != b.shape:
        return True
    t_atol, t_rtol = compare.tolerance_for(a.dtype, atol, rtol)
    return compare.compare(a, b, t_atol, t_rtol).mismatched > 0


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def mark_nondeterministic(checks: list[OutputCheck], ref: Mapping[str, np.ndarray],
                          again: Mapping[str, np.ndarray], atol: float | None,
                          rtol: float | None, random: Collection[str] = ()) -> list[OutputCheck]:
    """``checks`` with every failing output whose two original runs differ beyond tolerance
    marked as such; for an output a random op reaches (``random``,
    ``random_ops.random_outputs``), whose two runs differ at all: one re-run landing within
    tolerance by chance does not make the folded run's distance the fold's error."""
    return [dataclasses.replace(c, nondeterministic=True)
            if not c.within_tolerance and (
                _moved(ref[c.output], again[c.output], atol, rtol)
                or (c.output in random and _differs(ref[c.output], again[c.output])))
            else c for c in checks]


MAX_TRUTH_BYTES = 2**31
"""Largest original (tensor bytes) given a float64 truth: the copy is built in memory at up to
twice the original's size (plus the original's weights), so above this it is skipped and an
out-of-tolerance output stays a FAIL."""


class GroundTruth:
    """The float64 original (``to=FLOAT``: the float32 original, truth enough for float16 and
    bfloat16 and run by ORT's float32 kernels), built and loaded on first use; ``reason`` says
    why it is missing."""

    def __init__(self, proc: engines.OrtProcess, source: str | onnx.ModelProto,
                 graph: onnx.ModelProto, to: int = onnx.TensorProto.DOUBLE) -> None:
        self.proc, self.source, self.graph, self.to = proc, source, graph, to
        self.key = "truth" if to == onnx.TensorProto.DOUBLE else "truth32"
        self.model: engines.Runner | None = None
        self.reason: str | None = None
        self._tried = False

    def _load(self) -> None:
        from bnfold.io.model_io import tensor_bytes

        self._tried = True
        bits = "float64" if self.to == onnx.TensorProto.DOUBLE else "float32"
        label = f"the {bits} ground truth of the original"
        size = tensor_bytes(self.graph)
        if size > MAX_TRUTH_BYTES:
            self.reason = (f"the original's tensors take {size / 2**30:.1f} GiB; no float64 copy "
                           f"is built above {MAX_TRUTH_BYTES / 2**30:g} GiB")
            return
        try:
            m64 = truth.widened_model(engines.full_model(self.source), self.to)
        except (BnfoldError, ValueError, TypeError) as exc:
            self.reason = f"cannot build a {bits} copy of the original: {exc}"
            return
        try:
            src = engines.ort_source(m64, self.proc, self.key)
            self.proc.load(self.key, src, label, ("CPUExecutionProvider",), "disabled")
            self.model = engines.OrtModel(self.proc, self.key, label, "CPUExecutionProvider")
            return
        except (engines.NoKernel, engines.Crashed, BnfoldError):
            pass  # ORT lacks float64 kernels for many ops (Conv): onnx.reference has them all
        try:
            self.model = engines.ReferenceModel(m64, label)
        except BnfoldError as exc:
            self.reason = str(exc)

    def run(self, chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
        """The truth's outputs on an input set; None (and ``reason``) when it cannot run."""
        if not self._tried:
            self._load()
        if self.model is None:
            return None
        try:
            return engines.run_chunks(self.model, [truth.widened_feed(c, self.to) for c in chunks])
        except (BnfoldError, engines.Crashed, engines.NoKernel) as exc:
            self.reason = str(exc)
            return None

    def release(self) -> None:
        """Drop the truth's ORT session (the next ``run`` builds and loads it again), so the
        verification's child holds one model at a time."""
        if isinstance(self.model, engines.OrtModel):
            self.proc.drop(self.key)
            self.model, self._tried = None, False

    @property
    def engine(self) -> str:
        return self.model.engine if self.model is not None else "-"


def add_truth(checks: list[OutputCheck], ref: Mapping[str, np.ndarray],
              got: Mapping[str, np.ndarray], exact: Mapping[str, np.ndarray] | None,
              engine: str) -> list[OutputCheck]:
    """Failing deterministic checks with both models' distance to the truth attached."""
    if exact is None:
        return checks
    out = []
    for c in checks:
        if c.within_tolerance or c.nondeterministic or c.output not in exact:
            out.append(c)
            continue
        t = truth.judge(ref[c.output], got[c.output], exact[c.output], engine)
        out.append(dataclasses.replace(c, truth=t))
    return out


def add_precision(checks: list[OutputCheck], ref: Mapping[str, np.ndarray],
                  got: Mapping[str, np.ndarray],
                  exact: Mapping[str, np.ndarray] | None) -> list[OutputCheck]:
    """float16/bfloat16 checks within tolerance, with both models' error against the float32
    truth attached (``compare.output_precision``): a fold may not make a low-precision model
    markedly less accurate than it was, even inside the 1%-of-peak tolerance."""
    if exact is None:
        return checks
    out = []
    for c in checks:
        if c.within_tolerance and not c.nondeterministic and c.output in exact:
            p = compare.output_precision(ref[c.output], got[c.output], exact[c.output])
            c = dataclasses.replace(c, precision=p) if p is not None else c
        out.append(c)
    return out


def notes(report: Report, truth_reason: str | None) -> list[str]:
    """One note per output that passed on the float64 truth or was excluded as nondeterministic,
    and why the truth was missing when failures could not be checked against it."""
    found: list[str] = []
    for out in report.outputs:
        checks = [c for c in report.checks if c.output == out]
        nondet = [c for c in checks if c.nondeterministic]
        if nondet:
            found.append(f"output {out!r}: nondeterministic in {len(nondet)} of {len(checks)} "
                         "case(s) (two runs of the original on the same feed differ beyond "
                         "tolerance); not compared, not blamed on any fold")
        closer = [c for c in checks if c.passed and not c.within_tolerance and c.truth]
        if closer:
            worst: Any = max(closer, key=lambda c: c.truth.folded_error).truth
            found.append(f"output {out!r}: out of tolerance in {len(closer)} case(s), but the "
                         f"folded model is at least as close to the float64 ground truth "
                         f"({worst.engine}) as the original: max abs error {worst.folded_error:.3g}"
                         f" vs the original's {worst.original_error:.3g}; the difference is the "
                         "original's rounding, counted as a pass")
        lost = [c for c in checks if c.precision is not None and not c.precision.passed]
        if lost:
            worst = max(lost, key=lambda c: c.precision.folded - c.precision.limit).precision
            found.append(f"output {out!r}: within tolerance, but in {len(lost)} case(s) the "
                         f"folded {lost[0].dtype} model is markedly less accurate than the "
                         f"original ({worst.describe()}): a fold exact in real arithmetic lost "
                         "precision to cancellation; counted as a failure")
    if truth_reason and any(not c.passed and c.truth is None for c in report.judged):
        found.append(f"no float64 ground truth to check the failures against: {truth_reason}")
    return found
