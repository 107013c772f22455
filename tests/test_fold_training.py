"""bnfold.folding.training: a fold never touches a tensor that training_info binds or reads."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

import bnfold
from bnfold.folding.report import Reason
from modelgen import Builder, count_bn, max_error


def _conv_bn() -> tuple[onnx.ModelProto, dict[str, str]]:
    """Conv(W, B) -> BN(gamma, beta, mean, var) -> Relu; the tensor names by role."""
    b = Builder(seed=1)
    y = b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4)
    conv = b.nodes[-1]
    out = b.bn(y, 4)
    bn = b.nodes[-1]
    b.output(b.node("Relu", [out]))
    roles = dict(zip(("weight", "bias"), conv.input[1:]))
    roles.update(zip(("gamma", "beta", "mean", "var"), bn.input[1:]))
    return b.model(), roles


def _with_training(model: onnx.ModelProto, target: str, *, bind: bool) -> onnx.ModelProto:
    """An algorithm graph computing target * 0.5; bound to ``target`` or only reading it."""
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    algo = helper.make_graph([helper.make_node("Mul", [target, "half"], ["updated"])], "algo",
                             [], [helper.make_tensor_value_info("updated", TensorProto.FLOAT,
                                                                None)], [half])
    info = model.training_info.add()
    info.algorithm.CopyFrom(algo)
    if bind:
        info.update_binding.add().CopyFrom(onnx.StringStringEntryProto(key=target,
                                                                       value="updated"))
    return model


@pytest.mark.parametrize("role", ["weight", "bias", "mean", "var"])
def test_fold_of_a_tensor_bound_by_training_info_is_refused(role):
    model, roles = _conv_bn()
    model = _with_training(model, roles[role], bind=True)
    onnx.checker.check_model(model)
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    assert result.records[0].reason is Reason.TRAINING_BINDING
    assert roles[role] in result.records[0].detail
    onnx.checker.check_model(result.model)
    assert roles[role] in {t.name for t in result.model.graph.initializer}


def test_initializer_a_training_graph_reads_is_not_rewritten():
    model, roles = _conv_bn()
    model = _with_training(model, roles["weight"], bind=False)
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    result = bnfold.fold(model)
    assert result.records[0].reason is Reason.TRAINING_BINDING
    after = {t.name: t.SerializeToString() for t in result.model.graph.initializer}
    assert after[roles["weight"]] == before[roles["weight"]]
    assert max_error(model, result.model) == 0.0


def test_training_info_on_other_tensors_does_not_block_the_fold():
    model, _ = _conv_bn()
    b = Builder(seed=2)
    spare = b.const(b.weights((4,)), "spare")
    model.graph.initializer.extend(b.inits)
    model = _with_training(model, spare, bind=True)
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    onnx.checker.check_model(result.model)
