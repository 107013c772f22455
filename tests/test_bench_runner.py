"""bnfold.bench.session + runner: IO-binding runs, per-variant processes, worker errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.bench.runner import RunConfig, Runner
from bnfold.bench.session import TimedSession
from bnfold.errors import BnfoldError


def conv_bn_model(path: Path) -> str:
    """Conv(2->3, 3x3, pad 1) -> BN -> Relu on x [N, 2, 5, 5]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w", rng.standard_normal((3, 2, 3, 3))), ("g", rng.uniform(0.5, 1.5, 3)),
        ("b", rng.normal(0, 0.1, 3)), ("m", rng.normal(0, 0.1, 3)), ("v", rng.uniform(0.5, 1.5, 3))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_io_binding_run_matches_plain_run(tmp_path: Path) -> None:
    path = conv_bn_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5)).astype(np.float32)
    ts = TimedSession(path, "cpu", "disabled", 1, False)
    ts.bind({"x": x})
    assert ts.run_ms() > 0 and ts.create_ms > 0
    got = ts.binding.copy_outputs_to_cpu()[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_missing_input_value_is_reported(tmp_path: Path) -> None:
    ts = TimedSession(conv_bn_model(tmp_path / "m.onnx"), "cpu", "all", 1, False)
    with pytest.raises(RuntimeError, match="no input value for 'x'"):
        ts.bind({})


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_cuda_session_without_cuda_provider_refuses_silent_cpu_fallback(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        TimedSession(conv_bn_model(tmp_path / "m.onnx"), "cuda", "all", 1, False)


def test_isolated_runner_times_each_variant_in_its_own_process(tmp_path: Path) -> None:
    path = conv_bn_model(tmp_path / "m.onnx")
    x = {"x": np.zeros((1, 2, 5, 5), np.float32)}
    with Runner([("a", path), ("b", path)], isolate=True) as runner:
        pids = {p.pid for p in runner._procs}
        assert len(pids) == 2
        runs = runner.measure(RunConfig("cpu", "basic", 1, 1), x, warmup=1, runs=4)
        procs = list(runner._procs)
    assert [r.name for r in runs] == ["a", "b"]
    assert all(len(r.samples_ms) == 4 and min(r.samples_ms) > 0 and r.create_ms > 0 for r in runs)
    assert not any(p.is_alive() for p in procs)


def test_worker_error_becomes_bnfold_error_and_worker_survives(tmp_path: Path) -> None:
    good = conv_bn_model(tmp_path / "m.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    x = {"x": np.zeros((1, 2, 5, 5), np.float32)}
    with Runner([("good", good), ("bad", str(bad))], isolate=False) as runner:
        with pytest.raises(BnfoldError, match=r"onnxruntime failed on bad .*bad\.onnx"):
            runner.measure(RunConfig("cpu", "all", 1, 1), x, warmup=0, runs=2)
        runner.variants[1] = ("bad", good)  # same worker keeps serving after the error
        runs = runner.measure(RunConfig("cpu", "all", 1, 1), x, warmup=0, runs=2)
    assert len(runs[1].samples_ms) == 2
