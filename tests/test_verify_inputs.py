"""Input specs, shape resolution, seeded feeds, .npz/.npy reading and signature checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from bnfold.errors import InputError
from bnfold.verify import inputs


def _model(inputs_: list[tuple[str, int, list]], outputs: list[tuple[str, int, list]]) -> onnx.ModelProto:
    """Identity-style model: each output copies the first input (types as declared)."""
    nodes = [h.make_node("Identity", [inputs_[0][0]], [o[0]]) for o in outputs]
    g = h.make_graph(nodes, "m", [h.make_tensor_value_info(*i) for i in inputs_],
                     [h.make_tensor_value_info(*o) for o in outputs])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_specs_read_names_dtypes_and_symbolic_dims() -> None:
    m = _model([("x", T.FLOAT, ["N", 3, 8, 8]), ("ids", T.INT64, [2])], [("y", T.FLOAT, None)])
    x, ids = inputs.graph_inputs(m)
    assert (x.name, x.dtype, x.shape, x.is_dynamic) == ("x", np.float32, ("N", 3, 8, 8), True)
    assert (ids.dtype, ids.shape, ids.is_dynamic) == (np.int64, (2,), False)
    assert inputs.graph_outputs(m)[0].shape is None


def test_initializers_listed_as_inputs_are_not_fed() -> None:
    m = _model([("x", T.FLOAT, [1]), ("w", T.FLOAT, [1])], [("y", T.FLOAT, [1])])
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(1, np.float32), "w"))
    assert [s.name for s in inputs.graph_inputs(m)] == ["x"]


def test_parse_shape() -> None:
    assert inputs.parse_shape("input:1x3x224x224") == ("input", (1, 3, 224, 224))
    assert inputs.parse_shape("ns:x:2X5") == ("ns:x", (2, 5))
    for bad in ("input", "input:", ":1x2", "input:1xa"):
        with pytest.raises(InputError):
            inputs.parse_shape(bad)


def test_resolve_shape_batch_defaults_and_user_shape() -> None:
    spec = inputs.TensorSpec("x", np.dtype(np.float32), ("N", 3, "H", 8))
    assert inputs.resolve_shape(spec, 8, None) == (8, 3, inputs.DEFAULT_DIM, 8)
    assert inputs.resolve_shape(spec, 1, {"x": (2, 3, 5, 8)}) == (2, 3, 5, 8)


def test_user_shape_that_does_not_fit_is_refused() -> None:
    spec = inputs.TensorSpec("x", np.dtype(np.float32), ("N", 3, 8, 8))
    with pytest.raises(InputError, match="does not fit"):
        inputs.resolve_shape(spec, 1, {"x": (1, 4, 8, 8)})
    with pytest.raises(InputError, match="does not fit"):
        inputs.resolve_shape(spec, 1, {"x": (1, 3, 8)})


def test_random_feeds_are_seeded_and_typed() -> None:
    specs = [inputs.TensorSpec("f", np.dtype(np.float16), ("N", 4)),
             inputs.TensorSpec("i", np.dtype(np.int32), (3,)),
             inputs.TensorSpec("b", np.dtype(np.bool_), (5,))]
    a = inputs.random_feeds(specs, 2, None, seed=7)
    b = inputs.random_feeds(specs, 2, None, seed=7)
    c = inputs.random_feeds(specs, 2, None, seed=8)
    assert a["f"].shape == (2, 4) and a["f"].dtype == np.float16
    assert a["i"].dtype == np.int32 and a["i"].min() >= 0 and a["i"].max() < 10
    assert a["b"].dtype == np.bool_
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["f"], c["f"])


def test_batch_is_dynamic_unless_fixed_by_user() -> None:
    specs = [inputs.TensorSpec("x", np.dtype(np.float32), ("N", 3))]
    assert inputs.batch_is_dynamic(specs, None)
    assert not inputs.batch_is_dynamic(specs, {"x": (1, 3)})
    assert not inputs.batch_is_dynamic([inputs.TensorSpec("x", np.dtype(np.float32), (1, 3))], None)


def test_different_signatures_are_refused() -> None:
    a = _model([("x", T.FLOAT, ["N", 3])], [("y", T.FLOAT, ["N", 3])])
    with pytest.raises(InputError, match="different inputs"):
        inputs.check_signatures(a, _model([("z", T.FLOAT, ["N", 3])], [("y", T.FLOAT, ["N", 3])]))
    with pytest.raises(InputError, match="different outputs"):
        inputs.check_signatures(a, _model([("x", T.FLOAT, ["N", 3])], [("q", T.FLOAT, ["N", 3])]))
    with pytest.raises(InputError, match="dtype"):
        inputs.check_signatures(a, _model([("x", T.DOUBLE, ["N", 3])], [("y", T.DOUBLE, ["N", 3])]))
    inputs.check_signatures(a, _model([("x", T.FLOAT, ["B", 3])], [("y", T.FLOAT, ["B", 3])]))


def test_load_npz_by_name_and_single_unnamed_array(tmp_path: Path) -> None:
    specs = [inputs.TensorSpec("x", np.dtype(np.float32), ("N", 2))]
    np.savez(tmp_path / "named.npz", x=np.ones((5, 2), np.float64))
    np.savez(tmp_path / "anon.npz", np.zeros((3, 2), np.float32))
    named = inputs.load_npz(tmp_path / "named.npz", specs)
    assert named["x"].dtype == np.float32 and named["x"].shape == (5, 2)
    assert inputs.load_npz(tmp_path / "anon.npz", specs)["x"].shape == (3, 2)


def test_load_npz_errors_are_input_errors(tmp_path: Path) -> None:
    specs = [inputs.TensorSpec("x", np.dtype(np.float32), ("N", 2)),
             inputs.TensorSpec("y", np.dtype(np.int64), ("N",))]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        inputs.load_npz(tmp_path / "junk.npz", specs)
    with pytest.raises(InputError, match="cannot read"):
        inputs.load_npz(tmp_path / "missing.npz", specs)
    np.savez(tmp_path / "partial.npz", x=np.ones((1, 2)))
    with pytest.raises(InputError, match="lacks input"):
        inputs.load_npz(tmp_path / "partial.npz", specs)
    np.savez(tmp_path / "rank.npz", x=np.ones(2), y=np.ones(1, np.int64))
    with pytest.raises(InputError, match="expects"):
        inputs.load_npz(tmp_path / "rank.npz", specs)
    np.savez(tmp_path / "floatids.npz", x=np.ones((1, 2)), y=np.ones(1))
    with pytest.raises(InputError, match="int64"):
        inputs.load_npz(tmp_path / "floatids.npz", specs)


def test_load_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "l.npy", np.array([[1], [2], [3]]))
    assert inputs.load_labels(tmp_path / "l.npy").tolist() == [1, 2, 3]
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(InputError, match="integer"):
        inputs.load_labels(tmp_path / "f.npy")


def test_split_batches_fixed_and_dynamic() -> None:
    feed = {"x": np.arange(10).reshape(10, 1)}
    fixed = inputs.split_batches(feed, [inputs.TensorSpec("x", np.dtype(np.int64), (5, 1))])
    assert [c["x"].shape[0] for c in fixed] == [5, 5]
    dyn = inputs.split_batches(feed, [inputs.TensorSpec("x", np.dtype(np.int64), ("N", 1))],
                               max_batch=4)
    assert [c["x"].shape[0] for c in dyn] == [4, 4, 2]
    assert np.array_equal(np.concatenate([c["x"] for c in dyn]), feed["x"])
    with pytest.raises(InputError, match="fixed batch"):
        inputs.split_batches(feed, [inputs.TensorSpec("x", np.dtype(np.int64), (3, 1))])


def test_sized_inputs_are_those_with_symbolic_non_batch_dims() -> None:
    specs = [inputs.TensorSpec("img", np.dtype(np.float32), ("N", 3, "H", "W")),
             inputs.TensorSpec("ids", np.dtype(np.int64), ("N", 4)),
             inputs.TensorSpec("seq", np.dtype(np.float32), (1, "T"))]
    assert inputs.sized_inputs(specs, None) == ["img", "seq"]
    assert inputs.sized_inputs(specs, {"img": (1, 3, 8, 8)}) == ["seq"]


def test_random_feeds_use_the_chosen_size_for_symbolic_dims() -> None:
    spec = inputs.TensorSpec("x", np.dtype(np.float32), ("N", 3, "H", "W"))
    assert inputs.random_feeds([spec], 1, None, 0, size=64)["x"].shape == (1, 3, 64, 64)
    assert inputs.input_sets([spec], seeds=[0], shapes={}, batch_sizes=[2], data=None,
                             size=96)[0][1][0]["x"].shape == (2, 3, 96, 96)
