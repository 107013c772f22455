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
    res = CliRunner().invoke(main, ["bench", model, model, *FAST, "-q", "--batch-size", "3"])
    assert res.exit_code == 0, res.stderr
    assert "speedup" in res.stdout and "folded on the fly" not in res.stdout
    assert res.stderr == ""


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_cuda_absent_exits_2_with_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["bench", conv_bn_model(tmp_path / "m.onnx"), "--provider", "cuda"])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "CUDAExecutionProvider is not available" in res.stderr


@pytest.mark.parametrize("args,msg", [(["--dim", "seq"], "bad --dim 'seq': expected SYMBOL=N"),
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


def _with_input(path: Path, out: Path, dtype: int | None = None, dims: list | None = None) -> str:
    import onnx

    model = onnx.load(path)
    tt = model.graph.input[0].type.tensor_type
    if dtype is not None:
        tt.elem_type = dtype
    if dims is not None:
        for d, v in zip(tt.shape.dim, dims):
            d.Clear()
            if isinstance(v, int):
                d.dim_value = v
            else:
                d.dim_param = v
    onnx.save(model, out)
    return str(out)


@pytest.mark.parametrize("change,msg", [({"dtype": 11}, "dtype"),
                                        ({"dims": ["N", 2, 6, 6]}, "axis 2")])
def test_mismatched_models_are_one_line_before_any_session(tmp_path: Path, change: dict,
                                                           msg: str) -> None:
    a = conv_bn_model(tmp_path / "a.onnx")
    fixed = _with_input(Path(a), tmp_path / "fixed.onnx", dims=["N", 2, 5, 5])
    b = _with_input(Path(a), tmp_path / "b.onnx", **change)
    res = CliRunner().invoke(main, ["bench", fixed, b, *FAST])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "does not fit" in res.stderr and msg in res.stderr
    assert "onnxruntime" not in res.stderr.lower()
