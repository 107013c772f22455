"""Adversarial inputs for bnfold.fold: each test is the smallest model that tries to break it.

Each test in the first part pinned a bug found by review (fixed since); the rest are regressions.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.errors import BnfoldError
from modelgen import Builder, count_bn, max_error, run, tolerance


def assert_exact(model: onnx.ModelProto, result, rel: float = 1e-4) -> None:
    """The folded model is valid, loads on ORT and matches the original."""
    onnx.checker.check_model(result.model, full_check=True)
    assert max_error(model, result.model) <= tolerance(model, rel), \
        [r.to_dict() for r in result.records]


# --- bugs found by review, fixed ------------------------------------------------------------

def test_gemm_bn_with_same_initializer_as_b_and_c_folds_exactly():
    b = Builder(seed=1)
    x = b.input("x", [4, 4])
    w = b.const(b.weights((4, 4)))
    b.output(b.bn(b.node("Gemm", [x, w, w]), 4))
    model = b.model()
    assert_exact(model, bnfold.fold(model))


def test_bn_into_gemm_with_same_initializer_as_b_and_c_folds_exactly():
    b = Builder(seed=2)
    x = b.input("x", [4, 4])
    w = b.const(b.weights((4, 4)))
    b.output(b.node("Gemm", [b.bn(x, 4), w, w]))
    model = b.model()
    assert_exact(model, bnfold.fold(model))


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_rank_raising_add_between_layer_and_bn_is_not_folded_wrongly(op):
    b = Builder(seed=3)
    if op == "Conv":  # (2, 2, 5) + (1, 1, 1, 1) -> (1, 2, 2, 5): BN channels = conv batch
        y = b.conv(b.input("x", [2, 2, 5]), 2, 2, dims=1)
        y = b.node("Add", [y, b.const(np.full((1, 1, 1, 1), 0.3))])
        c = 2
    else:  # (3, 3) + (1, 1, 1) -> (1, 3, 3): BN channels = Gemm rows
        y = b.node("Gemm", [b.input("x", [3, 3]), b.const(b.weights((3, 3)))])
        y = b.node("Add", [y, b.const(np.full((1, 1, 1), 0.3))])
        c = 3
    b.output(b.node("ReduceSum", [b.bn(y, c)], keepdims=0))
    model = b.model()
    assert_exact(model, bnfold.fold(model))


def _matmul_add_bn_branch(x: str, seed: int) -> onnx.GraphProto:
    """If branch: Identity(x) -> MatMul -> Add(bias) -> BN -> ReduceSum; fixed local names."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(v.astype(np.float32), f"{n}{seed}") for n, v in (
        ("w", rng.normal(0, .5, (4, 4))), ("c", rng.normal(0, .5, 4)),
        ("g", rng.uniform(.5, 1.5, 4)), ("b", rng.normal(0, .5, 4)),
        ("m", rng.normal(0, .5, 4)), ("v", rng.uniform(.5, 2, 4)))]
    nodes = [helper.make_node("Identity", [x], ["a"]),
             helper.make_node("MatMul", ["a", f"w{seed}"], ["mm"]),
             helper.make_node("Add", ["mm", f"c{seed}"], ["s"]),
             helper.make_node("BatchNormalization", ["s"] + [f"{p}{seed}" for p in "gbmv"],
                              ["y"]),
             helper.make_node("ReduceSum", ["y"], [f"out{seed}"], keepdims=0)]
    out = helper.make_tensor_value_info(f"out{seed}", TensorProto.FLOAT, [])
    return helper.make_graph(nodes, f"branch{seed}", [], [out], inits)


def test_sibling_branches_reusing_names_with_other_ranks_fold_exactly():
    # then: rank-2 MatMul (foldable); else: rank-3 MatMul (channel axis 1 is not the columns)
    if_node = helper.make_node("If", ["cond"], ["out"],
                               then_branch=_matmul_add_bn_branch("x2", 2),
                               else_branch=_matmul_add_bn_branch("x3", 1))
    graph = helper.make_graph(
        [if_node], "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("x3", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(0)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x2": rng.normal(size=(4, 4)).astype(np.float32),
                 "x3": rng.normal(size=(1, 4, 4)).astype(np.float32)}
        want, got = run(model, feeds)[0], run(result.model, feeds)[0]
        assert abs(float(want) - float(got)) <= 1e-4 * max(1.0, abs(float(want))), cond


def _ir3(b: Builder, y: str, shape: list[int]) -> onnx.ModelProto:
    """IR 3: a static output type and every initializer listed as a graph input."""
    model = b.model()
    model.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, shape))
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return model


def test_ir3_gemm_bn_with_c_of_shape_1_n_folds():
    b = Builder(seed=5, opset=8, ir_version=3)
    g = b.node("Gemm", [b.input("x", [2, 3]), b.const(b.weights((3, 5))),
                        b.const(b.weights((1, 5)))])
    model = _ir3(b, b.bn(g, 5), [2, 5])
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    assert_exact(model, result)


def test_ir3_matmul_add_bn_with_bias_of_shape_1_n_folds():
    b = Builder(seed=6, opset=13, ir_version=3)
    mm = b.node("MatMul", [b.input("x", [2, 3]), b.const(b.weights((3, 5)))])
    model = _ir3(b, b.bn(b.node("Add", [mm, b.const(b.weights((1, 5)))]), 5), [2, 5])
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    assert_exact(model, result)


def test_nodes_out_of_topological_order_are_an_input_error():
    b = Builder(seed=7)
    y = b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4), 4)
    b.output(b.node("Relu", [y]))
    model = b.model()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    with pytest.raises(BnfoldError):
        bnfold.fold(model)


def test_conv_reading_one_initializer_as_data_and_weight_folds_exactly():
    b = Builder(seed=17)
    w = b.const(b.weights((2, 2, 1, 1)))
    y = b.bn(b.node("Conv", [w, w]), 2)
    b.output(b.node("Add", [y, b.input("x", [1, 2, 1, 1])]))
    model = b.model()
    assert_exact(model, bnfold.fold(model))


def test_opset6_bn_is_an_input_error_naming_the_opset():
    b = Builder(seed=18, opset=6, ir_version=3)
    y = b.bn(b.conv(b.input("x", [2, 3, 4, 4]), 3, 4), 4)
    model = _ir3(b, y, [2, 4, 4, 4])
    with pytest.raises(BnfoldError, match="opset 6"):
        bnfold.fold(model)


def test_matmul_add_bn_keeps_value_info_of_tensors_that_remain():
    b = Builder(seed=19)
    mm = b.node("MatMul", [b.input("x", ["N", 3]), b.const(b.weights((3, 5)))])
    y = b.bn(b.node("Add", [mm, b.const(b.weights((5,)))]), 5)
    b.output(b.node("Relu", [y]))
    model = onnx.shape_inference.infer_shapes(b.model())
    result = bnfold.fold(model)
    assert result.bn_after == 0
    produced = {o for n in result.model.graph.node for o in n.output}
    kept = {v.name for v in result.model.graph.value_info}
    want = {v.name for v in model.graph.value_info} & produced
    assert mm in produced and want <= kept, want - kept


def _raw_model(nodes: list[onnx.NodeProto], x_shape: list, inits: list[onnx.TensorProto]
               ) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a"] * len(x_shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         x_shape)], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("op", ["Gemm", "ConvTranspose"])
def test_neighbour_with_rank_1_weight_is_kept_with_a_reason_not_an_index_error(op):
    ones = numpy_helper.from_array(np.ones(3, np.float32), "s")
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    nodes = [helper.make_node(op, ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "s", "s", "s"], ["y"])]
    model = _raw_model(nodes, ["N", 3] if op == "Gemm" else ["N", 3, 4], [w, ones])
    result = bnfold.fold(model)  # loads: the structural checker does not look at ranks
    assert count_bn(result.model) == 1 and result.records[0].reason is not None


def test_generated_name_does_not_collide_with_a_sparse_initializer():
    b = Builder(seed=20)
    c = b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, bias=False)
    b.nodes[-1].name = "conv"
    b.output(b.bn(c, 4))
    model = b.model()
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], np.float32), "conv_bias_bnfold"),
        numpy_helper.from_array(np.array([0], np.int64), "conv_bias_bnfold_idx"), [4]))
    result = bnfold.fold(model)
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    assert_exact(model, result)


# --- regressions: behaviour that is right today --------------------------------------------

def test_generated_names_do_not_collide_with_existing_bnfold_names():
    b = Builder(seed=8)
    c = b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, bias=False)
    b.nodes[-1].name = "conv"
    y = b.node("Relu", [b.bn(c, 4)])
    b.nodes[-1].output[0] = "conv_bias_bnfold"  # the name the new bias would get
    b.output("conv_bias_bnfold")
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0 and y
    names = [t.name for t in result.model.graph.initializer]
    assert len(names) == len(set(names)) and "conv_bias_bnfold" not in names
    assert_exact(model, result)


def test_unnamed_nodes_fold_and_keep_the_bn_output_name():
    b = Builder(seed=9)
    y = b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4, bias=False), 4)
    b.output(y)
    model = b.model()
    for n in model.graph.node:
        n.name = ""
    result = bnfold.fold(model)
    assert result.bn_after == 0 and result.records[0].bn_output == y
    assert [n.output[0] for n in result.model.graph.node] == [y]
    assert_exact(model, result)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2], "output_padding": [1, 1], "dilations": [2, 1]},
    {"strides": [2, 2], "output_shape": [12, 11]},
])
def test_grouped_conv_transpose_with_output_padding_or_shape_folds(attrs):
    b = Builder(seed=10)
    y = b.conv_transpose(b.input("x", ["N", 4, 5, 5]), 4, 6, group=2, **attrs)
    b.output(b.bn(y, 6))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert_exact(model, result)


def test_bn_into_1x1_same_lower_conv3d_folds_forward():
    b = Builder(seed=11)
    y = b.bn(b.input("x", ["N", 4, 3, 3, 3]), 4)
    b.output(b.conv(y, 4, 6, k=1, pads=0, dims=3, auto_pad="SAME_LOWER"))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0 and result.records[0].direction == "forward"
    assert_exact(model, result)


def test_zero_gamma_and_huge_epsilon_fold():
    b = Builder(seed=12)
    params = b.bn_params(4)
    gamma = b.inits[-4]
    gamma.CopyFrom(numpy_helper.from_array(np.zeros(4, np.float32), gamma.name))
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4), 4, params=params, epsilon=1e6))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert_exact(model, result)


def test_weight_shared_by_conv_and_conv_transpose_is_copied():
    b = Builder(seed=13)
    w = b.const(b.weights((4, 4, 3, 3)))
    c1 = b.node("Conv", [b.input("x", ["N", 4, 5, 5]), w], pads=[1, 1, 1, 1])
    c2 = b.node("ConvTranspose", [b.bn(c1, 4), w], pads=[1, 1, 1, 1])
    b.output(b.bn(c2, 4))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert_exact(model, result)


def test_gemm_with_per_row_c_folds_backward():
    b = Builder(seed=14)
    g = b.node("Gemm", [b.input("x", [3, 4]), b.const(b.weights((4, 5))),
                        b.const(b.weights((3, 1)))], beta=0.5)
    b.output(b.bn(g, 5))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert_exact(model, result)


def test_matmul_weights_through_constant_and_identity_fold_both_ways():
    b = Builder(seed=15, opset=9)
    wc = b.node("Constant", [], value=numpy_helper.from_array(
        b.weights((4, 5)).astype(np.float32)))
    mm = b.node("MatMul", [b.bn(b.input("x", [2, 4]), 4), b.node("Identity", [wc])])
    mm2 = b.node("MatMul", [mm, b.node("Identity", [b.const(b.weights((5, 3)))])])
    b.output(b.bn(mm2, 3))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Gemm"]
    assert_exact(model, result)


def test_bn_output_read_as_gemm_a_and_c_is_kept():
    b = Builder(seed=16)
    y = b.bn(b.input("x", ["N", 3]), 3)
    b.output(b.node("Gemm", [y, b.const(b.weights((3, 3))), y]))
    model = b.model()
    result = bnfold.fold(model)
    assert count_bn(result.model) == 1
    assert result.records[0].reason is not None
    assert max_error(model, result.model) == 0.0


@pytest.mark.parametrize("op, n", [("Identity", 1200), ("Add", 400)])
def test_bn_param_behind_a_long_chain_folds_without_recursion_error(op, n):
    b = Builder(seed=17)
    y = b.conv(b.input("x", [2, 3, 4, 4]), 3, 3)
    params = b.bn_params(3)
    step = b.const(np.full(3, 0.001), "step")
    for _ in range(n):
        params[1] = b.node(op, [params[1]] if op == "Identity" else [params[1], step])
    b.output(b.bn(y, 3, params=params))
    model = b.model()
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]  # the chain went with it
    assert_exact(model, result)
