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
        plain = tensor.data_type in _PLAIN and np.little_endian
        raw = weights_in_file.read_raw(tensor, base_dir) if plain else None
        if raw is not None:  # a weight left in the model file: read as onnx would, faster
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims))
        return numpy_helper.to_array(tensor, base_dir)
    return numpy_helper.to_array(tensor)


_T = onnx.TensorProto
_PLAIN = frozenset({_T.FLOAT, _T.DOUBLE, _T.FLOAT16, _T.INT8, _T.INT16, _T.INT32, _T.INT64,
                    _T.UINT8, _T.UINT16, _T.UINT32, _T.UINT64, _T.BOOL})
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
