"""Equivalence verification of a folded model against its original on ONNX Runtime.

``verify(original, folded, ...) -> Report``; ``verify_fold(original, fold_result, ...)`` verifies
a fold held in memory (``bnfold.fold_file`` verifies the written file with ``verify``).
"""
from __future__ import annotations

from bnfold.verification.api import verify, verify_fold
from bnfold.verification.report import Report

__all__ = ["verify", "verify_fold", "Report"]
