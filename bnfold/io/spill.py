"""Folded weights written to a scratch file as they are made, instead of held in memory.

A fold of a single-file model reads its weights from the file (``io/weights_in_file.py``), but
each folded weight was kept in the proto until the save: for ResNet-50 that is the whole
model again (95 of 102 MB), the largest part of ``bnfold fold``'s peak memory. Inside
``Spill.active()`` ``folding.rewrite.write_tensor`` appends a large folded weight to the
scratch file and leaves the tensor pointing at it, like any external data: the rules, the
proofs and the save read it back a tensor at a time.

The pointer's location is a name no folder has (``bnfold-spill-<uuid>.bin``), registered
here while the file is open; ``resolve`` maps it to the scratch file, whatever folder the
reader was given. The scratch file lives in a hidden folder (beside the output, so on its
disk) that ``close`` removes; the model's pointers are dangling after that: write the model
before. A model saved by bnfold never keeps such a pointer: a single file gets the bytes, an
external-data save copies them into its own data file.
"""
from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper as edh

from bnfold.errors import OutputError

MIN_BYTES = 64 * 1024  # smaller weights stay in the proto (a pointer and a write cost more)
PREFIX = "bnfold-spill-"

_FILES: dict[str, str] = {}  # location -> scratch file, while its Spill is open
_ACTIVE: contextvars.ContextVar[Spill | None] = contextvars.ContextVar("bnfold_spill",
                                                                      default=None)


def resolve(base_dir: str | os.PathLike[str] | None, location: str) -> str:
    """The file an external ``location`` names: a live scratch file, else relative to
    ``base_dir`` (ValueError without one: never the current directory)."""
    found = _FILES.get(location)
    if found is not None:
        return found
    if base_dir is None:
        raise ValueError(f"external data {location!r} has no folder to be read from")
    return os.path.join(base_dir, location)


def _location(tensor: onnx.TensorProto) -> str | None:
    if not edh.uses_external_data(tensor):
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def is_spilled(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor``'s data is in an open scratch file."""
    location = _location(tensor)
    return location is not None and location in _FILES


def inline(tensor: onnx.TensorProto) -> None:
    """Read a spilled tensor's bytes back into it: the tensor is as ``write_tensor`` would
    have left it without a spill (raw data, no ``data_location``)."""
    location = _location(tensor)
    if location is None or location not in _FILES:
        return
    info = {e.key: e.value for e in tensor.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    with open(_FILES[location], "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ValueError(f"{tensor.name!r}: the scratch file ends before its {length} bytes")
    del tensor.external_data[:]
    tensor.ClearField("data_location")
    tensor.raw_data = data


def read_in(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None) -> None:
    """Read an external tensor's data into it: from the fold's scratch file (``inline``), else
    with onnx's loader relative to ``base_dir`` (ValueError without one)."""
    if is_spilled(tensor):
        inline(tensor)
    elif base_dir is None:
        raise ValueError(f"{tensor.name!r} is stored externally and has no folder to be read from")
    else:
        edh.load_external_data_for_tensor(tensor, str(base_dir))


def current() -> Spill | None:
    """The spill ``write_tensor`` writes to now (None: folded weights stay in the proto)."""
    return _ACTIVE.get()


class Spill:
    """One scratch file of folded weights in a hidden folder under ``folder`` (default: the
    system's temporary folder); removed by ``close`` (or on leaving ``with``)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix=".bnfold-spill-",
                                       dir=None if folder is None else str(folder))
        self.location = f"{PREFIX}{uuid.uuid4().hex}.bin"
        self.path = os.path.join(self.folder, "weights.bin")
        self._file = open(self.path, "wb")  # noqa: SIM115 - open until close()
        self.nbytes = 0
        _FILES[self.location] = self.path

    @classmethod
    def beside(cls, path: str | os.PathLike[str]) -> Spill | None:
        """A spill in ``path``'s folder (the output's disk), else in the temporary folder,
        else None (nothing writable: the folded weights stay in memory)."""
        for folder in (Path(path).parent, None):
            try:
                return cls(folder)
            except OSError:
                continue
        return None

    def put(self, tensor: onnx.TensorProto, value: np.ndarray) -> bool:
        """Store ``value`` (``tensor``'s own dtype, little endian) in the file and point
        ``tensor`` at it; False (nothing done) when it is too small to be worth it."""
        if value.nbytes < MIN_BYTES or not np.little_endian:
            return False
        data = np.ascontiguousarray(value)
        offset = self.nbytes
        try:
            self._file.write(memoryview(data).cast("B"))
            self._file.flush()  # readers open the file themselves
        except OSError as exc:  # a full disk: the output on the same disk would fail too
            raise OutputError(f"{self.folder}: cannot write the folded weights' scratch file: "
                              f"{exc.strerror or exc}") from None
        self.nbytes += data.nbytes
        for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data",
                      "uint64_data", "external_data"):
            tensor.ClearField(field)
        del tensor.dims[:]
        tensor.dims.extend(value.shape)
        for key, text in (("location", self.location), ("offset", str(offset)),
                          ("length", str(data.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, text
        tensor.data_location = onnx.TensorProto.EXTERNAL
        return True

    @contextmanager
    def active(self) -> Iterator[Spill]:
        """Within the block ``write_tensor`` writes large folded weights here."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def close(self) -> None:
        """Remove the scratch file (the pointers into it are dangling from now on)."""
        _FILES.pop(self.location, None)
        if not self._file.closed:
            self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
