"""Hostile model kinds (issue 10), one strategy per class; each draws a ``hostile.Case``."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from hostile import F32, NEWEST, OPSETS, Case, bn, bn_params, finish, param, retype, start, trunk
from modelgen import Builder
from onnx import TensorProto, helper
from test_fuzz import State

LOCAL = "hostile.local"


@st.composite
def params_cases(draw) -> Case:
    """Conv/Gemm/MatMul + BN whose parameters are computed by opset-sensitive subgraphs."""
    s = start(draw)
    trunk(draw, s)
    return Case(finish(s))


@st.composite
def chain_cases(draw) -> Case:
    """BN parameters and layer weights behind long Identity / Add chains (300-1500 nodes)."""
    s = start(draw)
    trunk(draw, s, 1)
    length = draw(st.sampled_from([300, 1200, 1500]))
    op = draw(st.sampled_from(["Identity", "Add"]))
    params = bn_params(draw, s.b, s.c)
    which = draw(st.integers(0, 3))
    name = params[which]
    for _ in range(length if op == "Identity" else length // 3):
        name = s.b.node(op, [name] if op == "Identity" else [name, s.b.const(np.zeros(1))])
    params[which] = name
    bn(draw, s, params)
    return Case(finish(s))


# --- lying value_info -------------------------------------------------------------------------

def _rank_raising_add(s: State) -> tuple[str, list[int]]:
    """Conv (N=2, C, L) + const (1, 1, 1, 1) -> (1, 2, C, L): the BN's channels are the batch."""
    y = s.b.node("Conv", [s.x, s.b.const(s.b.weights((2, s.c, 1)))])
    y = s.b.node("Add", [y, s.b.const(np.full((1, 1, 1, 1), 0.3))])
    return y, [2, 2, s.size]  # the truth is (1, 2, 2, size)


@st.composite
def lie_cases(draw) -> Case:
    """value_info declaring a wrong rank, dims or dtype on intermediate tensors."""
    kind = draw(st.sampled_from(["rank3_matmul", "rank_raising_add", "random"]))
    opset = draw(st.sampled_from([o for o in OPSETS if o >= 9]))
    if kind == "rank3_matmul":
        # x (2, c, k) @ W (k, c) -> (2, c, c); BN over axis 1 scales rows: not a Gemm
        b = Builder(opset=opset, seed=draw(st.integers(0, 999)))
        c, k = draw(st.integers(2, 4)), draw(st.integers(1, 4))
        s = State(b, b.input("x", [2, c, k]), c, 0, 0)
        s.x, lie = b.node("MatMul", [s.x, b.const(b.weights((k, c)))]), [c, c]
    elif kind == "rank_raising_add":
        b = Builder(opset=opset, seed=draw(st.integers(0, 999)))
        c, size = draw(st.integers(1, 3)), draw(st.integers(2, 4))
        s = State(b, b.input("x", [2, c, size]), c, size, 1)
        s.x, lie = _rank_raising_add(s)
        s.c = 2
    else:
        s = start(draw, opset=opset)
        trunk(draw, s)
        lie = None
    lied_on = s.x
    bn(draw, s)
    model = finish(s)
    if lie is not None:
        model.graph.value_info.append(helper.make_tensor_value_info(lied_on, F32, lie))
    else:
        _random_lies(draw, model)
    return Case(model)


def _random_lies(draw, model: onnx.ModelProto) -> None:
    """Declare a mutated type on a few intermediate tensors (Conv/MatMul/Add outputs first)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in inferred.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    names = [o for n in model.graph.node for o in n.output
             if o in known and o not in outputs and n.op_type not in ("Constant",)]
    if not names:
        return
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
        model.graph.value_info.append(_lie(draw, known[name]))


def _lie(draw, truth: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``truth`` with a dimension dropped, added or changed, or another float dtype."""
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(truth)
    tt = vi.type.tensor_type
    how = draw(st.sampled_from(["drop_dim", "add_dim", "dim", "dtype"]))
    if how == "drop_dim" and len(tt.shape.dim) > 1:
        del tt.shape.dim[-1]
    elif how == "add_dim":
        tt.shape.dim.add().dim_value = 1
    elif how == "dim" and len(tt.shape.dim):
        d = tt.shape.dim[draw(st.integers(0, len(tt.shape.dim) - 1))]
        d.dim_value = (d.dim_value or 1) + draw(st.integers(1, 2))
    else:
        tt.elem_type = draw(st.sampled_from([TensorProto.FLOAT16, TensorProto.DOUBLE]))
    return vi


# --- branches ---------------------------------------------------------------------------------

def _branch(draw, s: State, outer_params: list[str] | None) -> onnx.GraphProto:
    """Conv(3x3, same size) + BN in a subgraph reading the outer tensor (params maybe outer)."""
    inner = State(Builder(opset=s.b.opset, seed=draw(st.integers(0, 999))), s.x, s.c, s.size,
                  s.dims)
    inner.b.count = s.b.count
    w = inner.b.const(inner.b.weights((s.c, s.c) + (3,) * s.dims))
    inner.x = inner.b.node("Conv", [s.x, w], pads=[1] * 2 * s.dims)
    if draw(st.booleans()):
        bn(draw, inner, outer_params if outer_params and draw(st.booleans()) else None)
    else:  # BN -> Conv 1x1: a forward fold inside the branch
        bn(draw, inner)
        inner.x = inner.b.node("Conv", [inner.x, inner.b.const(inner.b.weights(
            (s.c, s.c) + (1,) * s.dims))])
    s.b.count = inner.b.count
    out = helper.make_tensor_value_info(inner.x, F32, None)
    return helper.make_graph(inner.b.nodes, s.b.name("branch"), [], [out], inner.b.inits)


def _loop(draw, s: State) -> None:
    """A Loop whose body applies Conv(3x3 same) + BN to the carried state, 1-3 times."""
    body = State(Builder(opset=s.b.opset, seed=draw(st.integers(0, 999))), "state_in", s.c,
                 s.size, s.dims)
    body.b.count = s.b.count
    w = body.b.const(body.b.weights((s.c, s.c) + (3,) * s.dims, 0.3))
    body.x = body.b.node("Conv", ["state_in", w], pads=[1] * 2 * s.dims)
    bn(draw, body)
    body.b.nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    s.b.count = body.b.count
    graph = helper.make_graph(
        body.b.nodes, s.b.name("body"),
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", F32, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(body.x, F32, None)], body.b.inits)
    trips = s.b.const(np.array(draw(st.integers(1, 3)), dtype=np.int64), "m", np.dtype(np.int64))
    s.x = s.b.node("Loop", [trips, "", s.x], body=graph)


@st.composite
def branch_cases(draw) -> Case:
    """If (cond = a graph input) with Conv+BN in both branches, Loop bodies, ArgMax/TopK heads."""
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 9])), dense=False,
              batch=2)
    conds: list[str] = []
    probes: list[str] = []
    if draw(st.booleans()):
        trunk(draw, s, 1)
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["if", "if", "loop", "nothing"]))
        if kind == "if":
            conds.append(_bool_input(s.b, f"cond{len(conds)}"))
            outer = bn_params(draw, s.b, s.c) if draw(st.booleans()) else None
            s.x = s.b.node("If", [conds[-1]], then_branch=_branch(draw, s, outer),
                           else_branch=_branch(draw, s, outer))
        elif kind == "loop":
            _loop(draw, s)
    head = draw(st.sampled_from(["none", "argmax", "topk"] if s.b.opset >= 10 else
                                ["none", "argmax"]))  # TopK's k is an input from opset 10
    if head != "none":
        probes.append(s.x)
        if head == "argmax":
            s.x = s.b.node("ArgMax", [s.x], axis=1, keepdims=1)
            s.b.outputs.append(helper.make_tensor_value_info(s.x, TensorProto.INT64, None))
        else:
            k = s.b.const(np.array([1], dtype=np.int64), "k", np.dtype(np.int64))
            vals = s.b.node("TopK", [s.x, k], n_out=2, axis=1)
            idx = s.b.nodes[-1].output[1]
            s.b.outputs.append(helper.make_tensor_value_info(idx, TensorProto.INT64, None))
            s.x = vals
        s.ranks[s.b.outputs[-1].name] = 2 + s.dims
    return Case(finish(s), conds=conds, probes=probes)


def _bool_input(b: Builder, name: str) -> str:
    b.inputs.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
    return name


# --- dtypes -----------------------------------------------------------------------------------

@st.composite
def dtype_cases(draw) -> Case:
    """float16, bfloat16 and float64 models; BNs often without an epsilon attribute."""
    elem = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                 TensorProto.BFLOAT16]))
    low = {TensorProto.BFLOAT16: 22}.get(elem, 7)
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= low])))
    trunk(draw, s)
    return Case(retype(finish(s), elem), dtype=elem)


# --- functions and training_info --------------------------------------------------------------

@st.composite
def function_cases(draw) -> Case:
    """Conv+BN inside a model-local function (old opsets too: Squeeze/Slice with attributes)."""
    opset = draw(st.sampled_from([o for o in OPSETS if o >= 9]))
    s = start(draw, opset=opset, dense=False)
    trunk(draw, s, 1)
    return Case(_into_function(finish(s), opset))


@st.composite
def training_cases(draw) -> Case:
    """training_info whose algorithm reads, and whose bindings name, initializers folds rewrite."""
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 9])))
    trunk(draw, s, 2)
    model = finish(s)
    _training_info(draw, model)
    return Case(model)


def _into_function(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Move the whole graph into a function F(x) -> y; initializers become Constant nodes."""
    g = model.graph
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in g.initializer]
    outs = [o.name for o in g.output]
    fn = helper.make_function(LOCAL, "F", [g.input[0].name], outs, consts + list(g.node),
                              [helper.make_opsetid("", opset)])
    call = helper.make_node("F", [g.input[0].name], [f"{o}_f" for o in outs], domain=LOCAL,
                            name="call_F")
    graph = helper.make_graph([call], "g", [g.input[0]],
                              [helper.make_tensor_value_info(f"{o}_f", F32, None) for o in outs])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                helper.make_opsetid(LOCAL, 1)],
                          functions=[fn])
    m.ir_version = min(m.ir_version, 10)
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(m).graph.output}
    for o in m.graph.output:
        o.type.CopyFrom(inferred[o.name].type)
        if not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.SetInParent()  # unknown rank, but a shape field
    return m


def _training_info(draw, model: onnx.ModelProto) -> None:
    """An algorithm that reads every main-graph initializer and binds each one to an update."""
    inits = [t for t in model.graph.initializer if t.data_type == F32]
    if not inits:
        return
    chosen = draw(st.lists(st.sampled_from(inits), min_size=1, max_size=3, unique_by=lambda t: t.name))
    nodes = [helper.make_node("Identity", [t.name], [f"{t.name}_new"]) for t in chosen]
    algo = helper.make_graph(nodes, "train", [], [helper.make_tensor_value_info(
        f"{t.name}_new", F32, list(t.dims)) for t in chosen])
    info = model.training_info.add()
    info.algorithm.CopyFrom(algo)
    for t in chosen:
        binding = info.update_binding.add()
        binding.key, binding.value = t.name, f"{t.name}_new"


# --- external data and random ops -------------------------------------------------------------

LAYOUTS = ["one_file", "subfolder", "per_tensor", "constants_too", "shared_file",
           "named_like_output", "named_like_model"]


@st.composite
def external_cases(draw) -> Case:
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 9])))
    trunk(draw, s)
    return Case(finish(s), layout=draw(st.sampled_from(LAYOUTS)))


@st.composite
def random_op_cases(draw) -> Case:
    """An unseeded RandomNormalLike beside exact folds: its output differs run to run."""
    s = start(draw, opset=draw(st.sampled_from([o for o in OPSETS if o >= 9])))
    noise = s.b.node("RandomNormalLike", [s.x], scale=draw(st.sampled_from([1.0, 1e-3])))
    mixed = draw(st.booleans())
    trunk(draw, s)
    if mixed:  # noise also flows into the folded path's output
        s.x = s.b.node("Add", [s.x, s.b.node("ReduceMean", [noise], keepdims=0)])
    return Case(finish(s, [noise]))


@st.composite
def any_cases(draw) -> Case:
    return draw(st.one_of(params_cases(), chain_cases(), lie_cases(), branch_cases(), dtype_cases(),
                          function_cases(), training_cases(), external_cases(), random_op_cases()))


__all__ = ["NEWEST", "params_cases", "chain_cases", "lie_cases", "branch_cases", "dtype_cases",
           "function_cases", "training_cases", "external_cases", "random_op_cases", "any_cases", "param"]
