"""Run and judge the input sets of one provider, with one model loaded in the ORT child at a time.

The original runs every input set first (its outputs are kept: a few arrays per case), then its
session is dropped and the folded model runs them; so the child holds one model's weights and
one run's activations at a time instead of both models' (for ResNet-50: about 100 MB less). The
second looks (``explain``) come after, each in its own session: the original again on the cases
out of tolerance (nondeterminism), the float64 truth on those still failing, the float32 truth
for the precision of float16/bfloat16 outputs. A deterministic run is the same computation
whichever session does it, so the verdicts are those of the two models side by side; random
ops are the exception: a new ORT session replays the draws of the last one (same model, same
process), so a case out of tolerance runs the original twice in the re-opened session, and
an output that moves between any two of its three runs (the first, then these two) is
nondeterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from bnfold.errors import InputError
from bnfold.verification import compare, engines, explain, runner
from bnfold.verification.report import Accuracy, Case, OutputCheck, Report

if TYPE_CHECKING:
    from bnfold.verification.api import LoadedModel

MAX_HIST_ELEMENTS = 200_000  # per output, enough for a histogram without holding everything
Outputs = dict[str, np.ndarray]
Chunks = list[dict[str, np.ndarray]]


def original_crashed(exc: engines.Crashed) -> InputError:
    return InputError(f"{exc}; the original model itself cannot run on onnxruntime here, so "
                      "nothing can be verified (fold with --no-verify to skip verification)")


class ModelPair:
    """The original and folded models on one provider, loaded one at a time: asking for one
    drops the other's session. Where ORT has no kernel for either, both run on onnx.reference
    (``reference``; the report gets a note), in this process."""

    def __init__(self, proc: engines.OrtProcess, a: LoadedModel, b: LoadedModel, provider: str,
                 opt_level: str, report: Report) -> None:
        self.proc, self.models, self.provider = proc, {"original": a, "folded": b}, provider
        self.opt_level, self.report = opt_level, report
        self.chain = runner.provider_chain(provider)
        self.reference: dict[str, engines.ReferenceModel] | None = None
        self.live: str | None = None

    @property
    def engine(self) -> str:
        return engines.REFERENCE if self.reference is not None else f"onnxruntime {self.chain[0]}"

    def key(self, role: str) -> str:
        return f"{role}:{self.provider}"

    def open(self, role: str) -> engines.Runner:
        """The runner of ``role`` ("original" or "folded"), loading it (and dropping the other)
        when needed; a missing ORT kernel switches both to onnx.reference. Raises Crashed when
        ORT dies loading it."""
        if self.reference is not None:
            return self.reference[role]
        m = self.models[role]
        key, label = self.key(role), f"the {role} model {m.label}"
        if self.live != role:
            self.proc.drop(self.key("folded" if role == "original" else "original"))
            try:
                if not self.proc.has(key):  # the size probe may have loaded the original already
                    self.proc.load(key, engines.ort_source(m.source, self.proc, key), label,
                                   self.chain, self.opt_level)
            except engines.NoKernel as exc:
                self.proc.drop(key)
                self._to_reference(exc, role)
                return self.reference[role]  # type: ignore[index]
            self.live = role
        return engines.OrtModel(self.proc, key, label, self.chain[0])

    def release(self) -> None:
        """Drop whichever model's session is loaded."""
        for role in ("original", "folded"):
            self.proc.drop(self.key(role))
        self.live = None

    def _to_reference(self, why: engines.NoKernel, whose: str) -> None:
        note = (f"onnxruntime has no kernel for the {whose} model ({why}); both models ran on "
                f"{engines.REFERENCE} instead")
        if note not in self.report.notes:
            self.report.notes.append(note)
        a, b = self.models["original"], self.models["folded"]
        self.reference = {"original": engines.ReferenceModel(engines.full_model(a.source), a.label),
                          "folded": engines.ReferenceModel(engines.full_model(b.source), b.label)}


@dataclass
class _Case:
    """One input set's runs and checks while its provider's cases are judged."""

    name: str
    source: str
    chunks: Chunks
    ref: Outputs
    got: Outputs | None = None
    checks: list[OutputCheck] = field(default_factory=list)


def run_cases(report: Report, pair: ModelPair, sets: list[tuple[str, Chunks]],
              truths: tuple[explain.GroundTruth, explain.GroundTruth],
              label_arr: np.ndarray | None, atol: float | None, rtol: float | None,
              tick: Callable[[str], None] = lambda what: None,
              random: frozenset[str] = frozenset(), known: list[Outputs] | None = None
              ) -> tuple[str, bool, dict] | None:
    """Run and judge every input set on one provider; returns the first failing case's provider,
    whether it ran on onnx.reference, and its feed (for localisation). Sets ``report.crash``
    (after judging the cases before) and returns None when ORT crashes on the folded model. ``truths``: the
    float64 truth (for failures) and the float32 one (precision of float16/bfloat16 outputs).
    ``random``: the outputs a random op reaches (``random_ops.random_outputs``), nondeterministic
    when two original runs differ at all. ``tick`` hears "running the original on case" and
    "verifying case" once per input set each. ``known``: the original's outputs per set, run
    before on this provider's ORT session kind (``early``): not run again."""
    cases = []
    for i, (source, chunks) in enumerate(sets):
        tick("running the original on case")
        cases.append(_Case(f"{pair.provider}: {source}", source, chunks,
                           known[i] if known is not None else _run_original(pair, chunks)))
    ref_engine = pair.engine
    try:
        pair.open("folded")
    except engines.Crashed as exc:
        report.crash = f"{exc}, which the original survives"
        return None
    if pair.engine != ref_engine:  # no ORT kernel for the folded model: both on onnx.reference
        for case in cases:
            case.ref = _run_original(pair, case.chunks)
    crashed = None
    for i, case in enumerate(cases):
        tick("verifying case")
        try:
            case.got = engines.run_chunks(pair.open("folded"), case.chunks)
        except engines.Crashed as exc:
            crashed = (i, f"{exc} on inputs from {case.source}, which the original survives")
            break
    judged = cases if crashed is None else cases[:crashed[0]]
    _second_looks(pair, judged, truths, atol, rtol, random)
    failure = None
    for case in judged:
        failed = _record(report, case, pair, label_arr)
        failure = failure or failed
    if crashed is not None:
        _append_case(report, cases[crashed[0]], pair)
        report.crash = crashed[1]
        return None
    return failure


def _run_original(pair: ModelPair, chunks: Chunks) -> Outputs:
    try:
        return engines.run_chunks(pair.open("original"), chunks)
    except engines.Crashed as exc:
        raise original_crashed(exc) from None


def _second_looks(pair: ModelPair, cases: list[_Case],
                  truths: tuple[explain.GroundTruth, explain.GroundTruth], atol: float | None,
                  rtol: float | None, random: frozenset[str]) -> None:
    """Checks of every case, with the second looks, each engine's runs together: the original
    again where out of tolerance, then the float64 truth, then the float32 truth."""
    truth, truth32 = truths
    for case in cases:
        assert case.got is not None
        case.checks = [_check(case.name, out, case.ref[out], case.got[out], atol, rtol)
                       for out in case.ref]
    failing = [c for c in cases if not all(k.within_tolerance for k in c.checks)]
    for case in failing:  # twice: a new ORT session replays its random ops' draws
        first, again = (_run_original(pair, case.chunks) for _ in range(2))
        for x, y in ((case.ref, first), (first, again)):
            case.checks = explain.mark_nondeterministic(case.checks, x, y, atol, rtol, random)
    still = [c for c in failing if not all(k.within_tolerance or k.nondeterministic
                                           for k in c.checks)]
    if still:
        pair.release()
    for case in still:
        case.checks = explain.add_truth(case.checks, case.ref, case.got, truth.run(case.chunks),
                                        truth.engine)
    truth.release()
    low = [c for c in cases if any(k.dtype in compare.UNIT_ROUNDOFF and k.within_tolerance
                                   for k in c.checks)]
    if low:
        pair.release()
    for case in low:
        case.checks = explain.add_precision(case.checks, case.ref, case.got,
                                            truth32.run(case.chunks))
    truth32.release()


def _append_case(report: Report, case: _Case, pair: ModelPair) -> None:
    report.cases.append(Case(case.name, pair.provider, case.source, {
        k: "x".join(map(str, v)) for k, v in _joined_shapes(case.chunks).items()}, pair.engine))


def _record(report: Report, case: _Case, pair: ModelPair, label_arr: np.ndarray | None
            ) -> tuple[str, bool, dict] | None:
    """Add a judged case to the report; its failure (for localisation) when it has one."""
    assert case.got is not None
    _append_case(report, case, pair)
    report.checks += case.checks
    for c in case.checks:
        if case.ref[c.output].shape == case.got[c.output].shape and not c.nondeterministic:
            _keep_errors(report, c.output, compare.abs_errors(case.ref[c.output],
                                                              case.got[c.output]))
    if label_arr is not None and report.accuracy is None:
        out = next(iter(case.ref))
        report.accuracy = _accuracy(out, case.ref[out], case.got[out], label_arr)
    if any(not c.passed and not c.nondeterministic and not c.within_tolerance for c in case.checks):
        return (pair.provider, pair.reference is not None, case.chunks[0])
    return None


def _check(case: str, name: str, ref: np.ndarray, got: np.ndarray, atol: float | None,
           rtol: float | None) -> OutputCheck:
    a_tol, r_tol = compare.tolerance_for(ref.dtype, atol, rtol)
    if ref.shape != got.shape:
        n = max(ref.size, got.size, 1)
        metrics = compare.Metrics(float("inf"), float("inf"), float("inf"), float("inf"), 0.0,
                                  None, n, n)
        shape = f"{'x'.join(map(str, ref.shape))} vs {'x'.join(map(str, got.shape))}"
    else:
        metrics = compare.compare(ref, got, a_tol, r_tol)
        shape = "x".join(map(str, ref.shape))
    return OutputCheck(case, name, compare.dtype_name(ref.dtype), shape, a_tol, r_tol, metrics)


def _accuracy(name: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> Accuracy:
    if ref.ndim != 2 or ref.shape[0] != labels.shape[0]:
        raise InputError(f"labels ({labels.shape[0]}) do not match output {name!r} of shape "
                         f"{'x'.join(map(str, ref.shape))}; expected one label per sample")
    p_ref, p_got = ref.argmax(axis=1), got.argmax(axis=1)
    return Accuracy(name, int(labels.shape[0]), float(np.mean(p_ref == labels)),
                    float(np.mean(p_got == labels)), float(np.mean(p_ref == p_got)))


def _joined_shapes(chunks: Chunks) -> dict[str, tuple[int, ...]]:
    """Input shapes of a whole input set (chunks joined along the batch axis)."""
    first = chunks[0]
    if len(chunks) == 1:
        return {k: tuple(v.shape) for k, v in first.items()}
    return {k: (sum(c[k].shape[0] for c in chunks),) + tuple(v.shape[1:]) for k, v in first.items()}


def _keep_errors(report: Report, name: str, err: np.ndarray) -> None:
    """Add ``err`` to the histogram data of output ``name``, capped at MAX_HIST_ELEMENTS."""
    prev = report.errors.get(name)
    joined = err if prev is None else np.concatenate([prev, err])
    report.errors[name] = joined[:MAX_HIST_ELEMENTS]

