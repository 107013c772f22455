"""Per-group mean and biased variance, computed stably, and the dtype they are computed in.

Shared by batch norm (one group per channel) and layer norm (one group per sample). The
variance is two-pass, mean((x - mean)^2), never E[x^2] - E[x]^2, which cancels
catastrophically when the mean is large next to the spread.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnfold.errors import BnfoldError

# Input dtype -> dtype the statistics are computed in. float16 is computed in float32,
# as the ONNX spec asks ("uses float to avoid overflow for float16 inputs").
COMPUTE_DTYPES: dict[np.dtype, np.dtype] = {
    np.dtype(np.float64): np.dtype(np.float64),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float32),
}


def compute_dtype(x: np.ndarray) -> np.dtype:
    """The dtype to compute ``x``'s statistics in; a BnfoldError for non-float input."""
    dtype = np.asarray(x).dtype
    if dtype not in COMPUTE_DTYPES:
        raise BnfoldError(f"reference norms take float64, float32 or float16 arrays, got {dtype}; "
                          "cast the input with .astype(np.float32) first")
    return COMPUTE_DTYPES[dtype]


def check_eps(eps: float) -> float:
    """Return ``eps`` as a float, refusing negative or non-finite values."""
    value = float(eps)
    if not np.isfinite(value) or value < 0:
        raise BnfoldError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


class Moments(NamedTuple):
    """Statistics over the reduced axes, kept as size-1 axes so they broadcast back onto x."""

    mean: np.ndarray
    var: np.ndarray       # biased (population) variance: divides by the group size
    centered: np.ndarray  # x - mean, reused by the caller to normalize


def moments(x: np.ndarray, axes: tuple[int, ...]) -> Moments:
    """Mean and biased variance of ``x`` over ``axes`` (two-pass), and ``x`` centered."""
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    return Moments(mean, (centered * centered).mean(axis=axes, keepdims=True), centered)
