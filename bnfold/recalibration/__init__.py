"""``bnfold.recalibration``: re-estimate BatchNorm running statistics of an ONNX model from data.

See ``engine.recalibrate`` for the method (BNs measured in inference mode, level by level,
with the BNs before them already recalibrated) and ``stats`` for the estimators.
"""
from bnfold.recalibration.engine import recalibrate
from bnfold.recalibration.report import BnRecalibration, RecalibrationResult

__all__ = ["recalibrate", "RecalibrationResult", "BnRecalibration"]
