"""Read one BatchNormalization node into a per-channel affine map, or say why it can't be."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.folding.math import fold_params
from bnfold.folding.report import Reason
from bnfold.graph.index import GraphIndex, attr

# The schema's default, a float attribute: float32(1e-5), as ONNX Runtime applies it.
DEFAULT_EPSILON = float(np.float32(1e-5))  # 9.999999747378752e-06, not the double 1e-5
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


@dataclass(frozen=True)
class Refusal:
    """A rule that does not apply, and why; ``specific`` ranks it above generic misses."""

    reason: Reason
    detail: str = ""
    specific: bool = True


@dataclass(frozen=True)
class BnAffine:
    """A BN node seen as y = scale * x + shift along axis 1 (float64, one entry per channel)."""

    node: onnx.NodeProto
    x: str
    y: str
    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


def label(node: onnx.NodeProto) -> str:
    """A stable name for reports; unnamed nodes are named by their first output."""
    return node.name or f"<{node.op_type} -> {node.output[0]}>"


def read_bn(g: GraphIndex, node: onnx.NodeProto) -> BnAffine | Refusal:
    """Check the BN itself (mode, parameters, dtypes) and compute its float64 affine map."""
    if attr(node, "training_mode", 0):
        return Refusal(Reason.TRAINING_MODE, "training_mode=1")
    extra = [o for o in node.output[1:] if o]
    if extra:
        return Refusal(Reason.TRAINING_OUTPUTS, f"extra outputs: {', '.join(extra)}")
    if g.opset < 9 and attr(node, "spatial", 1) == 0:
        return Refusal(Reason.SPATIAL_0, "spatial=0")
    if len(node.input) < 5:
        return Refusal(Reason.BAD_PARAM_SHAPE, f"{len(node.input)} inputs, expected 5")
    x_type = g.dtype(node.input[0])
    if x_type is not None and x_type not in FLOAT_TYPES:
        return Refusal(Reason.UNSUPPORTED_DTYPE,
                       f"input dtype {onnx.TensorProto.DataType.Name(x_type)}")
    params = []
    for role, name in zip(("scale", "bias", "mean", "var"), node.input[1:5]):
        value = g.const(name)
        if value is None and g.why_not_const(name):
            return Refusal(Reason.DYNAMIC_PARAMS, f"{role} {name!r}: {g.why_not_const(name)}")
        if value is None:
            return Refusal(Reason.DYNAMIC_PARAMS, f"{role} {name!r} is computed at run time or a "
                                                  "graph input")
        if value.dtype.kind not in "f" and str(value.dtype) != "bfloat16":
            return Refusal(Reason.UNSUPPORTED_DTYPE, f"{role} dtype {value.dtype}")
        params.append(np.asarray(value, dtype=np.float64))
    eps = float(attr(node, "epsilon", DEFAULT_EPSILON))
    shapes = {p.shape for p in params}
    if len(shapes) != 1 or params[0].ndim != 1:
        return Refusal(Reason.BAD_PARAM_SHAPE, f"parameter shapes {sorted(shapes)}")
    x_shape = g.shape(node.input[0])
    if x_shape is not None and len(x_shape) >= 2 and x_shape[1] not in (None, params[0].shape[0]):
        return Refusal(Reason.BAD_PARAM_SHAPE,
                       f"{params[0].shape[0]} parameters for {x_shape[1]} channels")
    if not np.isfinite(eps) or not all(np.isfinite(p).all() for p in params):
        return Refusal(Reason.NON_FINITE_PARAMS)
    gamma, beta, mean, var = params
    bad = np.flatnonzero(var + eps <= 0)
    if bad.size:
        return Refusal(Reason.NON_POSITIVE_VARIANCE,
                       f"channel {int(bad[0])}: var + eps = {var[bad[0]] + eps:g}")
    scale, shift = fold_params(gamma, beta, mean, var, eps)
    if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
        return Refusal(Reason.NON_FINITE_PARAMS, "scale or shift overflows float64")
    return BnAffine(node=node, x=node.input[0], y=node.output[0], scale=scale, shift=shift)


def fold_reach(g: GraphIndex, bn: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The nodes a fold of ``bn`` may read or rewrite: the BN, its consumers, its producer, and
    (when that producer is a bias Add) the Add's own producers."""
    nodes = [bn] + list(g.consumers(bn.output[0]))
    producer = g.producer(bn.input[0]) if bn.input else None
    if producer is not None:
        nodes.append(producer)
        if producer.op_type == "Add":
            nodes += [p for p in map(g.producer, producer.input) if p is not None]
    return nodes
