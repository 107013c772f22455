"""benchmarks/real_arch.py: BN counting, tool runs and checks, table and summary (no torchvision)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import real_arch
import real_arch_tools
from test_bench_runner import conv_bn_model


def _bn(name: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], [name + "_y"], name=name)


def test_count_bn_includes_subgraphs_and_functions() -> None:
    sub = helper.make_graph([_bn("in_then")], "sub", [],
                            [helper.make_tensor_value_info("in_then_y", TensorProto.FLOAT, None)])
    top = helper.make_node("If", ["c"], ["o"], then_branch=sub, else_branch=sub)
    fn = helper.make_function("local", "F", ["x", "s", "b", "m", "v"], ["f_y"],
                              [_bn("f")], [helper.make_opsetid("", 17)])
    model = helper.make_model(helper.make_graph([top, _bn("main")], "g", [], []), functions=[fn])
    assert real_arch_tools.count_bn(model) == 4  # then, else, main, function
    assert real_arch_tools.count_bn(model, "If") == 1 and real_arch_tools.count_nodes(model) == 2


def test_relative_error_is_relative_to_peak_and_flags_shape_mismatch() -> None:
    ref = [np.array([2.0, -4.0])]
    assert real_arch_tools.relative_error(ref, [np.array([2.0, -3.0])]) == pytest.approx(0.25)
    assert real_arch_tools.relative_error(ref, [np.array([2.0])]) == float("inf")
    assert real_arch_tools.relative_error(ref, []) == float("inf")


def test_bnfold_tool_run_counts_checks_and_compares(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    ref = real_arch_tools.ort_run(src, x)
    res = real_arch_tools.run_tool(real_arch_tools.make_tool("bnfold"), src, str(tmp_path / "o.onnx"),
                                   2, x, ref)
    assert res["bn_after"] == 0 and res["nodes"] == 2 and res["checker_ok"]
    assert res["rel_err"] < 1e-6 and res["median_s"] > 0
    assert res["fold_result"].bn_before == 1


def test_tool_crash_and_wrong_output_are_recorded(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    x = np.ones((1, 2, 5, 5), np.float32)
    ref = real_arch_tools.ort_run(src, x)

    def crash(i: str, o: str) -> dict:
        raise RuntimeError("boom")

    def negate(i: str, o: str) -> dict:
        m = onnx.load(i)
        m.graph.node.append(helper.make_node("Neg", ["y"], ["y_neg"]))
        m.graph.output[0].name = "y_neg"
        onnx.save(m, o)
        return {}

    assert real_arch_tools.run_tool(crash, src, str(tmp_path / "c.onnx"), 1, x, ref) == {
        "error": "RuntimeError: boom"}
    wrong = real_arch_tools.run_tool(negate, src, str(tmp_path / "w.onnx"), 1, x, ref)
    assert wrong["bn_after"] == 1 and wrong["rel_err"] == pytest.approx(2.0)


def _res(left: int, err: float = 1e-7, **kw: object) -> dict:
    return {"bn_after": left, "nodes": 10, "checker_ok": True, "rel_err": err, "median_s": 0.1, **kw}


def _rows() -> list[dict]:
    kept = [{"bn": "bn3", "reason": "no_foldable_neighbour", "detail": "producer is Concat"}]
    return [
        {"model": "net", "export": "dynamo", "bn_before": 5, "tools": {
            "bnfold": _res(1, kept=kept, verdict="pass"), "other": _res(0), "broken": _res(0, err=0.5)}},
        {"model": "net", "export": "torchscript", "bn_before": 5, "tools": {
            "bnfold": _res(1, kept=kept, verdict="pass"), "other": _res(1), "broken": {"error": "X: y"}}},
        {"model": "bad", "export": "dynamo", "error": "export failed: E: no"},
    ]


def test_summary_finds_where_bnfold_is_behind_a_valid_tool_only() -> None:
    s = real_arch.summarize(_rows(), ["bnfold", "other", "broken"])
    assert s["bnfold_behind"] == [{"model": "net", "export": "dynamo", "tool": "other",
                                   "bnfold": 1, "other": 0}]  # "broken" is wrong: not counted
    assert s["totals"]["dynamo"] == {"BN before": 5, "bnfold": 1, "other": 0, "broken": 0}
    assert "broken" not in s["totals"]["torchscript"]  # a crash is not counted as 0 left
    reasons = s["bnfold_kept_by_reason"]
    assert list(reasons) == ["no_foldable_neighbour"] and reasons["no_foldable_neighbour"]["count"] == 2
    assert reasons["no_foldable_neighbour"]["models"] == {"net/dyn": 1, "net/tor": 1}
    assert reasons["no_foldable_neighbour"]["patterns"] == {
        "producer is Concat": {"count": 2, "models": {"net/dyn": 1, "net/tor": 1}}}
    assert s["failed"] == [{"model": "bad", "export": "dynamo", "error": "export failed: E: no"}]


def test_pattern_drops_node_names_numbers_and_the_explanation() -> None:
    detail = "producer is Concat (blocks.1.conv_pw), consumer is Relu; neither is a Conv"
    assert real_arch.pattern_of(detail) == "producer is Concat, consumer is Relu"
    text = real_arch.pattern_of("BN has 24 channels, MatMul 1.5e-3 wide")
    assert text == "BN has # channels, MatMul # wide"
    text = real_arch.pattern_of("backward: slice 2 of a.cat cannot absorb: 'p_3' is also read by b.c1, d/e_2")
    assert text == "backward: slice # of <n> cannot absorb: '<t>' is also read by <n>..."


def test_table_merges_exports_and_notes_failures() -> None:
    table = real_arch.format_table(_rows(), ["bnfold", "other", "broken"])
    net = next(ln for ln in table.splitlines() if ln.startswith("| net |"))
    assert "| 5 | 1 | 0 / 1 | 0 / err | 1.0e-07 |" in net
    assert "dyn: broken wrong (rel err 5.0e-01)" in net and "tor: broken crashed (X: y)" in net
    assert "dyn: export failed: E: no" in next(ln for ln in table.splitlines() if ln.startswith("| bad |"))
    text = real_arch.format_summary(real_arch.summarize(_rows(), ["bnfold", "other"]), ["bnfold", "other"])
    assert "bnfold leaves more BN than another tool: 1" in text and "no_foldable_neighbour: 2" in text
    assert "2  producer is Concat  [net/dyn 1, net/tor 1]" in text


def test_randomize_bn_sets_statistics_in_the_stated_ranges() -> None:
    torch = pytest.importorskip("torch")
    import real_arch_models

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 1), torch.nn.BatchNorm2d(64), torch.nn.BatchNorm1d(8))
    assert real_arch_models.randomize_bn(net, seed=0, negative_gamma=0.25) == 2
    bn = net[1].requires_grad_(False)
    assert 0.5 <= float(bn.running_var.min()) and float(bn.running_var.max()) <= 2.0
    assert float(bn.running_mean.abs().max()) > 0 and 0.5 <= float(bn.weight.abs().min())
    assert 0 < int((bn.weight < 0).sum()) < 64
