"""Shapes and dtypes from strict shape inference, and the declarations that contradict them.

Folds are decided on inferred shapes only: a ``value_info`` that lies about a rank must not
make a broadcasting Add look per-channel. onnx shape inference seeds itself from existing
``value_info`` and output types, so it runs on a data-free copy with those cleared in every
graph; each declared shape or dtype is then compared with the inferred one.
"""
from __future__ import annotations

from typing import NamedTuple

import onnx

from bnfold.graph.index import GraphKey, walk_graphs
from bnfold.graph.shape_constants import fold_for_inference
from bnfold.io.skeleton import skeleton

Shape = list[int | None]


class GraphShapes(NamedTuple):
    """What inference found in one graph, and which declarations it contradicts."""

    shapes: dict[str, Shape]
    dtypes: dict[str, int]
    mismatches: dict[str, str]  # tensor -> "declared ..., inferred ..." (the numbers)


def infer(model: onnx.ModelProto, bare: onnx.ModelProto | None = None,
          ) -> dict[GraphKey, GraphShapes]:
    """Inferred shapes and dtypes of each graph's values, keyed by the graph's structural key.

    Per graph, because sibling subgraphs may reuse a name for different values. Strict
    inference with data propagation first; if the model trips it, the lenient pass (still
    on the cleared copy, so it never repeats a declaration) gives what it can. ``bare``: the
    model's ``skeleton`` when the caller has one (it is changed here: give a copy).
    """
    bare = skeleton(model) if bare is None else bare
    for _, graph in walk_graphs(bare.graph):
        del graph.value_info[:]
        for out in graph.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
                out.type.tensor_type.ClearField("shape")
    fold_for_inference(bare)  # computed Slice bounds / Reshape targets, readable by inference
    inferred = _run(bare)
    declared = dict(walk_graphs(model.graph))
    result: dict[GraphKey, GraphShapes] = {}
    for key, graph in walk_graphs(inferred.graph):
        shapes, dtypes = _read(list(graph.input) + list(graph.output) + list(graph.value_info))
        for t in graph.initializer:  # an initializer's own dims and dtype are the truth
            shapes[t.name], dtypes[t.name] = list(t.dims), t.data_type
        source = declared.get(key)
        mismatches = _mismatches(source, shapes, dtypes) if source is not None else {}
        result[key] = GraphShapes(shapes, dtypes, mismatches)
    return result


def _run(model: onnx.ModelProto) -> onnx.ModelProto:
    for strict in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=False,
                                                     strict_mode=strict, data_prop=strict)
        except Exception:  # rules refuse where a rank they need stays unknown
            continue
    return model


def _read(infos: list[onnx.ValueInfoProto]) -> tuple[dict[str, Shape], dict[str, int]]:
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    for vi in infos:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[vi.name] = _dims(tt.shape)
    return shapes, dtypes


def _dims(shape: onnx.TensorShapeProto) -> Shape:
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _mismatches(graph: onnx.GraphProto, shapes: dict[str, Shape],
                dtypes: dict[str, int]) -> dict[str, str]:
    """Each declared value_info, output, or initializer's input entry that inference
    contradicts: a different dtype, rank, or fixed dimension."""
    found: dict[str, str] = {}
    inits = {t.name for t in graph.initializer}
    declared = list(graph.value_info) + list(graph.output)
    declared += [vi for vi in graph.input if vi.name in inits]
    for vi in declared:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        shape = _dims(tt.shape) if tt.HasField("shape") else None
        if _contradicts(tt.elem_type, shape, dtypes.get(vi.name), shapes.get(vi.name)):
            found[vi.name] = (f"{vi.name!r}: declared {_show(tt.elem_type, shape)}, inferred "
                              f"{_show(dtypes.get(vi.name), shapes.get(vi.name))}")
    return found


def _contradicts(dtype: int, shape: Shape | None, inferred_dtype: int | None,
                 inferred: Shape | None) -> bool:
    if dtype and inferred_dtype and dtype != inferred_dtype:
        return True
    if shape is None or inferred is None:
        return False
    if len(shape) != len(inferred):
        return True
    return any(a is not None and b is not None and a != b for a, b in zip(shape, inferred))


def _show(dtype: int | None, shape: Shape | None) -> str:
    kind = onnx.TensorProto.DataType.Name(dtype) if dtype else "unknown dtype"
    dims = "unknown shape" if shape is None else "[" + ", ".join(
        "?" if d is None else str(d) for d in shape) + "]"
    return f"{kind} {dims}"
