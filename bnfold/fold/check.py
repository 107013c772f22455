"""Validity check on a folded model: onnx.checker with strict shape inference (full check).

Runs on skeletons (structure without bulk tensor data), so it costs little even for large
models. A failure the original model already has is not held against the fold; only new
failures count, so a model with, say, unknown custom-domain ops still folds.
"""
from __future__ import annotations

import onnx

from bnfold.skeleton import CheckFailed, full_check, skeleton


def problem(sk: onnx.ModelProto) -> str | None:
    """The first line of the full check's complaint about skeleton ``sk``, or None."""
    try:
        full_check(sk)
    except CheckFailed as exc:  # only onnx's verdict: a bnfold error must not read as one
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    return None


def check_folded(original_skeleton: onnx.ModelProto, folded: onnx.ModelProto) -> str | None:
    """None if ``folded`` passes the full check or the original fails it too; else why not."""
    found = problem(skeleton(folded))
    if found and problem(original_skeleton) is None:
        return found
    return None
