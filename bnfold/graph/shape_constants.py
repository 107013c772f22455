"""Small integer constant subgraphs, evaluated so shape inference can read them.

onnx shape inference reads a Slice's bounds or a Reshape's target only when they are
initializers or ``Constant`` outputs; an exporter that computes them (TorchScript's
``Unsqueeze(Constant)`` per bound, ``Concat`` of those for a target) leaves every dim of the
result unknown, and every shape after it. ``fold_for_inference`` evaluates such subgraphs
(integer values, a few elements, inputs all constant) on onnx.reference and writes each
result as a ``Constant`` node, in the data-free copy that inference runs on only: the model
itself is never changed, and a fold decided on these shapes is still proven on ORT.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Ops that compute shape-like integer tensors from constants.
_OPS = frozenset({
    "Cast", "Concat", "Unsqueeze", "Squeeze", "Gather", "Slice", "Reshape", "Add", "Sub",
    "Mul", "Div", "Neg", "Identity", "Range", "Equal", "Where", "Abs", "Max", "Min",
})
_MAX_ELEMENTS = 64  # a shape, bounds or axes: a handful of values


def _small_int(t: onnx.TensorProto) -> bool:
    return (t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
            and int(np.prod(t.dims)) <= _MAX_ELEMENTS and not t.external_data)


def _leaf_values(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Small integer initializers (not overridable graph inputs) and Constant values."""
    inputs = {i.name for i in graph.input}
    found = {t.name: t for t in graph.initializer if t.name not in inputs and _small_int(t)}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            a = node.attribute[0]
            if a.name == "value" and _small_int(a.t):
                found[node.output[0]] = a.t
    return found


def fold_for_inference(model: onnx.ModelProto) -> int:
    """Replace, in ``model`` (a copy made for shape inference), each main-graph node that
    computes a small integer tensor from constants with a ``Constant`` holding its value.

    Returns how many nodes were replaced (0 when none qualifies or onnx.reference cannot
    evaluate them: inference then simply sees what it saw before).
    """
    graph = model.graph
    leaves = _leaf_values(graph)
    known = set(leaves)
    picked: list[int] = []
    for i, node in enumerate(graph.node):
        if (node.op_type in _OPS and node.domain in ("", "ai.onnx") and len(node.output) == 1
                and node.input and all(not x or x in known for x in node.input)):
            picked.append(i)
            known.add(node.output[0])
    if not picked:
        return 0
    used = {x for i in picked for x in graph.node[i].input if x in leaves}
    outputs = [graph.node[i].output[0] for i in picked]
    tiny = helper.make_model(
        helper.make_graph([graph.node[i] for i in picked], "shape_constants", [],
                          [helper.make_value_info(o, onnx.TypeProto()) for o in outputs],
                          [numpy_helper.from_array(numpy_helper.to_array(leaves[n]), n)
                           for n in sorted(used)]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(tiny).run(None, {})
    except Exception:  # an op or opset onnx.reference does not run: nothing is folded
        return 0
    count = 0
    for i, out, value in zip(picked, outputs, values):
        value = np.asarray(value)
        if value.dtype in (np.int64, np.int32) and value.size <= _MAX_ELEMENTS:
            graph.node[i].CopyFrom(helper.make_node(
                "Constant", [], [out], name=graph.node[i].name,
                value=numpy_helper.from_array(value, out)))
            count += 1
    return count
