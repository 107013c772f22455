"""One spelling of the input flags across commands (``--shape``, ``--dim``, ``--batch-size``), old
spellings kept as hidden aliases (bnfold.cli.options)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_recalibration_engine import chain_model, data

from bnfold.cli import main
from modelgen import Builder

BENCH_FAST = ["--runs", "2", "--warmup", "0", "--opt-level", "disabled", "--same-process", "-q"]


def _sized(tmp_path: Path) -> str:
    """Conv -> BN on an N x 1 x H x W input: every dim symbolic."""
    b = Builder()
    b.output(b.bn(b.conv(b.input("x", ["N", 1, "H", "W"]), 1, 2), 2))
    path = tmp_path / "m.onnx"
    onnx.save(b.model(), path)
    return str(path)


def _help(command: str) -> str:
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("command", ["fold", "verify", "bench", "recalibrate"])
def test_every_command_that_runs_a_model_spells_shape_and_dim_alike(command: str) -> None:
    text = _help(command)
    assert "--shape NAME:DIMS" in text and "--dim SYMBOL=N" in text


def test_old_spellings_are_hidden_from_help() -> None:
    bench, export = _help("bench"), _help("export")
    assert "--batch-size" in bench and "--batch " not in bench and "--batch," not in bench
    assert "--shape DIMS" in export and "--input-shape" not in export


def test_fold_dim_sets_the_verification_shapes(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["fold", _sized(tmp_path), "-o", str(tmp_path / "f.onnx"),
                                    "--dim", "H=6", "--dim", "W=5", "--batch-size", "2", "--json"])
    assert res.exit_code == 0, res.output
    cases = json.loads(res.stdout)["verification"]["cases"]
    assert {c["input_shapes"]["x"] for c in cases} == {"2x1x6x5"}


def test_verify_dim_and_shape_together(tmp_path: Path) -> None:
    m = _sized(tmp_path)
    res = CliRunner().invoke(main, ["verify", m, m, "--dim", "H=7", "--dim", "W=3", "--json"])
    assert res.exit_code == 0, res.output
    assert {c["input_shapes"]["x"] for c in json.loads(res.stdout)["cases"]} == {"1x1x7x3", "2x1x7x3"}
    res = CliRunner().invoke(main, ["verify", m, m, "--shape", "x:3x1x4x4", "--json"])
    assert {c["input_shapes"]["x"] for c in json.loads(res.stdout)["cases"]} == {"3x1x4x4"}


def test_verify_dim_naming_no_symbol_exits_2(tmp_path: Path) -> None:
    m = _sized(tmp_path)
    res = CliRunner().invoke(main, ["verify", m, m, "--dim", "seq=4"])
    assert res.exit_code == 2 and "--dim names unknown symbol(s) ['seq']" in res.stderr


def test_bench_shape_and_batch_alias(tmp_path: Path) -> None:
    m = _sized(tmp_path)
    res = CliRunner().invoke(main, ["bench", m, m, *BENCH_FAST, "--shape", "x:1x1x6x6", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["shapes"] == {"x": [1, 1, 6, 6]}
    res = CliRunner().invoke(main, ["bench", m, m, *BENCH_FAST, "--dim", "H=4", "--dim", "W=4",
                                    "--batch", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["configs"][0]["batch"] == 3


def test_bench_open_dim_names_both_flags(tmp_path: Path) -> None:
    m = _sized(tmp_path)
    res = CliRunner().invoke(main, ["bench", m, m, *BENCH_FAST])
    assert res.exit_code == 2
    assert "--dim H=N or --shape x:DIMS" in res.stderr and len(res.stderr.splitlines()) == 1


def test_recalibrate_fold_takes_dim_for_its_verification(tmp_path: Path) -> None:
    model, npz = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(chain_model(), model)
    np.savez(npz, x=np.concatenate([b["x"] for b in data()]))
    res = CliRunner().invoke(main, ["recalibrate", str(model), "--data", str(npz), "-o",
                                    str(tmp_path / "r.onnx"), "--fold", "--dim", "N=3", "--json", "-q"])
    assert res.exit_code == 0, res.output
    cases = json.loads(res.stdout)["fold"]["verification"]["cases"]
    assert {c["input_shapes"]["x"] for c in cases} == {"3x2x5x5"}
