"""The input sets verification runs: the user's ``.npz`` files (and labels), or seeded random feeds.

Random feeds come from ``bnfold.inputs`` (one shape policy and generator for every command); this
module decides how many and at which batch sizes (``DEFAULT_BATCH_SIZES``, ``default_plan``), and
splits the user's many-sample files into batches the model accepts.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bnfold.errors import InputError
from bnfold.inputs import ShapeRequest, TensorSpec

DEFAULT_BATCH_SIZES = (1, 2)
"""Batch sizes verified by default when the batch dim is symbolic: 1, the usual deployment batch,
and 2, the smallest batch where an error coupling the samples of a batch shows (a fold broadcast
along the batch axis, a Reshape that mixes batch and channels). A larger batch catches nothing
more of that kind and costs its size: the end-to-end runs are most of a verification's time."""
DEFAULT_SEEDS = 3
"""Random feeds by default: seeds ``seed, seed + 1, seed + 2`` (a wrong fold shows on any random
draw; more draws catch an error the tolerance hides on one draw and not on another)."""


def default_plan(seeds: Sequence[int], batches: Sequence[int | None]
                 ) -> list[tuple[int, int | None]]:
    """(seed, batch) of the default random feeds: the seeds take the batch sizes in turn (seed,
    seed + 1, seed + 2 at batch 1, 2, 1), so every seed and every batch size is run once, not
    their product: at 1 + 2 + 1 samples per model instead of 3 x (1 + 8) before. Batch sizes the
    user asks for (``--batch-size``) run at every seed instead (``input_sets``)."""
    if len(batches) <= 1 or not seeds:
        return [(s, b) for s in seeds for b in batches]
    n = max(len(seeds), len(batches))
    return [(seeds[i % len(seeds)], batches[i % len(batches)]) for i in range(n)]


def load_npz(path: str | Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Read a feed from ``.npz``: keys are input names (a single unnamed array feeds a single input)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read {p} as .npz: {exc}") from exc
    names = [s.name for s in specs]
    if len(specs) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{p} lacks input(s) {missing}; its keys are {sorted(arrays)}")
    feed = {}
    for s in specs:
        arr = arrays[s.name]
        if s.shape is not None and arr.ndim != len(s.shape):
            raise InputError(f"{p}:{s.name} has shape {arr.shape} but the model expects "
                             f"{s.shape_text()}")
        feed[s.name] = _cast_input(arr, s, p)
    return feed


def _cast_input(arr: np.ndarray, spec: TensorSpec, path: Path) -> np.ndarray:
    """Cast a user array to the input dtype when that loses nothing that matters (float<->float,
    int->int); refuse float data for integer inputs."""
    if arr.dtype == spec.dtype:
        return arr
    if np.issubdtype(spec.dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}:{spec.name} is {arr.dtype.name} but the model expects "
                         f"{spec.dtype.name}")
    return arr.astype(spec.dtype)


def load_labels(path: str | Path) -> np.ndarray:
    """Integer class labels from ``.npy`` (or the single array of an ``.npz``)."""
    p = Path(path)
    try:
        loaded: Any = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as z:
                if len(z.files) != 1:
                    raise InputError(f"{p} holds {len(z.files)} arrays; labels need exactly one")
                loaded = z[z.files[0]]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read labels from {p}: {exc}") from exc
    labels = np.asarray(loaded).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels in {p} are {labels.dtype.name}; expected integer class ids")
    return labels


def split_batches(feed: Mapping[str, np.ndarray], specs: Sequence[TensorSpec],
                  max_batch: int = 256) -> list[dict[str, np.ndarray]]:
    """Split a many-sample feed into chunks the model accepts: its fixed batch size, or up to
    ``max_batch`` rows when the batch dim is symbolic. Raises when the samples do not divide."""
    n = {int(a.shape[0]) for a in feed.values() if a.ndim > 0}
    if len(n) != 1:
        return [dict(feed)]
    total = n.pop()
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    step = next(iter(fixed)) if len(fixed) == 1 else max_batch
    if total % step and len(fixed) == 1:
        raise InputError(f"{total} samples cannot be split into the model's fixed batch of {step}")
    return [{k: v[i:i + step] for k, v in feed.items()} for i in range(0, total, step)]


def input_sets(specs: list[TensorSpec], *, seeds: Sequence[int], request: ShapeRequest,
               batch_sizes: Sequence[int] | None, data: Any, size: int | None = None
               ) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
    """(source label, feed chunks) per input set: the user's .npz files (or arrays), else seeded
    random feeds: one per seed x ``batch_sizes`` when given, else ``default_plan`` over the
    ``DEFAULT_BATCH_SIZES`` (batch sizes only when the batch dim is symbolic; a fixed batch runs
    once per seed); ``size`` for the other symbolic dims."""
    if data is not None:
        if isinstance(data, Mapping):
            return [("arrays", split_batches(dict(data), specs))]
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(p), split_batches(load_npz(p, specs), specs)) for p in paths]
    request.check(specs)
    batches = request.batches(specs, batch_sizes, DEFAULT_BATCH_SIZES)
    plan = ([(s, b) for s in seeds for b in batches] if batch_sizes
            else default_plan(list(seeds), batches))
    return [(f"random seed={seed}" + (f" batch={b}" if b is not None else ""),
             [request.feed(specs, b, seed, size)]) for seed, b in plan]
