"""training_info: tensors of the main graph that its training graphs bind or read.

``ModelProto.training_info`` holds initialization and algorithm graphs whose bindings name
initializers of the main graph (``initialization_binding``, ``update_binding``), and whose
nodes may read those initializers. A fold that rewrites or removes such a tensor would leave
a dangling binding or change what training reads, so the fold is refused (TRAINING_BINDING).
"""
from __future__ import annotations

import onnx

from bnfold.folding.bn import Refusal, fold_reach
from bnfold.folding.report import Reason
from bnfold.graph.index import _FOLDABLE_OPS, GraphIndex, referenced_names

_PASS_THROUGH = _FOLDABLE_OPS | {"Identity", "Constant", "Shape"}  # constant-making ops


def training_graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    """The initialization and algorithm graphs of every training_info entry."""
    out = []
    for info in model.training_info:
        out += [g for g in (info.initialization, info.algorithm) if g.ByteSize()]
    return out


def protected_names(model: onnx.ModelProto) -> set[str]:
    """Names a binding assigns to, and names a training graph reads from the main graph."""
    names: set[str] = set()
    for info in model.training_info:
        names.update(b.key for b in info.initialization_binding)
        names.update(b.key for b in info.update_binding)
    for graph in training_graphs(model):
        names |= referenced_names(graph)
    return names


def training_refusal(g: GraphIndex, bn: onnx.NodeProto, protected: set[str],
                     nodes: list[onnx.NodeProto] | None = None) -> Refusal | None:
    """TRAINING_BINDING when a tensor a fold of ``bn`` may touch is in ``protected``.

    Touchable: the inputs of the BN, of its producer (and an Add's other producer), of its
    consumers, and the constants they are computed from; or those of ``nodes`` (a matched
    fold's nodes) when given.
    """
    if not protected:
        return None
    nodes = fold_reach(g, bn) if nodes is None else nodes
    hit = sorted(_upstream({n for node in nodes for n in node.input if n}, g) & protected)
    if hit:
        return Refusal(Reason.TRAINING_BINDING,
                       f"training_info binds or reads {', '.join(map(repr, hit[:3]))}")
    return None


def _upstream(names: set[str], g: GraphIndex) -> set[str]:
    """``names`` and every name they are computed from through pass-through constant ops."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = g.producer(name)
        if node is not None and node.op_type in _PASS_THROUGH:
            todo += [n for n in node.input if n]
    return seen
