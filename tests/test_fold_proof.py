"""Local proof of every fold: wrong folds are caught and undone wherever they sit."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.verification.engines import OrtProcess
from bnfold.folding import bn as fold_bn
from bnfold.folding import proof
from bnfold.folding.report import Reason
from modelgen import Builder, count_bn, max_error, tolerance


def corrupt_bn(monkeypatch: pytest.MonkeyPatch, channels: int, *, shift: float = 0.0,
               scale: float = 1.0) -> None:
    """Make the fold math wrong for BNs of ``channels`` channels only."""
    real = fold_bn.fold_params

    def wrong(gamma, beta, mean, var, eps):  # noqa: ANN001, ANN202
        s, t = real(gamma, beta, mean, var, eps)
        return (s * scale, t + shift) if len(gamma) == channels else (s, t)

    monkeypatch.setattr(fold_bn, "fold_params", wrong)


def pointwise_chain(n: int) -> onnx.ModelProto:
    """``n`` blocks of 1x1 Conv -> BN on 2 channels: one proof region each, tiny weights."""
    b = Builder()
    y = b.input("x", ["N", 2, 4, 4])
    for _ in range(n):
        y = b.bn(b.conv(y, 2, 2, k=1, pads=0), 2)
    b.output(y)
    return b.model()


def conv_bn_chain() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", ["N", 3, 6, 6])
    y = b.bn(b.conv(x, 3, 4), 4)
    b.output(b.bn(b.conv(y, 4, 6), 6))
    return b.model()


def if_model(cond_value: bool = True) -> onnx.ModelProto:
    """An If on a constant condition: the then branch (4 channels) is always the one taken."""
    def branch(seed: int, c: int) -> onnx.GraphProto:
        b = Builder(seed=seed)
        y = b.bn(b.conv("x", 3, c), c)
        y = b.node("ReduceMean", [y], axes=[1], keepdims=1)
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, None)
        return helper.make_graph(b.nodes, f"branch{seed}", [], [out], b.inits)

    b = Builder()
    b.input("x", ["N", 3, 5, 5])
    cond = b.const(np.array(cond_value), "cond", dtype=np.bool_)
    b.output(b.node("If", [cond], then_branch=branch(1, 4), else_branch=branch(2, 5)))
    return b.model()


def by_channels(result: bnfold.FoldResult, model: onnx.ModelProto) -> dict[int, object]:
    """Main-graph records keyed by the BN's channel count (distinct in each test model)."""
    sizes = {}
    def visit(g: onnx.GraphProto) -> None:
        inits = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "BatchNormalization":
                sizes[n.output[0]] = inits[n.input[1]].dims[0]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
    visit(model.graph)
    return {sizes[r.bn_output]: r for r in result.records}


def test_wrong_fold_in_main_graph_is_undone(monkeypatch):
    model = conv_bn_chain()
    corrupt_bn(monkeypatch, 6, scale=1.01)
    result = bnfold.fold(model)
    rec = by_channels(result, model)
    assert rec[6].reason is Reason.PROOF_FAILED and "max abs error" in rec[6].detail
    assert rec[4].folded and count_bn(result.model) == 1
    assert max_error(model, result.model) < tolerance(model)


def test_wrong_fold_in_untaken_if_branch_is_undone(monkeypatch):
    model = if_model()
    corrupt_bn(monkeypatch, 5, scale=1.5)
    result = bnfold.fold(model)
    rec = {r.graph.rsplit(".", 1)[1]: r for r in result.records}
    assert rec["else_branch"].reason is Reason.PROOF_FAILED  # the 5-channel branch
    assert rec["then_branch"].folded and rec["then_branch"].proof_engine == "onnxruntime"
    flipped = if_model(cond_value=False)  # run the branch end-to-end feeds never took
    for m in (flipped, result.model):
        assert m.graph.initializer[0].name.startswith("cond")
    result.model.graph.initializer[0].CopyFrom(flipped.graph.initializer[0])
    assert max_error(flipped, result.model) < tolerance(flipped)


def test_without_proofs_the_untaken_branch_wrong_fold_passes_end_to_end(monkeypatch):
    """The blind spot the proofs close: verify only sees the branch its feeds take."""
    model = if_model()
    corrupt_bn(monkeypatch, 5, scale=1.5)
    result = bnfold.fold(model, prove=False)
    assert len(result.folded) == 2
    assert bnfold.verify(model, result.model).passed


def test_wrong_fold_before_argmax_is_undone(monkeypatch):
    b = Builder()
    x = b.input("x", ["N", 3, 6, 6])
    label = b.node("ArgMax", [b.bn(b.conv(x, 3, 4), 4)], axis=1)
    b.outputs.append(helper.make_tensor_value_info(label, TensorProto.INT64, None))
    model = b.model()
    corrupt_bn(monkeypatch, 4, shift=0.5)  # the same shift on every channel: argmax unchanged
    assert bnfold.verify(model, bnfold.fold(model, prove=False).model).passed
    result = bnfold.fold(model)
    assert result.records[0].reason is Reason.PROOF_FAILED and count_bn(result.model) == 1


def test_correct_fold_records_its_proof_error():
    result = bnfold.fold(conv_bn_chain())
    for r in result.records:
        assert r.folded and r.proof_engine == "onnxruntime"
        assert 0 <= r.proof_max_abs <= r.proof_tol and r.proof_peak > 0
        assert r.to_dict()["proof_max_abs"] == r.proof_max_abs


def test_inspect_and_prove_false_run_no_proof():
    model = conv_bn_chain()
    assert all(r.proof_engine == "" for r in bnfold.inspect(model).records)
    assert all(r.proof_max_abs is None for r in bnfold.fold(model, prove=False).records)


def test_wrong_constant_evaluation_is_caught_by_the_parameter_subgraph_proof(monkeypatch):
    """BN variance computed by Constant -> Add: the proof runs that subgraph itself on ORT, so
    a wrong evaluation by bnfold's constant folder is caught, not copied into both sides."""
    b = Builder()
    x = b.input("x", ["N", 3, 6, 6])
    gamma, beta, mean, var = b.bn_params(4)
    one = b.node("Constant", [], value=numpy_helper.from_array(np.ones(4, np.float32)))
    var = b.node("Add", [var, one])
    b.output(b.bn(b.conv(x, 3, 4), 4, params=[gamma, beta, mean, var]))
    model = b.model()
    assert bnfold.fold(model).records[0].proof_engine == "onnxruntime"
    import dataclasses

    import bnfold.graph.consteval as consteval

    real = consteval.evaluate_all

    def doubled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a wrong constant folder
        return {name: out if out.value is None else dataclasses.replace(out, value=out.value * 2)
                for name, out in real(*args, **kwargs).items()}

    monkeypatch.setattr(consteval, "evaluate_all", doubled)
    result = bnfold.fold(model)
    assert result.records[0].reason is Reason.PROOF_FAILED
    assert max_error(model, result.model) < tolerance(model)


def test_proof_model_keeps_the_model_opsets_and_parameter_nodes(monkeypatch):
    b = Builder(opset=12)
    x = b.input("x", ["N", 3, 6, 6])
    gamma, beta, mean, var = b.bn_params(4)
    wide = b.const(np.ones((1, 4)))
    var = b.node("Add", [var, b.node("Squeeze", [wide], axes=[0])])
    b.output(b.bn(b.conv(x, 3, 4), 4, params=[gamma, beta, mean, var]))
    model = b.model()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    built = []
    real = proof._pair
    def spy(chunk, source, weights):  # noqa: ANN001, ANN202
        built.append(m := real(chunk, source, weights))
        return m
    monkeypatch.setattr(proof, "_pair", spy)
    result = bnfold.fold(model)
    assert result.records[0].folded and result.records[0].proof_engine == "onnxruntime"
    pair = built[0]
    assert {(o.domain, o.version) for o in pair.opset_import} == {("", 12),
                                                                 ("com.example", 1)}
    sides = {tag: sorted(n.op_type for n in pair.graph.node if n.output[0].startswith(tag))
             for tag in ("o0_", "f0_")}
    assert sides == {"o0_": ["Add", "BatchNormalization", "Conv", "Squeeze"], "f0_": ["Conv"]}
    drawn = [i.name for i in pair.graph.input if i.name.startswith("r0_")]
    assert len(drawn) == 1 and all(n.input[0] == drawn[0] for n in pair.graph.node
                                   if n.op_type == "Conv")  # both sides read the same draws


def record_submits(monkeypatch) -> list[tuple]:  # noqa: ANN001
    """Every command the proofs send their ORT child (``OrtProcess.submit``'s message)."""
    sent: list[tuple] = []
    real_submit = OrtProcess.submit

    def recording(self, label, *msg):  # noqa: ANN001, ANN002, ANN202
        sent.append(msg)
        return real_submit(self, label, *msg)

    monkeypatch.setattr(OrtProcess, "submit", recording)
    return sent


def record_loads(monkeypatch) -> list[tuple[str, int]]:  # noqa: ANN001
    """(session key, model bytes or -1 for a path) of every session the proofs' ORT child
    loads; a batch (load, runs and drop in one command) is "proof-pair"."""
    sent = record_submits(monkeypatch)

    class Loads(list):
        def __iter__(self):  # noqa: ANN204
            for msg in sent:
                if msg[0] in ("load", "once"):
                    key, source = ("proof-pair", msg[1]) if msg[0] == "once" else msg[1:3]
                    yield key, len(source) if isinstance(source, bytes) else -1

    return Loads()


def test_fifty_bn_model_is_proved_with_one_session(monkeypatch):
    model = pointwise_chain(52)
    made = record_loads(monkeypatch)
    result = bnfold.fold(model)
    assert len(result.folded) == 52 and all(r.proof_engine for r in result.records)
    assert [k for k, _ in made] == ["proof-pair"]


def test_batched_proof_feeds_large_weights_instead_of_serializing_them(monkeypatch):
    """A model's weights are not copied into the proof models' bytes: ORT parses a few KB and
    reads the weights from numpy (two 256 KB convolutions here)."""
    b = Builder()
    y = b.input("x", ["N", 128, 4, 4])
    for _ in range(2):
        y = b.bn(b.conv(y, 128, 128, k=2, pads=0), 128)
    b.output(y)
    model = b.model()
    loads = record_loads(monkeypatch)
    result = bnfold.fold(model)
    sizes = [size for _, size in loads]
    assert len(result.folded) == 2 and all(r.proof_engine == "onnxruntime" for r in result.records)
    assert len(sizes) == 1 and max(sizes) < 64 << 10, sizes
    assert max_error(model, result.model) <= tolerance(model)


def test_a_region_that_crashes_onnxruntime_is_proved_elsewhere_not_fatal():
    """ORT segfaults on an opset-9 BN with empty optional outputs; the proofs run ORT in a
    child process, so the fold survives and the region is proved on onnx.reference."""
    b = Builder(opset=9)
    x = b.input("x", [1, 3, 4, 4])
    y = b.bn(b.conv(x, 3, 3), 3)
    bn = b.nodes[-1]
    bn.output.extend(["", "", "", ""])
    b.output(y)
    model = b.model()
    model.ir_version = 8
    result = bnfold.fold(model)
    assert result.records[0].folded  # on onnx.reference while ORT crashes on the region


def test_float64_conv_without_ort_kernel_is_proved_on_onnx_reference():
    b = Builder(dtype=np.float64)
    x = b.input("x", ["N", 3, 5, 5])
    b.output(b.bn(b.conv(x, 3, 4), 4))
    result = bnfold.fold(b.model())
    assert result.records[0].folded and result.records[0].proof_engine == "onnx.reference"
    assert result.records[0].proof_max_abs <= 1e-9 * result.records[0].proof_peak + 1e-12


def test_fold_more_accurate_than_a_cancelling_original_is_kept():
    """Conv bias 3000 and BN mean 3000: the original loses digits, the fold does not."""
    b = Builder()
    x = b.input("x", ["N", 3, 6, 6])
    w = b.const(b.weights((4, 3, 3, 3), scale=0.02))  # small activations next to 3000
    conv = b.node("Conv", [x, w, b.const(np.full(4, 3000.0))], pads=[1, 1, 1, 1])
    params = [b.const(np.full(4, 50.0)), b.const(np.zeros(4)), b.const(np.full(4, 3000.0)),
              b.const(np.ones(4))]
    b.output(b.bn(conv, 4, params=params))
    result = bnfold.fold(b.model())
    assert result.records[0].folded and "truth" in result.records[0].proof_engine


def test_batch_that_ort_cannot_run_falls_back_region_by_region():
    """A float32 fold (ORT) and a float64 fold (no ORT Conv kernel) in one model."""
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.node("Cast", [b.bn(b.conv(x, 3, 4), 4)], to=TensorProto.DOUBLE)
    w = b.const(b.weights((5, 4, 3, 3)), dtype=np.float64)
    y = b.node("Conv", [y, w], pads=[1, 1, 1, 1])
    b.output(b.bn(y, 5, params=[b.const(v, dtype=np.float64) for v in
                                 (np.ones(5), np.zeros(5), np.full(5, 0.5), np.full(5, 2.0))]),
             dtype=np.float64)
    result = bnfold.fold(b.model())
    assert [(r.folded, r.proof_engine) for r in result.records] == [
        (True, "onnxruntime"), (True, "onnx.reference")]


def test_lazy_external_weights_are_read_for_the_proof(tmp_path):
    model = conv_bn_chain()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    result = bnfold.fold(path, lazy_external=True)
    assert all(r.folded and r.proof_engine == "onnxruntime" for r in result.records)


def test_fold_inside_loop_body_reading_outer_weights_is_proved():
    """A Loop body reading the outer graph's weights and BN parameters."""
    outer = Builder(seed=3)
    w = outer.const(outer.weights((3, 3, 3, 3)))
    params = outer.bn_params(3)
    body = helper.make_graph(
        [helper.make_node("Conv", ["v_in", w], ["c"], name="body_conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c"] + params, ["v_out"], name="body_bn"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [None] * 4)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None] * 4)])
    x = outer.input("x", ["N", 3, 5, 5])
    trips = outer.const(np.array(2), "n", dtype=np.int64)
    y = outer.node("Loop", [trips, "", x], body=body)
    outer.outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 3, 5, 5]))
    model = outer.model()
    result = bnfold.fold(model)
    rec = result.records[0]
    assert rec.folded and rec.graph.endswith(".body") and rec.proof_engine == "onnxruntime"
    assert max_error(model, result.model) < tolerance(model)


def test_truth_of_another_shape_than_ort_leaves_the_failed_proof_standing(monkeypatch):
    """Found by the trust campaign: a ConvTranspose (kernel 1 < stride 2, SAME_UPPER) is 5
    long on ORT but 6 on onnx.reference (the spec's in * stride); a wrong fold's proof then
    asked the float64 truth and raised a numpy broadcast ValueError out of bnfold.fold."""
    b = Builder(opset=11, seed=2)
    y = b.node("ConvTranspose", [b.input("x", ["N", 2, 3]), b.const(b.weights((2, 3, 1)))],
               auto_pad="SAME_UPPER", strides=[2])
    b.output(b.bn(y, 3))
    model = b.model()
    corrupt_bn(monkeypatch, 3, scale=1.3)
    result = bnfold.fold(model)
    (rec,) = result.records
    assert rec.reason is Reason.PROOF_FAILED, rec.to_dict()
    assert max_error(model, result.model) < tolerance(model)


def test_forward_fold_proof_runs_on_a_capped_spatial_size(monkeypatch):
    """BN -> unpadded Conv on 224x224: the proof feeds what the conv needs (border and interior
    outputs), not the real 224x224 activation (the pre-activation benchmark took 1.4 s)."""
    b = Builder()
    x = b.input("x", ["N", 8, 224, 224])
    b.output(b.conv(b.bn(b.node("Relu", [x]), 8), 8, 8, k=3, pads=0))
    model = b.model()
    sent = record_submits(monkeypatch)
    result = bnfold.fold(model)
    drawn = [spec for msg in sent if msg[0] == "once" for spec in msg[5][2]]  # made there
    shapes = [tuple(shape) for name, shape, _ in drawn if name.startswith("r0_")]
    shapes += [v.shape for msg in sent if msg[0] == "run" for k, v in msg[2].items()
               if k.startswith("r0_")]
    assert result.records[0].folded and result.records[0].direction == "forward"
    assert shapes and all(s[2] <= 8 and s[3] <= 8 for s in shapes if len(s) == 4), shapes


def test_one_wrong_fold_in_a_combined_proof_is_localized_and_undone_alone(monkeypatch):
    """Five folds proved in one batched session (originals and folds side by side); the one
    wrong fold (5 channels) is found by its own outputs and rerun alone; the other four stay
    folded and proven."""
    b = Builder()
    y = b.input("x", ["N", 2, 5, 5])
    c = 2
    for out in (3, 4, 5, 6, 7):
        y = b.bn(b.conv(y, c, out), out)
        c = out
    b.output(y)
    model = b.model()
    corrupt_bn(monkeypatch, 5, scale=1.02)
    loads = record_loads(monkeypatch)
    result = bnfold.fold(model)
    rec = by_channels(result, model)
    assert rec[5].reason is Reason.PROOF_FAILED and "max abs error" in rec[5].detail
    assert all(rec[c].folded and rec[c].proof_engine == "onnxruntime" for c in (3, 4, 6, 7))
    # batch of five (one model), the failing region alone (two), then the refold's four (one)
    assert [k for k, _ in loads] == ["proof-pair", "proof-original", "proof-folded",
                                     "proof-pair"]
    assert count_bn(result.model) == 1
    assert max_error(model, result.model) < tolerance(model)


def test_batched_proof_hands_weights_over_in_a_shared_file(monkeypatch):
    sent = record_submits(monkeypatch)
    b = Builder()
    y = b.input("x", ["N", 128, 4, 4])
    b.output(b.bn(b.conv(y, 128, 128, k=2, pads=0), 128))
    result = bnfold.fold(b.model())
    handed = [msg[4] for msg in sent if msg[0] == "once"]
    assert result.records[0].proof_engine == "onnxruntime" and len(handed) == 1
    assert all(f[0] == "shared" and len(f[2]) >= 1 for f in handed)  # a file the child maps


def test_proof_batches_are_capped_in_regions(monkeypatch):
    """ORT's session creation is super-linear in the node count: 5 folds with a cap of 2
    regions per batch take 3 batched sessions (each an original and folded pair)."""
    monkeypatch.setattr(proof, "_BATCH_REGIONS", 2)
    model = pointwise_chain(5)
    loads = record_loads(monkeypatch)
    result = bnfold.fold(model)
    assert len(result.folded) == 5 and all(r.proof_engine for r in result.records)
    assert [k for k, _ in loads] == ["proof-pair"] * 3


def test_proof_batches_map_at_most_sixteen_megabytes_of_weights_in_the_child(monkeypatch):
    """Four folds of 2.4 MB weights (4.7 MB proven each: original and folded) are proven in
    two batches, not one: a batch's weights are mapped in the ORT child while the parent holds
    the model, so smaller batches lower the peak of the two together."""
    from bnfold.verification.shared import SharedArrays

    handed: list[int] = []
    real_spec = SharedArrays.spec

    def recording(self):  # noqa: ANN001, ANN202
        handed.append(self.nbytes)
        return real_spec(self)

    monkeypatch.setattr(SharedArrays, "spec", recording)
    b = Builder()
    y = b.input("x", ["N", 256, 2, 2])
    for _ in range(4):
        y = b.bn(b.conv(y, 256, 256, k=3), 256)
    b.output(y)
    result = bnfold.fold(b.model())
    assert len(result.folded) == 4 and all(r.proof_engine == "onnxruntime" for r in result.records)
    assert len(handed) == 2 and max(handed) <= 16 << 20 < sum(handed)


def test_freed_memory_is_given_back_before_the_proofs_and_after_each_batch(monkeypatch):
    """The parent holds the folded model while the child maps a batch: the fold's freed
    temporaries go back to the system before the first batch, each batch's feeds and outputs
    once it is judged (the next batch is in the child by then)."""
    events: list[str] = []
    monkeypatch.setattr(proof, "trim_heap", lambda: events.append("trim"))
    real_submit = OrtProcess.submit

    def recording(self, label, *msg):  # noqa: ANN001, ANN002, ANN202
        events.append("proof-pair" if msg[0] == "once" else msg[0])
        return real_submit(self, label, *msg)

    monkeypatch.setattr(OrtProcess, "submit", recording)
    monkeypatch.setattr(proof, "_BATCH_REGIONS", 2)
    model = pointwise_chain(3)
    result = bnfold.fold(model)
    assert len(result.folded) == 3
    assert events == ["trim", "proof-pair", "proof-pair", "trim", "trim"]


def test_fold_after_matmul_on_symbolic_tokens_is_proven():
    """x [N, T, 16] -> MatMul -> Reshape [-1, 8] -> BN: both leading dims are symbolic (as in
    a TorchScript LeViT); the proof gives them concrete sizes instead of refusing."""
    b = Builder(seed=12)
    x = b.input("x", ["N", "T", 16])
    y = b.node("MatMul", [x, b.const(b.weights((16, 8)))])
    b.output(b.bn(b.node("Reshape", [y, b.const(np.array([-1, 8]), "s", np.int64)]), 8))
    model = b.model()
    result = bnfold.fold(model)
    rec = result.records[0]
    assert rec.folded and rec.proof_engine == "onnxruntime", rec.to_dict()
    assert count_bn(result.model) == 0
    assert max_error(model, result.model) <= tolerance(model)


def test_errors_measured_together_equal_the_pair_by_pair_numbers():
    """``_errors`` over a concatenation gives each pair exactly what one pair alone gives: the
    largest |folded - original| (NaN/inf agreeing counted as zero, disagreeing as inf) and the
    largest finite |original|; empty pairs are zero, shape mismatches None."""
    from bnfold.verification.compare import abs_errors

    rng = np.random.default_rng(11)

    def pair(shape, dtype, specials):  # noqa: ANN001, ANN202
        ref = rng.normal(size=shape).astype(dtype)
        cand = (ref + rng.normal(size=shape) * 1e-3).astype(dtype)
        if specials and ref.size >= 6:
            ref.flat[0], cand.flat[0] = np.nan, np.nan      # agree on NaN
            ref.flat[1], cand.flat[1] = np.inf, np.inf      # agree on inf
            ref.flat[2], cand.flat[2] = -np.inf, 1.0        # disagree: inf
            cand.flat[3] = np.nan                           # disagree: inf
            ref.flat[4] = -1e4                              # the finite peak
        return ref, cand

    pairs = [pair((2, 3, 4), np.float32, False), pair((0, 3), np.float32, False),
             pair((2, 5), np.float16, True), pair((7,), np.float64, False),
             (np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32)),
             pair((3, 4), np.float32, True), pair((), np.float32, False)]
    pairs.append((np.full((2, 2), np.nan, np.float32), np.full((2, 2), np.nan, np.float32)))
    finite = [pairs[0], pair((2, 5), np.float16, False), pairs[3], pair((4, 1), np.float32, False)]

    def check(pairs, got):  # noqa: ANN001, ANN202
        for (ref, cand), found in zip(pairs, got):
            if ref.shape != cand.shape:
                assert found is None
                continue
            r64 = np.asarray(ref, dtype=np.float64)
            want_d = float(abs_errors(r64, np.asarray(cand, dtype=np.float64)).max(initial=0.0))
            want_p = float(np.max(np.abs(r64[np.isfinite(r64)]), initial=0.0))
            assert found == (want_d, want_p)
        return got

    got = check(pairs, proof._errors(pairs))
    assert got[2][0] == np.inf and got[2][1] == 1e4 and got[1] == (0.0, 0.0)
    check(finite, proof._errors(finite))  # all finite: the plain difference, mixed dtypes


def test_a_child_that_dies_with_a_batch_in_flight_costs_only_that_batch(monkeypatch):
    """Batches run in the child while the next is built: killed then, the batch in flight is
    lost (its regions run alone in a new child), the next one runs in the new child, every fold
    is still proven on ORT and nothing is left in flight."""
    import signal

    from bnfold.verification.shared_child import shared_process

    monkeypatch.setattr(proof, "_BATCH_REGIONS", 1)
    model = pointwise_chain(3)
    real_build, built = proof._build, []

    def build(chunk, model):  # noqa: ANN001, ANN202
        built.append(real_build(chunk, model))
        if len(built) == 2:  # the first batch is in the child now
            os.kill(shared_process()._start().pid, signal.SIGKILL)
        return built[-1]

    monkeypatch.setattr(proof, "_build", build)
    loads = record_loads(monkeypatch)
    result = bnfold.fold(model)
    assert len(result.folded) == 3
    assert all(r.proof_engine == "onnxruntime" for r in result.records)
    # the lost first batch's region runs alone (original, folded) once the second is back
    assert [k for k, _ in loads] == ["proof-pair", "proof-pair", "proof-original",
                                     "proof-folded", "proof-pair"]
    assert not shared_process()._in_flight


def test_an_error_while_a_batch_is_in_flight_leaves_the_child_ready(monkeypatch):
    """The proofs raise (here: judging the first batch) while the next batch runs: its reply is
    read and its weights file removed on the way out, so the next fold finds the child idle."""
    from bnfold.verification.shared_child import shared_process

    monkeypatch.setattr(proof, "_BATCH_REGIONS", 1)
    model = pointwise_chain(3)
    files: list[str] = []
    real_build = proof._build

    def build(chunk, model):  # noqa: ANN001, ANN202
        batch = real_build(chunk, model)
        files.append(batch.weights.path)
        return batch

    def broken(batch):  # noqa: ANN001, ANN202
        raise RuntimeError("judging failed")

    monkeypatch.setattr(proof, "_build", build)
    monkeypatch.setattr(proof, "_judge_batch", broken)
    with pytest.raises(RuntimeError, match="judging failed"):
        bnfold.fold(model)
    assert len(files) == 2 and not shared_process()._in_flight
    assert not any(os.path.exists(f) for f in files)
    monkeypatch.undo()
    assert len(bnfold.fold(model).folded) == 3


def test_weights_left_in_the_model_file_are_mapped_where_they_lie(tmp_path, monkeypatch) -> None:
    """A lazy fold of a saved model: the original conv weights (over the fed size, wherever
    protobuf put them in the file) are read by the child from the model file itself, not
    copied into the proof's shared file; the proofs measure the same errors as a fold held in
    memory."""
    from bnfold.verification import shared

    b = Builder(seed=3)
    y = b.input("x", ["N", 64, 6, 6])
    for _ in range(2):
        y = b.bn(b.conv(y, 64, 64), 64)  # 64*64*3*3 float32 = 144 KB per weight
    b.output(y)
    model = b.model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    mapped: list[tuple] = []
    real_spec = shared.SharedArrays.spec

    def spec(self):
        found = real_spec(self)
        mapped.extend(e for e in found[2] if len(e) == 5)
        return found

    monkeypatch.setattr(shared.SharedArrays, "spec", spec)
    lazy = bnfold.fold(str(path), lazy_external=True)
    assert {e[4] for e in mapped} == {str(path)} and len(mapped) == 2
    held = bnfold.fold(model)
    assert [r.proof_max_abs for r in lazy.records] == [r.proof_max_abs for r in held.records]
    assert all(r.target is not None for r in lazy.records)
