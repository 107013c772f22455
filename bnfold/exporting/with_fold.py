"""Export, fold and verify in one go, with PyTorch's own eval-mode fusion shown beside bnfold's.

The PyTorch side uses ``torch.fx.experimental.optimization.fuse`` (Conv1d/2d/3d+BN and
Linear+BatchNorm1d, via fuse_conv_bn_eval / fuse_linear_bn_eval). Both fused models are
compared with the unfused PyTorch model on the same input, so the two errors are comparable.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bnfold.errors import first_line
from bnfold.exporting.exporter import ExportResult, eval_mode, export, run_onnx, torch_forward
from bnfold.folding.report import FoldResult

if TYPE_CHECKING:
    import torch

    from bnfold.verification import Report


@dataclass
class TorchFusion:
    """PyTorch's own Conv/Linear+BN fusion: BN calls left and error vs the unfused model."""

    bn_before: int
    bn_after: int | None          # None when torch.fx could not trace the model
    max_abs_error: float | None   # fused vs unfused PyTorch outputs
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"bn_before": self.bn_before, "bn_after": self.bn_after,
                "max_abs_error": self.max_abs_error, "note": self.note}


@dataclass
class ExportFoldResult:
    """The export, the fold of it, the verification report, and both sides' errors vs PyTorch."""

    export: ExportResult
    fold: FoldResult
    folded_path: str
    report: Report                # fold_file verifies by default: never None here
    bnfold_max_abs_error: float   # folded ONNX vs unfused PyTorch, on the example input
    torch: TorchFusion

    @property
    def ok(self) -> bool:
        return self.export.ok and self.report.passed

    def to_dict(self) -> dict[str, Any]:
        return {"export": self.export.to_dict(), "fold": self.fold.to_dict(),
                "folded_path": self.folded_path, "verify": {"passed": self.report.passed,
                                                            "summary": self.report.summary()},
                "bnfold_max_abs_error_vs_torch": self.bnfold_max_abs_error,
                "torch_fusion": self.torch.to_dict(), "ok": self.ok}


def torch_fusion(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> TorchFusion:
    """Fuse a deep copy of ``model`` in eval mode with torch.fx and compare its outputs."""
    from torch.fx.experimental.optimization import fuse

    work = copy.deepcopy(model).eval()
    reference, bn_before = torch_forward(work, tuple(inputs))
    try:
        fused = fuse(work)
    except Exception as exc:  # symbolic tracing fails on data-dependent control flow
        first = first_line(exc)
        return TorchFusion(bn_before, None, None, f"torch.fx could not trace the model: {first}")
    outputs, bn_after = torch_forward(fused, tuple(inputs))
    return TorchFusion(bn_before, bn_after, _max_abs(reference, outputs),
                       "torch.fx.experimental.optimization.fuse (Conv+BN, Linear+BN1d)")


def export_and_fold(model: torch.nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor],
                    path: str | os.PathLike[str], folded_path: str | os.PathLike[str] | None = None,
                    **export_options: Any) -> ExportFoldResult:
    """Export ``model`` to ``path`` (see ``bnfold.export``), fold that file into ``folded_path``
    (default PATH.folded.onnx) with ``bnfold.fold_file`` (verified), compare with PyTorch."""
    import torch

    from bnfold.pipeline import default_output, fold_file

    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    exported = export(model, inputs, path, **export_options)
    target = folded_path if folded_path is not None else default_output(path)
    folded = fold_file(path, target, overwrite=export_options.get("overwrite", True))
    with eval_mode(model):
        reference, _ = torch_forward(model, inputs)
    names = [i.name for i in exported.model.graph.input]
    arrays = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)}
    folded_out = run_onnx(folded.fold.model, arrays)
    report: Report = folded.report  # type: ignore[assignment]  # verified: never None here
    return ExportFoldResult(exported, folded.fold, os.fspath(target), report,
                            _max_abs(reference, folded_out), torch_fusion(model, inputs))


def _max_abs(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(r.astype(np.float64) - o), initial=0.0))
                for r, o in zip(reference, other, strict=True)), default=0.0)
