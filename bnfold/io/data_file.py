"""Write tensors into one external data file and build the data-less stubs that point at them.

Tensors are appended on page boundaries (so they can be memory-mapped); a tensor whose data
is still in another data file (a lazy load) is copied from it a chunk at a time, so saving a
multi-GB model never holds more than one tensor of extra memory.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import external_data_helper as edh
from onnx import helper, numpy_helper

from bnfold.errors import InputError, OutputError
from bnfold.io import spill

EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this large go to the external data file
_ALIGN = 4096  # external tensors start on page boundaries so they can be memory-mapped
_COPY_CHUNK = 16 * 2**20  # bytes read at a time when copying a tensor between data files

PACKED_4BIT = frozenset(getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
                        if hasattr(onnx.TensorProto, n))


def data_bytes(tensor: onnx.TensorProto, path: str) -> int | None:
    """Bytes the tensor's data must take, or None where that is not fixed (strings)."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{path}: tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}")
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{path}: tensor {tensor.name!r} has unknown data type "
                         f"{tensor.data_type}; the file is corrupted or too new") from None
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = math.prod(tensor.dims)
    return (count + 1) // 2 if tensor.data_type in PACKED_4BIT else count * dtype.itemsize


def stored_size(tensor: onnx.TensorProto) -> int:
    """About the bytes ``tensor`` takes in its proto, without serializing it (upb's ``ByteSize``
    serializes: 85 ms for a 37 MB weight). Raw data counts from its dims (checked on load
    against its length), plus a header; typed fields and external stubs are measured."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize()
    try:
        n = data_bytes(tensor, tensor.name)
    except InputError:
        n = None
    if n is None:
        n = len(tensor.raw_data)
    return n + 32 + len(tensor.name) + 11 * len(tensor.dims)


# the keys onnx parses without a warning (none, so always the quiet path, if it stops saying)
_KNOWN_KEYS = frozenset(getattr(edh, "_ALLOWED_EXTERNAL_DATA_KEYS", ()))


def external_info(tensor: onnx.TensorProto) -> edh.ExternalDataInfo:
    """The tensor's external data fields (location, offset, length), parsed quietly (onnx
    warns only about unknown keys: with none, its warning filters are not touched, which
    costs more than the parse)."""
    if all(e.key in _KNOWN_KEYS for e in tensor.external_data):
        return edh.ExternalDataInfo(tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys were accepted on load, as onnx does
        return edh.ExternalDataInfo(tensor)


def external_length(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data still on disk (0 for a tensor held in the proto)."""
    if not edh.uses_external_data(tensor):
        return 0
    info = external_info(tensor)
    if info.length is not None:
        return info.length
    want = data_bytes(tensor, tensor.name)
    return want or 0


def is_repeated(field: FieldDescriptor) -> bool:
    """Whether a message field is repeated, on every protobuf bnfold supports.

    ``FieldDescriptor.is_repeated`` only exists from protobuf 5.29/6.x on, and ``label``
    is gone in protobuf 7; use whichever this protobuf has. Never touch either directly.
    """
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def copy_field(dst, fd, value) -> None:  # noqa: ANN001 (a protobuf message, descriptor, value)
    """Set field ``fd`` of message ``dst`` to ``value`` (from ``ListFields``), whatever its kind."""
    if is_repeated(fd):
        getattr(dst, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(dst, fd.name).CopyFrom(value)
    else:
        setattr(dst, fd.name, value)


def copy_fields(src: Message, dst: Message, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of ``src`` into ``dst`` except those named in ``skip``."""
    for field, value in src.ListFields():
        if field.name not in skip:
            copy_field(dst, field, value)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's little-endian bytes if it belongs in the data file, else None."""
    if edh.uses_external_data(tensor):
        return None
    if tensor.HasField("raw_data"):
        return tensor.raw_data if stored_size(tensor) >= EXTERNAL_THRESHOLD else None
    if tensor.ByteSize() < EXTERNAL_THRESHOLD or tensor.data_type == onnx.TensorProto.STRING:
        return None
    array = numpy_helper.to_array(tensor)  # typed fields (float_data, ...): rare, small copies
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


class DataWriter:
    """Appends tensors to one external data file and builds their data-less stubs.

    With ``source_dir``, tensors still external (relative to it) are copied chunk-wise from
    their source file; without it they are kept as they are (pointing where they pointed).
    """

    def __init__(self, f: BinaryIO, location: str, source_dir: Path | None = None) -> None:
        self.f, self.location, self.source_dir = f, location, source_dir

    def tensor(self, src: onnx.TensorProto) -> onnx.TensorProto:
        out = onnx.TensorProto()
        copy_from = self.source_dir is not None and edh.uses_external_data(src)
        raw = None if copy_from else _raw_bytes(src)
        if raw is None and not copy_from:
            out.CopyFrom(src)
            return out
        copy_fields(src, out, frozenset({"raw_data", "float_data", "int32_data", "int64_data",
                                          "double_data", "uint64_data", "data_location",
                                          "external_data"}))
        pad = (-self.f.tell()) % _ALIGN
        if pad:
            self.f.write(b"\0" * pad)
        offset = self.f.tell()
        length = self._copy_external(src) if raw is None else self.f.write(raw)
        for key, value in (("location", self.location), ("offset", str(offset)),
                           ("length", str(length))):
            entry = out.external_data.add()
            entry.key, entry.value = key, value
        out.data_location = onnx.TensorProto.EXTERNAL
        return out

    def _copy_external(self, src: onnx.TensorProto) -> int:
        """Append ``src``'s bytes from its source data file (``copy_range``); return the count."""
        info, length = external_info(src), external_length(src)
        try:  # a folded weight in the fold's scratch file, else relative to the source folder
            source = Path(spill.resolve(self.source_dir, info.location))
        except ValueError:
            raise ValueError(f"tensor {src.name!r} is external but no source folder was given"
                             ) from None
        with open(source, "rb") as data:
            if copy_range(data, info.offset or 0, length, self.f) != length:
                raise OutputError(f"{source}: ends before the {length} bytes of tensor "
                                  f"{src.name!r} (offset {info.offset or 0}) were read")
        return length

    def attribute(self, src: onnx.AttributeProto) -> onnx.AttributeProto:
        out = onnx.AttributeProto()
        copy_fields(src, out, frozenset({"t", "tensors", "g", "graphs"}))
        if src.HasField("t"):
            out.t.CopyFrom(self.tensor(src.t))
        out.tensors.extend(self.tensor(t) for t in src.tensors)
        if src.HasField("g"):
            out.g.CopyFrom(self.graph(src.g))
        out.graphs.extend(self.graph(g) for g in src.graphs)
        return out

    def node(self, src: onnx.NodeProto) -> onnx.NodeProto:
        out = onnx.NodeProto()
        copy_fields(src, out, frozenset({"attribute"}))
        out.attribute.extend(self.attribute(a) for a in src.attribute)
        return out

    def graph(self, src: onnx.GraphProto) -> onnx.GraphProto:
        out = onnx.GraphProto()
        copy_fields(src, out, frozenset({"initializer", "node"}))
        out.initializer.extend(self.tensor(t) for t in src.initializer)
        out.node.extend(self.node(n) for n in src.node)
        return out

    def model(self, src: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        copy_fields(src, out, frozenset({"graph", "functions"}))
        out.graph.CopyFrom(self.graph(src.graph))
        for fn in src.functions:
            copy = out.functions.add()
            copy_fields(fn, copy, frozenset({"node"}))
            copy.node.extend(self.node(n) for n in fn.node)
        return out


def copy_range(src: BinaryIO, offset: int, length: int, f: BinaryIO) -> int:
    """Copy ``length`` bytes of ``src`` from ``offset`` to the end of ``f``; return the count
    (less when ``src`` ends first). Between files in the kernel (``sendfile``: no bytes pass
    through Python, so a save's memory does not grow with the weights it copies), else through
    one reused buffer."""
    try:
        out = f.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        out = None
    done = 0
    if out is not None and hasattr(os, "sendfile"):
        f.flush()
        while done < length:
            n = os.sendfile(out, src.fileno(), offset + done, length - done)
            if n <= 0:
                break
            done += n
        f.seek(0, os.SEEK_END)  # the buffered file learns where the kernel left the offset
        return done

    src.seek(offset)
    buf = memoryview(bytearray(min(length, _COPY_CHUNK)))
    while done < length:
        n = src.readinto(buf[:min(length - done, len(buf))])
        if not n:
            break
        f.write(buf[:n])
        done += n
    return done
