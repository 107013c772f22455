"""Load and save ONNX models safely: clear errors, checked external data, atomic writes."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper as edh

from bnfold.errors import InputError, OutputError

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this large go to the external data file


def max_known_opset() -> int:
    return onnx.defs.onnx_opset_version()


def default_opset(model: onnx.ModelProto) -> int | None:
    """The ai.onnx opset the model imports, or None when it imports none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    return edh._get_all_tensors(model)  # initializers and tensor attributes, subgraphs included


def _check_opset(model: onnx.ModelProto, path: str) -> None:
    opset = default_opset(model)
    if opset is None:
        return
    if opset > max_known_opset():
        raise InputError(f"{path}: opset {opset} is newer than the installed onnx knows "
                         f"(max {max_known_opset()}); upgrade onnx")
    if opset < MIN_OPSET:
        raise InputError(f"{path}: opset {opset} is older than {MIN_OPSET}, the oldest bnfold "
                         "supports; convert it with onnx.version_converter first")


def _check_external(tensor: onnx.TensorProto, base: Path, path: str) -> None:
    info = edh.ExternalDataInfo(tensor)
    loc = info.location
    if not loc:
        raise InputError(f"{path}: tensor {tensor.name!r} uses external data but names no file")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc:
        raise InputError(f"{path}: external data location {loc!r} of tensor {tensor.name!r} is "
                         "absolute; only paths inside the model's folder are allowed")
    target = (base / loc)
    real_base = base.resolve()
    real = target.resolve()
    if real != real_base and real_base not in real.parents:
        raise InputError(f"{path}: external data location {loc!r} of tensor {tensor.name!r} "
                         "escapes the model's folder (../ or a symlink out); refusing to read it")
    if not real.is_file():
        raise InputError(f"{path}: external data file {loc!r} for tensor {tensor.name!r} is missing")
    size = real.stat().st_size
    offset = info.offset or 0
    length = info.length if info.length is not None else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(f"{path}: external data file {loc!r} is shorter ({size} bytes) than "
                         f"tensor {tensor.name!r} needs (offset {offset} + length {length})")


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(edh.uses_external_data(t) for t in _all_tensors(model))


def load_model(path: str | os.PathLike[str], *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file with its external data, or raise InputError saying why it can't."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise InputError(f"{shown}: no such file")
    if p.is_dir():
        raise InputError(f"{shown}: is a directory, not an ONNX file")
    if p.stat().st_size == 0:
        raise InputError(f"{shown}: empty file, not an ONNX model")
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{shown}: not a readable ONNX model (protobuf parse failed: "
                         f"{type(exc).__name__}); the file may be truncated or not ONNX") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InputError(f"{shown}: not an ONNX model (no IR version or graph); the file may be "
                         "truncated or of another format")
    _check_opset(model, shown)
    base = p.parent
    external = [t for t in _all_tensors(model) if edh.uses_external_data(t)]
    for tensor in external:
        _check_external(tensor, base, shown)
    if external:
        try:
            edh.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise InputError(f"{shown}: cannot read external data: {exc}") from None
    return model


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size of all tensors (raw_data dominates for real models)."""
    return sum(len(t.raw_data) for t in _all_tensors(model))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_with_external(model: onnx.ModelProto, model_path: str, location: str) -> None:
    """Move large raw_data into one file beside the model, serialize, then restore it in memory."""
    moved: list[tuple[onnx.TensorProto, bytes]] = []
    data_path = os.path.join(os.path.dirname(model_path), location)
    try:
        with open(data_path, "wb") as f:
            for tensor in _all_tensors(model):
                if edh.uses_external_data(tensor) or len(tensor.raw_data) < EXTERNAL_THRESHOLD:
                    continue
                raw = tensor.raw_data
                pad = (-f.tell()) % 4096
                if pad:
                    f.write(b"\0" * pad)
                offset = f.tell()
                f.write(raw)
                moved.append((tensor, raw))
                edh.set_external_data(tensor, location, offset=offset, length=len(raw))
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            f.flush()
            os.fsync(f.fileno())
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
    finally:
        for tensor, raw in moved:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *,
               overwrite: bool = True, external_data: bool | None = None) -> list[str]:
    """Write ``model`` atomically (temp file, fsync, rename); return the paths written.

    external_data=None chooses external data only when the model is too big for one protobuf.
    The external data file is named ``<model file name>.data`` and written beside the model.
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {str(folder)!r} does not exist")
    if out.is_dir():
        raise OutputError(f"{path}: is a directory")
    if out.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass overwrite / --force to replace it)")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: folder {str(folder)!r} is not writable")
    too_big = tensor_bytes(model) + 64 * 2**20 > PROTOBUF_LIMIT
    if external_data is None:
        external_data = too_big
    elif not external_data and too_big:
        raise OutputError(f"{path}: the model is {tensor_bytes(model) / 2**30:.1f} GiB; a single "
                          "protobuf file is limited to 2 GiB; save it with external data instead")
    location = out.name + ".data"
    tmpdir = tempfile.mkdtemp(prefix=".bnfold-", dir=str(folder))
    try:
        tmp_model = os.path.join(tmpdir, out.name)
        if external_data:
            _write_with_external(model, tmp_model, location)
            os.replace(os.path.join(tmpdir, location), folder / location)
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_model, out)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    written = [str(out)] + ([str(folder / location)] if external_data else [])
    return written
