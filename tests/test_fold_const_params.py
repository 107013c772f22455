"""Layer and BN parameters that exporters build from constants: evaluated, folded, proven."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from modelgen import Builder, count_bn, max_error, tolerance


def folded_ok(model: onnx.ModelProto) -> bnfold.FoldResult:
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.bn_after == 0 and count_bn(result.model) == 0, [
        r.to_dict() for r in result.records]
    assert all(r.proof_max_abs is not None for r in result.records)
    assert max_error(model, result.model) <= tolerance(model)
    return result


def _dynamo_zero_bias(b: Builder, w: str, x: str) -> str:
    """The raw dynamo exporter's bias for ``bias=False``: Expand(CastLike(0, x), Shape(W)[:1]),
    where CastLike reads the activation ``x`` only for its dtype."""
    first = b.node("Expand", [b.node("Shape", [w]), b.const(np.array([1]), "one", np.int64)])
    first = b.node("Slice", [first, b.const(np.array([0]), "s", np.int64),
                             b.const(np.array([1]), "e", np.int64)])
    zero = b.node("Constant", [], value=numpy_helper.from_array(np.array(0.0, np.float32)))
    return b.node("Expand", [b.node("CastLike", [zero, x]), first])


def test_dynamo_zero_bias_cast_like_the_activation_folds_backward():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    w = b.const(b.weights((4, 3, 3, 3)))
    b.output(b.bn(b.node("Conv", [x, w, _dynamo_zero_bias(b, w, x)], pads=[1] * 4), 4))
    result = folded_ok(b.model())
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_dynamo_zero_bias_of_a_conv_transpose_folds_backward():
    b = Builder()
    x = b.input("x", ["N", 4, 5, 5])
    w = b.const(b.weights((4, 3, 2, 2)))
    zero = b.node("CastLike", [b.node("Constant", [], value=numpy_helper.from_array(
        np.array(0.0, np.float32))), x])
    bias = b.node("Expand", [zero, b.const(np.array([3]), "n", np.int64)])
    b.output(b.bn(b.node("ConvTranspose", [x, w, bias], strides=[2, 2]), 3))
    folded_ok(b.model())


def test_cast_like_of_an_activation_read_as_data_is_not_constant():
    """CastLike's second input is read for its dtype only; the first is data."""
    b = Builder()
    x = b.input("x", [1, 4, 5, 5])
    w = b.const(b.weights((4, 4, 1, 1)))
    bias = b.node("Reshape", [b.node("CastLike", [x, w]), b.const(np.array([-1]), "s", np.int64)])
    bias = b.node("Slice", [bias, b.const(np.array([0]), "a", np.int64),
                            b.const(np.array([4]), "z", np.int64)])
    b.output(b.bn(b.node("Conv", [x, w, bias]), 4))
    result = bnfold.fold(b.model())
    assert result.bn_after == 1 and result.records[0].reason.code == "weight_not_constant"


def test_opset11_unsqueeze_axes_attribute_builds_conv_weight_and_bias():
    b = Builder(opset=11)
    x = b.input("x", ["N", 3, 5, 5])
    w = b.node("Unsqueeze", [b.const(b.weights((4, 3, 3)))], axes=[3])
    bias = b.node("Squeeze", [b.node("Unsqueeze", [b.const(b.weights((4,)), "b")], axes=[0])],
                  axes=[0])
    y = b.node("Conv", [x, w, bias], pads=[1, 0, 1, 0])
    params = b.bn_params(4)
    params[0] = b.node("Squeeze", [b.node("Unsqueeze", [params[0]], axes=[-1])], axes=[1])
    b.output(b.bn(y, 4, params=params))
    folded_ok(b.model())


def _sparse(dense: np.ndarray, coordinates: bool = False) -> onnx.SparseTensorProto:
    """``dense`` as a sparse tensor: linear indices, or (NNZ, rank) coordinates."""
    flat = np.flatnonzero(dense)
    values = numpy_helper.from_array(dense.reshape(-1)[flat].astype(dense.dtype), "values")
    idx = np.stack(np.unravel_index(flat, dense.shape), axis=1) if coordinates else flat
    return helper.make_sparse_tensor(values, numpy_helper.from_array(idx.astype(np.int64), "i"),
                                     list(dense.shape))


@pytest.mark.parametrize("where", ["weight", "bias", "bn_scale"])
@pytest.mark.parametrize("coordinates", [False, True])
def test_constant_sparse_value_parameters_fold(where, coordinates):
    b = Builder(seed=3)
    x = b.input("x", ["N", 3, 5, 5])
    w = b.weights((4, 3, 3, 3)).astype(np.float32)
    w.flat[::3] = 0
    bias = np.array([0.5, 0.0, -0.2, 0.0], np.float32)
    params = b.bn_params(4)

    def sparse_node(dense: np.ndarray) -> str:
        return b.node("Constant", [], sparse_value=_sparse(dense, coordinates))

    if where == "bn_scale":
        params[0] = sparse_node(np.array([1.0, 0.5, 0.0, 2.0], np.float32))
    y = b.node("Conv", [x, sparse_node(w) if where == "weight" else b.const(w),
                        sparse_node(bias) if where == "bias" else b.const(bias, "b")],
               pads=[1] * 4)
    b.output(b.bn(y, 4, params=params))
    result = folded_ok(b.model())
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_sparse_value_in_an_evaluated_subgraph_folds():
    b = Builder(seed=5)
    y = b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4)
    params = b.bn_params(4)
    sparse = b.node("Constant", [], sparse_value=_sparse(np.array([0.0, 0.3, 0.0, 1.0],
                                                                  np.float32)))
    params[0] = b.node("Add", [sparse, b.const(np.ones(4), "one")])
    b.output(b.bn(y, 4, params=params))
    folded_ok(b.model())


def test_sparse_integer_value_keeps_its_dtype():
    from bnfold.graph.index import sparse_array

    dense = np.array([[0, 7], [3, 0]], np.int64)
    got = sparse_array(_sparse(dense, coordinates=True), None)
    assert got.dtype == np.int64 and np.array_equal(got, dense)
    assert TensorProto.INT64 == helper.np_dtype_to_tensor_dtype(got.dtype)
