"""BN folded into the layer after it: an unpadded Conv, a Gemm or a MatMul reading its output.

Exact only where every input value passes through the affine map: a padded Conv would
see zeros at the border where the BN would have produced ``shift``, so it is refused.
"""
from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import math as fm
from bnfold.fold.bn import BnAffine, Refusal, label
from bnfold.fold.report import Reason
from bnfold.fold.rewrite import Rewriter, cast_exact, set_attr
from bnfold.fold.rules.common import (DEFAULT_DOMAINS, c_vector, declared_shapes_agree,
                                      elem_type, gemm_c, weight)
from bnfold.fold.rules.validate import conv_channels, linear_k, vector_of
from bnfold.graph import GraphIndex, attr

OPS = ("Conv", "Gemm", "MatMul")


def fold_forward(g: GraphIndex, bn: BnAffine, rw: Rewriter, notes: list[str]) -> str | Refusal:
    """Fold ``bn`` into its only consumer; return the consumer's label or why not."""
    readers = g.consumers(bn.y)
    if len(readers) != 1:
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
    node = readers[0]
    if node.op_type not in OPS or node.domain not in DEFAULT_DOMAINS:
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
    refusal = declared_shapes_agree(g, bn.node, node)
    if refusal:
        return refusal
    if g.is_graph_output(bn.y):
        return Refusal(Reason.CONSUMER_NOT_EXCLUSIVE, f"{bn.y!r} is a graph output")
    if node.input[0] != bn.y or bn.y in node.input[1:]:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"BN output is not only the data input "
                                                      f"of {label(node)}")
    if node.op_type == "Conv":
        result = _into_conv(g, bn, node, rw, notes)
    else:
        result = _into_linear(g, bn, node, rw, notes)
    if isinstance(result, Refusal):
        return result
    node.input[0] = bn.x
    rw.drop_value_info(bn.y)  # the BN output no longer exists
    rw.remove_node(bn.node)
    return label(node)


def _unpadded(g: GraphIndex, node: onnx.NodeProto, kernel: tuple[int, ...]) -> str | None:
    """None when the Conv reads no padding; otherwise a description of its padding."""
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        strides = attr(node, "strides", None) or [1] * len(kernel)
        if all(k == 1 for k in kernel) and all(s == 1 for s in strides):
            return None
        return f"auto_pad={auto_pad}"
    pads = attr(node, "pads", None) or []
    return None if all(p == 0 for p in pads) else f"pads={list(pads)}"


def _into_conv(g: GraphIndex, bn: BnAffine, node: onnx.NodeProto, rw: Rewriter,
               notes: list[str]) -> None | Refusal:
    w = weight(g, node, 1, "weight")
    if isinstance(w, Refusal):
        return w
    channels = conv_channels(g, node, w)
    if isinstance(channels, Refusal):
        return channels
    group, c_in, _ = channels
    if c_in != bn.channels:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} reads {c_in} "
                                                f"channels, BN has {bn.channels}")
    padding = _unpadded(g, node, tuple(w.shape[2:]))
    if padding is not None:
        return Refusal(Reason.PADDED_CONSUMER, f"{label(node)} has {padding}")
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        b = weight(g, node, 2, "bias")
        if isinstance(b, Refusal):
            return b
        bias = np.asarray(b, dtype=np.float64)
        wrong = vector_of(node, bias, w.shape[0], "bias")
        if wrong:
            return wrong
    t = elem_type(w)
    w_new = cast_exact(fm.scale_conv_in(w, bn.scale, group), t, f"{label(node)} weight", notes)
    b_new = cast_exact(bias + fm.conv_of_constant(w, bn.shift, group), t,
                       f"{label(node)} bias", notes)
    rw.set_const_input(g, node, 1, w_new, node.input[1])
    rw.set_const_input(g, node, 2, b_new, f"{node.name or node.output[0]}_bias")
    return None


def _into_linear(g: GraphIndex, bn: BnAffine, node: onnx.NodeProto, rw: Rewriter,
                 notes: list[str]) -> None | Refusal:
    """y = (s*x + t) @ B  ==  x @ (diag(s) B) + t @ B, written as one Gemm."""
    is_gemm = node.op_type == "Gemm"
    if is_gemm and attr(node, "transA", 0):
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} has transA=1: BN channels "
                                                "become its rows")
    if g.rank(bn.y) != 2:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} input rank {g.rank(bn.y)}; "
                                                "needs a 2-D input")
    b = weight(g, node, 1, "B")
    if isinstance(b, Refusal):
        return b
    trans_b = int(attr(node, "transB", 0)) if is_gemm else 0
    if b.ndim != 2:
        return Refusal(Reason.CHANNEL_MISMATCH, f"B has rank {b.ndim}")
    wrong = linear_k(g, node, b, trans_b)
    if wrong:
        return wrong
    b_eff = b.astype(np.float64).T if trans_b else b.astype(np.float64)   # (K, N)
    if b_eff.shape[0] != bn.channels:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} reads K={b_eff.shape[0]}, "
                                                f"BN has {bn.channels}")
    t = elem_type(b)
    if not is_gemm and t == onnx.TensorProto.BFLOAT16 and g.opset < 13:
        return Refusal(Reason.UNSUPPORTED_DTYPE, "bfloat16 Gemm needs opset 13")
    alpha = float(attr(node, "alpha", 1.0)) if is_gemm else 1.0
    n = b_eff.shape[1]
    c = gemm_c(g, node, n) if is_gemm else np.zeros((1, n))
    if isinstance(c, Refusal):
        return c
    c = c + alpha * (bn.shift @ b_eff)[None, :]
    scaled = b.astype(np.float64) * (bn.scale[None, :] if trans_b else bn.scale[:, None])
    b_new = cast_exact(scaled, t, f"{label(node)} B", notes)
    c_new = cast_exact(c_vector(c), t, f"{label(node)} C", notes)
    rw.set_const_input(g, node, 1, b_new, node.input[1])
    if not is_gemm:
        node.op_type = "Gemm"
    rw.set_const_input(g, node, 2, c_new, f"{node.name or node.output[0]}_C")
    set_attr(node, "beta", 1.0)
    return None
