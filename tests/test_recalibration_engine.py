"""bnfold.recalibrate: every BN's statistics measured in inference mode, level by level."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.errors import BnfoldError, InputError


def _bn_params(c: int, prefix: str, rng: np.random.Generator) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in
            (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(0, 0.1, c)),
             ("m", np.zeros(c)), ("v", np.ones(c)))]


def chain_model(shared_stats: bool = False) -> onnx.ModelProto:
    """x -> Conv1 -> BN1 -> Relu -> Conv2 -> BN2 -> y2; x -> Conv3 -> BN3 -> y3 (BN3 level 0)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, s).astype(np.float32), n)
             for n, s in (("w1", (3, 2, 3, 3)), ("w2", (3, 3, 1, 1)), ("w3", (3, 2, 1, 1)))]
    for p in ("bn1", "bn2", "bn3"):
        inits += _bn_params(3, p, rng)
    bn3_in = ["c3", "bn3_g", "bn3_b", "bn1_m" if shared_stats else "bn3_m", "bn3_v"]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn1_g", "bn1_b", "bn1_m", "bn1_v"],
                              ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c2", "bn2_g", "bn2_b", "bn2_m", "bn2_v"],
                              ["y2"], name="bn2"),
             helper.make_node("Conv", ["x", "w3"], ["c3"], name="conv3"),
             helper.make_node("BatchNormalization", bn3_in, ["y3"], name="bn3")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 5, 5]) for n in ("y2", "y3")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def data(n_batches: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(2.0, 3.0, (5, 2, 5, 5)).astype(np.float32)} for _ in range(n_batches)]


def intermediate(model: onnx.ModelProto, name: str, batches: list[dict]) -> np.ndarray:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([name], b)[0] for b in batches]).astype(np.float64)


def stats_of(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return flat.mean(axis=1), flat.var(axis=1, ddof=1)


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_each_bn_is_measured_after_the_bns_before_it_are_recalibrated() -> None:
    model, batches = chain_model(), data()
    result = bnfold.recalibrate(model, batches)
    new = result.model
    assert result.passes == 2 and [r.level for r in result.records] == [0, 1, 0]
    mean1, var1 = stats_of(intermediate(model, "c1", batches))
    np.testing.assert_allclose(init(new, "bn1_m"), mean1, rtol=1e-5)
    np.testing.assert_allclose(init(new, "bn1_v"), var1, rtol=1e-5)
    # BN2's input depends on BN1: measured in the model whose BN1 is already recalibrated
    mean2, var2 = stats_of(intermediate(new, "c2", batches))
    np.testing.assert_allclose(init(new, "bn2_m"), mean2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(init(new, "bn2_v"), var2, rtol=1e-5)
    stale2 = stats_of(intermediate(model, "c2", batches))[1]
    assert not np.allclose(stale2, var2, rtol=1e-3)  # the order matters in this model


def test_pooled_statistics_do_not_depend_on_the_batching() -> None:
    batches = data(6)
    whole = [{"x": np.concatenate([b["x"] for b in batches])}]
    a = bnfold.recalibrate(chain_model(), batches).model
    b = bnfold.recalibrate(chain_model(), whole).model
    for name in ("bn1_m", "bn1_v", "bn2_m", "bn2_v"):
        np.testing.assert_allclose(init(a, name), init(b, name), rtol=1e-5, atol=1e-6)


def test_the_input_model_is_not_changed_and_the_output_is_valid() -> None:
    model = chain_model()
    before = model.SerializeToString()
    result = bnfold.recalibrate(model, data())
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]


def test_statistics_shared_by_two_bns_are_copied_not_overwritten_for_both() -> None:
    result = bnfold.recalibrate(chain_model(shared_stats=True), data())
    bn = {n.name: n for n in result.model.graph.node}
    assert bn["bn1"].input[3] != bn["bn3"].input[3]
    assert not np.allclose(init(result.model, bn["bn1"].input[3]),
                           init(result.model, bn["bn3"].input[3]))


def test_constant_node_statistics_are_recalibrated() -> None:
    model = chain_model()
    for name in ("bn1_m", "bn1_v"):
        t = next(t for t in model.graph.initializer if t.name == name)
        model.graph.initializer.remove(t)
        model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=t))
    result = bnfold.recalibrate(model, data())
    mean1, _ = stats_of(intermediate(chain_model(), "c1", data()))
    np.testing.assert_allclose(init(result.model, "bn1_m"), mean1, rtol=1e-5)


def test_report_shift_and_near_zero_variance_channels() -> None:
    model = chain_model()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w = numpy_helper.to_array(w1).copy()
    w[1] = 0  # channel 1 of conv1 is constant: variance 0
    w1.CopyFrom(numpy_helper.from_array(w, "w1"))
    result = bnfold.recalibrate(model, data())
    rec = result.records[0]
    assert rec.near_zero_var == [1]
    d = result.to_dict()["records"][0]
    assert d["max_shift_sd"] > 0.5 and d["near_zero_var_channels"] == [1]
    assert "| bn1 | main | 1 | 3 |" in result.to_markdown()


def test_one_shot_iterator_is_refused_when_several_passes_are_needed() -> None:
    with pytest.raises(BnfoldError, match="2 passes"):
        bnfold.recalibrate(chain_model(), iter(data()))


def test_a_function_returning_fresh_iterators_works() -> None:
    result = bnfold.recalibrate(chain_model(), lambda: iter(data()))
    assert len(result.recalibrated) == 3


@pytest.mark.parametrize("feeds,msg", [
    ([], "empty"),
    ([{"x": np.full((2, 2, 5, 5), np.nan, np.float32)}], "NaN"),
    ([{"x": np.zeros((2, 3, 5, 5), np.float32)}], "axis 1"),
    ([{"x": np.zeros((2, 2, 5), np.float32)}], "shape"),
    ([{"x": np.zeros((2, 2, 5, 5), np.int64)}], "dtype"),
    ([{"y": np.zeros((2, 2, 5, 5), np.float32)}], "lacks input"),
])
def test_bad_data_is_an_input_error(feeds: list, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        bnfold.recalibrate(chain_model(), feeds)


def test_statistics_that_are_graph_inputs_are_refused() -> None:
    model = chain_model()
    model.graph.input.append(helper.make_tensor_value_info("bn2_v", TensorProto.FLOAT, [3]))
    with pytest.raises(InputError, match="graph input"):
        bnfold.recalibrate(model, data())


def test_model_without_bn_is_refused() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    with pytest.raises(InputError, match="no BatchNormalization"):
        bnfold.recalibrate(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                           [{"x": np.zeros((1, 2), np.float32)}])


def test_bn_in_an_if_branch_not_taken_is_left_unchanged_and_the_taken_one_recalibrated() -> None:
    model = chain_model()
    branch = helper.make_graph(
        [helper.make_node("BatchNormalization", ["y3", "bn3_g", "bn3_b", "bn3_m", "bn3_v"],
                          ["z"], name="inner_bn")], "then", [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 5, 5])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["w"], name="if",
                                             then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 3, 5, 5]))
    result = bnfold.recalibrate(model, data())
    skipped = [r for r in result.records if r.skipped]
    assert [r.graph for r in skipped] == ["main/if.else_branch"] and "no data" in skipped[0].skipped
    assert len(result.recalibrated) == 4
    inner = next(r for r in result.records if r.graph == "main/if.then_branch")
    assert inner.level == 1  # it reads BN3's output: measured after BN3 is recalibrated


def test_bn_statistics_passed_into_a_function_are_reported_as_skipped() -> None:
    model = chain_model()
    body = [helper.make_node("BatchNormalization", ["X", "G", "B", "M", "V"], ["Y"], name="fbn")]
    model.functions.append(helper.make_function("local", "Norm", ["X", "G", "B", "M", "V"], ["Y"],
                                                body, [helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("Norm", ["y3", "bn3_g", "bn3_b", "bn3_m", "bn3_v"],
                                             ["z"], domain="local", name="call"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 5, 5]))
    result = bnfold.recalibrate(model, data())
    skipped = [r for r in result.records if r.skipped]
    assert [r.graph for r in skipped] == ["function:local.Norm"] and len(result.recalibrated) == 3
    assert "input 'M' of function local.Norm" in skipped[0].skipped


def test_a_model_that_crashes_onnxruntime_is_one_clear_error_not_a_dead_process() -> None:
    from modelgen import bn9

    feeds = [{"x": np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)}]
    with pytest.raises(InputError, match="crashed"):
        bnfold.recalibrate(bn9(empty_optional_outputs=True), feeds)
    assert len(bnfold.recalibrate(bn9(empty_optional_outputs=False), feeds).recalibrated) == 1
