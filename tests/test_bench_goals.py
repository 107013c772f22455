"""benchmarks/goals.py: ratios, geometric mean, goal verdicts and the tables, from hand-built rows."""
from __future__ import annotations

import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import goals


def _row(model: str, times: dict[str, float | None], **extra: dict) -> dict:
    tools = {t: ({"error": "crash: boom"} if s is None else
                 {"median_s": s, "bn_left": 0, "ort_ok": True, "max_rel_err": 1e-7})
             for t, s in times.items()}
    for t, kv in extra.items():
        tools[t].update(kv)
    return {"model": model, "size_mb": 10.0, "bn": 5, "tools": tools}


def _cli(fold: float, nv: float, slim: float, tree: float, tree_nv: float) -> dict:
    def c(wall: float, peak: float) -> dict:
        return {"median_wall_s": wall, "peak_tree_mb": peak, "peak_single_mb": peak / 2}
    return {"model": "resnet50", "size_mb": 100.0, "rounds": 3, "commands": {
        "bnfold fold": c(fold, tree), "bnfold fold --no-verify": c(nv, tree_nv), "onnxslim": c(slim, 50.0)}}


def test_geomean_of_ratios() -> None:
    assert goals.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert goals.geomean([0.5, 2.0]) == pytest.approx(1.0)
    assert math.isnan(goals.geomean([]))
    with pytest.raises(ValueError, match="non-positive"):
        goals.geomean([1.0, 0.0])


def test_ratios_skip_models_where_a_tool_crashed() -> None:
    rows = [_row("a", {"bnfold": 1.0, "onnxscript": 2.0}), _row("b", {"bnfold": 3.0, "onnxscript": None}),
            _row("c", {"bnfold": None, "onnxscript": 1.0})]
    assert goals.fold_ratios(rows, "onnxscript") == {"a": 0.5}
    assert goals.fold_ratios(rows, "ort_basic") == {}


def test_tool_goals_pass_and_fail_on_their_limits() -> None:
    rows = [_row("resnet50", {"bnfold": 0.5, "onnxscript": 1.0, "ort_basic": 0.5}),
            _row("resnet50.dynamo", {"bnfold": 1.2, "onnxscript": 1.0, "ort_basic": 1.0}),
            _row("resnet18.dynamo", {"bnfold": 1.0, "onnxscript": 2.0, "ort_basic": 0.1})]
    mean, worst, ort = goals.tool_goals(rows)
    assert mean.value == pytest.approx((0.5 * 1.2 * 0.5) ** (1 / 3)) and mean.verdict == "PASS"
    assert worst.value == pytest.approx(1.2) and worst.verdict == "PASS"  # the limit itself passes
    assert worst.detail.startswith("resnet50.dynamo") and "3 of 3 models" in worst.detail
    assert ort.value == pytest.approx(1.2) and ort.verdict == "NOT MET"  # resnet18 is not ResNet-50
    slow = goals.tool_goals([_row("m", {"bnfold": 1.3, "onnxscript": 1.0})])
    assert [g.verdict for g in slow] == ["NOT MET", "NOT MET", "not measured"]


def test_cli_goals_from_measurements_or_not_measured() -> None:
    assert [g.verdict for g in goals.cli_goals(None)] == ["not measured"] * 3
    wall, rss, rss_nv = goals.cli_goals(_cli(fold=2.0, nv=1.0, slim=4.0, tree=300.0, tree_nv=250.0))
    assert wall.value == pytest.approx(0.5) and wall.verdict == "PASS"
    assert "--no-verify 1.00 s = 0.25x" in wall.detail
    assert rss.value == pytest.approx(3.0) and rss.verdict == "PASS"
    assert rss_nv.value == pytest.approx(2.5) and rss_nv.verdict == "NOT MET"
    assert "largest process 125 MB (1.25x)" in rss_nv.detail
    broken = _cli(2.0, 1.0, 4.0, 300.0, 250.0)
    broken["commands"]["onnxslim"] = {"error": "exit 1: no"}
    assert goals.cli_goals(broken)[0].verdict == "not measured"


def test_goal_table_lines() -> None:
    table = goals.format_goals(goals.tool_goals([_row("m", {"bnfold": 1.5, "onnxscript": 1.0})]))
    assert "| fold / onnxscript, geometric mean | 1.50 | <= 0.8 | NOT MET | 1 of 1 models |" in table
    assert "| fold / ort_basic on ResNet-50 | - | <= 1 | not measured |" in table


def test_model_table_ratios_bn_left_and_notes() -> None:
    rows = [_row("m", {"loadsave": 0.1, "bnfold": 0.2, "onnxscript": 0.4, "onnxslim": None},
                 onnxscript={"bn_left": 3, "max_rel_err": 0.5})]
    line = goals.format_model_table(rows, ["loadsave", "bnfold", "onnxscript", "onnxslim"]).splitlines()[2]
    assert line.startswith("| m | 10.0 | 5 | 100 | 200 | 400 | err | 2.00 | 0.50 | - | 0 / 3 / - |")
    assert "onnxscript: wrong output (rel err 5.0e-01)" in line and "onnxslim: crash: boom" in line


def test_cli_table_ratios_to_onnxslim() -> None:
    table = goals.format_cli_table(_cli(fold=2.0, nv=1.0, slim=4.0, tree=300.0, tree_nv=250.0))
    assert "| bnfold fold | 2.00 | 0.50 | 300 (3.00x) | 150 (1.50x) |" in table
    assert "| onnxslim | 4.00 | 1.00 | 50 (0.50x) | 25 (0.25x) |" in table


def test_the_unproven_fold_is_a_note_not_a_goal() -> None:
    rows = [_row("a", {"bnfold": 4.0, "bnfold_unproven": 1.0, "onnxscript": 2.0}),
            _row("b", {"bnfold": 9.0, "bnfold_unproven": 3.0, "onnxscript": 1.0})]
    note = goals.unproven_note(rows)
    assert note is not None and "not a goal" in note
    assert "geometric mean 1.22" in note and "worst 3.00 (b)" in note  # sqrt(0.5 * 3)
    assert "3.46x slower" in note  # sqrt(4 * 3)
    assert all("unproven" not in g.name for g in goals.tool_goals(rows))
    assert goals.unproven_note([_row("a", {"bnfold": 1.0, "onnxscript": 2.0})]) is None


def test_the_ort_floor_is_the_checks_alone_over_the_other_tools() -> None:
    rows = [_row("a", {"bnfold": 4.0, "onnxscript": 2.0}, bnfold={"ort_checks_s": 1.0}),
            _row("b", {"bnfold": 8.0, "onnxscript": 1.0}, bnfold={"ort_checks_s": 2.0}),
            _row("resnet50", {"bnfold": 3.0, "onnxscript": 3.0, "ort_basic": 1.0},
                 bnfold={"ort_checks_s": 1.5})]
    note = goals.ort_floor_note(rows)
    assert note is not None
    assert "31% of its fold time" in note  # (1/4 * 2/8 * 1.5/3) ** (1/3) = 0.315
    assert "0.79 geometric mean (within the 0.8 goal)" in note  # (0.5 * 2 * 0.5) ** (1/3) = 0.79
    assert "above 1.2 on 1 of 3 models (worst 2.00, b)" in note
    assert "over ort_basic on ResNet-50: resnet50 1.50" in note
    assert goals.ort_floor_note([_row("a", {"bnfold": 1.0, "onnxscript": 2.0})]) is None
