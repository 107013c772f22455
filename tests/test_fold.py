"""The fold engine, case by case: every pattern folds exactly; every refusal has its reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold import Reason
from modelgen import Builder, count_bn, max_error, random_feeds, run, tolerance


def folded_ok(model: onnx.ModelProto, expect_bn_after: int = 0, rel: float = 1e-4):
    """Fold, then check validity, BN count and ORT equivalence at batch 1 and 8."""
    result = bnfold.fold(model)
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, check_type=True, strict_mode=True)
    assert count_bn(result.model) == expect_bn_after, [r.to_dict() for r in result.records]
    assert result.bn_after == expect_bn_after
    assert max_error(model, result.model) <= tolerance(model, rel)
    return result


def only_record(result):
    assert len(result.records) == 1
    return result.records[0]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("group,cin,cout", [(1, 4, 6), (2, 4, 6), (4, 4, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds_backward(dims, group, cin, cout, bias):
    b = Builder(seed=dims * 10 + group)
    x = b.input("x", ["N", cin] + [6] * dims)
    y = b.bn(b.conv(x, cin, cout, group=group, bias=bias, dims=dims), cout)
    b.output(y)
    rec = only_record(folded_ok(b.model()))
    assert rec.direction == "backward" and rec.target.startswith("Conv")


@pytest.mark.parametrize("group,cin,cout", [(1, 4, 6), (2, 4, 6), (4, 4, 8)])
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_transpose_bn_scales_the_right_axis(group, cin, cout, dims):
    b = Builder(seed=group)
    x = b.input("x", ["N", cin] + [5] * dims)
    y = b.conv_transpose(x, cin, cout, group=group, dims=dims, strides=[2] * dims)
    b.output(b.bn(y, cout))
    folded_ok(b.model())


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_add_per_channel_bias_between_layer_and_bn_is_merged(op):
    b = Builder(seed=3)
    x = b.input("x", ["N", 4, 5, 5])
    y = b.conv(x, 4, 6, bias=False) if op == "Conv" else b.conv_transpose(x, 4, 6, bias=False)
    y = b.node("Add", [y, b.const(b.weights((6, 1, 1)))])
    b.output(b.bn(y, 6))
    result = folded_ok(b.model())
    assert [n.op_type for n in result.model.graph.node] == [op]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), ()])
def test_gemm_bn_folds_with_transposes_alpha_beta_and_c(trans_a, trans_b, c_shape):
    b = Builder(seed=trans_a * 2 + trans_b)
    x = b.input("x", [3, 4] if trans_a else ["N", 3])
    a_in = x
    ins = [a_in, b.const(b.weights((5, 3) if trans_b else (3, 5)))]
    if c_shape is not None:
        ins.append(b.const(b.weights(c_shape)))
    y = b.node("Gemm", ins, transA=trans_a, transB=trans_b, alpha=0.7, beta=1.3)
    b.output(b.bn(y, 5))
    rec = only_record(folded_ok(b.model()))
    assert rec.target.startswith("Gemm")


def test_matmul_bn_becomes_one_gemm():
    b = Builder()
    x = b.input("x", ["N", 3])
    b.output(b.bn(b.node("MatMul", [x, b.const(b.weights((3, 5)))]), 5))
    result = folded_ok(b.model())
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]


def test_matmul_add_bn_folds_into_weight_and_add():
    b = Builder()
    x = b.input("x", ["N", 3])
    y = b.node("Add", [b.node("MatMul", [x, b.const(b.weights((3, 5)))]),
                       b.const(b.weights((5,)))])
    b.output(b.bn(y, 5))
    result = folded_ok(b.model())
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Add"]


def test_matmul_on_rank3_input_is_refused_channel_axis_is_not_columns():
    b = Builder()
    x = b.input("x", ["N", 4, 3])
    b.output(b.bn(b.node("MatMul", [x, b.const(b.weights((3, 4)))]), 4))
    rec = only_record(folded_ok(b.model(), expect_bn_after=1))
    assert rec.reason is Reason.CHANNEL_MISMATCH


@pytest.mark.parametrize("group", [1, 2])
def test_bn_before_unpadded_conv_folds_forward(group):
    b = Builder(seed=5)
    x = b.input("x", ["N", 4, 6, 6])
    y = b.bn(x, 4)
    b.output(b.conv(y, 4, 6, pads=0, group=group, strides=[2, 2], dilations=[1, 1]))
    model = b.model()
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(model).graph.value_info)
    result = folded_ok(model)
    assert only_record(result).direction == "forward"
    produced = {o for n in result.model.graph.node for o in n.output}
    assert all(vi.name in produced for vi in result.model.graph.value_info)


def test_bn_before_padded_conv_is_kept_with_reason():
    b = Builder()
    x = b.input("x", ["N", 4, 6, 6])
    b.output(b.conv(b.bn(x, 4), 4, 6, pads=1))
    rec = only_record(folded_ok(b.model(), expect_bn_after=1))
    assert rec.reason is Reason.PADDED_CONSUMER and "pads" in rec.detail


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_bn_before_gemm_or_matmul_folds_forward(op):
    b = Builder()
    x = b.input("x", ["N", 4])
    w = b.const(b.weights((6, 4) if op == "Gemm" else (4, 6)))
    attrs = {"transB": 1, "alpha": 0.5} if op == "Gemm" else {}
    extra = [b.const(b.weights((6,)))] if op == "Gemm" else []
    b.output(b.node(op, [b.bn(x, 4), w] + extra, **attrs))
    assert only_record(folded_ok(b.model())).direction == "forward"


def test_chain_conv_bn_bn_folds_both():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.bn(b.conv(x, 3, 4), 4), 4))
    result = folded_ok(b.model())
    conv = result.model.graph.node[0]
    assert conv.op_type == "Conv" and [r.target for r in result.records] == [conv.name] * 2


def test_params_from_constant_nodes_and_identity():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    params = []
    for i, v in enumerate([np.ones(4), np.zeros(4), np.full(4, 0.3), np.full(4, 2.0)]):
        c = b.node("Constant", [], value=numpy_helper.from_array(v.astype(np.float32)))
        params.append(b.node("Identity", [c]) if i % 2 else c)
    b.output(b.bn(y, 4, params=params))
    result = folded_ok(b.model())
    assert not any(n.op_type in ("Constant", "Identity") for n in result.model.graph.node)


def test_exporter_computed_zero_bias_subgraph_is_constant():
    """Conv(x, W, Expand(CastLike(0, W), Shape(W)[0:1])) as torch's exporter emits it."""
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    w = b.const(b.weights((4, 3, 3, 3)))
    zero = b.node("Constant", [], value=numpy_helper.from_array(np.array(0, np.int64)))
    zero = b.node("CastLike", [zero, w])
    shape = b.node("Shape", [w], start=0, end=1)
    bias = b.node("Expand", [zero, shape])
    y = b.node("Conv", [x, w, bias], pads=[1, 1, 1, 1])
    b.output(b.bn(y, 4))
    result = folded_ok(b.model(), rel=1e-4)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_shared_weight_is_copied_and_other_reader_unchanged():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    w = b.const(b.weights((4, 3, 3, 3)))
    y1 = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    y2 = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b.output(b.bn(y1, 4))
    b.output(y2)
    model = b.model()
    result = folded_ok(model)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] != w and convs[1].input[1] == w
    inits = {t.name: t for t in result.model.graph.initializer}
    before = {t.name: t for t in model.graph.initializer}
    assert inits[w] == before[w]


def if_model_with_conv_bn_branches() -> onnx.ModelProto:
    """An If whose two branches each run Conv -> BN on the outer input x."""
    def branch(seed: int) -> onnx.GraphProto:
        b = Builder(seed=seed)
        y = b.bn(b.conv("x", 3, 4), 4)
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
        return helper.make_graph(b.nodes, f"branch{seed}", [], [out], b.inits)

    b = Builder()
    b.input("x", [1, 3, 5, 5])
    cond = b.const(np.array(True), "cond", dtype=np.bool_)
    b.output(b.node("If", [cond], then_branch=branch(1), else_branch=branch(2)))
    return b.model()


def test_bn_inside_if_branches_is_folded():
    model = if_model_with_conv_bn_branches()
    result = bnfold.fold(model)
    assert count_bn(result.model) == 0 and len(result.records) == 2
    assert all(r.graph.startswith("main/If") for r in result.records)
    assert max_error(model, result.model, batches=(1,)) < 1e-4


# --- refusals: the model stays numerically identical and each BN says why -------------------

def refused(model: onnx.ModelProto, reason: Reason) -> None:
    result = bnfold.fold(model)
    assert count_bn(result.model) == count_bn(model) >= 1
    assert {r.reason for r in result.records} == {reason}, [r.to_dict() for r in result.records]
    assert max_error(model, result.model) == 0.0


def test_training_mode_bn_is_refused():
    b = Builder(opset=15)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    out = b.node("BatchNormalization", [y] + b.bn_params(4), n_out=3, training_mode=1)
    b.output(out)
    result = bnfold.fold(b.model())
    assert only_record(result).reason is Reason.TRAINING_MODE
    assert count_bn(result.model) == 1


def test_bn_with_training_outputs_is_refused():
    b = Builder(opset=9)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    out = b.node("BatchNormalization", [y] + b.bn_params(4), n_out=5)
    b.output(out)
    result = bnfold.fold(b.model())
    assert only_record(result).reason is Reason.TRAINING_OUTPUTS


def test_opset7_spatial0_is_refused_not_crashed():
    b = Builder(opset=7)
    x = b.input("x", [2, 3, 5, 5])
    y = b.conv(x, 3, 4)
    params = [b.const(b.rng.uniform(0.5, 1.5, (4, 5, 5))) for _ in range(4)]
    b.output(b.node("BatchNormalization", [y] + params, spatial=0))
    model = b.model()
    for t in model.graph.initializer:  # IR 3 lists every initializer as a graph input
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    result = bnfold.fold(model)
    assert only_record(result).reason is Reason.SPATIAL_0
    assert result.model.SerializeToString() == model.SerializeToString()


def test_opset7_ir3_initializers_listed_as_inputs_are_constants():
    b = Builder(opset=7, ir_version=3)
    x = b.input("x", [2, 3, 5, 5])
    b.output(b.bn(b.conv(x, 3, 4), 4))
    model = b.model()
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    result = bnfold.fold(model)
    assert result.bn_after == 0
    assert max_error(model, result.model, batches=(2,)) < 1e-4


def test_params_that_are_graph_inputs_are_dynamic():
    b = Builder(ir_version=8)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    params = b.bn_params(4)
    b.input(params[2], [4])  # running mean overridable at run time
    b.output(b.bn(y, 4, params=params))
    refused_model = b.model()
    result = bnfold.fold(refused_model)
    assert only_record(result).reason is Reason.DYNAMIC_PARAMS


def test_producer_with_other_consumers_is_refused():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    b.output(b.bn(y, 4))
    b.output(b.node("Relu", [y]))
    refused(b.model(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)


def test_producer_output_that_is_a_graph_output_is_refused():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    b.output(b.bn(y, 4))
    b.output(y)
    refused(b.model(), Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT)


@pytest.mark.parametrize("bad,reason", [("negative_var", Reason.NON_POSITIVE_VARIANCE),
                                        ("nan", Reason.NON_FINITE_PARAMS)])
def test_invalid_statistics_are_refused(bad, reason):
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    var = np.array([1.0, -1.0, 1.0, 1.0]) if bad == "negative_var" else np.array([1, 1, np.nan, 1])
    params = [b.const(np.ones(4)), b.const(np.zeros(4)), b.const(np.zeros(4)), b.const(var)]
    b.output(b.bn(y, 4, params=params))
    result = bnfold.fold(b.model())
    assert only_record(result).reason is reason and count_bn(result.model) == 1


def test_no_neighbour_is_reported():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.node("Relu", [b.bn(b.node("Relu", [x]), 3)]))
    refused(b.model(), Reason.NO_FOLDABLE_NEIGHBOUR)


# --- dtypes -------------------------------------------------------------------------------

def test_mixed_fp16_conv_with_fp32_bn_params_stays_fp16_and_loads():
    b = Builder(opset=15, dtype=np.float16, param_dtype=np.float32)
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(x, 3, 4), 4))
    model = b.model()
    result = folded_ok(model, rel=5e-3)
    for t in result.model.graph.initializer:
        assert t.data_type == TensorProto.FLOAT16


def test_fp16_overflow_is_refused_with_warning():
    b = Builder(opset=15, dtype=np.float16, param_dtype=np.float32)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.conv(x, 3, 4)
    params = [b.const(np.full(4, 1e4), dtype=np.float32), b.const(np.zeros(4), dtype=np.float32),
              b.const(np.zeros(4), dtype=np.float32), b.const(np.full(4, 1e-4), dtype=np.float32)]
    b.output(b.bn(y, 4, params=params, epsilon=1e-5))
    result = bnfold.fold(b.model())
    assert only_record(result).reason is Reason.OVERFLOW
    assert any("overflow" in w for w in result.warnings)


def test_float64_model_folds():
    b = Builder(dtype=np.float64)
    x = b.input("x", ["N", 3])
    b.output(b.bn(b.node("Gemm", [x, b.const(b.weights((3, 4)))]), 4))
    result = folded_ok(b.model(), rel=1e-12)
    assert result.model.graph.initializer[0].data_type == TensorProto.DOUBLE


def test_bn_without_epsilon_uses_float32_1e_5_like_ort():
    # the default is a float attribute: float32(1e-5) = 9.999999747378752e-06, not 1e-5;
    # with variances near 1e-5 the difference shows in a float64 model
    b = Builder(dtype=np.float64, seed=4)
    x = b.input("x", ["N", 3])
    y = b.node("Gemm", [x, b.const(b.weights((3, 4)))])
    b.output(b.node("BatchNormalization", [y] + b.bn_params(4, tiny_var=True)))
    model = b.model()
    assert not model.graph.node[-1].attribute
    result = bnfold.fold(model)
    assert result.bn_after == 0
    feeds = random_feeds(model, 8)
    want, got = run(model, feeds)[0], run(result.model, feeds)[0]
    assert np.max(np.abs(got - want) / np.abs(want)) <= 1e-12


# --- what is kept ---------------------------------------------------------------------------

def test_names_metadata_docs_custom_ops_and_unrelated_initializers_are_kept():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.bn(b.conv(x, 3, 4), 4)
    b.output(y)
    b.const(np.arange(3.0), "unused")
    model = b.model()
    model.doc_string = "model doc"
    model.graph.doc_string = "graph doc"
    model.producer_name = "me"
    helper.set_model_props(model, {"author": "someone"})
    model.graph.node[0].doc_string = "conv doc"
    custom = helper.make_node("MyOp", [y], ["z"], name="custom", domain="com.example")
    model.graph.node.append(custom)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 5, 5]))
    result = bnfold.fold(model, check=False)
    out = result.model
    assert out.doc_string == "model doc" and out.graph.doc_string == "graph doc"
    assert out.producer_name == "me" and out.metadata_props[0].value == "someone"
    names = [n.name for n in out.graph.node]
    assert names == [model.graph.node[0].name, "custom"]
    assert out.graph.node[0].doc_string == "conv doc"
    assert any(t.name == "unused1" for t in out.graph.initializer) or \
        any(t.name.startswith("unused") for t in out.graph.initializer)
    assert out.graph.node[0].output[0] == y  # the BN output name survives


def test_folding_is_deterministic_and_idempotent():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(b.bn(b.conv(x, 3, 4), 4), 4, 4, pads=0), 4))
    model = b.model()
    once = bnfold.fold(model).model.SerializeToString()
    assert bnfold.fold(model).model.SerializeToString() == once
    again = bnfold.fold(onnx.load_from_string(once))
    assert again.model.SerializeToString() == once and again.records == []


def test_input_model_is_not_mutated():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(x, 3, 4), 4))
    model = b.model()
    before = model.SerializeToString()
    bnfold.fold(model)
    bnfold.inspect(model)
    assert model.SerializeToString() == before


def test_external_data_model_folds_and_saves_with_external_data(tmp_path):
    from bnfold.io.model_io import load_model, save_model

    b = Builder()
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.bn(b.conv(x, 8, 16), 16))
    model = b.model()
    src = tmp_path / "m.onnx"
    save_model(model, src, external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    result = bnfold.fold(src)
    out = tmp_path / "out.onnx"
    written = save_model(result.model, out, external_data=True)
    assert written == [str(out), str(tmp_path / "out.onnx.data")]
    back = load_model(out)
    assert max_error(model, back) < 1e-4


def test_bn_in_subgraph_reading_outer_scope_weights_and_params():
    outer = Builder(seed=7)
    w = outer.const(outer.weights((4, 3, 3, 3)))
    params = outer.bn_params(4)
    conv = helper.make_node("Conv", ["x", w], ["c"], name="inner_conv", pads=[1, 1, 1, 1])
    bn = helper.make_node("BatchNormalization", ["c"] + params, ["y"], name="inner_bn")
    body = helper.make_graph([conv, bn], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    outer.input("x", [1, 3, 5, 5])
    cond = outer.const(np.array(True), "cond", dtype=np.bool_)
    outer.output(outer.node("If", [cond], then_branch=body, else_branch=other))
    model = outer.model()
    result = bnfold.fold(model)
    assert [r.target for r in result.records] == ["inner_conv"]
    assert count_bn(result.model) == 0
    assert max_error(model, result.model, batches=(1,)) < 1e-4
    outer_inits = {t.name for t in result.model.graph.initializer}
    assert w in outer_inits  # the outer tensor is not changed under other readers


def test_opset7_ir3_gemm_bn_folds():
    b = Builder(opset=7, ir_version=3)
    x = b.input("x", [2, 3])
    y = b.node("Gemm", [x, b.const(b.weights((3, 5))), b.const(b.weights((5,)))], beta=0.5)
    y = b.bn(y, 5)
    model = b.model()
    model.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 5]))
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    folded_ok(model)


def test_non_finite_weight_is_refused():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    w = b.weights((4, 3, 3, 3))
    w[0, 0, 0, 0] = np.inf
    y = b.node("Conv", [x, b.const(w)], pads=[1, 1, 1, 1])
    b.output(b.bn(y, 4))
    result = bnfold.fold(b.model())
    assert only_record(result).reason is Reason.NON_FINITE_PARAMS
    assert "weight" in result.records[0].detail


def lazy_fixture(tmp_path):
    """Conv -> BN -> Conv saved with external data: one weight folds, one stays untouched."""
    from bnfold.io.model_io import save_model

    b = Builder(seed=5)
    x = b.input("x", ["N", 8, 5, 5])
    b.output(b.conv(b.bn(b.conv(x, 8, 16), 16), 16, 16))
    model = b.model()
    src = tmp_path / "m.onnx"
    save_model(model, src, external_data=True)
    return model, src


def test_lazy_external_fold_gives_the_eager_folded_bytes(tmp_path):
    from onnx import external_data_helper as edh

    _, src = lazy_fixture(tmp_path)
    eager = bnfold.fold(src)
    lazy = bnfold.fold(src, lazy_external=True)
    assert eager.external_base is None and lazy.external_base == str(tmp_path)
    assert [r.to_dict() for r in lazy.records] == [r.to_dict() for r in eager.records]
    assert lazy.folded
    want = {t.name: t for t in eager.model.graph.initializer}
    folded_weight = lazy.model.graph.node[0].input[1]
    t = next(t for t in lazy.model.graph.initializer if t.name == folded_weight)
    assert not edh.uses_external_data(t) and t.raw_data == want[folded_weight].raw_data
    for t in lazy.model.graph.initializer:
        if not edh.uses_external_data(t):
            assert np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(want[t.name]))
    still = [t for t in lazy.model.graph.initializer if edh.uses_external_data(t)]
    assert still  # the second conv's weight was not read into memory
    for t in still:
        assert np.array_equal(numpy_helper.to_array(t, str(tmp_path)),
                              numpy_helper.to_array(want[t.name])), t.name


def test_lazy_external_fold_saved_matches_original_on_ort(tmp_path):
    from bnfold.io.model_io import load_model, save_model

    model, src = lazy_fixture(tmp_path)
    result = bnfold.fold(src, lazy_external=True)
    out = tmp_path / "out" / "f.onnx"
    out.parent.mkdir()
    save_model(result.model, out, external_data=True, source_dir=result.external_base)
    back = load_model(out)
    assert count_bn(back) == 0
    assert max_error(model, back) <= tolerance(model)


def test_lazy_external_fold_falls_back_to_a_lazy_reload_when_the_check_fails(tmp_path,
                                                                            monkeypatch):
    import importlib

    from onnx import external_data_helper as edh

    fold_module = importlib.import_module("bnfold.folding")  # the package, not the function
    _, src = lazy_fixture(tmp_path)
    monkeypatch.setattr(fold_module, "check_folded", lambda before, after: "forced failure")
    result = bnfold.fold(src, lazy_external=True)
    assert result.records and all(r.reason is Reason.CHECK_FAILED for r in result.records)
    assert count_bn(result.model) == 1 and result.external_base == str(tmp_path)
    assert all(edh.uses_external_data(t) for t in result.model.graph.initializer
               if t.ByteSize() > 1024 or edh.uses_external_data(t))


def test_subgraph_tensors_stored_as_external_data_load_and_fold(tmp_path):
    from bnfold.io.model_io import load_model

    model = if_model_with_conv_bn_branches()
    path = tmp_path / "if.onnx"
    onnx.save_model(if_model_with_conv_bn_branches(), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location="if.data", size_threshold=0)
    for lazy in (False, True):
        result = bnfold.fold(path, lazy_external=lazy)
        assert result.bn_after == 0 and len(result.records) == 2
    assert max_error(model, bnfold.fold(load_model(path)).model, batches=(1,)) < 1e-4


def test_bn_inside_loop_body_is_folded():
    inner = Builder(seed=11)
    y = inner.bn(inner.conv("x", 3, 4), 4)
    body = helper.make_graph(
        inner.nodes + [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inner.inits)
    b = Builder()
    b.input("x", [1, 3, 5, 5])
    trips = b.const(np.array(2), "trips", dtype=np.int64)
    cond = b.const(np.array(True), "cond", dtype=np.bool_)
    b.output(b.node("Loop", [trips, cond], body=body))
    model = b.model()
    result = bnfold.fold(model)
    assert count_bn(result.model) == 0 and result.records[0].graph.startswith("main/Loop")
    assert max_error(model, result.model, batches=(1,)) < 1e-4


@pytest.mark.skipif(str(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)) != "bfloat16",
                    reason="onnx < 1.19 reads bfloat16 tensors as float32 (no ml_dtypes)")
@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_bfloat16_weights_fold_within_bfloat16_precision(op):
    """ORT's CPU build has no bf16 Conv/Gemm, so onnx.reference runs both models here."""
    import ml_dtypes
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    bf16 = ml_dtypes.bfloat16
    w_shape, x_shape = ((4, 3, 3, 3), [1, 3, 5, 5]) if op == "Conv" else ((3, 4), [2, 3])
    w = numpy_helper.from_array(rng.normal(0, 0.5, w_shape).astype(bf16), "W")
    params = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(
        [rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.5, 4), rng.normal(0, 0.5, 4),
         rng.uniform(0.5, 2, 4)], ["g", "b", "m", "v"])]
    attrs = {"pads": [1, 1, 1, 1]} if op == "Conv" else {}
    nodes = [helper.make_node(op, ["x", "W"], ["c"], name="layer", **attrs),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16,
                                       [1, 4, 5, 5] if op == "Conv" else [2, 4])], [w] + params)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    result = bnfold.fold(model)
    assert only_record(result).target == "layer"
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.BFLOAT16}
    x = rng.normal(0, 1, x_shape).astype(bf16)
    a = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float64)
    b = ReferenceEvaluator(result.model).run(None, {"x": x})[0].astype(np.float64)
    assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()


def test_a_bnfold_error_in_the_folded_model_check_is_not_a_checker_complaint(monkeypatch):
    from bnfold.folding.check import problem
    from bnfold.io.skeleton import skeleton

    b = Builder(opset=17)
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 5, 5]), 3, 4), 4))

    def broken(*args, **kwargs):
        raise AttributeError("simulated bug")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(AttributeError, match="simulated bug"):
        problem(skeleton(b.model()))


def test_progress_callback_hears_each_bn_once_and_the_proofs():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(b.node("Relu", [b.bn(b.conv(x, 3, 4), 4)]), 4, 2), 2))
    heard: list[str] = []
    result = bnfold.fold(b.model(), progress=heard.append)
    assert result.bn_after == 0
    assert heard == ["folding BN 1 of 2", "folding BN 2 of 2", "proving 2 fold(s) on ONNX Runtime"]


@pytest.mark.parametrize("enabled", [True, False])
def test_fold_runs_without_cyclic_gc_and_restores_the_callers_setting(enabled, monkeypatch):
    import gc

    import bnfold.folding as folding

    b = Builder(seed=1)
    b.output(b.bn(b.conv(b.input("x", ["N", 3, 6, 6]), 3, 4), 4))
    model = b.model()
    seen = []
    real = folding._fold_model

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(folding, "_fold_model", spy)
    (gc.enable if enabled else gc.disable)()
    try:
        assert bnfold.fold(model, prove=False).bn_after == 0
        assert seen == [False] and gc.isenabled() is enabled

        def boom(*args, **kwargs):
            seen.append(gc.isenabled())
            raise RuntimeError("boom")

        monkeypatch.setattr(folding, "_fold_model", boom)
        with pytest.raises(RuntimeError, match="boom"):
            bnfold.fold(model, prove=False)
        assert seen == [False, False] and gc.isenabled() is enabled
    finally:
        gc.enable()


def test_shape_inference_runs_once_per_fold_proofs_included(monkeypatch):
    """The fold's rules and the proofs' original regions read the same inferred shapes (the
    input's): strict inference is not run again for the proofs."""
    import bnfold.folding as folding
    import bnfold.graph.shapes as shapes

    b = Builder(seed=2)
    y = b.input("x", ["N", 3, 6, 6])
    for _ in range(3):
        y = b.bn(b.conv(y, 3, 3), 3)
    b.output(y)
    model = b.model()
    calls = []
    real = shapes.infer

    def counting(m, *rest):  # noqa: ANN001, ANN002, ANN202
        calls.append(m)
        return real(m, *rest)

    monkeypatch.setattr(shapes, "infer", counting)
    monkeypatch.setattr(folding, "infer", counting)
    result = folded_ok(model)
    assert all(r.folded and r.proof_engine == "onnxruntime" for r in result.records)
    assert len(calls) == 1


def test_a_graph_is_indexed_once_per_pass_and_not_again_after_the_last(monkeypatch):
    """One BN: the pass that folds it and the pass that finds nothing left each index the graph;
    the decomposed-BN pass, the reparam pass and the subgraph walk reuse the last index (that
    pass changed nothing), and a graph without subgraphs is not indexed for them."""
    import bnfold.folding as folding

    b = Builder(seed=4)
    b.output(b.node("Relu", [b.bn(b.conv(b.input("x", ["N", 3, 6, 6]), 3, 4), 4)]))
    model = b.model()
    built = []
    real = folding._Context.index

    def counting(self, graph, outer):  # noqa: ANN001, ANN202
        built.append(graph.name)
        return real(self, graph, outer)

    monkeypatch.setattr(folding._Context, "index", counting)
    result = bnfold.fold(model, prove=False)
    assert result.bn_after == 0 and len(built) == 2


def test_a_chain_of_conv_bn_blocks_computes_each_plan_once(monkeypatch):
    """Conv -> BN -> Relu -> Conv -> BN ...: the second BN's conv reads the first block's Relu,
    which the first fold of a pass touched; it is put off to the next pass before its plan
    (float64 weights) is made, not after, so every BN is matched exactly once."""
    import bnfold.folding as fold_module

    calls = []
    real = fold_module.match_bn
    monkeypatch.setattr(fold_module, "match_bn", lambda g, node, notes: (
        calls.append(node.output[0]), real(g, node, notes))[1])
    b = Builder(seed=3)
    y = b.input("x", ["N", 3, 6, 6])
    for i in range(6):
        y = b.node("Relu", [b.bn(b.conv(y, 3, 3), 3)])
    b.output(y)
    result = folded_ok(b.model())
    assert all(r.folded for r in result.records) and len(result.records) == 6
    assert sorted(calls) == sorted(r.bn_output for r in result.records)
