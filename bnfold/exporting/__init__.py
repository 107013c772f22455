"""PyTorch -> ONNX keeping every BatchNormalization (``exporter``), the exporter's leftovers
cleaned (``cleanup``), and ``export --fold`` (``with_fold``). ``bnfold.export`` is ``export``."""
from __future__ import annotations

from bnfold.exporting.exporter import ExportResult, export

__all__ = ["export", "ExportResult"]
