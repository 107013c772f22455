"""bnfold: fold BatchNormalization away in ONNX models, prove equivalence, measure the gain.

Public API: ``fold_file`` (file in, folded and verified file out, with ``VerifyOptions``),
``fold``, ``inspect``, ``verify``, ``benchmark``, ``export``, ``recalibrate`` and the
``reference`` module. Heavy dependencies (onnxruntime, torch) load only when used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from bnfold.errors import BnfoldError, InputError, OutputError  # noqa: E402

if TYPE_CHECKING:
    from bnfold.folding import fold, inspect
    from bnfold.folding.report import FoldRecord, FoldResult, Reason
    from bnfold.pipeline import FoldFileResult, VerifyOptions, fold_file

# imported when first used: `import bnfold` (and the CLI, which starts ORT's child process
# before the fold engine, onnx and numpy are imported) costs nothing it does not need
_LAZY = {
    "fold": ("bnfold.folding", "fold"),
    "inspect": ("bnfold.folding", "inspect"),
    "FoldRecord": ("bnfold.folding.report", "FoldRecord"),
    "FoldResult": ("bnfold.folding.report", "FoldResult"),
    "Reason": ("bnfold.folding.report", "Reason"),
    "fold_file": ("bnfold.pipeline", "fold_file"),
    "VerifyOptions": ("bnfold.pipeline", "VerifyOptions"),
    "FoldFileResult": ("bnfold.pipeline", "FoldFileResult"),
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
