"""The order units are measured in: a unit's level is one more than the highest level of a unit
upstream of it, so one pass over the data measures a whole level with every unit before it
already recalibrated.

Data flow is followed into If/Loop/Scan bodies (a body's outputs depend on everything it reads
and on the BNs inside it) and around loops (a Loop/Scan body's outputs feed its inputs on the
next iteration). A unit runs at several sites when it sits in a function called several times;
a unit upstream of itself (a function applied to its own output, a BN on a loop-carried value)
or units upstream of each other are measured in the same pass, with the statistics they had
before that pass feeding their own inputs.
"""
from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, MutableMapping

import onnx

from bnfold.graph.index import subgraphs

UnitOf = Callable[[onnx.NodeProto], "int | None"]


def unit_levels(graph: onnx.GraphProto, unit_of: UnitOf) -> dict[int, int]:
    """unit -> level, for every unit with a site in ``graph`` (nested bodies included)."""
    deps: dict[int, int] = {}  # unit -> bit mask of the units upstream of any of its sites
    _visit(graph, {}, unit_of, deps)
    closure = dict(deps)
    changed = True
    while changed:
        changed = False
        for k, mask in closure.items():
            grown = mask
            for j in _bits(mask):
                grown |= closure.get(j, 0)
            if grown != mask:
                closure[k], changed = grown, True
    levels: dict[int, int] = {}
    for k in sorted(closure, key=lambda u: bin(closure[u] | 1 << u).count("1")):
        before = [j for j in _bits(closure[k]) if j != k and not closure.get(j, 0) >> k & 1]
        levels[k] = 1 + max(levels[j] for j in before) if before else 0
    return levels


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _visit(graph: onnx.GraphProto, known: MutableMapping[str, int], unit_of: UnitOf,
           deps: dict[int, int]) -> None:
    """Fill ``known`` (value -> mask of the units it depends on) for ``graph``'s values."""
    for node in graph.node:
        mask = 0
        for name in node.input:
            mask |= known.get(name, 0) if name else 0
        entry = mask
        for _, sub in subgraphs(node):
            mask |= _body(sub, known, entry, unit_of, deps)
        k = unit_of(node)
        if k is not None:
            deps[k] = deps.get(k, 0) | known.get(node.input[0], 0)
            mask |= 1 << k
        for out in node.output:
            if out:
                known[out] = mask


def _body(sub: onnx.GraphProto, outer: MutableMapping[str, int], entry: int, unit_of: UnitOf,
          deps: dict[int, int]) -> int:
    """Mask of a body's outputs; its inputs get the node's inputs and, until nothing changes,
    its own outputs (a loop's next iteration)."""
    carried = entry
    while True:
        scope: MutableMapping[str, int] = ChainMap({}, outer)
        for value in sub.input:
            scope[value.name] = carried
        _visit(sub, scope, unit_of, deps)
        out = 0
        for value in sub.output:
            out |= scope.get(value.name, 0)
        if out | carried == carried:
            return out
        carried |= out
