"""Which graph outputs of a model depend on a random op, found from the graph alone.

Verify judges a fold by comparing the folded model with the original; an output fed by an
unseeded ``RandomNormalLike`` (or Dropout in training mode, Bernoulli...) can differ run to run,
so verify runs the original again and leaves out outputs that move. On ONNX Runtime the two
sessions of one child draw in lockstep (every unseeded kernel of a process starts from the
process's seed) until the re-run puts the original one draw ahead; on onnx.reference every draw
is fresh. Either way one re-run can land within tolerance by chance while the folded run does
not (the hostile fuzz once saw verify FAIL an exact fold so); tolerance is then the wrong
yardstick, and ``explain.mark_nondeterministic`` asks of these outputs only whether the
original moved at all. Outputs no random op reaches keep the tolerance test, so an
accelerator's rounding-level run-to-run jitter never hides a wrong fold.
"""
from __future__ import annotations

import onnx

from bnfold.graph.index import referenced_names, subgraphs

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial", "Bernoulli", "Dropout"})


def random_outputs(model: onnx.ModelProto) -> frozenset[str]:
    """Names of the main graph's outputs that a random op's output reaches (through nodes,
    subgraphs reading it from the outer scope, and model-local functions holding one)."""
    functions = {(f.domain, f.name): f for f in model.functions}
    known: dict[tuple[str, str], bool] = {}

    def is_random(node: onnx.NodeProto) -> bool:
        if node.domain in ("", "ai.onnx") and node.op_type in RANDOM_OPS:
            return True
        key = (node.domain, node.op_type)
        if key in functions:
            if key not in known:
                known[key] = False  # a function calling itself adds nothing
                known[key] = any(is_random(n) for n in functions[key].node)
            return known[key]
        return any(is_random(n) for _, g in subgraphs(node) for n in g.node)

    nodes = [(set(n.input).union(*(referenced_names(g) for _, g in subgraphs(n))),
              {o for o in n.output if o}, is_random(n)) for n in model.graph.node]
    tainted: set[str] = set()
    changed = True
    while changed:  # graph order is topological in a valid model; loop in case it is not
        changed = False
        for reads, outputs, random in nodes:
            if not tainted.issuperset(outputs) and (random or reads & tainted):
                tainted |= outputs
                changed = True
    return frozenset(o.name for o in model.graph.output if o.name in tainted)
