"""Is the neighbour itself a valid node? Its attributes and weight shapes checked before a fold.

ONNX's structural checker does not look at shapes, so a model can load with a grouped Conv
whose channels do not divide by ``group`` or a bias of the wrong length. Folding such a node
would crash in numpy or write a model as broken as the input; it is refused with the numbers.
"""
from __future__ import annotations

import numpy as np
import onnx

from bnfold.folding.bn import Refusal, label
from bnfold.folding.report import Reason
from bnfold.folding.rules.common import weight
from bnfold.graph.index import GraphIndex, attr


def _invalid(node: onnx.NodeProto, detail: str) -> Refusal:
    return Refusal(Reason.INVALID_NEIGHBOUR, f"{label(node)}: {detail}")


def conv_channels(g: GraphIndex, node: onnx.NodeProto,
                  w: np.ndarray) -> tuple[int, int, int] | Refusal:
    """(group, input channels, output channels) of a Conv/ConvTranspose with weight ``w``."""
    group = int(attr(node, "group", 1))
    if group < 1:
        return _invalid(node, f"group={group}")
    if w.ndim < 3:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"{label(node)} weight has rank {w.ndim}")
    if 0 in w.shape:
        return _invalid(node, f"empty weight of shape {list(w.shape)}")
    if w.shape[0] % group:
        role = "output" if node.op_type == "Conv" else "input"
        return _invalid(node, f"weight dim 0 ({role} channels) = {w.shape[0]} is not divisible "
                              f"by group={group}")
    if node.op_type == "Conv":
        c_in, c_out = w.shape[1] * group, w.shape[0]
    else:
        c_in, c_out = w.shape[0], w.shape[1] * group
    x_shape = g.shape(node.input[0])
    if x_shape is not None and len(x_shape) != w.ndim:
        return _invalid(node, f"input rank {len(x_shape)}, weight rank {w.ndim}")
    if x_shape is not None and x_shape[1] is not None and x_shape[1] != c_in:
        return _invalid(node, f"input has {x_shape[1]} channels, weight {list(w.shape)} with "
                              f"group={group} reads {c_in}")
    kernel = attr(node, "kernel_shape", None)
    if kernel is not None and list(kernel) != list(w.shape[2:]):
        return _invalid(node, f"kernel_shape={list(kernel)}, weight {list(w.shape)}")
    return group, c_in, c_out


def vector_of(node: onnx.NodeProto, value: np.ndarray, n: int, role: str) -> Refusal | None:
    """None when ``value`` (a bias) is a vector of ``n`` entries."""
    if value.shape != (n,):
        return _invalid(node, f"{role} has shape {list(value.shape)}, expected [{n}]")
    return None


def linear_k(g: GraphIndex, node: onnx.NodeProto, b: np.ndarray, trans_b: int) -> Refusal | None:
    """None when the data input of a Gemm/MatMul with 2-D ``b`` has a matching K (if known)."""
    a_shape = g.shape(node.input[0])
    if a_shape is None or not a_shape:
        return None
    trans_a = int(attr(node, "transA", 0)) if node.op_type == "Gemm" else 0
    if node.op_type == "Gemm" and len(a_shape) != 2:
        return _invalid(node, f"A has rank {len(a_shape)}; Gemm needs 2")
    k_a = a_shape[-2] if trans_a else a_shape[-1]
    k_b = b.shape[1] if trans_b else b.shape[0]
    if k_a is not None and k_a != k_b:
        return _invalid(node, f"A has K={k_a}, B {list(b.shape)} (transB={trans_b}) has K={k_b}")
    return None


def conv_weight(g: GraphIndex, node: onnx.NodeProto,
                ) -> tuple[np.ndarray, tuple[int, int, int]] | Refusal:
    """A Conv/ConvTranspose's constant weight and its (group, input, output) channels."""
    w = weight(g, node, 1, "weight")
    if isinstance(w, Refusal):
        return w
    channels = conv_channels(g, node, w)
    return channels if isinstance(channels, Refusal) else (w, channels)
