"""Write a ModelProto to a file one main-graph initializer at a time.

``model.SerializeToString()`` builds the whole file in memory: one more copy of every weight
(100 MB for ResNet-50) at the moment the folded model already holds two. Protobuf's wire
format is a sequence of (field tag, value) records, and a message field is its tag, its byte
length and its own records. So the file is written as: the model's fields before ``graph``,
the graph's tag and length, the graph's fields before ``initializer``, each initializer as its
own record, the graph's remaining fields, then the model's. The bytes are exactly those of
``SerializeToString`` (fields in number order), with at most one tensor serialized at a time.

A main-graph initializer whose data is still external (a lazily read model: in its data file,
in the input model file itself, or in a fold's scratch file) is written with its bytes copied
from there a chunk at a time, exactly as if they had been read into the proto first (as
``onnx.external_data_helper`` does: ``raw_data`` set, ``data_location`` DEFAULT): a save of a
lazily folded model never holds its unchanged weights in memory.
"""
from __future__ import annotations

import math
import os
from typing import BinaryIO

from google.protobuf import unknown_fields
from google.protobuf.message import Message
from onnx import external_data_helper as edh
from onnx import helper

from bnfold.io import spill
from bnfold.io.data_file import copy_field, copy_range, external_info, external_length

_LEN = 2  # wire type of a length-delimited field (bytes, strings, messages)
_RAW_DATA = 9  # TensorProto.raw_data
_RAW_TAG = bytes([_RAW_DATA << 3 | _LEN])
_BIG_ELEMENTS = 1 << 16  # tensors this large are written in parts; smaller ones whole
_DEFAULT = 0  # TensorProto.DEFAULT: data_location once external data is read in


def varint(n: int) -> bytes:
    """``n`` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _split(msg: Message, field_number: int) -> tuple[Message, Message]:
    """Two shallow copies of ``msg``: its fields numbered below ``field_number``, and those
    above it (the field itself in neither)."""
    before, after = type(msg)(), type(msg)()
    for fd, value in msg.ListFields():
        if fd.number == field_number:
            continue
        copy_field(before if fd.number < field_number else after, fd, value)
    return before, after


def _has_unknown(msg: Message) -> bool:
    return len(unknown_fields.UnknownFieldSet(msg)) > 0


_TYPED = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _raw_length(t: Message) -> int | None:
    """The raw data length of a tensor written in parts (from its dims), else None."""
    if (not t.HasField("raw_data") or math.prod(t.dims) < _BIG_ELEMENTS
            or any(len(getattr(t, f)) for f in _TYPED) or _has_unknown(t)):
        return None
    try:
        return math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _split_tensor(t: Message, read_in: bool = False) -> tuple[bytes, bytes]:
    """A raw tensor's records before and after ``raw_data`` (field 9), without touching the
    data (``ListFields`` would copy it out). ``read_in``: an external tensor's records once its
    data is read in: no external fields, ``data_location`` DEFAULT as onnx's loader sets it,
    none for a folded weight from a fold's scratch file (``write_tensor`` sets none)."""
    before, after = type(t)(), type(t)()
    before.dims.extend(t.dims)
    for name in ("data_type", "name"):
        if t.HasField(name):
            setattr(before, name, getattr(t, name))
    if t.HasField("segment"):
        before.segment.CopyFrom(t.segment)
    if t.HasField("doc_string"):
        after.doc_string = t.doc_string
    if not read_in:
        if t.HasField("data_location"):
            after.data_location = t.data_location
        after.external_data.extend(t.external_data)
    elif not spill.is_spilled(t):
        after.data_location = _DEFAULT
    if hasattr(t, "metadata_props"):
        after.metadata_props.extend(t.metadata_props)
    return before.SerializeToString(), after.SerializeToString()


class _External:
    """A main-graph initializer still stored externally, written with its data read in: a big
    plain one streamed from its file (``parts``), any other read into a copy (``whole``)."""

    def __init__(self, t: Message, source_dir: str | None) -> None:
        info = external_info(t)
        self.path = spill.resolve(source_dir, info.location)  # ValueError: no folder
        self.offset, self.length = info.offset or 0, external_length(t)
        self.whole: bytes | None = None
        self.parts: tuple[bytes, bytes] | None = None
        if (math.prod(t.dims) >= _BIG_ELEMENTS and not any(len(getattr(t, f)) for f in _TYPED)
                and not _has_unknown(t) and not t.HasField("raw_data")):
            self.parts = _split_tensor(t, read_in=True)
        else:
            copy = type(t)()
            copy.CopyFrom(t)
            spill.read_in(copy, source_dir)
            self.whole = copy.SerializeToString()

    def size(self) -> int:
        if self.whole is not None:
            return len(self.whole)
        assert self.parts is not None
        return (len(self.parts[0]) + len(_RAW_TAG) + len(varint(self.length)) + self.length
                + len(self.parts[1]))

    def write(self, name: str, f: BinaryIO) -> int:
        if self.whole is not None:
            return f.write(self.whole)
        assert self.parts is not None
        written = f.write(self.parts[0]) + f.write(_RAW_TAG) + f.write(varint(self.length))
        with open(self.path, "rb") as src:
            copied = copy_range(src, self.offset, self.length, f)
        if copied != self.length:
            raise ValueError(f"{self.path}: ends before the {self.length} bytes of tensor "
                             f"{name!r} (offset {self.offset})")
        return written + copied + f.write(self.parts[1])


def _external(t: Message, source_dir: str | None) -> _External | None:
    """``t`` as an ``_External`` when its data is external and can be read, else None."""
    if not edh.uses_external_data(t):
        return None
    try:
        return _External(t, source_dir)
    except ValueError:  # no folder to read it from: written as it is (a pointer)
        return None


def _tensor_size(t: Message) -> int:
    """The serialized size of initializer ``t``; for a big one without serializing it (upb's
    ``ByteSize`` serializes: 85 ms for a 37 MB weight)."""
    n = _raw_length(t)
    if n is None:
        return t.ByteSize()
    before, after = _split_tensor(t)
    return len(before) + len(_RAW_TAG) + len(varint(n)) + n + len(after)


def _write_tensor(t: Message, f: BinaryIO) -> int:
    n = _raw_length(t)
    if n is None:
        return f.write(t.SerializeToString())
    before, after = _split_tensor(t)
    raw = t.raw_data
    if len(raw) != n:  # the size was announced from the dims: the file would be corrupt
        raise ValueError(f"tensor {t.name!r}: {len(raw)} bytes of raw data for dims "
                         f"{list(t.dims)}")
    return (f.write(before) + f.write(_RAW_TAG) + f.write(varint(n)) + f.write(raw)
            + f.write(after))


def streams_initializers(model: Message) -> bool:
    """Whether ``write_model`` writes ``model``'s main-graph initializers one by one (and so
    reads those still external itself); else it serializes the model whole."""
    return (model.HasField("graph") and len(model.graph.initializer) > 0
            and not _has_unknown(model) and not _has_unknown(model.graph))


def write_model(model: Message, f: BinaryIO, source_dir: str | None = None) -> int:
    """Write ``model`` (an onnx.ModelProto) to ``f``; return the bytes written. A model or
    graph with fields this onnx does not know is serialized whole (a split would drop them).
    ``source_dir``: the folder main-graph initializers still external are read from (their
    data is written in; without it, and for other tensors, pointers are written as they are)."""
    if not streams_initializers(model):
        return f.write(model.SerializeToString())
    graph_field = model.DESCRIPTOR.fields_by_name["graph"]
    init_field = model.graph.DESCRIPTOR.fields_by_name["initializer"]
    m_before, m_after = _split(model, graph_field.number)
    g_before, g_after = _split(model.graph, init_field.number)
    head, tail = g_before.SerializeToString(), g_after.SerializeToString()
    init_tag = varint(init_field.number << 3 | _LEN)
    external = [_external(t, source_dir) for t in model.graph.initializer]
    sizes = [e.size() if e is not None else _tensor_size(t)
             for t, e in zip(model.graph.initializer, external)]
    graph_len = len(head) + len(tail) + sum(len(init_tag) + len(varint(n)) + n for n in sizes)
    written = 0
    for part in (m_before.SerializeToString(), varint(graph_field.number << 3 | _LEN),
                 varint(graph_len), head):
        written += f.write(part)
    for t, e, n in zip(model.graph.initializer, external, sizes):
        written += f.write(init_tag) + f.write(varint(n))
        written += e.write(t.name, f) if e is not None else _write_tensor(t, f)
    written += f.write(tail) + f.write(m_after.SerializeToString())
    return written


def write_file(path: str, model: Message, source_dir: str | None = None) -> None:
    """``model`` into the file at ``path``, synced to disk (``source_dir``: ``write_model``'s)."""
    with open(path, "wb") as f:
        write_model(model, f, source_dir)
        f.flush()
        os.fsync(f.fileno())
