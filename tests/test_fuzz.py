"""Fuzz: random valid graphs with BN in every position bnfold folds or refuses.

Property: fold never raises; the result passes onnx.checker and runs in ONNX Runtime; outputs
match the original within tolerance; every BN is folded or has a reason. The fast profile
(tests/conftest.py) runs tens of examples; run thousands by hand with
``HYPOTHESIS_PROFILE=long BNFOLD_FUZZ_EXAMPLES=3000 python -m pytest -q tests/test_fuzz.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import given, note
from hypothesis import strategies as st
from modelgen import NP_TO_ONNX, Builder, count_bn, random_feeds, run
from onnx import helper, numpy_helper

import bnfold

OPSETS = [v for v in range(7, 29) if v <= onnx.defs.onnx_opset_version()]  # what this onnx knows
SPATIAL = ["conv", "conv", "conv_transpose", "bn", "relu", "fanout", "if"]
DENSE = ["gemm", "matmul", "bn", "relu", "fanout"]


@dataclass
class State:
    """The tensor being extended and its shape: [N, c] + [size] * dims (dims 0: dense)."""

    b: Builder
    x: str
    c: int
    size: int
    dims: int
    shared: dict = field(default_factory=dict)  # weight shape -> initializer name
    ranks: dict = field(default_factory=dict)  # graph output -> rank

    def output(self, name: str) -> None:
        if name not in self.ranks:
            self.b.output(name)
            self.ranks[name] = 2 + self.dims


def bn_param_names(draw, s: State) -> list[str]:
    """BN parameters as initializers, Constant nodes, or Identity of an initializer."""
    b = s.b
    mixed = b.opset >= 15 and b.dtype == np.float16
    t1 = draw(st.sampled_from([np.float16, np.float32])) if mixed else b.dtype
    t2 = draw(st.sampled_from([np.float16, np.float32])) if mixed else b.dtype
    gamma = b.rng.uniform(0.5, 1.5, s.c) * draw(st.sampled_from([1.0, -1.0]))
    beta, mean = b.rng.normal(0, 0.5, s.c), b.rng.normal(0, 0.5, s.c)
    var = b.rng.uniform(1e-6, 1e-5, s.c) if draw(st.booleans()) else b.rng.uniform(0.5, 2, s.c)
    names = []
    for i, value in enumerate((gamma, beta, mean, var)):
        dtype = t1 if i < 2 else t2
        how = draw(st.sampled_from(["init", "init", "constant", "identity", "squeeze",
                                    "reduce"]))
        if how in ("squeeze", "reduce"):
            name = axes_subgraph(b, np.asarray(value, dtype=dtype), how)
        elif how == "constant":
            name = b.name("bnconst")
            b.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
                np.asarray(value, dtype=dtype), name + "_v")))
        else:
            name = b.const(value, "bnp", np.dtype(dtype))
            if how == "identity":
                name = b.node("Identity", [name])
        names.append(name)
    return names


def axes_subgraph(b: Builder, value: np.ndarray, how: str) -> str:
    """``value`` rebuilt by ops that read ``axes`` from an attribute before opset 13 and from
    an input after; evaluated under the wrong opset, the result changes (squeeze) or breaks."""
    def axes(op: str, x: str, ax: list[int], **attrs) -> str:
        if b.opset >= 13:
            return b.node(op, [x, b.const(np.array(ax), "axes", np.int64)], **attrs)
        return b.node(op, [x], axes=ax, **attrs)

    if how == "reduce":  # (c,) -> (1, c, 1) -> sum over axis 2 -> (1, c) -> (c,)
        t = axes("Unsqueeze", b.const(value, "bnp", value.dtype), [0, 2])
        return axes("Squeeze", axes("ReduceSum", t, [2], keepdims=0), [0])
    # u (1,1,c) -> (1,c) -> (c,1) + (value - u0) (1,c) -> (c,c) -> row 0 = value (~1 ulp)
    u = (value + 0.5).astype(value.dtype)
    t = b.node("Transpose", [axes("Squeeze", b.const(u.reshape(1, 1, -1), "bnp", u.dtype), [0])])
    t = b.node("Add", [t, b.const((value - u[0]).reshape(1, -1), "bnp", value.dtype)])
    return b.node("Gather", [t, b.const(np.array(0), "row", np.int64)], axis=0)


def lie_about_a_rank(draw, model: onnx.ModelProto) -> None:
    """Declare one intermediate tensor with one dimension more than it has (all symbolic)."""
    outputs = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    known = [vi for vi in inferred if vi.name not in outputs and vi.type.tensor_type.HasField(
        "shape") and vi.type.tensor_type.elem_type != onnx.TensorProto.INT64]
    if not known:
        return
    vi = draw(st.sampled_from(known))
    rank = len(vi.type.tensor_type.shape.dim) + 1
    model.graph.value_info.append(helper.make_tensor_value_info(
        vi.name, vi.type.tensor_type.elem_type, [f"lie{i}" for i in range(rank)]))


def bn(draw, s: State) -> None:
    s.x = s.b.node("BatchNormalization", [s.x] + bn_param_names(draw, s),
                   epsilon=draw(st.sampled_from([1e-5, 1e-3])))


def weight(draw, s: State, shape: tuple[int, ...]) -> str:
    """An initializer of ``shape``, shared with an earlier layer of the same shape sometimes."""
    if shape in s.shared and draw(st.booleans()):
        return s.shared[shape]
    name = s.b.const(s.b.weights(shape))
    s.shared[shape] = name
    return name


def conv(draw, s: State) -> None:
    group = draw(st.sampled_from([g for g in (1, 2, 3) if s.c % g == 0]))
    cout = group * draw(st.integers(1, 3))
    k, stride = draw(st.sampled_from([1, 2, 3])), draw(st.integers(1, 2))
    dilation, pads = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    out = (s.size + 2 * pads - dilation * (k - 1) - 1) // stride + 1
    if out < 1:
        return
    ins = [s.x, weight(draw, s, (cout, s.c // group) + (k,) * s.dims)]
    if draw(st.booleans()):
        ins.append(s.b.const(s.b.weights((cout,)), "b"))
    s.x = s.b.node("Conv", ins, group=group, strides=[stride] * s.dims, pads=[pads] * 2 * s.dims,
                   dilations=[dilation] * s.dims, kernel_shape=[k] * s.dims)
    s.c, s.size = cout, out


def conv_transpose(draw, s: State) -> None:
    group = draw(st.sampled_from([g for g in (1, 2) if s.c % g == 0]))
    cout = group * draw(st.integers(1, 3))
    k, stride = draw(st.sampled_from([1, 2, 3])), draw(st.integers(1, 2))
    out = (s.size - 1) * stride + k
    if out > 12:
        return
    ins = [s.x, weight(draw, s, (s.c, cout // group) + (k,) * s.dims)]
    if draw(st.booleans()):
        ins.append(s.b.const(s.b.weights((cout,)), "b"))
    s.x = s.b.node("ConvTranspose", ins, group=group, strides=[stride] * s.dims)
    s.c, s.size = cout, out


def gemm(draw, s: State) -> None:
    cout, trans_b = draw(st.integers(1, 6)), draw(st.booleans())
    ins = [s.x, weight(draw, s, (cout, s.c) if trans_b else (s.c, cout))]
    if s.b.opset < 11 or draw(st.booleans()):
        ins.append(s.b.const(s.b.weights((cout,)), "b"))
    s.x = s.b.node("Gemm", ins, transB=int(trans_b), alpha=draw(st.sampled_from([1.0, 0.5])))
    s.c = cout


def matmul(draw, s: State) -> None:
    cout = draw(st.integers(1, 6))
    s.x = s.b.node("MatMul", [s.x, weight(draw, s, (s.c, cout))])
    if draw(st.booleans()):
        s.x = s.b.node("Add", [s.x, s.b.const(s.b.weights((cout,)), "b")])
    s.c = cout


def branch(draw, s: State) -> onnx.GraphProto:
    """A subgraph reading the outer tensor: Conv(3x3, same size) -> BN, or BN, or Identity."""
    inner = State(Builder(opset=s.b.opset, dtype=s.b.dtype, seed=draw(st.integers(0, 999))),
                  s.x, s.c, s.size, s.dims)
    inner.b.count = s.b.count  # one name counter: names stay unique across all graphs
    kind = draw(st.sampled_from(["conv_bn", "bn", "identity"]))
    if kind == "conv_bn":
        w = inner.b.const(inner.b.weights((s.c, s.c) + (3,) * s.dims))
        inner.x = inner.b.node("Conv", [s.x, w], pads=[1] * 2 * s.dims)
    if kind != "identity":
        bn(draw, inner)
    else:
        inner.x = inner.b.node("Identity", [s.x])
    s.b.count = inner.b.count
    out = helper.make_tensor_value_info(inner.x, NP_TO_ONNX[s.b.dtype], None)
    return helper.make_graph(inner.b.nodes, s.b.name("branch"), [], [out], inner.b.inits)


def if_node(draw, s: State) -> None:
    if s.b.opset < 11 or not any(i.name == "cond" for i in s.b.inputs):
        return
    s.x = s.b.node("If", ["cond"], then_branch=branch(draw, s), else_branch=branch(draw, s))


def fanout(draw, s: State) -> None:
    """Make the current tensor also a graph output, or give it a second reader."""
    s.output(s.x if draw(st.booleans()) else s.b.node("Relu", [s.x]))


STEPS = {"conv": conv, "conv_transpose": conv_transpose, "bn": bn, "relu": None,
         "fanout": fanout, "if": if_node, "gemm": gemm, "matmul": matmul}


LAYERS = frozenset({"conv", "conv_transpose", "gemm", "matmul"})


def run_steps(draw, s: State, steps: list[str]) -> None:
    """Apply a few random steps; a layer usually gets a BN after it and often one before."""
    for step in draw(st.lists(st.sampled_from(steps), min_size=1, max_size=5)):
        if step in LAYERS and draw(st.booleans()):
            bn(draw, s)
        if step == "relu":
            s.x = s.b.node("Relu", [s.x])
        else:
            STEPS[step](draw, s)
        if step in LAYERS and draw(st.integers(0, 3)):
            bn(draw, s)


@st.composite
def graphs(draw) -> onnx.ModelProto:
    opset = draw(st.sampled_from(OPSETS))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    b = Builder(opset=opset, dtype=dtype, seed=draw(st.integers(0, 2**16)))
    dense = draw(st.integers(0, 4)) == 0
    dims = 0 if dense else draw(st.integers(1, 2))
    c, size = draw(st.integers(1, 6)), draw(st.integers(3, 7))
    s = State(b, b.input("x", ["N", c] + [size] * dims), c, size, dims)
    if opset >= 11 and draw(st.booleans()):
        b.inputs.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    run_steps(draw, s, DENSE if dense else SPATIAL)
    if not dense and draw(st.booleans()):
        s.x, s.c, s.dims = b.node("Flatten", [s.x]), s.c * s.size**s.dims, 0
        run_steps(draw, s, DENSE)
    s.output(s.x)
    model = b.model()
    for out in model.graph.output:  # IR 3 needs a shape on every output; give unknown dims
        if not out.type.tensor_type.HasField("shape"):
            for i in range(s.ranks[out.name]):
                out.type.tensor_type.shape.dim.add().dim_param = f"{out.name}_d{i}"
    if draw(st.integers(0, 3)) == 0:
        lie_about_a_rank(draw, model)
    return with_ir3_inputs(model)


def with_ir3_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR 3 (opsets 7-8) requires every initializer to be listed as a graph input too."""
    if model.ir_version < 4:
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                 for t in model.graph.initializer)
    return model


def check_fold(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    before = count_bn(model)
    result = bnfold.fold(model)
    folded = result.model
    note(f"records: {[r.to_dict() for r in result.records]}")
    onnx.checker.check_model(folded)
    bns = [r for r in result.records if r.op == "BatchNormalization"]
    assert len(bns) == result.bn_before == before  # one record per BN; a folded bias Add or
    assert all(r.folded for r in result.records if r.op != "BatchNormalization")  # Mul: its own
    assert all(r.folded or r.reason is not None for r in bns)
    assert count_bn(folded) == result.bn_after == before - sum(r.folded for r in bns)
    err, tol = fold_error(model, folded)
    assert err <= tol, f"max error {err} > tolerance {tol}"


def as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float32: the reference an fp16 model approximates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

    def fix_tensor(t: onnx.TensorProto) -> None:
        if t.data_type == half:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    def visit(graph: onnx.GraphProto) -> None:
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.tensor_type.elem_type == half:
                vi.type.tensor_type.elem_type = single
        for t in graph.initializer:
            fix_tensor(t)
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    fix_tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)

    visit(out.graph)
    return out


def outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [o.astype(np.float64) for o in run(model, feeds)]


def fold_error(model: onnx.ModelProto, folded: onnx.ModelProto) -> tuple[float, float]:
    """(max |folded - reference|, allowed) over the outputs where the reference is finite.

    fp32: the reference is the original and the allowance 1e-4 of the output peak. fp16: the
    reference is the model run in float32; the folded model may be off by four times the
    original's own fp16 error or 5e-2 of the output peak, whichever is more. fp16 needs the
    loose bound: a fold rounds weights scaled by the BN to fp16, and where the layer's terms
    cancel (a forward fold of a BN with scale ~30 into MatMul) that costs a few percent of a
    small output even though the fold itself is exact (the fuzzer found 4.3%). When the
    reference leaves the fp16 range the original overflows too and there is nothing to
    compare: (0, 0). A folded NaN/inf where the reference is finite is an infinite error.
    """
    half = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    reference = as_float32(model) if half else model
    worst, base, peak = 0.0, 0.0, 1.0
    for batch in (1, 8):
        feeds = random_feeds(model, batch, seed=batch)
        ref = outputs(reference, {k: v.astype(np.float32) if v.dtype == np.float16 else v
                                  for k, v in feeds.items()})
        for r, a, b in zip(ref, outputs(model, feeds), outputs(folded, feeds)):
            if half and not (np.isfinite(r).all() and np.abs(r).max(initial=0) < 6e4):
                return 0.0, 0.0
            ok = np.isfinite(r)
            if not ok.any():
                continue
            peak = max(peak, float(np.abs(r[ok]).max()))
            diff = np.where(np.isfinite(b[ok]), np.abs(b[ok] - r[ok]), np.inf)
            worst = max(worst, float(diff.max()))
            if half:
                base = max(base, float(np.nan_to_num(np.abs(a[ok] - r[ok]), nan=np.inf).max()))
    return worst, (max(4 * base, 5e-2 * peak) if half else 1e-4 * peak)


@given(graphs())
def test_random_graphs_fold_validly_and_exactly(model):
    try:
        check_fold(model)
    except Exception:
        keep = os.environ.get("BNFOLD_FUZZ_SAVE")  # a folder to keep failing models in
        if keep:
            onnx.save_model(model, os.path.join(keep, f"fail_{abs(hash(model.SerializeToString()))}.onnx"))
        raise


def test_ir3_conv_without_bias_folds():
    """Found by the fuzzer: an IR 3 fold's new initializer must be listed as a graph input."""
    b = Builder(opset=7)
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(x, 3, 4, bias=False), 4))
    model = with_ir3_inputs(b.model())
    assert model.ir_version == 3
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(model)
    result = bnfold.fold(model)
    assert [r.reason for r in result.records] == [None], result.records[0].detail
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input][:1] == ["x"]
    err, tol = fold_error(model, result.model)
    assert err <= tol
