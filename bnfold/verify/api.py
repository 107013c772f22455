"""``verify``: run the original and folded models on the same inputs and judge every output.

Cases are (provider x input set); each output of each case is compared against per-dtype
tolerances. On failure the first diverging intermediate tensor is found and blamed on a BN fold.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import onnx

from bnfold.errors import InputError
from bnfold.verify import compare, inputs, runner
from bnfold.verify.localize import localize
from bnfold.verify.report import Accuracy, Case, OutputCheck, Report

if TYPE_CHECKING:
    from bnfold.fold.report import FoldResult

ModelArg = Union[str, Path, onnx.ModelProto]
MAX_HIST_ELEMENTS = 200_000  # per output, enough for a histogram without holding everything


@dataclass
class _Model:
    """A model argument: what ORT loads (path or proto), and a proto for signatures/localisation."""

    source: str | onnx.ModelProto
    label: str
    proto: onnx.ModelProto

    @classmethod
    def of(cls, arg: ModelArg) -> _Model:
        from bnfold.model_io import load_model

        if isinstance(arg, onnx.ModelProto):
            return cls(arg, f"<in-memory model {arg.graph.name or 'unnamed'}>", arg)
        path = str(arg)
        return cls(path, path, load_model(path, load_external_data=False))

    def full_proto(self) -> onnx.ModelProto:
        """The proto with external data loaded (needed to re-serialise with extra outputs)."""
        if isinstance(self.source, onnx.ModelProto):
            return self.source
        from bnfold.model_io import load_model

        return load_model(self.source)


def _parse_shapes(shapes: Mapping[str, Sequence[int]] | Sequence[str] | None
                  ) -> dict[str, tuple[int, ...]]:
    if not shapes:
        return {}
    if isinstance(shapes, Mapping):
        return {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    return dict(inputs.parse_shape(s) for s in shapes)


def _input_sets(specs: list[inputs.TensorSpec], *, seed: int, shapes: dict[str, tuple[int, ...]],
                batch_sizes: Sequence[int] | None, data: Any) -> list[tuple[str, list[dict]]]:
    """(source label, feed chunks) per input set: the user's .npz files, else seeded random data."""
    if data is not None:
        if isinstance(data, Mapping):
            return [("arrays", inputs.split_batches(dict(data), specs))]
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(p), inputs.split_batches(inputs.load_npz(p, specs), specs)) for p in paths]
    names = {s.name for s in specs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise InputError(f"--shape names unknown input(s) {unknown}; the inputs are {sorted(names)}")
    dynamic = inputs.batch_is_dynamic(specs, shapes)
    if batch_sizes and not dynamic:
        raise InputError("--batch-size needs a symbolic batch dimension, but the model's batch "
                         "size is fixed (or set by --shape)")
    sizes: Sequence[int | None] = (list(batch_sizes or inputs.DEFAULT_BATCH_SIZES) if dynamic
                                   else [None])
    return [(f"random seed={seed}" + (f" batch={b}" if b is not None else ""),
             [inputs.random_feeds(specs, b, shapes, seed)]) for b in sizes]


def _run_chunks(session: Any, chunks: list[dict]) -> dict[str, np.ndarray]:
    """Run every chunk and join outputs along the batch axis."""
    results = [runner.run(session, c) for c in chunks]
    if len(results) == 1:
        return results[0]
    return {k: np.concatenate([r[k] for r in results], axis=0) for k in results[0]}


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


def _environment(providers: Sequence[str], opt_level: str, seed: int) -> dict[str, Any]:
    import onnxruntime as ort

    import bnfold

    return {"bnfold": bnfold.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}",
            "providers": ", ".join(providers),
            "available providers": ", ".join(ort.get_available_providers()),
            "graph optimization level": opt_level, "seed": seed}


def _accuracy(name: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> Accuracy:
    if ref.ndim != 2 or ref.shape[0] != labels.shape[0]:
        raise InputError(f"labels ({labels.shape[0]}) do not match output {name!r} of shape "
                         f"{'x'.join(map(str, ref.shape))}; expected one label per sample")
    p_ref, p_got = ref.argmax(axis=1), got.argmax(axis=1)
    return Accuracy(name, int(labels.shape[0]), float(np.mean(p_ref == labels)),
                    float(np.mean(p_got == labels)), float(np.mean(p_ref == p_got)))


def verify(original: ModelArg, folded: ModelArg, *, fold_result: FoldResult | None = None,
           providers: Sequence[str] = ("cpu",), opt_level: str = "disabled", seed: int = 0,
           shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
           batch_sizes: Sequence[int] | None = None, data: Any = None,
           labels: str | Path | np.ndarray | None = None, atol: float | None = None,
           rtol: float | None = None, localize_failures: bool = True) -> Report:
    """Compare ``folded`` against ``original`` on ONNX Runtime and return the Report.

    ``data``: an .npz path, several paths, or {input name: array}; without it inputs are random
    (seeded) at each of ``batch_sizes`` (default 1 and 8 when the batch dim is symbolic).
    ``labels`` (with ``data``) adds task accuracy of both models. ``atol``/``rtol`` override the
    per-dtype defaults. Raises BnfoldError for inputs that cannot be compared at all.
    """
    a, b = _Model.of(original), _Model.of(folded)
    inputs.check_signatures(a.proto, b.proto)
    runner.check_opt_level(opt_level)
    for p in providers:
        runner.provider_chain(p)
    if labels is not None and data is None:
        raise InputError("--labels needs --data: the labelled inputs to score")
    specs = inputs.graph_inputs(a.proto)
    sets = _input_sets(specs, seed=seed, shapes=_parse_shapes(shapes), batch_sizes=batch_sizes,
                       data=data)
    label_arr = (None if labels is None else
                 np.asarray(labels).reshape(-1) if isinstance(labels, np.ndarray)
                 else inputs.load_labels(labels))

    report = Report(original=a.label, folded=b.label, user_tolerance=(atol, rtol),
                    environment=_environment(providers, opt_level, seed),
                    fold=fold_result.to_dict() if fold_result is not None else None)
    first_failure: tuple[str, dict] | None = None
    for provider in providers:
        sess_a = runner.make_session(a.source, provider, opt_level)
        sess_b = runner.make_session(b.source, provider, opt_level)
        for source, chunks in sets:
            name = f"{provider}: {source}"
            report.cases.append(Case(name, provider, source, {
                k: "x".join(map(str, v)) for k, v in _joined_shapes(chunks).items()}))
            ref, got = _run_chunks(sess_a, chunks), _run_chunks(sess_b, chunks)
            for out in ref:
                check = _check(name, out, ref[out], got[out], atol, rtol)
                report.checks.append(check)
                if ref[out].shape == got[out].shape:
                    _keep_errors(report, out, compare.abs_errors(ref[out], got[out]))
                if not check.passed and first_failure is None:
                    first_failure = (provider, chunks[0])
            if label_arr is not None and report.accuracy is None:
                out = next(iter(ref))
                report.accuracy = _accuracy(out, ref[out], got[out], label_arr)
    if first_failure is not None and localize_failures:
        _localize(report, a, b, first_failure, fold_result, opt_level, atol, rtol)
    return report


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


def _localize(report: Report, a: _Model, b: _Model, failure: tuple[str, dict],
              fold_result: FoldResult | None, opt_level: str, atol: float | None,
              rtol: float | None) -> None:
    provider, feed = failure
    records = fold_result.records if fold_result is not None else None
    report.localization = localize(a.full_proto(), b.full_proto(), feed, provider=provider,
                                   opt_level=opt_level, records=records, atol=atol, rtol=rtol)
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
