"""Arrays handed to the ORT child through one file in shared memory instead of the pipe.

A proof feeds every folded weight to the child twice (original and folded). Pickled through the
pipe that is a copy on each side plus the pipe itself (≈ 0.4 s for ResNet-50's 2 × 93 MB). Here
the parent writes each tensor's bytes once into a file in ``/dev/shm`` (tmpfs; a temporary
folder elsewhere) and the child maps it: no copy in the child, and the parent keeps no array
(written with ``write``, the pages are the file system's, not the parent's resident memory).
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Iterator
import numpy as np
import onnx
from onnx import external_data_helper as edh
from onnx import numpy_helper

from bnfold.io import spill
from bnfold.io.data_file import external_info
from bnfold.verification.ort_child import map_shared

_ALIGN = 64  # every array starts on a cache line (ORT and numpy want aligned data)


def _folder() -> str | None:
    """``/dev/shm`` when it is a writable tmpfs with room, else the default temporary folder."""
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    return shm if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > 1 << 30 else None


class SharedArrays:
    """Named arrays written into one file; ``spec()`` is what the child needs to map them.

    Use as a context manager (or call ``close``): the file is removed on close. The child keeps
    its mapping alive after the unlink, so a session outlives the file.
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="bnfold-proof-", suffix=".bin", dir=_folder())
        self._file = os.fdopen(fd, "wb")
        # name, dtype, shape, offset (in this file, or in the file named last: external data)
        self.entries: list[tuple[Any, ...]] = []
        self.nbytes = 0
        self._names: set[str] = set()

    def __enter__(self) -> SharedArrays:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(e[0] for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add_tensor(self, name: str, tensor: onnx.TensorProto, base_dir: str | None = None,
                   ) -> None:
        """``tensor``'s data under ``name``: its raw bytes as stored (ONNX raw data is little
        endian), copied file to file when still external (relative to ``base_dir``), else its
        typed fields converted once."""
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        shape = tuple(int(d) for d in tensor.dims)
        want = dtype.itemsize * math.prod(shape)
        if edh.uses_external_data(tensor):
            self._copy_external(name, tensor, base_dir, dtype, shape, want)
        elif tensor.HasField("raw_data"):
            data = tensor.raw_data
            if len(data) != want:
                raise ValueError(f"{tensor.name!r}: raw data of {len(data)} bytes for "
                                 f"shape {shape}")
            self._write(name, dtype, shape, data)
        else:
            self.add(name, numpy_helper.to_array(tensor))

    def add(self, name: str, array: np.ndarray) -> None:
        """A numpy array under ``name``."""
        # order="C", not ascontiguousarray: that makes a 0-d array 1-d
        array = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        self._write(name, array.dtype, array.shape, array.tobytes())

    def _copy_external(self, name: str, tensor: onnx.TensorProto, base_dir: str | None,
                       dtype: np.dtype, shape: tuple[int, ...], want: int) -> None:
        """An external tensor's bytes where they lie in its data file (the model file for a
        weight left in it, the fold's scratch file for a spilled one): the child maps that
        file, nothing is copied (ResNet-50's proofs: 93 MB less written, about 0.1 s)."""
        info = external_info(tensor)
        if base_dir is None and not spill.is_spilled(tensor):
            raise ValueError(f"{tensor.name!r} is stored externally and its folder is unknown")
        length = want if info.length is None else info.length
        if length != want:
            raise ValueError(f"{tensor.name!r}: external data of {length} bytes for shape {shape}")
        file = spill.resolve(base_dir, info.location)
        offset = info.offset or 0
        if os.stat(file).st_size < offset + length:
            raise ValueError(f"{tensor.name!r}: external data ends before its length")
        # read where it lies (mapped by the child), not copied: page cache, no second copy
        self._names.add(name)
        self.entries.append((name, dtype.str, tuple(shape), offset, os.path.abspath(file)))

    def _pad(self) -> None:
        pad = -self.nbytes % _ALIGN
        if pad:
            self._file.write(b"\0" * pad)
            self.nbytes += pad

    def _write(self, name: str, dtype: np.dtype, shape: tuple[int, ...], data: bytes) -> None:
        self._pad()
        self._names.add(name)
        self.entries.append((name, dtype.str, tuple(shape), self.nbytes))
        self._file.write(data)
        self.nbytes += len(data)

    def spec(self) -> tuple[str, str, list[tuple[Any, ...]]]:
        """("shared", path, entries): the picklable description the child maps."""
        self._file.flush()
        return ("shared", self.path, list(self.entries))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays read back (for an engine that runs in this process)."""
        return map_shared(self.spec())

    def close(self) -> None:
        self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
