"""bnfold.bench.inputs: shapes from declared inputs, batch handling, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.bench.inputs import (
    InputSpec,
    default_batch,
    make_inputs,
    read_input_specs,
    resolve_shape,
)
from bnfold.errors import InputError


def _model(path: Path) -> str:
    """Add(x, w): x [N, 3, "seq"] float, k [2] int64 unused, w an initializer listed as input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "seq"])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [2])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x, k, w], [y],
                          [numpy_helper.from_array(np.ones(1, np.float32), "w")])
    onnx.save(helper.make_model(g), path)
    return str(path)


def test_read_specs_skips_initializers_and_keeps_symbols(tmp_path: Path) -> None:
    specs = read_input_specs(_model(tmp_path / "m.onnx"))
    assert [s.name for s in specs] == ["x", "k"]
    assert specs[0].dims == ("N", 3, "seq") and specs[0].dtype == np.float32
    assert specs[1].dtype == np.int64


def test_read_specs_bad_file_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot read"):
        read_input_specs(str(bad))


def test_leading_symbol_is_batch_and_named_dims_resolve() -> None:
    spec = InputSpec("x", np.dtype(np.float32), ("N", 3, "seq"))
    assert resolve_shape(spec, 4, {"seq": 7}) == (4, 3, 7)


def test_unresolved_symbol_names_the_dim_option() -> None:
    spec = InputSpec("x", np.dtype(np.float32), ("N", 3, "seq"))
    with pytest.raises(InputError, match="--dim seq=N"):
        resolve_shape(spec, 1, {})


def test_fixed_dims_are_kept_and_fixed_batch_mismatch_is_input_error() -> None:
    f = np.dtype(np.float32)
    specs = [InputSpec("x", f, (1, 3)), InputSpec("shape", np.dtype(np.int64), (2,))]
    assert resolve_shape(specs[1], 8, {}) == (2,)
    assert make_inputs(specs, 1)["x"].shape == (1, 3)
    with pytest.raises(InputError, match="fixed leading dimension"):
        make_inputs(specs, 8)


def test_default_batch_uses_fixed_leading_dim() -> None:
    f = np.dtype(np.float32)
    assert default_batch([InputSpec("a", f, ("N", 3)), InputSpec("b", f, (5, 2))]) == 5
    assert default_batch([InputSpec("a", f, ("N", 3))]) == 1


def test_make_inputs_deterministic_with_dtypes(tmp_path: Path) -> None:
    specs = read_input_specs(_model(tmp_path / "m.onnx"))
    a = make_inputs(specs, 4, {"seq": 5}, seed=9)
    b = make_inputs(specs, 4, {"seq": 5}, seed=9)
    assert a["x"].shape == (4, 3, 5) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].std() > 0
    np.testing.assert_array_equal(a["k"], np.zeros(2, np.int64))
