"""Constant subgraphs: evaluated under the model's own opsets and confirmed by ONNX Runtime."""
from __future__ import annotations

import os
import signal

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bnfold
import bnfold.graph.consteval
from bnfold.graph.consteval import evaluate
from bnfold.folding.report import Reason
from bnfold.verification import engines, shared_child
from modelgen import Builder, random_feeds, run


def _opset12_scale(b: Builder, kind: str) -> str:
    """A BN scale computed by ops that read ``axes`` from an attribute before opset 13."""
    if kind == "squeeze":  # (1,1,3) -[axes=0]-> (1,3) -T-> (3,1) + (1,3) -> (3,3) -[row 0]-> (3,)
        t = b.node("Squeeze", [b.const(np.array([[[0.9, 1.1, 1.3]]]), "g")], axes=[0])
        t = b.node("Transpose", [t])
        t = b.node("Add", [t, b.const(np.array([[0.0, 0.2, 0.4]]), "k")])
        return b.node("Gather", [t, b.const(np.array(0), "i", np.int64)], axis=0)
    if kind == "reducesum":  # (3,3) -[axes=0, keepdims]-> (1,3) -> (3,): column sums
        t = b.node("ReduceSum", [b.const(np.arange(9).reshape(3, 3) / 10, "m")], axes=[0])
        return b.node("Reshape", [t, b.const(np.array([3]), "s", np.int64)])
    t = b.node("Unsqueeze", [b.const(np.array([0.9, 1.1, 1.3]), "g")], axes=[0])
    return b.node("Reshape", [t, b.const(np.array([3]), "s", np.int64)])


@pytest.mark.parametrize("kind", ["squeeze", "reducesum", "unsqueeze"])
def test_opset12_axes_attribute_param_subgraph_folds_to_ort_numbers(kind):
    b = Builder(opset=12, seed=1)
    y = b.conv(b.input("x", [2, 3, 4, 4]), 3, 3)
    params = b.bn_params(3)
    params[0] = _opset12_scale(b, kind)
    b.output(b.bn(y, 3, params=params))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    feeds = random_feeds(model, 2)
    want, got = run(model, feeds)[0], run(result.model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_evaluation_uses_the_given_opset_not_the_newest():
    node = helper.make_node("Squeeze", ["t"], ["o"], axes=[0])
    t = np.zeros((1, 3, 1), np.float32)
    old = evaluate([node], {"t": t}, "o", opset_imports=[helper.make_opsetid("", 12)],
                   ir_version=7)
    assert old.value.shape == (3, 1)


def test_ai_onnx_spelled_domain_is_the_default_domain():
    node = helper.make_node("Add", ["a", "b"], ["o"])
    one = np.ones(2, np.float32)
    out = evaluate([node], {"a": one, "b": one}, "o",
                   opset_imports=[helper.make_opsetid("ai.onnx", 12)], ir_version=7)
    assert out.value.tolist() == [2.0, 2.0]


def test_disagreement_with_ort_keeps_the_bn_and_says_why(monkeypatch):
    real = bnfold.graph.consteval._run_ort
    monkeypatch.setattr(bnfold.graph.consteval, "_run_ort",
                        lambda *a: {k: v + np.float32(0.5) for k, v in real(*a).items()})
    b = Builder(seed=2)
    y = b.conv(b.input("x", [1, 3, 4, 4]), 3, 3)
    params = b.bn_params(3)
    params[1] = b.node("Add", [params[1], b.const(np.full(3, 0.25))])
    b.output(b.bn(y, 3, params=params))
    [record] = bnfold.fold(b.model()).records
    assert record.reason is Reason.DYNAMIC_PARAMS
    assert "disagree" in record.detail and "values differ" in record.detail


def test_subgraph_ort_cannot_run_keeps_the_bn_and_says_why():
    # ORT's CPU provider has no bfloat16 Mul kernel; onnx.reference has
    b = Builder(seed=3)
    y = b.conv(b.input("x", [1, 3, 4, 4]), 3, 3)
    params = b.bn_params(3)
    half = b.const(np.full(3, 0.5), "h", ml_dtypes.bfloat16)
    product = b.node("Mul", [half, half])
    params[1] = b.node("Cast", [product], to=TensorProto.FLOAT)
    b.output(b.bn(y, 3, params=params))
    [record] = bnfold.fold(b.model()).records
    assert record.reason is Reason.DYNAMIC_PARAMS
    assert "ONNX Runtime cannot evaluate it" in record.detail


def test_float_results_within_a_few_ulps_agree_larger_differences_do_not():
    from bnfold.graph.consteval import _disagreement

    a = np.array([1.0, 2.0], np.float32)
    assert _disagreement(a, np.nextafter(a, np.float32(3))) == ""
    assert "values differ" in _disagreement(a, a * np.float32(1.001))
    assert "shape" in _disagreement(a, a.reshape(2, 1))
    assert _disagreement(np.array([np.nan]), np.array([np.nan])) == ""


def test_evaluated_model_carries_the_ir_version():
    node = helper.make_node("Neg", ["a"], ["o"])
    out = evaluate([node], {"a": np.ones(2, np.float32)}, "o",
                   opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    assert out.value.tolist() == [-1.0, -1.0]


class _KillsOn(engines.OrtProcess):
    """An ORT child that is killed (SIGKILL) as it is handed a model holding ``op``: the crash
    bnfold sees when ORT segfaults on an odd constant subgraph."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op, self.loads = op, 0

    def submit(self, label, *msg):  # noqa: ANN001, ANN201 - as OrtProcess.submit
        if msg[0] == "once":  # a model loaded (and run, and dropped)
            self.loads += 1
            if any(n.op_type == self.op for n in onnx.load_from_string(msg[1]).graph.node):
                child = self._start()
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
        return super().submit(label, *msg)


def _two_computed_bns() -> onnx.ModelProto:
    """Two Conv+BN; the first BN's bias is computed with a Neg, the second's with an Add."""
    b = Builder(seed=4)
    y = b.input("x", [1, 3, 4, 4])
    for op, extra in (("Neg", []), ("Add", [b.const(np.full(3, 0.25))])):
        y = b.conv(y, 3, 3)
        params = b.bn_params(3)
        params[1] = b.node(op, [params[1]] + extra)
        y = b.bn(y, 3, params=params)
    b.output(y)
    return b.model()


def test_ort_crash_on_a_constant_is_a_reason_not_bnfolds_death(monkeypatch):
    with _KillsOn("Neg") as proc:
        monkeypatch.setattr(shared_child, "shared_process", lambda: proc)
        result = bnfold.fold(_two_computed_bns())
        assert proc.loads == 3  # both constants in one model, then each alone to find the culprit
    kept, folded = result.records
    assert kept.reason is Reason.DYNAMIC_PARAMS
    assert "ONNX Runtime crashed evaluating it (SIGKILL)" in kept.detail
    assert folded.folded and result.bn_after == 1


def test_all_constant_subgraphs_of_a_graph_share_one_ort_session(monkeypatch):
    with _KillsOn("no such op") as proc:
        monkeypatch.setattr(shared_child, "shared_process", lambda: proc)
        result = bnfold.fold(_two_computed_bns())
        assert proc.loads == 1
    assert result.bn_after == 0


def test_the_batch_holds_the_constants_non_constant_ops_read_not_activation_chains(monkeypatch):
    """Add/Reshape over activations are computed ops too: they are left out in one linear pass,
    and only the BN's computed parameter goes to the evaluator."""
    b = Builder(seed=5)
    y = b.input("x", [1, 3, 4, 4])
    for _ in range(50):
        y = b.node("Add", [y, b.const(np.full((1, 3, 1, 1), 0.01))])
    y = b.conv(y, 3, 3)
    params = b.bn_params(3)
    params[1] = b.node("Neg", [params[1]])
    b.output(b.bn(y, 3, params=params))
    seen = []
    real = bnfold.graph.consteval.evaluate_all
    monkeypatch.setattr(bnfold.graph.consteval, "evaluate_all",
                        lambda subgraphs, **kw: seen.append([s.output for s in subgraphs])
                        or real(subgraphs, **kw))
    result = bnfold.fold(b.model())
    assert result.bn_after == 0
    assert seen and all(outputs == [params[1]] for outputs in seen)


def test_a_constant_too_big_for_the_batch_is_evaluated_alone_with_its_size_check(monkeypatch):
    import bnfold.graph.index as index

    b = Builder(seed=6)
    y = b.conv(b.input("x", [1, 3, 4, 4]), 3, 3)
    params = b.bn_params(3)
    params[1] = b.node("Neg", [params[1]])  # reads 3 values
    b.output(b.bn(y, 3, params=params))
    monkeypatch.setattr(index, "_MAX_BATCH_LEAF_ELEMENTS", 2)
    assert bnfold.fold(b.model()).bn_after == 0
    monkeypatch.setattr(index, "_MAX_EVAL_ELEMENTS", 2)
    [record] = bnfold.fold(b.model()).records
    assert record.reason is Reason.DYNAMIC_PARAMS
    assert "its constant inputs hold 3 values, too many to evaluate" in record.detail


def _transposed_weight_mlp(b: Builder, layers: int) -> onnx.ModelProto:
    """MatMul(x, Transpose(W)) -> BN per layer, as TorchScript exports a Linear: every weight
    is a computed constant."""
    x = b.input("x", [2, 4])
    for _ in range(layers):
        w = b.node("Transpose", [b.const(b.weights((4, 4)))], perm=[1, 0])
        x = b.bn(b.node("MatMul", [x, w]), 4)
    b.output(x)
    return b.model()


def _evaluated_batches(monkeypatch) -> list[list[str]]:
    seen: list[list[str]] = []
    real = bnfold.graph.consteval.evaluate_all
    monkeypatch.setattr(bnfold.graph.consteval, "evaluate_all",
                        lambda subgraphs, **kw: seen.append([s.output for s in subgraphs])
                        or real(subgraphs, **kw))
    return seen


def test_large_computed_weights_are_evaluated_together_not_one_session_each(monkeypatch):
    import bnfold.graph.index as index

    monkeypatch.setattr(index, "_MAX_BATCH_LEAF_ELEMENTS", 8)  # each 4x4 weight is "large"
    model = _transposed_weight_mlp(Builder(seed=7), 3)
    seen = _evaluated_batches(monkeypatch)
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    weights = [n.output[0] for n in model.graph.node if n.op_type == "Transpose"]
    firsts = [batch for batch in seen if set(batch) & set(weights)]
    assert sorted(firsts[0]) == sorted(weights)  # all three in the first evaluation
    feeds = random_feeds(model, 2)
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_the_weight_batch_is_bounded_by_its_value_budget(monkeypatch):
    import bnfold.graph.index as index

    monkeypatch.setattr(index, "_MAX_BATCH_LEAF_ELEMENTS", 8)
    monkeypatch.setattr(index, "_MAX_WEIGHT_BATCH_ELEMENTS", 32)  # two 4x4 weights per batch
    model = _transposed_weight_mlp(Builder(seed=8), 3)
    seen = _evaluated_batches(monkeypatch)
    assert bnfold.fold(model).bn_after == 0
    weights = {n.output[0] for n in model.graph.node if n.op_type == "Transpose"}
    sizes = [len(set(batch) & weights) for batch in seen if set(batch) & weights]
    assert max(sizes) == 2 and sum(sizes) >= 3


def test_a_constant_an_add_adds_to_an_activation_joins_the_batch(monkeypatch):
    """Gather(table, idx) added to an activation (an attention bias): a non-constant Add reads
    it, so it is evaluated with the graph's batch, not in a session of its own."""
    b = Builder(seed=9)
    y = b.conv(b.input("x", [1, 3, 4, 4]), 3, 3)
    bias = b.node("Gather", [b.const(b.weights((3, 4, 4))), b.const(np.array([2, 0, 1]), "i",
                                                                   np.int64)], axis=0)
    y = b.node("Add", [y, b.node("Unsqueeze", [bias, b.const(np.array([0]), "a", np.int64)])])
    params = b.bn_params(3)
    params[1] = b.node("Neg", [params[1]])
    b.output(b.bn(y, 3, params=params))
    model = b.model()
    seen = _evaluated_batches(monkeypatch)
    bnfold.fold(model)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert add.input[1] in seen[0] and params[1] in seen[0]


def test_large_leaves_reach_ort_through_a_shared_file_small_ones_pickled(monkeypatch):
    """Leaves over the shared-file size are fed from a file the child maps (not serialized
    into the model); an output equal to onnx.reference's bytes is not sent back."""
    from bnfold.verification import engines

    big = np.arange(300_000, dtype=np.float32).reshape(600, 500)  # 1.2 MB
    small = np.arange(6, dtype=np.float32).reshape(2, 3)
    sent = []
    real = engines.OrtProcess.submit

    def submit(self, label, *msg):
        if msg[0] == "once":
            sent.append((len(onnx.load_from_string(msg[1]).graph.initializer), msg[4], msg[6]))
        return real(self, label, *msg)

    monkeypatch.setattr(engines.OrtProcess, "submit", submit)
    for leaf in (big, small):
        node = helper.make_node("Transpose", ["w"], ["t"])
        out = evaluate([node], {"w": leaf}, "t", opset_imports=[helper.make_opsetid("", 17)],
                       ir_version=8)
        np.testing.assert_array_equal(out.value, leaf.T)
    (inits_big, fixed_big, same_big), (inits_small, fixed_small, same_small) = sent
    assert inits_big == inits_small == 0  # fed, not in the model
    assert fixed_big[0] == "shared" and same_big[0] == "same" and same_big[1][0] == "shared"
    assert isinstance(fixed_small, dict) and isinstance(same_small[1], dict)
