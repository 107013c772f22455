"""Equivalence verification of a folded model against its original on ONNX Runtime.

``verify(original, folded, ...) -> Report``; ``verify_fold(original, fold_result, ...)`` verifies
a fold held in memory (``bnfold.fold_file`` verifies the written file with ``verify``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnfold.verification.api import verify, verify_fold
    from bnfold.verification.report import Report

# imported when first used: the ORT child's process (``engines``, ``shared_child``) starts
# without the verification engine, onnx or numpy imported
_LAZY = {"verify": "bnfold.verification.api", "verify_fold": "bnfold.verification.api",
         "Report": "bnfold.verification.report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bnfold.verification' has no attribute {name!r}")


__all__ = ["verify", "verify_fold", "Report"]
