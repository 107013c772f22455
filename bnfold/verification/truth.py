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


_WIDE = {TensorProto.DOUBLE: np.float64, TensorProto.FLOAT: np.float32}


def _widen_tensor(t: TensorProto, to: int, narrow: set[int]) -> TensorProto:
    if t.data_type not in narrow:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(_WIDE[to]), t.name)


class _Widen:
    """Rewrites the float types in ``narrow`` to ``to`` throughout a graph, in place."""

    def __init__(self, to: int) -> None:
        self.to = to
        self.narrow = {t for t in FLOATS if t != to}

    def value_info(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.elem_type in self.narrow:
            tt.elem_type = self.to

    def attribute(self, node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
        A = onnx.AttributeProto
        if attr.type == A.TENSOR:
            attr.t.CopyFrom(_widen_tensor(attr.t, self.to, self.narrow))
        elif attr.type == A.TENSORS:
            for t in attr.tensors:
                t.CopyFrom(_widen_tensor(t, self.to, self.narrow))
        elif attr.type == A.GRAPH:
            self.graph(attr.g)
        elif attr.type == A.GRAPHS:
            for g in attr.graphs:
                self.graph(g)
        elif attr.type == A.INT and attr.name in DTYPE_ATTRS and attr.i in self.narrow:
            attr.i = self.to
        elif (self.to == TensorProto.DOUBLE and node.op_type == "Constant"
              and attr.name in ("value_float", "value_floats")):
            value = np.array(attr.f if attr.type == A.FLOAT else list(attr.floats), np.float64)
            attr.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))

    def nodes(self, nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            for attr in node.attribute:
                self.attribute(node, attr)

    def graph(self, g: onnx.GraphProto) -> None:
        for vi in (*g.input, *g.output, *g.value_info):
            self.value_info(vi)
        for t in g.initializer:
            t.CopyFrom(_widen_tensor(t, self.to, self.narrow))
        for s in g.sparse_initializer:
            s.values.CopyFrom(_widen_tensor(s.values, self.to, self.narrow))
        self.nodes(g.node)


def widened_model(model: onnx.ModelProto, to: int = TensorProto.DOUBLE) -> onnx.ModelProto:
    """A copy of ``model`` (external data loaded) computing in ``to`` (DOUBLE or FLOAT) wherever
    it used a narrower float type: initializers, Constant values, Cast targets and other dtype
    attributes, input/output/value_info types, in subgraphs and functions too. Integer and bool
    tensors are left as they are. FLOAT is truth enough for float16/bfloat16 models (13 and 16
    more bits) and ORT has float32 kernels for every op."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    widen = _Widen(to)
    widen.graph(m.graph)
    for f in m.functions:
        widen.nodes(f.node)
    return m


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``widened_model`` to float64: the original's ground truth."""
    return widened_model(model, TensorProto.DOUBLE)


def float64_feed(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same feed with float inputs widened to float64 (exactly: every float fits)."""
    return widened_feed(feed, TensorProto.DOUBLE)


def widened_feed(feed: Mapping[str, np.ndarray], to: int) -> dict[str, np.ndarray]:
    """The feed for ``widened_model(model, to)``: the float inputs it widened, widened exactly."""
    narrow = (lambda v: v.dtype != np.float64) if to == TensorProto.DOUBLE else (
        lambda v: v.dtype == np.float16 or v.dtype.name == "bfloat16")
    return {k: v.astype(_WIDE[to]) if _is_float(v) and narrow(v) else v
            for k, v in feed.items()}


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"


def _distance(x: np.ndarray, truth: np.ndarray) -> float:
    from bnfold.verification.compare import abs_errors

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
