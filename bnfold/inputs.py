"""Graph input/output specs, and the seeded random inputs every command runs a model on.

One shape policy for ``verify``, ``bench`` and ``fold``'s verification (``ShapeRequest.resolve``):

1. ``--shape NAME:DIMS`` fixes a whole input (it must agree with the input's fixed dims);
2. ``--dim SYMBOL=N`` sizes a named symbolic dim wherever it appears, leading dim included;
3. a fixed dim is kept;
4. a leading dim still open is the batch (the caller's batch size);
5. any other open dim gets ``size``: verification probes a size the model runs
   (``bnfold.verification.sizes``); without one (``bench``) it is an InputError naming ``--dim`` and
   ``--shape``, because a latency measured at a guessed size answers a question nobody asked.

Values: N(0, 1) floats drawn in float32 and cast (float16, bfloat16 and float64 inputs get the same
numbers), integers in [0, 10), random bools; one generator per feed, seeded with ``seed``, drawing
the inputs in graph order.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from bnfold.errors import InputError

Dim = int | str | None  # fixed size, symbol, or unknown


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape (ints, or strings/None for symbolic dims) of a graph input/output."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)


def np_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type (bfloat16 through ml_dtypes)."""
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
    shape: tuple[Dim, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tt.shape.dim)
    return TensorSpec(vi.name, np_dtype(tt.elem_type), shape)


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


def parse_dims(text: str, *, what: str = "shape", minimum: int = 0) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (``,`` also separates) into ints of at least ``minimum``."""
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d < minimum for d in dims):
        raise InputError(f"bad {what} {text!r}: expected ints >= {minimum} such as 1x3x224x224")
    return dims


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``--shape name:1x3x224x224`` into ('name', (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"bad --shape {text!r}: expected NAME:DIMS such as input:1x3x224x224")
    return name, parse_dims(dims, what=f"--shape {text!r}: dims")


def parse_dim(text: str) -> tuple[str, int]:
    """Parse ``--dim seq=128`` into ('seq', 128)."""
    name, sep, size = text.rpartition("=")
    if not sep or not name or not size.isdigit() or int(size) < 1:
        raise InputError(f"bad --dim {text!r}: expected SYMBOL=N with N >= 1, such as seq=128")
    return name, int(size)


def _is_open(d: Dim) -> bool:
    return not isinstance(d, int)


@dataclass(frozen=True)
class ShapeRequest:
    """What the user fixed: whole input shapes by input name (``--shape``) and sizes of named
    symbolic dims (``--dim``). ``resolve`` applies the module's shape policy."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]] | Iterable[str] | None = None,
           dims: Mapping[str, int] | Iterable[str] | None = None) -> ShapeRequest:
        """From ``--shape``/``--dim`` texts ("x:1x3x8x8", "seq=128") or mappings."""
        if isinstance(shapes, Mapping):
            shape_map = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        else:
            shape_map = dict(parse_shape(s) for s in shapes or ())
        if isinstance(dims, Mapping):
            dim_map = {k: int(v) for k, v in dims.items()}
        else:
            dim_map = dict(parse_dim(d) for d in dims or ())
        bad = [k for k, v in dim_map.items() if v < 1]
        if bad:
            raise InputError(f"--dim {bad[0]}={dim_map[bad[0]]}: a dim size must be >= 1")
        return cls(shape_map, dim_map)

    def check(self, specs: Sequence[TensorSpec]) -> None:
        """InputError for a ``--shape`` naming no input or a ``--dim`` naming no symbol."""
        names = [s.name for s in specs]
        unknown = sorted(set(self.shapes) - set(names))
        if unknown:
            raise InputError(f"--shape names unknown input(s) {unknown}; the inputs are {sorted(names)}")
        symbols = {d for s in specs for d in s.shape or () if isinstance(d, str)}
        unknown = sorted(set(self.dims) - symbols)
        if unknown:
            raise InputError(f"--dim names unknown symbol(s) {unknown}; the inputs' symbolic dims "
                             f"are {sorted(symbols) or 'none'}")

    def _open(self, d: Dim) -> bool:
        return _is_open(d) and not (isinstance(d, str) and d in self.dims)

    def batch_is_dynamic(self, specs: Iterable[TensorSpec]) -> bool:
        """True when some input not fixed by ``--shape`` has a leading dim left open."""
        return any(s.shape and s.name not in self.shapes and self._open(s.shape[0]) for s in specs)

    def sized_inputs(self, specs: Iterable[TensorSpec]) -> list[str]:
        """Inputs with an open dim besides the leading one: those that need ``size``."""
        return [s.name for s in specs if s.shape and s.name not in self.shapes
                and any(self._open(d) for d in s.shape[1:])]

    def fixed_batch(self, specs: Sequence[TensorSpec]) -> int | None:
        """The leading dim of the first input whose leading dim is fixed (by the model,
        ``--shape`` or ``--dim``); None when there is none."""
        for s in specs:
            if s.name in self.shapes and self.shapes[s.name]:
                return self.shapes[s.name][0]
            if s.shape and not self._open(s.shape[0]):
                d = s.shape[0]
                return self.dims[d] if isinstance(d, str) else int(d)  # type: ignore[arg-type]
        return None

    def batches(self, specs: Sequence[TensorSpec], asked: Sequence[int] | None,
                default: Sequence[int]) -> list[int | None]:
        """Batch sizes to run: ``asked`` (else ``default``) when the batch dim is open; [None]
        (the model's own) when it is fixed, where asking for another batch is an InputError."""
        if self.batch_is_dynamic(specs):
            return list(asked or default)
        fixed = self.fixed_batch(specs)
        other = [b for b in asked or () if b != fixed]
        if other:
            raise InputError(f"batch size {other[0]} needs a symbolic batch dimension, but the "
                             f"model's batch is fixed at {fixed} (or set by --shape/--dim)")
        return [None]

    def resolve(self, spec: TensorSpec, batch: int | None, size: int | None = None
                ) -> tuple[int, ...]:
        """Concrete shape for one input under the policy in this module's docstring."""
        if spec.name in self.shapes:
            user = self.shapes[spec.name]
            if spec.shape is not None and not (len(user) == len(spec.shape) and all(
                    _is_open(d) or d == u for d, u in zip(spec.shape, user))):
                raise InputError(f"--shape {spec.name}:{'x'.join(map(str, user))} does not fit the "
                                 f"model's input shape {spec.shape_text()}")
            return user
        if spec.shape is None:
            raise InputError(f"input {spec.name!r} has unknown rank; give it with --shape {spec.name}:DIMS")
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif isinstance(d, int):  # a declared 0 is not a size anything runs: one row
                dims.append(batch if axis == 0 and batch is not None else 1)
            elif isinstance(d, str) and d in self.dims:
                dims.append(self.dims[d])
            elif axis == 0 and batch is not None:
                dims.append(batch)
            elif size is not None:
                dims.append(size)
            else:
                label = repr(d) if d else "(unnamed)"
                hint = f"--dim {d}=N or " if d else ""
                raise InputError(f"input {spec.name!r} dimension {axis} {label} is symbolic; give "
                                 f"its size with {hint}--shape {spec.name}:DIMS")
        return tuple(dims)

    def feed(self, specs: Sequence[TensorSpec], batch: int | None, seed: int,
             size: int | None = None) -> dict[str, np.ndarray]:
        """One seeded random feed for all inputs at ``batch`` (``size`` for other open dims)."""
        rng = np.random.default_rng(seed)
        return {s.name: random_array(self.resolve(s, batch, size), s.dtype, rng) for s in specs}


def random_array(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Seeded data for one input: N(0, 1) floats, integers in [0, 10), random bools."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind in "OSU":
        raise InputError(f"cannot generate random {dtype.name} inputs; give real inputs with --data")
    return rng.standard_normal(size=shape).astype(np.float32).astype(dtype)
