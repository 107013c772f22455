"""Arrays handed to the ORT child through a shared file: exact round trip, mapped by the child,
crash reload, file removed on close."""
from __future__ import annotations

import os
import signal

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import external_data_helper as edh
from onnx import numpy_helper

from bnfold.verification import engines
from bnfold.verification.shared import SharedArrays


def _add_weight() -> onnx.ModelProto:
    """y = x + w, with w a graph input (a fed weight)."""
    g = h.make_graph([h.make_node("Add", ["x", "w"], ["y"])], "add",
                     [h.make_tensor_value_info("x", T.FLOAT, [2, 3]),
                      h.make_tensor_value_info("w", T.FLOAT, [2, 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_raw_typed_and_numpy_data_round_trip_exactly() -> None:
    w32 = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    w16 = np.linspace(-2, 2, 5).astype(np.float16)
    typed = h.make_tensor("typed", T.FLOAT, [2, 2], [1.5, -2.0, 3.25, 0.0])  # float_data, no raw
    with SharedArrays() as shared:
        shared.add_tensor("a", numpy_helper.from_array(w32, "a"))
        shared.add_tensor("b", numpy_helper.from_array(w16, "b"))
        shared.add_tensor("c", typed)
        shared.add("d", np.array([7, 8, 9], np.int64))
        got = shared.arrays()
        assert list(shared) == ["a", "b", "c", "d"] and "c" in shared and "e" not in shared
        assert all(e[3] % 64 == 0 for e in shared.entries)  # aligned starts
    np.testing.assert_array_equal(got["a"], w32)
    assert got["b"].dtype == np.float16 and np.array_equal(got["b"], w16)
    np.testing.assert_array_equal(got["c"], np.array([[1.5, -2.0], [3.25, 0.0]], np.float32))
    np.testing.assert_array_equal(got["d"], [7, 8, 9])


def test_close_removes_the_file() -> None:
    shared = SharedArrays()
    shared.add("x", np.ones(3, np.float32))
    path = shared.path
    assert os.path.exists(path)
    shared.close()
    assert not os.path.exists(path)


def test_raw_data_of_the_wrong_length_is_refused() -> None:
    t = numpy_helper.from_array(np.ones((2, 2), np.float32), "t")
    t.raw_data = t.raw_data[:-4]
    with SharedArrays() as shared, pytest.raises(ValueError, match="raw data of 12 bytes"):
        shared.add_tensor("t", t)


def test_child_feeds_mapped_arrays_and_reloads_them_after_a_crash() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = {"x": np.ones((2, 3), np.float32)}
    with engines.OrtProcess() as proc, SharedArrays() as shared:
        shared.add("w", w)
        proc.load("m", _add_weight().SerializeToString(), "add", ["CPUExecutionProvider"],
                  "disabled", fixed=shared)
        np.testing.assert_array_equal(proc.run("m", x)["y"], w + 1)
        assert proc._proc is not None
        os.kill(proc._proc.pid, signal.SIGKILL)
        proc._proc.wait()
        with pytest.raises(engines.Crashed):
            proc.run("m", x)
        np.testing.assert_array_equal(proc.run("m", x)["y"], w + 1)  # reloaded from the file


def test_an_external_tensor_is_read_in_its_own_file_at_its_offset(tmp_path) -> None:
    """Not copied: the entry names the data file and offset, and the child maps that file."""
    w = np.arange(300, dtype=np.float32).reshape(3, 100)
    (tmp_path / "d.bin").write_bytes(b"x" * 10 + w.tobytes() + b"tail")
    t = numpy_helper.from_array(w, "w")
    edh.set_external_data(t, "d.bin", offset=10, length=w.nbytes)
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    with SharedArrays() as shared:
        shared.add("first", np.ones(3, np.float16))
        shared.add_tensor("w", t, str(tmp_path))
        np.testing.assert_array_equal(shared.arrays()["w"], w)  # unaligned in its file: read
        assert shared.entries[1][3:] == (10, str(tmp_path / "d.bin"))
        assert shared.nbytes == 6 and os.path.getsize(shared.path) == 6  # nothing copied
        (tmp_path / "d.bin").write_bytes(b"x" * 10 + w.tobytes()[:-1])
        with pytest.raises(ValueError, match="ends before its length"):
            shared.add_tensor("cut", t, str(tmp_path))
        t.raw_data = b"0"
        edh.set_external_data(t, "d.bin", offset=10, length=w.nbytes - 4)
        t.ClearField("raw_data")
        with pytest.raises(ValueError, match="external data of 1196 bytes"):
            shared.add_tensor("short", t, str(tmp_path))
        with pytest.raises(ValueError, match="folder is unknown"):
            shared.add_tensor("nowhere", t)


def test_a_scalar_keeps_its_shape() -> None:
    with SharedArrays() as shared:
        shared.add("s", np.array(3, np.int64))
        shared.add("v", np.array([3], np.int64))
        arrays = shared.arrays()
    assert arrays["s"].shape == () and arrays["v"].shape == (1,) and int(arrays["s"]) == 3
