"""benchmarks/tool_workers.py: a long-lived tool worker, its failures, and fresh mode."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import fold_tools
import tool_workers
from test_bench_runner import conv_bn_model

# a stand-in worker: READY, then per job line either an answer, a hang or an exit
FAKE = """
import sys, time
print("READY", flush=True)
for line in sys.stdin:
    if "hang" in line:
        time.sleep(60)
    if "die" in line:
        print("dying on purpose", file=sys.stderr, flush=True)
        sys.exit(1)
    print('RESULT {"time_s": 1.0, "base_rss_mb": 1.0, "peak_rss_mb": 2.0}', flush=True)
"""


def test_worker_serves_jobs_in_one_process_and_survives_a_failing_job(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    w = tool_workers.ToolWorker("bnfold", env=fold_tools._child_env(), timeout=120,
                                warmup=(src, str(tmp_path / "warm.onnx")))
    try:
        first = w.run(src, str(tmp_path / "a.onnx"))
        pid = w.proc.pid
        bad = w.run(str(tmp_path / "junk.onnx"), str(tmp_path / "b.onnx"))
        again = w.run(src, str(tmp_path / "c.onnx"))
        assert w.proc.pid == pid  # one process for every job
    finally:
        w.close()
    assert first["time_s"] > 0 and first["peak_rss_mb"] >= first["base_rss_mb"] > 0
    assert bad["error"].startswith("crash: ") and again["time_s"] > 0
    assert fold_tools.count_bn(str(tmp_path / "c.onnx")) == 0


def test_fresh_worker_stops_after_each_job(tmp_path: Path) -> None:
    src = conv_bn_model(tmp_path / "m.onnx")
    w = tool_workers.ToolWorker("loadsave", env=fold_tools._child_env(), fresh=True)
    assert w.run(src, str(tmp_path / "o.onnx"))["time_s"] > 0 and w.proc is None


def test_hang_becomes_timeout_and_exit_becomes_crash_then_it_restarts(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    w = tool_workers.ToolWorker("x", timeout=2, script=str(script))
    assert w.run("hang", "o") == {"error": "timeout after 2 s"} and w.proc is None
    assert w.run("die", "o") == {"error": "crash: dying on purpose"} and w.proc is None
    assert w.run("ok", "o")["time_s"] == 1.0
    w.close()


def test_worker_that_never_gets_ready_is_a_crash(tmp_path: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text("import sys; print('no such tool', file=sys.stderr); sys.exit(2)")
    assert tool_workers.ToolWorker("x", script=str(script)).run("a", "b") == {
        "error": "crash: no such tool"}
