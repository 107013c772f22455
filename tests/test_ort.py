"""``bnfold.ort``: one table of provider and optimization-level names for every command."""
from __future__ import annotations

import click
import onnxruntime as ort
import pytest

from bnfold import ort as names
from bnfold.bench import check_provider
from bnfold.cli import main
from bnfold.errors import BnfoldError
from bnfold.verification import ort_child


def _choices(command: str, option: str) -> list[str]:
    cmd = main.commands[command]
    param = next(p for p in cmd.params if option in getattr(p, "opts", ()))
    assert isinstance(param.type, click.Choice)
    return list(param.type.choices)


@pytest.mark.parametrize("command", ["fold", "verify", "bench"])
def test_every_command_accepts_the_same_provider_and_level_names(command: str) -> None:
    assert _choices(command, "--provider") == ["cpu", "cuda", "tensorrt"]
    assert _choices(command, "--opt-level") == list(names.OPT_LEVELS)


def test_tensorrt_falls_back_to_cuda_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert names.provider_chain("tensorrt") == (
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_bench_knows_tensorrt_and_says_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BnfoldError, match="TensorrtExecutionProvider is not available"):
        check_provider("tensorrt")


def test_the_verification_child_uses_the_same_levels() -> None:
    assert ort_child.LEVELS == names._ORT_LEVELS
    assert list(ort_child.LEVELS) == list(names.OPT_LEVELS)


@pytest.mark.parametrize("level,expected", [("disabled", "ORT_DISABLE_ALL"),
                                            ("all", "ORT_ENABLE_ALL")])
def test_session_options_set_the_level(level: str, expected: str) -> None:
    so = names.session_options(level, threads=2)
    assert so.graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)
    assert so.intra_op_num_threads == 2 and so.log_severity_level == 3


def test_unknown_level_is_a_bnfold_error() -> None:
    with pytest.raises(BnfoldError, match="choose from disabled, basic, extended, all"):
        names.session_options("max")
