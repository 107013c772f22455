"""``verify``: run the original and folded models on the same inputs and judge every output.

Cases are (provider x input set: seeds x batch sizes, or the user's data); each output of each
case is compared against per-dtype tolerances. An output out of tolerance is looked at again
(``explain``): nondeterministic outputs are left out, and a fold at least as close to the float64
truth as the original passes. A real failure is localised: the first diverging intermediate tensor
is found and blamed on a BN fold.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np
import onnx

from bnfold.errors import InputError
from bnfold.inputs import ShapeRequest, check_signatures, graph_inputs
from bnfold.verification import compare, engines, explain, feeds, runner
from bnfold.verification.localize import localize, not_a_fold
from bnfold.verification.random_ops import random_outputs
from bnfold.verification.report import Accuracy, Case, OutputCheck, Report
from bnfold.verification.sizes import SizeChoice, choose_size

if TYPE_CHECKING:
    from bnfold.folding.report import FoldResult

ModelArg = Union[str, Path, onnx.ModelProto]
Shapes = Union[Mapping[str, Sequence[int]], Sequence[str], None]  # {name: dims} or "NAME:DIMS"
Dims = Union[Mapping[str, int], Sequence[str], None]  # {symbol: n} or "SYMBOL=N"
MAX_HIST_ELEMENTS = 200_000  # per output, enough for a histogram without holding everything


@dataclass
class LoadedModel:
    """A model argument: what ORT loads (path or proto), and a proto for signatures (a path's
    structure only: external data and a single file's large weights stay on disk).
    ``fold_file`` makes one for its input and hands it to ``probe_size`` and ``verify``, so the
    input is parsed and checked once for both."""

    source: str | onnx.ModelProto
    label: str
    proto: onnx.ModelProto

    @classmethod
    def of(cls, arg: ModelArg | LoadedModel) -> LoadedModel:
        from bnfold.io.model_io import load_model

        if isinstance(arg, LoadedModel):
            return arg
        if isinstance(arg, onnx.ModelProto):
            return cls(arg, f"<in-memory model {arg.graph.name or 'unnamed'}>", arg)
        path = str(arg)  # ORT reads the file itself: here only the structure is needed
        return cls(path, path, load_model(path, load_external_data=False, weights_in_file=True))


def _original_crashed(exc: engines.Crashed) -> InputError:
    return InputError(f"{exc}; the original model itself cannot run on onnxruntime here, so "
                      "nothing can be verified (fold with --no-verify to skip verification)")


def _reference_pair(a: LoadedModel, b: LoadedModel, why: engines.NoKernel, whose: str,
                    report: Report) -> tuple[engines.Runner, engines.Runner]:
    note = (f"onnxruntime has no kernel for the {whose} model ({why}); both models ran on "
            f"{engines.REFERENCE} instead")
    if note not in report.notes:
        report.notes.append(note)
    return (engines.ReferenceModel(engines.full_model(a.source), a.label),
            engines.ReferenceModel(engines.full_model(b.source), b.label))


def _open_pair(proc: engines.OrtProcess, a: LoadedModel, b: LoadedModel, provider: str, opt_level: str,
               report: Report) -> tuple[engines.Runner, engines.Runner] | None:
    """Both models loaded for ``provider`` (onnx.reference for both when ORT lacks a kernel for
    either); None, with ``report.crash`` set, when ORT crashed on the folded model."""
    chain = runner.provider_chain(provider)
    models = []
    for m, role in ((a, "original"), (b, "folded")):
        key, label = f"{role}:{provider}", f"the {role} model {m.label}"
        try:
            if not proc.has(key):  # the size probe may have loaded the original already
                proc.load(key, engines.ort_source(m.source, proc, key), label, chain, opt_level)
        except engines.NoKernel as exc:
            return _reference_pair(a, b, exc, role, report)
        except engines.Crashed as exc:
            if role == "original":
                raise _original_crashed(exc) from None
            report.crash = f"{exc}, which the original survives"
            return None
        models.append(engines.OrtModel(proc, key, label, chain[0]))
    return models[0], models[1]


def verify(original: ModelArg | LoadedModel, folded: ModelArg | LoadedModel, *,
           fold_result: FoldResult | None = None,
           providers: Sequence[str] = ("cpu",), opt_level: str = "disabled", seed: int = 0,
           seeds: Sequence[int] | None = None,
           shapes: Shapes = None, dims: Dims = None,
           batch_sizes: Sequence[int] | None = None, data: Any = None,
           labels: str | Path | np.ndarray | None = None, atol: float | None = None,
           rtol: float | None = None, localize_failures: bool = True,
           size: SizeChoice | int | None = None, proc: engines.OrtProcess | None = None,
           progress: Callable[[str], None] | None = None) -> Report:
    """Compare ``folded`` against ``original`` and return the Report.

    ``data``: an .npz path, several paths, or {input name: array}; without it inputs are random,
    one feed per seed (``seeds``, default ``seed``, ``seed + 1``, ``seed + 2``) and batch size
    (``batch_sizes``, default 1 and 8 when the batch dim is symbolic); ``shapes`` ("NAME:DIMS" or
    {name: dims}) and ``dims`` ("SYMBOL=N" or {symbol: n}) fix input shapes (``bnfold.inputs``
    says how). ``labels`` (with ``data``)
    adds task accuracy of both models. ``atol``/``rtol`` override the per-dtype defaults.
    ONNX Runtime runs in a child process (a crash there is reported, not fatal), or onnx.reference
    where ORT has no kernel. Raises BnfoldError for inputs that cannot be compared at all, and
    when ORT crashes on the original model.

    Symbolic non-batch input dims get ``size`` (from ``probe_size``, or an int), else the first
    size of ``sizes.SIZE_LADDER`` the original runs (``sizes.choose_size``). ``proc``: an ORT
    child to use (left open; by default one is started and closed here). ``progress`` gets a
    short message per case ("verifying case 2 of 6").
    """
    seed_list = list(seeds) if seeds is not None else [seed + i for i in range(feeds.DEFAULT_SEEDS)]
    own = proc is None
    if proc is None:
        proc = engines.OrtProcess()
    proc.start()  # the child imports ORT while the inputs are prepared
    keys = _session_keys(providers)
    proc.drop(*keys)  # a caller's child may hold another verification's sessions under these keys
    try:
        a, b = LoadedModel.of(original), LoadedModel.of(folded)
        check_signatures(a.proto, b.proto)
        runner.check_opt_level(opt_level)
        for p in providers:
            runner.provider_chain(p)
        if labels is not None and data is None:
            raise InputError("--labels needs --data: the labelled inputs to score")
        request = ShapeRequest.of(shapes, dims)
        choice = _size_choice(size, proc, a, request, providers, opt_level, seed_list[0], data)
        sets = feeds.input_sets(graph_inputs(a.proto), seeds=seed_list, request=request,
                                batch_sizes=batch_sizes, data=data,
                                size=choice.size if choice is not None else None)
        label_arr = (None if labels is None else
                     np.asarray(labels).reshape(-1) if isinstance(labels, np.ndarray)
                     else feeds.load_labels(labels))

        report = Report(original=a.label, folded=b.label, user_tolerance=(atol, rtol),
                        environment=_environment(providers, opt_level, seed_list),
                        fold=fold_result.to_dict() if fold_result is not None else None,
                        input_size=choice.note() if choice is not None else "")
        truth = explain.GroundTruth(proc, a.source, a.proto)
        truth32 = explain.GroundTruth(proc, a.source, a.proto, onnx.TensorProto.FLOAT)
        failure: tuple[str, bool, dict] | None = None
        for provider in providers:
            pair = _open_pair(proc, a, b, provider, opt_level, report)
            if pair is None:
                break
            failed = _run_cases(report, pair, provider, sets, (truth, truth32), label_arr,
                                atol, rtol, _counter(progress, len(sets) * len(providers)),
                                random=random_outputs(a.proto))
            if report.crash is not None:
                break
            failure = failure or failed
        report.notes += explain.notes(report, truth.reason or truth32.reason)
        if failure is not None and localize_failures and report.crash is None:
            proc.drop(*(f"{role}:{p}" for role in ("original", "folded") for p in providers))
            _localize(report, proc, a, b, failure, fold_result, opt_level, atol, rtol)
        return report
    finally:
        if own:
            proc.close()
        else:
            proc.drop(*keys)


def _session_keys(providers: Sequence[str]) -> list[str]:
    """Every session key ``verify`` loads into its ORT child (dropped before and after)."""
    return [f"{role}:{p}" for role in ("original", "folded") for p in providers] + [
        "truth", "truth32"]


def _counter(progress: Callable[[str], None] | None, total: int) -> Callable[[], None]:
    """Says "verifying case k of total" through ``progress`` on each call."""
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(f"verifying case {done[0]} of {total}")
    return tick


def _size_choice(size: SizeChoice | int | None, proc: engines.OrtProcess, a: LoadedModel,
                 request: ShapeRequest, providers: Sequence[str], opt_level: str,
                 seed: int, data: Any) -> SizeChoice | None:
    """The size for symbolic non-batch dims: given, or probed on the original (whose session
    is kept for the first provider's cases); None when nothing is symbolic or data is given."""
    if data is not None:
        return None
    if isinstance(size, SizeChoice):
        return size
    open_inputs = request.sized_inputs(graph_inputs(a.proto))
    if size is not None:
        return SizeChoice(int(size), tuple(open_inputs)) if open_inputs else None
    return choose_size(proc, a.source, a.proto, a.label, request=request, provider=providers[0],
                       opt_level=opt_level, seed=seed, key=f"original:{providers[0]}")


def probe_size(original: ModelArg | LoadedModel, proc: engines.OrtProcess, *,
               shapes: Shapes = None, dims: Dims = None,
               providers: Sequence[str] = ("cpu",), opt_level: str = "disabled", seed: int = 0,
               data: Any = None) -> SizeChoice | None:
    """Choose the size for the original's symbolic input dims before any work is done (``bnfold
    fold`` calls this before folding, then passes the choice to ``verify``): InputError naming
    ``--shape`` when the original runs none of the sizes tried. The probe's session is dropped
    (ORT's copy of the weights is not held through the fold); ``proc`` stays running."""
    if data is not None:
        return None
    a = LoadedModel.of(original)
    choice = choose_size(proc, a.source, a.proto, a.label, request=ShapeRequest.of(shapes, dims),
                         provider=providers[0], opt_level=opt_level, seed=seed, key="probe")
    proc.drop("probe")
    return choice


def _run_cases(report: Report, pair: tuple[engines.Runner, engines.Runner], provider: str,
               sets: list[tuple[str, list[dict]]],
               truths: tuple[explain.GroundTruth, explain.GroundTruth],
               label_arr: np.ndarray | None, atol: float | None, rtol: float | None,
               tick: Callable[[], None] = lambda: None, random: frozenset[str] = frozenset(),
               ) -> tuple[str, bool, dict] | None:
    """Run and judge every input set on one provider; returns the first failing case's provider,
    whether it ran on onnx.reference, and its feed (for localisation). Sets ``report.crash``
    when ORT crashes on the folded model. ``truths``: the float64 truth (for failures) and the
    float32 one (precision of float16/bfloat16 outputs). ``random``: the outputs a random op
    reaches (``random_ops.random_outputs``), nondeterministic when two original runs differ."""
    ra, rb = pair
    truth, truth32 = truths
    failure = None
    for source, chunks in sets:
        tick()
        name = f"{provider}: {source}"
        report.cases.append(Case(name, provider, source, {
            k: "x".join(map(str, v)) for k, v in _joined_shapes(chunks).items()}, ra.engine))
        try:
            ref = engines.run_chunks(ra, chunks)
        except engines.Crashed as exc:
            raise _original_crashed(exc) from None
        try:
            got = engines.run_chunks(rb, chunks)
        except engines.Crashed as exc:
            report.crash = f"{exc} on inputs from {source}, which the original survives"
            return None
        checks = [_check(name, out, ref[out], got[out], atol, rtol) for out in ref]
        if not all(c.within_tolerance for c in checks):
            try:
                again = engines.run_chunks(ra, chunks)
            except engines.Crashed as exc:
                raise _original_crashed(exc) from None
            checks = explain.mark_nondeterministic(checks, ref, again, atol, rtol, random)
            if not all(c.within_tolerance or c.nondeterministic for c in checks):
                checks = explain.add_truth(checks, ref, got, truth.run(chunks), truth.engine)
        if any(c.dtype in compare.UNIT_ROUNDOFF and c.within_tolerance for c in checks):
            checks = explain.add_precision(checks, ref, got, truth32.run(chunks))
        report.checks += checks
        for c in checks:
            if ref[c.output].shape == got[c.output].shape and not c.nondeterministic:
                _keep_errors(report, c.output, compare.abs_errors(ref[c.output], got[c.output]))
        if failure is None and any(not c.passed and not c.nondeterministic
                                   and not c.within_tolerance for c in checks):
            failure = (provider, ra.engine == engines.REFERENCE, chunks[0])
        if label_arr is not None and report.accuracy is None:
            out = next(iter(ref))
            report.accuracy = _accuracy(out, ref[out], got[out], label_arr)
    return failure


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


def _environment(providers: Sequence[str], opt_level: str, seeds: Sequence[int]
                 ) -> dict[str, Any]:
    import onnxruntime as ort

    import bnfold

    return {"bnfold": bnfold.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}",
            "providers": ", ".join(providers),
            "available providers": ", ".join(ort.get_available_providers()),
            "graph optimization level": opt_level,
            "seeds": ", ".join(map(str, seeds))}


def _accuracy(name: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> Accuracy:
    if ref.ndim != 2 or ref.shape[0] != labels.shape[0]:
        raise InputError(f"labels ({labels.shape[0]}) do not match output {name!r} of shape "
                         f"{'x'.join(map(str, ref.shape))}; expected one label per sample")
    p_ref, p_got = ref.argmax(axis=1), got.argmax(axis=1)
    return Accuracy(name, int(labels.shape[0]), float(np.mean(p_ref == labels)),
                    float(np.mean(p_got == labels)), float(np.mean(p_ref == p_got)))


def _joined_shapes(chunks: list[dict]) -> dict[str, tuple[int, ...]]:
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


def _localize(report: Report, proc: engines.OrtProcess, a: LoadedModel, b: LoadedModel,
              failure: tuple[str, bool, dict], fold_result: FoldResult | None,
              opt_level: str, atol: float | None, rtol: float | None) -> None:
    provider, reference, feed = failure
    records = fold_result.records if fold_result is not None else None
    unrelated = None if fold_result is not None else not_a_fold(a.proto, b.proto)
    if unrelated is not None:
        report.localization_note = (f"the two models are not a fold of each other ({unrelated}): "
                                    "verification compares them, but no fold is blamed")
        return
    try:
        report.localization = localize(a.source, b.source, feed, provider=provider,
                                       opt_level=opt_level, records=records, atol=atol, rtol=rtol,
                                       proc=proc, reference=reference)
    except engines.Crashed as exc:
        report.localization_note = f"not localised: {exc}"
        return
    if report.localization is None:
        report.localization_note = ("no intermediate tensor shared by both models diverges beyond "
                                    "tolerance; the difference appears only at the outputs")


def verify_fold(original: ModelArg, fold_result: FoldResult, *,
                folded_path: str | Path | None = None, report_dir: str | Path | None = None,
                **options: Any) -> Report:
    """Verify a fold just made (for ``bnfold fold --verify``): the report includes the per-BN fold
    table, names ``folded_path`` when the model was written, and is written to ``report_dir``."""
    report = verify(original, fold_result.model, fold_result=fold_result, **options)
    if folded_path is not None:
        report.folded = str(folded_path)
    if report_dir is not None:
        report.write(report_dir)
    return report
