"""benchmarks/fold_scaling.py: the chain models, one measured point, tables and plots of a run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import fold_scaling


def _point(sweep: str, x: float, s: float, tree: float) -> dict:
    return {"sweep": sweep, "bn": int(x) if sweep == "bn" else 4, "mb": x if sweep == "mb" else 0.5,
            "external": False,
            "fold": {"prove": {"s": s, "peak_mb": 10.0}, "no_prove": {"error": "worker failed"}},
            "cli": {"no_verify": {"wall_s": 1.0 + s, "peak_tree_mb": tree, "peak_single_mb": tree / 2},
                    "verify": {"wall_s": 2.0 + s, "peak_tree_mb": 2 * tree, "peak_single_mb": tree}}}


def test_chain_is_a_valid_model_with_one_bn_per_block() -> None:
    m = fold_scaling.chain(3, 8, 3)
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node].count("BatchNormalization") == 3 and len(m.graph.node) == 9


def test_measured_point_folds_every_bn_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "c.onnx"
    onnx.save(fold_scaling.chain(20, 8, 1), path)
    point = fold_scaling.measure_point(str(path), {"sweep": "bn", "bn": 20}, [True, False], 2, cli=True,
                                       log=lambda m: None)
    for mode in ("prove", "no_prove"):
        assert point["fold"][mode]["s"] > 0 and point["fold"][mode]["repeat"] == 2
    for mode in ("verify", "no_verify"):
        cli = point["cli"][mode]
        assert cli["rc"] == 0 and cli["peak_tree_mb"] >= cli["peak_single_mb"] > 30
    assert sorted(os.listdir(tmp_path)) == ["c.onnx"]


def test_remove_model_takes_its_data_files_only(tmp_path: Path) -> None:
    for name in ("m.onnx", "m.onnx.data", "m.onnx.1.data", "mm.onnx", "other.onnx.data"):
        (tmp_path / name).write_bytes(b"x")
    fold_scaling._remove_model(str(tmp_path / "m.onnx"))
    assert sorted(os.listdir(tmp_path)) == ["mm.onnx", "other.onnx.data"]


def test_tables_per_unit_costs_ratios_and_failures() -> None:
    points = [_point("bn", n, n * 1e-3, 200.0) for n in (100, 1000)] + [_point("mb", 100.0, 1.0, 300.0)]
    text = fold_scaling.format_tables(points)
    assert "| 100 | 0.5 | one file | 0.100 | 1000.0 | - | - | 10 | 1.10 | 200 | 2.10 | 400 | 200 |" in text
    assert "| 4 | 100.0 | one file | 1.000 | 10.0 | - | - | 10 | 2.00 | 300 (3.00x) | 3.00 | 600 (6.00x) " \
           "| 300 (3.00x) |" in text
    assert "time ~ bn^b" in text and "fold, proofs (in process) 1.00" in text
    assert "failed: 100: worker failed" in text


def test_plot_option_redraws_from_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = [_point("bn", n, n * 1e-3, 200.0) for n in (100, 1000, 10000)]
    points += [_point("mb", mb, mb * 1e-2, 150 + 2 * mb) for mb in (10.0, 100.0, 1000.0)]
    saved = tmp_path / "fold_scaling.json"
    saved.write_text(json.dumps({"machine": {"cpu": "test"}, "points": points}))
    assert fold_scaling.main(["--plot", str(saved)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["fold_scaling.json", "fold_scaling_bn.png",
                                            "fold_scaling_size.png"]
    assert "fold_scaling_size.png" in capsys.readouterr().out
