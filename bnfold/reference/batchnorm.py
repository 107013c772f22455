"""BatchNorm as it runs in training (Ioffe & Szegedy, 2015), its backward pass, its inference form,
and the running-statistics update under PyTorch's and ONNX's conventions.

Each channel is normalized with the mean and biased variance of its values over every other axis
(N x H x W for images), then scaled by gamma and shifted by beta. Any rank >= 2 works:
(N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W); ``axis`` picks the channel axis (-1 for
channels-last). float64 and float32 are computed in their own dtype, float16 in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bnfold.errors import BnfoldError
from bnfold.folding.math import channel_view
from bnfold.reference.moments import check_eps, compute_dtype, moments


@dataclass(frozen=True)
class BatchNormCache:
    """What ``batch_norm_backward`` needs from the forward pass."""

    x_hat: np.ndarray         # (x - batch mean) / sqrt(batch var + eps), compute dtype
    inv_std: np.ndarray       # 1 / sqrt(batch var + eps), broadcastable onto x
    gamma: np.ndarray         # gamma, broadcastable onto x
    axes: tuple[int, ...]     # the reduced axes: every axis but the channel axis
    out_dtype: np.dtype       # dtype of x, which dx is returned in

    @property
    def count(self) -> int:
        """Values per channel that one batch statistic averages (N x spatial size)."""
        return int(np.prod([self.x_hat.shape[a] for a in self.axes]))


class BatchNormTrainOutput(NamedTuple):
    """``y`` and the batch statistics (per channel, biased variance), plus the backward cache."""

    y: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    cache: BatchNormCache


def _layout(x: np.ndarray, axis: int) -> tuple[int, tuple[int, ...]]:
    """Return (channel axis as a non-negative index, the axes the statistics reduce over)."""
    if x.ndim < 2:
        raise BnfoldError(f"batch norm needs an input of rank >= 2 (N, C, ...), "
                          f"got shape {x.shape}")
    if not -x.ndim <= axis < x.ndim:
        raise BnfoldError(f"channel axis {axis} is out of range for an input of rank {x.ndim}")
    axis %= x.ndim
    return axis, tuple(a for a in range(x.ndim) if a != axis)


def _per_channel(name: str, value: np.ndarray, x: np.ndarray, axis: int,
                 dtype: np.dtype) -> np.ndarray:
    """``value`` as a (C,) vector in ``dtype``, reshaped to broadcast along the channel axis."""
    vec = np.asarray(value, dtype=dtype)
    if vec.shape != (x.shape[axis],):
        raise BnfoldError(f"{name} must have shape ({x.shape[axis]},) (one value per channel "
                          f"on axis {axis}), got {vec.shape}")
    return channel_view(vec, x.ndim, axis)


def batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5, *,
                     axis: int = 1) -> BatchNormTrainOutput:
    """Normalize each channel of ``x`` with its own batch statistics, then scale and shift.

    y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, where mean_B and the biased var_B are
    taken over every axis except ``axis``. Returns y (in x's dtype), mean_B and var_B (per
    channel, compute dtype) and the cache for ``batch_norm_backward``.
    """
    x = np.asarray(x)
    dtype = compute_dtype(x)
    axis, axes = _layout(x, axis)
    g = _per_channel("gamma", gamma, x, axis, dtype)
    b = _per_channel("beta", beta, x, axis, dtype)
    stats = moments(x.astype(dtype, copy=False), axes)
    inv_std = 1.0 / np.sqrt(stats.var + dtype.type(check_eps(eps)))
    x_hat = stats.centered * inv_std
    y = (g * x_hat + b).astype(x.dtype, copy=False)
    cache = BatchNormCache(x_hat=x_hat, inv_std=inv_std, gamma=g, axes=axes, out_dtype=x.dtype)
    return BatchNormTrainOutput(y, stats.mean.reshape(-1), stats.var.reshape(-1), cache)


def batch_norm_backward(dy: np.ndarray,
                        cache: BatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dgamma, dbeta) of a loss given dy = dLoss/dy, in the compact closed form.

    With m values per channel: dbeta = sum(dy), dgamma = sum(dy * x_hat) and
    dx = gamma / (m * sigma) * (m * dy - dbeta - x_hat * dgamma), sigma = sqrt(var_B + eps).
    The batch statistics depend on x, which is where the two subtracted terms come from.
    """
    dy = np.asarray(dy)
    if dy.shape != cache.x_hat.shape:
        raise BnfoldError(f"dy has shape {dy.shape} but the forward input had {cache.x_hat.shape}")
    dy = dy.astype(cache.x_hat.dtype, copy=False)
    dbeta = dy.sum(axis=cache.axes, keepdims=True)
    dgamma = (dy * cache.x_hat).sum(axis=cache.axes, keepdims=True)
    m = cache.count
    dx = (cache.gamma * cache.inv_std / m) * (m * dy - dbeta - cache.x_hat * dgamma)
    return dx.astype(cache.out_dtype, copy=False), dgamma.reshape(-1), dbeta.reshape(-1)


def batch_norm_eval(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                    running_var: np.ndarray, eps: float = 1e-5, *, axis: int = 1) -> np.ndarray:
    """Inference-mode BN: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta.

    The fixed per-channel affine map that ``fold_params`` turns into (scale, shift).
    """
    x = np.asarray(x)
    dtype = compute_dtype(x)
    axis, _ = _layout(x, axis)
    params = [_per_channel(name, value, x, axis, dtype) for name, value in
              (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
               ("running_var", running_var))]
    g, b, mean, var = params
    denom = var + dtype.type(check_eps(eps))
    if not np.all(denom > 0):
        raise BnfoldError("running_var + eps must be > 0 for every channel")
    y = g * (x.astype(dtype, copy=False) - mean) / np.sqrt(denom) + b
    return y.astype(x.dtype, copy=False)


def _check_momentum(momentum: float) -> float:
    value = float(momentum)
    if not 0.0 <= value <= 1.0:
        raise BnfoldError(f"momentum must lie in [0, 1], got {momentum!r}")
    return value


def running_stats_pytorch(running_mean: np.ndarray, running_var: np.ndarray,
                          batch_mean: np.ndarray, batch_var: np.ndarray, count: int,
                          momentum: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's update (nn.BatchNorm*): new = (1 - momentum) * old + momentum * batch.

    ``batch_var`` is the biased variance ``batch_norm_train`` normalizes with; PyTorch blends in
    the unbiased one, batch_var * count / (count - 1), with ``count`` values per channel
    (``BatchNormCache.count``). Returns (new running mean, new running var).
    """
    m = _check_momentum(momentum)
    if count < 2:
        raise BnfoldError(f"the unbiased variance needs at least 2 values per channel, got {count}")
    unbiased = np.asarray(batch_var) * (count / (count - 1))
    return ((1.0 - m) * np.asarray(running_mean) + m * np.asarray(batch_mean),
            (1.0 - m) * np.asarray(running_var) + m * unbiased)


def running_stats_onnx(running_mean: np.ndarray, running_var: np.ndarray,
                       batch_mean: np.ndarray, batch_var: np.ndarray,
                       momentum: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """ONNX's update (BatchNormalization, training_mode=1): new = m * old + (1 - m) * batch.

    Here momentum weighs the old value (ONNX 0.9 is PyTorch 0.1), and the variance blended in is
    the biased (population) batch variance, as the spec states. Returns (new mean, new var).
    """
    m = _check_momentum(momentum)
    return (m * np.asarray(running_mean) + (1.0 - m) * np.asarray(batch_mean),
            m * np.asarray(running_var) + (1.0 - m) * np.asarray(batch_var))
