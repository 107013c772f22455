"""Read-only index of one ONNX graph: producers, consumers, constants, dtypes and shapes.

Constants are found in initializers, ``Constant`` nodes (dense or sparse values), through
``Identity`` chains, in outer scopes (for subgraphs), and in small constant subgraphs (e.g. an
exporter's computed zero bias), which ``bnfold.graph.consteval`` evaluates under the model's opsets
and confirms on ONNX Runtime. A ``CastLike`` reads its second input for the dtype only: an
activation there (the raw dynamo exporter's ``CastLike(0, x)``) keeps a subgraph constant.
Every walk is iterative: a chain of thousands of nodes cannot overflow.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import onnx

from bnfold.graph.values import constant_node_value, tensor_value
from bnfold.graph.values import sparse_array  # noqa: F401 - re-exported: read here before

if TYPE_CHECKING:
    from bnfold.graph.consteval import Evaluated, Subgraph

# Pure ops whose outputs are constant when all their inputs are (Shape needs a static shape).
_FOLDABLE_OPS = frozenset({
    "Cast", "CastLike", "Expand", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze",
    "Reshape", "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal",
    "Transpose", "Flatten", "Range", "Tile", "Where", "Equal", "Less", "Greater", "Abs",
    "ReduceSum", "ReduceMean",
})
_MAX_EVAL_ELEMENTS = 1 << 24
_MAX_CACHED_BYTES = 1 << 16
_MAX_BATCH_LEAF_ELEMENTS = 1 << 14  # a subgraph evaluated ahead, in the batch, reads at most this
# a larger subgraph computing a layer's weight (Transpose(W) before a MatMul) is evaluated when
# first asked for, with the other such weights of the graph up to this many values: one ORT
# session per batch of weights, not one per weight
_MAX_WEIGHT_BATCH_ELEMENTS = 1 << 22
_WEIGHT_READERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


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
    for _, g in walk_graphs(graph):
        for node in g.node:
            names.update(n for n in node.input if n)
        names.update(o.name for o in g.output)
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
                 base_dir: str | None = None,
                 opset_imports: Sequence[onnx.OperatorSetIdProto] | None = None,
                 mismatches: dict[str, str] | None = None,
                 const_memo: dict | None = None) -> None:
        """``base_dir``: the folder external initializer data is read from (a lazy load).
        ``opset_imports``: the model's, for evaluating constant subgraphs (default: ai.onnx
        at ``opset``). ``mismatches``: tensors whose declared shape or dtype contradicts
        shape inference, with the numbers (``bnfold.graph.shapes``). ``const_memo``: evaluated
        constant subgraphs by content, shared by the indexes of one fold (default: the outer
        index's, else a new one; ``bnfold.graph.consteval``)."""
        self.graph = graph
        self.base_dir = base_dir
        self.ir_version = ir_version
        self.opset = opset
        self.opset_imports = (list(opset_imports) if opset_imports is not None
                              else [onnx.helper.make_opsetid("", opset)])
        self.outer = outer
        self.mismatches = mismatches if mismatches is not None else {}
        self.shapes = shapes if shapes is not None else {}
        self.dtypes = dtypes if dtypes is not None else {}
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self._position: dict[int, int] = {}  # id(node) -> index: evaluation order
        for node in graph.node:
            self._position[id(node)] = len(self._position)
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
        self._problems: dict[str, str] = {}
        self._batched = False  # the graph's small constant subgraphs were evaluated together
        self._evaluated: dict[str, tuple[Evaluated, frozenset[str]]] = {}  # with their leaves
        self._weights_asked: set[str] = set()  # large subgraphs evaluated (or being) once
        self.const_memo = (const_memo if const_memo is not None
                           else outer.const_memo if outer is not None else {})

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producer.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return self._consumers.get(name, [])

    def uses(self, name: str) -> int:
        """Every read of ``name``: a node reading it twice counts twice (Gemm(x, W, W))."""
        reads = sum(max(1, list(n.input).count(name)) for n in self.consumers(name))
        return reads + (1 if name in self.outputs else 0)

    def forget(self, name: str) -> None:
        """Drop a cached constant after its tensor was rewritten."""
        self._const_cache.pop(name, None)
        self._problems.pop(name, None)
        for out in [o for o, (_, leaves) in self._evaluated.items() if name in leaves | {o}]:
            del self._evaluated[out]

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

    def declared_mismatch(self, name: str) -> str:
        """Why ``name``'s declared shape or dtype is not trusted ("" when it agrees)."""
        if name in self.mismatches:
            return self.mismatches[name]
        return self.outer.declared_mismatch(name) if self.outer else ""

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def is_overridable_input(self, name: str) -> bool:
        """An initializer also listed as a graph input can be fed at run time (IR >= 4)."""
        return self.ir_version >= 4 and name in self.inputs

    def const(self, name: str) -> np.ndarray | None:
        """The tensor's value if it is a compile-time constant, else None.

        An initializer still stored externally is read from ``base_dir`` (one tensor at a time).
        A computed constant is evaluated as one small subgraph under the model's opsets and
        confirmed by ONNX Runtime; ``why_not_const`` says why a value was not accepted.
        """
        if name in self._const_cache:
            return self._const_cache[name]
        value = self._resolve(name)
        if value is None or value.nbytes <= _MAX_CACHED_BYTES:
            self._const_cache[name] = value  # weights are read once per fold; don't hold copies
        return value

    def why_not_const(self, name: str) -> str:
        """Why evaluating ``name``'s constant subgraph failed ("" if it did not fail)."""
        return self._problems.get(name, "")

    def const_source(self, name: str) -> str:
        """Follow Identity nodes back to the tensor that holds the value."""
        node = self.producer(name)
        seen: set[str] = set()
        while _is_identity(node) and name not in seen:
            seen.add(name)
            name = node.input[0]
            node = self.producer(name)
        return name

    def _resolve(self, name: str) -> np.ndarray | None:
        source = self.const_source(name)
        if source != name:
            value = self.const(source)
            if value is None and self.why_not_const(source):
                self._problems[name] = self.why_not_const(source)
            return value
        if not self._computed(self.producer(name)):
            return self._leaf(name)
        if not self._batched:
            self._batched = True
            self._evaluate_batch(name)
        out = self._evaluated.pop(name, (None, None))[0] or self._evaluate_weights(name)
        if out is None:
            return None
        if out.value is None:
            self._problems[name] = out.problem
            return None
        return out.value if out.value.size <= _MAX_EVAL_ELEMENTS else None

    def _evaluate_batch(self, name: str) -> None:
        """Evaluate ``name`` and every other small constant subgraph of the graph that a
        non-constant op reads (BN parameters, biases, an attention bias an Add adds to an
        activation) as one model: one ORT session per index, not one per constant. A subgraph
        reading more than ``_MAX_BATCH_LEAF_ELEMENTS`` values (``name``'s too) waits until it is
        asked for (``_evaluate_weights``)."""
        from bnfold.graph.consteval import evaluate_all

        sizes = self._constant_sizes()
        roots = [o for o, n in sizes.items() if n <= _MAX_BATCH_LEAF_ELEMENTS
                 and (o == name or o in self.outputs
                      or not all(self._computed(c) and c.output[0] in sizes
                                 for c in self.consumers(o)))]
        batch: list[Subgraph] = []
        for root in roots:
            nodes, leaves = self._constant_subgraph(root)
            if nodes is not None:
                batch.append(self._subgraph(root, nodes, leaves))
        if batch:
            found = evaluate_all(batch, opset_imports=self.opset_imports,
                                 ir_version=self.ir_version, memo=self.const_memo)
            self._evaluated = {s.output: (found[s.output], frozenset(s.leaves)) for s in batch
                               if s.output == name or found[s.output].value is None
                               or found[s.output].value.nbytes <= _MAX_CACHED_BYTES}

    def _evaluate_weights(self, name: str) -> "Evaluated | None":
        """``name``'s subgraph, too large for the graph's batch, evaluated with the other large
        constant subgraphs a Conv/ConvTranspose/Gemm/MatMul reads that are not evaluated yet
        (up to ``_MAX_WEIGHT_BATCH_ELEMENTS`` values in all): their values wait in
        ``_evaluated`` until asked for. None when ``name`` is not constant at all."""
        from bnfold.graph.consteval import evaluate_all

        nodes, leaves = self._constant_subgraph(name)
        if nodes is None:
            return None
        size = sum(v.size for v in leaves.values())
        if size > _MAX_EVAL_ELEMENTS:
            self._problems[name] = f"its constant inputs hold {size} values, too many to evaluate"
            return None
        batch = [self._subgraph(name, nodes, leaves)]
        self._weights_asked.add(name)
        for root in self._pending_weights(_MAX_WEIGHT_BATCH_ELEMENTS - size):
            more, more_leaves = self._constant_subgraph(root)
            if more is not None:
                batch.append(self._subgraph(root, more, more_leaves))
                self._weights_asked.add(root)
        found = evaluate_all(batch, opset_imports=self.opset_imports, ir_version=self.ir_version,
                             memo=self.const_memo)
        self._evaluated.update((s.output, (found[s.output], frozenset(s.leaves)))
                               for s in batch[1:])
        return found[name]

    def _subgraph(self, name: str, nodes: dict[int, onnx.NodeProto],
                  leaves: dict[str, np.ndarray]) -> "Subgraph":
        from bnfold.graph.consteval import Subgraph

        return Subgraph(sorted(nodes.values(), key=lambda n: self._position[id(n)]), leaves, name)

    def _pending_weights(self, budget: int) -> list[str]:
        """Large computed constants a weight-reading op reads, not yet evaluated or asked for,
        in graph order, as many as ``budget`` values allow (sizes from declared shapes)."""
        picked: list[str] = []
        for root, n in self._constant_sizes().items():
            if (n <= _MAX_BATCH_LEAF_ELEMENTS or n > budget or root in self._weights_asked
                    or root in self._evaluated or root in self._const_cache
                    or not any(c.op_type in _WEIGHT_READERS and c.domain in ("", "ai.onnx")
                               for c in self.consumers(root))):
                continue
            picked.append(root)
            budget -= n
        return picked

    def _constant_sizes(self) -> dict[str, int]:
        """Every computed tensor whose inputs all look constant, with how many values its
        subgraph starts from (an upper bound: a shared leaf counts once per use). One pass in
        graph order from declared shapes, nothing read: linear, where walking back from each
        tensor would be quadratic on long chains of Add/Reshape over activations."""
        sizes: dict[str, int] = {}
        for node in self.graph.node:
            if not self._computed(node):
                continue
            total: int | None = 0
            for i, x in enumerate(node.input):
                if not x or (node.op_type == "CastLike" and i == 1):
                    continue
                n = sizes[x] if x in sizes else self._leaf_size(x)
                if n is None:
                    total = None
                    break
                total += n
            if total is not None:
                sizes[node.output[0]] = total
        return sizes

    def _leaf_size(self, name: str) -> int | None:
        """Values in a tensor that looks like a constant leaf (from its declared shape; 0 when
        unknown), or None for an activation."""
        node = self.producer(name)
        if node is None:
            if name in self.inputs and not (name in self.initializers
                                            and not self.is_overridable_input(name)):
                return None
        elif node.op_type not in ("Constant", "Shape") or node.domain not in ("", "ai.onnx"):
            return None
        shape = self.shape(name)
        known = shape is not None and all(isinstance(d, int) for d in shape)
        return int(np.prod(shape, dtype=np.int64)) if known else 0

    def _computed(self, node: onnx.NodeProto | None) -> bool:
        """A pure op whose output is constant when its inputs are (evaluated as a subgraph)."""
        return (node is not None and node.domain in ("", "ai.onnx") and len(node.output) == 1
                and (node.op_type in _FOLDABLE_OPS or node.op_type == "Identity"))

    def _constant_subgraph(self, name: str) -> tuple[dict[int, onnx.NodeProto] | None,
                                                     dict[str, np.ndarray]]:
        """The computing nodes behind ``name`` and the constant values they start from.

        Iterative (an explicit stack), so a chain of thousands of nodes cannot overflow.
        """
        nodes: dict[int, onnx.NodeProto] = {}
        leaves: dict[str, np.ndarray] = {}
        seen: set[str] = set()
        typed: set[str] = set()  # read for their dtype only (CastLike's target_type)
        stack = [(name, False)]
        while stack:
            tensor, dtype_only = stack.pop()
            if dtype_only:
                typed.add(tensor)
                continue
            if not tensor or tensor in seen:
                continue
            seen.add(tensor)
            node = self.producer(tensor)
            if tensor != name and tensor in self._const_cache:
                cached = self._const_cache[tensor]
                if cached is None:
                    return None, leaves
                leaves[tensor] = cached
            elif self._computed(node):
                nodes[id(node)] = node
                stack.extend((x, node.op_type == "CastLike" and i == 1)
                             for i, x in enumerate(node.input))
            else:
                value = self._leaf(tensor)
                if value is None:
                    return None, leaves
                leaves[tensor] = value
        for tensor in typed - seen:  # e.g. the dynamo exporter's CastLike(0, activation)
            elem = self.dtype(tensor)
            if not elem:
                self._problems[name] = f"the dtype of {tensor!r}, which a CastLike reads, is unknown"
                return None, leaves
            leaves[tensor] = np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(elem))
        return nodes, leaves

    def _leaf(self, name: str) -> np.ndarray | None:
        """The value of a tensor that needs no evaluation: initializer, Constant (dense or
        sparse value), static Shape, or a constant of an outer scope."""
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
        if node.op_type == "Constant":
            return constant_node_value(node, self.base_dir)
        if node.op_type == "Shape":
            return self._static_shape(node)
        return None

    def _static_shape(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self.shape(node.input[0])
        if shape is None or any(d is None for d in shape):
            return None
        dims = np.array(shape, dtype=np.int64)
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return dims[start:end] if end is not None else dims[start:]


def _is_identity(node: onnx.NodeProto | None) -> bool:
    return (node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx")
            and len(node.input) == 1)


GraphKey = tuple[tuple[int, str], ...]  # (node index, attribute name) steps from the main graph
ValueInfo = tuple[dict[str, list[int | None]], dict[str, int]]  # shapes, dtypes of one graph


def walk_graphs(graph: onnx.GraphProto, key: GraphKey = ()) -> Iterator[tuple[GraphKey,
                                                                           onnx.GraphProto]]:
    """Every graph nested in ``graph`` (itself first, then depth first in node order), with
    its structural key; iterative, so any nesting depth is fine."""
    stack = [(key, graph)]
    while stack:
        key, graph = stack.pop()
        yield key, graph
        nested = [(key + ((i, attr_name),), sub) for i, node in enumerate(graph.node)
                  for attr_name, sub in subgraphs(node)]
        stack.extend(reversed(nested))


def value_infos(model: onnx.ModelProto) -> dict[GraphKey, ValueInfo]:
    """Inferred shapes and dtypes of the values of each graph, keyed by the graph's structural
    key (see ``bnfold.graph.shapes.infer``, which also reports declarations that contradict them)."""
    from bnfold.graph.shapes import infer

    return {key: (found.shapes, found.dtypes) for key, found in infer(model).items()}
