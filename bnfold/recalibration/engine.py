"""Re-estimate the running statistics of every BatchNormalization from data, on ONNX Runtime.

BN k is measured in inference mode with every BN before it already recalibrated, so the
statistics it gets are those its input really has once the model is deployed. BNs are
grouped into levels (a BN's level is one more than the highest level of a BN upstream of
it); one pass over the data measures a whole level. The model is written once, with every BN
input exposed as an output and every BN statistic as an input; each pass feeds the statistics
recalibrated so far. ONNX Runtime runs in a child process (``bnfold.verify.engines``), so a
model that crashes it is one clear error, not the end of bnfold.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.errors import BnfoldError, InputError
from bnfold.graph import attr, referenced_names, subgraphs
from bnfold.model_io import check_model_proto, load_model, save_model
from bnfold.recalibration import data as data_mod
from bnfold.recalibration.report import BnRecalibration, RecalibrationResult
from bnfold.recalibration.stats import ChannelMoments, Estimator
from bnfold.inputs import graph_inputs

DataArg = Union[str, Path, Iterable[Mapping[str, np.ndarray]],
                Callable[[], Iterable[Mapping[str, np.ndarray]]]]
Progress = Callable[[str], None]
DEFAULT_EPS = float(np.float32(1e-5))  # ONNX's default epsilon, as ORT holds it (float32)


def _is_bn(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<BatchNormalization -> {node.output[0]}>"


def _load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        check_model_proto(model, f"model {model.graph.name or '(unnamed)'}")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return load_model(model)


def _nested_bns(graph: onnx.GraphProto, path: str) -> list[BnRecalibration]:
    """BNs in subgraphs: reported, not recalibrated (their inputs cannot be exposed)."""
    found = []
    for node in graph.node:
        for name, sub in subgraphs(node):
            where = f"{path}/{node.name or node.op_type}.{name}"
            found += [BnRecalibration.skipped_bn(_label(n), where, "inside a subgraph (If/Loop/"
                                                 "Scan body): its input cannot be measured")
                      for n in sub.node if _is_bn(n)]
            found += _nested_bns(sub, where)
    return found


def _function_bns(model: onnx.ModelProto) -> list[BnRecalibration]:
    """BNs in model-local functions: reported, not recalibrated (one body serves every call)."""
    found = []
    for f in model.functions:
        where = f"function:{f.domain}.{f.name}"
        body = onnx.helper.make_graph(list(f.node), f.name, [], [])
        found += [BnRecalibration.skipped_bn(_label(n), where, "inside a model-local function: "
                                             "one body serves every call site")
                  for n in body.node if _is_bn(n)]
        found += _nested_bns(body, where)
    return found


def _stat_initializers(model: onnx.ModelProto, bns: list[onnx.NodeProto]) -> None:
    """Make every BN's mean and variance an initializer of its own (Constant nodes become
    initializers; a tensor shared with another reader is copied), or refuse."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    constants = {n.output[0]: n for n in graph.node
                 if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input) | (set().union(*(referenced_names(g) for _, g in subgraphs(node)))
                                       if node.attribute else set()):
            readers[name] = readers.get(name, 0) + 1
    taken = set(inits) | {o for n in graph.node for o in n.output} | inputs
    for bn in bns:
        for slot, role in ((3, "running mean"), (4, "running variance")):
            name = bn.input[slot] if len(bn.input) > slot else ""
            if not name:
                raise InputError(f"BN {_label(bn)!r} has no {role} input")
            if name in inputs and (model.ir_version >= 4 or name not in inits):
                raise InputError(f"BN {_label(bn)!r}: its {role} {name!r} is a graph input, so it "
                                 "is set at run time; there is no stored statistic to recalibrate")
            if name in constants:
                value = onnx.numpy_helper.to_array(constants[name].attribute[0].t) \
                    if constants[name].attribute[0].name == "value" else None
                if value is None:
                    raise InputError(f"BN {_label(bn)!r}: {role} {name!r} is a Constant without "
                                     "a tensor value")
                graph.node.remove(constants[name])
                del constants[name]
                inits[name] = numpy_helper.from_array(value, name)
                graph.initializer.append(inits[name])
            elif name not in inits:
                raise InputError(f"BN {_label(bn)!r}: its {role} {name!r} is computed at run time; "
                                 "only stored statistics (initializers, Constant nodes) can be "
                                 "recalibrated")
            if readers.get(name, 0) > 1:
                fresh = next(f"{name}__recalibrated_{i}" for i in range(1, 1 << 30)
                             if f"{name}__recalibrated_{i}" not in taken)
                taken.add(fresh)
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = fresh
                graph.initializer.append(copy)
                readers[name] -= 1
                bn.input[slot] = fresh


def _levels(graph: onnx.GraphProto, bns: list[onnx.NodeProto]) -> dict[int, int]:
    """id(BN) -> level: 0 when no BN is upstream of its input, else 1 + the highest level above."""
    depth: dict[str, int] = {}  # tensor -> number of BN levels upstream of it
    levels: dict[int, int] = {}
    bn_ids = {id(b) for b in bns}
    for node in graph.node:
        reads = set(node.input)
        for _, sub in subgraphs(node):
            reads |= referenced_names(sub)
        above = max((depth.get(n, 0) for n in reads if n), default=0)
        if id(node) in bn_ids:
            levels[id(node)] = depth.get(node.input[0], 0)
            above = max(above, levels[id(node)] + 1)
        for out in node.output:
            if out:
                depth[out] = above
    return levels


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


def _exposed(model: onnx.ModelProto, names: list[str], dtype_of: dict[str, int],
             stats: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (each BN's input) and takes the BN
    statistics ``stats`` as inputs, so each pass feeds the ones recalibrated so far."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = exposed.graph
    have = {o.name for o in graph.output}
    for name in names:
        if name not in have:
            graph.output.append(helper.make_tensor_value_info(name, dtype_of[name], None))
    wanted, listed = set(stats), {i.name for i in graph.input}
    kept = [t for t in graph.initializer if t.name not in wanted]
    moved = [t for t in graph.initializer if t.name in wanted]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in moved if t.name not in listed)
    return exposed


def _measure(proc: Any, key: str, path: str, stats: dict[str, np.ndarray], wanted: list[str],
             feeds: Iterable[dict]) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """(feed, the BN inputs ``wanted``) per feed, run with ``stats`` in ORT's child process.
    An ORT crash or refusal is one clear input error."""
    from bnfold.verify.engines import Crashed, NoKernel

    try:
        proc.load(key, path, "the model", ["CPUExecutionProvider"], "disabled", fixed=stats)
        for feed in feeds:
            yield feed, proc.run(key, feed, wanted)
    except Crashed as exc:
        raise InputError(f"{exc}; recalibration needs ONNX Runtime to run the model") from None
    except NoKernel as exc:
        raise InputError(f"onnxruntime has no kernel for this model ({exc}); recalibration "
                         "needs ONNX Runtime to run it") from None
    finally:
        proc.drop(key)


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
    batch into the old statistics, under ``convention``). The input model is not changed.
    """
    proto = _load(model)
    bns = [n for n in proto.graph.node if _is_bn(n)]
    nested = _nested_bns(proto.graph, "main") + _function_bns(proto)
    if not bns and not nested:
        raise InputError("the model has no BatchNormalization nodes: nothing to recalibrate")
    if not bns:
        raise InputError("every BatchNormalization is inside a subgraph (If/Loop/Scan) or a "
                         "model-local function; bnfold recalibrates BNs of the main graph")
    _stat_initializers(proto, bns)
    specs = graph_inputs(proto)
    levels = _levels(proto.graph, bns)
    n_levels = max(levels.values()) + 1
    source = _data_source(data, specs, batch_size, max_batches, n_levels)
    inits = {t.name: t for t in proto.graph.initializer}
    old = {id(b): (numpy_helper.to_array(inits[b.input[3]]), numpy_helper.to_array(inits[b.input[4]]))
           for b in bns}
    dtype_of = _activation_types(proto, bns, inits)
    overrides: dict[str, np.ndarray] = {}
    records: dict[int, BnRecalibration] = {}
    batches = samples = 0
    stats = {b.input[k]: old[id(b)][k - 3] for b in bns for k in (3, 4)}
    from bnfold.verify.engines import OrtProcess

    with tempfile.TemporaryDirectory(prefix="bnfold-recalibrate-") as tmp, OrtProcess() as proc:
        path = os.path.join(tmp, "exposed.onnx")
        save_model(_exposed(proto, sorted(dtype_of), dtype_of, sorted(stats)), path,
                   overwrite=True)
        for level in range(n_levels):
            group = [b for b in bns if levels[id(b)] == level]
            estimators = {id(b): Estimator(mode, convention, *old[id(b)], momentum=momentum)
                          for b in group}
            wanted = sorted({b.input[0] for b in group})
            batches = samples = 0
            for feed, values in _measure(proc, f"pass{level}", path, {**stats, **overrides},
                                         wanted, source()):
                for b in group:
                    estimators[id(b)].add(ChannelMoments.of_batch(values[b.input[0]], axis=1))
                batches += 1
                samples += int(next(iter(feed.values())).shape[0]) if feed else 0
                if progress and batches % 10 == 0:
                    progress(f"pass {level + 1}/{n_levels}: batch {batches}")
            if progress:
                progress(f"pass {level + 1}/{n_levels}: {len(group)} BN measured on {batches} "
                         f"batch(es), {samples} sample(s)")
            for b in group:
                mean, var = estimators[id(b)].result()
                o_mean, o_var = old[id(b)]
                overrides[b.input[3]] = mean.astype(o_mean.dtype)
                overrides[b.input[4]] = var.astype(o_var.dtype)
                records[id(b)] = BnRecalibration(
                    bn=_label(b), graph="main", level=level, eps=float(attr(b, "epsilon", DEFAULT_EPS)),
                    old_mean=o_mean.astype(np.float64), old_var=o_var.astype(np.float64),
                    new_mean=mean, new_var=var)
    for name, value in overrides.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return RecalibrationResult(
        model=proto, records=[records[id(b)] for b in bns] + nested, batches=batches,
        samples=samples, passes=n_levels,
        settings={"mode": mode, "momentum": momentum, "convention": convention,
                  "batch_size": batch_size, "max_batches": max_batches})


def _activation_types(model: onnx.ModelProto, bns: list[onnx.NodeProto],
                      inits: dict[str, onnx.TensorProto]) -> dict[str, int]:
    """Element type of each BN's input: declared/inferred, else that of the BN's scale."""
    from bnfold.graph import value_infos

    dtypes = value_infos(model).get((), ({}, {}))[1]
    out = {}
    for bn in bns:
        scale = inits.get(bn.input[1])
        fallback = scale.data_type if scale is not None else onnx.TensorProto.FLOAT
        out[bn.input[0]] = dtypes.get(bn.input[0], fallback)
    return out
