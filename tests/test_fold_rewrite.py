"""Rewriter deletions by position: the right entry goes, in any order, after outside edits too."""
from __future__ import annotations

from onnx import helper

from bnfold.folding.rewrite import Positions, Rewriter


def _graph(n: int):  # noqa: ANN202
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    infos = [helper.make_empty_tensor_value_info(f"t{i}") for i in range(n)]
    return helper.make_graph(nodes, "g", [], [], value_info=infos)


def test_nodes_deleted_in_any_order_leave_exactly_the_others() -> None:
    g = _graph(10)
    rw = Rewriter(g, set(), 8)
    held = list(g.node)
    for i in (7, 0, 9, 3, 4):
        rw.remove_node(held[i])
    assert [n.name for n in g.node] == ["n1", "n2", "n5", "n6", "n8"]
    assert rw.orphan_candidates == {"t7", "t0", "t9", "t3", "t4"}


def test_a_deletion_made_elsewhere_is_noticed_and_the_map_rebuilt() -> None:
    g = _graph(6)
    rw = Rewriter(g, set(), 8)
    held = list(g.node)
    rw.remove_node(held[1])
    del g.node[0]  # not through the rewriter: every built position after it is now off by one
    rw.remove_node(held[4])
    rw.drop_value_info("t2")
    del g.value_info[0]
    rw.drop_value_info("t5")
    assert [n.name for n in g.node] == ["n2", "n3", "n5"]
    assert [v.name for v in g.value_info] == ["t1", "t3", "t4"]


def test_deleting_a_key_not_there_changes_nothing() -> None:
    g = _graph(3)
    positions = Positions(g.value_info, lambda v: v.name)
    assert not positions.delete("absent")
    assert positions.delete("t1") and not positions.delete("t1")
    assert [v.name for v in g.value_info] == ["t0", "t2"]


def test_cast_exact_checks_a_rounded_value_and_reports_overflow_in_float64() -> None:
    import numpy as np
    import onnx
    import pytest

    from bnfold.folding import math as fm
    from bnfold.folding.rewrite import FoldOverflow, cast_exact

    w = np.array([[1.0], [3e38]], dtype=np.float32)
    s = np.array([[2.0], [10.0]])
    fine = fm.product(w[:1], s[:1], np.dtype(np.float32))
    assert cast_exact(fine, onnx.TensorProto.FLOAT, "w", [], lambda: w[:1] * s[:1]) is fine
    with pytest.raises(FoldOverflow) as rounded:
        cast_exact(fm.product(w, s, np.dtype(np.float32)), onnx.TensorProto.FLOAT, "w", [],
                   lambda: fm.product(w, s))
    with pytest.raises(FoldOverflow) as wide:
        cast_exact(fm.product(w, s), onnx.TensorProto.FLOAT, "w", [])
    assert str(rounded.value) == str(wide.value) and "3e+39" in str(wide.value)
