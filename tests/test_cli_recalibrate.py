"""``bnfold recalibrate``: files in, files out, one-line errors, --fold with verification."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from test_recalibration_engine import chain_model, data

from bnfold.cli import main


def _setup(tmp_path: Path) -> tuple[str, str]:
    model = tmp_path / "m.onnx"
    onnx.save(chain_model(), model)
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.concatenate([b["x"] for b in data()]))
    return str(model), str(npz)


def test_json_result_and_reports(tmp_path: Path) -> None:
    model, npz = _setup(tmp_path)
    digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    out, rep = tmp_path / "r.onnx", tmp_path / "rep"
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", npz, "-o", str(out),
                                    "--batch-size", "4", "--report", str(rep), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["recalibrated"] == 3 and d["passes"] == 2 and d["samples_per_pass"] == 20
    assert d["batches_per_pass"] == 5 and "pass 2/2" in res.stderr
    assert (rep / "report.json").exists() and (rep / "report.md").exists()
    onnx.checker.check_model(str(out), full_check=True)
    assert hashlib.sha256(Path(model).read_bytes()).hexdigest() == digest


def test_folder_of_npy_files_streams_batches(tmp_path: Path) -> None:
    model, _ = _setup(tmp_path)
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, b in enumerate(data()):
        np.save(folder / f"part{i}.npy", b["x"])
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", str(folder), "-o",
                                    str(tmp_path / "r.onnx"), "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["batches_per_pass"] == 4 and res.stderr == ""


def test_fold_writes_and_verifies_the_folded_model(tmp_path: Path) -> None:
    model, npz = _setup(tmp_path)
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", npz, "-o",
                                    str(tmp_path / "r.onnx"), "--fold", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.folded.onnx").exists() and "PASS" in res.stdout
    assert "3 before -> 0 after" in res.stdout


def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    model, _ = _setup(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 5, 5), np.float32))
    out = tmp_path / "r.onnx"
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", str(bad), "-o", str(out)])
    assert res.exit_code == 2 and res.stderr.count("bnfold: error:") == 1
    assert "axis 1" in res.stderr and "Traceback" not in res.stderr and not out.exists()


def test_output_equal_to_input_is_refused_before_any_work(tmp_path: Path) -> None:
    model, npz = _setup(tmp_path)
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", npz, "-o", model])
    assert res.exit_code == 2 and "is the input model" in res.stderr
    assert "pass 1" not in res.stderr


def test_momentum_and_cumulative_together_is_a_usage_error(tmp_path: Path) -> None:
    model, npz = _setup(tmp_path)
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", npz, "-o",
                                    str(tmp_path / "r.onnx"), "--momentum", "0.1", "--cumulative"])
    assert res.exit_code == 2 and "not both" in res.output


def test_folded_output_on_the_recalibrated_output_is_refused_before_any_work(tmp_path: Path) -> None:
    model, npz = _setup(tmp_path)
    out = tmp_path / "r.onnx"
    res = CliRunner().invoke(main, ["recalibrate", model, "--data", npz, "-o", str(out), "--fold",
                                    "--folded-output", str(out)])
    assert res.exit_code == 2 and res.stderr.count("bnfold: error:") == 1
    assert "--folded-output" in res.stderr and not out.exists()
