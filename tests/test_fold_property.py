"""Property: random Conv/ConvTranspose/Gemm/MatMul/BN/Relu chains fold exactly and validly."""
from __future__ import annotations

import onnx
from hypothesis import given
from hypothesis import strategies as st

import bnfold
from modelgen import Builder, count_bn, max_error, tolerance

spatial_layer = st.sampled_from(["conv", "conv_transpose", "bn", "bn", "relu"])
dense_layer = st.sampled_from(["gemm", "matmul", "bn", "bn", "relu"])


@st.composite
def chains(draw) -> onnx.ModelProto:
    seed = draw(st.integers(0, 2**16))
    b = Builder(seed=seed, opset=draw(st.sampled_from([9, 13, 17, 21])))
    dims = draw(st.integers(1, 2))
    c, size = draw(st.integers(1, 5)), draw(st.integers(3, 7))
    x = b.input("x", ["N", c] + [size] * dims)

    def bn(t: str, channels: int) -> str:
        return b.bn(t, channels, gamma_sign=draw(st.sampled_from([1.0, -1.0])),
                    tiny_var=draw(st.booleans()))

    for layer in draw(st.lists(spatial_layer, min_size=1, max_size=5)):
        if layer == "bn":
            x = bn(x, c)
        elif layer == "relu":
            x = b.node("Relu", [x])
        else:
            groups = [g for g in (1, 2, 3) if c % g == 0]
            group = draw(st.sampled_from(groups))
            cout = group * draw(st.integers(1, 3))
            k, stride = draw(st.sampled_from([1, 3])), draw(st.integers(1, 2))
            if layer == "conv":
                pads = draw(st.integers(0, 1))
                if (size + 2 * pads - k) // stride + 1 < 1:
                    continue
                x = b.conv(x, c, cout, k, group=group, pads=pads, dims=dims,
                           bias=draw(st.booleans()), strides=[stride] * dims)
                size = (size + 2 * pads - k) // stride + 1
            else:
                if (size - 1) * stride + k > 12:
                    continue
                x = b.conv_transpose(x, c, cout, k, group=group, dims=dims,
                                     bias=draw(st.booleans()), strides=[stride] * dims)
                size = (size - 1) * stride + k
            c = cout
    if draw(st.booleans()):
        x = b.node("Flatten", [x])
        c = c * size**dims
        for layer in draw(st.lists(dense_layer, min_size=1, max_size=4)):
            if layer == "bn":
                x = bn(x, c)
            elif layer == "relu":
                x = b.node("Relu", [x])
            else:
                n = draw(st.integers(1, 6))
                if layer == "gemm":
                    trans_b = draw(st.integers(0, 1))
                    w = b.const(b.weights((n, c) if trans_b else (c, n)))
                    x = b.node("Gemm", [x, w, b.const(b.weights((n,)))], transB=trans_b,
                               alpha=draw(st.sampled_from([1.0, 0.5])),
                               beta=draw(st.sampled_from([1.0, 2.0])))
                else:
                    x = b.node("MatMul", [x, b.const(b.weights((c, n)))])
                c = n
    if not b.nodes:
        x = b.node("Relu", [x])
    b.output(x)
    return b.model()


@given(chains())
def test_random_chains_fold_exactly_and_validly(model: onnx.ModelProto) -> None:
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert len(result.records) == count_bn(model)
    assert count_bn(result.model) == result.bn_after
    assert all(r.folded or r.reason is not None for r in result.records)
    assert max_error(model, result.model) <= tolerance(model, 1e-4)
    # a fold that folds nothing would pass the lines above: every BN straight after a layer
    # that absorbs it (the chains give each producer one reader) must be folded
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    absorbed = {n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization"
                and producers.get(n.input[0]) in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
    folded = {r.bn_output for r in result.records if r.folded}
    assert absorbed <= folded, [r.to_dict() for r in result.records if r.bn_output in absorbed]


@given(chains())
def test_folding_twice_changes_nothing(model: onnx.ModelProto) -> None:
    once = bnfold.fold(model).model
    twice = bnfold.fold(once).model
    assert twice.SerializeToString() == once.SerializeToString()
