"""The ORT child process (crashes named, restarts, no-kernel), onnx.reference, model hand-over."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

from bnfold.errors import InputError
from bnfold.verification import engines

CPU = ("CPUExecutionProvider",)


def _relu() -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _conv(elem: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float64), "w")
    w.data_type, w.raw_data = elem, np.ones(4, onnx.helper.tensor_dtype_to_np_dtype(elem)).tobytes()
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="c")], "conv",
                     [h.make_tensor_value_info("x", elem, ["N", 2, 3, 3])],
                     [h.make_tensor_value_info("y", elem, ["N", 2, 3, 3])], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


X = {"x": np.array([[-1.0, 0.5, 2.0]], np.float32)}


def test_child_runs_a_model_from_bytes_and_from_a_path(tmp_path: Path) -> None:
    onnx.save(_relu(), tmp_path / "m.onnx")
    with engines.OrtProcess() as proc:
        proc.load("a", _relu().SerializeToString(), "a", CPU, "disabled")
        proc.load("b", str(tmp_path / "m.onnx"), "b", CPU, "all")
        assert proc.run("a", X)["y"].tolist() == proc.run("b", X)["y"].tolist() == [[0, 0.5, 2]]


def test_killed_child_is_reported_as_a_crash_naming_model_and_signal() -> None:
    with engines.OrtProcess() as proc:
        proc.load("a", _relu().SerializeToString(), "the folded model m.onnx", CPU, "disabled")
        os.kill(proc._start().pid, signal.SIGKILL)
        with pytest.raises(engines.Crashed) as exc:
            proc.run("a", X)
    assert exc.value.how == "SIGKILL"
    assert str(exc.value) == "onnxruntime crashed (SIGKILL) on the folded model m.onnx"


def test_after_a_crash_the_child_restarts_and_reloads_its_sessions() -> None:
    with engines.OrtProcess() as proc:
        proc.load("a", _relu().SerializeToString(), "a", CPU, "disabled")
        first = proc._start().pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(engines.Crashed):
            proc.run("a", X)
        assert proc.run("a", X)["y"].tolist() == [[0, 0.5, 2]]
        assert proc._start().pid != first


def test_a_sent_command_is_answered_later_or_before_the_next_one() -> None:
    """``send`` returns at once; its reply is read by ``get`` or before the next command (kept,
    errors too). ``once`` loads, runs every feed and drops the session in one command."""
    with engines.OrtProcess() as proc:
        reply = proc.send("a", "once", _relu().SerializeToString(), CPU, "disabled", None,
                          [X, {"x": -X["x"]}], ["y"])
        assert proc._in_flight
        proc.load("b", _relu().SerializeToString(), "b", CPU, "disabled")  # reads it first
        enabled, outs = reply.get()
        assert "CPUExecutionProvider" in enabled
        assert [o["y"].tolist() for o in outs] == [[[0, 0.5, 2]], [[1, 0, 0]]]
        bad = proc.send("bad", "once", b"garbage", CPU, "disabled", None, [], [])
        assert proc.run("b", X)["y"].tolist() == [[0, 0.5, 2]]
        with pytest.raises(RuntimeError):
            bad.get()
        _, measured = proc.send("d", "once", _relu().SerializeToString(), CPU, "disabled", None,
                                ("draws", [0, 1], [("x", [2, 3], "float32")]),
                                ("errors", [("y", "y")])).get()  # drawn and measured there
        from bnfold.verification.ort_child import draws

        for seed, [(stats, shape, same)] in zip((0, 1), measured):
            peak = float(np.maximum(draws(seed, [("x", [2, 3], "float32")])["x"], 0).max())
            assert stats == (0.0, peak) and shape == same == (2, 3)
        proc.submit("c", "info")
        with pytest.raises(RuntimeError, match="in flight"):
            proc.submit("c", "info")
        assert proc.collect("c")[0]


def test_once_sends_back_only_the_outputs_that_differ_from_the_expected_ones() -> None:
    """("same", expected): an output byte-identical to its expected array comes back as None
    (dtype and shape count), given pickled or in a shared file."""
    from bnfold.verification.shared import SharedArrays

    y = np.array([[0.0, 0.5, 2.0]], np.float32)
    cases = {"equal": (y, None), "one value off": (y + np.float32(1e-7), "array"),
             "other dtype": (y.astype(np.float64), "array"), "other shape": (y[0], "array")}
    with engines.OrtProcess() as proc, SharedArrays() as shared:
        shared.add("y", y)
        for expected in [{"y": y}, shared.spec()]:
            _, [out] = proc.send("m", "once", _relu().SerializeToString(), CPU, "disabled", None,
                                 [X], ("same", expected)).get()
            assert out == {"y": None}
        for name, (expected, back) in cases.items():
            _, [out] = proc.send("m", "once", _relu().SerializeToString(), CPU, "disabled", None,
                                 [X], ("same", {"y": expected})).get()
            assert (out["y"] is None) == (back is None), name
            if back is not None:
                assert out["y"].tolist() == y.tolist()


def test_missing_kernel_is_no_kernel_not_an_input_error() -> None:
    with engines.OrtProcess() as proc:
        with pytest.raises(engines.NoKernel, match="NOT_IMPLEMENTED"):
            proc.load("c", _conv(T.DOUBLE).SerializeToString(), "c", CPU, "disabled")
        assert not proc.has("c")  # a session that did not load is not kept to reload


def test_model_ort_refuses_is_a_one_line_input_error() -> None:
    with engines.OrtProcess() as proc, pytest.raises(InputError, match="cannot load the m"):
        proc.load("bad", b"garbage", "the model", CPU, "disabled")


def test_reference_model_runs_what_ort_has_no_kernel_for() -> None:
    ref = engines.ReferenceModel(_conv(T.DOUBLE), "c")
    out = ref.run({"x": np.ones((1, 2, 3, 3), np.float64)})["y"]
    assert ref.engine == "onnx.reference" and out.dtype == np.float64 and out.flat[0] == 2.0


def test_in_memory_model_too_big_for_protobuf_goes_by_path_with_external_data(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bnfold.io.model_io

    monkeypatch.setattr(bnfold.io.model_io, "tensor_bytes", lambda model: 3 * 2**30)
    with engines.OrtProcess() as proc:
        source = engines.ort_source(_conv(T.FLOAT), proc, "big")
        assert isinstance(source, str) and Path(source).is_relative_to(proc.scratch)
        assert len(list(Path(source).parent.iterdir())) == 2  # model + its data file
        proc.load("big", source, "big", CPU, "disabled")
        assert proc.run("big", {"x": np.ones((1, 2, 3, 3), np.float32)})["y"].flat[0] == 2.0
        scratch = proc.scratch
    assert not scratch.exists()


def test_a_dropped_key_takes_its_scratch_files_and_can_be_loaded_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The long-lived child of a fold (``shared_child``) verifies one model after another under
    the same keys: a dropped session's files go, and the next model under its key is written."""
    import bnfold.io.model_io

    monkeypatch.setattr(bnfold.io.model_io, "tensor_bytes", lambda model: 3 * 2**30)
    with engines.OrtProcess() as proc:
        first = engines.ort_source(_conv(T.FLOAT), proc, "truth")
        proc.load("truth", first, "first", CPU, "disabled")
        proc.drop("truth")
        assert not Path(first).exists()
        second = engines.ort_source(_conv(T.FLOAT), proc, "truth")
        proc.load("truth", second, "second", CPU, "disabled")
        assert proc.run("truth", {"x": np.ones((1, 2, 3, 3), np.float32)})["y"].flat[0] == 2.0


def test_info_is_the_childs_onnxruntime() -> None:
    import onnxruntime as ort

    with engines.OrtProcess() as proc:
        assert proc.info() == (ort.__version__, list(ort.get_available_providers()))


def test_child_imports_neither_bnfold_nor_onnx() -> None:
    """Start-up cost: the child pays for one onnxruntime import, not for bnfold's (onnx is slow)."""
    import subprocess
    import sys

    check = ("import sys, runpy; sys.argv = ['x']; "
             "sys.stdin = open(__import__('os').devnull); "
             f"runpy.run_path({str(engines.CHILD)!r}, run_name='__main__'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bnfold', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"  # the child sends stdout to stderr


def test_child_that_exits_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "_BOOT", "import sys; sys.exit('no onnxruntime here')")
    with engines.OrtProcess() as proc, pytest.raises(engines.Crashed) as exc:
        proc.load("a", _relu().SerializeToString(), "the original model m.onnx", CPU, "disabled")
    assert str(exc.value) == ("onnxruntime crashed (exit status 1: no onnxruntime here) on the "
                              "original model m.onnx")


def test_child_sessions_free_activations_after_each_run():
    """No arena and no memory pattern in the ORT child: a run's activations are not held at
    the largest run's peak while both models of a verification stay loaded."""
    from bnfold.verification import ort_child

    session = ort_child._load(_relu().SerializeToString(), list(CPU), "disabled")
    options = session.get_session_options()
    assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)
    out = ort_child._run(session, {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)}, None)
    np.testing.assert_array_equal(out["y"], [[0.0, 0.0, 2.0]])


def test_child_sessions_do_not_spin_for_work():
    """The child's thread pool waits without spinning: spinning threads take the core the
    parent folds on, and slow the runs themselves when the CPUs are busy."""
    from bnfold.verification import ort_child

    session = ort_child._load(_relu().SerializeToString(), list(CPU), "disabled")
    entry = session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")
    assert entry == "0"
    out = ort_child._run(session, {"x": np.array([[-1.0, 3.0, 0.5]], np.float32)}, None)
    np.testing.assert_array_equal(out["y"], [[0.0, 3.0, 0.5]])
