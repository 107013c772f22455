"""A model's structure without its bulk tensor data, for cheap checks and shape inference.

Large raw initializers, and initializers whose data is still external (never read here),
become header-only tensors (name, dtype, dims) marked as external data in ``SKELETON_FILE``,
so ``onnx.checker`` and shape inference run on a few hundred KB instead of gigabytes.
"""
from __future__ import annotations

import math
import os
import tempfile

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from bnfold.io.data_file import copy_fields

SKELETON_FILE = "bnfold-skeleton.bin"
_SMALL = 4096  # bytes: tensors up to this size are copied whole (shape inputs need values)

# What onnx's C++ checker and shape inference raise about a model: onnx's own types, and the
# types pybind11 turns std:: exceptions into. Any other error from a check (AttributeError,
# TypeError, ImportError, ...) is a bug in bnfold or an onnx API mismatch, and propagates.
_ONNX_REJECTS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
                 onnx.defs.SchemaError, RuntimeError, ValueError, IndexError)


class CheckFailed(Exception):
    """onnx.checker (or strict shape inference) rejected the model; the message is onnx's."""


def _nbytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except KeyError:  # undefined or unknown data type: kept whole, so the checker names it
        return 0
    return math.prod(t.dims) * itemsize


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large raw or external main-graph initializers carry no data."""
    sk = onnx.ModelProto()
    copy_fields(model, sk, frozenset({"graph"}))
    copy_fields(model.graph, sk.graph, frozenset({"initializer"}))
    for t in model.graph.initializer:
        if uses_external_data(t) or (t.HasField("raw_data") and _nbytes(t) > _SMALL):
            h = sk.graph.initializer.add()
            h.name, h.data_type = t.name, t.data_type
            h.dims.extend(t.dims)
            h.data_location = onnx.TensorProto.EXTERNAL
            entry = h.external_data.add()
            entry.key, entry.value = "location", SKELETON_FILE
        else:
            sk.graph.initializer.add().CopyFrom(t)
    for t in _get_all_tensors(sk):  # nested graphs and attributes: point external data here too
        if uses_external_data(t):
            del t.external_data[:]
            entry = t.external_data.add()
            entry.key, entry.value = "location", SKELETON_FILE
    return sk


def full_check(sk: onnx.ModelProto, *, full: bool = True) -> None:
    """onnx.checker on a skeleton (``full``: with strict shape inference).

    Raises CheckFailed when onnx rejects the model; anything else is not about the model.
    """
    with tempfile.TemporaryDirectory(prefix="bnfold-check-") as tmp:
        open(os.path.join(tmp, SKELETON_FILE), "wb").close()
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(sk.SerializeToString())
        try:
            onnx.checker.check_model(path, full_check=full)
        except _ONNX_REJECTS as exc:
            raise CheckFailed(str(exc).strip() or type(exc).__name__) from exc
