"""The value of a small constant subgraph, under the model's own opsets, confirmed by ORT.

Op semantics change across opsets (Squeeze, Unsqueeze and ReduceSum read ``axes`` from an
attribute before opset 13 and from an input after), so a subgraph is evaluated as a tiny
model carrying the source model's ``opset_import`` and IR version, never as a bare node.
The same tiny model then runs on ONNX Runtime; a value is only constant when both agree,
because ORT is what will run the folded model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.errors import first_line

_ULPS = 4  # float results may differ by rounding between numpy and ORT kernels


@dataclass(frozen=True)
class Evaluated:
    """A constant's value, or ``value=None`` and why it is not treated as constant."""

    value: np.ndarray | None
    problem: str = ""


def evaluate(nodes: Sequence[onnx.NodeProto], leaves: dict[str, np.ndarray], output: str, *,
             opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int) -> Evaluated:
    """``output`` of ``nodes`` (in graph order) given constant ``leaves``, or why not."""
    model = _tiny_model(nodes, leaves, output, opset_imports, ir_version, None)
    try:
        from onnx.reference import ReferenceEvaluator

        reference = np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception as exc:  # an op the reference cannot run here is simply not constant
        return Evaluated(None, f"onnx.reference cannot evaluate it: {first_line(exc)[:200]}")
    try:
        elem = helper.np_dtype_to_tensor_dtype(reference.dtype)
    except (KeyError, ValueError, TypeError):
        return Evaluated(None, f"onnx.reference gave dtype {reference.dtype}")
    model = _tiny_model(nodes, leaves, output, opset_imports, ir_version, elem)
    try:
        runtime = _run_ort(model)
    except Exception as exc:  # no kernel, unsupported opset or IR: ORT cannot confirm it
        return Evaluated(None, f"ONNX Runtime cannot evaluate it: {first_line(exc)[:200]}")
    disagreement = _disagreement(reference, runtime)
    if disagreement:
        return Evaluated(None, f"onnx.reference and ONNX Runtime disagree: {disagreement}")
    return Evaluated(runtime)


def _tiny_model(nodes: Sequence[onnx.NodeProto], leaves: dict[str, np.ndarray], output: str,
                opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int,
                elem_type: int | None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in leaves.items()]
    inputs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    out_type = elem_type if elem_type is not None else onnx.TensorProto.UNDEFINED
    graph = helper.make_graph(list(nodes), "bnfold_const", inputs if ir_version < 4 else [],
                              [helper.make_tensor_value_info(output, out_type, None)], inits)
    for node in graph.node:  # only ai.onnx ops are evaluated: spell their domain one way
        node.domain = ""
    imports = list(opset_imports)
    default = [i.version for i in imports if i.domain in ("", "ai.onnx")]
    imports = [i for i in imports if i.domain not in ("", "ai.onnx")]
    imports += [helper.make_opsetid("", default[0])] if default else []
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    return model


def _run_ort(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    from bnfold.ort import session_options

    so = session_options("disabled")
    so.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {})[0])


def _disagreement(reference: np.ndarray, runtime: np.ndarray) -> str:
    """Empty when the two results agree (same dtype and shape, values within a few ulps)."""
    if reference.dtype != runtime.dtype:
        return f"dtype {reference.dtype} vs {runtime.dtype}"
    if reference.shape != runtime.shape:
        return f"shape {list(reference.shape)} vs {list(runtime.shape)}"
    if reference.dtype.kind != "f":
        same = np.array_equal(reference, runtime)
        return "" if same else f"{int(np.count_nonzero(reference != runtime))} values differ"
    a, b = reference.astype(np.float64), runtime.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    finfo = np.finfo(reference.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        tol = _ULPS * finfo.eps * np.maximum(np.abs(a), np.abs(b)) + finfo.smallest_subnormal
        close = (a == b) | both_nan | (np.abs(a - b) <= tol)
    if close.all():
        return ""
    worst = int(np.argmax(np.where(close, 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))))
    return (f"{int(np.count_nonzero(~close))} values differ, e.g. {a.flat[worst]:.9g} vs "
            f"{b.flat[worst]:.9g}")
