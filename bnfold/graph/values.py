"""Tensor values read from protos: dense tensors (external data read relative to the model's
folder), sparse tensors made dense, and the value a ``Constant`` node holds."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.io import spill, weights_in_file


def tensor_value(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray | None:
    """The tensor's array; external data is read relative to ``base_dir`` (the model's
    folder, where loading checked it), never the current directory: without a folder the
    value is unknown (None)."""
    if onnx.external_data_helper.uses_external_data(tensor):
        if spill.is_spilled(tensor):  # a folded weight in the fold's scratch file
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            spill.inline(copy)
            return numpy_helper.to_array(copy)
        if base_dir is None:
            return None
        plain = _PLAIN.get(tensor.data_type)
        raw = weights_in_file.read_raw(tensor, base_dir) if plain and np.little_endian else None
        if raw is not None:  # a weight left in the model file: read as onnx would, faster
            return np.frombuffer(raw, dtype=plain).reshape(tuple(tensor.dims))
        return numpy_helper.to_array(tensor, base_dir)
    return numpy_helper.to_array(tensor)


T = onnx.TensorProto
_PLAIN = {T.FLOAT: np.float32, T.DOUBLE: np.float64, T.FLOAT16: np.float16, T.INT8: np.int8,
          T.INT16: np.int16, T.INT32: np.int32, T.INT64: np.int64, T.UINT8: np.uint8,
          T.UINT16: np.uint16, T.UINT32: np.uint32, T.UINT64: np.uint64, T.BOOL: np.bool_}
"""Element types whose raw little-endian bytes are the numpy array as they are."""


def sparse_array(sparse: onnx.SparseTensorProto, base_dir: str | None) -> np.ndarray | None:
    """A sparse tensor as a dense array (zeros where no value is given); its indices are
    linear (NNZ,) or coordinates (NNZ, rank), as the ONNX spec allows."""
    values = tensor_value(sparse.values, base_dir)
    indices = tensor_value(sparse.indices, base_dir)
    if values is None or indices is None:
        return None
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim == 2:
        dense[tuple(idx.T)] = values.reshape(-1)
    else:
        dense.reshape(-1)[idx.reshape(-1)] = values.reshape(-1)
    return dense


def constant_node_value(node: onnx.NodeProto, base_dir: str | None) -> np.ndarray | None:
    """The value a ``Constant`` node holds, whichever attribute spells it."""
    for a in node.attribute:
        if a.name == "value":
            return tensor_value(a.t, base_dir)
        if a.name == "sparse_value":
            return sparse_array(a.sparse_tensor, base_dir)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None
