"""bnfold.folding.check: a fold never adds a checker error, even to an input that already has some.

Each test simulates a rule bug (a monkeypatched rule that emits a bad node) on an input whose
full check already fails, so only a comparison of before and after can catch it.
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from bnfold.folding import check
from bnfold.folding.report import Reason
from bnfold.folding.rules.edit import Edit
from bnfold.io.skeleton import skeleton
from modelgen import Builder, count_bn


def _conv_bn_with_broken_neighbour() -> onnx.ModelProto:
    """Conv -> BN -> Relu, plus an unrelated Conv whose rank-3 weight fails strict inference."""
    b = Builder(seed=1)
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.node("Relu", [b.bn(b.conv(x, 3, 4), 4)]))
    model = b.model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 3, 3), np.float32), "wbad"))
    model.graph.node.append(helper.make_node("Conv", [x, "wbad"], ["bad"], name="badconv"))
    model.graph.output.append(helper.make_tensor_value_info("bad", onnx.TensorProto.FLOAT,
                                                                ["N", "C", "H", "W"]))
    return model


def _buggy_conv_rule(monkeypatch, damage) -> None:  # noqa: ANN001
    """Make every Conv edit call ``damage(g, conv)`` after it is applied."""
    original = Edit.apply

    def buggy(self, g, rw):  # noqa: ANN001, ANN202
        original(self, g, rw)
        if self.node.op_type == "Conv":
            damage(g, self.node)

    monkeypatch.setattr(Edit, "apply", buggy)


def test_input_fails_full_check_before_any_fold():
    model = _conv_bn_with_broken_neighbour()
    assert check.problem(skeleton(model), full=False) is None
    assert "badconv" in check.problem(skeleton(model))


def test_clean_fold_of_an_input_that_fails_the_full_check_is_kept():
    model = _conv_bn_with_broken_neighbour()
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]


def test_new_inference_error_is_undone_when_input_already_fails(monkeypatch):
    def wrong_rank(g, conv):  # noqa: ANN001, ANN202
        tensor = g.initializers[conv.input[1]]
        del tensor.dims[:]
        tensor.dims.extend([4, 27, 1])  # same data, rank 3 for a 2-D conv
    _buggy_conv_rule(monkeypatch, wrong_rank)
    model = _conv_bn_with_broken_neighbour()
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    record = result.records[0]
    assert record.reason is Reason.CHECK_FAILED and "new shape inference error" in record.detail
    assert "badconv" not in record.detail


def test_dangling_input_is_undone_when_input_already_fails(monkeypatch):
    _buggy_conv_rule(monkeypatch, lambda g, conv: conv.input.append("nowhere"))
    model = _conv_bn_with_broken_neighbour()
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    assert result.records[0].reason is Reason.CHECK_FAILED
    assert check.problem(skeleton(result.model), full=False) is None


@pytest.mark.parametrize("broken_input", [False, True])
def test_fold_that_changes_an_inferred_shape_is_undone(monkeypatch, broken_input):
    _buggy_conv_rule(monkeypatch, lambda g, conv: conv.attribute.append(
        helper.make_attribute("strides", [2, 2])))
    if broken_input:
        model = _conv_bn_with_broken_neighbour()
    else:
        b = Builder(seed=2)
        b.output(b.node("Relu", [b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4), 4)]))
        model = b.model()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(  # nothing declared to clash
        model.graph.output[0].name, onnx.TensorProto.FLOAT, ["N", "C", "H", "W"]))
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    assert result.records[0].reason is Reason.CHECK_FAILED
    assert "4, 3, 3] after the fold" in result.records[0].detail


def test_inference_errors_are_counted_per_node():
    model = _conv_bn_with_broken_neighbour()
    errors = check.inference_errors(skeleton(model))
    assert sum(errors.values()) == 1 and "badconv" in next(iter(errors))


def test_fold_that_leaves_a_training_binding_dangling_is_undone(monkeypatch):
    fold_module = sys.modules["bnfold.folding"]
    monkeypatch.setattr(fold_module, "protected_names", lambda model: set())  # a guard bug
    b = Builder(seed=3)
    b.output(b.node("Relu", [b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4), 4)]))
    model = b.model()
    mean = model.graph.node[1].input[3]
    info = model.training_info.add()
    info.update_binding.add().CopyFrom(onnx.StringStringEntryProto(key=mean, value="m2"))
    info.algorithm.CopyFrom(helper.make_graph(
        [helper.make_node("Identity", [mean], ["m2"])], "algo", [],
        [helper.make_tensor_value_info("m2", onnx.TensorProto.FLOAT, None)]))
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    assert result.records[0].reason is Reason.CHECK_FAILED and mean in result.records[0].detail


def test_a_folded_model_that_passes_is_checked_once(monkeypatch):
    """The full check (structural checker and strict inference) passing implies the structural
    checker alone passes: the folded model's check runs onnx.checker once, not twice."""
    b = Builder(seed=3)
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 6, 6]), 3, 4), 4))
    calls = []
    real = check.full_check

    def counting(sk, *, full=True):  # noqa: ANN001, ANN202
        calls.append(full)
        return real(sk, full=full)

    monkeypatch.setattr(check, "full_check", counting)
    result = bnfold.fold(b.model(), prove=False)
    assert result.bn_after == 0 and calls == [True]
