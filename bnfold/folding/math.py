"""Float64 fold formulas: BN as a per-channel affine map, and the weight updates it implies.

This is the single place the folding math lives; ``bnfold.reference`` re-exports
``fold_params`` and the rules in ``bnfold.folding.rules`` call the helpers below.
"""
from __future__ import annotations

import numpy as np


def fold_params(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (scale, shift) in float64 with BN_eval(x) == scale * x + shift per channel.

    scale = gamma / sqrt(var + eps); shift = beta - scale * mean.
    """
    g = np.asarray(gamma, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    scale = g / np.sqrt(v + np.float64(eps))
    return scale, b - scale * m


def channel_view(vec: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(vec).reshape(shape)


# result dtypes ``product`` rounds to as it multiplies; 16-bit results need the float64
# products whole (cast_exact counts the values that flush to zero against them)
ROUNDED_AS_MADE = (np.dtype(np.float32), np.dtype(np.float64))


def product(a: np.ndarray, b: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """``a * b`` in float64. With ``dtype`` float32 or float64 each float64 product is rounded
    to it as it is made (numpy's buffered cast): the same bits as ``(a * b).astype(dtype)``,
    in one pass and without a float64 copy of a weight. Other dtypes: the float64 product."""
    if dtype is None or np.dtype(dtype) not in ROUNDED_AS_MADE:
        return np.multiply(a, b, dtype=np.float64)
    out = np.empty(np.broadcast_shapes(np.shape(a), np.shape(b)), dtype)
    with np.errstate(all="ignore"):  # overflow to inf is cast_exact's to report
        np.multiply(a, b, out=out, dtype=np.float64, casting="unsafe")
    return out


def scale_conv_out(w: np.ndarray, scale: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """Conv weight (M, C/g, k...): scale output channel m by scale[m] (``dtype``: ``product``)."""
    return product(w, channel_view(np.asarray(scale, dtype=np.float64), w.ndim, 0), dtype)


def scale_conv_transpose_out(w: np.ndarray, scale: np.ndarray, group: int,
                             dtype: np.dtype | None = None) -> np.ndarray:
    """ConvTranspose weight (C, M/g, k...): output channel g*(M/g)+j lives at [g-block, j]."""
    c_in, m_per_g = w.shape[0], w.shape[1]
    grouped = w.reshape((group, c_in // group, m_per_g) + w.shape[2:])
    s = np.asarray(scale, dtype=np.float64).reshape((group, 1, m_per_g) + (1,) * (w.ndim - 2))
    return product(grouped, s, dtype).reshape(w.shape)


def scale_conv_in(w: np.ndarray, scale: np.ndarray, group: int,
                  dtype: np.dtype | None = None) -> np.ndarray:
    """Conv weight (M, C/g, k...): scale input channel c = g*(C/g)+i of every group's filters
    (``dtype``: ``product``)."""
    m, c_per_g = w.shape[0], w.shape[1]
    grouped = w.reshape((group, m // group, c_per_g) + w.shape[2:])
    s = np.asarray(scale, dtype=np.float64).reshape((group, 1, c_per_g) + (1,) * (w.ndim - 2))
    return product(grouped, s, dtype).reshape(w.shape)


def conv_of_constant(w: np.ndarray, shift: np.ndarray, group: int) -> np.ndarray:
    """Per-output-channel response of an unpadded Conv to a per-input-channel constant map."""
    m, c_per_g = w.shape[0], w.shape[1]
    w64 = w.astype(np.float64).reshape((group, m // group, c_per_g, -1))
    t = shift.astype(np.float64).reshape(group, 1, c_per_g, 1)
    return (w64 * t).sum(axis=(2, 3)).reshape(m)


def embed_kernel(w: np.ndarray, size: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    """Conv weight (M, C/g, k...) zero-padded to (M, C/g, *size), tap 0 at ``offset``: the same
    convolution when the larger kernel's padding exceeds this one's by ``offset`` taps."""
    out = np.zeros(w.shape[:2] + tuple(size), dtype=np.float64)
    window = tuple(slice(o, o + k) for o, k in zip(offset, w.shape[2:]))
    out[(slice(None), slice(None)) + window] = np.asarray(w, dtype=np.float64)
    return out


def identity_kernel(scale: np.ndarray, c_per_group: int, size: tuple[int, ...],
                    centre: tuple[int, ...]) -> np.ndarray:
    """The kernel of y[m] = scale[m] * x[m] (as many outputs as inputs, any group count):
    output m reads input m, which is entry m % (C/g) of its group, at the ``centre`` tap."""
    s = np.asarray(scale, dtype=np.float64)
    out = np.zeros((s.shape[0], c_per_group) + tuple(size), dtype=np.float64)
    m = np.arange(s.shape[0])
    out[(m, m % c_per_group) + tuple(np.full_like(m, c) for c in centre)] = s
    return out


class ElementAffine:
    """y = scale * x + shift element by element over a tensor of ``shape`` (float64).

    ``scale`` and ``shift`` broadcast to ``shape`` and are kept small: a BN's map over an
    NCHW tensor is (1, C, 1, 1), and only an op that moves elements (Reshape, Transpose...)
    makes them full size. This is how a BN travels through the ops that commute with it.
    """

    def __init__(self, shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64)
        np.broadcast_shapes(self.scale.shape, self.shift.shape, self.shape)

    @classmethod
    def per_channel(cls, shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray,
                    axis: int = 1) -> "ElementAffine":
        rank = len(shape)
        return cls(shape, channel_view(scale, rank, axis), channel_view(shift, rank, axis))

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """Scale and shift as arrays of ``shape`` (copies)."""
        return (np.broadcast_to(self.scale, self.shape).copy(),
                np.broadcast_to(self.shift, self.shape).copy())

    def along(self, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) vectors over ``axis`` when the map depends on no other axis."""
        out = []
        for arr in (self.scale, self.shift):
            vec = constant_except(arr, len(self.shape), axis)
            if vec is None:
                return None
            out.append(np.broadcast_to(vec, (self.shape[axis],)).copy())
        return out[0], out[1]

    def compact(self) -> "ElementAffine":
        """The same map with scale and shift reduced along every axis they do not vary on."""
        return ElementAffine(self.shape, _squeeze_constant(self.scale),
                             _squeeze_constant(self.shift))


def constant_except(arr: np.ndarray, rank: int, axis: int) -> np.ndarray | None:
    """``arr`` (broadcasting to a rank-``rank`` tensor) as a vector over ``axis`` (length 1 or
    the axis size) when it is constant along every other axis; else None."""
    a = np.asarray(arr).reshape((1,) * (rank - np.ndim(arr)) + np.shape(arr))
    for i in range(rank):
        if i != axis and a.shape[i] > 1:
            first = a.take([0], axis=i)
            if not np.array_equal(a, np.broadcast_to(first, a.shape)):
                return None
            a = first
    return a.reshape(-1)


def _squeeze_constant(arr: np.ndarray) -> np.ndarray:
    """Reduce ``arr`` to size 1 along each axis it is constant on (same broadcast result)."""
    a = arr
    for i in range(a.ndim):
        if a.shape[i] > 1:
            first = a.take([0], axis=i)
            if np.array_equal(a, np.broadcast_to(first, a.shape)):
                a = first
    return a
