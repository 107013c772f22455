"""Read-only index of one ONNX graph: producers, consumers, constants, dtypes and shapes.

Constants are found in initializers, ``Constant`` nodes, through ``Identity`` chains, in
outer scopes (for subgraphs), and in small constant subgraphs (e.g. an exporter's computed
zero bias), which are evaluated with ``onnx.reference``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

# Pure ops whose outputs are constant when all their inputs are (Shape needs a static shape).
_FOLDABLE_OPS = frozenset({
    "Cast", "CastLike", "Expand", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze",
    "Reshape", "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal",
    "Transpose", "Flatten", "Range", "Tile", "Where", "Equal", "Less", "Greater", "Abs",
})
_MAX_EVAL_ELEMENTS = 1 << 24
_MAX_CACHED_BYTES = 1 << 16


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Yield (attribute name, graph) for each graph-valued attribute of ``node``."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def referenced_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read anywhere inside ``graph`` (its nodes and nested subgraphs)."""
    names: set[str] = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            names |= referenced_names(sub)
    names.update(o.name for o in graph.output)
    return names


def attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN201
    """An attribute's Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class GraphIndex:
    """Lookups over one graph; rebuilt after each rewrite (graphs are small, rewrites rare)."""

    def __init__(self, graph: onnx.GraphProto, *, ir_version: int, opset: int,
                 shapes: dict[str, list[int | None]] | None = None,
                 dtypes: dict[str, int] | None = None, outer: "GraphIndex | None" = None,
                 base_dir: str | None = None) -> None:
        """``base_dir``: the folder external initializer data is read from (a lazy load)."""
        self.graph = graph
        self.base_dir = base_dir
        self.ir_version = ir_version
        self.opset = opset
        self.outer = outer
        self.shapes = shapes if shapes is not None else {}
        self.dtypes = dtypes if dtypes is not None else {}
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self._producer[out] = node
            seen: set[str] = set()
            for name in node.input:
                if name and name not in seen:
                    seen.add(name)
                    self._consumers[name].append(node)
            for _, sub in subgraphs(node):
                for name in referenced_names(sub) - seen:
                    seen.add(name)
                    self._consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        for t in graph.initializer:
            self.dtypes.setdefault(t.name, t.data_type)
            self.shapes.setdefault(t.name, list(t.dims))
        self._const_cache: dict[str, np.ndarray | None] = {}

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producer.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return self._consumers.get(name, [])

    def fanout(self, name: str) -> int:
        """Reading nodes plus one if ``name`` is a graph output."""
        return len(self.consumers(name)) + (1 if name in self.outputs else 0)

    def uses(self, name: str) -> int:
        """Every read of ``name``: a node reading it twice counts twice (Gemm(x, W, W))."""
        reads = sum(max(1, list(n.input).count(name)) for n in self.consumers(name))
        return reads + (1 if name in self.outputs else 0)

    def forget(self, name: str) -> None:
        """Drop a cached constant after its tensor was rewritten."""
        self._const_cache.pop(name, None)

    def is_graph_output(self, name: str) -> bool:
        return name in self.outputs

    def dtype(self, name: str) -> int | None:
        if name in self.dtypes:
            return self.dtypes[name]
        return self.outer.dtype(name) if self.outer else None

    def shape(self, name: str) -> list[int | None] | None:
        if name in self.shapes:
            return self.shapes[name]
        return self.outer.shape(name) if self.outer else None

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def is_overridable_input(self, name: str) -> bool:
        """An initializer also listed as a graph input can be fed at run time (IR >= 4)."""
        return self.ir_version >= 4 and name in self.inputs

    def const(self, name: str) -> np.ndarray | None:
        """The tensor's value if it is a compile-time constant, else None.

        An initializer still stored externally is read from ``base_dir`` (one tensor at a time).
        """
        if name in self._const_cache:
            return self._const_cache[name]
        self._const_cache[name] = None  # guards against cycles in malformed graphs
        value = self._const_uncached(name)
        if value is not None and value.nbytes > _MAX_CACHED_BYTES:
            del self._const_cache[name]  # weights are read once per fold; don't hold copies
        else:
            self._const_cache[name] = value
        return value

    def const_source(self, name: str) -> str:
        """Follow Identity nodes back to the tensor that holds the value."""
        node = self.producer(name)
        while node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
            name = node.input[0]
            node = self.producer(name)
        return name

    def _const_uncached(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            if self.is_overridable_input(name):
                return None
            return tensor_value(self.initializers[name], self.base_dir)
        node = self.producer(name)
        if node is None:
            if name in self.inputs:
                return None
            return self.outer.const(name) if self.outer else None
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Identity":
            return self.const(node.input[0])
        if node.op_type == "Constant":
            return _constant_node_value(node, self.base_dir)
        if node.op_type == "Shape":
            return self._static_shape(node)
        if node.op_type in _FOLDABLE_OPS and len(node.output) == 1:
            return self._evaluate(node)
        return None

    def _static_shape(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self.shape(node.input[0])
        if shape is None or any(d is None for d in shape):
            return None
        dims = np.array(shape, dtype=np.int64)
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return dims[start:end] if end is not None else dims[start:]

    def _evaluate(self, node: onnx.NodeProto) -> np.ndarray | None:
        values = []
        for name in node.input:
            if not name:
                values.append(None)
                continue
            v = self.const(name)
            if v is None:
                return None
            values.append(v)
        try:
            from onnx.reference import ReferenceEvaluator

            feeds = {n: v for n, v in zip(node.input, values) if n}
            out = ReferenceEvaluator(node).run(None, feeds)[0]
        except Exception:  # an op the reference cannot run here is simply not constant
            return None
        out = np.asarray(out)
        return out if out.size <= _MAX_EVAL_ELEMENTS else None


def tensor_value(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray | None:
    """The tensor's array; external data is read relative to ``base_dir`` (the model's
    folder, where loading checked it), never the current directory: without a folder the
    value is unknown (None)."""
    if onnx.external_data_helper.uses_external_data(tensor):
        if base_dir is None:
            return None
        return numpy_helper.to_array(tensor, base_dir)
    return numpy_helper.to_array(tensor)


def _constant_node_value(node: onnx.NodeProto, base_dir: str | None) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return tensor_value(a.t, base_dir)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


GraphKey = tuple[tuple[int, str], ...]  # (node index, attribute name) steps from the main graph
ValueInfo = tuple[dict[str, list[int | None]], dict[str, int]]  # shapes, dtypes of one graph


def walk_graphs(graph: onnx.GraphProto, key: GraphKey = ()) -> Iterator[tuple[GraphKey,
                                                                           onnx.GraphProto]]:
    """Every graph nested in ``graph`` (itself first), with its structural key."""
    yield key, graph
    for i, node in enumerate(graph.node):
        for attr_name, sub in subgraphs(node):
            yield from walk_graphs(sub, key + ((i, attr_name),))


def value_infos(model: onnx.ModelProto) -> dict[GraphKey, ValueInfo]:
    """Shapes and dtypes of the values of each graph, keyed by the graph's structural key.

    Per graph, because sibling subgraphs may reuse a name for different values. Shape
    inference runs on a skeleton (no bulk tensor data), so a multi-GB model is not copied.
    """
    from bnfold.skeleton import skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), check_type=False,
                                                     strict_mode=False)
    except Exception:  # inference is best effort here: rules refuse when a rank is unknown
        inferred = model
    infos: dict[GraphKey, ValueInfo] = {}
    for key, graph in walk_graphs(inferred.graph):
        shapes: dict[str, list[int | None]] = {}
        dtypes: dict[str, int] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            if tt.elem_type:
                dtypes[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                   for d in tt.shape.dim]
        infos[key] = (shapes, dtypes)
    return infos
