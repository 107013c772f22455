"""bnfold.inputs: specs, the one shape policy (--shape, --dim, batch, size), seeded typed values."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from bnfold.errors import InputError
from bnfold.inputs import (ShapeRequest, TensorSpec, check_signatures, graph_inputs, graph_outputs,
                           parse_dim, parse_dims, parse_shape)

F32 = np.dtype(np.float32)


def _model(ins: list[tuple[str, int, list | None]], outs: list[tuple[str, int, list | None]]
           ) -> onnx.ModelProto:
    """Identity-style model: each output copies the first input (types as declared)."""
    nodes = [h.make_node("Identity", [ins[0][0]], [o[0]]) for o in outs]
    g = h.make_graph(nodes, "m", [h.make_tensor_value_info(*i) for i in ins],
                     [h.make_tensor_value_info(*o) for o in outs])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_specs_read_names_dtypes_and_symbolic_dims() -> None:
    m = _model([("x", T.FLOAT, ["N", 3, 8, 8]), ("ids", T.INT64, [2]), ("b", T.BFLOAT16, [1])],
               [("y", T.FLOAT, None)])
    x, ids, b = graph_inputs(m)
    assert (x.name, x.dtype, x.shape) == ("x", np.float32, ("N", 3, 8, 8))
    assert (ids.dtype, ids.shape) == (np.int64, (2,))
    assert b.dtype == np.dtype(ml_dtypes.bfloat16)
    assert graph_outputs(m)[0].shape is None and x.shape_text() == "Nx3x8x8"


def test_initializers_listed_as_inputs_are_not_fed() -> None:
    m = _model([("x", T.FLOAT, [1]), ("w", T.FLOAT, [1])], [("y", T.FLOAT, [1])])
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(1, np.float32), "w"))
    assert [s.name for s in graph_inputs(m)] == ["x"]


def test_different_signatures_are_refused() -> None:
    a = _model([("x", T.FLOAT, ["N", 3])], [("y", T.FLOAT, ["N", 3])])
    with pytest.raises(InputError, match="different inputs"):
        check_signatures(a, _model([("z", T.FLOAT, ["N", 3])], [("y", T.FLOAT, ["N", 3])]))
    with pytest.raises(InputError, match="different outputs"):
        check_signatures(a, _model([("x", T.FLOAT, ["N", 3])], [("q", T.FLOAT, ["N", 3])]))
    with pytest.raises(InputError, match="dtype"):
        check_signatures(a, _model([("x", T.DOUBLE, ["N", 3])], [("y", T.DOUBLE, ["N", 3])]))
    check_signatures(a, _model([("x", T.FLOAT, ["B", 3])], [("y", T.FLOAT, ["B", 3])]))


def test_parse_shape_dim_and_dims() -> None:
    assert parse_shape("input:1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_shape("ns:x:2X5") == ("ns:x", (2, 5))
    assert parse_dim("seq=128") == ("seq", 128)
    assert parse_dims("1,3,32,32", minimum=1) == parse_dims("1x3x32x32") == (1, 3, 32, 32)
    for bad in ("input", "input:", ":1x2", "input:1xa", "input:1x-2"):
        with pytest.raises(InputError, match="--shape"):
            parse_shape(bad)
    for bad in ("seq", "seq=", "=4", "seq=0", "seq=a"):
        with pytest.raises(InputError, match="SYMBOL=N"):
            parse_dim(bad)
    for bad in ("", "1x", "0x3", "axb"):
        with pytest.raises(InputError, match="bad --shape"):
            parse_dims(bad, what="--shape", minimum=1)


def test_request_takes_texts_or_mappings_alike() -> None:
    texts = ShapeRequest.of(["x:1x3x8x8"], ["seq=4"])
    assert texts == ShapeRequest.of({"x": [1, 3, 8, 8]}, {"seq": 4})
    assert texts.shapes == {"x": (1, 3, 8, 8)} and texts.dims == {"seq": 4}
    with pytest.raises(InputError, match=">= 1"):
        ShapeRequest.of(dims={"seq": 0})


def test_policy_order_shape_then_dim_then_fixed_then_batch_then_size() -> None:
    spec = TensorSpec("x", F32, ("N", 3, "H", "W"))
    assert ShapeRequest().resolve(spec, 8, size=32) == (8, 3, 32, 32)
    assert ShapeRequest.of(dims={"H": 5}).resolve(spec, 8, size=32) == (8, 3, 5, 32)
    assert ShapeRequest.of(dims={"N": 2}).resolve(spec, 8, size=32) == (2, 3, 32, 32)
    assert ShapeRequest.of({"x": (2, 3, 5, 7)}, {"H": 9}).resolve(spec, 8, 32) == (2, 3, 5, 7)


def test_open_dim_without_size_names_dim_and_shape_flags() -> None:
    with pytest.raises(InputError, match=r"'H' is symbolic.*--dim H=N or --shape x:DIMS"):
        ShapeRequest().resolve(TensorSpec("x", F32, ("N", 3, "H")), 1)
    with pytest.raises(InputError, match=r"\(unnamed\).*with --shape x:DIMS"):
        ShapeRequest().resolve(TensorSpec("x", F32, ("N", None)), 1)
    with pytest.raises(InputError, match="unknown rank"):
        ShapeRequest().resolve(TensorSpec("x", F32, None), 1, size=4)


def test_user_shape_that_does_not_fit_is_refused() -> None:
    spec = TensorSpec("x", F32, ("N", 3, 8, 8))
    for wrong in ((1, 4, 8, 8), (1, 3, 8)):
        with pytest.raises(InputError, match="does not fit"):
            ShapeRequest.of({"x": wrong}).resolve(spec, 1)


def test_unknown_input_or_symbol_is_refused() -> None:
    specs = [TensorSpec("x", F32, ("N", "seq"))]
    ShapeRequest.of(["x:1x2"], ["seq=3"]).check(specs)
    with pytest.raises(InputError, match=r"--shape names unknown input\(s\) \['y'\]"):
        ShapeRequest.of(["y:1x2"]).check(specs)
    with pytest.raises(InputError, match=r"--dim names unknown symbol\(s\) \['len'\].*\['N', 'seq'\]"):
        ShapeRequest.of(dims=["len=3"]).check(specs)


def test_batch_is_open_unless_fixed_by_model_shape_or_dim() -> None:
    specs = [TensorSpec("x", F32, ("N", 3))]
    assert ShapeRequest().batch_is_dynamic(specs)
    assert not ShapeRequest.of({"x": (1, 3)}).batch_is_dynamic(specs)
    assert not ShapeRequest.of(dims={"N": 4}).batch_is_dynamic(specs)
    assert not ShapeRequest().batch_is_dynamic([TensorSpec("x", F32, (1, 3))])


def test_batches_default_asked_or_the_fixed_one() -> None:
    dyn, fixed = [TensorSpec("x", F32, ("N", 3))], [TensorSpec("x", F32, (2, 3))]
    assert ShapeRequest().batches(dyn, None, (1, 8)) == [1, 8]
    assert ShapeRequest().batches(dyn, [3], (1, 8)) == [3]
    assert ShapeRequest().batches(fixed, None, (1, 8)) == [None]
    assert ShapeRequest().batches(fixed, [2], (1, 8)) == [None]  # the fixed batch itself is fine
    assert ShapeRequest.of(dims={"N": 5}).fixed_batch(dyn) == 5
    with pytest.raises(InputError, match="batch size 4 needs a symbolic batch.*fixed at 2"):
        ShapeRequest().batches(fixed, [4], (1,))


def test_sized_inputs_are_those_with_open_non_batch_dims() -> None:
    specs = [TensorSpec("img", F32, ("N", 3, "H", "W")),
             TensorSpec("ids", np.dtype(np.int64), ("N", 4)),
             TensorSpec("seq", F32, (1, "T"))]
    assert ShapeRequest().sized_inputs(specs) == ["img", "seq"]
    assert ShapeRequest.of({"img": (1, 3, 8, 8)}).sized_inputs(specs) == ["seq"]
    assert ShapeRequest.of({"img": (1, 3, 8, 8)}, {"T": 6}).sized_inputs(specs) == []


def test_feeds_are_seeded_and_typed_for_every_dtype() -> None:
    specs = [TensorSpec("f16", np.dtype(np.float16), ("N", 4)),
             TensorSpec("bf16", np.dtype(ml_dtypes.bfloat16), ("N", 4)),
             TensorSpec("f64", np.dtype(np.float64), ("N", 4)),
             TensorSpec("i", np.dtype(np.int32), (3,)),
             TensorSpec("u8", np.dtype(np.uint8), (3,)),
             TensorSpec("b", np.dtype(np.bool_), (50,))]
    a = ShapeRequest().feed(specs, 2, seed=7)
    b = ShapeRequest().feed(specs, 2, seed=7)
    c = ShapeRequest().feed(specs, 2, seed=8)
    assert {k: (v.dtype, v.shape) for k, v in a.items()} == {
        s.name: (s.dtype, ShapeRequest().resolve(s, 2)) for s in specs}
    assert a["i"].min() >= 0 and a["i"].max() < 10 and a["u8"].max() < 10
    assert a["b"].any() and not a["b"].all()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["f16"], c["f16"])
    assert a["f16"].std() > 0 and a["bf16"].astype(np.float32).std() > 0


def test_string_inputs_are_refused_with_the_data_flag() -> None:
    with pytest.raises(InputError, match="--data"):
        ShapeRequest().feed([TensorSpec("s", np.dtype(object), (2,))], None, 0)


def test_declared_zero_dim_runs_as_batch_or_one() -> None:
    spec = TensorSpec("x", F32, (0, 0))
    assert ShapeRequest().resolve(spec, 4) == (4, 1)
