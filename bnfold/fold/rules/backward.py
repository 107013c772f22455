"""BN folded into the layer before it: Conv, ConvTranspose, Gemm, MatMul (+ bias Add)."""
from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold import math as fm
from bnfold.fold.bn import BnAffine, Refusal, label
from bnfold.fold.report import Reason
from bnfold.fold.rewrite import Rewriter, cast_exact, set_attr
from bnfold.fold.rules.common import (Producer, c_vector, elem_type, gemm_c, trace_producer,
                                      weight)
from bnfold.fold.rules.validate import conv_channels, linear_k, vector_of
from bnfold.graph import GraphIndex, attr

OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def fold_backward(g: GraphIndex, bn: BnAffine, rw: Rewriter, notes: list[str]) -> str | Refusal:
    """Fold ``bn`` into its producer; return the producer's label or why not."""
    rank_of = {"Gemm": 2}
    found = trace_producer(g, bn, OPS, rank_of)
    if isinstance(found, Refusal):
        return found
    op = found.node.op_type
    if op in ("Conv", "ConvTranspose"):
        return _fold_conv(g, bn, found, rw, notes)
    if op == "Gemm":
        return _fold_gemm(g, bn, found, rw, notes)
    return _fold_matmul(g, bn, found, rw, notes)


def _finish(bn: BnAffine, p: Producer, rw: Rewriter, *, keep_add: bool = False) -> str:
    """Route the folded output to the BN's output name; drop the BN and a merged bias Add."""
    if p.add is not None:
        rw.drop_value_info(p.add.output[0])
        if keep_add:
            p.add.output[0] = bn.y
        else:
            rw.drop_value_info(p.node.output[0])
            rw.remove_node(p.add)
            p.node.output[0] = bn.y
    else:
        rw.drop_value_info(p.node.output[0])
        p.node.output[0] = bn.y
    rw.remove_node(bn.node)
    return label(p.node)


def _bias_in(g: GraphIndex, node: onnx.NodeProto, index: int, n: int) -> np.ndarray | Refusal:
    if index < len(node.input) and node.input[index]:
        b = weight(g, node, index, "bias")
        if isinstance(b, Refusal):
            return b
        return np.asarray(b, dtype=np.float64)
    return np.zeros(n)


def _fold_conv(g: GraphIndex, bn: BnAffine, p: Producer, rw: Rewriter,
               notes: list[str]) -> str | Refusal:
    node = p.node
    w = weight(g, node, 1, "weight")
    if isinstance(w, Refusal):
        return w
    channels = conv_channels(g, node, w)
    if isinstance(channels, Refusal):
        return channels
    group, _, out_channels = channels
    if out_channels != bn.channels:
        return Refusal(Reason.CHANNEL_MISMATCH,
                       f"{label(node)} has {out_channels} output channels, BN has {bn.channels}")
    bias = _bias_in(g, node, 2, bn.channels)
    if isinstance(bias, Refusal):
        return bias
    wrong = vector_of(node, bias, out_channels, "bias")
    if wrong:
        return wrong
    if p.add_bias is not None:
        bias = bias + p.add_bias
    if node.op_type == "Conv":
        w64 = fm.scale_conv_out(w, bn.scale)
    else:
        w64 = fm.scale_conv_transpose_out(w, bn.scale, group)
    t = elem_type(w)
    w_new = cast_exact(w64, t, f"{label(node)} weight", notes)
    b_new = cast_exact(bias * bn.scale + bn.shift, t, f"{label(node)} bias", notes)
    rw.set_const_input(g, node, 1, w_new, node.input[1])
    rw.set_const_input(g, node, 2, b_new, f"{node.name or node.output[0]}_bias")
    return _finish(bn, p, rw)


def _gemm_b_scaled(b: np.ndarray, scale: np.ndarray, trans_b: int, axis_is_n: bool) -> np.ndarray:
    """Scale Gemm's B along N (output columns) or K (input rows), honouring transB."""
    b64 = b.astype(np.float64)
    along_rows = (axis_is_n and trans_b) or (not axis_is_n and not trans_b)
    return b64 * (scale[:, None] if along_rows else scale[None, :])


def _fold_gemm(g: GraphIndex, bn: BnAffine, p: Producer, rw: Rewriter,
               notes: list[str]) -> str | Refusal:
    node = p.node
    b = weight(g, node, 1, "B")
    if isinstance(b, Refusal):
        return b
    if b.ndim != 2:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"{label(node)} B has rank {b.ndim}")
    trans_b = int(attr(node, "transB", 0))
    wrong = linear_k(g, node, b, trans_b)
    if wrong:
        return wrong
    n = b.shape[0] if trans_b else b.shape[1]
    if n != bn.channels:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} has N={n}, BN has {bn.channels}")
    c = gemm_c(g, node, n)
    if isinstance(c, Refusal):
        return c
    if p.add_bias is not None:
        c = c + p.add_bias[None, :]
    t = elem_type(b)
    b_new = cast_exact(_gemm_b_scaled(b, bn.scale, trans_b, True), t, f"{label(node)} B", notes)
    c_new = cast_exact(c_vector(c * bn.scale[None, :] + bn.shift[None, :]), t,
                       f"{label(node)} C", notes)
    rw.set_const_input(g, node, 1, b_new, node.input[1])
    rw.set_const_input(g, node, 2, c_new, f"{node.name or node.output[0]}_C")
    set_attr(node, "beta", 1.0)
    return _finish(bn, p, rw)


def _fold_matmul(g: GraphIndex, bn: BnAffine, p: Producer, rw: Rewriter,
                 notes: list[str]) -> str | Refusal:
    node = p.node
    b = weight(g, node, 1, "B")
    if isinstance(b, Refusal):
        return b
    a_rank, y_rank = g.rank(node.input[0]), g.rank(bn.x)
    if b.ndim != 2 or a_rank != 2 or y_rank not in (None, 2):
        return Refusal(Reason.CHANNEL_MISMATCH,
                       f"MatMul ranks A={a_rank}, B={b.ndim}: BN channel axis 1 is not the "
                       "weight's output columns")
    wrong = linear_k(g, node, b, 0)
    if wrong:
        return wrong
    if b.shape[1] != bn.channels:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} has N={b.shape[1]}, "
                                                f"BN has {bn.channels}")
    t = elem_type(b)
    if t == onnx.TensorProto.BFLOAT16 and g.opset < 13 and p.add is None:
        return Refusal(Reason.UNSUPPORTED_DTYPE, "bfloat16 Gemm needs opset 13")
    b_new = cast_exact(b.astype(np.float64) * bn.scale[None, :], t, f"{label(node)} B", notes)
    bias = p.add_bias if p.add_bias is not None else np.zeros(bn.channels)
    c_new = cast_exact(bias * bn.scale + bn.shift, t, f"{label(node)} bias", notes)
    rw.set_const_input(g, node, 1, b_new, node.input[1])
    if p.add is not None:
        rw.set_const_input(g, p.add, p.add_const_index, c_new, p.add.input[p.add_const_index])
        return _finish(bn, p, rw, keep_add=True)
    node.op_type = "Gemm"
    rw.set_const_input(g, node, 2, c_new, f"{node.name or node.output[0]}_C")
    return _finish(bn, p, rw)
