"""benchmarks/cli_runs.py: rotation, a measured command's time and memory peaks, summaries."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cli_runs

# the parent holds 100 MB while its child holds 200 MB: the tree holds at least 300 MB at once
TWO_PROCESSES = """
import subprocess, sys
held = b"\\x01" * 100_000_000
child = "import time; held = b'\\\\x01' * 200_000_000; time.sleep(1.0)"
subprocess.run([sys.executable, "-c", child], check=True)
"""


def test_rotation_starts_each_round_one_further() -> None:
    items = ["a", "b", "c"]
    assert [cli_runs.rotated(items, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert cli_runs.rotated([], 3) == []


def test_measure_sums_the_tree_and_takes_the_largest_process() -> None:
    res = cli_runs.measure([sys.executable, "-c", TWO_PROCESSES])
    assert res["rc"] == 0 and "error" not in res and res["wall_s"] > 1.0, res
    assert 200 <= res["peak_single_mb"] < 290, res  # the child alone (plus its interpreter)
    assert res["peak_tree_mb"] >= res["sampled_tree_mb"] >= 300, res


def test_peak_of_a_small_command_is_not_this_process_peak() -> None:
    held = b"\x01" * 400_000_000  # this process's peak RSS is now over 400 MB
    res = cli_runs.measure([sys.executable, "-c", "pass"])
    assert len(held) and res["rc"] == 0 and res["peak_single_mb"] < 100, res
    assert res["wall_s"] < 10


def test_command_past_its_timeout_is_killed() -> None:
    res = cli_runs.measure([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert res["rc"] == -9 and res["error"].startswith("exit -9") and res["wall_s"] < 30


def test_measure_reports_a_failing_command_with_its_last_line() -> None:
    res = cli_runs.measure([sys.executable, "-c", "import sys; print('first'); print('why'); sys.exit(3)"])
    assert res["rc"] == 3 and res["error"] == "exit 3: why"


def test_summary_is_the_median_time_and_largest_peaks() -> None:
    runs = [{"wall_s": w, "peak_tree_mb": t, "peak_single_mb": s}
            for w, t, s in [(3.0, 10.0, 5.0), (1.0, 30.0, 4.0), (2.0, 20.0, 6.0)]]
    s = cli_runs.summarize(runs)
    assert (s["median_wall_s"], s["peak_tree_mb"], s["peak_single_mb"]) == (2.0, 30.0, 6.0)
    assert cli_runs.summarize(runs + [{"error": "exit 1: x"}])["error"] == "exit 1: x"


def test_commands_and_environment_use_this_checkout() -> None:
    cmds = cli_runs.commands("m.onnx", "/out")
    assert list(cmds) == ["bnfold fold", "bnfold fold --no-verify", "onnxslim"]
    assert "--no-verify" in cmds["bnfold fold --no-verify"][0] and "--no-verify" not in cmds["bnfold fold"][0]
    assert cmds["onnxslim"][0][-2:] == ["m.onnx", "/out/cli.slim.onnx"]
    assert cli_runs.child_env()["PYTHONPATH"].split(os.pathsep)[0] == cli_runs.ROOT


@pytest.mark.parametrize("name", ["bnfold"])
def test_the_bnfold_command_runs_from_this_checkout(name: str) -> None:
    res = cli_runs.measure(cli_runs.script(name) + ["--help"], cli_runs.child_env())
    assert res["rc"] == 0, res
