"""Equivalence verification of a folded model against its original on ONNX Runtime.

``verify(original, folded, ...) -> Report``; ``verify_fold(original, fold_result, ...)`` verifies
a fold held in memory (``bnfold.fold_file`` verifies the written file with ``verify``).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from bnfold.verify.api import verify, verify_fold
from bnfold.verify.report import Report

__all__ = ["verify", "verify_fold", "Report"]


class _CallableModule(types.ModuleType):
    """Importing this package makes ``bnfold.verify`` the module rather than the function (Python
    sets the submodule as the parent's attribute); calling the module keeps ``bnfold.verify(...)``
    working either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Report:
        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
