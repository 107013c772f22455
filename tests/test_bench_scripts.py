"""benchmarks/ scripts: generated models, tool subprocess runs, interleaved rounds, best-tool
choice, tables, saved runs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import fold_tools
import generate
import latency
import tool_workers
from test_bench_runner import conv_bn_model


def test_bn_preconv_is_valid_and_has_unpadded_consumers() -> None:
    m = generate.bn_preconv()
    onnx.checker.check_model(m, full_check=True)
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 13
    consumers = {i: n for n in m.graph.node for i in n.input}
    pads = [list(next(a.ints for a in consumers[b.output[0]].attribute if a.name == "pads")) for b in bns]
    assert sum(p == [0, 0, 0, 0] for p in pads) == 12 and pads[-1] == [1, 1, 1, 1]


def test_count_bn_includes_subgraphs() -> None:
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    sub = helper.make_graph([bn], "sub", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    top = helper.make_node("If", ["c"], ["o"], then_branch=sub, else_branch=sub)
    g = helper.make_graph([top, bn], "g", [], [])
    assert fold_tools.count_bn_in_graph(g) == 3
    assert fold_tools.count_bn_in_graph(g, None) == 4 and fold_tools.count_bn_in_graph(g, "If") == 1


def test_tool_subprocess_reports_times_and_memory(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    res = fold_tools.run_tool("bnfold", src, str(tmp_path / "o.onnx"), 2, 120)
    assert len(res["times_s"]) == 2 and res["peak_rss_mb"] >= res["base_rss_mb"] > 0
    assert fold_tools.count_bn(str(tmp_path / "o.onnx")) == 0
    assert fold_tools.count_bn(str(tmp_path / "o.onnx"), None) == 2  # Conv, Relu


def test_crashing_tool_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    res = fold_tools.run_tool("loadsave", str(bad), str(tmp_path / "o.onnx"), 1, 120)
    assert res["error"].startswith("crash:")


def test_check_output_flags_unloadable_and_wrong_models(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    x = {"x": np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    ref = fold_tools.ort_outputs(src, x)
    assert fold_tools.check_output(ref, src, x) == {"ort_ok": True, "max_rel_err": 0.0}
    m = onnx.load(src)
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(3, 3.0, np.float32), "g"))
    onnx.save(m, tmp_path / "wrong.onnx")
    assert fold_tools.check_output(ref, str(tmp_path / "wrong.onnx"), x)["max_rel_err"] > 0.1
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert fold_tools.check_output(ref, str(tmp_path / "junk.onnx"), x)["ort_ok"] is False


def _row() -> dict:
    ok = {"ort_ok": True, "max_rel_err": 1e-7, "peak_rss_mb": 10.0, "base_rss_mb": 5.0}
    return {"model": "m", "size_mb": 1.0, "bn": 4, "path": "m.onnx", "tools": {
        "loadsave": {**ok, "median_s": 0.5, "bn_left": 4, "output": "a"},
        "bnfold": {**ok, "median_s": 1.0, "bn_left": 0, "output": "b"},
        "fast_but_partial": {**ok, "median_s": 0.1, "bn_left": 2, "output": "c"},
        "full_slow": {**ok, "median_s": 2.0, "bn_left": 0, "output": "d"},
        "full_fast_wrong": {**ok, "median_s": 0.2, "bn_left": 0, "max_rel_err": 0.5, "output": "e"},
        "unloadable": {"ort_ok": False, "median_s": 0.1, "bn_left": 0, "output": "f",
                       "peak_rss_mb": 1.0, "base_rss_mb": 1.0, "ort_error": "x"},
        "crashed": {"error": "crash: boom"}}}


def test_best_other_prefers_fewest_bn_among_valid_outputs() -> None:
    name, _ = latency.best_other(_row())
    assert name == "full_slow"


def test_fold_table_ratios_and_failures() -> None:
    table = fold_tools.format_table([_row()])
    line = next(ln for ln in table.splitlines() if "| full_slow |" in ln)
    assert "| 2000 | 4.00 | 2.00 |" in line and "| 0 | - | yes |" in line
    assert fold_tools._ms(0.000412) == "0.412" and fold_tools._ms(0.0412) == "41.2"
    assert "| crashed | crash: boom |" in table
    assert "NO: x" in table


@pytest.mark.parametrize("name", ["mobilenetv2", "bn_preconv"])
def test_ensure_models_writes_once(tmp_path: Path, name: str) -> None:
    paths = generate.ensure_models(str(tmp_path), [name], log=lambda m: None)
    mtime = os.path.getmtime(paths[name])
    assert generate.ensure_models(str(tmp_path), [name], log=lambda m: None) == paths
    assert os.path.getmtime(paths[name]) == mtime


def test_real_models_takes_the_newest_export_of_each_name(tmp_path: Path) -> None:
    for i, name in enumerate(["net.dynamo.aaa.onnx", "net.dynamo.bbb.onnx", "net.torchscript.ccc.onnx",
                              "net.dynamo.aaa.json", "net.dynamo.ddd.onnx.tmp", "odd.onnx"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert fold_tools.real_models(str(tmp_path)) == {
        "net.dynamo": str(tmp_path / "net.dynamo.bbb.onnx"),
        "net.torchscript": str(tmp_path / "net.torchscript.ccc.onnx")}
    assert list(fold_tools.real_models(str(tmp_path), ["net.torchscript"])) == ["net.torchscript"]


def test_combine_takes_the_median_time_and_the_largest_peak() -> None:
    runs = [{"time_s": t, "base_rss_mb": b, "peak_rss_mb": p}
            for t, b, p in [(3, 5, 9), (1, 4, 7), (2, 6, 8)]]
    assert fold_tools.combine(runs) == {"times_s": [3, 1, 2], "median_s": 2, "base_rss_mb": 4,
                                        "peak_rss_mb": 9}
    assert fold_tools.combine(runs + [{"error": "crash: x"}]) == {"error": "crash: x"}


def test_bench_model_runs_every_tool_every_round_and_checks_outputs(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    tools = ["loadsave", "bnfold"]
    workers = {t: tool_workers.ToolWorker(t, env=fold_tools._child_env(), timeout=120) for t in tools}
    try:
        row = fold_tools.bench_model("m", src, tools, str(tmp_path), 3, workers, keep_output=False)
    finally:
        for w in workers.values():
            w.close()
    assert row["bn"] == 1 and row["nodes"] == 3
    for tool, left in (("loadsave", 1), ("bnfold", 0)):
        res = row["tools"][tool]
        assert len(res["times_s"]) == 3 and res["median_s"] in res["times_s"]
        assert res["bn_left"] == left and res["ort_ok"] and res["max_rel_err"] < 1e-6
        assert "output" not in res
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # outputs deleted


def test_installed_drops_tools_whose_package_is_missing() -> None:
    assert fold_tools.installed(["loadsave", "bnfold", "no_such_tool_pkg"]) == ["loadsave", "bnfold"]


def test_quick_and_full_switch_on_the_cli_runs_and_real_exports() -> None:
    quick = fold_tools.parse_args(["--quick"])
    assert quick.cli and quick.rounds == 3 and quick.only == fold_tools.QUICK_GENERATED
    assert quick.real_only == fold_tools.QUICK_REAL
    full = fold_tools.parse_args(["--full", "--repeat", "7"])
    assert full.cli and full.real and full.rounds == 7 and full.cli_rounds == 5
    plain = fold_tools.parse_args([])
    assert not plain.cli and plain.real is None and plain.rounds == 5


def test_saved_run_renders_tables_and_goals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    run = {"rounds": 3, "mode": "test", "tools": ["loadsave", "bnfold", "onnxscript"], "rows": [_row()],
           "cli": None}
    run["rows"][0]["tools"]["onnxscript"] = {**run["rows"][0]["tools"]["bnfold"], "median_s": 2.0}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert fold_tools.main(["--render", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| m | 1.0 | 4 | 500 | 1000 | 2000 | 2.00 | 0.50 |" in out
    assert "| fold / onnxscript, geometric mean | 0.50 | <= 0.8 | PASS |" in out
    assert fold_tools.main(["--summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| goal |") and "| CLI fold / onnxslim CLI on ResNet-50 | - |" in out


def test_cli_only_run_renders_the_cli_table_and_its_goals(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    cmd = {"median_wall_s": 2.0, "peak_tree_mb": 250.0, "peak_single_mb": 200.0}
    cli = {"model": "resnet50", "size_mb": 100.0, "rounds": 3, "commands": {
        "bnfold fold": cmd, "bnfold fold --no-verify": cmd, "onnxslim": {**cmd, "median_wall_s": 4.0}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"rounds": 3, "mode": "test", "tools": [], "rows": [], "cli": cli}))
    assert fold_tools.main(["--render", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CLI on resnet50 (100 MB), 3 interleaved rounds")
    assert "| CLI fold / onnxslim CLI on ResNet-50 | 0.50 | <= 1 | PASS |" in out
    assert "| peak RSS / size, --no-verify | 2.50 | <= 2 | NOT MET |" in out


def test_no_models_and_no_cli_is_refused() -> None:
    with pytest.raises(SystemExit, match="no models"):
        fold_tools.main(["--models", "--no-generated"])
