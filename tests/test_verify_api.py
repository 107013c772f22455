"""bnfold.verify end to end on tiny models: verdicts, inputs, data accuracy, fold reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import Builder, bn9, ort_crashes_on
from onnx import numpy_helper

import bnfold
from bnfold.errors import BnfoldError, InputError
from bnfold.verification import compare, verify, verify_fold


def _classifier(batch: str | int = "N", dtype: type = np.float32) -> onnx.ModelProto:
    """x (batch, 2, 6, 6) -> conv-BN-relu -> conv-BN -> global pool -> flatten -> logits (batch, 3)."""
    b = Builder(seed=5, dtype=dtype)
    x = b.input("x", [batch, 2, 6, 6])
    y = b.node("Relu", [b.bn(b.conv(x, 2, 4), 4)])
    y = b.bn(b.conv(y, 4, 3), 3)
    b.output(b.node("Flatten", [b.node("GlobalAveragePool", [y])]))
    return b.model()


def _corrupt(model: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    node = next(n for n in bad.graph.node if n.name == node_name)
    init = next(i for i in bad.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    return bad


def test_folded_model_passes_at_default_seeds_and_batch_sizes() -> None:
    m = _classifier()
    result = bnfold.fold(m)
    rep = verify(m, result.model, fold_result=result, seed=4)
    assert rep.passed
    assert [c.source for c in rep.cases] == [f"random seed={s} batch={b}"
                                             for s, b in ((4, 1), (5, 2), (6, 1))]
    assert [c.input_shapes["x"] for c in rep.cases] == ["1x2x6x6", "2x2x6x6", "1x2x6x6"]
    assert rep.environment["seeds"] == "4, 5, 6"
    assert all(c.metrics.top1_agreement == 1.0 for c in rep.checks)
    assert [r["bn"] for r in rep.fold["records"]] == [r.bn for r in result.records]


def test_corrupted_fold_fails_and_names_the_bn() -> None:
    m = _classifier()
    result = bnfold.fold(m)
    first = result.records[0]
    rep = verify(m, _corrupt(result.model, first.target), fold_result=result)
    assert not rep.passed
    assert rep.localization is not None and rep.localization.bn == first.bn
    assert f"BN {first.bn!r}" in rep.summary()


def test_fixed_batch_runs_once_and_batch_sizes_are_refused() -> None:
    m = _classifier(batch=2)
    rep = verify(m, bnfold.fold(m).model)
    assert rep.passed and [c.input_shapes["x"] for c in rep.cases] == ["2x2x6x6"] * 3
    with pytest.raises(InputError, match="batch"):
        verify(m, m, batch_sizes=[4])


def test_batch_sizes_and_shapes_are_honoured() -> None:
    m = _classifier()
    rep = verify(m, m, batch_sizes=[3])
    assert [c.input_shapes["x"] for c in rep.cases] == ["3x2x6x6"] * 3
    rep = verify(m, m, shapes=["x:5x2x6x6"])
    assert [c.input_shapes["x"] for c in rep.cases] == ["5x2x6x6"] * 3
    with pytest.raises(InputError, match="unknown input"):
        verify(m, m, shapes={"y": (1, 2, 6, 6)})


def test_paths_with_external_data_load_through_ort(tmp_path: Path) -> None:
    m = _classifier()
    folded = bnfold.fold(m).model
    onnx.save(m, tmp_path / "a.onnx", save_as_external_data=True, location="a.data",
              size_threshold=0)
    onnx.save(folded, tmp_path / "b.onnx")
    rep = verify(tmp_path / "a.onnx", str(tmp_path / "b.onnx"))
    assert rep.passed and rep.original == str(tmp_path / "a.onnx")


def test_different_signatures_are_an_input_error() -> None:
    m = _classifier()
    other = _classifier()
    other.graph.input[0].name = "z"
    other.graph.node[0].input[0] = "z"
    with pytest.raises(InputError, match="different inputs"):
        verify(m, other)


def test_unavailable_provider_is_refused_before_running() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(BnfoldError, match="not available"):
        verify(_classifier(), _classifier(), providers=("cpu", "cuda"))


def test_npz_data_with_labels_reports_accuracy(tmp_path: Path) -> None:
    m = _classifier()
    result = bnfold.fold(m)
    x = np.random.default_rng(0).standard_normal((300, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    checks = verify(m, m, data={"x": x}).checks  # 300 rows run in two chunks, joined again
    assert checks[0].metrics.size == 300 * 3
    from bnfold.verification import runner

    ref = runner.run(runner.make_session(m, "cpu", "disabled"), {"x": x})
    labels = ref[next(iter(ref))].argmax(axis=1)
    labels[:30] = (labels[:30] + 1) % 3  # 10% wrong on purpose
    np.save(tmp_path / "l.npy", labels)
    rep = verify(m, result.model, data=tmp_path / "d.npz", labels=tmp_path / "l.npy")
    assert rep.passed and rep.cases[0].input_shapes["x"] == "300x2x6x6"
    assert rep.accuracy is not None
    assert (rep.accuracy.samples, rep.accuracy.original, rep.accuracy.agreement) == (300, 0.9, 1.0)
    assert rep.accuracy.folded == pytest.approx(0.9)


def test_labels_need_data_and_must_match_it(tmp_path: Path) -> None:
    m = _classifier()
    np.save(tmp_path / "l.npy", np.zeros(7, np.int64))
    with pytest.raises(InputError, match="needs --data"):
        verify(m, m, labels=tmp_path / "l.npy")
    with pytest.raises(InputError, match="one label per sample"):
        verify(m, m, data={"x": np.zeros((5, 2, 6, 6), np.float32)}, labels=tmp_path / "l.npy")


def test_float16_outputs_get_float16_tolerances() -> None:
    m = _classifier(dtype=np.float16)
    rep = verify(m, m, batch_sizes=[2])
    assert rep.passed and {(c.dtype, c.atol, c.rtol) for c in rep.checks} == {("float16", 1e-3, 1e-2)}


def test_any_opt_level_can_be_chosen() -> None:
    m = _classifier()
    rep = verify(m, bnfold.fold(m).model, opt_level="all", batch_sizes=[1])
    assert rep.passed and rep.environment["graph optimization level"] == "all"


def test_verify_fold_writes_report_naming_the_output_file(tmp_path: Path) -> None:
    m = _classifier()
    result = bnfold.fold(m)
    rep = verify_fold(m, result, folded_path="out.onnx", report_dir=tmp_path / "r")
    assert rep.passed and rep.folded == "out.onnx"
    assert '"folded": "out.onnx"' in (tmp_path / "r" / "report.json").read_text()
    assert (tmp_path / "r" / "report.html").exists()


def test_bnfold_verify_stays_the_function_after_importing_its_package() -> None:
    import types

    import bnfold.verification  # binds bnfold.verification, not bnfold.verify

    assert isinstance(bnfold.verify, types.FunctionType)
    assert bnfold.verify is bnfold.verification.verify
    m = _classifier()
    assert bnfold.verify(m, m, batch_sizes=[1]).passed


# --- noise-aware verdict: a float64 ground truth of the original -----------------------------

def _cancelling(c: int = 4) -> onnx.ModelProto:
    """Conv with bias 3000 into a BN with running mean 3000: in float32 the original loses the
    low digits of its small result, while the fold cancels the two exactly (in float64)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (c, c, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(c, 3000, np.float32), "b"),
             numpy_helper.from_array(np.ones(c, np.float32), "s"),
             numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
             numpy_helper.from_array(np.full(c, 3000, np.float32), "mean"),
             numpy_helper.from_array(np.ones(c, np.float32), "var")]
    nodes = [onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1] * 4),
             onnx.helper.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["y"],
                                   name="bn")]
    g = onnx.helper.make_graph(
        nodes, "cancel", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                             ["N", c, 5, 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", c, 5, 5])], inits)
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_fold_closer_to_float64_truth_than_original_passes_with_a_note() -> None:
    m = _cancelling()
    result = bnfold.fold(m)
    rep = verify(m, result.model, fold_result=result)
    assert rep.passed and rep.localization is None
    assert all(not c.within_tolerance for c in rep.checks)  # the original's rounding shows
    for c in rep.checks:
        assert c.truth is not None and c.status == "pass (closer to float64 truth)"
        assert c.truth.folded_error < 1e-6 < 1e-5 < c.truth.original_error
    assert "closer to the float64 truth than the original" in rep.summary()
    assert any("float64 ground truth" in n for n in rep.notes)


def test_wrong_fold_farther_from_float64_truth_still_fails() -> None:
    m = _cancelling()
    result = bnfold.fold(m)
    rep = verify(m, _corrupt(result.model, "conv"), fold_result=result)
    assert not rep.passed
    for c in rep.checks:
        assert c.truth is not None and c.truth.folded_error > 100 * c.truth.original_error
    assert "float64 truth: folded error" in rep.summary()
    assert rep.localization is not None and rep.localization.bn == "bn"


# --- nondeterministic models: outputs that differ between two runs of the original ----------

def _noisy(*, deterministic_output: bool) -> onnx.ModelProto:
    """conv-BN -> y, and y + RandomNormalLike(y) (unseeded) -> a second, random output."""
    b = Builder(seed=5)
    x = b.input("x", ["N", 2, 6, 6])
    y = b.bn(b.conv(x, 2, 3), 3)
    b.output(b.node("Add", [y, b.node("RandomNormalLike", [y])]))
    if deterministic_output:
        b.output(y)
    return b.model()


def test_random_output_is_reported_nondeterministic_and_not_blamed_on_a_fold() -> None:
    m = _noisy(deterministic_output=True)
    result = bnfold.fold(m)
    rep = verify(m, result.model, fold_result=result)
    noisy, exact = (o.name for o in m.graph.output)
    assert rep.passed and not rep.unverified and rep.localization is None
    assert rep.nondeterministic == [noisy]
    assert {c.output for c in rep.judged} == {exact}
    assert "nondeterministic" in rep.summary() and noisy in rep.summary()


def test_wrong_fold_is_still_caught_on_the_deterministic_output() -> None:
    m = _noisy(deterministic_output=True)
    result = bnfold.fold(m)
    rep = verify(m, _corrupt(result.model, result.records[0].target), fold_result=result)
    assert not rep.passed and rep.nondeterministic == [m.graph.output[0].name]
    assert rep.localization is not None and rep.localization.bn == result.records[0].bn


def _rerun_lands_within_tolerance(monkeypatch: pytest.MonkeyPatch, noisy: str,
                                  exact: str) -> None:
    """The draws the hostile fuzz once hit: the folded run's noise is far off, the original's
    re-run lands within tolerance of its first run. ``noisy`` becomes ``exact`` + a shift."""
    from bnfold.verification import engines

    real, calls = engines.run_chunks, {"original": 0, "folded": 0}
    atol = compare.default_tolerance(np.float32)[0]

    def drawn(model, chunks):  # noqa: ANN001, ANN202 - as engines.run_chunks
        out = real(model, chunks)
        role = getattr(model, "key", "truth").split(":")[0]
        if role not in calls:  # the float64 truth runs as it is
            return out
        calls[role] += 1
        shift = 100 * atol if role == "folded" else atol / 4 if calls[role] % 2 == 0 else 0.0
        out[noisy] = out[exact] + np.float32(shift)
        return out

    monkeypatch.setattr(engines, "run_chunks", drawn)


def test_random_output_whose_rerun_lands_within_tolerance_is_not_blamed_on_a_fold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = _noisy(deterministic_output=True)
    noisy, exact = (o.name for o in m.graph.output)
    result = bnfold.fold(m)
    _rerun_lands_within_tolerance(monkeypatch, noisy, exact)
    rep = verify(m, result.model, fold_result=result)
    assert rep.passed and rep.localization is None and rep.nondeterministic == [noisy]


def test_output_no_random_op_reaches_keeps_the_tolerance_test_for_rerun_jitter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Jitter within tolerance between two original runs (an accelerator's reduction order)
    does not excuse a folded run beyond it, where no random op feeds the output."""
    m = _noisy(deterministic_output=True)
    noisy, exact = (o.name for o in m.graph.output)
    m.graph.node[-1].op_type, m.graph.node[-1].input[:] = "Identity", [m.graph.node[-1].input[0]]
    m.graph.node[-2].op_type, m.graph.node[-2].input[:] = "Identity", [exact]
    result = bnfold.fold(m)
    _rerun_lands_within_tolerance(monkeypatch, noisy, exact)
    rep = verify(m, result.model, fold_result=result, localize_failures=False)
    assert not rep.passed and rep.nondeterministic == []


def test_random_outputs_are_those_a_random_op_reaches() -> None:
    from bnfold.verification.random_ops import random_outputs

    m = _noisy(deterministic_output=True)
    noisy, exact = (o.name for o in m.graph.output)
    assert random_outputs(m) == {noisy}


def test_all_outputs_nondeterministic_is_an_explicit_unverified_pass() -> None:
    b = Builder(seed=6)
    x = b.input("x", ["N", 2, 6, 6])
    y = b.bn(b.conv(x, 2, 3), 3)
    ratio = b.const(np.float32(0.5), "ratio")
    training = b.const(np.bool_(True), "training", np.dtype(np.bool_))
    b.output(b.node("Dropout", [y, ratio, training]))
    m = b.model()
    result = bnfold.fold(m)
    rep = verify(m, result.model, fold_result=result)
    assert rep.passed and rep.unverified and not rep.judged
    assert rep.summary().startswith("PASS (UNVERIFIED)")
    assert rep.to_dict()["unverified"] is True


# --- ORT crashes and missing kernels -------------------------------------------------------

@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model onnxruntime segfaults on (checked in a throwaway process first)."""
    path = tmp_path_factory.mktemp("crash") / "bn9.onnx"
    onnx.save(bn9(empty_optional_outputs=True), path)
    if not ort_crashes_on(path):
        pytest.skip("this onnxruntime no longer crashes on an opset-9 BN with empty output names")
    return path


def test_ort_crash_on_the_original_is_a_one_line_input_error(crashing: Path) -> None:
    with pytest.raises(InputError, match=r"crashed \(SIGSEGV\).*original model") as exc:
        verify(crashing, bn9(empty_optional_outputs=False))
    assert str(crashing) in str(exc.value) and "\n" not in str(exc.value)


def test_ort_crash_on_the_folded_model_fails_naming_it(crashing: Path) -> None:
    rep = verify(bn9(empty_optional_outputs=False), crashing)
    assert not rep.passed and rep.crash is not None
    assert "SIGSEGV" in rep.crash and f"folded model {crashing}" in rep.crash
    assert rep.summary() == f"FAIL: {rep.crash}"


def test_float64_model_without_ort_kernels_is_verified_on_onnx_reference() -> None:
    m = _classifier(dtype=np.float64)
    result = bnfold.fold(m)
    rep = verify(m, result.model, fold_result=result, batch_sizes=[2])
    assert rep.passed and {c.engine for c in rep.cases} == {"onnx.reference"}
    assert any("no kernel" in n and "onnx.reference" in n for n in rep.notes)
    assert "run on onnx.reference" in rep.summary()
    assert {c.dtype for c in rep.checks} == {"float64"}


def test_engine_of_each_case_is_onnxruntime_when_it_has_the_kernels() -> None:
    m = _classifier()
    rep = verify(m, bnfold.fold(m).model, batch_sizes=[1])
    assert {c.engine for c in rep.cases} == {"onnxruntime CPUExecutionProvider"}


def test_without_a_float64_truth_an_out_of_tolerance_output_stays_a_fail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bnfold.verification import explain

    monkeypatch.setattr(explain, "MAX_TRUTH_BYTES", 0)  # as for an original over 2 GiB
    m = _cancelling()
    rep = verify(m, bnfold.fold(m).model, batch_sizes=[1], seeds=[0])
    assert not rep.passed and rep.checks[0].truth is None
    assert any("no float64 copy" in n for n in rep.notes)


def test_symbolic_dims_get_the_first_size_the_original_runs() -> None:
    from modelgen import sized_model

    m = sized_model(8192)  # runs at 64x64, not at 32x32
    report = verify(m, bnfold.fold(m).model, batch_sizes=[1])
    assert report.passed, report.summary()
    assert {c.input_shapes["x"] for c in report.cases} == {"1x1x64x64"}
    assert "set to 64" in report.summary() and "set to 64" in report.input_size


def test_a_failed_size_probe_leaves_no_session_in_the_callers_child() -> None:
    from modelgen import sized_model

    from bnfold.verification.api import probe_size
    from bnfold.verification.engines import OrtProcess

    with OrtProcess() as proc:
        with pytest.raises(InputError, match="--shape"):
            probe_size(sized_model(10**9), proc)  # runs at no size of the ladder
        assert not proc.has("probe")


def test_progress_callback_hears_every_case() -> None:
    m = _classifier()
    heard: list[str] = []
    verify(m, bnfold.fold(m).model, progress=heard.append)
    assert heard == ([f"running the original on case {k} of 3" for k in range(1, 4)]
                     + [f"verifying case {k} of 3" for k in range(1, 4)])


def test_a_shared_ort_child_never_compares_the_previous_verifications_models() -> None:
    """Found by the real-architecture benchmark: with a caller's ``proc`` the sessions of the last
    verification were reused (same keys), so the next one compared the wrong models."""
    from bnfold.verification.engines import OrtProcess

    m = _classifier()
    result = bnfold.fold(m)
    first = next(r for r in result.records if r.folded)
    with OrtProcess() as proc:
        assert verify(m, result.model, proc=proc, batch_sizes=[1]).passed
        assert not verify(m, _corrupt(result.model, first.target), proc=proc,
                          batch_sizes=[1], localize_failures=False).passed
        assert verify(m, result.model, proc=proc, batch_sizes=[1]).passed
