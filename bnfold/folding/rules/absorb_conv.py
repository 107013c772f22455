"""Conv and ConvTranspose absorbing a per-channel affine map (s, t).

Output side (the map follows the layer): weight scaled per output channel, bias -> s*b + t.
Input side (the map precedes a Conv): weight scaled per input channel, bias += W (*) t.
The input side is exact only where the Conv reads no padding, or where the padding it
reads stays zero under the map: no pads, a 1x1 kernel with SAME padding (any stride: a
1x1 window never reaches past the border), or t == 0 for every channel.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import onnx

from bnfold.folding import math as fm
from bnfold.folding.bn import Refusal, label
from bnfold.folding.report import Reason
from bnfold.folding.rewrite import cast_exact
from bnfold.folding.rules.common import elem_type, weight
from bnfold.folding.rules.edit import Edit
from bnfold.folding.rules.validate import conv_weight, vector_of
from bnfold.graph.index import GraphIndex, attr


def _bias(g: GraphIndex, node: onnx.NodeProto, n: int) -> np.ndarray | Refusal:
    """The Conv's bias in float64 (zeros when it has none), checked to be a vector of ``n``."""
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(n)
    b = weight(g, node, 2, "bias")
    if isinstance(b, Refusal):
        return b
    b64 = np.asarray(b, dtype=np.float64)
    return vector_of(node, b64, n, "bias") or b64


def out_edit(g: GraphIndex, node: onnx.NodeProto, s: np.ndarray, t: np.ndarray,
             notes: list[str]) -> Edit | Refusal:
    """The edit that makes ``node`` compute s * conv(x) + t (per output channel)."""
    found = conv_weight(g, node)
    if isinstance(found, Refusal):
        return found
    w, channels = found
    group, _, out_channels = channels
    if out_channels != s.shape[0]:
        return Refusal(Reason.CHANNEL_MISMATCH,
                       f"{label(node)} has {out_channels} output channels, BN has {s.shape[0]}")
    bias = _bias(g, node, out_channels)
    if isinstance(bias, Refusal):
        return bias
    if node.op_type == "Conv":
        scaled = partial(fm.scale_conv_out, w, s)
    else:
        scaled = partial(fm.scale_conv_transpose_out, w, s, group)
    dtype = elem_type(w)
    return Edit(node, consts=[
        (1, cast_exact(scaled(dtype=w.dtype), dtype, f"{label(node)} weight", notes, scaled),
         node.input[1]),
        (2, cast_exact(bias * s + t, dtype, f"{label(node)} bias", notes),
         f"{node.name or node.output[0]}_bias")])


def padding(node: onnx.NodeProto, kernel: tuple[int, ...]) -> str | None:
    """None when the Conv reads no padding; otherwise a description of its padding."""
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if all(k == 1 for k in kernel):  # (ceil(H/s) - 1) * s + 1 <= H: never padded
            return None
        return f"auto_pad={auto_pad} with kernel {list(kernel)}"
    pads = attr(node, "pads", None) or []
    return None if all(p == 0 for p in pads) else f"pads={list(pads)}"


def in_edit(g: GraphIndex, node: onnx.NodeProto, s: np.ndarray, t: np.ndarray,
            notes: list[str]) -> Edit | Refusal:
    """The edit that makes a Conv read x instead of s * x + t (per input channel)."""
    if node.op_type != "Conv":
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
    found = conv_weight(g, node)
    if isinstance(found, Refusal):
        return found
    w, channels = found
    group, c_in, _ = channels
    if c_in != s.shape[0]:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} reads {c_in} "
                                                f"channels, BN has {s.shape[0]}")
    pads = padding(node, tuple(w.shape[2:]))
    if pads is not None and np.any(t != 0):
        nonzero = int(np.count_nonzero(t))
        return Refusal(Reason.PADDED_CONSUMER, f"{label(node)} has {pads} and the BN shift is "
                                               f"nonzero on {nonzero} of {t.shape[0]} channels "
                                               f"(max |t| {np.abs(t).max():.4g})")
    bias = _bias(g, node, w.shape[0])
    if isinstance(bias, Refusal):
        return bias
    dtype = elem_type(w)
    return Edit(node, consts=[
        (1, cast_exact(fm.scale_conv_in(w, s, group, w.dtype), dtype, f"{label(node)} weight",
                       notes, partial(fm.scale_conv_in, w, s, group)), node.input[1]),
        (2, cast_exact(bias + fm.conv_of_constant(w, t, group), dtype, f"{label(node)} bias",
                       notes), f"{node.name or node.output[0]}_bias")])
