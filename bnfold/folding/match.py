"""Match one seed (a BN, or a decomposed BN's constant Mul/Add/Sub) to a fold plan, or say why
it stays. The plan is applied by ``rules.carry.apply``; ``inspect`` runs the same matching.
"""
from __future__ import annotations

import numpy as np
import onnx

from bnfold.folding.bn import BnAffine, Refusal, label, read_bn
from bnfold.folding.math import ElementAffine
from bnfold.folding.report import FoldRecord, Reason
from bnfold.folding.rewrite import FoldOverflow
from bnfold.folding.rules import carry, commute
from bnfold.folding.rules.carry import Plan
from bnfold.folding.rules.common import weight
from bnfold.graph.index import GraphIndex

DECOMPOSED = ("Mul", "Add", "Sub")


def _guess_rank(g: GraphIndex, node: onnx.NodeProto | None, depth: int = 0) -> int | None:
    """The output rank of a neighbour when inference has none (a function body): a conv's
    weight rank, 2 for Gemm, or (through one bias Add or Identity) its producer's."""
    if node is None:
        return None
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        w = g.shape(node.input[1])
        if w is None:
            value = g.const(node.input[1])
            w = None if value is None else list(value.shape)
        return len(w) if w else None
    if node.op_type == "Gemm":
        return 2
    if node.op_type in ("Add", "Identity") and depth == 0:
        for name in node.input:
            rank = _guess_rank(g, g.producer(name), 1)
            if rank:
                return rank
    return None


def _bn_map(g: GraphIndex, bn: BnAffine, neighbour: onnx.NodeProto | None) -> carry.MapOf:
    """The BN's map over its input; an unknown channel dim is the BN's channel count (a BN
    only runs on an input with that many channels), other unknown dims take the fill."""
    def of(fill: commute.Fill) -> ElementAffine | Refusal:
        shape = commute.dims(g, bn.x, fill)
        if shape is not None and len(shape) >= 2 and g.shape(bn.x)[1] is None:
            shape = (shape[0], bn.channels) + shape[2:]
        if shape is None:
            rank = _guess_rank(g, neighbour)
            if rank is None and neighbour is not None and neighbour.op_type in (
                    "Conv", "ConvTranspose", "Gemm", "MatMul"):
                w = weight(g, neighbour, 1, "weight")  # a weight that is no constant says so
                if isinstance(w, Refusal):
                    return w
            if rank is None and neighbour is not None and neighbour.op_type == "MatMul":
                return Refusal(Reason.CHANNEL_MISMATCH, f"MatMul ranks A="
                               f"{g.rank(neighbour.input[0])}: the BN channel axis may not be "
                               "its output columns")
            if rank is None:
                return Refusal(Reason.CHANNEL_MISMATCH, "the BN input's rank is unknown",
                               specific=False)
            shape = (fill.value, bn.channels) + (fill.value,) * (rank - 2)
        if len(shape) < 2 or shape[1] != bn.channels:
            return Refusal(Reason.CHANNEL_MISMATCH, f"BN input {list(shape)}, {bn.channels} "
                                                    "channels")
        return ElementAffine.per_channel(shape, bn.scale, bn.shift)
    return of


def _matches(g: GraphIndex, seed: onnx.NodeProto, data_index: int, maps: tuple[carry.MapOf,
             carry.MapOf], may_insert: bool) -> Plan | list[tuple[str, Refusal]]:
    refusals: list[tuple[str, Refusal]] = []
    for direction, match, emap_of in (("backward", carry.match_backward, maps[0]),
                                      ("forward", carry.match_forward, maps[1])):
        try:
            found = match(g, seed, data_index, emap_of, may_insert)
        except FoldOverflow as exc:
            found = Refusal(Reason.OVERFLOW, str(exc))
        if isinstance(found, Plan):
            return found
        refusals.append((direction, found))
    return refusals


def match_bn(g: GraphIndex, node: onnx.NodeProto, notes: list[str]) -> Plan | FoldRecord:
    """The plan that folds BN ``node``, or the record that says why it stays."""
    bn = read_bn(g, node)
    if isinstance(bn, Refusal):
        return FoldRecord(bn=label(node), graph="", reason=bn.reason, detail=bn.detail,
                          bn_output=node.output[0])
    readers = g.consumers(bn.y)
    maps = (_bn_map(g, bn, g.producer(bn.x)),
            _bn_map(g, bn, readers[0] if len(readers) == 1 else None))
    found = _matches(g, node, 0, maps, True)
    if isinstance(found, Plan):
        return found
    for _, r in found:
        if r.reason is Reason.OVERFLOW:
            notes.append(f"{label(node)}: kept, {r.detail}")
    return _explain(g, node, bn, found)


def match_decomposed(g: GraphIndex, node: onnx.NodeProto) -> Plan | None:
    """The plan that folds a Mul/Add/Sub by a constant into a neighbouring layer, or None.

    An Add is never folded into a MatMul (MatMul + Add is how a Linear is written; a rank-3
    one would only get its Add back), so only a Mul may have a bias Add written after one.
    """
    found = commute.constant_operand(g, node) if node.op_type in DECOMPOSED else None
    if found is None:
        return None
    data, c = found
    data_name = node.input[data]

    def of(fill: commute.Fill) -> ElementAffine | Refusal:
        shape = commute.dims(g, data_name, fill)
        if shape is None or c.ndim > len(shape) or np.broadcast_shapes(c.shape, shape) != shape:
            return Refusal(Reason.CHANNEL_MISMATCH, "shape unknown or broadcast", specific=False)
        if node.op_type == "Mul":
            return ElementAffine(shape, c, np.zeros(()))
        return ElementAffine(shape, np.ones(()), -c if node.op_type == "Sub" else c)

    plan = _matches(g, node, data, (of, of), node.op_type == "Mul")
    if not isinstance(plan, Plan):
        return None
    if node.op_type != "Mul" and any(a.op_type == "MatMul" for a in plan.absorbers):
        return None
    return plan


def record_of(plan: Plan, path: str) -> FoldRecord:
    """The folded record of an applied ``plan`` (node names as the original graph has them)."""
    seed = plan.seed
    return FoldRecord(bn=label(seed), graph=path, target=plan.target, direction=plan.direction,
                      bn_output=seed.output[0], op=seed.op_type,
                      via=tuple(label(n) for n in plan.via + [n for n, _ in plan.removed]),
                      targets=tuple(plan.target_labels),
                      region_nodes=tuple(plan.region_outputs()),
                      region_inputs=tuple(dict.fromkeys(plan.region_inputs)))


def _explain(g: GraphIndex, node: onnx.NodeProto, bn: BnAffine,
             refusals: list[tuple[str, Refusal]]) -> FoldRecord:
    specific = [(d, r) for d, r in refusals if r.specific]
    if specific:
        reason = specific[0][1].reason
        detail = "; ".join(f"{d}: {r.detail or r.reason.value}" for d, r in specific)
    else:
        reason, detail = Reason.NO_FOLDABLE_NEIGHBOUR, _neighbours(g, bn)
        deeper = [f"{d}: {r.detail}" for d, r in refusals if r.detail]
        if deeper:
            detail += "; " + "; ".join(deeper)
    return FoldRecord(bn=label(node), graph="", reason=reason, detail=detail, bn_output=bn.y)


def _neighbours(g: GraphIndex, bn: BnAffine) -> str:
    """Which ops sit on either side of a BN that has nothing to fold into, by op type."""
    producer = g.producer(bn.x)
    before = (f"producer is {producer.op_type} ({label(producer)})" if producer is not None
              else f"input {bn.x!r} is a graph input" if bn.x in g.inputs
              else f"input {bn.x!r} comes from an outer graph")
    readers = g.consumers(bn.y)
    kinds = sorted({n.op_type for n in readers})
    after = (f"consumer{'s are' if len(readers) > 1 else ' is'} {', '.join(kinds)}" if readers
             else "no node reads it")
    if g.is_graph_output(bn.y):
        after += " (and it is a graph output)" if readers else "; it is a graph output"
    return f"{before}, {after}; neither is a Conv, ConvTranspose, Gemm or MatMul"
