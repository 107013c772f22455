"""Hostile graph generators for the trust campaign (tests/test_fuzz_hostile.py).

Each strategy draws a ``Case``: a valid model plus what the oracle must know to judge a fold
on all paths (boolean inputs to try both ways, pre-ArgMax tensors to expose, an external data
layout to save it with). The kinds follow issue 10: BN parameters computed by subgraphs whose
op semantics changed across opsets, lying value_info, If/Loop branches and ArgMax/TopK heads,
unusual dtypes, functions and training_info, external data, unseeded random ops.
Models are built in float32 and retyped at the end (``retype``) so every dtype shares the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from modelgen import Builder
from onnx import TensorProto, helper, numpy_helper
from test_fuzz import State, conv, conv_transpose, gemm, matmul, with_ir3_inputs

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = list(range(7, NEWEST + 1))
F32 = TensorProto.FLOAT


@dataclass
class Case:
    """A hostile model and how to judge a fold of it."""

    model: onnx.ModelProto
    dtype: int = F32                                  # float elem type of the model
    conds: list[str] = field(default_factory=list)    # bool inputs: try True and False
    probes: list[str] = field(default_factory=list)   # float tensors read by ArgMax/TopK heads
    layout: str | None = None                         # external data layout (save, fold by path)

# --- BN parameters computed by subgraphs --------------------------------------------------

RECIPES = ["init", "constant", "floats", "identity", "identity_chain", "squeeze", "unsqueeze",
           "slice", "reshape", "gather", "concat", "arith", "cast", "int_constant", "outer_sum"]


def _ints(b: Builder, values: list[int]) -> str:
    return b.const(np.array(values, dtype=np.int64), "i", np.dtype(np.int64))


def _axes_node(b: Builder, op: str, x: str, axes: list[int], since: int) -> str:
    """Squeeze/Unsqueeze: ``axes`` an attribute before opset ``since``, an input from it on."""
    if b.opset < since:
        return b.node(op, [x], axes=axes)
    return b.node(op, [x, _ints(b, axes)])


def _slice(b: Builder, x: str, start: int, end: int) -> str:
    if b.opset < 10:
        return b.node("Slice", [x], starts=[start], ends=[end], axes=[0])
    return b.node("Slice", [x, _ints(b, [start]), _ints(b, [end]), _ints(b, [0])])


def param(draw, b: Builder, value: np.ndarray, depth: int = 0) -> str:
    """A tensor named by the result whose value (in ONNX semantics at ``b.opset``) is ``value``."""
    c = value.shape[0]
    recipe = draw(st.sampled_from(RECIPES if depth < 2 else ["init", "constant"]))
    if recipe == "constant":
        name = b.name("pc")
        b.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            value.astype(np.float32), name + "_v")))
        return name
    if recipe == "floats" and b.opset >= 12:
        if c == 1 and draw(st.booleans()):  # a scalar broadcast against a (1,) zero vector
            s = b.node("Constant", [], value_float=float(value[0]))
            return b.node("Add", [b.const(np.zeros(1)), s])
        return b.node("Constant", [], value_floats=[float(v) for v in value])
    if recipe == "identity":
        return b.node("Identity", [param(draw, b, value, depth + 1)])
    if recipe == "identity_chain":
        return identity_chain(b.const(value), b, draw(st.integers(2, 30)))
    if recipe == "squeeze":
        shape = draw(st.sampled_from([(1, c), (1, c, 1), (c, 1)]))
        axes = [i for i, d in enumerate(shape) if d == 1 and (i != 1 or shape[0] != 1)]
        return _axes_node(b, "Squeeze", b.const(value.reshape(shape)), axes, 13)
    if recipe == "unsqueeze":
        u = _axes_node(b, "Unsqueeze", param(draw, b, value, depth + 1), [0], 13)
        return _axes_node(b, "Squeeze", u, [0], 13)
    if recipe == "slice":
        pre, post = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        full = np.concatenate([b.weights((pre,)), value, b.weights((post,))])
        return _slice(b, b.const(full), pre, pre + c)
    if recipe == "reshape":
        shape = draw(st.sampled_from([(1, c), (c, 1), (1, 1, c)]))
        return b.node("Reshape", [b.const(value.reshape(shape)),
                                  _ints(b, [draw(st.sampled_from([c, -1]))])])
    if recipe == "gather":
        perm = np.array(draw(st.permutations(range(c + 1))), dtype=np.int64)
        table = np.empty(c + 1)
        table[perm[:c]] = value
        table[perm[c]] = 7.0
        return b.node("Gather", [b.const(table), _ints(b, list(perm[:c]))], axis=0)
    if recipe == "concat" and c >= 2:
        k = draw(st.integers(1, c - 1))
        return b.node("Concat", [param(draw, b, value[:k], depth + 1),
                                 param(draw, b, value[k:], depth + 1)], axis=0)
    if recipe == "arith":
        op = draw(st.sampled_from(["Add", "Sub", "Mul", "Div", "Sqrt"]))
        r = b.rng.uniform(0.5, 2.0, c) if draw(st.booleans()) else np.array([1.5])
        if op == "Sqrt":
            if (value < 0).any():
                return b.node("Neg", [b.node("Sqrt", [param(draw, b, value**2, depth + 1)])]) \
                    if (value < 0).all() else b.const(value)
            return b.node("Sqrt", [param(draw, b, value**2, depth + 1)])
        left = {"Add": value - r, "Sub": value + r, "Mul": value / r, "Div": value * r}[op]
        return b.node(op, [param(draw, b, left, depth + 1), b.const(r)])
    if recipe == "cast":
        src = draw(st.sampled_from([np.float64, np.float16]))
        return b.node("Cast", [b.const(value, "pw", np.dtype(src))], to=F32)
    if recipe == "int_constant":  # integer parameters: round, keep as int, Cast to float
        ints = np.round(value * 4).astype(np.int64)
        ints[ints == 0] = 1
        name = b.node("Constant", [], value_ints=[int(v) for v in ints]) if b.opset >= 12 \
            else b.const(ints, "pi", np.dtype(np.int64))
        return b.node("Div", [b.node("Cast", [name], to=F32), b.const(np.array([4.0]))])
    if recipe == "outer_sum" and b.opset >= 10:
        # s = Squeeze(p (1,c,1), axes=[0]) is (c,1); s + q is (c,c); its first row is p0 + q.
        # Squeeze evaluated without its axes gives (c,): then the first row is p + q instead.
        p = np.full((1, c, 1), 0.25)
        p[0, :, 0] += np.arange(c) * 0.5
        s = _axes_node(b, "Squeeze", b.const(p), [0], 13)
        t = b.node("Add", [s, b.const(value - 0.25)])
        return _slice(b, b.node("Reshape", [t, _ints(b, [-1])]), 0, c)
    return b.const(value)


def identity_chain(name: str, b: Builder, length: int) -> str:
    for _ in range(length):
        name = b.node("Identity", [name])
    return name


def bn_params(draw, b: Builder, c: int) -> list[str]:
    gamma = b.rng.uniform(0.5, 1.5, c) * draw(st.sampled_from([1.0, -1.0]))
    beta, mean = b.rng.normal(0, 0.5, c), b.rng.normal(0, 0.5, c)
    var = draw(st.sampled_from(["normal", "tiny", "zero"]))
    var = {"normal": b.rng.uniform(0.5, 2, c), "tiny": b.rng.uniform(1e-7, 1e-5, c),
           "zero": np.zeros(c)}[var]
    computed = draw(st.booleans())
    return [param(draw, b, v) if computed else b.const(v) for v in (gamma, beta, mean, var)]


def bn(draw, s: State, params: list[str] | None = None) -> None:
    eps = draw(st.sampled_from([None, 1e-5, 1e-3, 0.0]))
    if eps == 0.0 and params is None:
        eps = None
    attrs = {} if eps is None else {"epsilon": eps}
    s.x = s.b.node("BatchNormalization", [s.x] + (params or bn_params(draw, s.b, s.c)), **attrs)


# --- layers the fuzzer of tests/test_fuzz.py lacks -----------------------------------------

def conv_padded(draw, s: State) -> None:
    """Conv with auto_pad SAME_LOWER/SAME_UPPER/VALID, asymmetric pads and dilations."""
    if s.dims == 0:
        return
    k, stride, dil = draw(st.sampled_from([1, 2, 3])), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["SAME_LOWER", "SAME_UPPER", "VALID", "pads"]))
    if mode.startswith("SAME"):
        dil = 1  # ORT: "Dilation not supported for AutoPadType::SAME_UPPER or SAME_LOWER"
    attrs = {"kernel_shape": [k] * s.dims, "strides": [stride] * s.dims,
             "dilations": [dil] * s.dims}
    if mode == "pads":
        lo, hi = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        attrs["pads"] = [lo] * s.dims + [hi] * s.dims
        out = (s.size + lo + hi - dil * (k - 1) - 1) // stride + 1
    else:
        attrs["auto_pad"] = mode
        out = -(-s.size // stride) if mode != "VALID" else (s.size - dil * (k - 1) - 1) // stride + 1
    if out < 1:
        return
    cout = draw(st.integers(1, 4))
    ins = [s.x, s.b.const(s.b.weights((cout, s.c) + (k,) * s.dims))]
    if draw(st.booleans()):
        ins.append(s.b.const(s.b.weights((cout,))))
    s.x, s.c, s.size = s.b.node("Conv", ins, **attrs), cout, out


def conv_transpose_padded(draw, s: State) -> None:
    """ConvTranspose with pads, output_padding, dilations or auto_pad."""
    if s.dims == 0:
        return
    k, stride = draw(st.sampled_from([1, 2, 3])), draw(st.integers(1, 2))
    pad, opad = draw(st.integers(0, k - 1)), draw(st.integers(0, stride - 1))
    out = (s.size - 1) * stride + opad + k - 2 * pad
    if out < 1 or out > 12:
        return
    cout = draw(st.integers(1, 3))
    attrs = {"strides": [stride] * s.dims, "pads": [pad] * 2 * s.dims,
             "output_padding": [opad] * s.dims}
    if draw(st.booleans()) and s.b.opset >= 11:
        attrs = {"strides": [stride] * s.dims, "auto_pad": draw(st.sampled_from(
            ["SAME_UPPER", "SAME_LOWER"]))}
        out = s.size * stride
    ins = [s.x, s.b.const(s.b.weights((s.c, cout) + (k,) * s.dims))]
    if draw(st.booleans()):
        ins.append(s.b.const(s.b.weights((cout,))))
    s.x, s.c, s.size = s.b.node("ConvTranspose", ins, **attrs), cout, out


def gemm_broadcast(draw, s: State) -> None:
    """Gemm with transA and a C of shape (), (1,), (N,), (1, N) or (M, N) (batch fixed at 2)."""
    if s.dims or s.b.opset < 7:
        return
    cout = draw(st.integers(1, 4))
    c_shape = draw(st.sampled_from([(), (1,), (cout,), (1, cout), (2, cout), (2, 1)]))
    ins = [s.x, s.b.const(s.b.weights((s.c, cout)))]
    if s.b.opset < 11 or c_shape != () or draw(st.booleans()):
        ins.append(s.b.const(s.b.weights(c_shape) if c_shape else np.array(0.7)))
    s.x = s.b.node("Gemm", ins, beta=draw(st.sampled_from([1.0, 0.5, 0.0])))
    s.c = cout


SPATIAL = {"conv": conv, "conv_transpose": conv_transpose, "conv_padded": conv_padded,
           "conv_transpose_padded": conv_transpose_padded}
DENSE = {"gemm": gemm, "matmul": matmul, "gemm_broadcast": gemm_broadcast}


def trunk(draw, s: State, steps: int = 3) -> None:
    """A few layers, each with a BN before and/or after it (backward and forward folds)."""
    table = DENSE if s.dims == 0 else SPATIAL
    for _ in range(draw(st.integers(1, steps))):
        if draw(st.booleans()):
            bn(draw, s)
        draw(st.sampled_from(sorted(table.values(), key=lambda f: f.__name__)))(draw, s)
        if draw(st.integers(0, 3)):
            bn(draw, s)
        if draw(st.integers(0, 4)) == 0:
            s.x = s.b.node("Relu", [s.x])


def start(draw, opset: int | None = None, dense: bool | None = None,
          batch: int | str = "N") -> State:
    opset = opset or draw(st.sampled_from(OPSETS))
    b = Builder(opset=opset, seed=draw(st.integers(0, 2**16)))
    dense = draw(st.integers(0, 3)) == 0 if dense is None else dense
    dims = 0 if dense else draw(st.integers(1, 2))
    c, size = draw(st.integers(1, 5)), draw(st.integers(3, 6))
    if dense:
        batch = 2  # Gemm's C may vary per row: the batch must be fixed
    return State(b, b.input("x", [batch, c] + [size] * dims), c, size, dims)


def finish(s: State, extra_outputs: list[str] = ()) -> onnx.ModelProto:
    s.output(s.x)
    for name in extra_outputs:
        s.b.output(name)
    model = s.b.model()
    model = with_ir3_inputs(model)
    for out in model.graph.output:  # the checker wants a shape on every main-graph output
        tt = out.type.tensor_type
        if not tt.HasField("shape"):
            rank = s.ranks.get(out.name, 2 + s.dims)  # every generated tensor has this rank
            for i in range(rank):
                tt.shape.dim.add().dim_param = f"{out.name}_d{i}"
    return model


# --- dtypes ----------------------------------------------------------------------------------

def convert(model: onnx.ModelProto, src: int, dst: int) -> onnx.ModelProto:
    """A copy with every ``src`` tensor, value info and Cast target as ``dst`` (subgraphs and
    function bodies included)."""
    np_type = helper.tensor_dtype_to_np_dtype(dst)

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_type == src:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_type), t.name))

    def graph(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type == src:
                vi.type.tensor_type.elem_type = dst
        for t in g.initializer:
            tensor(t)
        nodes(g.node)

    def nodes(ns) -> None:  # noqa: ANN001
        for n in ns:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                elif a.name in ("to", "dtype") and a.i == src:
                    a.i = dst
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph(out.graph)
    for f in out.functions:
        nodes(f.node)
    return out


def retype(model: onnx.ModelProto, elem: int) -> onnx.ModelProto:
    """The float32 model with every float32 tensor, value info and Cast target as ``elem``."""
    if elem == F32:
        return model
    out = convert(model, F32, elem)
    _cast_float_constants(out.graph, elem)
    return out


def _cast_float_constants(g: onnx.GraphProto, elem: int) -> None:
    """Constant value_float(s) stay float32: insert a Cast to ``elem`` after each."""
    new = []
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name in ("value_float", "value_floats"):
            raw = n.output[0] + "_f32"
            const = helper.make_node("Constant", [], [raw])
            const.attribute.extend(n.attribute)
            new.append(const)
            new.append(helper.make_node("Cast", [raw], [n.output[0]], to=elem))
        else:
            new.append(n)
    del g.node[:]
    g.node.extend(new)
