"""Fold time of bnfold against other BatchNormalization folders, file to file.

Each (model, tool) runs in a fresh subprocess: imports first (not timed), then
``--repeat`` timed passes of load -> transform -> save; the median is reported with
the process's peak RSS. Outputs are then counted for BN left, loaded in ONNX Runtime
(optimizations disabled) and compared with the original's outputs on random inputs.

Tools: loadsave (bare onnx.load + onnx.save: the floor), bnfold (fold(path), save_model:
`bnfold fold --no-verify`), onnxoptimizer (fuse_bn_into_conv), onnxscript (rewriter with
its BN fusion rules), onnxslim (default slim), ort_basic (InferenceSession at
ORT_ENABLE_BASIC with optimized_model_filepath).

Usage: python benchmarks/fold_tools.py [--models models/*.onnx] [--generated] [--repeat 5]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TOOLS = ("loadsave", "bnfold", "onnxoptimizer", "onnxscript", "onnxslim", "ort_basic")


def _tool(name: str) -> Callable[[str, str], None]:
    """Import a tool (outside the timed region) and return its file-to-file fold."""
    import onnx

    if name == "loadsave":
        return lambda i, o: onnx.save(onnx.load(i), o)
    if name == "bnfold":
        import bnfold
        from bnfold.io.model_io import save_model

        def fold_to_file(i: str, o: str) -> None:
            # what `bnfold fold IN -o OUT --no-verify` does after parsing its options: a lazy
            # fold (weights read from the input as needed), saved with the rest copied from it
            result = bnfold.fold(i, lazy_external=True)
            save_model(result.model, o, overwrite=True, source_dir=result.external_base)

        return fold_to_file
    if name == "onnxoptimizer":
        import onnxoptimizer

        passes = ["fuse_bn_into_conv"]
        return lambda i, o: onnx.save(onnxoptimizer.optimize(onnx.load(i), passes), o)
    if name == "onnxscript":
        from onnxscript import ir, rewriter
        from onnxscript.rewriter.rules.common import (
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        )

        rules = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                 fuse_batchnorm_into_gemm_rule]
        return lambda i, o: ir.save(rewriter.rewrite(ir.load(i), pattern_rewrite_rules=rules), o)
    if name == "onnxslim":
        import onnxslim

        return lambda i, o: onnx.save(onnxslim.slim(i), o)
    if name == "ort_basic":
        import onnxruntime as ort

        def ort_basic(i: str, o: str) -> None:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.optimized_model_filepath = o
            so.log_severity_level = 3
            ort.InferenceSession(i, so, providers=["CPUExecutionProvider"])

        return ort_basic
    raise SystemExit(f"unknown tool {name}")


def _rss_kb(field: str) -> int:
    """VmRSS / VmHWM from /proc (ru_maxrss would carry the parent's peak over exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS so the peak excludes imports (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def worker(tool: str, src: str, dst: str, repeat: int) -> dict[str, Any]:
    """Runs inside the subprocess: time ``repeat`` passes, report times and memory."""
    fn = _tool(tool)
    _reset_peak_rss()
    base = _rss_kb("VmRSS") * 1024
    times = []
    for _ in range(repeat):
        if os.path.exists(dst):
            os.remove(dst)
        start = time.perf_counter()
        fn(src, dst)
        times.append(time.perf_counter() - start)
    peak = _rss_kb("VmHWM") * 1024
    return {"times_s": times, "base_rss_mb": base / 1e6, "peak_rss_mb": peak / 1e6}


def _child_env() -> dict[str, str]:
    """The environment of a worker: it imports the same bnfold as this process (not whichever
    checkout the virtual environment has installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_tool(tool: str, src: str, dst: str, repeat: int, timeout: float) -> dict[str, Any]:
    """Run one tool in a fresh interpreter; a crash or timeout becomes an ``error`` entry."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, src, dst, str(repeat)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, env=_child_env())
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": f"crash: {tail[:160]}"}
    return json.loads(lines[-1][len("RESULT "):])


def count_bn_in_graph(graph: Any, op_type: str | None = "BatchNormalization") -> int:
    """Nodes of ``op_type`` (every node if None) in ``graph`` and its subgraphs."""
    import onnx

    n = 0
    for node in graph.node:
        n += op_type is None or node.op_type == op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                n += count_bn_in_graph(attr.g, op_type)
            n += sum(count_bn_in_graph(g, op_type) for g in attr.graphs)
    return n


def count_bn(path: str, op_type: str | None = "BatchNormalization") -> int:
    """BN nodes (all nodes with op_type=None) in the model file, subgraphs included."""
    import onnx

    return count_bn_in_graph(onnx.load(path, load_external_data=False).graph, op_type)


def ort_outputs(path: str, inputs: dict[str, Any]) -> list[Any]:
    """Outputs of the model on ORT with graph optimizations disabled."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in inputs.items() if k in names})


def check_output(src_outputs: list[Any], path: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Does ORT load the tool's output, and how far are its outputs from the original's?"""
    import numpy as np

    try:
        outs = ort_outputs(path, inputs)
    except Exception as exc:  # noqa: BLE001 - any ORT failure means "ORT can't load it"
        return {"ort_ok": False, "ort_error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    err = 0.0
    for ref, got in zip(src_outputs, outs):
        ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if ref64.shape != got64.shape:
            return {"ort_ok": True, "max_rel_err": float("inf")}
        err = max(err, float(np.max(np.abs(ref64 - got64)) / max(1e-12, np.max(np.abs(ref64)))))
    return {"ort_ok": True, "max_rel_err": err}


def bench_model(name: str, src: str, tools: list[str], out_dir: str, repeat: int,
                timeout: float) -> dict[str, Any]:
    """All tools on one model, plus BN counts and ORT checks of every output."""
    import onnx

    from bnfold.inputs import ShapeRequest, graph_inputs

    specs = graph_inputs(onnx.load(src, load_external_data=False))
    request = ShapeRequest()
    inputs = request.feed(specs, request.fixed_batch(specs) or 1, seed=0)
    ref = ort_outputs(src, inputs)
    row: dict[str, Any] = {"model": name, "path": src, "size_mb": os.path.getsize(src) / 1e6,
                           "bn": count_bn(src), "nodes": count_bn(src, None), "tools": {}}
    for tool in tools:
        dst = os.path.join(out_dir, f"{name}.{tool}.onnx")
        print(f"  {name}: {tool} ...", file=sys.stderr, flush=True)
        res = run_tool(tool, src, dst, repeat, timeout)
        if "error" not in res:
            res["median_s"] = statistics.median(res["times_s"])
            res["output"] = dst
            res["bn_left"] = count_bn(dst)
            res["nodes"] = count_bn(dst, None)
            res.update(check_output(ref, dst, inputs))
        row["tools"][tool] = res
    return row


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits (0.412, 41.2, 412)."""
    ms = seconds * 1000.0
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _ratio(t: float, ref: float | None) -> str:
    return f"{t / ref:.2f}" if ref else "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: median time, ratios vs load+save and vs bnfold, memory, BN, ORT check."""
    head = ["model", "tool", "median ms", "x load+save", "x bnfold", "peak RSS MB (+over imports)",
            "BN left", "nodes", "ORT loads", "max rel err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        floor = row["tools"].get("loadsave", {}).get("median_s")
        ours = row["tools"].get("bnfold", {}).get("median_s")
        for tool, r in row["tools"].items():
            label = (f"{row['model']} ({row['size_mb']:.1f} MB, {row['bn']} BN, "
                     f"{row.get('nodes', '?')} nodes)")
            if "error" in r:
                lines.append(f"| {label} | {tool} | {r['error']} | | | | | | | |")
                continue
            t = r["median_s"]
            mem = f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['base_rss_mb']:.0f})"
            ok = "yes" if r.get("ort_ok") else f"NO: {r.get('ort_error', '')}"
            err = f"{r['max_rel_err']:.1e}" if "max_rel_err" in r else "-"
            lines.append(f"| {label} | {tool} | {_ms(t)} | {_ratio(t, floor)} | {_ratio(t, ours)} | {mem} "
                         f"| {r['bn_left']} | {r.get('nodes', '-')} | {ok} | {err} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import generate

    ap = argparse.ArgumentParser(description="Fold time of bnfold vs other tools.")
    ap.add_argument("--models", nargs="*", default=None,
                    help="model files [default: models/*.onnx]")
    ap.add_argument("--no-generated", action="store_true", help="skip the generated models")
    ap.add_argument("--only", nargs="*", help="generated models to use [default: all]")
    ap.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per tool [%(default)s]")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per tool and model")
    ap.add_argument("--cache", default=generate.DEFAULT_CACHE, help="generated models and outputs")
    ap.add_argument("--json", dest="json_path", help="write results here [CACHE/fold_tools.json]")
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved run")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render, encoding="utf-8") as fh:
            print(format_table(json.load(fh)["rows"]))
        return 0
    models = args.models if args.models is not None else sorted(
        glob.glob(os.path.join(HERE, "..", "models", "*.onnx")))
    named = {os.path.splitext(os.path.basename(m))[0]: os.path.abspath(m) for m in models}
    if not args.no_generated:
        named.update(generate.ensure_models(args.cache, args.only))
    out_dir = os.path.join(args.cache, "outputs")
    os.makedirs(out_dir, exist_ok=True)
    tools = ["loadsave"] + [t for t in args.tools if t != "loadsave"]
    rows = []
    for name, path in named.items():
        print(f"{name} ({path})", file=sys.stderr, flush=True)
        rows.append(bench_model(name.split(".v")[0], path, tools, out_dir, args.repeat, args.timeout))
    json_path = args.json_path or os.path.join(args.cache, "fold_tools.json")
    from bnfold.bench.result import machine_info

    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump({"machine": machine_info(), "repeat": args.repeat, "rows": rows}, fh, indent=2)
    print(format_table(rows))
    print(f"\nmedian of {args.repeat} passes (load -> fold -> save, imports excluded), "
          f"each tool in its own process; results in {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        result = worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        print("RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    sys.exit(main())
