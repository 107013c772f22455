"""``verify``: run the original and folded models on the same inputs and judge every output.

Cases are (provider x input set: seeded random feeds, ``feeds.input_sets``, or the user's data),
run one model at a time (``cases``); each output of each case is compared against per-dtype
tolerances. An output out of tolerance is looked at again (``explain``): nondeterministic outputs
are left out, and a fold at least as close to the float64 truth as the original passes. A real
failure is localised: the first diverging intermediate tensor is found and blamed on a BN fold.
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
from bnfold.verification import cases, engines, explain, feeds, runner
from bnfold.verification.localize import localize, not_a_fold
from bnfold.verification.random_ops import random_outputs
from bnfold.verification.report import Report
from bnfold.verification.sizes import SizeChoice, choose_size

if TYPE_CHECKING:
    from bnfold.folding.report import FoldResult
    from bnfold.verification.early import OriginalRuns

ModelArg = Union[str, Path, onnx.ModelProto]
Shapes = Union[Mapping[str, Sequence[int]], Sequence[str], None]  # {name: dims} or "NAME:DIMS"
Dims = Union[Mapping[str, int], Sequence[str], None]  # {symbol: n} or "SYMBOL=N"


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


def verify(original: ModelArg | LoadedModel, folded: ModelArg | LoadedModel, *,
           fold_result: FoldResult | None = None,
           providers: Sequence[str] = ("cpu",), opt_level: str = "disabled", seed: int = 0,
           seeds: Sequence[int] | None = None,
           shapes: Shapes = None, dims: Dims = None,
           batch_sizes: Sequence[int] | None = None, data: Any = None,
           labels: str | Path | np.ndarray | None = None, atol: float | None = None,
           rtol: float | None = None, localize_failures: bool = True,
           size: SizeChoice | int | None = None, proc: engines.OrtProcess | None = None,
           progress: Callable[[str], None] | None = None,
           original_runs: OriginalRuns | None = None) -> Report:
    """Compare ``folded`` against ``original`` and return the Report.

    ``data``: an .npz path, several paths, or {input name: array}; without it inputs are random,
    one feed per seed (``seeds``, default ``seed``, ``seed + 1``, ``seed + 2``) and batch size
    (``batch_sizes``, when the batch dim is symbolic) or, without ``batch_sizes``, the seeds at
    batch 1, 2, 1 (``feeds.default_plan``); ``shapes`` ("NAME:DIMS" or
    {name: dims}) and ``dims`` ("SYMBOL=N" or {symbol: n}) fix input shapes (``bnfold.inputs``
    says how). ``labels`` (with ``data``)
    adds task accuracy of both models. ``atol``/``rtol`` override the per-dtype defaults.
    ONNX Runtime runs in a child process (a crash there is reported, not fatal), or onnx.reference
    where ORT has no kernel. Raises BnfoldError for inputs that cannot be compared at all, and
    when ORT crashes on the original model.

    Symbolic non-batch input dims get ``size`` (from ``probe_size``, or an int), else the first
    size of ``sizes.SIZE_LADDER`` the original runs (``sizes.choose_size``). ``proc``: an ORT
    child to use (left open; by default one is started and closed here). ``progress`` gets a
    short message per run ("running the original on case 2 of 3", "verifying case 2 of 3").
    The ORT child holds one model at a time (``cases``). ``original_runs``: the original's
    outputs run before (``early.start_original``), used on the first provider where they
    answer this call's own input sets.
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
        choice = _size_choice(size, proc, a, request, providers, opt_level, seed_list[0], data,
                              ran_before=original_runs is not None)
        sets = feeds.input_sets(graph_inputs(a.proto), seeds=seed_list, request=request,
                                batch_sizes=batch_sizes, data=data,
                                size=choice.size if choice is not None else None)
        label_arr = (None if labels is None else
                     np.asarray(labels).reshape(-1) if isinstance(labels, np.ndarray)
                     else feeds.load_labels(labels))

        report = Report(original=a.label, folded=b.label, user_tolerance=(atol, rtol),
                        environment=_environment(proc, providers, opt_level, seed_list),
                        fold=fold_result.to_dict() if fold_result is not None else None,
                        input_size=choice.note() if choice is not None else "")
        truth = explain.GroundTruth(proc, a.source, a.proto)
        truth32 = explain.GroundTruth(proc, a.source, a.proto, onnx.TensorProto.FLOAT)
        failure: tuple[str, bool, dict] | None = None
        tick = _counter(progress, len(sets) * len(providers))
        for provider in providers:
            pair = cases.ModelPair(proc, a, b, provider, opt_level, report)
            known = (original_runs.outputs_for(provider, opt_level, sets)
                     if original_runs is not None and provider == providers[0] else None)
            failed = cases.run_cases(report, pair, sets, (truth, truth32), label_arr, atol, rtol,
                                     tick, random=random_outputs(a.proto), known=known)
            pair.release()
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


def _counter(progress: Callable[[str], None] | None, total: int) -> Callable[[str], None]:
    """Says "WHAT k of total" through ``progress``, counting each WHAT on its own."""
    done: dict[str, int] = {}

    def tick(what: str) -> None:
        done[what] = done.get(what, 0) + 1
        if progress is not None:
            progress(f"{what} {done[what]} of {total}")
    return tick


def _size_choice(size: SizeChoice | int | None, proc: engines.OrtProcess, a: LoadedModel,
                 request: ShapeRequest, providers: Sequence[str], opt_level: str,
                 seed: int, data: Any, ran_before: bool = False) -> SizeChoice | None:
    """The size for symbolic non-batch dims: given, or probed on the original (whose session
    is kept for the first provider's cases); None when nothing is symbolic or data is given.
    ``ran_before``: the original ran already (``early``), so nothing is loaded to check it."""
    if data is not None:
        return None
    if isinstance(size, SizeChoice):
        return size
    open_inputs = request.sized_inputs(graph_inputs(a.proto))
    if size is not None:
        return SizeChoice(int(size), tuple(open_inputs)) if open_inputs else None
    if ran_before and not open_inputs:  # nothing to size, and ORT loaded it already
        return None
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
    try:
        return choose_size(proc, a.source, a.proto, a.label, request=ShapeRequest.of(shapes, dims),
                           provider=providers[0], opt_level=opt_level, seed=seed, key="probe")
    finally:  # also when no size runs: a caller's long-lived child keeps no session of it
        proc.drop("probe")


def _environment(proc: engines.OrtProcess, providers: Sequence[str], opt_level: str,
                 seeds: Sequence[int]) -> dict[str, Any]:
    import bnfold

    ort_version, available = proc.info()  # the ORT that runs the models, not imported here
    return {"bnfold": bnfold.__version__, "onnx": onnx.__version__, "onnxruntime": ort_version,
            "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}",
            "providers": ", ".join(providers),
            "available providers": ", ".join(available),
            "graph optimization level": opt_level,
            "seeds": ", ".join(map(str, seeds))}


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
