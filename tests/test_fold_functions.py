"""bnfold.folding.functions: BNs inside model-local functions are counted, folded when exact."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.folding.report import Reason
from modelgen import count_bn, max_error, tolerance


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(value.astype(np.float32), name))


def _conv_bn_function(*, weight_is_input: bool = False, eps_ref: bool = False,
                      seed: int = 0) -> onnx.FunctionProto:
    """local.ConvBn(X[, W]) = BN(Conv(X, W, B)), weights and BN parameters as Constant nodes."""
    rng = np.random.default_rng(seed)
    nodes = [] if weight_is_input else [_const("W", rng.normal(0, .5, (4, 3, 3, 3)))]
    nodes += [_const("B", rng.normal(0, .5, 4)), _const("g", rng.uniform(.5, 1.5, 4)),
              _const("b", rng.normal(0, .5, 4)), _const("m", rng.normal(0, .5, 4)),
              _const("v", rng.uniform(.5, 2, 4)),
              helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1])]
    bn = helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["Y"])
    if eps_ref:
        ref = onnx.AttributeProto(name="epsilon", ref_attr_name="eps",
                                  type=onnx.AttributeProto.FLOAT)
        bn.attribute.append(ref)
    nodes.append(bn)
    return helper.make_function("local", "ConvBn", ["X", "W"] if weight_is_input else ["X"],
                                ["Y"], nodes, [helper.make_opsetid("", 17)],
                                attributes=["eps"] if eps_ref else [])


def _model(f: onnx.FunctionProto, calls: list[onnx.NodeProto],
           extra_inputs: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        calls, "main",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5]), *extra_inputs],
        [helper.make_tensor_value_info(c.output[0], TensorProto.FLOAT, ["N", 4, 5, 5])
         for c in calls])
    model = helper.make_model(graph, functions=[f], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.ir_version = 10
    return model


def _call(inputs: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("ConvBn", inputs, [out], domain="local", **attrs)


def test_bn_in_a_function_called_twice_is_folded_and_matches_ort():
    model = _model(_conv_bn_function(), [_call(["x"], "y1"), _call(["x"], "y2")])
    result = bnfold.fold(model)
    assert result.bn_before == 1 and result.bn_after == 0, [r.to_dict() for r in result.records]
    record = result.records[0]
    assert record.graph == "function:local.ConvBn" and record.direction == "backward"
    assert count_bn(result.model) == 0
    assert not any(n.op_type == "BatchNormalization" for n in result.model.functions[0].node)
    onnx.checker.check_model(result.model, full_check=True)
    assert max_error(model, result.model) <= tolerance(model)


def test_function_whose_conv_weight_is_a_function_input_keeps_its_bn():
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])
    model = _model(_conv_bn_function(weight_is_input=True), [_call(["x", "w"], "y")], [w])
    result = bnfold.fold(model)
    assert result.bn_before == 1 and result.bn_after == 1
    record = result.records[0]
    assert record.graph == "function:local.ConvBn"
    assert record.reason is Reason.WEIGHT_NOT_CONSTANT and "'W'" in record.detail


def test_bn_whose_epsilon_refers_to_the_call_site_is_kept():
    f = _conv_bn_function(eps_ref=True)
    model = _model(f, [_call(["x"], "y", eps=0.5)])
    onnx.checker.check_model(model)
    result = bnfold.fold(model)
    assert result.bn_after == 1
    record = result.records[0]
    assert record.reason is Reason.UNSUPPORTED_NEIGHBOUR and "'epsilon'" in record.detail
    assert max_error(model, result.model) == 0.0


def test_bn_in_a_subgraph_of_a_function_body_is_folded():
    inner = _conv_bn_function(seed=3)
    branch = helper.make_graph(list(inner.node), "then", [], [
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    body = [_const("flag", np.array(1.0)),
            helper.make_node("Cast", ["flag"], ["cond"], to=TensorProto.BOOL),
            helper.make_node("If", ["cond"], ["Z"], then_branch=branch, else_branch=branch)]
    f = helper.make_function("local", "ConvBn", ["X"], ["Z"], body,
                             [helper.make_opsetid("", 17)])
    model = _model(f, [_call(["x"], "y")])
    result = bnfold.fold(model)
    assert result.bn_before == 2 and result.bn_after == 0, [r.to_dict() for r in result.records]
    assert all(r.graph.startswith("function:local.ConvBn/") for r in result.records)
    assert max_error(model, result.model) <= tolerance(model)
