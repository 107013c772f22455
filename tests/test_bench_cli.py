"""``bnfold bench``: exit codes, JSON on stdout, progress and errors on stderr."""
from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from test_bench_runner import conv_bn_model

from bnfold.cli import main

FAST = ["--runs", "3", "--warmup", "0", "--opt-level", "disabled", "--same-process"]


def test_json_output_and_plot(tmp_path: Path) -> None:
    model = conv_bn_model(tmp_path / "m.onnx")
    png = tmp_path / "lat.png"
    res = CliRunner().invoke(main, ["bench", model, *FAST, "--json", "--plot", str(png)])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["fold"] == {"bn_before": 1, "bn_after": 0}
    assert [v["name"] for v in d["configs"][0]["variants"]] == ["original", "folded"]
    assert "samples_ms" not in d["configs"][0]["variants"][0]
    assert "warm-up" in res.stderr and png.read_bytes()[:4] == b"\x89PNG"


def test_table_with_two_models_and_quiet(tmp_path: Path) -> None:
    model = conv_bn_model(tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["bench", model, model, *FAST, "-q", "--batch", "3"])
    assert res.exit_code == 0, res.stderr
    assert "speedup" in res.stdout and "folded on the fly" not in res.stdout
    assert res.stderr == ""


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_cuda_absent_exits_2_with_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["bench", conv_bn_model(tmp_path / "m.onnx"), "--provider", "cuda"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "CUDAExecutionProvider is not available" in res.stderr


@pytest.mark.parametrize("args,msg", [(["--dim", "seq"], "--dim expects NAME=N"),
                                      (["--runs", "1"], "--runs")])
def test_bad_options_exit_2(tmp_path: Path, args: list[str], msg: str) -> None:
    res = CliRunner().invoke(main, ["bench", conv_bn_model(tmp_path / "m.onnx"), *args])
    assert res.exit_code == 2 and msg in res.stderr


def test_missing_model_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2 and "bnfold: error:" in res.stderr


def test_help_has_examples() -> None:
    res = CliRunner().invoke(main, ["bench", "--help"])
    assert res.exit_code == 0 and "Examples:" in res.stdout and "--provider cuda" in res.stdout
