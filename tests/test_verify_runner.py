"""ORT sessions for verification: provider names, availability errors, opt levels, running feeds."""
from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from bnfold.errors import BnfoldError, InputError
from bnfold.verification import runner


def _relu() -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_cpu_chain() -> None:
    assert runner.provider_chain("cpu") == ("CPUExecutionProvider",)


def test_unavailable_provider_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BnfoldError, match="'cuda'.*not available") as exc:
        runner.provider_chain("cuda")
    assert "\n" not in str(exc.value)
    with pytest.raises(BnfoldError, match="not available"):
        runner.provider_chain("tensorrt")


def test_cuda_chain_falls_back_to_cpu_for_unsupported_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    assert runner.provider_chain("cuda") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert runner.provider_chain("TensorRT")[0] == "TensorrtExecutionProvider"


def test_unknown_provider_and_opt_level() -> None:
    with pytest.raises(BnfoldError, match="unknown provider"):
        runner.provider_chain("tpu")
    with pytest.raises(BnfoldError, match="optimisation level"):
        runner.check_opt_level("max")


@pytest.mark.parametrize("level", runner.OPT_LEVELS)
def test_session_runs_at_every_opt_level(level: str) -> None:
    s = runner.make_session(_relu(), "cpu", level)
    out = runner.run(s, {"x": np.array([[-1.0, 0.5, 2.0]], np.float32)})
    assert out["y"].tolist() == [[0.0, 0.5, 2.0]]


def test_session_from_path(tmp_path: Path) -> None:
    onnx.save(_relu(), tmp_path / "m.onnx")
    s = runner.make_session(tmp_path / "m.onnx", "cpu", "disabled")
    assert runner.run(s, {"x": -np.ones((2, 3), np.float32)})["y"].shape == (2, 3)


def test_unloadable_model_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot load"):
        runner.make_session(tmp_path / "bad.onnx", "cpu", "disabled")


def test_feed_that_does_not_fit_is_input_error() -> None:
    s = runner.make_session(_relu(), "cpu", "disabled")
    with pytest.raises(InputError, match="x:2x4"):
        runner.run(s, {"x": np.ones((2, 4), np.float32)})


@pytest.mark.skipif(not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"),
                    reason="onnxruntime < 1.20 cannot take bfloat16 from Python")
def test_bfloat16_input_is_fed_through_ortvalue() -> None:
    g = h.make_graph([h.make_node("Cast", ["x"], ["y"], to=T.FLOAT)], "cast",
                     [h.make_tensor_value_info("x", T.BFLOAT16, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    s = runner.make_session(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), "cpu",
                            "disabled")
    x = np.array([[-1.0, 0.5, 3.0]], dtype=ml_dtypes.bfloat16)
    assert runner.run(s, {"x": x})["y"].tolist() == [[-1.0, 0.5, 3.0]]


def test_bfloat16_input_on_an_onnxruntime_without_it_says_which_version(monkeypatch) -> None:
    g = h.make_graph([h.make_node("Cast", ["x"], ["y"], to=T.FLOAT)], "cast",
                     [h.make_tensor_value_info("x", T.BFLOAT16, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    s = runner.make_session(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), "cpu",
                            "disabled")
    monkeypatch.delattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type", raising=False)
    x = np.array([[1.0, 2.0, 3.0]], dtype=ml_dtypes.bfloat16)
    with pytest.raises(BnfoldError, match="onnxruntime >= 1.20") as err:
        runner.run(s, {"x": x})
    assert not isinstance(err.value, InputError)
