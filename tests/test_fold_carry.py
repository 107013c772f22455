"""The affine map carried through commuting ops: every pattern folds and matches ONNX Runtime;
every condition that fails keeps the BN with its reason."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import bnfold
from bnfold import Reason
from modelgen import Builder, run
from test_fold import folded_ok, only_record


def ops(result) -> list[str]:  # noqa: ANN001
    return [n.op_type for n in result.model.graph.node]


def kept(model: onnx.ModelProto, reason: Reason) -> bnfold.FoldRecord:
    rec = only_record(folded_ok(model, expect_bn_after=1))
    assert rec.reason is reason, rec.to_dict()
    return rec


def test_matmul_transpose_bn_folds_into_the_matmul_with_a_bias_add():
    b = Builder(seed=1)
    x = b.input("x", ["N", 4, 3])
    y = b.node("MatMul", [x, b.const(b.weights((3, 8)))])
    b.output(b.bn(b.node("Transpose", [y], perm=[0, 2, 1]), 8))
    result = folded_ok(b.model())
    assert ops(result) == ["MatMul", "Add", "Transpose"]
    assert [v[:9] for v in only_record(result).via] == ["Transpose"]


def test_matmul_reshape_bn_becomes_a_gemm():
    b = Builder(seed=2)
    x = b.input("x", ["N", 6])
    y = b.node("MatMul", [x, b.const(b.weights((6, 8)))])
    y = b.node("Reshape", [y, b.const(np.array([-1, 8, 1, 1]), "s", np.int64)])
    b.output(b.bn(y, 8))
    assert ops(folded_ok(b.model())) == ["Gemm", "Reshape"]


def test_conv_transpose_identity_add_identity_bn_folds():
    b = Builder(seed=3)
    x = b.input("x", ["N", 4, 5, 5])
    y = b.node("Identity", [b.conv_transpose(x, 4, 6, bias=False)])
    y = b.node("Identity", [b.node("Add", [y, b.const(b.weights((6, 1, 1)))])])
    b.output(b.bn(y, 6))
    assert ops(folded_ok(b.model())) == ["ConvTranspose", "Identity", "Identity"]


def test_bn_flatten_gemm_folds_forward_repeating_s_and_t():
    b = Builder(seed=4)
    x = b.input("x", ["N", 4, 3, 3])
    y = b.node("Flatten", [b.bn(b.node("Relu", [x]), 4)])
    b.output(b.node("Gemm", [y, b.const(b.weights((36, 5))), b.const(b.weights((5,)))]))
    rec = only_record(folded_ok(b.model()))
    assert rec.direction == "forward" and rec.target.startswith("Gemm")


def test_split_convs_concat_bn_folds_each_slice_into_its_conv():
    b = Builder(seed=5)
    x = b.input("x", ["N", 4, 6, 6])
    halves = b.node("Split", [x, b.const(np.array([2, 2]), "s", np.int64)], n_out=2, axis=1)
    first, second = halves, halves[:-1] + str(int(halves[-1]) + 1)
    y = b.node("Concat", [b.conv(first, 2, 3), b.conv(second, 2, 5, k=5, pads=2)], axis=1)
    b.output(b.bn(y, 8))
    rec = only_record(folded_ok(b.model()))
    assert len(rec.targets) == 2


def test_concat_slice_without_absorber_keeps_the_bn_and_names_the_slice():
    b = Builder(seed=6)
    x = b.input("x", ["N", 4, 6, 6])
    y = b.node("Concat", [b.conv(x, 4, 3), b.node("Relu", [x])], axis=1)
    b.output(b.bn(y, 7))
    rec = only_record(folded_ok(b.model(), expect_bn_after=1))
    assert "slice 1" in rec.detail and "Relu" in rec.detail


def test_bn_split_folds_forward_into_both_unpadded_convs():
    b = Builder(seed=7)
    x = b.input("x", ["N", 4, 6, 6])
    y = b.bn(b.node("Relu", [x]), 4)
    outs = b.node("Split", [y, b.const(np.array([1, 3]), "s", np.int64)], n_out=2, axis=1)
    other = outs[:-1] + str(int(outs[-1]) + 1)
    b.output(b.conv(outs, 1, 2, pads=0))
    b.output(b.conv(other, 3, 2, pads=0))
    assert len(only_record(folded_ok(b.model())).targets) == 2


def conv_pool_bn(op: str, gamma_sign: float = 1.0, **attrs) -> onnx.ModelProto:
    b = Builder(seed=8)
    x = b.input("x", ["N", 3, 8, 8])
    y = b.node(op, [b.conv(x, 3, 4)], **attrs)
    b.output(b.bn(y, 4, gamma_sign=gamma_sign))
    return b.model()


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {})])
def test_conv_pool_bn_folds_through_the_pool(op, attrs):
    assert ops(folded_ok(conv_pool_bn(op, **attrs))) == ["Conv", op]


def test_negative_scale_before_max_pool_is_refused():
    model = conv_pool_bn("MaxPool", gamma_sign=-1.0, kernel_shape=[2, 2])
    assert "scale(s) <= 0" in kept(model, Reason.NEGATIVE_SCALE_POOL).detail


def test_padded_average_pool_counting_padding_is_refused():
    model = conv_pool_bn("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1)
    assert "count_include_pad=1" in kept(model, Reason.COMMUTE_CONDITION).detail


def test_nearest_resize_commutes_with_any_sign_linear_does_not():
    for mode, folds in (("nearest", True), ("linear", False)):
        b = Builder(seed=9)
        x = b.input("x", ["N", 3, 4, 4])
        scales = b.const(np.array([1, 1, 2, 2]), "sc", np.float32)
        y = b.node("Resize", [b.conv(x, 3, 4), "", scales], mode=mode)
        b.output(b.bn(y, 4, gamma_sign=-1.0))
        folded_ok(b.model(), expect_bn_after=0 if folds else 1)


@pytest.mark.parametrize("shape,bn_channels,folds", [
    ([0, 2, 8], 2, True),     # each BN channel covers two whole conv channels
    ([0, 8, 2], 8, False)])   # two BN channels inside each conv channel
def test_reshape_folds_only_when_each_conv_channel_gets_one_scale(shape, bn_channels, folds):
    b = Builder(seed=10)
    x = b.input("x", ["N", 3, 2, 2])
    y = b.node("Reshape", [b.conv(x, 3, 4), b.const(np.array(shape), "s", np.int64)])
    b.output(b.bn(y, bn_channels))
    if folds:
        folded_ok(b.model())
    else:
        assert "axis 1" in kept(b.model(), Reason.CHANNEL_MISMATCH).detail


def test_intermediate_read_elsewhere_is_refused_but_a_shape_reader_is_fine():
    b = Builder(seed=11)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.conv(x, 3, 4)
    y = b.node("Identity", [conv])
    b.output(b.bn(y, 4))
    b.output(b.node("Relu", [conv]))
    kept(b.model(), Reason.PRODUCER_HAS_OTHER_CONSUMERS)
    b = Builder(seed=11)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.conv(x, 3, 4)
    b.output(b.bn(b.node("Identity", [conv]), 4))
    b.outputs.append(onnx.helper.make_tensor_value_info(b.node("Shape", [conv]),
                                                        onnx.TensorProto.INT64, None))
    folded_ok(b.model())


def test_decomposed_bn_mul_add_after_conv_folds_and_is_recorded_as_such():
    b = Builder(seed=12)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.node("Mul", [b.conv(x, 3, 4), b.const(b.rng.uniform(0.5, 2, (4, 1, 1)))])
    b.output(b.node("Add", [y, b.const(b.weights((4, 1, 1)))]))
    result = folded_ok(b.model())
    assert ops(result) == ["Conv"] and result.bn_before == 0
    assert sorted(r.op for r in result.records) == ["Add", "Mul"]
    assert all(r.folded for r in result.records)


def test_single_channel_bn_after_matmul_add_on_n_1_k_activations():
    b = Builder(seed=13)
    x = b.input("x", ["N", 1, 3])
    y = b.node("Add", [b.node("MatMul", [x, b.const(b.weights((3, 5)))]),
                       b.const(b.weights((5,)))])
    b.output(b.bn(y, 1))
    assert ops(folded_ok(b.model())) == ["MatMul", "Add"]


def test_bn_into_1x1_same_padded_stride_2_conv_folds_forward():
    b = Builder(seed=14)
    x = b.input("x", ["N", 3, 5, 5])
    y = b.bn(b.node("Relu", [x]), 3)
    b.output(b.conv(y, 3, 4, k=1, pads=0, auto_pad="SAME_UPPER", strides=[2, 2]))
    assert only_record(folded_ok(b.model())).direction == "forward"


def test_bn_with_zero_shift_folds_into_a_padded_conv_and_nonzero_does_not():
    for zero in (True, False):
        b = Builder(seed=15)
        x = b.input("x", ["N", 3, 5, 5])
        c = 3
        gamma, var = b.const(b.rng.uniform(0.5, 1.5, c)), b.const(b.rng.uniform(0.5, 2, c))
        beta = b.const(np.zeros(c) if zero else b.weights((c,)))
        mean = b.const(np.zeros(c) if zero else b.weights((c,)))
        y = b.bn(b.node("Relu", [x]), c, params=[gamma, beta, mean, var])
        b.output(b.conv(y, 3, 4, pads=1))
        folded_ok(b.model(), expect_bn_after=0 if zero else 1)


def test_dropout_and_float_cast_are_carried():
    b = Builder(seed=16)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("Dropout", [b.conv(x, 3, 4)])
    y = b.node("Cast", [y], to=onnx.TensorProto.FLOAT)
    b.output(b.bn(y, 4))
    assert ops(folded_ok(b.model())) == ["Conv", "Dropout", "Cast"]


def test_inspect_says_what_fold_does():
    model = conv_pool_bn("MaxPool", kernel_shape=[2, 2])
    inspected = only_record(bnfold.inspect(model))
    folded = only_record(bnfold.fold(model))
    assert inspected.folded and inspected.via == folded.via and folded.via[0].startswith("MaxPool")


def test_bn_concat_conv_folds_forward_with_identity_for_the_other_input():
    b = Builder(seed=17)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("Concat", [b.bn(b.node("Relu", [x]), 3), b.node("Sigmoid", [x])], axis=1)
    b.output(b.conv(y, 6, 2, k=1, pads=0))
    rec = only_record(folded_ok(b.model()))
    assert rec.direction == "forward" and rec.via[0].startswith("Concat")


def sliced_bn_conv(bound_input: bool) -> onnx.ModelProto:
    """x -> Slice(channels 2:6) -> BN -> Conv; the Slice bounds are computed as TorchScript
    writes them (Unsqueeze of a scalar Constant), or read from a graph input (``bound_input``),
    so shape inference leaves every dim of the BN input unknown."""
    b = Builder(seed=11)
    x = b.input("x", ["N", 8, 6, 6])

    def bound(v: int) -> str:
        scalar = b.node("Constant", [], value=onnx.numpy_helper.from_array(np.array(v, np.int64)))
        return b.node("Unsqueeze", [scalar, b.const(np.array([0]), "ax", np.int64)])

    end = b.input("end", [1], np.int64) if bound_input else bound(6)
    y = b.node("Slice", [x, bound(2), end, bound(1)])
    b.output(b.conv(b.bn(y, 4), 4, 5, pads=0))
    return b.model()


def test_bn_after_computed_slice_bounds_folds_with_its_real_shape():
    from bnfold.graph.shapes import infer

    model = sliced_bn_conv(bound_input=False)
    bn_input = next(n.input[0] for n in model.graph.node if n.op_type == "BatchNormalization")
    assert infer(model)[()].shapes[bn_input] == [None, 4, 6, 6]
    rec = only_record(folded_ok(model))
    assert rec.direction == "forward" and rec.target.startswith("Conv")


def test_bn_input_of_unknown_dims_takes_its_channel_count_from_the_bn():
    model = sliced_bn_conv(bound_input=True)
    result = bnfold.fold(model)
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 8, 6, 6)).astype(np.float32),
             "end": np.array([6], np.int64)}
    assert result.bn_after == 0, [r.to_dict() for r in result.records]
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], atol=1e-4)

def _counting(monkeypatch, module, name: str) -> list[int]:  # noqa: ANN001
    calls = [0]
    real = getattr(module, name)

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


def test_an_open_batch_dim_scales_each_absorbed_weight_once(monkeypatch):
    """Both walks (unknown dims as 1, then 2) reach the same Conv with the same map: the
    second reuses the first's float64 weights instead of scaling them again."""
    from bnfold.folding.rules import absorb_conv, absorb_linear

    conv_out = _counting(monkeypatch, absorb_conv, "out_edit")
    linear_in = _counting(monkeypatch, absorb_linear, "in_edit")
    b = Builder(seed=7)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 3, 4), 4)])
    y = b.bn(b.node("Flatten", [b.node("GlobalAveragePool", [y])]), 4)
    b.output(b.node("Gemm", [y, b.const(b.weights((4, 5)))]))
    result = folded_ok(b.model())
    assert [r.direction for r in result.records] == ["backward", "forward"]
    assert (conv_out[0], linear_in[0]) == (1, 1)


def test_edits_are_reused_only_by_the_other_walk_and_only_for_the_same_map():
    """The memo of ``carry._cached``: the other walk's result (and its notes) for an equal
    map; a different map, or the same walk, computes again."""
    from bnfold.folding.rules import carry

    seed = onnx.helper.make_node("Relu", ["a"], ["b"])
    memo: dict = {}
    first, second = (carry.Plan(seed, "backward", 0, memo=memo) for _ in range(2))
    computed = []

    def compute(value: float):  # noqa: ANN202
        def run():  # noqa: ANN202
            computed.append(value)
            (first if len(computed) == 1 else second).notes.append(f"note {value}")
            return value
        return run
    key = lambda v: ("conv_out", 1, carry._key((np.full(3, v), np.zeros(3))))  # noqa: E731
    assert carry._cached(first, key(2.0), compute(2.0)) == 2.0
    assert carry._cached(second, key(2.0), compute(2.0)) == 2.0
    assert computed == [2.0] and second.notes == ["note 2.0"]
    assert carry._cached(second, key(3.0), compute(3.0)) == 3.0
    assert carry._cached(second, key(3.0), compute(3.0)) == 3.0  # same walk: its own
    assert computed == [2.0, 3.0, 3.0]
