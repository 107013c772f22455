"""Structural re-parameterization: an Add of parallel branches of one input becomes one Conv."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

import bnfold
from bnfold import Reason
from modelgen import Builder, count_bn, max_error, tolerance


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def merged_ok(model: onnx.ModelProto, expect_ops: list[str], **kw) -> bnfold.FoldResult:
    """Fold; the result is valid, has ``expect_ops``, every BN went into one proven merge, and
    it matches the original on ORT."""
    result = bnfold.fold(model, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model) == expect_ops, [r.to_dict() for r in result.records]
    assert result.bn_after == 0 and count_bn(result.model) == 0
    assert {r.direction for r in result.records if r.op == "BatchNormalization"} == {"reparam"}
    assert all(r.proof_max_abs is not None and r.proof_max_abs <= r.proof_tol
               for r in result.records)
    assert max_error(model, result.model) <= tolerance(model)
    return result


def _sum(b: Builder, terms: list[str], order: str) -> str:
    """Binary Adds over ``terms``: "left" ((a+b)+c), "right" (a+(b+c)) or "reversed"."""
    if order == "reversed":
        terms = terms[::-1]
    if order == "right":
        out = terms[-1]
        for t in reversed(terms[:-1]):
            out = b.node("Add", [t, out])
        return out
    out = terms[0]
    for t in terms[1:]:
        out = b.node("Add", [out, t])
    return out


def repvgg(order: str = "left", *, c: int = 4, group: int = 1, dims: int = 2, identity: str = "bn",
           stride: int = 1, seed: int = 0) -> onnx.ModelProto:
    """RepVGG block: Conv 3x3 + BN, Conv 1x1 + BN, identity BN (or x), summed, then Relu."""
    b = Builder(seed=seed)
    x = b.input("x", ["N", c] + [7] * dims)
    kw = {"strides": [stride] * dims} if stride != 1 else {}
    terms = [b.bn(b.conv(x, c, c, 3, pads=1, group=group, bias=False, dims=dims, **kw), c),
             b.bn(b.conv(x, c, c, 1, pads=0, group=group, bias=False, dims=dims, **kw), c)]
    terms += [b.bn(x, c)] if identity == "bn" else [x] if identity == "x" else []
    b.output(b.node("Relu", [_sum(b, terms, order)]))
    return b.model()


@pytest.mark.parametrize("order", ["left", "right", "reversed"])
def test_repvgg_block_becomes_one_conv_in_any_add_order(order):
    result = merged_ok(repvgg(order), ["Conv", "Relu"])
    conv = result.model.graph.node[0]
    assert {r.target for r in result.records} == {conv.name}
    assert all(len(r.merged) == 2 for r in result.records)
    assert len(result.model.graph.initializer) == 2  # one weight, one bias: the rest is gone


@pytest.mark.parametrize("dims", [1, 3])
def test_repvgg_block_in_1d_and_3d(dims):
    merged_ok(repvgg(dims=dims, c=3), ["Conv", "Relu"])


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_and_depthwise_repvgg_blocks_merge(group):
    merged_ok(repvgg(group=group), ["Conv", "Relu"])


def test_plain_identity_branch_x_itself_merges():
    merged_ok(repvgg(identity="x"), ["Conv", "Relu"])


def test_strided_block_without_identity_merges():
    merged_ok(repvgg(identity="none", stride=2), ["Conv", "Relu"])


def test_acnet_square_and_horizontal_and_vertical_kernels_merge():
    b = Builder(seed=2)
    x = b.input("x", ["N", 3, 6, 5])
    terms = []
    for shape, pads in (((3, 3), [1, 1, 1, 1]), ((1, 3), [0, 1, 0, 1]), ((3, 1), [1, 0, 1, 0])):
        w = b.const(b.weights((4, 3) + shape))
        terms.append(b.bn(b.node("Conv", [x, w], pads=pads, kernel_shape=list(shape)), 4))
    b.output(_sum(b, terms, "left"))
    result = merged_ok(b.model(), ["Conv"])
    kernel = [list(a.ints) for a in result.model.graph.node[0].attribute
              if a.name == "kernel_shape"]
    assert kernel == [[3, 3]]


def test_mobileone_depthwise_branches_one_by_one_and_identity_merge():
    b = Builder(seed=3)
    c = 6
    x = b.input("x", ["N", c, 8, 8])
    terms = [b.bn(b.conv(x, c, c, 3, pads=1, group=c, bias=False), c) for _ in range(3)]
    terms += [b.bn(b.conv(x, c, c, 1, pads=0, group=c, bias=False), c), b.bn(x, c)]
    b.output(b.node("Relu", [_sum(b, terms, "right")]))
    merged_ok(b.model(), ["Conv", "Relu"])


def test_asymmetric_padding_places_the_identity_at_its_own_tap():
    """A 3x3 padded (0, 0, 2, 2) reads x[o .. o+2]: the identity lands on tap 0, not the centre."""
    b = Builder(seed=4)
    x = b.input("x", ["N", 4, 6, 6])
    y = b.bn(b.node("Conv", [x, b.const(b.weights((4, 4, 3, 3)))], pads=[0, 0, 2, 2]), 4)
    b.output(b.node("Add", [y, b.bn(x, 4)]))
    merged_ok(b.model(), ["Conv"])


def test_reparam_off_folds_only_the_branch_bns():
    model = repvgg()
    result = bnfold.fold(model, reparam=False)
    assert ops(result.model) == ["Conv", "Conv", "BatchNormalization", "Add", "Add", "Relu"]
    assert [r.direction for r in result.records] == ["backward", "backward", None]
    assert result.records[2].reason is Reason.NO_FOLDABLE_NEIGHBOUR


def _lone(result: bnfold.FoldResult):
    kept = result.kept
    assert len(kept) == 1
    return kept[0]


def _block(conv_specs: list[dict], *, c_in: int = 4, c_out: int = 4, size: int = 6,
           identity: bool = True) -> onnx.ModelProto:
    """Branch Convs (+BN) of one input, given as Conv attributes with a weight shape, plus a
    lone BN, summed."""
    b = Builder(seed=5)
    x = b.input("x", ["N", c_in, size, size])
    terms = []
    for spec in conv_specs:
        spec = dict(spec)
        w = b.const(b.weights(spec.pop("w")))
        terms.append(b.bn(b.node("Conv", [x, w], **spec), c_out))
    if identity:
        terms.append(b.bn(x, c_in))
    b.output(_sum(b, terms, "left"))
    return b.model()


@pytest.mark.parametrize("specs, c_in, size, words", [
    ([{"w": (4, 4, 3, 3), "pads": [1] * 4}, {"w": (4, 4, 3, 3), "pads": [0, 0, 2, 2]}], 4, 6,
     "does not line up"),
    ([{"w": (4, 4, 3, 3), "pads": [1] * 4}, {"w": (4, 4, 1, 1), "strides": [2, 2]}], 4, 1,
     "strides [2, 2]"),
    ([{"w": (4, 4, 3, 3), "pads": [2] * 4, "dilations": [2, 2]},
      {"w": (4, 4, 3, 3), "pads": [1] * 4}], 4, 6, "dilation"),
    ([{"w": (4, 2, 3, 3), "pads": [1] * 4, "group": 2}, {"w": (4, 4, 1, 1)}], 4, 6, "group"),
    ([{"w": (4, 1, 3, 3), "pads": [1] * 4}, {"w": (4, 1, 1, 1)}], 1, 6, "1 input to 4 output"),
])
def test_branches_that_are_not_one_conv_keep_the_identity_bn_with_numbers(specs, c_in, size,
                                                                          words):
    model = _block(specs, c_in=c_in, size=size)
    result = bnfold.fold(model)
    lone = _lone(result)
    assert lone.reason is Reason.BRANCHES_DO_NOT_MERGE and words in lone.detail, lone.detail
    assert [r.direction for r in result.folded] == ["backward"] * len(specs)
    assert max_error(model, result.model) <= tolerance(model)


def test_strided_block_with_identity_is_refused():
    """Stride 2 on a 1x1 input keeps the shapes equal; the identity still cannot merge."""
    model = _block([{"w": (4, 4, 3, 3), "pads": [1] * 4, "strides": [2, 2]},
                    {"w": (4, 4, 1, 1), "strides": [2, 2]}], size=1)
    lone = _lone(bnfold.fold(model))
    assert lone.reason is Reason.BRANCHES_DO_NOT_MERGE and "stride" in lone.detail


def test_branch_output_read_elsewhere_is_refused():
    b = Builder(seed=6)
    x = b.input("x", ["N", 4, 5, 5])
    a = b.bn(b.conv(x, 4, 4, 3, pads=1), 4)
    b.output(b.node("Add", [a, b.bn(x, 4)]))
    b.output(a)
    model = b.model()
    lone = _lone(bnfold.fold(model))
    assert lone.reason is Reason.BRANCHES_DO_NOT_MERGE and "outside the Add tree" in lone.detail


def test_branches_of_different_inputs_are_no_tree():
    b = Builder(seed=7)
    x = b.input("x", ["N", 4, 5, 5])
    a = b.bn(b.conv(b.node("Relu", [x]), 4, 4, 3, pads=1), 4)
    b.output(b.node("Add", [a, b.bn(x, 4)]))
    result = bnfold.fold(b.model())
    assert _lone(result).reason is Reason.NO_FOLDABLE_NEIGHBOUR
    assert "Conv" in ops(result.model) and len(result.folded) == 1


def test_tree_without_bn_is_left_alone():
    b = Builder(seed=8)
    x = b.input("x", ["N", 4, 5, 5])
    b.output(b.node("Add", [b.conv(x, 4, 4, 3, pads=1), b.conv(x, 4, 4, 1, pads=0)]))
    model = b.model()
    result = bnfold.fold(model)
    assert ops(result.model) == ["Conv", "Conv", "Add"]


def test_a_merge_whose_proof_fails_is_undone_and_the_branch_bns_still_fold(monkeypatch):
    reparam_module = importlib.import_module("bnfold.folding.reparam")
    real = reparam_module.fm.identity_kernel
    monkeypatch.setattr(reparam_module.fm, "identity_kernel",
                        lambda s, *a: real(np.asarray(s) * 1.5, *a))
    model = repvgg()
    result = bnfold.fold(model)
    assert [r.direction for r in result.folded] == ["backward", "backward"]
    lone = _lone(result)
    assert lone.reason is Reason.PROOF_FAILED
    assert lone.detail.startswith("reparam: the merge failed its proof: max abs")
    assert ops(result.model) == ["Conv", "Conv", "BatchNormalization", "Add", "Add", "Relu"]
    assert max_error(model, result.model) <= tolerance(model)


def test_records_say_which_convs_were_merged_in_json():
    result = bnfold.fold(repvgg())
    d = result.to_dict()["records"][2]
    assert d["direction"] == "reparam" and d["folded"] and len(d["merged"]) == 2
    assert d["target"] in d["merged"]


@pytest.mark.slow
def test_torch_repvgg_block_exported_with_bn_folds_to_one_conv_per_block(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int, groups: int = 1) -> None:
            super().__init__()
            self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False),
                                       nn.BatchNorm2d(c))
            self.one = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=False),
                                     nn.BatchNorm2d(c))
            self.identity = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.dense(x) + self.one(x) + self.identity(x))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(8), Block(8, groups=8)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    path = tmp_path / "repvgg.onnx"
    bnfold.export(net, torch.randn(1, 3, 8, 8), path)
    model = onnx.load(path)
    assert count_bn(model) == 6
    result = bnfold.fold(model)
    assert result.bn_after == 0 and ops(result.model).count("Conv") == 3
    assert ops(result.model).count("Add") == 0
    assert max_error(model, result.model) <= tolerance(model)


def test_identity_bn_whose_parameter_training_info_binds_is_not_merged():
    model = repvgg(identity="bn")
    lone_bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"][-1]
    gamma = lone_bn.input[1]
    info = model.training_info.add()
    info.algorithm.CopyFrom(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [gamma], ["updated"])], "algo", [],
        [onnx.helper.make_tensor_value_info("updated", onnx.TensorProto.FLOAT, None)]))
    info.update_binding.add().CopyFrom(onnx.StringStringEntryProto(key=gamma, value="updated"))
    result = bnfold.fold(model)
    assert _lone(result).reason is Reason.TRAINING_BINDING and gamma in _lone(result).detail
    assert max_error(model, result.model) <= tolerance(model)


def test_sum_started_at_a_constant_like_timm_mobileone_merges():
    """timm's MobileOne sums ``out = 0; out += conv(x)``: the constant joins the bias."""
    b = Builder(seed=9)
    x = b.input("x", ["N", 4, 6, 6])
    terms = [b.const(np.array(0.25), "zero"), b.bn(b.conv(x, 4, 4, 3, pads=1, bias=False), 4),
             b.bn(b.conv(x, 4, 4, 3, pads=1, bias=False), 4),
             b.const(np.linspace(-1, 1, 4).reshape(4, 1, 1), "per_channel"), b.bn(x, 4)]
    b.output(_sum(b, terms, "left"))
    merged_ok(b.model(), ["Conv"])


def test_constant_that_is_not_per_channel_is_refused():
    b = Builder(seed=10)
    x = b.input("x", ["N", 4, 6, 6])
    plane = np.linspace(-1, 1, 36).reshape(6, 6)  # varies over H and W: no bias can hold it
    terms = [b.bn(b.conv(x, 4, 4, 3, pads=1), 4), b.const(plane, "plane"), b.bn(x, 4)]
    b.output(_sum(b, terms, "left"))
    model = b.model()
    result = bnfold.fold(model)
    lone = _lone(result)
    assert lone.reason is Reason.BRANCHES_DO_NOT_MERGE and "[6, 6] is not per-channel" in lone.detail
    assert max_error(model, result.model) <= tolerance(model)


def test_a_spatial_constant_on_the_data_path_is_proven_at_its_own_size():
    """An Add of a (6, 6) constant in the merged tree: the proof may not shrink the region's
    spatial size (the constant would not broadcast); a uniform plane is a bias after all."""
    b = Builder(seed=10)
    x = b.input("x", ["N", 4, 6, 6])
    terms = [b.bn(b.conv(x, 4, 4, 3, pads=1), 4), b.const(np.ones((6, 6)), "plane"), b.bn(x, 4)]
    b.output(_sum(b, terms, "left"))
    merged_ok(b.model(), ["Conv"])


def _repvgg_chain(blocks: int, *, parallel: bool = False) -> onnx.ModelProto:
    """``blocks`` RepVGG blocks in a row (Relu between them), or with ``parallel`` all reading
    the input and concatenated (then each merge rewrites the readers of what the next reads)."""
    b = Builder(seed=11)
    x = b.input("x", ["N", 4, 7, 7])
    outs = []
    for _ in range(blocks):
        terms = [b.bn(b.conv(x, 4, 4, 3, pads=1, bias=False), 4),
                 b.bn(b.conv(x, 4, 4, 1, pads=0, bias=False), 4), b.bn(x, 4)]
        y = b.node("Relu", [_sum(b, terms, "left")])
        outs.append(y)
        x = x if parallel else y
    b.output(b.node("Concat", outs, axis=1) if parallel else x)
    return b.model()


def _index_builds(monkeypatch) -> list[int]:
    import bnfold.folding.reparam as reparam

    built: list[int] = []
    real = reparam._reindex
    monkeypatch.setattr(reparam, "_reindex", lambda g: built.append(1) or real(g))
    return built


def test_a_chain_of_blocks_merges_without_an_index_rebuild_per_merge(monkeypatch):
    built = _index_builds(monkeypatch)
    merged_ok(_repvgg_chain(6), ["Conv", "Relu"] * 6)
    assert built == []  # the trees are disjoint: what each merge looks up is unchanged


def test_a_tree_reading_what_an_earlier_merge_rewrote_gets_a_fresh_index(monkeypatch):
    built = _index_builds(monkeypatch)
    merged_ok(_repvgg_chain(3, parallel=True), ["Conv", "Relu"] * 3 + ["Concat"])
    assert len(built) == 2  # before the second and the third tree: they read the same input
