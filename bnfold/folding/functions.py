"""Model-local functions (``ModelProto.functions``): fold inside a body as inside a graph.

A function body has no initializers: its weights are ``Constant`` nodes (folded) or function
inputs (dynamic, so kept). The body is folded as a temporary graph; the constants a fold
creates return to the body as ``Constant`` nodes. Attributes that refer to the call site's
attributes (``ref_attr_name``) have no value here, so a BN whose fold would read one is kept.
"""
from __future__ import annotations

import onnx
from onnx import helper

from bnfold.folding.bn import Refusal, fold_reach, label
from bnfold.folding.report import Reason
from bnfold.graph.index import _FOLDABLE_OPS, GraphIndex

_PASS_THROUGH = _FOLDABLE_OPS | {"Identity", "Constant", "Shape"}  # constant-making ops


def function_path(f: onnx.FunctionProto) -> str:
    """The graph path records of this function's BNs carry: ``function:domain.name``."""
    overload = f":{f.overload}" if getattr(f, "overload", "") else ""
    return f"function:{f.domain}.{f.name}{overload}"


def function_opset(f: onnx.FunctionProto, default: int) -> int:
    """The default-domain opset the body is written in (the model's when it imports none)."""
    for op in f.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return default


def as_graph(f: onnx.FunctionProto) -> onnx.GraphProto:
    """The body as a graph: untyped inputs and outputs, no initializers."""
    graph = helper.make_graph(list(f.node), f.name or "function",
                              [onnx.ValueInfoProto(name=n) for n in f.input],
                              [onnx.ValueInfoProto(name=n) for n in f.output])
    graph.value_info.extend(getattr(f, "value_info", []))
    return graph


def write_back(f: onnx.FunctionProto, graph: onnx.GraphProto) -> None:
    """Put the folded body back; initializers the fold created become Constant nodes first."""
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    del f.node[:]
    f.node.extend(constants + list(graph.node))
    if hasattr(f, "value_info"):
        del f.value_info[:]
        f.value_info.extend(graph.value_info)


def reference_refusal(g: GraphIndex, bn: onnx.NodeProto,
                      nodes: list[onnx.NodeProto] | None = None) -> Refusal | None:
    """UNSUPPORTED_NEIGHBOUR when a node a fold of ``bn`` reads has a referenced attribute.

    Looked at: the BN, its producer (and an Add's other producer), its consumers, and every
    node their constant inputs are computed from; or ``nodes`` (a matched fold's) when given.
    """
    nodes = fold_reach(g, bn) if nodes is None else nodes
    todo, seen = list(nodes), set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        refs = [a.name for a in node.attribute if a.ref_attr_name]
        if refs:
            return Refusal(Reason.UNSUPPORTED_NEIGHBOUR,
                           f"{label(node)} attribute {refs[0]!r} refers to the call site's "
                           "attribute: its value is not known inside the function")
        for name in node.input:
            p = g.producer(name) if name else None
            if p is not None and p.op_type in _PASS_THROUGH:
                todo.append(p)
    return None
