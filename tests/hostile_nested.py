"""Hostile kinds that combine the classes of issue 10 (tests/test_fuzz_hostile.py).

Parameter subgraphs of old opsets (Squeeze/Slice with attributes) inside If branches and
function bodies; value_info lying inside subgraphs; tensors shared between a folded and an
unfolded node (also across a subgraph boundary); BN chains (Conv -> BN -> BN, BN -> BN -> Conv);
and external data layouts of such models (Constant nodes of subgraphs stored externally too).
"""
from __future__ import annotations

import numpy as np
import onnx
from hostile import F32, OPSETS, Case, bn, bn_params, finish, start, trunk
from hostile_cases import _branch, _bool_input, _into_function, _lie
from hypothesis import strategies as st
from modelgen import Builder
from onnx import helper

OLD = [o for o in OPSETS if 9 <= o <= 12]  # Squeeze/Unsqueeze/Slice/Split read attributes


def _opset(draw, low: int = 9) -> int:
    """Half the draws in the opsets whose axes-reading ops differ from today's."""
    olds = [o for o in OLD if o >= low]
    if olds and draw(st.booleans()):
        return draw(st.sampled_from(olds))
    return draw(st.sampled_from([o for o in OPSETS if o >= low]))


@st.composite
def nested_cases(draw) -> Case:
    """Computed BN parameters of old opsets inside If branches or a function; lies inside."""
    where = draw(st.sampled_from(["if", "function", "if_in_function"]))
    s = start(draw, opset=_opset(draw), dense=False, batch=2)
    conds: list[str] = []
    if where == "function":
        trunk(draw, s, 2)
        return Case(_into_function(finish(s), s.b.opset))
    conds.append(_bool_input(s.b, "cond0") if where == "if" else "")
    if where == "if_in_function":  # a function has no bool input: cond = ReduceSum(x) > 0
        conds[0] = s.b.node("Greater", [s.b.node("ReduceSum", [s.x], keepdims=0),
                                        s.b.const(np.array(0.0))])
    outer = bn_params(draw, s.b, s.c) if draw(st.booleans()) else None
    s.x = s.b.node("If", [conds[0]], then_branch=_branch(draw, s, outer),
                   else_branch=_branch(draw, s, outer))
    model = finish(s)
    if draw(st.booleans()):
        _subgraph_lies(draw, model)
    if where == "if_in_function":
        return Case(_into_function(model, s.b.opset))
    return Case(model, conds=conds)


def _subgraph_lies(draw, model: onnx.ModelProto) -> None:
    """Declare a mutated type on a tensor inside an If branch (from the inferred model)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    pairs = [(a.g, b.g) for n, m in zip(model.graph.node, inferred.graph.node)
             for a, b in zip(n.attribute, m.attribute) if a.type == onnx.AttributeProto.GRAPH]
    graph, known = draw(st.sampled_from(pairs))
    known = {vi.name: vi for vi in known.value_info if vi.type.tensor_type.HasField("shape")}
    names = [o for n in graph.node if n.op_type != "Constant" for o in n.output
             if o in known and o not in {g.name for g in graph.output}]
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)) \
            if names else []:
        graph.value_info.append(_lie(draw, known[name]))


# --- shared tensors and BN chains --------------------------------------------------------------

@st.composite
def shared_cases(draw) -> Case:
    """A weight, bias or BN parameter read by a folded node and by one that must keep it."""
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 11])), dense=False,
              batch=2)
    b, c, x = s.b, s.c, s.x
    k = (3,) * s.dims
    w = b.const(b.weights((c, c) + k))
    bias = b.const(b.weights((c,)))
    params = bn_params(draw, b, c)
    kind = draw(st.sampled_from(["weight", "bias", "bn_params", "into_branch", "bn_input"]))
    pads = [1] * 2 * s.dims
    y = b.node("Conv", [x, w, bias], pads=pads)
    s.x = y
    bn(draw, s, params)
    if kind == "weight":  # a second Conv with the same W, no BN after it
        other = b.node("Conv", [s.x if draw(st.booleans()) else x, w], pads=pads)
    elif kind == "bias":
        other = b.node("Add", [x, b.node("Reshape", [bias, _shape(b, [1, c] + [1] * s.dims)])])
    elif kind == "bn_params":  # a second BN on the raw input shares all four parameters
        other = b.node("BatchNormalization", [x] + params)
    elif kind == "into_branch":  # the same W (and BN params) read inside an If branch
        inner = Builder(opset=b.opset, seed=draw(st.integers(0, 999)))
        inner.count = b.count
        z = inner.node("Conv", [x, w], pads=pads)
        z = inner.node("BatchNormalization", [z] + params)
        b.count = inner.count
        branch = helper.make_graph(inner.nodes, b.name("then"), [],
                                   [helper.make_tensor_value_info(z, F32, None)], inner.inits)
        xe = b.name("xe")
        ident = helper.make_graph([helper.make_node("Identity", [x], [xe])], b.name("else"), [],
                                  [helper.make_tensor_value_info(xe, F32, None)])
        other = b.node("If", [_bool_input(b, "cond0")], then_branch=branch, else_branch=ident)
    else:  # the BN's input is also a graph output: the Conv output must survive
        other = y
    s.output(other)
    if draw(st.booleans()):  # and a BN chain behind it
        bn(draw, s)
    return Case(finish(s), conds=["cond0"] if kind == "into_branch" else [])


@st.composite
def chain_bn_cases(draw) -> Case:
    """Conv/Gemm -> BN -> BN (-> BN), BN -> BN -> Conv, with Relu or a fanout between sometimes."""
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 9])))
    before = draw(st.integers(0, 2))
    for _ in range(before):
        bn(draw, s)
    trunk(draw, s, 1)
    for _ in range(draw(st.integers(2, 3))):
        bn(draw, s)
        if draw(st.integers(0, 5)) == 0:
            s.output(s.x)  # an intermediate BN output is also a graph output
    return Case(finish(s))


@st.composite
def external_cases(draw) -> Case:
    """Nested and shared-tensor models saved with external data (subgraph Constants too)."""
    from hostile_cases import LAYOUTS

    case = draw(st.one_of(nested_cases(), shared_cases()))
    case.layout = draw(st.sampled_from(LAYOUTS))
    return case


def _shape(b: Builder, dims: list[int]) -> str:
    return b.const(np.array(dims, dtype=np.int64), "i", np.dtype(np.int64))


__all__ = ["nested_cases", "shared_cases", "chain_bn_cases", "external_cases"]
