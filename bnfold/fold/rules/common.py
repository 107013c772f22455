"""What every rule checks: exclusive producer/consumer, per-channel constants, weight dtypes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.fold.bn import FLOAT_TYPES, BnAffine, Refusal, label
from bnfold.fold.report import Reason
from bnfold.graph import GraphIndex, attr

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Producer:
    """The node a BN reads (through an optional per-channel bias Add) and the Add's bias."""

    node: onnx.NodeProto
    add: onnx.NodeProto | None = None
    add_bias: np.ndarray | None = None      # float64, one per channel
    add_const_index: int = 1                 # which Add input holds the constant


def exclusive(g: GraphIndex, tensor: str, reader: onnx.NodeProto) -> Refusal | None:
    """None when ``reader`` is the only reader of ``tensor`` and it is no graph output."""
    if g.is_graph_output(tensor):
        return Refusal(Reason.PRODUCER_OUTPUT_IS_GRAPH_OUTPUT, f"{tensor!r} is a graph output")
    readers = g.consumers(tensor)
    if len(readers) != 1 or readers[0] is not reader:
        others = [label(n) for n in readers if n is not reader]
        return Refusal(Reason.PRODUCER_HAS_OTHER_CONSUMERS,
                       f"{tensor!r} is also read by {', '.join(others[:3])}")
    return None


def declared_shapes_agree(g: GraphIndex, *nodes: onnx.NodeProto | None) -> Refusal | None:
    """None unless a tensor that one of ``nodes`` reads or writes is declared with a shape or
    dtype that shape inference contradicts: a fold must not rest on a model that lies."""
    for node in nodes:
        for name in (list(node.input) + list(node.output)) if node is not None else []:
            problem = g.declared_mismatch(name) if name else ""
            if problem:
                return Refusal(Reason.SHAPE_MISMATCH, problem)
    return None


def per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """A constant that broadcasts along axis 1 only, as a float64 vector; else None."""
    if value.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (channels,)).copy()


def trace_producer(g: GraphIndex, bn: BnAffine, ops: tuple[str, ...],
                   rank_of: dict[str, int]) -> Producer | Refusal:
    """Find the foldable node feeding ``bn``, possibly through Add(per-channel constant)."""
    node = g.producer(bn.x)
    if node is None or node.domain not in DEFAULT_DOMAINS:
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
    if node.op_type in ops:
        refusal = declared_shapes_agree(g, bn.node, node) or exclusive(g, bn.x, bn.node)
        return refusal or Producer(node)
    if node.op_type != "Add" or len(node.input) != 2:
        return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)
    for const_i in (1, 0):
        inner = g.producer(node.input[1 - const_i])
        if inner is None or inner.op_type not in ops or inner.domain not in DEFAULT_DOMAINS:
            continue
        refusal = declared_shapes_agree(g, bn.node, node, inner)
        if refusal:
            return refusal
        value = g.const(node.input[const_i])
        if value is None:
            return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, "Add operand is not a constant",
                           specific=False)
        rank = _output_rank(g, inner, rank_of)
        if rank is None or value.ndim > rank or g.rank(bn.x) not in (None, rank):
            return Refusal(Reason.CHANNEL_MISMATCH,
                           f"Add of a constant of shape {list(value.shape)} to a rank-{rank} "
                           "output may change the rank: channel axis unknown")
        bias = per_channel(value, rank, bn.channels)
        if bias is None:
            return Refusal(Reason.CHANNEL_MISMATCH,
                           f"Add constant of shape {list(value.shape)} is not per-channel")
        refusal = exclusive(g, bn.x, bn.node) or exclusive(g, inner.output[0], node)
        return refusal or Producer(inner, node, bias, const_i)
    return Refusal(Reason.NO_FOLDABLE_NEIGHBOUR, specific=False)


def _output_rank(g: GraphIndex, node: onnx.NodeProto, rank_of: dict[str, int]) -> int | None:
    """Rank of ``node``'s output: inferred, fixed by the op (Gemm), or a conv weight's rank."""
    rank = g.rank(node.output[0]) or rank_of.get(node.op_type)
    if rank is None and node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        shape = g.shape(node.input[1])
        rank = len(shape) if shape else None
    return rank


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
