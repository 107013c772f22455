"""Gemm and MatMul absorbing an affine map (s, t) over their columns or their inner axis.

Output side: the map must vary only along the output's last axis (N); B's columns are
scaled and t joins the bias: Gemm's C, a MatMul's following bias Add, a 2-D MatMul turned
Gemm, or (higher rank) an Add written after the MatMul. Input side: the map must vary only
along A's inner axis (K); B's rows are scaled and t @ B joins the bias the same way.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import onnx

from bnfold.folding.bn import Refusal, label
from bnfold.folding import math as fm
from bnfold.folding.math import ElementAffine
from bnfold.folding.report import Reason
from bnfold.folding.rewrite import cast_exact
from bnfold.folding.rules.common import c_vector, elem_type, gemm_c, weight
from bnfold.folding.rules.edit import Edit
from bnfold.folding.rules.validate import linear_k
from bnfold.graph.index import GraphIndex, attr

BiasHome = tuple[onnx.NodeProto, int]  # a bias Add right after a MatMul, its constant's index


def _along(node: onnx.NodeProto, emap: ElementAffine, axis: int, role: str,
           ) -> tuple[np.ndarray, np.ndarray] | Refusal:
    found = emap.along(axis)
    if found is None:
        return Refusal(Reason.CHANNEL_MISMATCH,
                       f"the map over {label(node)}'s {role} {list(emap.shape)} varies along "
                       f"axes other than axis {axis}")
    return found


def _b(g: GraphIndex, node: onnx.NodeProto) -> np.ndarray | Refusal:
    b = weight(g, node, 1, "B")
    if isinstance(b, Refusal):
        return b
    if b.ndim != 2:
        return Refusal(Reason.CHANNEL_MISMATCH if node.op_type == "MatMul"
                       else Reason.UNSUPPORTED_NEIGHBOUR, f"{label(node)} B has rank {b.ndim}")
    return b


def _bf16_gemm(g: GraphIndex, dtype: int) -> Refusal | None:
    if dtype == onnx.TensorProto.BFLOAT16 and g.opset < 13:
        return Refusal(Reason.UNSUPPORTED_DTYPE, "bfloat16 Gemm needs opset 13")
    return None


def _bias_edits(g: GraphIndex, node: onnx.NodeProto, b_new: np.ndarray, bias: np.ndarray,
                rank: int, home: BiasHome | None, may_insert: bool,
                notes: list[str]) -> list[Edit] | Refusal:
    """Where a MatMul's folded bias goes: its bias Add, a Gemm (2-D), or a new Add."""
    dtype = elem_type(b_new)
    edit = Edit(node, consts=[(1, b_new, node.input[1])])
    if home is not None:
        add, index = home
        value = cast_exact(bias, dtype, f"{label(add)} bias", notes)
        return [edit, Edit(add, consts=[(index, value, add.input[index])])]
    if rank == 2 and g.rank(node.input[0]) == 2:  # inferred, not guessed: Gemm needs rank 2
        refusal = _bf16_gemm(g, dtype)
        if refusal:
            return refusal
        edit.op_type, edit.attrs = "Gemm", {}
        edit.consts.append((2, cast_exact(bias, dtype, f"{label(node)} C", notes),
                            f"{node.name or node.output[0]}_C"))
        return [edit]
    if np.any(bias != 0):
        if not may_insert:
            return Refusal(Reason.UNSUPPORTED_NEIGHBOUR,
                           f"{label(node)} (rank {rank}) has no bias input; a constant Add is "
                           "not folded into it only to be written after it again")
        edit.bias_add = cast_exact(bias, dtype, f"{label(node)} bias", notes)
    return [edit]


def out_edit(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, notes: list[str],
             home: BiasHome | None = None, may_insert: bool = True) -> list[Edit] | Refusal:
    """The edits that make a Gemm/MatMul compute s * y + t per output column."""
    rank = len(emap.shape)
    if node.op_type == "Gemm" and rank != 2 or rank < 2:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} output has rank {rank}")
    b = _b(g, node)
    if isinstance(b, Refusal):
        return b
    if node.op_type == "MatMul" and g.rank(node.input[0]) not in (None, rank):
        return Refusal(Reason.CHANNEL_MISMATCH, f"MatMul ranks A={g.rank(node.input[0])}, "
                                                f"B={b.ndim}: its output is broadcast")
    st = _along(node, emap, rank - 1, "output")
    if isinstance(st, Refusal):
        return st
    s, t = st
    trans_b = int(attr(node, "transB", 0)) if node.op_type == "Gemm" else 0
    wrong = linear_k(g, node, b, trans_b)
    if wrong:
        return wrong
    n = b.shape[0] if trans_b else b.shape[1]
    if n != s.shape[0]:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} has N={n}, BN has {s.shape[0]}")
    dtype = elem_type(b)
    scaled = partial(fm.product, b, np.asarray(s[:, None] if trans_b else s[None, :],
                                               dtype=np.float64))
    b_new = cast_exact(scaled(b.dtype), dtype, f"{label(node)} B", notes, scaled)
    if node.op_type == "MatMul":
        return _bias_edits(g, node, b_new, t, rank, home, may_insert, notes)
    c = gemm_c(g, node, n)
    if isinstance(c, Refusal):
        return c
    c_new = cast_exact(c_vector(c * s[None, :] + t[None, :]), dtype, f"{label(node)} C", notes)
    return [Edit(node, consts=[(1, b_new, node.input[1]),
                               (2, c_new, f"{node.name or node.output[0]}_C")],
                 attrs={"beta": 1.0})]


def in_edit(g: GraphIndex, node: onnx.NodeProto, emap: ElementAffine, notes: list[str],
            may_insert: bool = True) -> list[Edit] | Refusal:
    """The edits that make a Gemm/MatMul read x instead of s * x + t along its inner axis."""
    is_gemm = node.op_type == "Gemm"
    rank = len(emap.shape)
    if is_gemm and rank != 2 or rank < 2:
        need = "a 2-D input" if is_gemm else "rank 2 or more"
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} input rank {rank}; needs {need}")
    axis = 0 if is_gemm and attr(node, "transA", 0) else rank - 1
    st = _along(node, emap, axis, "input")
    if isinstance(st, Refusal):
        if is_gemm and axis == 0:
            return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} has transA=1: BN channels "
                                                    f"become its rows; {st.detail}")
        return st
    s, t = st
    b = _b(g, node)
    if isinstance(b, Refusal):
        return b
    trans_b = int(attr(node, "transB", 0)) if is_gemm else 0
    wrong = linear_k(g, node, b, trans_b)
    if wrong:
        return wrong
    b_eff = b.astype(np.float64).T if trans_b else b.astype(np.float64)   # (K, N)
    if b_eff.shape[0] != s.shape[0]:
        return Refusal(Reason.CHANNEL_MISMATCH, f"{label(node)} reads K={b_eff.shape[0]}, "
                                                f"BN has {s.shape[0]}")
    dtype = elem_type(b)
    scaled = b.astype(np.float64) * (s[None, :] if trans_b else s[:, None])
    b_new = cast_exact(scaled, dtype, f"{label(node)} B", notes)
    if not is_gemm:
        return _bias_edits(g, node, b_new, t @ b_eff, rank, None, may_insert, notes)
    alpha = float(attr(node, "alpha", 1.0))
    c = gemm_c(g, node, b_eff.shape[1])
    if isinstance(c, Refusal):
        return c
    c_new = cast_exact(c_vector(c + alpha * (t @ b_eff)[None, :]), dtype, f"{label(node)} C",
                       notes)
    return [Edit(node, consts=[(1, b_new, node.input[1]),
                               (2, c_new, f"{node.name or node.output[0]}_C")],
                 attrs={"beta": 1.0})]
