"""Validity check on a folded model: the folded model has no checker error the input lacks.

Runs on skeletons (structure without bulk tensor data), so it costs little even for large
models. The structural checker must pass whenever it passes on the input. When the input
passes the full check (strict shape inference) the folded model must pass it too. When the
input already fails it (say, one node with a bad weight), every inference error of the folded
model must be one the input has. In both cases every value the input's shape inference typed
must keep a compatible type: a fold preserves every surviving value, and a new failure that a
pre-existing one masks shows up as a lost or changed type downstream.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

import onnx

from bnfold.errors import first_line
from bnfold.graph.index import subgraphs
from bnfold.io.skeleton import CheckFailed, full_check, skeleton

_ERRORS_HEAD = "Inference error(s): "


def problem(sk: onnx.ModelProto, *, full: bool = True) -> str | None:
    """The first line of the checker's complaint about skeleton ``sk``, or None.

    ``full``: with strict shape inference; otherwise the structural checker alone.
    """
    try:
        full_check(sk, full=full)
    except CheckFailed as exc:  # only onnx's verdict: a bnfold error must not read as one
        return first_line(exc)
    return None


def check_folded(original_skeleton: onnx.ModelProto, folded: onnx.ModelProto) -> str | None:
    """None if ``folded`` has no checker error that the original lacks; else the new error."""
    sk = skeleton(folded)
    found = _dangling_binding(sk) if not _dangling_binding(original_skeleton) else None
    if found:
        return found
    found = problem(sk)  # the structural checker and strict inference: when it passes, so
    if found is not None:  # does the structural checker alone, which is then not run again
        structural = problem(sk, full=False)
        if structural and structural != problem(original_skeleton, full=False):
            return structural
        if problem(original_skeleton) is None:
            return found
        new = _new_inference_error(original_skeleton, sk)
        if new:
            return new
    return _lost_type(original_skeleton, sk)


def _dangling_binding(sk: onnx.ModelProto) -> str | None:
    """A training_info binding naming no main-graph initializer (the checker misses it)."""
    names = {t.name for t in sk.graph.initializer}
    for info in sk.training_info:
        for b in list(info.initialization_binding) + list(info.update_binding):
            if b.key not in names:
                return f"training_info binding {b.key!r} names no initializer"
    return None


def inference_errors(sk: onnx.ModelProto) -> Counter[str]:
    """Each per-node error of strict shape inference (with type checks), counted."""
    try:
        onnx.shape_inference.infer_shapes(sk, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError, and other types on odd input
        text = str(exc).strip()
        _, _, tail = text.partition(_ERRORS_HEAD)
        lines = (tail or text).splitlines()
        return Counter(line.strip() for line in lines if line.strip())
    return Counter()


def _new_inference_error(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    new = inference_errors(after) - inference_errors(before)
    return f"new shape inference error: {sorted(new)[0]}" if new else None


TypeKey = tuple[int, tuple[int | None, ...] | None]  # elem type, dims (None: no shape)


def typed_values(sk: onnx.ModelProto) -> dict[tuple, TypeKey]:
    """Non-strict inferred type of every value, keyed by (graph key, name)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, check_type=False, strict_mode=False)
    except Exception:  # best effort: an input inference cannot read types nothing
        return {}
    out: dict[tuple, TypeKey] = {}
    for key, graph in _graphs(inferred.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.elem_type:
                continue
            tt = vi.type.tensor_type
            dims = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                    if tt.HasField("shape") else None)
            out[(key, vi.name)] = (tt.elem_type, dims)
    return out


def _compatible(was: TypeKey, now: TypeKey | None) -> bool:
    if now is None or was[0] != now[0]:
        return False
    if was[1] is None:
        return True
    if now[1] is None or len(was[1]) != len(now[1]):
        return False
    return all(a is None or b is None or a == b for a, b in zip(was[1], now[1]))


def _lost_type(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    """A value both models compute whose inferred type the fold lost or changed."""
    was, now = typed_values(before), typed_values(after)
    alive = _value_names(after)
    for (key, name), t in was.items():
        if (key, name) in alive and not _compatible(t, now.get((key, name))):
            return (f"shape inference types {name!r} as {_show(now.get((key, name)))} after the "
                    f"fold, {_show(t)} before")
    return None


def _value_names(sk: onnx.ModelProto) -> set[tuple]:
    """(graph key, name) of every value a graph declares or a node computes."""
    names = set()
    for key, graph in _graphs(sk.graph):
        names.update((key, n) for node in graph.node for n in node.output if n)
        names.update((key, v.name) for v in list(graph.input) + list(graph.output))
    return names


def _graphs(graph: onnx.GraphProto, key: tuple = ()) -> Iterator[tuple[tuple, onnx.GraphProto]]:
    """Every nested graph, keyed by the path of (node's first output, attribute) steps: a key
    that survives the fold removing nodes before it (node indices do not)."""
    yield key, graph
    for node in graph.node:
        for attr_name, sub in subgraphs(node):
            step = (node.output[0] if node.output else node.name, attr_name)
            yield from _graphs(sub, key + (step,))


def _show(t: TypeKey | None) -> str:
    if t is None:
        return "unknown"
    dtype = onnx.helper.tensor_dtype_to_string(t[0]).removeprefix("TensorProto.")
    return dtype if t[1] is None else f"{dtype}{['?' if d is None else d for d in t[1]]}"
