"""Per-channel statistics of BN inputs, merged across batches in float64.

Three estimators of a BN's running statistics from a stream of batches:

* ``pooled`` (default): the mean and variance of every value seen, merged batch by batch with
  Chan et al.'s parallel update (exact, stable, independent of how the data is batched);
* ``cumulative``: PyTorch's ``update_bn`` (``momentum=None``): the equal-weight average of
  each batch's mean and each batch's variance;
* ``momentum``: the exponential moving average a BN keeps in training, started from the
  model's old statistics (PyTorch convention: ``new = (1 - m) * old + m * batch``; ONNX
  convention: ``new = m * old + (1 - m) * batch``).

The variance written is unbiased under the PyTorch convention (what ``nn.BatchNorm*`` stores)
and biased under the ONNX convention (what the spec's training mode stores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnfold.errors import BnfoldError
from bnfold.reference.batchnorm import running_stats_onnx, running_stats_pytorch

CONVENTIONS = ("pytorch", "onnx")
MODES = ("pooled", "cumulative", "momentum")


@dataclass(frozen=True)
class ChannelMoments:
    """Count, mean and sum of squared deviations (M2) per channel, float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of_batch(cls, x: np.ndarray, axis: int = 1) -> ChannelMoments:
        """Moments of ``x`` per channel on ``axis`` over every other axis (two-pass)."""
        x64 = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0).reshape(x.shape[axis], -1)
        mean = x64.mean(axis=1)
        centered = x64 - mean[:, None]
        return cls(int(x64.shape[1]), mean, np.einsum("ij,ij->i", centered, centered))

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        """Chan, Golub & LeVeque's pairwise update: exact for any split of the data."""
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return ChannelMoments(n, mean, m2)

    def var(self, unbiased: bool) -> np.ndarray:
        if unbiased and self.count < 2:
            raise BnfoldError(f"an unbiased variance needs at least 2 values per channel, got "
                              f"{self.count}")
        return self.m2 / (self.count - 1 if unbiased else self.count)


class Estimator:
    """Accumulates one BN's batches into new running statistics (see the module docstring)."""

    def __init__(self, mode: str, convention: str, old_mean: np.ndarray, old_var: np.ndarray,
                 momentum: float | None = None) -> None:
        if mode not in MODES:
            raise BnfoldError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if convention not in CONVENTIONS:
            raise BnfoldError(f"unknown convention {convention!r}; choose from "
                              f"{', '.join(CONVENTIONS)}")
        if mode == "momentum" and (momentum is None or not 0.0 <= momentum <= 1.0):
            raise BnfoldError(f"momentum must lie in [0, 1], got {momentum!r}")
        self.mode, self.convention, self.momentum = mode, convention, momentum
        self.unbiased = convention == "pytorch"
        self.pooled = ChannelMoments(0, np.zeros_like(old_mean), np.zeros_like(old_mean))
        self.batches = 0
        self.mean = np.asarray(old_mean, dtype=np.float64).copy()
        self.var = np.asarray(old_var, dtype=np.float64).copy()

    def add(self, batch: ChannelMoments) -> None:
        self.pooled = self.pooled.merge(batch)
        self.batches += 1
        if self.mode == "pooled":
            return
        b_mean, b_var = batch.mean, batch.var(unbiased=self.unbiased)
        if self.mode == "cumulative":
            f = 1.0 / self.batches
            self.mean += f * (b_mean - self.mean)
            self.var += f * (b_var - self.var)
        elif self.convention == "pytorch":
            self.mean, self.var = running_stats_pytorch(self.mean, self.var, batch.mean,
                                                        batch.var(unbiased=False), batch.count,
                                                        self.momentum)
        else:
            self.mean, self.var = running_stats_onnx(self.mean, self.var, batch.mean,
                                                     batch.var(unbiased=False), self.momentum)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(new running mean, new running var), float64."""
        if self.batches == 0:
            raise BnfoldError("no batch reached this BN")
        if self.mode == "pooled":
            return self.pooled.mean.copy(), self.pooled.var(unbiased=self.unbiased)
        return self.mean.copy(), self.var.copy()
