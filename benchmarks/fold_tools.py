"""Fold time of bnfold against other BatchNormalization folders, file to file; the goals.

Paired and interleaved: on each model, every round runs every tool once, in an order rotated
per round, so machine-load drift hits all tools alike; the median over rounds is reported with
the largest peak RSS over the worker's RSS before the job. Each tool lives in its own
long-lived worker process (``tool_workers.py``: imports and one warm-up job excluded from
timing), or with ``--fresh`` in a new process per job (imports excluded, no warm-up). Outputs
are then counted for BN left, loaded in ONNX Runtime (optimizations disabled) and compared
with the original's outputs on random inputs. ``--cli`` adds the command lines as a user runs
them (``cli_runs.py``: fresh processes, interpreter start included, peak RSS of the process
tree), and the goals of issue 13 are printed last (``goals.py``), PASS or NOT MET.

Tools: loadsave (bare onnx.load + onnx.save: the floor), bnfold (fold(path), save_model:
`bnfold fold --no-verify`), onnxoptimizer (fuse_bn_into_conv), onnxscript (rewriter with
its BN fusion rules), onnxslim (default slim), ort_basic (InferenceSession at
ORT_ENABLE_BASIC with optimized_model_filepath), onnxsim (when installed).

Models: the generated ones (generate.py) and models/*.onnx, or with --real the exports that
real_arch.py cached. Usage:
    python benchmarks/fold_tools.py --full          # generated + real exports + CLI, the goals
    python benchmarks/fold_tools.py --quick         # a handful of models, 3 rounds, CLI
    python benchmarks/fold_tools.py [--models m.onnx ...] [--no-generated] [--real [DIR]]
        [--rounds 5] [--cli] [--fresh] [--detail] [--tools bnfold onnxscript ...]
    python benchmarks/fold_tools.py --models --no-generated --cli   # the command lines only
    python benchmarks/fold_tools.py --render RUN.json | --summary RUN.json
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
# bnfold_unproven: bnfold.fold(prove=False), not what `bnfold fold` does (it proves every fold);
# timed beside it only to show what the per-fold ORT proofs cost against the other tools
TOOLS = ("loadsave", "bnfold", "bnfold_unproven", "onnxoptimizer", "onnxscript", "onnxslim",
         "ort_basic", "onnxsim")
# the package a tool needs, if not its name
MODULES = {"loadsave": "onnx", "ort_basic": "onnxruntime", "bnfold_unproven": "bnfold"}
QUICK_GENERATED = ["resnet50", "mobilenetv2", "bn_preconv"]
QUICK_REAL = ["resnet18.dynamo", "mobilenet_v2.torchscript", "efficientnet_b0.dynamo"]


def _tool(name: str) -> Callable[[str, str], None]:
    """Import a tool (outside the timed region) and return its file-to-file fold."""
    import onnx

    if name == "loadsave":
        return lambda i, o: onnx.save(onnx.load(i), o)
    if name in ("bnfold", "bnfold_unproven"):
        import bnfold
        from bnfold.io.model_io import save_model

        _time_ort_checks()

        def fold_to_file(i: str, o: str) -> None:
            # what `bnfold fold IN -o OUT --no-verify` does after parsing its options: a lazy
            # fold (weights read from the input as needed), saved with the rest copied from it
            result = bnfold.fold(i, lazy_external=True, prove=name == "bnfold")
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
    if name == "onnxsim":
        import onnxsim

        return lambda i, o: onnx.save(onnxsim.simplify(i)[0], o)
    raise SystemExit(f"unknown tool {name}")


# seconds the fold spent sending to its ORT child and waiting for its replies (proof batches,
# constant cross-checks; the bytes through the pipe included) during one job
ORT_CHECKS: list[float] = []


def _time_ort_checks() -> None:
    """Time what bnfold spends on its ORT child's commands (``OrtProcess.submit`` and
    ``collect``, which every call goes through): the part of the ORT checks the fold waits
    for (a proof batch runs while the next one is built: that part is hidden)."""
    from bnfold.verification.engines import OrtProcess

    def timed(inner: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                ORT_CHECKS[-1] += time.perf_counter() - start
        return run

    OrtProcess.submit = timed(OrtProcess.submit)  # type: ignore[method-assign]
    OrtProcess.collect = timed(OrtProcess.collect)  # type: ignore[method-assign]
    ORT_CHECKS.append(0.0)


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


def job(fn: Callable[[str, str], None], src: str, dst: str) -> dict[str, Any]:
    """One timed ``fn(src, dst)`` with the peak RSS over the RSS before it; a raised error is
    returned as ``error``, so a worker survives a tool that fails on one model."""
    import gc

    if os.path.exists(dst):
        os.remove(dst)
    gc.collect()
    _reset_peak_rss()
    base = _rss_kb("VmRSS") * 1024
    if ORT_CHECKS:
        ORT_CHECKS[-1] = 0.0
    start = time.perf_counter()
    try:
        fn(src, dst)
    except Exception as exc:  # noqa: BLE001 - a tool failure is the finding, reported
        return {"error": f"crash: {type(exc).__name__}: {str(exc).strip()[:160]}"}
    elapsed = time.perf_counter() - start
    out = {"time_s": elapsed, "base_rss_mb": base / 1e6, "peak_rss_mb": _rss_kb("VmHWM") * 1024 / 1e6}
    if ORT_CHECKS:
        out["ort_checks_s"] = ORT_CHECKS[-1]
    return out


def serve(tool: str) -> None:
    """The worker loop of ``tool_workers.ToolWorker``: READY, then one RESULT line per job line."""
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever the tool prints goes to stderr, not into the replies
    fn = _tool(tool)
    print("READY", file=reply, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print("RESULT " + json.dumps(job(fn, request["src"], request["dst"])), file=reply, flush=True)


def installed(tools: list[str]) -> list[str]:
    """The tools whose package can be imported here (onnxsim is optional)."""
    import importlib.util

    return [t for t in tools if importlib.util.find_spec(MODULES.get(t, t)) is not None]


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


def real_models(folder: str, only: list[str] | None = None) -> dict[str, str]:
    """The exports real_arch.py cached: "ARCH.EXPORT" -> newest ``ARCH.EXPORT.KEY.onnx``."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.onnx")), key=os.path.getmtime):
        parts = os.path.basename(path).split(".")
        if len(parts) == 4 and (not only or f"{parts[0]}.{parts[1]}" in only):
            found[f"{parts[0]}.{parts[1]}"] = path
    return dict(sorted(found.items()))


def _reference(src: str) -> tuple[dict[str, Any], list[Any]]:
    """Seeded inputs of the model (batch 1 when dynamic) and its outputs on ORT."""
    import onnx

    from bnfold.inputs import ShapeRequest, graph_inputs

    specs = graph_inputs(onnx.load(src, load_external_data=False))
    request = ShapeRequest()
    inputs = request.feed(specs, request.fixed_batch(specs) or 1, seed=0)
    return inputs, ort_outputs(src, inputs)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool's rounds on one model: every time, their median, the largest peak RSS; the first
    error when any round failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return {"error": failed[0]["error"]}
    out = {"times_s": [r["time_s"] for r in runs], "median_s": statistics.median(r["time_s"] for r in runs),
           "base_rss_mb": min(r["base_rss_mb"] for r in runs),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    if all("ort_checks_s" in r for r in runs):
        out["ort_checks_s"] = statistics.median(r["ort_checks_s"] for r in runs)
    return out


def bench_model(name: str, src: str, tools: list[str], out_dir: str, rounds: int,
                workers: dict[str, Any], keep_output: bool = True) -> dict[str, Any]:
    """All tools on one model, paired and interleaved over ``rounds``; then BN counts and ORT
    checks of every output (the last round's). Outputs are deleted unless ``keep_output``."""
    from cli_runs import rotated

    row: dict[str, Any] = {"model": name, "path": src, "size_mb": os.path.getsize(src) / 1e6,
                           "bn": count_bn(src), "nodes": count_bn(src, None), "tools": {}}
    dsts = {t: os.path.join(out_dir, f"{name}.{t}.onnx") for t in tools}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for r in range(rounds):
        print(f"  {name}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for tool in rotated(tools, r):
            runs[tool].append(workers[tool].run(src, dsts[tool]))
    try:
        inputs, ref = _reference(src)
    except Exception as exc:  # noqa: BLE001 - the original not running on ORT is recorded
        inputs, ref, row["ref_error"] = {}, None, f"{type(exc).__name__}: {str(exc)[:160]}"
    for tool in tools:
        res = combine(runs[tool])
        if "error" not in res:
            res.update(bn_left=count_bn(dsts[tool]), nodes=count_bn(dsts[tool], None))
            if ref is not None:
                res.update(check_output(ref, dsts[tool], inputs))
            if keep_output:
                res["output"] = dsts[tool]
        if not keep_output and os.path.exists(dsts[tool]):
            os.remove(dsts[tool])
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import generate
    import real_arch

    ap = argparse.ArgumentParser(description="Fold time of bnfold vs other tools; the goals.")
    ap.add_argument("--models", nargs="*", default=None,
                    help="model files [default: models/*.onnx; none with --real/--full/--quick]")
    ap.add_argument("--no-generated", action="store_true", help="skip the generated models")
    ap.add_argument("--only", nargs="*", help="generated models to use [default: all]")
    ap.add_argument("--real", nargs="?", const=real_arch.DEFAULT_CACHE, metavar="DIR",
                    help="add the exports real_arch.py cached in DIR [%(const)s]")
    ap.add_argument("--real-only", nargs="*", metavar="ARCH.EXPORT", help="only these real exports")
    ap.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds [5; --quick 3]")
    ap.add_argument("--repeat", type=int, dest="rounds", help="the old name of --rounds")
    ap.add_argument("--fresh", action="store_true",
                    help="a new process per job instead of one warm worker per tool")
    ap.add_argument("--cli", action="store_true", help="also time the command lines (fresh processes)")
    ap.add_argument("--cli-model", help="model of the CLI runs [the generated resnet50]")
    ap.add_argument("--cli-rounds", type=int, default=None, help="CLI rounds [5; --quick 3]")
    ap.add_argument("--full", action="store_true", help="the goals run: generated + --real + --cli")
    ap.add_argument("--quick", action="store_true",
                    help=f"{', '.join(QUICK_GENERATED + QUICK_REAL)} (when cached), 3 rounds, --cli")
    ap.add_argument("--keep-outputs", action="store_true",
                    help="keep the outputs of real exports too (those of the others are kept)")
    ap.add_argument("--detail", action="store_true", help="also print one line per model and tool")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per tool and model")
    ap.add_argument("--cache", default=generate.DEFAULT_CACHE, help="generated models and outputs")
    ap.add_argument("--json", dest="json_path", help="write results here [CACHE/fold_tools.json]")
    ap.add_argument("--render", metavar="JSON", help="only print the tables of a saved run")
    ap.add_argument("--summary", metavar="JSON", help="only print the goals of a saved run")
    args = ap.parse_args(argv)
    if args.quick:
        args.cli = True
        args.only = args.only or QUICK_GENERATED
        args.real = args.real or real_arch.DEFAULT_CACHE
        args.real_only = args.real_only or QUICK_REAL
    if args.full:
        args.cli = True
        args.real = args.real or real_arch.DEFAULT_CACHE
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.cli_rounds = args.cli_rounds or (3 if args.quick else 5)
    return args


def print_run(run: dict[str, Any], detail: bool = False) -> None:
    """The per-model table, the CLI table and the goals of one run."""
    import goals

    rows, tools = run["rows"], run["tools"]
    if rows:
        print(goals.format_model_table(rows, tools))
        if detail:
            print()
            print(format_table(rows))
        print(f"\nmedian of {run['rounds']} paired, interleaved rounds (load -> fold -> save), "
              f"{run['mode']}; fold / X = bnfold's median time over X's on that model\n")
    if run.get("cli"):
        print(goals.format_cli_table(run["cli"]))
        print()
    print(goals.format_goals(goals.tool_goals(rows) + goals.cli_goals(run.get("cli"))))
    for note in (goals.unproven_note(rows), goals.ort_floor_note(rows)):
        if note:
            print(f"\n{note}")


def main(argv: list[str] | None = None) -> int:
    import generate
    from cli_runs import compare_cli
    from tool_workers import ToolWorker

    args = parse_args(argv)
    if args.render or args.summary:
        import goals

        with open(args.render or args.summary, encoding="utf-8") as fh:
            run = json.load(fh)
        if args.render:
            run.setdefault("tools", list(run["rows"][0]["tools"]) if run["rows"] else [])
            run.setdefault("rounds", run.get("repeat"))
            run.setdefault("mode", "saved run")
            print_run(run, args.detail)
        else:
            print(goals.format_goals(goals.tool_goals(run["rows"]) + goals.cli_goals(run.get("cli"))))
        return 0
    start = time.perf_counter()
    models = args.models if args.models is not None else [] if (args.real or args.quick) else sorted(
        glob.glob(os.path.join(HERE, "..", "models", "*.onnx")))
    named = {os.path.splitext(os.path.basename(m))[0]: os.path.abspath(m) for m in models}
    if not args.no_generated:
        named.update({k: v for k, v in generate.ensure_models(args.cache, args.only).items()})
    generated = set(named)
    if args.real:
        real = real_models(args.real, args.real_only)
        if not real:
            print(f"no real exports in {args.real} (run benchmarks/real_arch.py)", file=sys.stderr)
        named.update(real)
    out_dir = os.path.join(args.cache, "outputs")
    os.makedirs(out_dir, exist_ok=True)
    tools = installed(["loadsave"] + [t for t in args.tools if t != "loadsave"])
    if not named and not args.cli:
        raise SystemExit("no models: give --models, the generated ones, --real or --cli")
    smallest = min(named.values(), key=os.path.getsize, default=None)
    workers = {t: ToolWorker(t, env=_child_env(), timeout=args.timeout, fresh=args.fresh,
                             warmup=(smallest, os.path.join(out_dir, f"warmup.{t}.onnx"))
                             if smallest else None)
               for t in tools}
    rows = []
    try:
        for i, (name, path) in enumerate(named.items()):
            print(f"[{i + 1}/{len(named)}] {name} ({path})", file=sys.stderr, flush=True)
            rows.append(bench_model(name.split(".v")[0] if name in generated else name, path, tools,
                                    out_dir, args.rounds, workers,
                                    keep_output=name in generated or args.keep_outputs))
    finally:
        for w in workers.values():
            w.close()
        for t in tools:
            warm = os.path.join(out_dir, f"warmup.{t}.onnx")
            if os.path.exists(warm):
                os.remove(warm)
    cli = None
    if args.cli:
        cli_model = args.cli_model or generate.ensure_models(args.cache, ["resnet50"])["resnet50"]
        print(f"CLI runs on {cli_model}", file=sys.stderr, flush=True)
        cli = compare_cli("resnet50" if not args.cli_model else os.path.basename(cli_model), cli_model,
                          args.cli_rounds, out_dir, args.timeout,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    from bnfold.bench.result import machine_info

    mode = ("a fresh process per job, imports excluded" if args.fresh else
            "one warm worker process per tool, imports and one warm-up job excluded")
    run = {"machine": machine_info(), "rounds": args.rounds, "repeat": args.rounds, "mode": mode,
           "tools": tools, "rows": rows, "cli": cli, "wall_s": time.perf_counter() - start,
           "argv": sys.argv[1:] if argv is None else argv}
    json_path = args.json_path or os.path.join(  # a CLI-only run leaves latency.py's input alone
        args.cache, "fold_tools.json" if rows else "fold_tools_cli.json")
    with open(json_path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(run, fh, indent=1)
    os.replace(json_path + ".tmp", json_path)
    print_run(run, args.detail)
    print(f"\n{len(rows)} models, {len(tools)} tools in {run['wall_s']:.0f} s; results in {json_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        result = worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        print("RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
