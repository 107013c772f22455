"""The BN folders compared on real architectures, run in process, and the checks of their output.

Each tool is a file-to-file function. Every output is counted (BatchNormalization in the main
graph, its subgraphs and the model's functions), checked (onnx.checker with strict shape
inference) and run on ONNX Runtime with optimizations disabled against the original.
A tool that is not installed is reported as such, never fatal.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import onnx

TOOLS = ("bnfold", "onnxoptimizer", "onnxscript", "onnxslim", "ort_basic", "onnxsim")
PACKAGES = {"bnfold": "bnfold", "onnxoptimizer": "onnxoptimizer", "onnxscript": "onnxscript",
            "onnxslim": "onnxslim", "ort_basic": "onnxruntime", "onnxsim": "onnxsim"}
OPTIMIZER_PASSES = ["fuse_bn_into_conv", "eliminate_deadend", "eliminate_unused_initializer"]


def package_version(package: str) -> str:
    """The installed version of ``package`` ("not installed" when missing)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def tool_versions(tools: tuple[str, ...] | list[str] = TOOLS) -> dict[str, str]:
    """The installed version of each tool's package."""
    return {tool: package_version(PACKAGES[tool]) for tool in tools}


def count_bn(model: onnx.ModelProto, op_type: str = "BatchNormalization") -> int:
    """Nodes of ``op_type`` in the main graph, every subgraph and every model-local function."""
    def in_nodes(nodes: Any) -> int:
        n = 0
        for node in nodes:
            n += node.op_type == op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += in_nodes(attr.g.node)
                n += sum(in_nodes(g.node) for g in attr.graphs)
        return n

    return in_nodes(model.graph.node) + sum(in_nodes(f.node) for f in model.functions)


def count_nodes(model: onnx.ModelProto) -> int:
    """Nodes of the main graph (a tool that replaces BN by run-time arithmetic shows here)."""
    return len(model.graph.node)


def checker_passes(model: onnx.ModelProto) -> tuple[bool, str]:
    """onnx.checker with full_check (strict shape inference); (passed, first line of the error)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker failure is the finding
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    return True, ""


def ort_run(path: str, x: np.ndarray) -> list[np.ndarray]:
    """Outputs on ONNX Runtime (CPU) with graph optimizations disabled, the one input fed ``x``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def relative_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """max |got - ref| over all outputs, divided by the peak |ref| (inf on a shape mismatch)."""
    if len(ref) != len(got):
        return float("inf")
    err, peak = 0.0, 0.0
    for r, g in zip(ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r64.shape != g64.shape:
            return float("inf")
        err = max(err, float(np.max(np.abs(r64 - g64), initial=0.0)))
        peak = max(peak, float(np.max(np.abs(r64), initial=0.0)))
    return err / max(peak, 1e-30)


def make_tool(name: str) -> Callable[[str, str], dict[str, Any]]:
    """Import ``name`` and return its file-to-file fold; the dict it returns holds tool facts."""
    if name == "bnfold":
        import bnfold
        from bnfold.io.model_io import save_model

        def run_bnfold(src: str, dst: str) -> dict[str, Any]:
            result = bnfold.fold(src)
            save_model(result.model, dst, overwrite=True)
            return {"fold_result": result}
        return run_bnfold
    if name == "onnxoptimizer":
        import onnxoptimizer

        return lambda i, o: onnx.save(onnxoptimizer.optimize(onnx.load(i), OPTIMIZER_PASSES), o) or {}
    if name == "onnxscript":
        from onnxscript import ir, rewriter
        from onnxscript.rewriter.rules.common import (
            fuse_batchnorm_into_conv_rule,
            fuse_batchnorm_into_conv_transpose_rule,
            fuse_batchnorm_into_gemm_rule,
        )

        rules = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                 fuse_batchnorm_into_gemm_rule]
        return lambda i, o: ir.save(rewriter.rewrite(ir.load(i), pattern_rewrite_rules=rules), o) or {}
    if name == "onnxslim":
        import onnxslim

        return lambda i, o: onnx.save(onnxslim.slim(i), o) or {}
    if name == "onnxsim":
        import onnxsim

        def run_onnxsim(src: str, dst: str) -> dict[str, Any]:
            model, ok = onnxsim.simplify(src)
            onnx.save(model, dst)
            return {"onnxsim_check": bool(ok)}
        return run_onnxsim
    if name == "ort_basic":
        import onnxruntime as ort

        def ort_basic(src: str, dst: str) -> dict[str, Any]:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.optimized_model_filepath = dst
            so.log_severity_level = 3
            ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
            return {}
        return ort_basic
    raise ValueError(f"unknown tool {name!r}; expected one of {TOOLS}")


def run_tool(fn: Callable[[str, str], dict[str, Any]], src: str, dst: str, repeat: int,
             x: np.ndarray, ref: list[np.ndarray]) -> dict[str, Any]:
    """Time ``repeat`` passes of ``fn`` (median), then count, check and run its output.

    A failure in the tool or in any check becomes an ``error``/``*_error`` entry.
    """
    times, facts = [], {}
    try:
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            facts = fn(src, dst)
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a tool crash is the finding, recorded
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    out: dict[str, Any] = {"median_s": statistics.median(times), **facts}
    model = onnx.load(dst)
    out["bn_after"], out["nodes"] = count_bn(model), count_nodes(model)
    out["checker_ok"], out["checker_error"] = checker_passes(model)
    try:
        out["rel_err"] = relative_error(ref, ort_run(dst, x))
    except Exception as exc:  # noqa: BLE001 - ORT refusing the output is the finding
        out["rel_err"], out["ort_error"] = None, f"{type(exc).__name__}: {str(exc)[:160]}"
    return out
