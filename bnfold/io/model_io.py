"""Load and save ONNX models safely: clear errors, checked external data, atomic writes.

Loading refuses, with one actionable line, anything that is not a valid ONNX model whose
external data stays inside the model's folder; it can leave that data on disk (lazy), to be
read tensor by tensor. Saving never copies the model's tensors: with external data it streams
each large tensor to the data file (tensors still on disk are copied chunk-wise from their
source file) and serializes a small skeleton proto, so a multi-GB model is saved with about
one tensor of extra memory.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper as edh
from onnx import helper

from bnfold.io.data_file import (
    PACKED_4BIT,
    DataWriter,
    data_bytes,
    external_info,
    external_length,
    is_repeated,
    stored_size,
)
from bnfold.errors import InputError, OutputError
from bnfold.io.interrupts import cleanup_on_termination
from bnfold.io.output_paths import (  # check_output_paths, input_files: part of this API
    check_destination,
    check_output_paths,  # noqa: F401
    data_locations,
    free_data_name,
    input_files,
    same_file,
)
from bnfold.io import spill
from bnfold.io.proto_stream import streams_initializers
from bnfold.io.proto_stream import write_file as _write_streamed  # one initializer at a time
from bnfold.io.weights_in_file import is_model_file, parse_structure

MIN_OPSET = 7
PROTOBUF_LIMIT = 2**31 - 1
PROTO_HEADROOM = 64 * 2**20  # bytes kept free under the protobuf limit for graph structure


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


def _tensors_but_main_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """``_all_tensors`` without the main graph's initializers: subgraph initializers, then
    tensor attributes (in functions too)."""
    for node in model.graph.node:
        for a in node.attribute:
            yield from edh._recursive_attribute_processor(a, edh._get_initializer_tensors_from_graph)
    yield from edh._get_attribute_tensors(model)


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


def _check_text(message: Message, path: str) -> None:
    """Refuse strings that are not valid UTF-8 (protobuf hands them over as bytes)."""
    for fd, value in message.ListFields():  # set fields only: cheap on large graphs
        if fd.type == fd.TYPE_STRING:
            for item in (value if is_repeated(fd) else (value,)):
                if isinstance(item, bytes):
                    raise InputError(f"{path}: field {fd.name!r} holds bytes that are not valid "
                                     f"UTF-8 ({item[:24]!r}...); the file is corrupted")
        elif fd.type == fd.TYPE_MESSAGE:
            for item in (value if is_repeated(fd) else (value,)):
                _check_text(item, path)


def _check_tensor(tensor: onnx.TensorProto, path: str) -> None:
    """Refuse a tensor whose stored data does not match its dims and data type."""
    want = data_bytes(tensor, path)
    if want is None or edh.uses_external_data(tensor):
        return
    unit = "bytes"
    if tensor.HasField("raw_data"):
        have = len(tensor.raw_data)
    else:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        values = len(getattr(tensor, field))
        if values == 0 or tensor.data_type in PACKED_4BIT:
            return  # no data, or packed 4-bit ints whose count onnx checks on use
        per = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64,
                                        onnx.TensorProto.COMPLEX128) else 1
        have, want, unit = values, math.prod(tensor.dims) * per, "values"
    if have != want:
        raise InputError(f"{path}: tensor {tensor.name!r} holds {have} {unit} but its shape "
                         f"{list(tensor.dims)} needs {want}; the file is corrupted")


def _check_external(tensor: onnx.TensorProto, base: Path, path: str,
                    files: dict[str, int] | None = None) -> None:
    """Refuse external data that is malformed, outside the model's folder, a link, missing, or
    shorter than the tensor. ``files``: location -> size of the files already checked (a
    single file's weights all point into one file: it is resolved and checked once)."""
    try:
        info = external_info(tensor)  # quietly: onnx warns about unknown keys on stderr
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: tensor {tensor.name!r} has malformed external data "
                         f"fields ({exc})") from None
    loc = info.location
    if not loc:
        raise InputError(f"{path}: tensor {tensor.name!r} uses external data but names no file")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc or "\0" in loc:
        raise InputError(f"{path}: external data location {loc!r} of tensor {tensor.name!r} is "
                         "absolute; only paths inside the model's folder are allowed")
    size = files.get(loc) if files is not None else None
    if size is None:
        size = _check_data_file(tensor, base, path, loc)
        if files is not None:
            files[loc] = size
    offset = info.offset or 0
    length = info.length if info.length is not None else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(f"{path}: external data file {loc!r} is shorter ({size} bytes) than "
                         f"tensor {tensor.name!r} needs (offset {offset} + length {length})")
    want = data_bytes(tensor, path)
    if want is not None and length != want:
        raise InputError(f"{path}: tensor {tensor.name!r} declares {length} bytes of external "
                         f"data but its shape {list(tensor.dims)} needs {want}")


def _check_data_file(tensor: onnx.TensorProto, base: Path, path: str, loc: str) -> int:
    """The size of external data file ``loc``, after refusing one outside ``base``, a link, or
    a missing file."""
    real_base = base.resolve()
    real = (base / loc).resolve()
    if real != real_base and real_base not in real.parents:
        raise InputError(f"{path}: external data location {loc!r} of tensor {tensor.name!r} "
                         "escapes the model's folder (../ or a symlink out); refusing to read it")
    if (base / loc).is_symlink():  # onnx refuses links too; say so before its checker does
        raise InputError(f"{path}: external data file {loc!r} is a symbolic link; onnx does not "
                         "read external data through links: put the real file there")
    if not real.is_file():
        raise InputError(f"{path}: external data file {loc!r} for tensor {tensor.name!r} is missing")
    return real.stat().st_size


def _check_graph(model: onnx.ModelProto, shown: str) -> None:
    """Run onnx.checker on the model's data-free skeleton (cheap even for large models).

    Only onnx's verdict on the model becomes an InputError; an error of bnfold's own (or an
    onnx API it does not expect) propagates, so it is never reported as a bad model.
    """
    from bnfold.io.skeleton import CheckFailed, full_check, skeleton

    try:
        full_check(skeleton(model), full=False)
    except CheckFailed as exc:
        text = " ".join(str(exc).split())  # onnx spreads it over lines
        if len(text) > 300:
            text = text[:297] + "..."
        raise InputError(f"{shown}: not a valid ONNX model (onnx.checker: {text})") from None


def check_model_proto(model: onnx.ModelProto, shown: str = "model") -> None:
    """The checks ``load_model`` makes, for a model handed over in memory: opset range, no
    unread external data, and onnx.checker (on the data-free skeleton). Raises InputError."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InputError(f"{shown}: not an ONNX model (no IR version or graph)")
    _check_opset(model, shown)
    external = data_locations(model)
    if external:  # reading it relative to the current directory would fold foreign weights
        raise InputError(f"{shown}: its tensors refer to external data ({min(external)!r}) but the "
                         "model was handed over in memory, with no folder to read it from; "
                         "pass the model's path, or load it with its data")
    _check_graph(model, shown)


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(edh.uses_external_data(t) for t in _all_tensors(model))


def load_model(path: str | os.PathLike[str], *, load_external_data: bool = True,
               check: bool = True, weights_in_file: bool = False) -> onnx.ModelProto:
    """Read an ONNX file with its external data, or raise InputError saying why it can't.

    With ``load_external_data=False`` the tensors stay external (their locations and lengths
    are still checked); read them relative to the model's folder, and pass that folder as
    ``source_dir`` to ``save_model``. ``weights_in_file`` (with ``load_external_data=False``):
    a single file's large weights stay in it too, as external data pointing into the .onnx
    itself (``bnfold.io.weights_in_file``): only the graph structure is parsed. ``check`` runs
    onnx.checker on the input so an invalid graph is refused up front.
    """
    p = Path(path)
    shown = str(path)
    try:
        if not p.exists():
            raise InputError(f"{shown}: no such file")
        if p.is_dir():
            raise InputError(f"{shown}: is a directory, not an ONNX file")
        if p.stat().st_size == 0:
            raise InputError(f"{shown}: empty file, not an ONNX model")
        if not os.access(p, os.R_OK):
            raise InputError(f"{shown}: not readable (permission denied)")
    except OSError as exc:  # e.g. a name too long, or a symlink loop
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        model = parse_structure(p) if weights_in_file and not load_external_data else None
        if model is None:
            model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{shown}: not a readable ONNX model (protobuf parse failed: "
                         f"{type(exc).__name__}); the file may be truncated or not ONNX") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InputError(f"{shown}: not an ONNX model (no IR version or graph); the file may be "
                         "truncated or of another format")
    _check_opset(model, shown)
    _check_text(model, shown)
    base = p.parent
    external = []
    files: dict[str, int] = {}
    for tensor in _all_tensors(model):
        if edh.uses_external_data(tensor):
            _check_external(tensor, base, shown, files)
            external.append(tensor)
        else:
            _check_tensor(tensor, shown)
    if check:
        _check_graph(model, shown)
    if external and load_external_data:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unknown keys were accepted above, as onnx does
                edh.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise InputError(f"{shown}: cannot read external data: {exc}") from None
    return model


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Approximate serialized size of all tensors (external data included), without copying."""
    return sum(stored_size(t) + external_length(t) for t in _all_tensors(model))


def load_external(model: onnx.ModelProto, source_dir: str | os.PathLike[str], *,
                  main_initializers: bool = True) -> None:
    """Read every tensor still external (relative to ``source_dir``, or in a fold's scratch
    file, ``io.spill``) into ``model`` itself; with ``main_initializers=False`` all but the main
    graph's initializers (``proto_stream`` writes those from their files)."""
    tensors = _all_tensors(model) if main_initializers else _tensors_but_main_initializers(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for tensor in tensors:
                if edh.uses_external_data(tensor):
                    spill.read_in(tensor, source_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"{source_dir}: cannot read external data: {exc}") from None


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_with_external(model: onnx.ModelProto, model_path: str, data_path: str,
                         location: str, source_dir: Path | None) -> None:
    """Stream large tensors into ``data_path``; write a skeleton model that points at them.

    ``model`` is left untouched (its tensors are read, never copied as a whole).
    """
    with open(data_path, "wb") as f:
        skeleton = DataWriter(f, location, source_dir).model(model)
        f.flush()
        os.fsync(f.fileno())
    if skeleton.ByteSize() > PROTOBUF_LIMIT:
        raise OutputError(f"{model_path}: even with external data the graph structure is over "
                          "2 GiB; it cannot be saved as ONNX")
    _write_file(model_path, skeleton.SerializeToString())


def _kept_files(model: onnx.ModelProto, out: Path, source: Path | None,
                protect: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files a save must never replace: ``protect``, the data files ``model`` still copies
    from (under ``source``), and those the file being replaced still reads until it is."""
    kept = [Path(p) for p in protect]
    if source is not None:
        kept += [source / loc for loc in data_locations(model)  # the model file itself is
                 if not (is_model_file(source / loc) and same_file(source / loc, out))]  # staged
    if out.is_file():
        kept += input_files(out)[1:]
    return kept


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the data itself is synced
    finally:
        os.close(fd)


@dataclass
class StagedModel:
    """A model written to a temporary folder beside its destination, not yet in place.

    ``path`` is a complete model (its data file beside it) that can be loaded or verified
    from disk; ``commit`` renames the data file, then the model file, into place.
    """

    path: Path
    out: Path
    data_location: str

    def commit(self) -> list[str]:
        """Move the staged files into place (data first: the model never points at missing
        or foreign data); return the paths written."""
        folder = self.out.parent if str(self.out.parent) else Path(".")
        try:
            if self.data_location:
                os.replace(self.path.parent / self.data_location, folder / self.data_location)
            os.replace(self.path, self.out)
            _fsync_dir(folder)
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot write: {exc.strerror or exc}") from None
        return [str(self.out)] + ([str(folder / self.data_location)] if self.data_location else [])


@contextmanager
def stage_model(model: onnx.ModelProto, path: str | os.PathLike[str], *,
                overwrite: bool = True, external_data: bool | None = None,
                source_dir: str | os.PathLike[str] | None = None,
                protect: Iterable[str | os.PathLike[str]] = (),
                read_in: bool = True) -> Iterator[StagedModel]:
    """Write ``model`` into a temporary folder beside ``path``; yield it for checks and
    ``commit``; remove whatever was not committed on the way out.

    The options are ``save_model``'s. ``read_in=False``: a single-file output copies the main
    graph's weights still external from their files as it writes them, instead of reading
    them into ``model`` first (which then still points at them: for a caller done with it).
    SIGTERM and SIGHUP, like Ctrl-C, remove the temporary files before the process ends
    (see ``bnfold.io.interrupts``).
    """
    out = Path(path)
    source = Path(source_dir) if source_dir is not None else None
    folder = check_destination(out, overwrite)
    kept = _kept_files(model, out, source, protect)
    for file in kept:
        if same_file(out, file):
            raise OutputError(f"{path}: is {file}, a file the model being saved still reads; "
                              "refusing to write over it")
    size = tensor_bytes(model)
    too_big = size + PROTO_HEADROOM > PROTOBUF_LIMIT
    if external_data is None:
        external_data = too_big
    elif not external_data and too_big:
        raise OutputError(f"{path}: the model is {size / 2**30:.1f} GiB; a single protobuf file "
                          "is limited to 2 GiB; save it with external data instead "
                          "(--external-data)")
    if not external_data and source is not None and uses_external_data(model):
        # without read_in the main graph's weights are copied from their files as written
        load_external(model, source, main_initializers=read_in or not streams_initializers(model))
    location = free_data_name(out, folder, kept) if external_data else ""
    with cleanup_on_termination():
        try:
            tmpdir = tempfile.mkdtemp(prefix=".bnfold-", dir=str(folder))
        except OSError as exc:
            raise OutputError(f"{path}: cannot write in {str(folder)!r}: "
                              f"{exc.strerror or exc}") from None
        try:
            tmp_model = os.path.join(tmpdir, out.name)
            try:
                if external_data:
                    _write_with_external(model, tmp_model, os.path.join(tmpdir, location),
                                         location, source)
                else:
                    _write_streamed(tmp_model, model, None if source is None else str(source))
            except OSError as exc:
                raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
            del model  # written: the caller may free it while the staged files are checked
            yield StagedModel(Path(tmp_model), out, location)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *,
               overwrite: bool = True, external_data: bool | None = None,
               source_dir: str | os.PathLike[str] | None = None,
               protect: Iterable[str | os.PathLike[str]] = (), read_in: bool = True) -> list[str]:
    """Write ``model`` atomically (temp files, fsync, rename); return the paths written.

    external_data=None chooses external data only when the model is too big for one protobuf;
    external_data=False on such a model raises OutputError. The data file is written beside
    the model under a name no model still reads (``<name>.data``, else ``<name>.1.data``...)
    and renamed into place before the model file.
    ``source_dir``: the folder that tensors still external (a lazy ``load_model``) are relative
    to; they are copied chunk-wise into the new data file, or, for a single-file output, read
    into ``model`` itself (``read_in=False``: the main graph's weights are copied from their
    files as they are written, and ``model`` keeps pointing at them: memory stays flat).
    ``protect``: files that must never be replaced (the input's files, see ``input_files``);
    the output itself being one of them is refused.
    """
    with stage_model(model, path, overwrite=overwrite, external_data=external_data,
                     source_dir=source_dir, protect=protect, read_in=read_in) as staged:
        return staged.commit()
