"""The value of small constant subgraphs, under the model's own opsets, confirmed by ORT.

Op semantics change across opsets (Squeeze, Unsqueeze and ReduceSum read ``axes`` from an
attribute before opset 13 and from an input after), so a subgraph is evaluated as a tiny
model carrying the source model's ``opset_import`` and IR version, never as a bare node.
The same tiny model then runs on ONNX Runtime; a value is only constant when both agree,
because ORT is what will run the folded model. ORT runs in the shared child process
(``bnfold.verification.shared_child``): a segfault there makes the value "not constant" with
the crash named, never kills bnfold. ``evaluate_all`` puts every subgraph it is given into one
model (one reference run, one ORT session); only where that batch fails does each subgraph
run alone, so a failure or crash is pinned on the subgraph that caused it. A ``memo`` keyed by
a subgraph's content (nodes, leaf values, opsets) spares a fold re-evaluating what an earlier
pass evaluated; content keys cannot go stale when a weight is rewritten.
"""
from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.errors import first_line

_ULPS = 4  # float results may differ by rounding between numpy and ORT kernels
_SHARED_BYTES = 256 << 10  # leaves and expected values above this go through a shared file


@dataclass(frozen=True)
class Evaluated:
    """A constant's value, or ``value=None`` and why it is not treated as constant."""

    value: np.ndarray | None
    problem: str = ""


@dataclass(frozen=True)
class Subgraph:
    """The nodes computing ``output`` (in graph order) from the constant ``leaves``."""

    nodes: Sequence[onnx.NodeProto]
    leaves: dict[str, np.ndarray]
    output: str


def evaluate(nodes: Sequence[onnx.NodeProto], leaves: dict[str, np.ndarray], output: str, *,
             opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int) -> Evaluated:
    """``output`` of ``nodes`` (in graph order) given constant ``leaves``, or why not."""
    return evaluate_all([Subgraph(nodes, leaves, output)], opset_imports=opset_imports,
                        ir_version=ir_version)[output]


def evaluate_all(subgraphs: Sequence[Subgraph], *,
                 opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int,
                 memo: dict[bytes, Evaluated] | None = None) -> dict[str, Evaluated]:
    """Each subgraph's output, or why not: evaluated together, alone only where that fails;
    from ``memo`` where it holds the same subgraph (``memo`` gets the new results)."""
    versions = (list(opset_imports), ir_version)
    memo = {} if memo is None else memo
    keys = {s.output: _key(s, versions) for s in subgraphs}
    results = {s.output: memo[keys[s.output]] for s in subgraphs if keys[s.output] in memo}
    for batch in _batches([s for s in subgraphs if s.output not in results]):
        references = _reference(batch, versions)
        ready = [s for s in batch if isinstance(references[s.output], np.ndarray)]
        results.update({s.output: references[s.output] for s in batch
                        if not isinstance(references[s.output], np.ndarray)})
        runtimes = _runtime(ready, references, versions) if ready else {}
        for s in ready:
            reference, runtime = references[s.output], runtimes[s.output]
            if isinstance(runtime, Evaluated):
                results[s.output] = runtime
                continue
            disagreement = _disagreement(reference, runtime)
            results[s.output] = (Evaluated(runtime) if not disagreement else Evaluated(
                None, f"onnx.reference and ONNX Runtime disagree: {disagreement}"))
    memo.update((keys[name], found) for name, found in results.items())
    return results


def _key(s: Subgraph, versions: tuple) -> bytes:
    """A digest of what decides the subgraph's value: its nodes, leaf values, opsets, IR."""
    h = hashlib.blake2b(digest_size=20)
    imports, ir_version = versions
    h.update(repr((sorted((i.domain, i.version) for i in imports), ir_version, s.output)).encode())
    for node in s.nodes:
        h.update(node.SerializeToString(deterministic=True))
    for name in sorted(s.leaves):
        value = np.asarray(s.leaves[name], order="C")
        h.update(repr((name, value.dtype.str, value.shape)).encode())
        h.update(value.reshape(-1).view(np.uint8) if value.dtype.kind in "biufc"
                 else value.tobytes())  # the bytes in place, not a copy
    return h.digest()


def _batches(subgraphs: Sequence[Subgraph]) -> list[list[Subgraph]]:
    """Subgraphs that can share one model: a name is a leaf with one value, or computed, in all
    (a value cached as a leaf in one and computed in another, or a CastLike's dtype-only stand-in,
    goes to another batch)."""
    batches: list[tuple[list[Subgraph], dict[str, np.ndarray], set[str]]] = []
    for s in subgraphs:
        made = {o for n in s.nodes for o in n.output}
        for members, leaves, computed in batches:
            clash = (made & leaves.keys() or computed & s.leaves.keys() or any(
                k in leaves and not _same(leaves[k], v) for k, v in s.leaves.items()))
            if not clash:
                members.append(s)
                leaves.update(s.leaves)
                computed |= made
                break
        else:
            batches.append(([s], dict(s.leaves), made))
    return [members for members, _, _ in batches]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a is b or (a.dtype == b.dtype and a.shape == b.shape
                      and a.tobytes() == b.tobytes())


def _reference(batch: list[Subgraph], versions: tuple) -> dict[str, np.ndarray | Evaluated]:
    """onnx.reference's value of each output (in process: pure numpy cannot segfault)."""
    from onnx.reference import ReferenceEvaluator

    def run(members: list[Subgraph]) -> list[np.ndarray]:
        fed = _fed(members)  # fed, not copied into initializers
        model = _tiny_model(members, *versions, None, fed=fed.keys())
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, fed)]

    out: dict[str, np.ndarray | Evaluated] = {}
    try:
        out.update(zip((s.output for s in batch), run(batch)))
    except Exception:  # noqa: BLE001 - some subgraph failed: find which, one by one
        for s in batch:
            try:
                out[s.output] = run([s])[0]
            except Exception as exc:  # an op the reference cannot run here is simply not constant
                out[s.output] = Evaluated(
                    None, f"onnx.reference cannot evaluate it: {first_line(exc)[:200]}")
    for name, value in out.items():
        if isinstance(value, np.ndarray) and not _has_elem(value):
            out[name] = Evaluated(None, f"onnx.reference gave dtype {value.dtype}")
    return out


def _has_elem(value: np.ndarray) -> bool:
    try:
        helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def _runtime(batch: list[Subgraph], references: dict, versions: tuple,
             ) -> dict[str, np.ndarray | Evaluated]:
    """ONNX Runtime's value of each output, or why ORT cannot give it (a crash named)."""
    from bnfold.verification.engines import Crashed

    types = {s.output: helper.np_dtype_to_tensor_dtype(references[s.output].dtype) for s in batch}
    fed = _fed(batch)
    try:
        return dict(_run_ort(_tiny_model(batch, *versions, types, fed=fed.keys()), fed,
                             {s.output: references[s.output] for s in batch}))
    except Crashed as exc:
        if len(batch) == 1:
            return {batch[0].output: Evaluated(
                None, f"ONNX Runtime crashed evaluating it ({exc.how}); not treated as constant")}
    except Exception as exc:  # noqa: BLE001 - no kernel, unsupported opset or IR
        if len(batch) == 1:
            return {batch[0].output: Evaluated(
                None, f"ONNX Runtime cannot evaluate it: {first_line(exc)[:200]}")}
    out: dict[str, np.ndarray | Evaluated] = {}
    for s in batch:
        out.update(_runtime([s], references, versions))
    return out


def _run_ort(model: onnx.ModelProto, fed: dict[str, np.ndarray],
             expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` on ORT's CPU provider, in the shared child, once. ``fed``: its
    inputs (the leaves); an output whose bytes equal its ``expected`` value (onnx.reference's)
    is not sent back: the expected array stands for it (most constants are exact: a Transpose,
    a Cast). Both go in a shared file the child maps when large, pickled with the command when
    small (a file costs more than a few KB of pipe)."""
    from bnfold.verification.shared import SharedArrays
    from bnfold.verification.shared_child import shared_process

    same = {n: np.asarray(v) for n, v in expected.items() if _mappable(np.asarray(v))}
    with ExitStack() as files:
        fixed, sent = fed, same  # small: pickled with the command
        if sum(v.nbytes for v in [*fed.values(), *same.values()]) >= _SHARED_BYTES:
            inputs, answers = (files.enter_context(SharedArrays()) for _ in range(2))
            for name, value in fed.items():
                inputs.add(name, value)
            for name, value in same.items():
                answers.add(name, value)
            fixed, sent = inputs.spec(), answers.spec()
        _, [out] = shared_process().send(
            "a constant subgraph", "once", model.SerializeToString(), ["CPUExecutionProvider"],
            "disabled", fixed, [{}], ("same", sent)).get()
    return {n: same[n] if v is None else v for n, v in out.items()}


def _fed(members: Sequence[Subgraph]) -> dict[str, np.ndarray]:
    """The members' leaves that go in as inputs: those of a plain dtype (``_mappable``)."""
    leaves = {n: np.asarray(v) for s in members for n, v in s.leaves.items()}
    return {n: v for n, v in leaves.items() if _mappable(v)}


def _mappable(value: np.ndarray) -> bool:
    """A plain numpy dtype (bool, ints, IEEE floats) that a shared file holds by its name;
    bfloat16, float8 and strings go into the model instead."""
    return value.dtype.kind in "biuf" and np.dtype(value.dtype.str) == value.dtype


def _tiny_model(members: Sequence[Subgraph], opset_imports: Sequence[onnx.OperatorSetIdProto],
                ir_version: int, elem_types: dict[str, int] | None,
                fed: Collection[str] = ()) -> onnx.ModelProto:
    """The members as one model: leaves in ``fed`` are its inputs (fed at run time), the
    others its initializers."""
    leaves: dict[str, np.ndarray] = {}
    for s in members:
        leaves.update(s.leaves)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in leaves.items() if n not in fed]
    inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    if ir_version >= 4:  # initializers are not graph inputs from IR 4 on
        inputs = []
    inputs += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
        np.asarray(leaves[n]).dtype), list(np.shape(leaves[n]))) for n in leaves if n in fed]
    outputs = [helper.make_tensor_value_info(
        s.output, (elem_types or {}).get(s.output, onnx.TensorProto.UNDEFINED), None)
        for s in members]
    graph = helper.make_graph(_ordered(members), "bnfold_const", inputs, outputs, inits)
    for node in graph.node:  # only ai.onnx ops are evaluated: spell their domain one way
        node.domain = ""
    imports = list(opset_imports)
    default = [i.version for i in imports if i.domain in ("", "ai.onnx")]
    imports = [i for i in imports if i.domain not in ("", "ai.onnx")]
    imports += [helper.make_opsetid("", default[0])] if default else []
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    return model


def _ordered(members: Sequence[Subgraph]) -> list[onnx.NodeProto]:
    """The members' nodes, each once, in the order first listed. That order is topological:
    a member holding a node holds (before it) the nodes making its inputs, and ``_batches``
    keeps a name computed in one member from being a leaf in another."""
    return list({id(n): n for s in members for n in s.nodes}.values())


def _disagreement(reference: np.ndarray, runtime: np.ndarray) -> str:
    """Empty when the two results agree (same dtype and shape, values within a few ulps)."""
    if reference is runtime:  # ORT's bytes were the same (``_run_ort``)
        return ""
    if reference.dtype != runtime.dtype:
        return f"dtype {reference.dtype} vs {runtime.dtype}"
    if reference.shape != runtime.shape:
        return f"shape {list(reference.shape)} vs {list(runtime.shape)}"
    if reference.tobytes() == runtime.tobytes():  # the usual case (a Transpose, a Cast): exact
        return ""
    if reference.dtype.kind != "f":
        same = np.array_equal(reference, runtime)
        return "" if same else f"{int(np.count_nonzero(reference != runtime))} values differ"
    a, b = reference.astype(np.float64), runtime.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    finfo = np.finfo(reference.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        tol = _ULPS * finfo.eps * np.maximum(np.abs(a), np.abs(b)) + finfo.smallest_subnormal
        close = (a == b) | both_nan | (np.abs(a - b) <= tol)
    if close.all():
        return ""
    worst = int(np.argmax(np.where(close, 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))))
    return (f"{int(np.count_nonzero(~close))} values differ, e.g. {a.flat[worst]:.9g} vs "
            f"{b.flat[worst]:.9g}")
