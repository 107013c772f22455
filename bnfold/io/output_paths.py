"""Where a model may be written: never onto a file the input reads, checked before any work.

A fold reads the model file and every external data file it references (initializers,
``Constant`` tensors, subgraphs, functions, sparse tensors). Files are compared by real path
and by inode, so a symlink, a hard link, ``sub/../`` spellings or a symlinked folder cannot
smuggle an output onto an input. ``check_output_paths`` runs every output check (folder,
directory, input itself, input data, writable) in well under a second, before the fold.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper as edh

from bnfold.errors import OutputError


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: the same real path, or the same inode (hard
    links, symlinks). A path that does not exist yet matches only by real path."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them missing, or a name the OS refuses
        return False


def _stored_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that may hold data: dense (graph, subgraphs, attributes, functions) and
    the values and indices of sparse ones."""
    yield from edh._get_all_tensors(model)
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for a in node.attribute:
                for sparse in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []):
                    yield sparse.values
                    yield sparse.indices
                for sparse in a.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
                graphs.extend([a.g] if a.HasField("g") else [])
                graphs.extend(a.graphs)


def data_locations(model: onnx.ModelProto) -> set[str]:
    """The external data locations (as written in the file) that ``model`` reads."""
    found = set()
    for tensor in _stored_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value:
                found.add(entry.value)
    return found


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """The model file, then every external data file it reads (resolved against the model's
    folder, as ONNX and ONNX Runtime resolve them). A file that cannot be parsed reads
    nothing else; loading it is what refuses it."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _structure(p)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError):
        return [p]
    return [p] + [p.parent / loc for loc in sorted(data_locations(model))
                  if not same_file(p.parent / loc, p)]  # its weights, read in place


def _structure(path: Path) -> onnx.ModelProto:
    """The model's graph without its single-file weights (only locations are needed here)."""
    from bnfold.io.weights_in_file import parse_structure

    model = parse_structure(path) if path.is_file() else None
    return model if model is not None else onnx.load_model(str(path), load_external_data=False)


def check_destination(out: Path, overwrite: bool) -> Path:
    """The folder ``out`` goes into, after the checks that need no input: it exists, ``out``
    is not a directory, may be replaced, and the folder is writable. Raises OutputError."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: folder {str(folder)!r} does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass overwrite / --force to replace it)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: folder {str(folder)!r} is not writable")
    return folder


def _probe_writable(out: Path, folder: Path) -> None:
    """Create and remove a temporary folder where the output will go (``os.access`` says
    yes to root on read-only file systems)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bnfold-probe-", dir=str(folder)))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in {str(folder)!r}: "
                          f"{exc.strerror or exc}") from None


def check_output_paths(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                       in_place: bool = False, overwrite: bool = True,
                       external_data: bool | None = None) -> list[Path]:
    """Refuse, before any work, an output that cannot be written or would land on the input;
    return ``input_files(src)``, the files a save must then leave alone (``protect``).

    ``out`` must not be any file ``src`` reads (its data files, or ``src`` itself unless
    ``in_place``), and unless ``in_place`` (where ``save_model`` picks a free name) nor may
    the data file ``out`` gets (``<out>.data``) when ``external_data`` is not False.
    Raises OutputError with one line.
    """
    out = Path(out)
    folder = check_destination(out, overwrite)
    files = input_files(src)
    if same_file(out, files[0]) and not in_place:
        raise OutputError(f"{out}: is the input model; pass --in-place to overwrite it")
    for data in files[1:]:
        if same_file(out, data):
            raise OutputError(f"{out}: is external data the input model reads{_alias(out, data)}; "
                              "writing there would destroy the input: choose another output")
    if external_data is not False and not in_place:
        data = folder / f"{out.name}.data"
        if data.is_dir():
            raise OutputError(f"{out}: its data file {data} is a directory")
        for kept in files:
            if same_file(data, kept):
                raise OutputError(f"{out}: its data file {data} is a file the input model reads"
                                  f"{_alias(data, kept)}; choose another output name")
    _probe_writable(out, folder)
    return files


def _alias(path: Path, same: Path) -> str:
    """`` (as NAME)`` when the input spells the same file differently, else nothing."""
    return "" if os.path.normpath(path) == os.path.normpath(same) else f" (as {same})"


def free_data_name(out: Path, folder: Path, kept: Iterable[Path]) -> str:
    """``<name>.data``, or ``<name>.1.data`` (...): the first name in ``folder`` that is none
    of the files in ``kept`` (files still read, by the model being replaced or the inputs)
    and not a directory.

    Renaming new data over a file a model still reads would corrupt that model, even if the
    model file itself is replaced right after (the process may die in between).
    """
    kept = list(kept)
    name, i = f"{out.name}.data", 0
    while (folder / name).is_dir() or any(same_file(folder / name, k) for k in kept):
        i += 1
        name = f"{out.name}.{i}.data"
    return name
