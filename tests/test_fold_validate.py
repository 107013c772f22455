"""bnfold.folding.rules.validate: an invalid neighbour is refused with its numbers, never a crash.

The structural checker does not look at shapes, so these models load; the fold must refuse
them with INVALID_NEIGHBOUR instead of raising a numpy error or folding a broken node.
"""
from __future__ import annotations

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

import bnfold
from bnfold.errors import BnfoldError
from bnfold.folding.report import Reason
from modelgen import Builder, count_bn


def _model(b: Builder) -> onnx.ModelProto:
    """The builder's model with symbolic output shapes (shape inference fails on these)."""
    b.outputs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["a", "b", "c", "d"])
                 for o in b.outputs]
    return b.model()


def _kept_as_invalid(model: onnx.ModelProto, *numbers: str) -> None:
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    record = result.records[0]
    assert record.reason is Reason.INVALID_NEIGHBOUR, record.to_dict()
    assert all(n in record.detail for n in numbers), record.detail


def test_conv_transpose_with_input_channels_not_divisible_by_group_is_refused():
    b = Builder(seed=1)
    w = b.const(b.weights((3, 2, 3, 3)))
    b.output(b.bn(b.node("ConvTranspose", [b.input("x", ["N", 3, 5, 5]), w], group=2), 4))
    _kept_as_invalid(_model(b), "= 3", "group=2")


def test_conv_with_output_channels_not_divisible_by_group_is_refused():
    b = Builder(seed=2)
    w = b.const(b.weights((5, 2, 3, 3)))
    b.output(b.bn(b.node("Conv", [b.input("x", ["N", 4, 5, 5]), w], group=2), 5))
    _kept_as_invalid(_model(b), "= 5", "group=2")


@pytest.mark.parametrize("bias_shape", [(3,), (1,), (2, 2)])
def test_conv_bias_of_wrong_length_is_refused_backward(bias_shape):
    b = Builder(seed=3)
    ins = [b.input("x", ["N", 4, 5, 5]), b.const(b.weights((4, 4, 3, 3))),
           b.const(b.weights(bias_shape))]
    b.output(b.bn(b.node("Conv", ins), 4))
    _kept_as_invalid(_model(b), str(list(bias_shape)), "[4]")


def test_conv_bias_of_wrong_length_is_refused_forward():
    b = Builder(seed=4)
    y = b.bn(b.input("x", ["N", 4, 5, 5]), 4)
    b.output(b.node("Conv", [y, b.const(b.weights((4, 4, 1, 1))), b.const(b.weights((3,)))]))
    _kept_as_invalid(_model(b), "[3]", "[4]")


def test_conv_transpose_bias_must_have_group_times_dim1_entries():
    b = Builder(seed=5)
    ins = [b.input("x", ["N", 4, 5, 5]), b.const(b.weights((4, 3, 3, 3))),
           b.const(b.weights((3,)))]
    b.output(b.bn(b.node("ConvTranspose", ins, group=2), 6))
    _kept_as_invalid(_model(b), "[3]", "[6]")


def test_conv_whose_input_channels_disagree_with_its_weight_is_refused():
    b = Builder(seed=6)
    w = b.const(b.weights((4, 2, 3, 3)))
    b.output(b.bn(b.node("Conv", [b.input("x", ["N", 3, 5, 5]), w]), 4))
    _kept_as_invalid(_model(b), "3 channels", "reads 2")


def test_gemm_whose_a_and_b_disagree_on_k_is_refused():
    b = Builder(seed=7)
    gemm = b.node("Gemm", [b.input("x", ["N", 3]), b.const(b.weights((4, 5)))])
    b.output(b.bn(gemm, 5))
    _kept_as_invalid(_model(b), "K=3", "K=4")


# --- fuzz: every rule with malformed shapes returns records, never raises -----------------

@st.composite
def malformed(draw) -> onnx.ModelProto:
    """One Conv/ConvTranspose/Gemm/MatMul next to a BN, with shapes drawn independently."""
    b = Builder(seed=draw(st.integers(0, 2**16)))
    op = draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "MatMul"]))
    dims = st.integers(1, 4)
    x_shape = ["N"] + draw(st.lists(dims, min_size=1, max_size=3))
    w_shape = tuple(draw(st.lists(dims, min_size=1, max_size=4)))
    ins = ["", b.const(b.weights(w_shape))]
    if draw(st.booleans()):
        ins.append(b.const(b.weights(tuple(draw(st.lists(dims, min_size=1, max_size=2))))))
    attrs = {}
    if op in ("Conv", "ConvTranspose"):
        attrs["group"] = draw(st.integers(1, 3))
    if op == "Gemm":
        attrs["transB"] = draw(st.integers(0, 1))
    channels = draw(dims)
    x = b.input("x", x_shape)
    if draw(st.booleans()):  # BN before the op (forward fold)
        ins[0] = b.bn(x, x_shape[1] if draw(st.booleans()) else channels)
        b.output(b.node(op, ins, **attrs))
    else:
        ins[0] = x
        b.output(b.bn(b.node(op, ins, **attrs), channels))
    return _model(b)


@given(malformed())
def test_fold_of_malformed_neighbours_returns_records_never_raises(model):
    try:
        result = bnfold.fold(model)
    except BnfoldError:
        return  # refused as input: a user error with one line, not a crash
    assert len(result.records) == 1
    if result.folded:
        onnx.checker.check_model(result.model)
