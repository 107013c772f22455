"""What every rule checks: declared shapes that agree, constant float weights, Gemm's C."""
from __future__ import annotations

import numpy as np
import onnx

from bnfold.folding.bn import FLOAT_TYPES, Refusal, label
from bnfold.folding.report import Reason
from bnfold.graph.index import GraphIndex, attr

DEFAULT_DOMAINS = ("", "ai.onnx")


def declared_shapes_agree(g: GraphIndex, *nodes: onnx.NodeProto | None) -> Refusal | None:
    """None unless a tensor that one of ``nodes`` reads or writes is declared with a shape or
    dtype that shape inference contradicts: a fold must not rest on a model that lies."""
    for node in nodes:
        for name in (list(node.input) + list(node.output)) if node is not None else []:
            problem = g.declared_mismatch(name) if name else ""
            if problem:
                return Refusal(Reason.SHAPE_MISMATCH, problem)
    return None


def weight(g: GraphIndex, node: onnx.NodeProto, index: int, role: str) -> np.ndarray | Refusal:
    """A float constant input of ``node``, or the refusal that explains why not."""
    if index >= len(node.input) or not node.input[index]:
        return Refusal(Reason.WEIGHT_NOT_CONSTANT, f"{label(node)} has no {role}")
    value = g.const(node.input[index])
    if value is None:
        why = g.why_not_const(node.input[index])
        return Refusal(Reason.WEIGHT_NOT_CONSTANT, f"{role} {node.input[index]!r} of "
                                                    f"{label(node)} is not a constant"
                                                    + (f": {why}" if why else ""))
    if onnx.helper.np_dtype_to_tensor_dtype(value.dtype) not in FLOAT_TYPES:
        return Refusal(Reason.UNSUPPORTED_DTYPE, f"{role} dtype {value.dtype}")
    if not np.isfinite(value).all():
        return Refusal(Reason.NON_FINITE_PARAMS,
                       f"{role} {node.input[index]!r} of {label(node)} holds NaN or infinity")
    return value


def elem_type(value: np.ndarray) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)


def gemm_c(g: GraphIndex, node: onnx.NodeProto, n: int) -> np.ndarray | Refusal:
    """Gemm's beta * C broadcast to (rows, N) in float64; rows is 1 unless C varies per row."""
    beta = float(attr(node, "beta", 1.0))
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros((1, n))
    c = weight(g, node, 2, "C")
    if isinstance(c, Refusal):
        return c
    c64 = np.asarray(c, dtype=np.float64)
    if c64.ndim > 2:
        return Refusal(Reason.UNSUPPORTED_NEIGHBOUR, f"C has rank {c64.ndim}")
    c2 = c64.reshape((1,) * (2 - c64.ndim) + c64.shape)
    try:
        return beta * np.broadcast_to(c2, (c2.shape[0], n))
    except ValueError:
        return Refusal(Reason.CHANNEL_MISMATCH, f"C of shape {list(c.shape)} vs N={n}")


def c_vector(c: np.ndarray) -> np.ndarray:
    """A (1, N) bias as a vector; a per-row (M, N) bias as it is."""
    return c.reshape(-1) if c.shape[0] == 1 else c


def per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along axis 1 only, as a float64 vector; else None."""
    if value.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (channels,)).copy()
