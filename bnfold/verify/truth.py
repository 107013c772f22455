"""A float64 ground truth of the original model, to tell a fold's error from the original's noise.

A float32 model whose terms cancel (a Conv bias of 3000 against a BN running mean of 3000) loses
digits the folded model keeps, so the two differ beyond tolerance although the fold is the more
accurate. ``float64_model`` rewrites every float tensor, type and dtype attribute of the original
to float64 (the same ops, in double); ``judge`` then compares both models with that truth per
output: a fold at least as close to the truth as the original is noise, not a wrong fold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
DTYPE_ATTRS = {"to", "dtype", "output_dtype", "stash_type"}
"""Integer attributes that name an element type (Cast, Random*, EyeLike, DequantizeLinear, ...)."""


@dataclass(frozen=True)
class TruthCheck:
    """Both models' distance to the float64 truth of one output: max |x - truth| for float
    outputs, the number of elements that differ from it for integer/bool outputs."""

    engine: str
    original_error: float
    folded_error: float

    @property
    def folded_closer(self) -> bool:
        """The fold is at least as close to the truth as the original."""
        return self.folded_error <= self.original_error

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folded_closer": self.folded_closer}


def _tensor64(t: TensorProto) -> TensorProto:
    if t.data_type not in FLOATS:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)


def _value_info(vi: onnx.ValueInfoProto) -> None:
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is not None and tt.elem_type in FLOATS:
        tt.elem_type = TensorProto.DOUBLE


def _attribute(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    A = onnx.AttributeProto
    if attr.type == A.TENSOR:
        attr.t.CopyFrom(_tensor64(attr.t))
    elif attr.type == A.TENSORS:
        for t in attr.tensors:
            t.CopyFrom(_tensor64(t))
    elif attr.type == A.GRAPH:
        _graph(attr.g)
    elif attr.type == A.GRAPHS:
        for g in attr.graphs:
            _graph(g)
    elif attr.type == A.INT and attr.name in DTYPE_ATTRS and attr.i in FLOATS:
        attr.i = TensorProto.DOUBLE
    elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
        value = np.array(attr.f if attr.type == A.FLOAT else list(attr.floats), np.float64)
        attr.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))


def _nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        for attr in node.attribute:
            _attribute(node, attr)


def _graph(g: onnx.GraphProto) -> None:
    for vi in (*g.input, *g.output, *g.value_info):
        _value_info(vi)
    for t in g.initializer:
        t.CopyFrom(_tensor64(t))
    for s in g.sparse_initializer:
        s.values.CopyFrom(_tensor64(s.values))
    _nodes(g.node)


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (external data loaded) computing in float64 wherever it used a float type:
    initializers, Constant values, Cast targets and other dtype attributes, input/output/value_info
    types, in subgraphs and functions too. Integer and bool tensors are left as they are."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph(m.graph)
    for f in m.functions:
        _nodes(f.node)
    return m


def float64_feed(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same feed with float inputs widened to float64 (exactly: every float fits)."""
    return {k: v.astype(np.float64) if _is_float(v) else v for k, v in feed.items()}


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"


def _distance(x: np.ndarray, truth: np.ndarray) -> float:
    from bnfold.verify.compare import abs_errors

    if _is_float(x):
        diff = abs_errors(truth, x)
        return float(diff.max()) if diff.size else 0.0
    return float(np.count_nonzero(x != truth.astype(x.dtype)))


def judge(original: np.ndarray, folded: np.ndarray, truth: np.ndarray,
          engine: str) -> TruthCheck | None:
    """Both models' distance to ``truth`` for one output; None when shapes make it meaningless."""
    if not original.shape == folded.shape == truth.shape:
        return None
    return TruthCheck(engine, _distance(original, truth), _distance(folded, truth))
