"""bnfold's onnx.reference evaluator: inference BNs of every opset compute the affine map."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bnfold.graph.onnx_reference import evaluator

X = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.5]], np.float32)
PARAMS = [np.array(v, np.float32) for v in ([1.5, 0.5], [0.1, 0.2], [1.0, 2.0], [2.0, 3.0])]


def bn_model(opset: int, outputs: int = 1) -> onnx.ModelProto:
    outs = ["y"] + [f"o{i}" for i in range(1, outputs)]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], outs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in "xgbmv"],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [7, 9, 13, 14, 15, 21])
def test_inference_bn_matches_onnxruntime_at_every_opset(opset: int) -> None:
    feeds = dict(zip("xgbmv", [X] + PARAMS))
    got = evaluator(bn_model(opset)).run(None, feeds)[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(bn_model(opset).SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_onnx_reference_itself_runs_opset_9_bn_in_training_mode() -> None:
    """The bug this module exists for; if onnx fixes it, this test says the fix can go."""
    from onnx.reference import ReferenceEvaluator

    feeds = dict(zip("xgbmv", [X] + PARAMS))
    plain = ReferenceEvaluator(bn_model(9)).run(None, feeds)[0]
    fixed = evaluator(bn_model(9)).run(None, feeds)[0]
    assert not np.allclose(plain, fixed)


def test_training_mode_bn_still_normalises_with_batch_statistics() -> None:
    model = bn_model(15, outputs=3)
    model.graph.node[0].attribute.append(helper.make_attribute("training_mode", 1))
    y = evaluator(model).run(None, dict(zip("xgbmv", [X] + PARAMS)))[0]
    x = X.astype(np.float64)
    want = PARAMS[0] * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + PARAMS[1]
    np.testing.assert_allclose(y, want, rtol=1e-5)


@pytest.mark.parametrize("opset", [9, 13])
def test_inference_bn_inside_a_model_local_function_matches_onnxruntime(opset: int) -> None:
    """Found by the trust campaign: onnx.reference builds a function body's evaluator without
    the caller's new_ops, so a BN in a function (and in an If branch inside it) ran in
    training mode: a folded model was judged 0.0056 off although exact."""
    local = "test.local"
    body = bn_model(opset).graph
    fn = helper.make_function(local, "F", list("xgbmv"), ["y"], list(body.node),
                              [helper.make_opsetid("", opset)])
    call = helper.make_node("F", list("xgbmv"), ["y"], domain=local)
    graph = helper.make_graph([call], "g", list(body.input), list(body.output))
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid(local, 1)])
    feeds = dict(zip("xgbmv", [X] + PARAMS))
    got = evaluator(model).run(None, feeds)[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cin, cout, group, bias", [(2, 2, 2, True), (4, 6, 2, False),
                                                    (3, 3, 3, True), (4, 2, 2, True)])
def test_grouped_conv_transpose_matches_onnxruntime(cin: int, cout: int, group: int,
                                                    bias: bool) -> None:
    """Found by the trust campaign: onnx.reference splits a grouped ConvTranspose's weight by
    output channels, hands every group the whole bias and keeps one channel per group: verify's
    fallback called an exact fold 0.064 off (group 2, bias)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(cin, cout // group, 3, 2)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w")]
    if bias:
        inits.append(onnx.numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"],
                            group=group, strides=[2, 1], pads=[1, 0, 0, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, cin, 4, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.normal(size=(2, cin, 4, 3)).astype(np.float32)}
    got = evaluator(model).run(None, feeds)[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
