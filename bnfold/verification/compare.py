"""Error metrics between a reference output and a candidate output, and the tolerances they meet.

Every metric is computed in float64 so the comparison itself adds no rounding. The pass rule
scales with the output, not each element: ``|cand - ref| <= atol + rtol * max|ref|`` for every
element, with NaN equal to NaN and infinities equal only to the same infinity. An elementwise
``rtol * |ref|`` would fail correct folds wherever a near-zero value is the small difference of
large terms (a few ulps of the peak, not of the value itself); half-precision models show it first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

REL_FLOOR = 1e-6
"""Denominator floor of the elementwise relative error, so exact zeros do not divide by zero."""

# (atol, rtol) per output dtype; rtol is relative to the output's peak. Folding rounds each folded
# weight once and reorders multiply-adds, so outputs move by a few ulps of their peak: measured
# peak-relative errors on the digits models are ~5e-7 in fp32 and ~1.2e-3 in fp16 (eps 1.2e-7,
# 9.8e-4), so those rtols leave a 200x and 8x margin; bf16 (eps 7.8e-3, not measured: ORT's
# Python API cannot return bf16 outputs) is scaled from fp16 by the ratio of epsilons.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-12, 1e-9),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 8e-2),
}
EXACT = (0.0, 0.0)
"""Integer and bool outputs must match exactly."""


def dtype_name(dtype: Any) -> str:
    """Canonical dtype name ('float32', 'bfloat16', 'int64', ...) for numpy and ml_dtypes types."""
    return np.dtype(dtype).name


def default_tolerance(dtype: Any) -> tuple[float, float]:
    """(atol, rtol) used for an output of ``dtype`` when the user gives none."""
    return TOLERANCES.get(dtype_name(dtype), EXACT)


def tolerance_for(dtype: Any, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """User tolerances where given, else the dtype default."""
    d_atol, d_rtol = default_tolerance(dtype)
    return (d_atol if atol is None else float(atol), d_rtol if rtol is None else float(rtol))


@dataclass(frozen=True)
class Metrics:
    """Differences between a reference array (original model) and a candidate (folded model)."""

    max_abs: float           # max |cand - ref|
    max_rel: float           # max |cand - ref| / max(|ref|, REL_FLOOR)
    peak_rel: float          # max |cand - ref| / max |ref|  (0 when both are all zero)
    mean_abs: float          # mean |cand - ref|
    cosine: float            # cosine similarity of the flattened arrays (1.0 when both are zero)
    top1_agreement: float | None  # fraction of rows with the same argmax (classifier-like outputs)
    mismatched: int          # elements outside atol + rtol * max|ref|
    size: int                # elements compared

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite_diff(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 copies and |cand - ref|, with positions where both agree on NaN/inf set to zero."""
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    same_special = (np.isnan(r) & np.isnan(c)) | (np.isinf(r) & (r == c))
    with np.errstate(invalid="ignore"):
        diff = np.array(np.abs(c - r), dtype=np.float64, ndmin=0)  # 0-d stays an array
    diff[same_special] = 0.0
    diff[np.isnan(diff)] = np.inf
    return r, c, diff


def is_classifier_like(shape: tuple[int, ...], dtype: Any) -> bool:
    """A float (N, C) output with C >= 2 classes: top-1 agreement is meaningful."""
    return np.issubdtype(np.dtype(dtype), np.floating) and len(shape) == 2 and shape[1] >= 2


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Fraction of rows of two (N, C) arrays whose argmax is the same class."""
    if ref.shape[0] == 0:
        return 1.0
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))


def cosine_similarity(ref: np.ndarray, cand: np.ndarray) -> float:
    """Cosine of the angle between the flattened arrays; 1.0 when both are zero, 0.0 when one is."""
    r = np.nan_to_num(ref.astype(np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    c = np.nan_to_num(cand.astype(np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if nr == 0.0 and nc == 0.0:
        return 1.0
    if nr == 0.0 or nc == 0.0:
        return 0.0
    return float(np.dot(r, c) / (nr * nc))


def compare(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> Metrics:
    """All metrics of ``cand`` against ``ref`` (same shape), counting elements outside tolerance."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {cand.shape}")
    if ref.dtype == np.bool_:
        ref, cand = ref.astype(np.int8), cand.astype(np.int8)
    r, _, diff = _finite_diff(ref, cand)
    size = int(diff.size)
    if size == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, 1.0, None, 0, 0)
    abs_r = np.abs(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0))
    max_abs = float(diff.max())
    peak = float(abs_r.max())
    max_rel = float((diff / np.maximum(abs_r, REL_FLOOR)).max())
    peak_rel = 0.0 if max_abs == 0.0 else (float("inf") if peak == 0.0 else max_abs / peak)
    mismatched = int(np.count_nonzero(diff > atol + rtol * peak))
    top1 = top1_agreement(ref, cand) if is_classifier_like(ref.shape, ref.dtype) else None
    return Metrics(max_abs=max_abs, max_rel=max_rel, peak_rel=peak_rel, mean_abs=float(diff.mean()),
                   cosine=cosine_similarity(ref, cand), top1_agreement=top1,
                   mismatched=mismatched, size=size)


def abs_errors(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Flattened float64 |cand - ref| (NaN/inf agreement counted as zero), for the histogram."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.dtype == np.bool_:
        ref, cand = ref.astype(np.int8), cand.astype(np.int8)
    return _finite_diff(ref, cand)[2].ravel()


UNIT_ROUNDOFF: dict[str, float] = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
"""Half the spacing of numbers near 1: the relative error of one rounding in the dtype."""
REGION_FLOOR, REGION_SLACK = 1 / 16, 8.0
"""A fold's region: values under this fraction of the peak are judged at that magnitude; the
folded error may be twice the original's plus this many unit roundoffs. Measured on the six
digits models cast to float16 and bfloat16 (``tests/test_fold_precision.py``): their folds
reach at most 0.65 of that limit; the hostile float16 case (a variance-0 BN folded ahead of a
Relu) 1.7."""
OUTPUT_SLACK = 2.0
"""A model output: the folded error may be twice the original's plus this many unit roundoffs
of the peak. The digits models in float16 reach at most 0.87 of that limit, the hostile case 2.6."""


@dataclass(frozen=True)
class PrecisionCheck:
    """Both low-precision models' error against a wider truth (float32 for float16/bfloat16),
    and the most the folded error may be. A fold exact in real arithmetic can still cost digits
    in float16 where folded terms cancel (a large scale folded into a weight moves the mean
    subtraction after the amplification), and a peak-relative tolerance of 1% hides that."""

    measure: str      # what ``original``/``folded`` are
    original: float
    folded: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.folded <= self.limit

    def describe(self) -> str:
        return (f"{self.measure} vs the float32 truth: folded {self.folded:.3g}, original "
                f"{self.original:.3g}, limit {self.limit:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def scaled_error(x: np.ndarray, truth: np.ndarray, floor: float) -> float:
    """max |x - truth| / (|truth| + floor), NaN/inf agreement counted as zero."""
    t = np.asarray(truth, dtype=np.float64)
    diff = abs_errors(t, np.asarray(x, dtype=np.float64))
    if diff.size == 0:
        return 0.0
    scale = np.abs(np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)).ravel() + floor
    return float(np.max(diff / scale))


def _low_precision(original: np.ndarray, folded: np.ndarray,
                   truth: np.ndarray) -> tuple[float, np.ndarray, float] | None:
    """(unit roundoff, truth in float64, peak) for comparable float16/bfloat16 outputs."""
    u = UNIT_ROUNDOFF.get(dtype_name(original.dtype))
    if u is None or not np.shape(original) == np.shape(folded) == np.shape(truth):
        return None
    t = np.asarray(truth, dtype=np.float64)
    peak = float(np.max(np.abs(t[np.isfinite(t)]), initial=0.0))
    return None if peak == 0.0 else (u, t, peak)


def region_precision(original: np.ndarray, folded: np.ndarray,
                     truth: np.ndarray) -> PrecisionCheck | None:
    """A fold region's precision, each element's error scaled by its own magnitude (floored at
    ``REGION_FLOOR`` of the peak): a fold that costs digits where the values are small shows
    here even when downstream (a Relu keeping only them) is not in the region. None for other
    dtypes, shapes that disagree, or an all-zero truth."""
    found = _low_precision(original, folded, truth)
    if found is None:
        return None
    u, t, peak = found
    floor = REGION_FLOOR * peak
    r_o, r_f = scaled_error(original, t, floor), scaled_error(folded, t, floor)
    return PrecisionCheck("scaled error", r_o, r_f, 2 * r_o + REGION_SLACK * u)


def output_precision(original: np.ndarray, folded: np.ndarray,
                     truth: np.ndarray) -> PrecisionCheck | None:
    """A model output's precision: max error relative to the truth's peak, for both models."""
    found = _low_precision(original, folded, truth)
    if found is None:
        return None
    u, t, peak = found
    e_o = float(abs_errors(t, np.asarray(original, np.float64)).max(initial=0.0)) / peak
    e_f = float(abs_errors(t, np.asarray(folded, np.float64)).max(initial=0.0)) / peak
    return PrecisionCheck("max error / peak", e_o, e_f, 2 * e_o + OUTPUT_SLACK * u)
