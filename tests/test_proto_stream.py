"""A model written one initializer at a time is byte for byte its SerializeToString."""
from __future__ import annotations

import io

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnfold.io.proto_stream import varint, write_model


def _model() -> onnx.ModelProto:
    big = numpy_helper.from_array(np.arange(70000, dtype=np.float32).reshape(700, 100), "big")
    big.doc_string = "after raw_data in field order"
    small = numpy_helper.from_array(np.ones(3, np.float32), "small")
    typed = helper.make_tensor("typed", TensorProto.INT64, [2], [-1, 1 << 40])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "big"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 700])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100])],
                              [small, big, typed], doc_string="graph doc")
    graph.value_info.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="test")
    helper.set_model_props(model, {"k": "v"})
    return model


def _written(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    assert write_model(model, buf) == len(buf.getvalue())
    return buf.getvalue()


def test_streamed_bytes_equal_serialize_to_string() -> None:
    model = _model()
    assert _written(model) == model.SerializeToString()


def test_a_model_without_initializers_is_written_whole() -> None:
    model = _model()
    del model.graph.initializer[:]
    assert _written(model) == model.SerializeToString()


def test_fields_this_onnx_does_not_know_are_kept() -> None:
    model = onnx.ModelProto()
    extra = bytes([0xB8, 0x3E]) + varint(5)  # field 999, varint 5: unknown to ModelProto
    model.ParseFromString(_model().SerializeToString() + extra)
    out = _written(model)
    assert out == model.SerializeToString() and out.endswith(extra)


def test_external_initializers_are_written_as_if_read_in_first(tmp_path) -> None:
    """A lazily read model's weights stream from their file: the bytes of loading them all
    into the proto (onnx's loader) and serializing."""
    from bnfold.io.model_io import load_external

    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(600, dtype=np.float32),
                                                           "mid"))  # small: read in whole
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=1024,
              location="m.data")
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in lazy.graph.initializer) == 2
    buf = io.BytesIO()
    assert write_model(lazy, buf, str(tmp_path)) == len(buf.getvalue())
    assert lazy.graph.initializer[1].data_location == TensorProto.EXTERNAL  # left as it was
    load_external(lazy, tmp_path)
    assert buf.getvalue() == lazy.SerializeToString()
    without = io.BytesIO()
    write_model(onnx.load(tmp_path / "m.onnx", load_external_data=False), without)
    assert b"m.data" in without.getvalue()  # no folder given: the pointers are kept


def test_varint_encodes_like_protobuf() -> None:
    for n in (0, 1, 127, 128, 300, 2**31, 2**35 + 7):
        msg = TensorProto()
        msg.dims.append(n)
        assert msg.SerializeToString() == b"\x08" + varint(n)


def test_raw_data_that_disagrees_with_its_dims_is_refused_not_written_corrupt() -> None:
    model = _model()
    big = model.graph.initializer[1]
    big.raw_data = big.raw_data[:-4]
    with pytest.raises(ValueError, match="raw data for dims"):
        write_model(model, io.BytesIO())
