"""Choose a size for symbolic input dims (height, width, length) that the original model runs.

Detection and FPN models reject most sizes (five stride-2 stages followed by upsampling and an
Add with the skip need multiples of 32), so no single default fits every model. Verification
feeds every symbolic non-batch dim the first size of ``SIZE_LADDER`` the original runs:
batch 1, one run per size, in the verification's own ORT child process, stopping at the first
that runs. When none runs, the user is told to give the shapes with ``--shape`` (or ``--dim``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx

from bnfold.errors import InputError
from bnfold.inputs import ShapeRequest, TensorSpec, graph_inputs
from bnfold.verification import engines, runner

SIZE_LADDER = (32, 64, 224, 96, 128, 160, 256, 320, 640)
"""Sizes tried, in order: small first, then multiples of 32, which detection/FPN models (five
stride-2 stages, then upsampling) need."""


@dataclass(frozen=True)
class SizeChoice:
    """The size given to the symbolic non-batch dims of ``inputs``, and the sizes tried for it
    (the last one is ``size``; an empty ``tried`` means the caller chose it)."""

    size: int
    inputs: tuple[str, ...]
    tried: tuple[int, ...] = ()

    def note(self) -> str:
        """One clause for the summary line and the report."""
        names = ", ".join(map(repr, self.inputs))
        refused = self.tried[:-1]
        why = ("given" if not self.tried else
               f"the original runs none of {', '.join(map(str, refused))}" if refused else
               "the first size tried that the original runs")
        return (f"symbolic dims of input {names} set to {self.size} ({why}; "
                "--shape NAME:DIMS or --dim SYMBOL=N sets them)")


def _example(spec: TensorSpec) -> str:
    dims = spec.shape or ()
    shown = ["1" if i == 0 and not isinstance(d, int) else
             str(d) if isinstance(d, int) else (d or "D").upper()[:8] for i, d in enumerate(dims)]
    return f"{spec.name}:{'x'.join(shown)}"


def choose_size(proc: engines.OrtProcess, source: str | onnx.ModelProto, proto: onnx.ModelProto,
                label: str, *, request: ShapeRequest, provider: str,
                opt_level: str, seed: int, key: str,
                ladder: Sequence[int] = SIZE_LADDER) -> SizeChoice | None:
    """The first size of ``ladder`` the original runs at batch 1, or None when no input has a
    symbolic non-batch dim left open by ``request`` (the original is loaded all the same: one ORT
    cannot load is an InputError here, before any fold work). The session stays loaded in ``proc`` under
    ``key`` (verification reuses it) unless ORT has no kernel for the model, in which case the
    sizes are tried on onnx.reference. Raises InputError naming ``--shape`` when no size runs."""
    specs = graph_inputs(proto)
    open_inputs = request.sized_inputs(specs)
    model: engines.Runner
    try:  # loaded even when no size is open: a model ORT cannot load is refused before any work
        proc.load(key, engines.ort_source(source, proc, key), f"the original model {label}",
                  runner.provider_chain(provider), opt_level)
        if not open_inputs:
            return None
        model = engines.OrtModel(proc, key, label, provider)
    except engines.NoKernel:
        proc.drop(key)
        model = engines.ReferenceModel(engines.full_model(source), label)
    except engines.Crashed as exc:
        raise InputError(f"{exc}; the original model itself cannot run on onnxruntime here, so "
                         "nothing can be verified (fold with --no-verify to skip verification)"
                         ) from None
    batch = 1 if request.batch_is_dynamic(specs) else None
    first_error = ""
    for i, size in enumerate(ladder):
        feed = request.feed(specs, batch, seed, size)
        try:
            model.run(feed)
        except (InputError, engines.Crashed) as exc:
            first_error = first_error or str(exc)
            continue
        return SizeChoice(size, tuple(open_inputs), tuple(ladder[:i + 1]))
    examples = " ".join(f"--shape {_example(s)}" for s in specs if s.name in open_inputs)
    raise InputError(f"the original model runs with none of the sizes {', '.join(map(str, ladder))} "
                     f"for the symbolic dims of input {', '.join(map(repr, open_inputs))} "
                     f"(at {ladder[0]}: {first_error}); give the shapes it takes with {examples}")
