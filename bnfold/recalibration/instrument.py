"""The measurement copy of a model: every site of every unit made observable from outside.

The copy is only run, never written out as a result. Model-local functions holding a BN are
inlined (``onnx.inliner``), so each call becomes a site of the BN in its body; each BN node is
renamed to a tag naming its unit first, and the inliner keeps the tag in every copy's name.
Every site then reads its unit's statistics from main-graph inputs, fed on each pass with the
statistics recalibrated so far. A site in the main graph exposes its input as an output (its
moments are computed in float64 outside ONNX Runtime). A site inside an If/Loop/Scan body
computes, per channel in float64, the element count and the sums of ``x - K`` and
``(x - K)**2`` (``K``: the unit's old mean, a shift that keeps the sums exact to rounding), and
carries them out: as an extra If output (zeros from the branch not taken), as an extra
loop-carried sum of a Loop or a Scan (zeros when no iteration runs), and so on outwards to a
main-graph output. Every execution of the body is thereby counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputError, first_line
from bnfold.graph.index import attr, referenced_names, subgraphs
from bnfold.io.model_io import default_opset
from bnfold.recalibration.levels import unit_levels
from bnfold.recalibration.stats import ChannelMoments
from bnfold.recalibration.units import Unit, is_bn, walk_bns

_TAG = re.compile(r"__bnfold_unit_(\d+)__")
DOUBLE = TensorProto.DOUBLE


def stat_inputs(k: int) -> tuple[str, str]:
    """The main-graph inputs unit ``k``'s sites read their running mean and variance from."""
    return f"__bnfold_unit_{k}_mean", f"__bnfold_unit_{k}_var"


@dataclass
class Measurement:
    """The copy to run, and where each unit's sites can be read in its outputs."""

    model: onnx.ModelProto
    levels: dict[int, int]
    exposed: dict[int, list[str]] = field(default_factory=dict)   # main-graph sites: BN input
    routed: dict[int, list[str]] = field(default_factory=dict)    # nested sites: [3, C] sums
    shift: dict[int, np.ndarray] = field(default_factory=dict)    # K per unit, float64
    unreachable: dict[int, str] = field(default_factory=dict)     # unit -> why not measurable

    def outputs(self, k: int) -> list[str]:
        return self.exposed.get(k, []) + self.routed.get(k, [])

    def moments(self, k: int, values: dict[str, np.ndarray]) -> ChannelMoments:
        """Unit ``k``'s moments over all its sites in one run (count 0 when none ran)."""
        total = ChannelMoments(0, np.zeros_like(self.shift[k]), np.zeros_like(self.shift[k]))
        for name in self.exposed.get(k, []):
            total = total.merge(ChannelMoments.of_batch(values[name], axis=1))
        for name in self.routed.get(k, []):
            sums = np.asarray(values[name], dtype=np.float64)
            n = float(sums[0, 0]) if sums.shape[1] else 0.0
            if n > 0:
                s, q = sums[1], sums[2]
                part = ChannelMoments(int(round(n)), self.shift[k] + s / n,
                                      np.maximum(q - s * s / n, 0.0))
                total = total.merge(part)
        return total


def build(model: onnx.ModelProto, units: list[Unit],
          dtypes: dict[str, int] | None = None) -> Measurement:
    """The measurement copy of ``model`` (whose BNs are ``units``, in ``walk_bns`` order)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for k, (node, _, _) in enumerate(walk_bns(copy)):
        if units[k].skipped is None:
            node.name = f"__bnfold_unit_{k}__"
    if any(u.in_function and u.skipped is None for u in units):
        from onnx.inliner import inline_local_functions

        try:
            copy = inline_local_functions(copy)
        except Exception as exc:  # noqa: BLE001 - any inliner failure is one clear error
            raise InputError(f"cannot inline the model-local functions to measure the BNs in "
                             f"them: {first_line(exc)}") from None
    m = Measurement(copy, {})
    for k, unit in enumerate(units):
        if unit.skipped is None:
            old_mean, old_var = unit.old()
            m.shift[k] = old_mean.astype(np.float64)
            for name, value in zip(stat_inputs(k), (old_mean, old_var)):
                copy.graph.input.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
    _rewire(copy.graph)
    read = referenced_names(copy.graph) | {i.name for i in copy.graph.input}
    unread = [t for t in copy.graph.initializer if t.name not in read]
    for t in unread:
        copy.graph.initializer.remove(t)
    m.levels = unit_levels(copy.graph, _unit_of)
    main_sites = [n for n in copy.graph.node if _unit_of(n) is not None]
    if main_sites:
        if dtypes is None:
            from bnfold.graph.index import value_infos

            dtypes = value_infos(copy).get((), ({}, {}))[1]
        have = {o.name for o in copy.graph.output}
        for node in main_sites:
            k, x = _unit_of(node), node.input[0]
            m.exposed.setdefault(k, []).append(x)
            if x not in have:
                have.add(x)
                scale_type = units[k].mean.data_type if units[k].mean is not None else TensorProto.FLOAT
                copy.graph.output.append(helper.make_tensor_value_info(
                    x, dtypes.get(x, scale_type), None))
    router = _Router(m, default_opset(copy) or 1)
    for k, name in router.route(copy.graph):
        m.routed.setdefault(k, []).append(name)
        copy.graph.output.append(helper.make_tensor_value_info(name, DOUBLE, [3, len(m.shift[k])]))
    return m


def _unit_of(node: onnx.NodeProto) -> int | None:
    if not is_bn(node):
        return None
    tag = _TAG.search(node.name)
    return int(tag.group(1)) if tag else None


def _rewire(graph: onnx.GraphProto) -> None:
    """Point every site's statistics at its unit's main-graph inputs (outer-scope names)."""
    for node in graph.node:
        k = _unit_of(node)
        if k is not None:
            node.input[3], node.input[4] = stat_inputs(k)
        for _, sub in subgraphs(node):
            _rewire(sub)


class _Router:
    """Adds the float64 sums of every nested site and carries them out of each body."""

    def __init__(self, m: Measurement, opset: int) -> None:
        self.m, self.opset, self.count = m, opset, 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"__bnfold_{hint}_{self.count}"

    def route(self, graph: onnx.GraphProto) -> list[tuple[int, str]]:
        """(unit, value of ``graph``) for every site inside the bodies of ``graph``'s nodes."""
        found: list[tuple[int, str]] = []
        for node in list(graph.node):
            bodies = list(subgraphs(node))
            if not bodies:
                continue
            inner = {name: self._body(sub) for name, sub in bodies}
            if not any(inner.values()):
                continue
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            if op == "If":
                found += self._if(node, inner)
            elif op in ("Loop", "Scan") and not (op == "Scan" and self.opset < 9):
                found += self._carry(graph, node, op, inner["body"])
            else:
                for sites in inner.values():
                    for k, _ in sites:
                        self.m.unreachable[k] = (f"runs inside a {op} subgraph (opset "
                                                 f"{self.opset}); bnfold carries statistics out "
                                                 "of If, Loop (and Scan from opset 9) bodies only")
        return found

    def _body(self, sub: onnx.GraphProto) -> list[tuple[int, str]]:
        sites = [(k, self._sums(sub, node, k)) for node in list(sub.node)
                 if (k := _unit_of(node)) is not None]
        return sites + self.route(sub)

    def _zeros(self, k: int) -> onnx.NodeProto:
        name = self.fresh("zeros")
        value = numpy_helper.from_array(np.zeros((3, len(self.m.shift[k]))))
        return helper.make_node("Constant", [], [name], value=value, name=name)

    def _info(self, name: str, k: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, DOUBLE, [3, len(self.m.shift[k])])

    def _if(self, node: onnx.NodeProto, inner: dict[str, list[tuple[int, str]]]) -> list[tuple[int, str]]:
        branches = {name: g for name, g in subgraphs(node)}
        found = []
        for taken_name, sites in inner.items():
            for k, value in sites:
                for name, branch in branches.items():
                    if name == taken_name:
                        branch.output.append(self._info(value, k))
                    else:
                        zeros = self._zeros(k)
                        branch.node.append(zeros)
                        branch.output.append(self._info(zeros.output[0], k))
                out = self.fresh("if_sums")
                node.output.append(out)
                found.append((k, out))
        return found

    def _carry(self, graph: onnx.GraphProto, node: onnx.NodeProto, op: str,
               sites: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Each site's sums become a new loop-carried value: zeros in, + this iteration's."""
        body = next(g for name, g in subgraphs(node) if name == "body")
        states = len(node.input) - 2 if op == "Loop" else \
            len(node.input) - int(attr(node, "num_scan_inputs"))
        found = []
        for j, (k, value) in enumerate(sites):
            zeros = self._zeros(k)
            graph.node.insert(0, zeros)
            acc_in, acc_out, out = self.fresh("sums_in"), self.fresh("sums_acc"), self.fresh("sums")
            body.node.append(helper.make_node("Add", [acc_in, value], [acc_out], name=acc_out))
            if op == "Loop":
                node.input.append(zeros.output[0])
                body.input.append(self._info(acc_in, k))
                body.output.insert(1 + states + j, self._info(acc_out, k))
                node.output.insert(states + j, out)
            else:
                node.input.insert(states + j, zeros.output[0])
                body.input.insert(states + j, self._info(acc_in, k))
                body.output.insert(states + j, self._info(acc_out, k))
                node.output.insert(states + j, out)
            found.append((k, out))
        return found

    def _sums(self, sub: onnx.GraphProto, bn: onnx.NodeProto, k: int) -> str:
        """[3, C] float64: count, sum(x - K), sum((x - K)^2) per channel of the BN's input."""
        c = len(self.m.shift[k])
        p = self.fresh(f"u{k}")

        def const(suffix: str, value: np.ndarray) -> str:
            sub.node.append(helper.make_node("Constant", [], [p + suffix], name=p + suffix,
                                             value=numpy_helper.from_array(value)))
            return p + suffix

        def node(op: str, inputs: list[str], suffix: str, **attrs: object) -> str:
            sub.node.append(helper.make_node(op, inputs, [p + suffix], name=p + suffix, **attrs))
            return p + suffix

        row = const("_row", np.array([1, c], np.int64))
        x = node("Cast", [bn.input[0]], "_x", to=DOUBLE)
        x3 = node("Reshape", [x, const("_3d", np.array([0, c, -1], np.int64))], "_x3")
        d = node("Sub", [x3, const("_k", self.m.shift[k].reshape(1, c, 1))], "_d")
        sums = [node("Reshape", [self._reduce(node, const, op, d, suffix), row], suffix + "_row")
                for op, suffix in (("ReduceSum", "_s"), ("ReduceSumSquare", "_q"))]
        n = node("Div", [node("Cast", [node("Size", [bn.input[0]], "_size")], "_size64", to=DOUBLE),
                         const("_c", np.array(float(c)))], "_n")
        count = node("Expand", [n, row], "_count")
        return node("Concat", [count, *sums], "_sums", axis=0)

    def _reduce(self, node, const, op: str, d: str, suffix: str) -> str:  # noqa: ANN001
        axes_as_input = self.opset >= (13 if op == "ReduceSum" else 18)
        if axes_as_input:
            return node(op, [d, const(suffix + "_axes", np.array([0, 2], np.int64))], suffix,
                        keepdims=1)
        return node(op, [d], suffix, axes=[0, 2], keepdims=1)
