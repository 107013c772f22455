"""bnfold: fold BatchNormalization away in ONNX models, prove equivalence, measure the gain.

Public API: ``fold_file`` (file in, folded and verified file out, with ``VerifyOptions``),
``fold``, ``inspect``, ``verify``, ``benchmark``, ``export``, ``recalibrate`` and the
``reference`` module. Heavy dependencies (onnxruntime, torch) load only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from bnfold.errors import BnfoldError, InputError, OutputError  # noqa: E402
from bnfold.folding import fold, inspect  # noqa: E402
from bnfold.folding.report import FoldRecord, FoldResult, Reason  # noqa: E402
from bnfold.pipeline import FoldFileResult, VerifyOptions, fold_file

_LAZY = {
    "verify": ("bnfold.verification", "verify"),
    "benchmark": ("bnfold.bench", "benchmark"),
    "export": ("bnfold.exporting", "export"),
    "reference": ("bnfold.reference", None),
    "recalibrate": ("bnfold.recalibration", "recalibrate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")


__all__ = ["fold_file", "VerifyOptions", "FoldFileResult", "fold", "inspect", "verify", "benchmark",
           "export", "reference", "recalibrate",
           "FoldResult", "FoldRecord", "Reason", "BnfoldError", "InputError", "OutputError",
           "__version__"]
