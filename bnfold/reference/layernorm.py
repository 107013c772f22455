"""Layer normalization, beside batch norm for contrast: which axes each one reduces.

For an (N, C, H, W) input, batch norm normalizes each *channel* over N x H x W, so a sample's
output depends on the rest of the batch and inference needs running statistics. Layer norm
normalizes each *sample* over C x H x W, the same in training and inference, so it has no
running statistics and nothing to fold into a neighbouring layer.
"""
from __future__ import annotations

import numpy as np

from bnfold.errors import BnfoldError
from bnfold.reference.moments import check_eps, compute_dtype, moments


def layer_norm(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
               eps: float = 1e-5, *, axis: int = 1) -> np.ndarray:
    """Normalize each sample over axes ``axis``..rank-1, then scale by gamma and shift by beta.

    Reduces over every axis from ``axis`` on (C x H x W for (N, C, H, W) and axis=1; ONNX
    LayerNormalization's ``axis`` means the same, with default -1), while ``batch_norm_train``
    reduces over every axis *except* the channel axis. gamma and beta, when given, have the
    normalized shape x.shape[axis:] (elementwise affine, as in PyTorch and ONNX).
    """
    x = np.asarray(x)
    dtype = compute_dtype(x)
    if not -x.ndim <= axis < x.ndim:
        raise BnfoldError(f"axis {axis} is out of range for an input of rank {x.ndim}")
    axis %= x.ndim
    stats = moments(x.astype(dtype, copy=False), tuple(range(axis, x.ndim)))
    y = stats.centered / np.sqrt(stats.var + dtype.type(check_eps(eps)))
    for name, value in (("gamma", gamma), ("beta", beta)):
        if value is None:
            continue
        param = np.asarray(value, dtype=dtype)
        if param.shape != x.shape[axis:]:
            raise BnfoldError(f"{name} must have the normalized shape {x.shape[axis:]}, "
                              f"got {param.shape}")
        y = y * param if name == "gamma" else y + param
    return y.astype(x.dtype, copy=False)
