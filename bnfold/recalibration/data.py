"""Batches of model inputs for recalibration: from .npz, a folder of .npy files, or an iterable.

A folder of .npy files is memory-mapped, so only the batch being run is read into memory: use it
for data sets larger than memory. An .npz is read one array at a time (each whole). Every batch
is checked against the model's inputs (names, dtype, rank, fixed dims) and for NaN/infinity.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from bnfold.errors import InputError
from bnfold.inputs import TensorSpec

Feed = dict[str, np.ndarray]


def from_path(path: str | Path, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    """Chunks of samples (whole arrays, or whole files) from an .npz or a folder of .npy files.

    Folder layout: one input -> any number of ``*.npy`` files (sorted by name), each holding
    samples along axis 0; several inputs -> one ``<input name>.npy`` per input.
    """
    p = Path(path)
    if p.is_dir():
        return _from_folder(p, specs)
    if not p.is_file():
        raise InputError(f"data {p}: no such file or folder")
    return _from_npz(p, specs)


def _from_npz(p: Path, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read {p} as .npz: {exc}") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        z = {specs[0].name: z} if len(specs) == 1 else {}
    keys = list(z.keys()) if isinstance(z, dict) else z.files
    names = [s.name for s in specs]
    if len(specs) == 1 and len(keys) == 1 and names[0] not in keys:
        keys_for = {names[0]: keys[0]}
    else:
        missing = [n for n in names if n not in keys]
        if missing:
            raise InputError(f"{p} lacks input(s) {missing}; its arrays are {sorted(keys)}")
        keys_for = {n: n for n in names}

    def chunks() -> Iterator[Feed]:
        yield {n: np.asarray(z[k]) for n, k in keys_for.items()}

    return chunks()


def _from_folder(p: Path, specs: Sequence[TensorSpec]) -> Iterator[Feed]:
    files = sorted(p.glob("*.npy"))
    if not files:
        raise InputError(f"data folder {p} holds no .npy files")

    def load(f: Path) -> np.ndarray:
        try:
            return np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {f} as .npy: {exc}") from exc

    if len(specs) == 1:
        return ({specs[0].name: load(f)} for f in files)
    by_name = {f.stem: f for f in files}
    missing = [s.name for s in specs if s.name not in by_name]
    if missing:
        raise InputError(f"data folder {p} lacks {', '.join(m + '.npy' for m in missing)}; a "
                         "model with several inputs needs one <input name>.npy per input")
    return iter([{s.name: load(by_name[s.name]) for s in specs}])


def rebatch(chunks: Iterable[Mapping[str, np.ndarray]], batch_size: int | None) -> Iterator[Feed]:
    """Cut each chunk into batches of ``batch_size`` samples (the last may be smaller)."""
    for chunk in chunks:
        if batch_size is None:
            yield dict(chunk)
            continue
        sizes = {int(np.shape(a)[0]) if np.ndim(a) else 1 for a in chunk.values()}
        if len(sizes) != 1:
            raise InputError(f"the inputs of one chunk hold different sample counts {sorted(sizes)}")
        n = sizes.pop()
        for start in range(0, n, batch_size):
            yield {k: np.asarray(v[start:start + batch_size]) for k, v in chunk.items()}


def checked(batches: Iterable[Mapping[str, np.ndarray]], specs: Sequence[TensorSpec],
            max_batches: int | None = None) -> Iterator[Feed]:
    """Validate and cast each batch to the model's inputs; stop after ``max_batches``."""
    seen = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and seen >= max_batches:
            return
        yield {s.name: _checked_array(batch, s, i) for s in specs}
        seen += 1
    if seen == 0:
        raise InputError("the data set is empty: no batch to measure statistics on")


def _checked_array(batch: Mapping[str, np.ndarray], spec: TensorSpec, i: int) -> np.ndarray:
    if spec.name not in batch:
        raise InputError(f"batch {i} lacks input {spec.name!r}; it has {sorted(batch)}")
    arr = np.asarray(batch[spec.name])
    where = f"batch {i}, input {spec.name!r}"
    if spec.shape is not None:
        if arr.ndim != len(spec.shape):
            raise InputError(f"{where}: shape {list(arr.shape)} but the model expects "
                             f"{spec.shape_text()}")
        bad = [(a, d, e) for a, (d, e) in enumerate(zip(arr.shape, spec.shape))
               if isinstance(e, int) and e > 0 and d != e]
        if bad:
            a, d, e = bad[0]
            raise InputError(f"{where}: size {d} on axis {a} but the model expects {e} "
                             f"({spec.shape_text()})")
    if arr.size == 0:
        raise InputError(f"{where}: no samples")
    if arr.dtype != spec.dtype:
        same_kind = (np.issubdtype(arr.dtype, np.floating) == np.issubdtype(spec.dtype, np.floating))
        if not same_kind:
            raise InputError(f"{where}: dtype {arr.dtype.name} but the model expects "
                             f"{spec.dtype.name}")
        arr = arr.astype(spec.dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{where}: holds NaN or infinity; statistics of such data are "
                         "meaningless")
    return arr
