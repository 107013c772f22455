"""The nodes a fold replaced, cut out of a graph as a standalone region for the local proof.

A region is named by its output tensors and its activation inputs (the frontier). Its nodes
are the backward slice from the outputs that stops at the frontier, across enclosing scopes
for subgraphs; every other leaf must be a constant (an initializer, a ``Constant`` node, a
``Shape`` of a statically shaped tensor). The slice is walked iteratively.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
from onnx import external_data_helper as edh
from onnx import helper

from bnfold.io import spill, weights_in_file
from bnfold.io.data_file import external_length, stored_size
from bnfold.folding.bn import label
from bnfold.graph.index import GraphKey, ValueInfo, attr, subgraphs

_DATA_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")
_READ_LATE = 64 << 10  # external weights larger than this are read when the proof runs
_CAPPABLE = _DATA_OPS + ("Add", "Identity")  # on the data path: a capped spatial size is fine
_MAX_WALK = 32  # nodes between a BN and the node it was folded into (chained folds)


class Scope:
    """One graph with its producers, initializers and inputs, and its enclosing scope."""

    def __init__(self, graph: onnx.GraphProto, info: ValueInfo, ir_version: int,
                 outer: "Scope | None") -> None:
        self.graph, self.outer = graph, outer
        self.shapes, self.dtypes = info
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.overridable = self.inputs if ir_version >= 4 else set()
        self.input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
        self._consumers: dict[str, list[onnx.NodeProto]] | None = None

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        """The nodes reading each name, built once per scope (not once per fold)."""
        if self._consumers is None:
            self._consumers = {}
            for n in self.graph.node:
                for name in set(n.input):
                    self._consumers.setdefault(name, []).append(n)
        return self._consumers

    def chain(self) -> Iterator["Scope"]:
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.outer

    def find(self, name: str) -> "Scope | None":
        """The innermost scope that defines ``name``."""
        for s in self.chain():
            if name in s.producer or name in s.initializers or name in s.inputs:
                return s
        return None

    def shape(self, name: str) -> list[int | None] | None:
        for s in self.chain():
            if name in s.shapes:
                return list(s.shapes[name])
        return None

    def dtype(self, name: str) -> int | None:
        for s in self.chain():
            for table in (s.dtypes, s.input_types):
                if table.get(name):
                    return table[name]
            if name in s.initializers:
                return s.initializers[name].data_type
        return None


def scopes(model: onnx.ModelProto, infos: dict[GraphKey, ValueInfo]) -> dict[str, list[Scope]]:
    """Every graph of ``model`` as a Scope, by the graph path fold records use."""
    from bnfold.folding.functions import as_graph, function_path

    found: dict[str, list[Scope]] = {}
    todo = [(model.graph, "main", (), None)]
    todo += [(as_graph(f), function_path(f), ("function", i), None)
             for i, f in enumerate(model.functions)]
    while todo:
        graph, path, key, outer = todo.pop()
        scope = Scope(graph, infos.get(key, ({}, {})), model.ir_version, outer)
        found.setdefault(path, []).append(scope)
        for i, node in enumerate(graph.node):
            for attr_name, sub in subgraphs(node):
                todo.append((sub, f"{path}/{label(node)}.{attr_name}", key + ((i, attr_name),),
                             scope))
    return found


@dataclass
class Region:
    """A standalone piece of a graph: nodes, constant tensors, frontier inputs, outputs."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[tuple[str, int, list[int]]] = field(default_factory=list)  # name, dtype, shape
    outputs: list[tuple[str, int]] = field(default_factory=list)            # name, dtype
    base_dir: str | None = None  # where initializers still external are read from

    def inline(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """``tensor`` (one of ``initializers``) with its data in the proto."""
        return _inline(tensor, self.base_dir)

    def nbytes(self) -> int:
        """The bytes of the region's constants, from their dims (``ByteSize`` would serialize
        every weight: 60 ms for ResNet-50's)."""
        return sum(stored_size(t) + external_length(t) for t in self.initializers)


class RegionError(ValueError):
    """The region cannot be cut out: a non-constant leaf, an unknown shape, a lost node."""


def replaced(scope: Scope, bn_output: str, target: str, direction: str,
             region: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
             ) -> tuple[list[onnx.NodeProto], list[str], list[str]]:
    """The original nodes one fold replaced, its frontier (activation inputs) and outputs.

    ``region``: (first outputs of every node the fold read or rewrote, its activation
    inputs), as the fold recorded them; a multi-node fold (a map carried through Reshape,
    Concat, pools...) is proven over all of them. Without it, the walk from the BN to
    ``target`` through bias Adds and chained BNs (records made before regions were kept).
    """
    names, fronts = region
    if names:
        nodes = []
        for name in names:
            if name not in scope.producer:
                raise RegionError(f"{name!r} (a node the fold replaced) is not in the original "
                                  "graph")
            nodes.append(scope.producer[name])
        read = {x for n in nodes for x in n.input}
        outs = [n.output[0] for n in nodes if n.output[0] not in read]
        return nodes, list(fronts), outs
    nodes, front, out = _walk(scope, bn_output, target, direction)
    return nodes, [front], [out]


def _walk(scope: Scope, bn_output: str, target: str, direction: str,
          ) -> tuple[list[onnx.NodeProto], str, str]:
    """The nodes from a BN to the node it was folded into (through bias Adds and BNs)."""
    bn = scope.producer.get(bn_output)
    if bn is None:
        raise RegionError(f"BN output {bn_output!r} not found in the original graph")
    nodes, cur = [bn], bn
    consumers = scope.consumers()
    for _ in range(_MAX_WALK):
        if direction == "backward":
            nxt = _upstream(scope, cur)
        else:
            readers = consumers.get(cur.output[0], [])
            nxt = readers[0] if len(readers) == 1 else None
        if nxt is None:
            break
        nodes.append(nxt)
        if label(nxt) == target or (not nxt.name and target.startswith(f"<{nxt.op_type} ->")):
            if direction == "backward":
                return nodes, nxt.input[0], bn_output
            return nodes, bn.input[0], nxt.output[0]
        if nxt.op_type not in ("BatchNormalization", "Add"):
            break
        cur = nxt
    raise RegionError(f"no path from the BN to {target!r} in the original graph")


def merged_region(scope: Scope, folded: Scope, bn_output: str, target: str,
                  ) -> tuple[list[onnx.NodeProto], list[str], list[str]]:
    """The original nodes a reparam merge replaced (the whole Add tree of branches, with the
    nodes of their constants), its frontier (the merged Conv's input) and its output."""
    conv = next((n for n in folded.graph.node if n.op_type == "Conv" and label(n) == target),
                None)
    if conv is None:
        raise RegionError(f"the merged Conv {target!r} is not in the folded graph")
    out, front = conv.output[0], conv.input[0]
    picked: dict[int, onnx.NodeProto] = {}
    stack = [out]
    while stack:
        node = scope.producer.get(stack.pop())
        if node is None or id(node) in picked:
            continue
        picked[id(node)] = node
        stack.extend(x for x in node.input if x and x != front)
    nodes = sorted(picked.values(), key=lambda n: n.op_type != "Conv")  # a Conv reads x first
    if scope.producer.get(bn_output) not in nodes:
        raise RegionError(f"BN output {bn_output!r} is not in the tree merged into {target!r}")
    return nodes, [front], [out]


def _upstream(scope: Scope, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The node feeding ``node``'s data: a BN's input, or an Add's non-constant operand."""
    names = [node.input[0]] if node.op_type != "Add" else list(node.input)
    for name in names:
        p = scope.producer.get(name)
        if p is not None and p.op_type in _DATA_OPS + ("Add",):
            return p
    return None


def cut(scope: Scope, outputs: list[str], frontier: list[str], readers: dict[str, onnx.NodeProto],
        base_dir: str | None, like: "Region | None" = None) -> Region:
    """The backward slice of ``outputs`` down to ``frontier``; constants copied in.

    ``like``: the original region, when cutting its folded replacement: its frontier and
    output types and shapes are reused (the fold may have renamed the weights they came from).
    """
    known = {n: d for n, d, _ in like.inputs} | dict(like.outputs) if like else {}
    sizes = {n: shape for n, _, shape in like.inputs} if like else {}
    region = Region(base_dir=base_dir)
    seen: set[str] = set()
    picked: dict[int, onnx.NodeProto] = {}
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in frontier:
            region.inputs.append((name, known.get(name) or _dtype(scope, name, readers.get(name))))
            continue
        owner = scope.find(name)
        if owner is None:
            raise RegionError(f"{name!r} is defined in no enclosing graph")
        if name in owner.producer:
            node = owner.producer[name]
            if id(node) in picked:
                continue
            if node.op_type == "Shape" and node.input[0] not in frontier:
                static = _static_shape(owner, node)
                if static is not None:
                    region.nodes.append(helper.make_node("Constant", [], [name], value=static))
                    picked[id(node)] = node
                    continue
            picked[id(node)] = node
            region.nodes.append(_inline_constant(node, base_dir))
            stack.extend(node.input)
            for _, sub in subgraphs(node):
                stack.extend(free_names(sub))
        elif name in owner.initializers and name not in owner.overridable:
            tensor = owner.initializers[name]
            # a large weight still in a file stays there: the proof copies it file to file
            lazy = base_dir is not None and external_length(tensor) > _READ_LATE
            region.initializers.append(tensor if lazy else _inline(tensor, base_dir))
        else:
            raise RegionError(f"the region reads {name!r}, which is neither its activation "
                              "input nor a constant")
    region.nodes = _topological(region.nodes)
    path = _data_path(region.nodes, frontier)
    cap = not any(_size_dependent(n, frontier) for n in region.nodes) and all(
        n.op_type in _CAPPABLE for n in path) and not _spatial_operand(scope, region, path)
    convs = _conv_extent(scope, region.nodes) if cap else None
    region.inputs = [(n, d, sizes.get(n) or _frontier_shape(scope, n, readers[n], cap, convs))
                     for n, d in region.inputs]
    first = region.inputs[0][1] if region.inputs else 0
    region.outputs = [(o, known.get(o) or scope.dtype(o) or first or _dtype(scope, o))
                      for o in outputs]
    return region


def _data_path(nodes: list[onnx.NodeProto], frontier: list[str]) -> list[onnx.NodeProto]:
    """The nodes (in topological order) that read the activations, directly or not."""
    live, path = set(frontier), []
    for node in nodes:
        if live.intersection(node.input):
            path.append(node)
            live.update(node.output)
    return path


def _spatial_operand(scope: Scope, region: Region, path: list[onnx.NodeProto]) -> bool:
    """Whether an Add on the data path adds a constant that varies along a spatial axis (a
    smaller spatial size would not broadcast with it); unknown shapes count as varying."""
    made = {o for n in path for o in n.output} | {i[0] for i in region.inputs}
    dims = {t.name: list(t.dims) for t in region.initializers}
    for n in region.nodes:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == (
                onnx.AttributeProto.TENSOR):
            dims[n.output[0]] = list(n.attribute[0].t.dims)
    for node in (n for n in path if n.op_type == "Add"):
        data = next((x for x in node.input if x in made), None)
        rank = len(scope.shapes.get(data) or []) if data else 0
        for other in (x for x in node.input if x not in made):
            shape = dims.get(other, scope.shapes.get(other))
            if shape is None or rank == 0:
                return True
            spatial = list(shape)[-(rank - 2):] if rank > 2 else []
            if any(d != 1 for d in spatial):
                return True
    return False


def _size_dependent(node: onnx.NodeProto, frontier: list[str]) -> bool:
    """Whether the node's result depends on an activation's exact spatial size."""
    if node.op_type == "ConvTranspose" and attr(node, "output_shape", None):
        return True
    return node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add",
                                "BatchNormalization") and any(x in frontier for x in node.input)


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            read |= free_names(sub)
        defined.update(node.output)
    read.update(o.name for o in graph.output)
    return read - defined


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Order nodes so each follows the producers of its inputs (Kahn's algorithm)."""
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{made[x] for x in n.input if x in made} for n in nodes]
    done: list[int] = []
    placed: set[int] = set()
    while len(done) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in placed and deps[i] <= placed]
        if not ready:
            raise RegionError("the region has a cycle")
        done.extend(ready)
        placed.update(ready)
    return [nodes[i] for i in done]


def _inline(tensor: onnx.TensorProto, base_dir: str | None) -> onnx.TensorProto:
    """``tensor`` with its data in the proto: itself, or a copy with its external data read
    from ``base_dir`` (the proof model copies it once more, renamed)."""
    if not edh.uses_external_data(tensor):
        return tensor
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    spill.inline(copy)  # a folded weight in the fold's scratch file
    if edh.uses_external_data(copy):
        if base_dir is None:  # never the current directory: only the model's own folder
            raise RegionError(f"{tensor.name!r} is stored externally and the model's folder is "
                              "unknown")
        raw = weights_in_file.read_raw(copy, base_dir)  # a weight left in the model file
        if raw is None:
            edh.load_external_data_for_tensor(copy, base_dir)
        else:
            copy.raw_data = raw
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
    return copy


def _inline_constant(node: onnx.NodeProto, base_dir: str | None) -> onnx.NodeProto:
    """A Constant node whose tensor is stored externally, with the data read in (from the
    model's folder): the proof model is loaded from bytes and has no folder of its own."""
    if node.op_type != "Constant" or not any(
            a.type == onnx.AttributeProto.TENSOR and edh.uses_external_data(a.t)
            for a in node.attribute):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for a in copy.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            a.t.CopyFrom(_inline(a.t, base_dir))
    return copy


def _static_shape(scope: Scope, node: onnx.NodeProto) -> onnx.TensorProto | None:
    shape = scope.shape(node.input[0])
    if shape is None or any(d is None for d in shape):
        return None
    dims = np.array(shape, dtype=np.int64)
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return onnx.numpy_helper.from_array(dims[start:end] if end is not None else dims[start:])


def _dtype(scope: Scope, name: str, reader: onnx.NodeProto | None = None) -> int:
    """``name``'s element type: inferred, else (a function body's untyped input) that of the
    reader's constant weight, which Conv/ConvTranspose/Gemm/MatMul require to be the same."""
    dtype = scope.dtype(name)
    if not dtype and reader is not None and len(reader.input) > 1 and reader.op_type in (
            "Conv", "ConvTranspose", "Gemm", "MatMul"):
        owner = scope.find(reader.input[1])
        weight = owner.initializers.get(reader.input[1]) if owner is not None else None
        constant = owner.producer.get(reader.input[1]) if owner is not None else None
        if weight is None and constant is not None and constant.op_type == "Constant":
            weight = attr(constant, "value")
        dtype = weight.data_type if weight is not None else 0
    if not dtype:
        raise RegionError(f"the dtype of {name!r} is unknown")
    return dtype


def _const_dims(scope: Scope, name: str) -> list[int] | None:
    """Dims of a constant input (initializer, Constant node, or inferred)."""
    owner = scope.find(name)
    if owner is not None and name in owner.initializers:
        return list(owner.initializers[name].dims)
    if owner is not None and name in owner.producer and owner.producer[name].op_type == "Constant":
        node = owner.producer[name]
        value = attr(node, "value") or attr(node, "sparse_value")
        return list(value.dims) if value is not None else None
    shape = scope.shape(name)
    return None if shape is None or None in shape else shape


def _conv_extent(scope: Scope, nodes: list[onnx.NodeProto]) -> int | None:
    """The largest spatial size any Conv/ConvTranspose of a region needs for border and
    interior outputs (None when the region has none with a known weight)."""
    sizes = [_spatial(n, w, i) for n in nodes if n.op_type in ("Conv", "ConvTranspose")
             for w in [_const_dims(scope, n.input[1]) if len(n.input) > 1 else None] if w
             for i in range(2, len(w))]
    return max(sizes, default=None)


def _frontier_shape(scope: Scope, name: str, reader: onnx.NodeProto,
                    cap_spatial: bool, conv_extent: int | None = None) -> list[int]:
    """Concrete dims of an activation input: inferred where known; else batch 2 (and 2 for a
    stacked MatMul's other leading dims), channels and spatial sizes from the reading node
    (large enough for its kernel, stride and dilation).

    ``cap_spatial``: a Conv's spatial extent is cut to that size too (a per-channel fold does
    not depend on it; border and interior outputs are both there), which makes the proof of
    a 224x224 network cost milliseconds, not seconds. A BN read first (a forward fold's
    region, BN -> Conv) is cut to ``conv_extent``, what the region's convolutions need.
    """
    shape = scope.shape(name)
    op = reader.op_type
    w = _const_dims(scope, reader.input[1]) if len(reader.input) > 1 else None
    if shape is None:
        rank = len(w) if op in ("Conv", "ConvTranspose") and w else 2 if op in ("Gemm",
                                                                              "MatMul") else None
        if rank is None:
            raise RegionError(f"the rank of {name!r} is unknown")
        shape = [None] * rank
    filled = []
    for i, d in enumerate(shape):
        if d is not None and i >= 2 and op in ("Conv", "ConvTranspose") and w and cap_spatial:
            filled.append(min(d, _spatial(reader, w, i)))
        elif d is not None and i >= 2 and op == "BatchNormalization" and conv_extent:
            filled.append(min(d, conv_extent))
        elif d is not None:
            filled.append(d)
        elif i == 0:
            filled.append(2 if not (op == "Gemm" and attr(reader, "transA", 0)) else _k(reader, w))
        elif i == 1 and op in ("Conv", "ConvTranspose") and w:
            filled.append(w[1] * int(attr(reader, "group", 1)) if op == "Conv" else w[0])
        elif i == 1 and op == "BatchNormalization":
            p = _const_dims(scope, reader.input[1])
            filled.append(p[0] if p else _fail_dim(name))
        elif i == len(shape) - 1 and op in ("Gemm", "MatMul"):
            filled.append(_k(reader, w) if not (op == "Gemm" and attr(reader, "transA", 0))
                          else 2)
        elif op == "MatMul":  # a batch dim of a stacked MatMul (tokens): any size runs it
            filled.append(2)
        elif op in ("Conv", "ConvTranspose") and w and i >= 2:
            filled.append(_spatial(reader, w, i))
        elif i >= 2:
            filled.append(8)
        else:
            filled.append(_fail_dim(name))
    return filled


def _spatial(reader: onnx.NodeProto, w: list[int], i: int) -> int:
    """A spatial size that has border and interior outputs for the reader's kernel."""
    k = w[i] if i < len(w) else 3
    dil = (attr(reader, "dilations", None) or [1] * len(w))[i - 2]
    stride = (attr(reader, "strides", None) or [1] * len(w))[i - 2]
    return (k - 1) * dil + 1 + 2 * stride


def _k(reader: onnx.NodeProto, w: list[int] | None) -> int:
    if not w or len(w) != 2:
        raise RegionError(f"the inner dimension of {label(reader)} is unknown")
    return w[1] if reader.op_type == "Gemm" and attr(reader, "transB", 0) else w[0]


def _fail_dim(name: str) -> int:
    raise RegionError(f"a dimension of {name!r} is unknown")
