"""Parse a single-file model without its weights: each large main-graph initializer becomes
external data that points into the .onnx file itself (offset and length of its raw bytes).

Folding touches the weights of a few nodes per BN; parsing every weight into memory, then
copying them for the proofs and once more for the save, made the fold of a 100 MB model cost
4-6x its size in memory. Read this way the model is its graph structure (a few hundred KB);
a fold reads the weights it changes from the file, the proofs read the originals from it,
and the save copies the rest from it (bnfold's existing lazy external-data path).

The protobuf wire format is walked directly: the model's records, the graph's records, each
initializer's records (nothing else is decoded). The file is read with ``pread`` through a small
window (``_FileView``), not memory-mapped: a mapped file's pages count in the process's RSS, and
with the kernel's large page-cache folios touching each weight's header mapped most of the file
(a 300 MB model: 270 MB of RSS for a scan that reads a few KB). Anything unexpected (a deprecated group
record, a truncated length, a tensor that already uses external data) returns None and the
caller parses the file normally.
"""
from __future__ import annotations

import functools
import os
from typing import Iterator

import onnx

from bnfold.io.proto_stream import varint

MIN_BYTES = 1024  # raw data at least this large stays in the file
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14
_EXTERNAL = 1  # TensorProto.EXTERNAL


class _Malformed(Exception):
    pass


class _FileView:
    """Bytes of an open file by index and slice, read with ``pread`` through a cached window
    (the walk reads record headers: a few bytes here and there)."""

    WINDOW = 64 * 1024

    def __init__(self, fd: int) -> None:
        self.fd, self.start, self.data = fd, 0, b""

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop = key.start, key.stop
            if self.start <= start and stop <= self.start + len(self.data):
                return self.data[start - self.start:stop - self.start]
            return os.pread(self.fd, stop - start, start)
        if not self.start <= key < self.start + len(self.data):
            self.start, self.data = key, os.pread(self.fd, self.WINDOW, key)
            if not self.data:
                raise _Malformed
        return self.data[key - self.start]


Buffer = memoryview | _FileView


def _varint(buf: Buffer, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _records(buf: Buffer, i: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, record start, value start, value end) of each record."""
    while i < end:
        start = i
        tag, i = _varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, j = _varint(buf, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 2:
            n, i = _varint(buf, i, end)
            j = i + n
        elif wire == 5:
            j = i + 4
        else:  # groups (3, 4) or garbage
            raise _Malformed
        if j > end:
            raise _Malformed
        yield field, wire, start, i, j
        i = j


def _len_record(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    """A StringStringEntryProto (key = 1, value = 2) as an external_data record."""
    body = _len_record(1, key.encode()) + _len_record(2, value.encode())
    return _len_record(_EXTERNAL_DATA, body)


def _tensor(buf: Buffer, start: int, end: int, location: str) -> bytes | None:
    """The tensor's records with its raw data replaced by a reference into the file, or None
    to keep it as it is (small, typed fields, or already external)."""
    kept, raw = [], None
    for field, wire, rec, value, stop in _records(buf, start, end):
        if field == _DATA_LOCATION and wire == 0 and _varint(buf, value, stop)[0] != _EXTERNAL:
            continue  # an explicit DEFAULT (bnfold's save of a tensor read from a data file)
        if field in (_EXTERNAL_DATA, _DATA_LOCATION):
            return None
        if field == _RAW_DATA and wire == 2:
            raw = (value, stop - value)
        else:
            kept.append(bytes(buf[rec:stop]))
    if raw is None or raw[1] < MIN_BYTES:
        return None
    refs = (_entry("location", location) + _entry("offset", str(raw[0]))
            + _entry("length", str(raw[1])))
    return b"".join(kept) + refs + varint(_DATA_LOCATION << 3) + varint(_EXTERNAL)


MODEL_FILES: set[str] = set()  # resolved paths of model files read this way (see is_model_file)


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model file whose weights a model read by ``structure_bytes``
    still reads: a save may replace it (the new file is complete before the rename), unlike
    an external data file another model could still need."""
    return os.path.realpath(path) in MODEL_FILES


_OPEN: dict[str, tuple[int, tuple[int, ...]]] = {}  # model file -> (fd, its identity when opened)
_MAX_OPEN = 4


def read_raw(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None) -> bytes | None:
    """The bytes of a weight ``structure_bytes`` left in its model file, read with one
    ``pread`` on a descriptor kept open for that file (opened again when the file at the path
    is another one); None for every other tensor (onnx's loader reads those, checking their
    paths). A fold reads a few hundred weights: opening the file through onnx's loader for each
    cost MobileNetV2 some 20 ms."""
    if base_dir is None:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location or os.path.basename(location) != location or "length" not in info:
        return None
    path = _resolved(os.fspath(base_dir), location)
    if path not in MODEL_FILES:
        return None
    offset, length = int(info.get("offset", 0)), int(info["length"])
    data = os.pread(_descriptor(path), length, offset)
    if len(data) != length:
        raise ValueError(f"{tensor.name!r}: the model file ends before its {length} bytes")
    return data


@functools.lru_cache(maxsize=64)
def _resolved(folder: str, location: str) -> str:
    """The resolved path of a model file's weights (``realpath`` costs an ``lstat`` per part of
    the path, for each of a few hundred reads): a file replaced at the path is seen by
    ``_descriptor``, which checks the file's identity on every read."""
    return os.path.realpath(os.path.join(folder, location))


def close_files() -> None:
    """Close the descriptors ``read_raw`` keeps (``fold`` does at its end: a file replaced
    afterwards, as an in-place fold replaces its input, must not stay allocated on disk)."""
    while _OPEN:
        os.close(_OPEN.popitem()[1][0])


def _descriptor(path: str) -> int:
    st = os.stat(path)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _OPEN.pop(path, None)
    if cached is not None and cached[1] == identity:
        _OPEN[path] = cached  # most recently used last
        return cached[0]
    if cached is not None:
        os.close(cached[0])
    while len(_OPEN) >= _MAX_OPEN:
        os.close(_OPEN.pop(next(iter(_OPEN)))[0])
    fd = os.open(path, os.O_RDONLY)  # not inherited by child processes (PEP 446)
    _OPEN[path] = (fd, identity)
    return fd


def structure_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The model at ``path`` serialized with its large main-graph weights left in the file,
    or None when the file is not one this reads (parse it normally then)."""
    location = os.path.basename(os.fspath(path))
    MODEL_FILES.add(os.path.realpath(path))
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        try:
            return _model(_FileView(fh.fileno()), size, location)
        except _Malformed:
            return None


def _model(buf: Buffer, size: int, location: str) -> bytes | None:
    out, changed = [], False
    for field, wire, rec, value, stop in _records(buf, 0, size):
        if field != _MODEL_GRAPH or wire != 2:
            out.append(bytes(buf[rec:stop]))
            continue
        graph = []
        for gfield, gwire, grec, gvalue, gstop in _records(buf, value, stop):
            t = (_tensor(buf, gvalue, gstop, location)
                 if gfield == _GRAPH_INITIALIZER and gwire == 2 else None)
            if t is None:
                graph.append(bytes(buf[grec:gstop]))
            else:
                graph.append(_len_record(_GRAPH_INITIALIZER, t))
                changed = True
        out.append(_len_record(_MODEL_GRAPH, b"".join(graph)))
    return b"".join(out) if changed else None


def parse_structure(path: str | os.PathLike[str]) -> onnx.ModelProto | None:
    """The model at ``path`` parsed with its large weights left in the file, or None."""
    data = structure_bytes(path)
    if data is None:
        return None
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model
