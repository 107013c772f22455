"""The float64 ground truth: every float tensor, type and dtype attribute widened; the judge."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from bnfold.verification import truth


def _mixed() -> onnx.ModelProto:
    """x*w + Constant(value_float) -> Cast(to=FLOAT) -> Gather(int64 indices) -> y, fp32 types."""
    w = numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "w")
    idx = numpy_helper.from_array(np.array([2, 0], np.int64), "idx")
    nodes = [h.make_node("Mul", ["x", "w"], ["m"]),
             h.make_node("Constant", [], ["k"], value_float=0.7),
             h.make_node("Add", ["m", "k"], ["a"]),
             h.make_node("Cast", ["a"], ["c"], to=T.FLOAT),
             h.make_node("Gather", ["c", "idx"], ["y"], axis=0)]
    g = h.make_graph(nodes, "mixed", [h.make_tensor_value_info("x", T.FLOAT, [3])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2])], [w, idx],
                     value_info=[h.make_tensor_value_info("m", T.FLOAT, [3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_float_tensors_types_and_casts_become_float64() -> None:
    m64 = truth.float64_model(_mixed())
    g = m64.graph
    assert {i.name: i.data_type for i in g.initializer} == {"w": T.DOUBLE, "idx": T.INT64}
    assert [vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)] == [
        T.DOUBLE] * 3
    const = next(n for n in g.node if n.op_type == "Constant").attribute[0]
    assert const.name == "value" and const.t.data_type == T.DOUBLE
    assert next(n for n in g.node if n.op_type == "Cast").attribute[0].i == T.DOUBLE
    onnx.checker.check_model(m64, full_check=True)


def test_float64_model_computes_in_double() -> None:
    x = np.array([1.0, 2.0, 3.0])
    (y,) = ReferenceEvaluator(truth.float64_model(_mixed())).run(None, {"x": x})
    expected = np.array([0.1, 0.2, 0.3]).astype(np.float32).astype(np.float64) * x + np.float64(
        np.float32(0.7))
    assert y.dtype == np.float64 and y.tolist() == expected[[2, 0]].tolist()


def test_subgraph_initializers_and_types_are_widened_too() -> None:
    then = h.make_graph([h.make_node("Identity", ["t"], ["o"])], "then", [],
                        [h.make_tensor_value_info("o", T.FLOAT16, [1])],
                        [numpy_helper.from_array(np.array([1.5], np.float16), "t")])
    g = h.make_graph([h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then)],
                     "g", [h.make_tensor_value_info("cond", T.BOOL, [])],
                     [h.make_tensor_value_info("y", T.FLOAT16, [1])])
    m64 = truth.float64_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    branch = m64.graph.node[0].attribute[0].g
    assert branch.initializer[0].data_type == T.DOUBLE
    assert branch.output[0].type.tensor_type.elem_type == T.DOUBLE
    assert m64.graph.input[0].type.tensor_type.elem_type == T.BOOL


def test_original_model_is_not_modified() -> None:
    m = _mixed()
    before = m.SerializeToString()
    truth.float64_model(m)
    assert m.SerializeToString() == before


def test_judge_prefers_the_output_closer_to_the_truth() -> None:
    exact = np.array([1.0, 2.0])
    t = truth.judge(np.array([1.0, 2.01], np.float32), np.array([1.0, 2.0], np.float32), exact,
                    "onnx.reference")
    assert t is not None and t.folded_closer and t.folded_error == 0.0
    assert t.original_error == float(np.float32(2.01)) - 2.0
    worse = truth.judge(exact.astype(np.float32), np.array([1.0, 2.5], np.float32), exact, "e")
    assert worse is not None and not worse.folded_closer


def test_judge_counts_differing_elements_for_integer_outputs() -> None:
    t = truth.judge(np.array([0, 1, 2]), np.array([0, 1, 1]), np.array([0, 1, 1]), "e")
    assert t is not None and (t.original_error, t.folded_error) == (1.0, 0.0)
