"""Carry a per-channel affine map (a BN, or a decomposed BN's Mul/Add) through commuting ops
to the nodes that absorb it: ``match_backward`` / ``match_forward`` return a ``Plan`` (every
folded value computed) or a refusal; ``apply`` edits the graph.

Backward: absorber -> commuting ops -> seed; each tensor on the way must be read only by the
next node (a ``Shape`` reader is fine: it reads no values) and be no graph output. Forward:
seed -> commuting ops -> absorber, with the same exclusivity. A Concat (backward) or Split
(forward) branches the walk; every branch must reach an absorber, or nothing folds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from bnfold.folding.bn import Refusal, label
from bnfold.folding.math import ElementAffine
from bnfold.folding.report import Reason
from bnfold.folding.rewrite import Rewriter
from bnfold.folding.rules import absorb_conv, absorb_linear, commute
from bnfold.folding.rules.common import DEFAULT_DOMAINS, declared_shapes_agree
from bnfold.folding.rules.edit import Edit
from bnfold.graph.index import GraphIndex

CONVS = ("Conv", "ConvTranspose")
LINEAR = ("Gemm", "MatMul")
_MAX_DEPTH = 64  # commuting nodes walked from one seed
MapOf = Callable[[commute.Fill], "ElementAffine | Refusal"]  # the seed's map, given the fill


@dataclass
class Plan:
    """A matched fold: the seed, the edits, and every node it reads or rewrites."""

    seed: onnx.NodeProto
    direction: str
    data_index: int                      # the seed's data input
    may_insert: bool = True              # may write a bias Add after a MatMul
    edits: list[Edit] = field(default_factory=list)
    absorbers: list[onnx.NodeProto] = field(default_factory=list)
    vectors: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    via: list[onnx.NodeProto] = field(default_factory=list)           # kept, map moved through
    removed: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)  # (node, data input)
    notes: list[str] = field(default_factory=list)
    region_inputs: list[str] = field(default_factory=list)
    memo: dict = field(default_factory=dict, repr=False)  # absorber edits, shared by both walks

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [self.seed] + self.absorbers + self.via + [n for n, _ in self.removed] + [
            e.node for e in self.edits]

    @property
    def target_labels(self) -> list[str]:
        return [label(n) for n in self.absorbers]

    @property
    def target(self) -> str:
        return ", ".join(self.target_labels)

    def region_outputs(self) -> list[str]:
        """First outputs of the nodes the fold replaced (as the original graph names them)."""
        return list(dict.fromkeys(n.output[0] for n in self.nodes))


def _miss(detail: str, deep: bool) -> Refusal:
    """No absorber: next to the seed a plain miss; deeper, the walk's end is the detail."""
    return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, detail if deep else "", specific=False)


def _exclusive(g: GraphIndex, tensor: str, reader: onnx.NodeProto, backward: bool,
               ) -> Refusal | None:
    """None when ``reader`` (and Shape nodes) alone read ``tensor`` and it is no graph output."""
    if g.is_graph_output(tensor):
        return Refusal(Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT if backward
                       else Reason.CONSUMER_NOT_EXCLUSIVE, f"{tensor!r} is a graph output")
    others = [label(n) for n in g.consumers(tensor) if n is not reader and n.op_type != "Shape"]
    if others:
        return Refusal(Reason.PRODUCER_HAS_OTHER_CONSUMERS if backward
                       else Reason.CONSUMER_NOT_EXCLUSIVE,
                       f"{tensor!r} is also read by {', '.join(others[:3])}")
    return None


def _record_vector(plan: Plan, emap: ElementAffine, axis: int) -> None:
    found = emap.along(axis)
    if found is not None:
        plan.vectors.append(found)


def _key(vectors: tuple[np.ndarray, np.ndarray] | None) -> tuple | None:
    """The exact value of a (scale, shift) pair as a dict key (None: not cacheable)."""
    if vectors is None:
        return None
    return tuple((v.shape, v.dtype.str, v.tobytes()) for v in vectors)


def _linear_key(kind: str, node: onnx.NodeProto, emap: ElementAffine,
                home: tuple[onnx.NodeProto, int] | None) -> tuple | None:
    """What a Gemm/MatMul edit depends on besides the graph: the map's rank and its vectors
    over the first and last axes (the only axes ``absorb_linear`` reads), and the bias home."""
    rank = len(emap.shape)
    first, last = _key(emap.along(0)), _key(emap.along(rank - 1))
    if first is None and last is None:
        return None
    home_key = None if home is None else (id(home[0]), home[1])
    return kind, id(node), rank, first, last, home_key


def _cached(plan: Plan, key: tuple | None, compute: Callable[[], object]) -> object:
    """An absorber's edits computed once per match: ``_matched`` walks twice (unknown dims
    set to 1, then 2) and where the same map reaches the same node its float64 weights are
    the same, so the second walk reuses them (and replays the notes they wrote). Only the
    other walk's results are reused: within one walk every absorber computes its own."""
    if key is None:
        return compute()
    if key in plan.memo and plan.memo[key][0] != id(plan):
        _, result, notes = plan.memo[key]
        plan.notes += notes
        return result
    before = len(plan.notes)
    result = compute()
    plan.memo[key] = (id(plan), result, plan.notes[before:])
    return result


def _absorb_back(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, reader: onnx.NodeProto,
                 plan: Plan) -> Refusal | None:
    if node.op_type in CONVS:
        st = emap.along(1) if len(emap.shape) >= 3 else None
        if st is None:
            return Refusal(Reason.CHANNEL_MISMATCH,
                           f"the map over {label(node)}'s output {list(emap.shape)} varies along "
                           "axes other than channel axis 1")
        edits = _cached(plan, ("conv_out", id(node), _key(st)),
                        lambda: absorb_conv.out_edit(g, node, *st, plan.notes))
        edits = edits if isinstance(edits, Refusal) else [edits]
        axis = 1
    else:
        home = None
        if node.op_type == "MatMul" and plan.removed and plan.removed[-1][0] is reader:
            home = (reader, 1 - plan.removed[-1][1])  # keep the bias Add: it holds the new bias
        edits = _cached(plan, _linear_key("linear_out", node, emap, home),
                        lambda: absorb_linear.out_edit(g, node, emap, plan.notes, home,
                                                       plan.may_insert))
        if home is not None and not isinstance(edits, Refusal):
            plan.removed.pop()
            plan.via.append(reader)
        axis = len(emap.shape) - 1
    if isinstance(edits, Refusal):
        return edits
    plan.edits += edits
    plan.absorbers.append(node)
    plan.region_inputs.append(node.input[0])
    _record_vector(plan, emap, axis)
    return None


def _back(g: GraphIndex, tensor: str, emap: ElementAffine, reader: onnx.NodeProto,
          plan: Plan, fill: commute.Fill) -> Refusal | None:
    """Walk from ``tensor`` (carrying ``emap``, read by ``reader``) to its absorbers."""
    node = g.producer(tensor)
    deep = reader is not plan.seed
    if node is None or node.domain not in DEFAULT_DOMAINS:
        return _miss(f"{tensor!r} has no producer in this graph", deep)
    if len(plan.via) + len(plan.removed) > _MAX_DEPTH:
        return _miss(f"more than {_MAX_DEPTH} commuting nodes", deep)
    if node.op_type not in CONVS + LINEAR + commute.OPS:
        return _miss(f"the map reached {label(node)} ({node.op_type}), which neither absorbs "
                     "nor passes it", deep)
    if node.op_type in CONVS + LINEAR:
        refusal = _exclusive(g, tensor, reader, True) or declared_shapes_agree(g, node)
        return refusal or _absorb_back(g, node, emap, reader, plan)
    step = commute.back_step(g, node, emap, fill)
    if isinstance(step, Refusal):
        return step if step.specific or deep else _miss("", False)
    refusal = _exclusive(g, tensor, reader, True) or declared_shapes_agree(g, node)
    if refusal:
        return refusal
    _note_step(plan, node, step)
    for i, (name, m) in enumerate(step.pairs):
        refusal = _back(g, name, m, node, plan, fill)
        if refusal and node.op_type == "Concat":
            return Refusal(refusal.reason, f"slice {i} of {label(node)} (input {name!r}) cannot "
                                           f"absorb its part: {refusal.detail}", refusal.specific)
        if refusal:
            return refusal
    return None


def _note_step(plan: Plan, node: onnx.NodeProto, step: commute.Step) -> None:
    if step.removed:
        plan.removed.append((node, list(node.input).index(step.data)))
    else:
        plan.via.append(node)


def _absorb_forward(g: GraphIndex, node: onnx.NodeProto, tensor: str, emap: ElementAffine,
                    plan: Plan) -> Refusal | None:
    if node.input[0] != tensor or tensor in node.input[1:]:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"BN output is not only the data input "
                                                     f"of {label(node)}")
    if node.op_type == "Conv":
        st = emap.along(1) if len(emap.shape) >= 3 else None
        if st is None:
            return Refusal(Reason.CHANNEL_MISMATCH,
                           f"the map over {label(node)}'s input {list(emap.shape)} varies along "
                           "axes other than channel axis 1")
        edits = _cached(plan, ("conv_in", id(node), _key(st)),
                        lambda: absorb_conv.in_edit(g, node, *st, plan.notes))
        edits = edits if isinstance(edits, Refusal) else [edits]
        axis = 1
    else:
        edits = _cached(plan, _linear_key("linear_in", node, emap, None),
                        lambda: absorb_linear.in_edit(g, node, emap, plan.notes,
                                                      plan.may_insert))
        axis = len(emap.shape) - 1
    if isinstance(edits, Refusal):
        return edits
    plan.edits += edits
    plan.absorbers.append(node)
    _record_vector(plan, emap, axis)
    return None


def _forward(g: GraphIndex, tensor: str, emap: ElementAffine, plan: Plan,
             fill: commute.Fill, depth: int) -> Refusal | None:
    """Walk from ``tensor`` (carrying ``emap``) to the nodes that absorb it."""
    readers = [n for n in g.consumers(tensor) if n.op_type != "Shape"]
    if len(readers) != 1:
        return _miss(f"{tensor!r} has {len(readers)} readers", depth > 0)
    node = readers[0]
    ops = ("Conv", "Gemm", "MatMul") + (commute.OPS if depth < _MAX_DEPTH else ())
    if node.op_type not in ops or node.domain not in DEFAULT_DOMAINS:
        return _miss(f"the map reached {label(node)} ({node.op_type}), which neither absorbs "
                     "nor passes it", depth > 0)
    if node.op_type in ("Conv", "Gemm", "MatMul"):
        refusal = declared_shapes_agree(g, node) or _exclusive(g, tensor, node, False)
        return refusal or _absorb_forward(g, node, tensor, emap, plan)
    step = commute.forward_step(g, node, emap, tensor, fill)
    if isinstance(step, Refusal):
        return step if step.specific or depth > 0 else _miss("", False)
    refusal = declared_shapes_agree(g, node) or _exclusive(g, tensor, node, False)
    if refusal:
        return refusal
    _note_step(plan, node, step)
    if node.op_type == "Concat":  # its other inputs are activations the region reads too
        plan.region_inputs += [name for name in node.input if name != tensor]
    for name, m in step.pairs:
        refusal = _forward(g, name, m, plan, fill, depth + 1)
        if refusal:
            return refusal
    return None


def _matched(walk: Callable[[Plan, commute.Fill], Refusal | None],
             plan_args: dict) -> Plan | Refusal:
    """Run ``walk`` with unknown dims set to 1, and again set to 2 when any was unknown: a
    fold must not depend on the batch size (or any dimension the model leaves open)."""
    plans = []
    for value in (1, 2):
        fill = commute.Fill(value)
        plan = Plan(**plan_args)
        refusal = walk(plan, fill)
        if refusal:
            return refusal
        plans.append(plan)
        if not fill.used:
            break
    plans[0].memo.clear()  # the plan keeps its own edits; the memo would keep them twice
    if len(plans) == 2 and not _same_vectors(*plans):
        return Refusal(Reason.CHANNEL_MISMATCH, "the map reaching the absorber depends on an "
                                                "unknown dimension (tried 1 and 2)")
    return plans[0]


def _same_vectors(a: Plan, b: Plan) -> bool:
    return len(a.vectors) == len(b.vectors) and all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
        for x, y in zip(a.vectors, b.vectors))


def match_backward(g: GraphIndex, seed: onnx.NodeProto, data_index: int,
                   emap_of: MapOf, may_insert: bool = True) -> Plan | Refusal:
    """Fold the map ``emap_of(fill)`` (on the seed's data input) into the nodes before it."""
    data = seed.input[data_index]

    def walk(plan: Plan, fill: commute.Fill) -> Refusal | None:
        emap = emap_of(fill)
        if isinstance(emap, Refusal):
            return emap
        return _back(g, data, emap, seed, plan, fill)

    return _matched(walk, {"seed": seed, "direction": "backward", "data_index": data_index,
                           "may_insert": may_insert, "memo": {}})


def match_forward(g: GraphIndex, seed: onnx.NodeProto, data_index: int,
                  emap_of: MapOf, may_insert: bool = True) -> Plan | Refusal:
    """Fold the map ``emap_of(fill)`` (on the seed's output) into the nodes after it."""

    def walk(plan: Plan, fill: commute.Fill) -> Refusal | None:
        emap = emap_of(fill)
        if isinstance(emap, Refusal):
            return emap
        plan.region_inputs.append(seed.input[data_index])
        return _forward(g, seed.output[0], emap, plan, fill, 0)

    return _matched(walk, {"seed": seed, "direction": "forward", "data_index": data_index,
                           "may_insert": may_insert, "memo": {}})


def apply(g: GraphIndex, plan: Plan, rw: Rewriter, notes: list[str]) -> None:
    """Remove the seed and the merged Add/Mul nodes, then write the absorbers' new values."""
    for node, index in [(plan.seed, plan.data_index)] + plan.removed:
        data, out = node.input[index], node.output[0]
        if plan.direction == "backward":  # the producer of ``data`` now writes ``out``
            producer = g.producer(data)
            producer.output[list(producer.output).index(data)] = out
            for reader in g.consumers(data):
                if reader is not node:  # Shape readers
                    _rename_input(reader, data, out)
            rw.drop_value_info(data)
        else:  # the readers of ``out`` read ``data``
            for reader in g.consumers(out):
                _rename_input(reader, out, data)
            rw.drop_value_info(out)
        rw.remove_node(node)
    for edit in plan.edits:
        edit.apply(g, rw)
    notes += plan.notes


def _rename_input(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new
