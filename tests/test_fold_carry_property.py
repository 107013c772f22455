"""Property: Conv -> commuting ops -> BN -> commuting ops -> absorber chains, with random
layouts and scale signs, fold exactly where the conditions hold and match ONNX Runtime."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bnfold
from modelgen import Builder, count_bn, max_error, tolerance

COMMUTING = ["identity", "dropout", "maxpool", "avgpool", "transpose_pair", "reshape_pair",
             "add", "mul"]


def commuting(b: Builder, x: str, op: str, c: int, hw: int) -> str:
    """One commuting op (or a pair that restores NCHW) on an (N, c, hw, hw) tensor."""
    if op == "identity":
        return b.node("Identity", [x])
    if op == "dropout":
        return b.node("Dropout", [x])
    if op == "maxpool":
        return b.node("MaxPool", [x], kernel_shape=[2, 2], pads=[1, 1, 0, 0])
    if op == "avgpool":
        return b.node("AveragePool", [x], kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                      count_include_pad=0)
    if op == "transpose_pair":
        return b.node("Transpose", [b.node("Transpose", [x], perm=[0, 2, 3, 1])],
                      perm=[0, 3, 1, 2])
    if op == "reshape_pair":
        flat = b.node("Reshape", [x, b.const(np.array([0, c, -1]), "s", np.int64)])
        return b.node("Reshape", [flat, b.const(np.array([0, c, hw, hw]), "s", np.int64)])
    const = b.rng.uniform(0.5, 1.5, (c, 1, 1))
    if op == "add":  # a Mul keeps the scale's sign (``sign`` draws it), so a MaxPool after it
        const *= b.rng.choice([-1, 1], (c, 1, 1))  # commutes exactly when the test expects
    return b.node("Add" if op == "add" else "Mul", [x, b.const(const)])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), c=st.integers(1, 4), hw=st.integers(3, 5),
       before=st.lists(st.sampled_from(COMMUTING), max_size=3),
       after=st.lists(st.sampled_from(COMMUTING), max_size=3),
       producer=st.booleans(), consumer=st.sampled_from(["conv", "gemm", "none"]),
       sign=st.sampled_from([1.0, -1.0]))
def test_carried_chains_fold_where_they_commute_and_match_ort(seed, c, hw, before, after,
                                                              producer, consumer, sign):
    b = Builder(seed=seed)
    x = b.input("x", ["N", 3, hw, hw])
    y = b.conv(x, 3, c) if producer else b.node("Relu", [x])
    channels = c if producer else 3
    for op in before:
        y = commuting(b, y, op, channels, hw)
    y = b.bn(y, channels, gamma_sign=sign)
    for op in after:
        y = commuting(b, y, op, channels, hw)
    if consumer == "conv":
        y = b.conv(y, channels, 2, k=1, pads=0)
    elif consumer == "gemm":
        y = b.node("Gemm", [b.node("Flatten", [y]),
                            b.const(b.weights((channels * hw * hw, 3)))])
    b.output(y)
    model = b.model()
    result = bnfold.fold(model)
    assert max_error(model, result.model) <= tolerance(model)
    backward = producer and (sign > 0 or "maxpool" not in before)
    forward = consumer != "none" and (sign > 0 or "maxpool" not in after)
    if backward or forward:
        assert count_bn(result.model) == 0, [r.to_dict() for r in result.records]
    if not (producer or consumer != "none"):
        assert count_bn(result.model) == 1
