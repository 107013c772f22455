"""GraphIndex: producers, consumers (subgraph reads included), and constant discovery."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.graph.index import GraphIndex, referenced_names, value_infos, walk_graphs
from modelgen import Builder


def index(model: onnx.ModelProto) -> GraphIndex:
    shapes, dtypes = value_infos(model)[()]
    return GraphIndex(model.graph, ir_version=model.ir_version, opset=17, shapes=shapes,
                      dtypes=dtypes)


def test_constants_through_constant_nodes_identity_and_shape_subgraphs():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    w = b.const(np.ones((2, 3, 1, 1)))
    c = b.node("Constant", [], value=numpy_helper.from_array(np.array([1.5], np.float32)))
    ident = b.node("Identity", [c])
    shape = b.node("Shape", [w])
    dynamic = b.node("Shape", [x])
    b.output(b.node("Conv", [x, w]))
    g = index(b.model())
    assert g.const(ident).tolist() == [1.5]
    assert g.const(shape).tolist() == [2, 3, 1, 1]
    assert g.const(dynamic) is None and g.const(x) is None


def test_overridable_initializer_is_not_constant_from_ir4():
    b = Builder(ir_version=8)
    w = b.const(np.ones(3))
    b.input(w, [3])
    b.input("x", [3])
    b.output(b.node("Add", ["x", w]))
    assert index(b.model()).const(w) is None
    model = b.model()
    model.ir_version = 3
    assert index(model).const(w) is not None


def test_subgraph_reads_count_as_consumers_of_the_if_node():
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    els = helper.make_graph([helper.make_node("Neg", ["t"], ["n"])], "else", [],
                            [helper.make_tensor_value_info("n", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="producer"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=els)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2]),
                                           helper.make_tensor_value_info("c", 9, [])],
                              [helper.make_tensor_value_info("y", 1, [2])])
    g = GraphIndex(graph, ir_version=8, opset=17)
    assert [n.name for n in g.consumers("t")] == ["if"]
    assert g.producer("t").name == "producer" and g.uses("y") == 1


def _param_chain(op: str, n: int) -> tuple[onnx.ModelProto, str, np.ndarray]:
    """A vector passed through ``n`` Identity nodes or ``n`` Adds of 0.25; its expected value."""
    b = Builder()
    start = np.array([1.0, 2.0, 3.0])
    t = b.const(start, "v")
    step = b.const(np.full(3, 0.25), "step")
    for _ in range(n):
        t = b.node(op, [t] if op == "Identity" else [t, step])
    b.output(b.node("Add", [b.input("x", [3]), t]))
    expected = start + (0.25 * n if op == "Add" else 0.0)
    return b.model(), t, expected


@pytest.mark.parametrize("op, n", [("Identity", 1200), ("Add", 400)])
def test_constant_behind_a_long_chain_is_found_without_recursion(op, n):
    model, name, expected = _param_chain(op, n)
    np.testing.assert_allclose(index(model).const(name), expected, rtol=1e-6)


def test_walk_graphs_visits_itself_first_then_subgraphs_depth_first_in_node_order():
    def branch(name: str, inner: onnx.GraphProto | None = None) -> onnx.GraphProto:
        nodes = [helper.make_node("If", ["c"], [name], then_branch=inner, else_branch=inner)
                 if inner else helper.make_node("Identity", ["x"], [name])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(name, 1, None)])

    inner = branch("inner")
    nodes = [helper.make_node("If", ["c"], ["a"], then_branch=branch("t", inner),
                              else_branch=branch("e")),
             helper.make_node("If", ["c"], ["b"], then_branch=branch("t2"),
                              else_branch=branch("e2"))]
    graph = helper.make_graph(nodes, "main", [], [])
    names = [g.name for _, g in walk_graphs(graph)]
    assert names == ["main", "e", "t", "inner", "inner", "e2", "t2"]  # attributes by name
    keys = [k for k, _ in walk_graphs(graph)]
    assert keys[3] == ((0, "then_branch"), (0, "else_branch"))
    assert referenced_names(graph) >= {"c", "x"}


def external_constant(folder, values: np.ndarray) -> onnx.TensorProto:
    """A tensor whose data lives in ``folder/weights.bin``, as a Constant node holds it."""
    from onnx import external_data_helper as edh

    (folder / "weights.bin").write_bytes(values.astype("<f4").tobytes())
    t = numpy_helper.from_array(values.astype(np.float32), "scale")
    edh.set_external_data(t, "weights.bin", offset=0, length=values.size * 4)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    return t


def test_constant_node_external_data_is_read_from_the_model_folder_not_the_cwd(tmp_path,
                                                                               monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "cwd").mkdir()
    want = np.array([1.0, 2.0, 3.0], np.float32)
    t = external_constant(tmp_path / "model", want)
    external_constant(tmp_path / "cwd", np.array([7.0, 8.0, 9.0], np.float32))  # the decoy
    monkeypatch.chdir(tmp_path / "cwd")
    b = Builder()
    c = b.node("Constant", [], value=t)
    b.output(b.node("Identity", [c]))
    model = b.model()
    g = GraphIndex(model.graph, ir_version=model.ir_version, opset=17,
                   base_dir=str(tmp_path / "model"))
    assert g.const(c).tolist() == want.tolist()
    unplaced = GraphIndex(model.graph, ir_version=model.ir_version, opset=17)
    assert unplaced.const(c) is None  # no folder known: unknown, never the cwd's file
