"""A prepared fold: the new constants and attributes each node gets, computed before any edit.

Rules compute every folded value (float64, cast once) while matching, so a fold that
touches several nodes (a Concat's producers) either applies whole or not at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnfold.folding.rewrite import Rewriter, set_attr
from bnfold.graph.index import GraphIndex


@dataclass
class Edit:
    """What one absorbing node becomes: constants by input index, attributes, op type, and a
    bias it cannot hold itself (written as an Add after it)."""

    node: onnx.NodeProto
    consts: list[tuple[int, np.ndarray, str]] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)
    op_type: str | None = None
    bias_add: np.ndarray | None = None

    def apply(self, g: GraphIndex, rw: Rewriter) -> None:
        for index, value, base in self.consts:
            rw.set_const_input(g, self.node, index, value, base)
        for name, value in self.attrs.items():
            set_attr(self.node, name, value)
        if self.op_type:
            self.node.op_type = self.op_type
        if self.bias_add is not None:
            _append_bias(self.node, self.bias_add, rw)


def _append_bias(node: onnx.NodeProto, bias: np.ndarray, rw: Rewriter) -> None:
    """node -> Add(bias), the Add writing the node's old output name, placed right after it."""
    out = node.output[0]
    inner = rw.fresh_name(out)
    const = rw.fresh_name(f"{node.name or out}_bias")
    rw.graph.initializer.append(numpy_helper.from_array(bias, const))
    if rw.ir_version < 4:
        rw.graph.input.append(helper.make_tensor_value_info(
            const, helper.np_dtype_to_tensor_dtype(bias.dtype), list(bias.shape)))
    node.output[0] = inner
    add = helper.make_node("Add", [inner, const], [out], name=rw.fresh_name(f"{node.name or out}_add"))
    position = next(i for i, n in enumerate(rw.graph.node) if n is node)
    rw.graph.node.insert(position + 1, add)
