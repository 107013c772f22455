"""Re-estimate the running statistics of every BatchNormalization from data, on ONNX Runtime.

BN k is measured in inference mode with every BN before it already recalibrated, so the
statistics it gets are those its input really has once the model is deployed. BNs are
grouped into levels (``levels``: a BN's level is one more than the highest level of a BN
upstream of it); one pass over the data measures a whole level. Every BN counts, wherever it
lives (``units``): in the main graph, in If/Loop/Scan bodies, in model-local functions. The
measurement copy (``instrument``) is written once: every site of a BN reads its statistics
from inputs fed with those recalibrated so far, main-graph sites expose their input, nested
sites carry float64 sums out of their bodies. ONNX Runtime runs in a child process
(``bnfold.verification.engines``), so a model that crashes it is one clear error, not the end of
bnfold.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx

from bnfold.errors import BnfoldError, InputError
from bnfold.graph.index import attr
from bnfold.io.model_io import check_model_proto, load_model, save_model
from bnfold.recalibration import data as data_mod
from bnfold.recalibration import instrument
from bnfold.recalibration.report import BnRecalibration, RecalibrationResult
from bnfold.inputs import graph_inputs
from bnfold.recalibration.stats import Estimator
from bnfold.recalibration.units import Unit, find_units

DataArg = Union[str, Path, Iterable[Mapping[str, np.ndarray]],
                Callable[[], Iterable[Mapping[str, np.ndarray]]]]
Progress = Callable[[str], None]
DEFAULT_EPS = float(np.float32(1e-5))  # ONNX's default epsilon, as ORT holds it (float32)
NO_DATA = ("no data reached it (an If branch not taken, a loop that ran no iteration, a function "
           "never called): left unchanged")


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        check_model_proto(model, f"model {model.graph.name or '(unnamed)'}")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return load_model(model)


def _data_source(data: DataArg, specs: list, batch_size: int | None,
                 max_batches: int | None, passes: int) -> Callable[[], Iterable[dict]]:
    """A function giving a fresh, checked batch iterator for each pass over the data."""
    if isinstance(data, (str, Path)):
        def raw() -> Iterable[Mapping[str, np.ndarray]]:
            return data_mod.from_path(data, specs)
    elif callable(data):
        raw = data
    else:
        if passes > 1 and iter(data) is data:
            raise BnfoldError(f"the model needs {passes} passes over the data (BN k is measured "
                              "after the BNs before it are recalibrated); pass a list or a "
                              "function returning a fresh iterator, not a one-shot iterator")
        def raw() -> Iterable[Mapping[str, np.ndarray]]:
            return data

    def fresh() -> Iterable[dict]:
        return data_mod.checked(data_mod.rebatch(raw(), batch_size), specs, max_batches)

    return fresh


def _ort_errors(exc: Exception) -> InputError:
    """An ORT crash or missing kernel as one clear input error."""
    from bnfold.verification.engines import Crashed

    if isinstance(exc, Crashed):
        return InputError(f"{exc}; recalibration needs ONNX Runtime to run the model")
    return InputError(f"onnxruntime has no kernel for this model ({exc}); recalibration "
                      "needs ONNX Runtime to run it")


def _measure(proc: Any, key: str, stats: dict[str, np.ndarray], wanted: list[str],
             feeds: Iterable[dict]) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """(feed, the BN inputs ``wanted``) per feed, run in ORT's child process on the session
    ``key`` with ``stats`` (every BN's current statistics, graph inputs) fed alongside."""
    from bnfold.verification.engines import Crashed, NoKernel

    try:
        for feed in feeds:
            yield feed, proc.run(key, {**feed, **stats}, wanted)
    except (Crashed, NoKernel) as exc:
        raise _ort_errors(exc) from None


def _open(proc: Any, path: str) -> None:
    from bnfold.verification.engines import Crashed, NoKernel

    try:
        proc.load("measured", path, "the model", ["CPUExecutionProvider"], "disabled")
    except (Crashed, NoKernel) as exc:
        raise _ort_errors(exc) from None


def recalibrate(model: onnx.ModelProto | str | os.PathLike, data: DataArg, *,
                mode: str = "pooled", momentum: float | None = None,
                convention: str = "pytorch", batch_size: int | None = None,
                max_batches: int | None = None,
                progress: Progress | None = None) -> RecalibrationResult:
    """New running statistics for every BN of ``model``, measured on ``data`` with ORT.

    ``data``: an .npz path, a folder of .npy files, a list of feed dicts, or a function
    returning a fresh iterable of feed dicts (one pass over the data per BN level).
    ``mode``: ``pooled`` (exact statistics of all the data), ``cumulative`` (PyTorch
    ``update_bn``: average of per-batch statistics) or ``momentum`` (``momentum`` blends each
    batch into the old statistics, under ``convention``). BNs in If/Loop/Scan bodies and in
    model-local functions are measured over every execution (every iteration, every call);
    a BN no data reaches keeps its statistics. The input model is not changed.
    """
    proto = _load(model)
    units = find_units(proto)
    if not units:
        raise InputError("the model has no BatchNormalization nodes: nothing to recalibrate")
    if all(u.skipped for u in units):
        raise InputError(f"no BatchNormalization can be recalibrated: BN {units[0].label!r} "
                         f"({units[0].graph}): {units[0].skipped}")
    m = instrument.build(proto, units)
    live = [k for k, u in enumerate(units) if u.skipped is None and k in m.levels
            and k not in m.unreachable]
    if not live:
        raise InputError("no BatchNormalization can be measured: " + "; ".join(
            f"{units[k].label}: {m.unreachable.get(k, NO_DATA)}" for k, u in enumerate(units)
            if u.skipped is None))
    n_levels = max(m.levels[k] for k in live) + 1
    specs = graph_inputs(proto)
    source = _data_source(data, specs, batch_size, max_batches, n_levels)
    old = {k: units[k].old() for k, u in enumerate(units) if u.skipped is None}
    stats = {name: value for k, pair in old.items()
             for name, value in zip(instrument.stat_inputs(k), pair)}
    records: dict[int, BnRecalibration] = {}
    batches = samples = 0
    from bnfold.verification.engines import OrtProcess

    with tempfile.TemporaryDirectory(prefix="bnfold-recalibrate-") as tmp, OrtProcess() as proc:
        path = os.path.join(tmp, "measured.onnx")
        save_model(m.model, path, overwrite=True)
        _open(proc, path)  # one session for every pass: the statistics are inputs, not weights
        for level in range(n_levels):
            group = [k for k in live if m.levels[k] == level]
            estimators = {k: Estimator(mode, convention, *old[k], momentum=momentum) for k in group}
            wanted = sorted({name for k in group for name in m.outputs(k)})
            batches = samples = 0
            for feed, values in _measure(proc, "measured", stats, wanted, source()):
                for k in group:
                    moments = m.moments(k, values)
                    if moments.count:
                        estimators[k].add(moments)
                batches += 1
                samples += int(next(iter(feed.values())).shape[0]) if feed else 0
                if progress and batches % 10 == 0:
                    progress(f"pass {level + 1}/{n_levels}: batch {batches}")
            if progress:
                progress(f"pass {level + 1}/{n_levels}: {len(group)} BN measured on {batches} "
                         f"batch(es), {samples} sample(s)")
            for k in group:
                records[k] = _finish(k, units[k], level, estimators[k], stats)
    for k, unit in enumerate(units):
        if k not in records:
            why = unit.skipped or m.unreachable.get(k) or NO_DATA
            records[k] = BnRecalibration.skipped_bn(unit.label, unit.graph, why)
    return RecalibrationResult(
        model=proto, records=[records[k] for k in range(len(units))], batches=batches,
        samples=samples, passes=n_levels,
        settings={"mode": mode, "momentum": momentum, "convention": convention,
                  "batch_size": batch_size, "max_batches": max_batches})


def _finish(k: int, unit: Unit, level: int, estimator: Estimator,
            stats: dict[str, np.ndarray]) -> BnRecalibration:
    """Write a measured unit's new statistics into the model and into the feeds of the later
    passes; its record (skipped when no batch reached it)."""
    if estimator.batches == 0:
        return BnRecalibration.skipped_bn(unit.label, unit.graph, NO_DATA)
    mean, var = estimator.result()
    o_mean, o_var = unit.old()
    unit.write(mean, var)
    for name, value, like in zip(instrument.stat_inputs(k), (mean, var), (o_mean, o_var)):
        stats[name] = value.astype(like.dtype)
    return BnRecalibration(
        bn=unit.label, graph=unit.graph, level=level,
        eps=float(attr(unit.node, "epsilon", DEFAULT_EPS)),
        old_mean=o_mean.astype(np.float64), old_var=o_var.astype(np.float64),
        new_mean=mean, new_var=var)
