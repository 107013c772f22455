"""Regenerate the committed example verification report of a zoo model.

Folds models/resnet_digits.onnx, then verifies the folded model against the original on
the digits test split with labels, and writes
report.json, report.md and report.html to models/reports/resnet_digits/.
Usage: python -m models.make_report
"""
from __future__ import annotations

import os
from pathlib import Path

import bnfold
from bnfold.io.model_io import save_model

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    os.chdir(ROOT)  # relative paths in the report
    model = "models/resnet_digits.onnx"
    folded = "models/resnet_digits.folded.onnx"  # what `bnfold fold` writes (not committed)
    result = bnfold.fold(model)
    save_model(result.model, folded)
    out = Path("models/reports/resnet_digits")
    report = bnfold.verify(model, folded, fold_result=result, data=["models/digits_test.npz"],
                           labels="models/digits_test_labels.npy")
    report.write(out)
    print(report.summary())
    print(f"wrote {out}/report.json, report.md, report.html")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
