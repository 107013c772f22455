"""bnfold.recalibrate on BNs inside If/Loop/Scan bodies and model-local functions: statistics
over every execution, compared with numpy over the same activations computed independently."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold

C = 3
F32 = TensorProto.FLOAT


def _info(name: str, shape: list | None = None, dtype: int = F32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value), name=name)


def _stats(prefix: str) -> list[np.ndarray]:
    """Scale, bias, mean (0) and variance (1) of a BN with C channels, float32."""
    return [np.full(C, 1.5, np.float32), np.full(C, 0.25, np.float32), np.zeros(C, np.float32),
            np.ones(C, np.float32)]


def _bn_consts(prefix: str) -> tuple[list[onnx.NodeProto], list[str]]:
    names = [f"{prefix}_{k}" for k in "gbmv"]
    return [_const(n, v) for n, v in zip(names, _stats(prefix))], names


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None,
           functions: list | None = None, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits or [])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=imports, functions=functions or [])


def _batches(shape: tuple, n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(2.0, 3.0, shape).astype(np.float32)} for _ in range(n)]


def _expected(acts: list[np.ndarray], axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-channel mean and unbiased variance of every activation, float64."""
    flat = np.concatenate([np.moveaxis(a.astype(np.float64), axis, 0).reshape(C, -1) for a in acts],
                          axis=1)
    return flat.mean(axis=1), flat.var(axis=1, ddof=1)


def _check(result: bnfold.RecalibrationResult, graph: str, expected: tuple) -> None:
    rec = next(r for r in result.records if r.graph == graph)
    assert rec.skipped is None, rec.skipped
    np.testing.assert_allclose(rec.new_mean, expected[0], rtol=1e-6)
    np.testing.assert_allclose(rec.new_var, expected[1], rtol=1e-6)


def _valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _constant(nodes, name: str) -> np.ndarray:  # noqa: ANN001
    return numpy_helper.to_array(next(n for n in nodes if n.output[0] == name).attribute[0].t)


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


def if_model() -> onnx.ModelProto:
    """x -> If(cond): then BN(2x) (statistics: main-graph initializers), else BN(x + 1)
    (statistics: Constants in the branch); cond is True."""
    then_branch = helper.make_graph(
        [_const("two", np.float32(2)), helper.make_node("Mul", ["x", "two"], ["t"]),
         helper.make_node("BatchNormalization", ["t", "tg", "tb", "tm", "tv"], ["ty"], name="bn_then")],
        "then", [], [_info("ty", ["N", C, 4])])
    consts, names = _bn_consts("e")
    else_branch = helper.make_graph(
        consts + [_const("one", np.float32(1)), helper.make_node("Add", ["x", "one"], ["e"]),
                  helper.make_node("BatchNormalization", ["e", *names], ["ey"], name="bn_else")],
        "else", [], [_info("ey", ["N", C, 4])])
    inits = [numpy_helper.from_array(v, f"t{k}") for k, v in zip("gbmv", _stats("t"))]
    inits.append(numpy_helper.from_array(np.array(True), "cond"))
    return _model([helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch,
                                    else_branch=else_branch)],
                  [_info("x", ["N", C, 4])], [_info("y", ["N", C, 4])], inits)


def test_if_recalibrates_the_taken_branch_and_leaves_the_other_unchanged() -> None:
    model, batches = if_model(), _batches((5, C, 4))
    result = bnfold.recalibrate(model, batches)
    _check(result, "main/if.then_branch", _expected([b["x"] * np.float32(2) for b in batches]))
    np.testing.assert_allclose(_init(result.model.graph, "tm"),
                               _expected([b["x"] * np.float32(2) for b in batches])[0], rtol=1e-6)
    assert "| bn_then | main/if.then_branch | 1 |" in result.to_markdown()
    other = next(r for r in result.records if r.graph == "main/if.else_branch")
    assert other.skipped is not None and other.skipped.startswith("no data reached it")
    else_branch = _branch(result.model.graph.node[0], "else_branch")
    np.testing.assert_array_equal(_constant(else_branch.node, "e_m"), np.zeros(C))
    _valid(result.model)


def loop_model(with_if: bool = False, opset: int = 17) -> onnx.ModelProto:
    """A Loop of 3 iterations whose body normalizes x * (i + 1) + i and scans it out; with_if:
    only on even iterations (an If inside the body)."""
    consts, names = _bn_consts("l")
    body_nodes = [helper.make_node("Cast", ["i"], ["fi"], to=F32), _const("one", np.float32(1)),
                  helper.make_node("Add", ["fi", "one"], ["fi1"]),
                  helper.make_node("Mul", ["x", "fi1"], ["xs"]),
                  helper.make_node("Add", ["xs", "fi"], ["t"]),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    bn = helper.make_node("BatchNormalization", ["t", *names], ["ty"], name="bn_loop")
    if with_if:
        branch = helper.make_graph([bn], "even", [], [_info("ty", ["N", C, 4])])
        skip = helper.make_graph([helper.make_node("Identity", ["t"], ["tz"])], "odd", [],
                                 [_info("tz", ["N", C, 4])])
        body_nodes += [_const("two_i", np.int64(2)), _const("zero_i", np.int64(0)),
                       helper.make_node("Mod", ["i", "two_i"], ["par"]),
                       helper.make_node("Equal", ["par", "zero_i"], ["even"]),
                       helper.make_node("If", ["even"], ["out"], name="parity",
                                        then_branch=branch, else_branch=skip)]
    else:
        body_nodes += [bn, helper.make_node("Identity", ["ty"], ["out"])]
    body = helper.make_graph(consts + body_nodes, "body",
                             [_info("i", [], TensorProto.INT64), _info("cond_in", [], TensorProto.BOOL)],
                             [_info("cond_out", [], TensorProto.BOOL), _info("out", ["N", C, 4])])
    return _model([helper.make_node("Loop", ["trip", ""], ["ys"], name="loop", body=body)],
                  [_info("x", ["N", C, 4])], [_info("ys", [3, "N", C, 4])],
                  [numpy_helper.from_array(np.array(3, np.int64), "trip")], opset=opset)


def _loop_acts(batches: list[dict], iterations: list[int]) -> list[np.ndarray]:
    return [b["x"] * np.float32(i + 1) + np.float32(i) for b in batches for i in iterations]


@pytest.mark.parametrize("opset", [11, 17])  # reduce axes as an attribute / as an input
def test_loop_body_bn_gets_the_statistics_of_every_iteration(opset: int) -> None:
    batches = _batches((4, C, 4))
    result = bnfold.recalibrate(loop_model(opset=opset), batches)
    _check(result, "main/loop.body", _expected(_loop_acts(batches, [0, 1, 2])))
    body = _branch(result.model.graph.node[0], "body")
    np.testing.assert_allclose(_constant(body.node, "l_v"),
                               _expected(_loop_acts(batches, [0, 1, 2]))[1], rtol=1e-6)
    _valid(result.model)


def test_bn_in_an_if_inside_a_loop_counts_only_the_iterations_that_take_it() -> None:
    batches = _batches((4, C, 4), seed=3)
    result = bnfold.recalibrate(loop_model(with_if=True), batches)
    _check(result, "main/loop.body/parity.then_branch", _expected(_loop_acts(batches, [0, 2])))
    _valid(result.model)


def test_scan_body_bn_gets_the_statistics_of_every_step() -> None:
    consts, names = _bn_consts("s")
    body = helper.make_graph(
        consts + [_const("two", np.float32(2)), _const("axis0", np.array([0], np.int64)),
                  helper.make_node("Mul", ["e", "two"], ["t"]),
                  helper.make_node("BatchNormalization", ["t", *names], ["ty"], name="bn_scan"),
                  helper.make_node("ReduceSum", ["e", "axis0"], ["es"], keepdims=0),
                  helper.make_node("Add", ["s_in", "es"], ["s_out"])],
        "body", [_info("s_in", [C]), _info("e", ["N", C])], [_info("s_out", [C]), _info("ty", ["N", C])])
    model = _model([helper.make_node("Scan", ["s0", "x"], ["s", "ys"], name="scan", body=body,
                                     num_scan_inputs=1, scan_input_axes=[1])],
                   [_info("x", ["N", 5, C])], [_info("s", [C]), _info("ys", [5, "N", C])],
                   [numpy_helper.from_array(np.zeros(C, np.float32), "s0")])
    batches = _batches((4, 5, C), seed=5)
    result = bnfold.recalibrate(model, batches)
    _check(result, "main/scan.body", _expected([b["x"] * np.float32(2) for b in batches], axis=2))
    _valid(result.model)


def norm_function() -> onnx.FunctionProto:
    """local.Norm(X) = BN(X) with its statistics as Constants in the body."""
    consts, names = _bn_consts("f")
    return helper.make_function("local", "Norm", ["X"], ["Y"], consts + [
        helper.make_node("BatchNormalization", ["X", *names], ["Y"], name="bn_fn")],
        [helper.make_opsetid("", 17)])


def test_function_called_twice_gets_the_statistics_of_both_calls() -> None:
    model = _model([_const("three", np.float32(3)), helper.make_node("Mul", ["x", "three"], ["x3"]),
                    helper.make_node("Norm", ["x"], ["y1"], domain="local", name="call1"),
                    helper.make_node("Norm", ["x3"], ["y2"], domain="local", name="call2")],
                   [_info("x", ["N", C, 4])], [_info("y1", ["N", C, 4]), _info("y2", ["N", C, 4])],
                   functions=[norm_function()])
    batches = _batches((4, C, 4), seed=7)
    result = bnfold.recalibrate(model, batches)
    expected = _expected([b["x"] for b in batches] + [b["x"] * np.float32(3) for b in batches])
    _check(result, "function:local.Norm", expected)
    body = result.model.functions[0].node
    np.testing.assert_allclose(_constant(body, "f_m"), expected[0], rtol=1e-6)
    np.testing.assert_allclose(_constant(body, "f_v"), expected[1], rtol=1e-6)
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    _valid(result.model)


def test_function_applied_to_its_own_output_is_measured_in_one_pass_with_its_old_statistics() -> None:
    model = _model([helper.make_node("Norm", ["x"], ["y1"], domain="local", name="call1"),
                    helper.make_node("Norm", ["y1"], ["y2"], domain="local", name="call2")],
                   [_info("x", ["N", C, 4])], [_info("y2", ["N", C, 4])], functions=[norm_function()])
    batches = _batches((4, C, 4), seed=8)
    g, b, m, v = _stats("f")
    eps = np.float32(1e-5)
    old_bn = [((a["x"] - m[None, :, None]) / np.sqrt(v[None, :, None] + eps)) * g[None, :, None]
              + b[None, :, None] for a in batches]
    result = bnfold.recalibrate(model, batches)
    assert result.passes == 1
    _check(result, "function:local.Norm", _expected([a["x"] for a in batches] + old_bn))


def test_function_holding_an_if_pools_only_the_calls_that_take_the_branch() -> None:
    consts, names = _bn_consts("g")
    then_branch = helper.make_graph(
        [_const("two", np.float32(2)), helper.make_node("Mul", ["X", "two"], ["t"]),
         helper.make_node("BatchNormalization", ["t", *names], ["ty"], name="bn_gate")],
        "then", [], [_info("ty", None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["X"], ["ey"])], "else", [],
                                    [_info("ey", None)])
    gate = helper.make_function("local", "Gate", ["X", "Cond"], ["Y"], consts + [
        helper.make_node("If", ["Cond"], ["Y"], name="gate_if", then_branch=then_branch,
                         else_branch=else_branch)], [helper.make_opsetid("", 17)])
    model = _model([_const("on", np.array(True)), _const("off", np.array(False)),
                    _const("one", np.float32(1)), helper.make_node("Add", ["x", "one"], ["x1"]),
                    helper.make_node("Gate", ["x", "on"], ["y1"], domain="local", name="call_on"),
                    helper.make_node("Gate", ["x1", "off"], ["y2"], domain="local", name="call_off")],
                   [_info("x", ["N", C, 4])], [_info("y1", ["N", C, 4]), _info("y2", ["N", C, 4])],
                   functions=[gate])
    batches = _batches((4, C, 4), seed=9)
    result = bnfold.recalibrate(model, batches)
    expected = _expected([b["x"] * np.float32(2) for b in batches])
    _check(result, "function:local.Gate/gate_if.then_branch", expected)
    np.testing.assert_allclose(_constant(result.model.functions[0].node, "g_m"), expected[0],
                               rtol=1e-6)
    _valid(result.model)


def test_statistics_shared_with_another_reader_in_a_body_are_copied() -> None:
    model = if_model()
    then_branch = _branch(model.graph.node[0], "then_branch")
    then_branch.node.extend([helper.make_node("ReduceSum", ["tm"], ["tm_sum"], keepdims=0),
                             helper.make_node("Add", ["ty", "tm_sum"], ["ty2"])])
    then_branch.output[0].name = "ty2"
    result = bnfold.recalibrate(model, _batches((5, C, 4)))
    np.testing.assert_array_equal(_init(result.model.graph, "tm"), np.zeros(C))
    bn = next(n for n in _branch(result.model.graph.node[0], "then_branch").node
              if n.op_type == "BatchNormalization")
    assert bn.input[3] != "tm"
    _valid(result.model)


def test_loop_carried_bn_sees_its_own_earlier_outputs_under_its_old_statistics() -> None:
    consts, names = _bn_consts("c")
    body = helper.make_graph(
        consts + [helper.make_node("BatchNormalization", ["h_in", *names], ["h_out"], name="bn_rnn"),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                  helper.make_node("Identity", ["h_in"], ["seen"])],
        "body", [_info("i", [], TensorProto.INT64), _info("cond_in", [], TensorProto.BOOL),
                 _info("h_in", ["N", C, 4])],
        [_info("cond_out", [], TensorProto.BOOL), _info("h_out", ["N", C, 4]),
         _info("seen", ["N", C, 4])])
    model = _model([helper.make_node("Loop", ["trip", "", "x"], ["h", "hs"], name="rnn", body=body)],
                   [_info("x", ["N", C, 4])], [_info("h", ["N", C, 4]), _info("hs", [3, "N", C, 4])],
                   [numpy_helper.from_array(np.array(3, np.int64), "trip")])
    batches = _batches((4, C, 4), seed=11)
    g, b, m, v = (a[None, :, None] for a in _stats("c"))
    acts = []
    for a in batches:
        h = a["x"]
        for _ in range(3):
            acts.append(h)
            h = (h - m) / np.sqrt(v + np.float32(1e-5)) * g + b
    result = bnfold.recalibrate(model, batches)
    assert result.passes == 1
    _check(result, "main/rnn.body", _expected(acts))
    _valid(result.model)
