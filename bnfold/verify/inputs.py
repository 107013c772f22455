"""Model input/output signatures and the feeds both models are run on.

Feeds are either generated from the input specs (seeded; symbolic dims resolved from ``--shape``
or defaults) or read from the user's ``.npz`` files. Signature checks make sure the two models
can be compared at all before anything is run.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from bnfold.errors import InputError

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEEDS = 3
"""Random feeds per batch size by default: seeds ``seed, seed + 1, seed + 2``."""
SIZE_LADDER = (32, 64, 224, 96, 128, 160, 256, 320, 640)
"""Sizes tried, in order, for symbolic non-batch dims (``bnfold.verify.sizes``): small first, then
multiples of 32, which detection/FPN models (five stride-2 stages, then upsampling) need."""
DEFAULT_DIM = SIZE_LADDER[0]
"""Size of a symbolic non-batch dimension when no size was probed (``size`` not given)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape (ints, or strings/None for symbolic dims) of a graph input/output."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: rank unknown

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None or any(not isinstance(d, int) for d in self.shape)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)


def _np_dtype(elem_type: int) -> np.dtype:
    if elem_type == onnx.TensorProto.BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError) as exc:
        raise InputError(f"unsupported tensor element type {elem_type}") from exc


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise InputError(f"graph input/output {vi.name!r} is not a tensor; only tensors are supported")
    shape: tuple[int | str | None, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tt.shape.dim)
    return TensorSpec(vi.name, _np_dtype(tt.elem_type), shape)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Specs of the inputs a caller must feed (initializers listed as inputs are skipped)."""
    inits = {i.name for i in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Specs of the model's outputs."""
    return [_spec(vi) for vi in model.graph.output]


def check_signatures(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Raise InputError when the two models do not take the same inputs and give the same outputs."""
    for kind, fa, fb in (("inputs", graph_inputs(a), graph_inputs(b)),
                         ("outputs", graph_outputs(a), graph_outputs(b))):
        na, nb = [s.name for s in fa], [s.name for s in fb]
        if na != nb:
            raise InputError(f"the models have different {kind}: {na} vs {nb}; "
                             "compare a model only with its own folded version")
        for sa, sb in zip(fa, fb):
            if sa.dtype != sb.dtype:
                raise InputError(f"{kind[:-1]} {sa.name!r} has dtype {sa.dtype.name} in the original "
                                 f"but {sb.dtype.name} in the folded model")
            if sa.shape is not None and sb.shape is not None and len(sa.shape) != len(sb.shape):
                raise InputError(f"{kind[:-1]} {sa.name!r} has rank {len(sa.shape)} in the original "
                                 f"but {len(sb.shape)} in the folded model")


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` into ('name', (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise InputError(f"bad --shape {text!r}: expected NAME:DIMS such as input:1x3x224x224")
    return name, shape


def resolve_shape(spec: TensorSpec, batch: int | None,
                  shapes: Mapping[str, Sequence[int]] | None,
                  size: int = DEFAULT_DIM) -> tuple[int, ...]:
    """Concrete shape for one input: the user's ``--shape`` if given, else fixed dims, ``batch``
    for a symbolic leading dim, and ``size`` for other symbolic dims."""
    if shapes and spec.name in shapes:
        user = tuple(int(d) for d in shapes[spec.name])
        if spec.shape is not None:
            fits = len(user) == len(spec.shape) and all(
                not isinstance(d, int) or d == u for d, u in zip(spec.shape, user))
            if not fits:
                raise InputError(f"--shape {spec.name}:{'x'.join(map(str, user))} does not fit the "
                                 f"model's input shape {spec.shape_text()}")
        return user
    if spec.shape is None:
        raise InputError(f"input {spec.name!r} has unknown rank; give it with --shape {spec.name}:DIMS")
    dims = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0 and batch is not None:
            dims.append(batch)
        else:
            dims.append(size if not isinstance(d, int) else 1)
    return tuple(dims)


def sized_inputs(specs: Iterable[TensorSpec],
                 shapes: Mapping[str, Sequence[int]] | None) -> list[str]:
    """Inputs not fixed by ``--shape`` that have a symbolic dim besides the leading batch dim:
    the ones whose size must be chosen (``bnfold.verify.sizes``)."""
    return [s.name for s in specs if s.shape and not (shapes and s.name in shapes)
            and any(not isinstance(d, int) for d in s.shape[1:])]


def batch_is_dynamic(specs: Iterable[TensorSpec], shapes: Mapping[str, Sequence[int]] | None) -> bool:
    """True when some input not fixed by ``--shape`` has a symbolic leading dimension."""
    return any(s.shape and not isinstance(s.shape[0], int) and not (shapes and s.name in shapes)
               for s in specs)


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Seeded data for one input: N(0, 1) floats, integers in [0, 10), random bools."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)


def random_feeds(specs: Sequence[TensorSpec], batch: int | None,
                 shapes: Mapping[str, Sequence[int]] | None, seed: int,
                 size: int = DEFAULT_DIM) -> dict[str, np.ndarray]:
    """One seeded feed for all inputs at the given batch size (``size`` for other symbolic dims)."""
    rng = np.random.default_rng(seed)
    return {s.name: random_array(resolve_shape(s, batch, shapes, size), s.dtype, rng)
            for s in specs}


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


def input_sets(specs: list[TensorSpec], *, seeds: Sequence[int],
               shapes: Mapping[str, tuple[int, ...]], batch_sizes: Sequence[int] | None,
               data: Any, size: int = DEFAULT_DIM) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
    """(source label, feed chunks) per input set: the user's .npz files (or arrays), else one
    seeded random feed per seed x batch size (batch sizes only when the batch dim is symbolic;
    ``size`` for the other symbolic dims)."""
    if data is not None:
        if isinstance(data, Mapping):
            return [("arrays", split_batches(dict(data), specs))]
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(p), split_batches(load_npz(p, specs), specs)) for p in paths]
    names = {s.name for s in specs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise InputError(f"--shape names unknown input(s) {unknown}; the inputs are {sorted(names)}")
    dynamic = batch_is_dynamic(specs, shapes)
    if batch_sizes and not dynamic:
        raise InputError("--batch-size needs a symbolic batch dimension, but the model's batch "
                         "size is fixed (or set by --shape)")
    sizes: Sequence[int | None] = list(batch_sizes or DEFAULT_BATCH_SIZES) if dynamic else [None]
    return [(f"random seed={seed}" + (f" batch={b}" if b is not None else ""),
             [random_feeds(specs, b, shapes, seed, size)]) for seed in seeds for b in sizes]
