"""The original model's side of a verification, begun before the fold it verifies.

``fold_file`` verifies after it writes, but the original's half of that (the size probe, its
load, one run per input set) needs nothing from the fold. ``start_original`` sends the probe
(the original's load, its session kept) to the ORT child before the fold and returns at once;
once the fold's proofs are done (they share the child and come first), ``send_runs`` sends the
original's runs as one command ("once" on that session: every input set, then its drop), which
runs while this process writes the folded model. ``verify`` then runs only the folded model
on the first provider, against these outputs, when its own input sets are equal to the ones
run here (compared array by array, so an output is never judged against a different input).
Outputs over ``HELD_OUTPUT_BYTES`` are not sent back (``verify`` runs the original as before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from bnfold.errors import BnfoldError, InputError
from bnfold.inputs import ShapeRequest, graph_inputs
from bnfold.verification import engines, feeds, runner
from bnfold.verification.cases import original_crashed
from bnfold.verification.sizes import SizeChoice

if TYPE_CHECKING:
    from bnfold.verification.api import LoadedModel, Shapes, Dims

Chunks = list[dict[str, np.ndarray]]
Outputs = dict[str, np.ndarray]
# the most output bytes held through the fold: a classifier's are a few KB, a segmentation
# model's at 512x512 about 20 MB per input set (more would add to the fold's peak memory)
HELD_OUTPUT_BYTES = 32 << 20
_KEY = "bnfold-original-ahead"  # the original's session in the child, from probe to runs


@dataclass(frozen=True)
class OriginalRuns:
    """The original's outputs on ``sets`` (per set, its chunks' outputs joined along the batch
    axis as ``engines.run_chunks`` joins them), run on ``provider`` at ``opt_level``."""

    provider: str
    opt_level: str
    sets: list[tuple[str, Chunks]]
    outputs: list[Outputs]

    def outputs_for(self, provider: str, opt_level: str, sets: list[tuple[str, Chunks]]
                    ) -> list[Outputs] | None:
        """These outputs when they answer ``sets`` on ``provider`` at ``opt_level``: the same
        sources and every input array equal (dtype, shape, values); else None."""
        if (provider, opt_level) != (self.provider, self.opt_level) or len(sets) != len(self.sets):
            return None
        for (source, chunks), (ran, ran_chunks) in zip(sets, self.sets):
            if source != ran or len(chunks) != len(ran_chunks):
                return None
            for chunk, ran_chunk in zip(chunks, ran_chunks):
                if chunk.keys() != ran_chunk.keys() or not all(
                        chunk[k].dtype == ran_chunk[k].dtype
                        and np.array_equal(chunk[k], ran_chunk[k]) for k in chunk):
                    return None
        return self.outputs


class OriginalAhead:
    """The original's side of ``fold_file``'s verification, begun before the fold: the size
    probe at once (``checked`` reads it), the runs when the fold's proofs no longer need the
    child (``send_runs``; ``runs`` reads them). Made by ``start_original``; as a context
    manager, its session is released on the way out (an error, a model without BN)."""

    def __init__(self, original: LoadedModel, proc: engines.OrtProcess,
                 options: dict[str, Any], batch_sizes: Sequence[int] | None) -> None:
        from bnfold.verification.api import probe_size

        self._original, self._proc, self._options = original, proc, options
        self._batch_sizes = batch_sizes
        self._label = f"the original model {original.label}"
        self._chain = runner.provider_chain(options["providers"][0])
        self._probe: engines.Reply | None = None
        self._runs: engines.Reply | None = None
        self._held = False  # the child holds the original's session under _KEY
        self._sets: list[tuple[str, Chunks]] = []
        self.size: SizeChoice | None = None
        self._request = ShapeRequest.of(options["shapes"], options["dims"])
        if (options["data"] is not None or not isinstance(original.source, str)
                or self._request.sized_inputs(graph_inputs(original.proto))):
            self.size = probe_size(original, proc, **options)
            return
        # loaded and kept for the runs (not loaded twice): while the fold runs, the child then
        # holds the original's weights, but less than it holds verifying the folded model
        self._probe = proc.send(self._label, "load", _KEY, original.source, self._chain,
                                options["opt_level"], {})

    def checked(self) -> SizeChoice | None:
        """The size for symbolic dims (None when nothing is sized), once the probe is read:
        InputError for a model ORT cannot load or crashes on, as ``probe_size`` raises it."""
        from bnfold.verification.api import probe_size

        probe, self._probe = self._probe, None
        if probe is None:
            return self.size
        try:
            enabled = probe.get()
            self._held = True
        except engines.NoKernel:  # sizes tried on onnx.reference, as probe_size does
            self.size = probe_size(self._original, self._proc, **self._options)
            return self.size
        except engines.Crashed as exc:
            raise original_crashed(exc) from None
        except RuntimeError as exc:
            raise InputError(f"onnxruntime cannot load {self._label}: {exc}") from None
        engines.require_provider(self._chain, enabled, self._label)
        try:  # the input sets verify makes with these options
            self._sets = feeds.input_sets(
                graph_inputs(self._original.proto), request=self._request, data=None,
                seeds=[self._options["seed"] + i for i in range(feeds.DEFAULT_SEEDS)],
                batch_sizes=self._batch_sizes)
        except BnfoldError:  # bad --shape and the like: verify says so, as without this
            self._sets = []
        return None

    def send_runs(self) -> None:
        """Send the original's runs (one command: every input set on the session the probe
        loaded, then its drop) and return; after ``checked``, where it found the model loads
        on ORT and nothing to size. A child restarted since (a crash in a proof) has no such
        session: the runs then fail, and ``verify`` runs the original itself."""
        if self._sets and self._held and self._runs is None:
            flat = [chunk for _, chunks in self._sets for chunk in chunks]
            self._held = False
            self._runs = self._proc.send(self._label, "once", ("session", _KEY), self._chain,
                                         self._options["opt_level"], None, flat,
                                         ("cap", HELD_OUTPUT_BYTES))
        self.release()

    def __enter__(self) -> OriginalAhead:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Drop the original's session if it is still held (no runs sent: a fold that failed,
        a model without BN); a long-lived child keeps nothing of it."""
        if self._held or self._probe is not None:  # a probe not read may have loaded it
            self._held, self._probe = False, None
            try:
                self._proc.send(self._label, "drop", _KEY)
            except (engines.Crashed, RuntimeError):  # a dead child holds nothing
                pass

    def runs(self) -> OriginalRuns | None:
        """The original's outputs (waiting for them), or None where they were not made (a run
        ORT refused, outputs over ``HELD_OUTPUT_BYTES``): ``verify`` then runs it as without
        this. InputError when ORT crashed on it: nothing could be verified."""
        reply, self._runs = self._runs, None
        if reply is None:
            return None
        try:
            _, outputs = reply.get()
        except engines.Crashed as exc:
            raise original_crashed(exc) from None
        except (RuntimeError, engines.NoKernel):
            return None
        if outputs is None:
            return None
        at, joined = 0, []
        for _, chunks in self._sets:  # per input set, its chunks' outputs joined
            joined.append(engines.joined(outputs[at:at + len(chunks)]))
            at += len(chunks)
        return OriginalRuns(self._options["providers"][0], self._options["opt_level"],
                            self._sets, joined)


def start_original(original: LoadedModel, proc: engines.OrtProcess, *, shapes: Shapes = None,
                   dims: Dims = None, providers: Sequence[str] = ("cpu",),
                   opt_level: str = "disabled", seed: int = 0, data: Any = None,
                   batch_sizes: Sequence[int] | None = None) -> OriginalAhead:
    """``probe_size`` begun: a model file whose inputs leave no dim to size (most) is loaded
    by ``proc`` while the caller works (the session kept for its runs,
    ``OriginalAhead.send_runs``, or dropped by ``OriginalAhead.release``); other models are
    probed here, as ``probe_size`` does, and their original runs in ``verify``."""
    options = {"shapes": shapes, "dims": dims, "providers": tuple(providers),
               "opt_level": opt_level, "seed": seed, "data": data}
    return OriginalAhead(original, proc, options, batch_sizes)
