"""Folds rest on inferred shapes; declarations that contradict inference are refused."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import bnfold
from bnfold import Reason
from bnfold.graph.shapes import infer
from modelgen import Builder, random_feeds, run


def _declare(model: onnx.ModelProto, name: str, shape: list, dtype: int = TensorProto.FLOAT,
             graph: onnx.GraphProto | None = None) -> onnx.ModelProto:
    (graph or model.graph).value_info.append(helper.make_tensor_value_info(name, dtype, shape))
    return model


def _same_on_ort(model: onnx.ModelProto, result) -> None:
    feeds = random_feeds(model, 2)
    for want, got in zip(run(model, feeds), run(result.model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lying_rank_that_makes_a_broadcasting_add_look_per_channel_is_refused():
    # Gemm (3,3) + K (3,1) adds K per row; declared rank 3 made (3,1) look like a channel bias
    b = Builder(seed=5)
    g = b.node("Gemm", [b.input("x", [3, 4]), b.const(b.weights((4, 3)))])
    z = b.node("Add", [g, b.const(np.array([[1.0], [2.0], [3.0]]), "k")])
    b.output(b.bn(z, 3))
    model = _declare(b.model(), g, [1, 3, 3])
    result = bnfold.fold(model)
    _same_on_ort(model, result)
    [record] = result.records
    assert record.reason is Reason.SHAPE_MISMATCH
    assert f"{g!r}: declared FLOAT [1, 3, 3], inferred FLOAT [3, 3]" in record.detail


def test_lying_rank_that_makes_a_rank3_matmul_look_2d_is_refused():
    b = Builder(seed=6)
    a = b.node("Relu", [b.input("x", [2, 3, 4])])
    b.output(b.bn(b.node("MatMul", [a, b.const(b.weights((4, 3)))]), 3))
    model = _declare(b.model(), a, [6, 4])
    result = bnfold.fold(model)
    _same_on_ort(model, result)
    [record] = result.records
    assert record.reason is Reason.SHAPE_MISMATCH
    assert "declared FLOAT [6, 4], inferred FLOAT [2, 3, 4]" in record.detail
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "MatMul",
                                                            "BatchNormalization"]


def test_rank_only_a_declaration_knows_is_not_trusted():
    # Reshape to a run-time shape: inference cannot know the rank; the declared [6, 4] may lie
    b = Builder(seed=7)
    b.inputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, ["K"]))
    a = b.node("Reshape", [b.input("x", [2, 3, 4]), "s"])
    y = b.bn(b.node("MatMul", [a, b.const(b.weights((4, 3)))]), 3)
    b.output(b.node("ReduceSum", [y], keepdims=0))
    model = _declare(b.model(), a, [6, 4])
    model.graph.output[0].type.tensor_type.shape.SetInParent()  # a scalar
    [record] = bnfold.fold(model).records
    assert record.reason is Reason.CHANNEL_MISMATCH and "A=None" in record.detail


def test_lying_value_info_inside_a_branch_is_refused_there():
    then_nodes = [helper.make_node("Relu", ["x"], ["a"]),
                  helper.make_node("MatMul", ["a", "w"], ["m"]),
                  helper.make_node("BatchNormalization", ["m", "g", "b", "mu", "v"], ["y"])]
    rng = np.random.default_rng(8)
    inits = [onnx.numpy_helper.from_array(rng.uniform(.5, 1.5, s).astype(np.float32), n)
             for n, s in (("w", (4, 3)), ("g", 3), ("b", 3), ("mu", 3), ("v", 3))]
    then = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)], inits[1:],
        value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, [6, 4])])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["r"])], "else", [],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 3])], [inits[0]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    [record] = bnfold.fold(model).records
    assert record.reason is Reason.SHAPE_MISMATCH and record.graph.endswith("then_branch")


def test_inference_ignores_declared_value_info_and_reports_each_contradiction():
    b = Builder()
    x = b.input("x", ["N", 3, 4])
    r = b.node("Relu", [x])
    s = b.node("Sigmoid", [r])
    t = b.node("Tanh", [s])
    u = b.node("Neg", [t])
    b.output(b.node("Abs", [u]))
    model = b.model()
    _declare(model, r, ["N", 3])                       # rank differs
    _declare(model, s, ["N", 5, 4])                    # a fixed dim differs
    _declare(model, t, ["N", 3, 4], TensorProto.DOUBLE)  # dtype differs
    _declare(model, u, [7, "C", 4])                    # symbolic vs fixed: agrees
    found = infer(model)[()]
    assert found.shapes[r] == [None, 3, 4]
    assert set(found.mismatches) == {r, s, t}
    assert found.mismatches[s] == f"{s!r}: declared FLOAT [?, 5, 4], inferred FLOAT [?, 3, 4]"
    assert "declared DOUBLE" in found.mismatches[t]


def test_lying_graph_output_shape_is_a_mismatch():
    b = Builder()
    y = b.node("Relu", [b.input("x", [2, 3])])
    b.output(y)
    model = b.model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 9
    assert set(infer(model)[()].mismatches) == {y}


def test_initializer_listed_as_input_with_other_dims_is_a_mismatch():
    w = onnx.numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    assert infer(model)[()].mismatches["w"] == "'w': declared FLOAT [4, 3], inferred FLOAT [3, 4]"
