"""Edits to one graph during a fold: new constants, removed nodes, renamed tensors, cleanup."""
from __future__ import annotations

import bisect
import warnings
from collections import Counter
from typing import Any, Callable, Hashable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.graph.index import _FOLDABLE_OPS, GraphIndex, referenced_names, subgraphs
from bnfold.io import spill


def _size(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


class FoldOverflow(ValueError):
    """A folded value does not fit the target dtype."""


def cast_exact(value: np.ndarray, elem_type: int, what: str, notes: list[str],
               wide: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Cast a float64 result once to ``elem_type``; refuse overflow, note flush-to-zero.

    With ``wide`` (which recomputes the float64 result, for the overflow message) ``value``
    may already be rounded to a 32/64-bit ``elem_type`` (``math.product``): it is then only
    checked, not cast again.
    """
    np_type = helper.tensor_dtype_to_np_dtype(elem_type)
    if wide is not None and value.dtype == np_type and value.dtype.itemsize > 2:
        out = value  # rounded once as it was made
    elif np.dtype(np_type).kind == "f":  # numpy's own floats warn through errstate alone
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            out = value.astype(np_type)
    else:
        with warnings.catch_warnings(), np.errstate(over="ignore", under="ignore",
                                                    invalid="ignore"):
            warnings.simplefilter("ignore")
            out = value.astype(np_type)
    if not np.isfinite(out).all():
        value = wide() if wide is not None and value is out else value
        raise FoldOverflow(f"{what}: max |value| {np.abs(value).max():.4g} overflows "
                           f"{helper.tensor_dtype_to_string(elem_type)}")
    if out.dtype.itemsize > 2:  # flush to zero is a 16-bit concern (float32 min is 1.4e-45)
        return out
    flushed = int(np.count_nonzero(out == 0) - np.count_nonzero(value == 0))
    if flushed > 0:
        notes.append(f"{what}: {flushed} folded value(s) flush to zero in "
                     f"{helper.tensor_dtype_to_string(elem_type)}")
    return out


def write_tensor(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Overwrite ``tensor``'s data with ``value`` (same dtype), keeping its name.

    A tensor whose data was external becomes inline: the folded weight then lives once, in
    the proto, and the source data file is only read from, never written. Inside an active
    ``io.spill.Spill`` a large one goes to its scratch file instead, the tensor pointing there.
    """
    same = helper.tensor_dtype_to_np_dtype(tensor.data_type) == value.dtype
    scratch = spill.current()
    if same and value.dtype.byteorder in "=|" and scratch is not None and scratch.put(tensor, value):
        return
    if same and value.dtype.byteorder in "=|" and np.little_endian:
        for field in ("float_data", "double_data", "int32_data", "int64_data", "uint64_data",
                      "external_data", "data_location"):
            tensor.ClearField(field)
        del tensor.dims[:]
        tensor.dims.extend(value.shape)
        tensor.raw_data = np.ascontiguousarray(value).tobytes()
    else:
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


class Rewriter:
    """Applies rule edits to ``graph`` and remembers what may have become unused."""

    def __init__(self, graph: onnx.GraphProto, taken_names: set[str], ir_version: int) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.taken = taken_names
        self.orphan_candidates: set[str] = set()
        self._nodes: Positions | None = None
        self._infos: Positions | None = None

    def fresh_name(self, base: str) -> str:
        name = f"{base}_bnfold"
        i = 1
        while name in self.taken:
            i += 1
            name = f"{base}_bnfold{i}"
        self.taken.add(name)
        return name

    def set_const_input(self, g: GraphIndex, node: onnx.NodeProto, index: int,
                        value: np.ndarray, base: str) -> None:
        """Make ``node.input[index]`` read ``value``: in place when the initializer is this
        node's alone, else as a new initializer so other readers keep the old value."""
        old = node.input[index] if index < len(node.input) else ""
        if (old and old in g.initializers and not g.is_overridable_input(old)
                and g.uses(old) == 1 and value.size == _size(g.initializers[old])):
            # in place, keeping the declared dims (an IR 3 graph input repeats them)
            write_tensor(g.initializers[old], value.reshape(tuple(g.initializers[old].dims)))
            g.forget(old)
            return
        name = self.fresh_name(base or node.name or "bnfold_const")
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        if self.ir_version < 4:  # IR 3 lists every initializer as a graph input too
            self.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type,
                                                                  list(value.shape)))
        if old:
            self.orphan_candidates.add(old)
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = name

    def remove_node(self, node: onnx.NodeProto) -> None:
        self.orphan_candidates.update(n for n in node.input if n)
        if self._nodes is None:
            self._nodes = Positions(self.graph.node, id)
        self._nodes.delete(id(node))

    def drop_value_info(self, name: str) -> None:
        if self._infos is None:
            self._infos = Positions(self.graph.value_info, lambda vi: vi.name)
        self._infos.delete(name)


class Positions:
    """Where each entry of a repeated field sits, so that deleting one costs a lookup, not a
    scan of the whole field (a scan per fold made folding n BNs O(n²): 1.3 s of 5 s at 1,500).

    Built on first use; positions stay valid across deletions through this object (each
    shifts the later ones by one). An edit made elsewhere makes an answer stale: that is
    detected (the entry found there has another key) and the map is rebuilt.
    """

    def __init__(self, field: Any, key: Callable[[Any], Hashable]) -> None:
        self.field, self.key = field, key
        self._build()

    def _build(self) -> None:
        self.at: dict[Hashable, tuple[int, Any]] = {}  # key -> (position when built, entry)
        for i, entry in enumerate(self.field):  # the entry is held: an id() key stays unique
            self.at.setdefault(self.key(entry), (i, entry))
        self.gone: list[int] = []  # built positions deleted since, sorted

    def delete(self, key: Hashable) -> bool:
        """Delete the first entry with ``key``; False if there is none."""
        for attempt in range(2):
            hit = self.at.get(key)
            if hit is not None:
                built = hit[0]
                now = built - bisect.bisect_left(self.gone, built)
                if now < len(self.field) and self.key(self.field[now]) == key:
                    del self.field[now]
                    del self.at[key]
                    bisect.insort(self.gone, built)
                    return True
            if attempt == 0:
                self._build()  # edited elsewhere, or a duplicate key's next entry: look again
        return False


def set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    """Set (or replace) one attribute of ``node``."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


_PURE_OPS = frozenset({"Constant", "Identity", "Shape"}) | _FOLDABLE_OPS


def remove_orphans(graph: onnx.GraphProto, candidates: set[str], ir_version: int) -> None:
    """Drop initializers and pure constant-making nodes among ``candidates`` nobody reads now.

    Only what a fold orphaned is removed; anything unused before the fold is kept. Below IR 4
    an initializer's graph-input entry goes with it; from IR 4 an initializer that is also a
    graph input is an overridable input and stays. Reads are counted once and a work list
    follows the dead chain, so a chain of thousands of nodes costs one pass.
    """
    reads: Counter[str] = Counter(o.name for o in graph.output)
    pure: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        reads.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            reads.update(referenced_names(sub) - set(node.input))
        if node.op_type in _PURE_OPS and node.domain in ("", "ai.onnx"):
            pure.update((o, node) for o in node.output if o)
    dead: set[str] = set()
    pending = list(candidates)
    while pending:
        name = pending.pop()
        if name in dead or reads[name] > 0:
            continue
        dead.add(name)
        node = pure.get(name)
        if node is not None and all(reads[o] == 0 for o in node.output if o):
            dead.update(o for o in node.output if o)
            for n in node.input:
                if n:
                    reads[n] -= 1
                    pending.append(n)
    if not dead:
        return
    inputs = {i.name for i in graph.input}
    drop = {t.name for t in graph.initializer
            if t.name in dead and (ir_version < 4 or t.name not in inputs)}
    _delete_named(graph.initializer, drop)  # in place: rebuilding would copy every tensor
    if ir_version < 4:
        _delete_named(graph.input, drop)
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if (node.op_type in _PURE_OPS and node.domain in ("", "ai.onnx") and node.output
                and all(o in dead for o in node.output if o)):
            del graph.node[i]
    _delete_named(graph.value_info, dead)


def _delete_named(field, names: set[str]) -> None:  # noqa: ANN001 (a protobuf repeated field)
    """Delete the entries of a repeated message field whose ``name`` is in ``names``."""
    if not names:
        return
    for i in range(len(field) - 1, -1, -1):
        if field[i].name in names:
            del field[i]
