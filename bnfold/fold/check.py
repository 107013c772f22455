"""Validity checks on a folded model: onnx.checker (full) and strict shape inference.

A check the original model already fails is not held against the fold; only new failures
count, so a model with, say, custom-domain ops still folds.
"""
from __future__ import annotations

import onnx

from bnfold.model_io import PROTOBUF_LIMIT, tensor_bytes


def _problem(model: onnx.ModelProto, kind: str) -> str | None:
    try:
        if kind == "checker":
            onnx.checker.check_model(model, full_check=False)
        else:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several exception types for invalid models
        text = str(exc).strip().splitlines()
        return f"{kind}: {text[0] if text else type(exc).__name__}"
    return None


def check_folded(original: onnx.ModelProto, folded: onnx.ModelProto) -> str | None:
    """None if ``folded`` passes every check that ``original`` passes; else the first failure.

    Models too large for one protobuf are checked on file after saving instead.
    """
    if tensor_bytes(folded) + 64 * 2**20 > PROTOBUF_LIMIT:
        return None
    for kind in ("checker", "shape_inference"):
        problem = _problem(folded, kind)
        if problem and _problem(original, kind) is None:
            return problem
    return None
