"""Every BatchNormalization of a model, where it lives, and where its running statistics are stored.

A *unit* is one BN node as stored: in the main graph, in an If/Loop/Scan body (at any depth), or
in the body of a model-local function (also inside subgraphs of it). Each unit gets one set of
new statistics, written back where its old ones are stored:

* main graph: an initializer of its own (Constant nodes become initializers; a tensor another
  node also reads is copied first, so only the BN changes);
* a subgraph: the initializer or Constant it reads, in its own graph or an enclosing one; a
  tensor another node also reads is first copied into a Constant of the BN's own graph;
* a function body: the Constant node in the body (copied first when another node reads it).
  One body serves every call, so the statistics are pooled over every call. Statistics that
  reach the body as a function input or through an attribute of the call are set by each
  caller: the unit is reported as skipped and left unchanged.

Statistics that are main-graph inputs or computed at run time are refused (``InputError``):
there is no stored statistic to recalibrate.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.errors import InputError
from bnfold.graph.index import referenced_names, subgraphs, walk_graphs

Scope = Union[onnx.GraphProto, onnx.FunctionProto]
ROLES = ((3, "running mean"), (4, "running variance"))


def is_bn(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")


def label(node: onnx.NodeProto) -> str:
    return node.name or f"<BatchNormalization -> {node.output[0]}>"


@dataclass
class Unit:
    """One BN node as stored, the graph path it lives in, and its stored statistics (or why
    it cannot be recalibrated)."""

    node: onnx.NodeProto
    graph: str
    chain: list[Scope]                       # its graph, then each enclosing one, innermost first
    mean: onnx.TensorProto | None = None     # the stored running mean (initializer or Constant value)
    var: onnx.TensorProto | None = None
    skipped: str | None = None

    @property
    def label(self) -> str:
        return label(self.node)

    @property
    def in_function(self) -> bool:
        return self.graph.startswith("function:")

    def old(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.mean is not None and self.var is not None
        return numpy_helper.to_array(self.mean), numpy_helper.to_array(self.var)

    def write(self, mean: np.ndarray, var: np.ndarray) -> None:
        """Replace the stored statistics, keeping each tensor's name and dtype."""
        assert self.mean is not None and self.var is not None
        for slot, value in ((self.mean, mean), (self.var, var)):
            dtype = numpy_helper.to_array(slot).dtype
            slot.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), slot.name))


def walk_bns(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str, list[Scope]]]:
    """(BN, graph path, scope chain) for every BN: main graph and its subgraphs, then each
    function body and its subgraphs, in a fixed order (the measurement copy relies on it)."""
    yield from _walk(model.graph, "main", [model.graph])
    for f in model.functions:
        yield from _walk(f, f"function:{f.domain}.{f.name}", [f])


def _walk(scope: Scope, path: str, chain: list[Scope]) -> Iterator[tuple[onnx.NodeProto, str, list[Scope]]]:
    for node in scope.node:
        if is_bn(node):
            yield node, path, chain
        for name, sub in subgraphs(node):
            yield from _walk(sub, f"{path}/{node.name or node.op_type}.{name}", [sub, *chain])


def find_units(model: onnx.ModelProto) -> list[Unit]:
    """Every BN of ``model`` with its stored statistics, made its own (edits ``model``)."""
    main_bns = [n for n in model.graph.node if is_bn(n)]
    _main_stat_initializers(model, main_bns)
    units = [Unit(node, path, list(chain)) for node, path, chain in walk_bns(model)]
    graph_reads = _read_counts(model.graph)
    function_reads = {id(f): _read_counts(f) for f in model.functions}
    taken = _all_names(model)
    inits = {t.name: t for t in model.graph.initializer}
    for unit in units:
        if unit.graph == "main":
            unit.mean, unit.var = inits[unit.node.input[3]], inits[unit.node.input[4]]
            continue
        reads = function_reads[id(unit.chain[-1])] if unit.in_function else graph_reads
        found = [_nested_slot(model, unit, slot, role, reads, taken) for slot, role in ROLES]
        why = next((f for f in found if isinstance(f, str)), None)
        if why is not None:
            unit.skipped = why
        else:
            unit.mean, unit.var = found  # type: ignore[assignment]
    return units


def _nested_slot(model: onnx.ModelProto, unit: Unit, slot: int, role: str, reads: Counter,
                 taken: set[str]) -> onnx.TensorProto | str:
    """The stored tensor behind a nested BN's statistic (copied when shared), or why none."""
    bn = unit.node
    name = bn.input[slot] if len(bn.input) > slot else ""
    if not name:
        raise InputError(f"BN {unit.label!r} ({unit.graph}) has no {role} input")
    tensor = _stored(model, unit, name, role)
    if isinstance(tensor, str):
        return tensor
    if reads[name] <= 1:
        return tensor
    fresh = next(f"{name}__recalibrated_{i}" for i in range(1, 1 << 30)
                 if f"{name}__recalibrated_{i}" not in taken)
    taken.add(fresh)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    unit.chain[0].node.insert(0, helper.make_node("Constant", [], [fresh], value=copy,
                                                  name=fresh))
    reads[name] -= 1
    bn.input[slot] = fresh
    return unit.chain[0].node[0].attribute[0].t


def _stored(model: onnx.ModelProto, unit: Unit, name: str, role: str) -> onnx.TensorProto | str:
    """Look ``name`` up from the BN's graph outwards: an initializer or Constant value, or a
    skip reason (function input or attribute); run-time values are refused."""
    where = f"BN {unit.label!r} ({unit.graph})"
    for depth, scope in enumerate(unit.chain):
        is_main = not unit.in_function and depth == len(unit.chain) - 1
        inputs = list(scope.input) if isinstance(scope, onnx.FunctionProto) else \
            [i.name for i in scope.input]
        inits = {t.name: t for t in scope.initializer} if isinstance(scope, onnx.GraphProto) else {}
        if is_main and name in inputs and (model.ir_version >= 4 or name not in inits):
            raise InputError(f"{where}: its {role} {name!r} is a graph input, so it is set at run "
                             "time; there is no stored statistic to recalibrate")
        if name in inits:
            return inits[name]
        if name in inputs:
            if isinstance(scope, onnx.FunctionProto):
                return (f"its {role} is input {name!r} of function {scope.domain}.{scope.name}: "
                        "each call passes its own tensor, so there is no one stored statistic; "
                        "left unchanged")
            raise InputError(f"{where}: its {role} {name!r} is an input of its subgraph, computed "
                             "at run time; only stored statistics can be recalibrated")
        producer = next((n for n in scope.node if name in n.output), None)
        if producer is None:
            continue
        if producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
            raise InputError(f"{where}: its {role} {name!r} is computed at run time; only stored "
                             "statistics (initializers, Constant nodes) can be recalibrated")
        value = producer.attribute[0] if len(producer.attribute) == 1 else None
        if value is not None and value.ref_attr_name:
            return (f"its {role} comes from attribute {value.ref_attr_name!r} of each call of the "
                    "function: there is no one stored statistic; left unchanged")
        if value is None or value.name != "value":
            raise InputError(f"{where}: {role} {name!r} is a Constant without a tensor value")
        return value.t
    raise InputError(f"{where}: its {role} {name!r} is not defined in any enclosing graph")


def _read_counts(scope: Scope) -> Counter:
    """How many node inputs and graph outputs read each name in ``scope`` and its subgraphs."""
    reads: Counter = Counter()
    roots = [scope] if isinstance(scope, onnx.GraphProto) else \
        [sub for node in scope.node for _, sub in subgraphs(node)]
    if isinstance(scope, onnx.FunctionProto):
        reads.update(n for node in scope.node for n in node.input if n)
        reads.update(scope.output)
    for root in roots:
        for _, g in walk_graphs(root):
            reads.update(n for node in g.node for n in node.input if n)
            reads.update(o.name for o in g.output)
    return reads


def _all_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for _, g in walk_graphs(model.graph):
        names |= {t.name for t in g.initializer} | {i.name for i in g.input}
        names |= {o for n in g.node for o in n.output}
    for f in model.functions:
        names |= set(f.input) | {o for n in f.node for o in n.output}
        for node in f.node:
            for _, sub in subgraphs(node):
                names |= referenced_names(sub) | {o for _, g in walk_graphs(sub) for n in g.node
                                                   for o in n.output}
    return names


def _main_stat_initializers(model: onnx.ModelProto, bns: list[onnx.NodeProto]) -> None:
    """Make every main-graph BN's mean and variance an initializer of its own (Constant nodes
    become initializers; a tensor shared with another reader is copied), or refuse."""
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
        for slot, role in ROLES:
            name = bn.input[slot] if len(bn.input) > slot else ""
            if not name:
                raise InputError(f"BN {label(bn)!r} has no {role} input")
            if name in inputs and (model.ir_version >= 4 or name not in inits):
                raise InputError(f"BN {label(bn)!r}: its {role} {name!r} is a graph input, so it "
                                 "is set at run time; there is no stored statistic to recalibrate")
            if name in constants:
                value = numpy_helper.to_array(constants[name].attribute[0].t) \
                    if constants[name].attribute[0].name == "value" else None
                if value is None:
                    raise InputError(f"BN {label(bn)!r}: {role} {name!r} is a Constant without "
                                     "a tensor value")
                graph.node.remove(constants[name])
                del constants[name]
                inits[name] = numpy_helper.from_array(value, name)
                graph.initializer.append(inits[name])
            elif name not in inits:
                raise InputError(f"BN {label(bn)!r}: its {role} {name!r} is computed at run time; "
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
