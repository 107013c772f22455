"""``fold_file``: one path from a model file to a folded, verified model file.

The CLI (``bnfold fold``), ``bnfold export --fold``, ``bnfold recalibrate --fold`` and deploy
scripts all call this; each only parses its options and renders the ``FoldFileResult``. The order
is fixed here: output paths checked and the input size probed before any work, the fold, the
write (staged; with ``in_place`` verified before it replaces the input), the verification and
its reports. A model without BN is written only when an output is named.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfold.errors import BnfoldError

if TYPE_CHECKING:  # imported where used: the CLI imports this before it starts ORT's child
    from bnfold.folding.report import FoldResult
    from bnfold.io.spill import Spill
    from bnfold.verification.early import OriginalAhead
    from bnfold.verification.engines import OrtProcess
    from bnfold.verification.report import Report

Say = Callable[[str], None]


@dataclass(frozen=True)
class VerifyOptions:
    """How a fold is verified on ONNX Runtime (see ``bnfold.verification.verify``).

    ``shapes``: "NAME:DIMS" strings, whole input shapes; ``dims``: "SYMBOL=N" strings, sizes of
    named symbolic dims (``bnfold.inputs`` has the shape policy); ``batch_sizes``: batch sizes for a
    symbolic batch dim, each run at every seed (empty: ``feeds.default_plan``, seeds ``seed``,
    ``seed + 1``, ``seed + 2`` at batch 1, 2, 1); ``data``: .npz files of real inputs (empty: random inputs
    from ``seed``); ``atol``/``rtol``: None for the per-dtype defaults; ``report_dir``: where
    report.json/.md/.html are written (None: not written).
    """

    providers: tuple[str, ...] = ("cpu",)
    opt_level: str = "disabled"
    seed: int = 0
    shapes: tuple[str, ...] = ()
    dims: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    data: tuple[str, ...] = ()
    atol: float | None = None
    rtol: float | None = None
    report_dir: Path | None = None

    def check(self) -> None:
        """BnfoldError, before any work, for an unknown or unavailable provider or level."""
        from bnfold.ort import check_opt_level, provider_chain

        if not self.providers:
            raise BnfoldError("verification needs at least one provider")
        check_opt_level(self.opt_level)
        for provider in self.providers:
            provider_chain(provider)

    def probe_options(self) -> dict[str, Any]:
        """The options ``probe_size`` (and ``early.start_original``) take."""
        return {"shapes": list(self.shapes) or None, "dims": list(self.dims) or None,
                "providers": self.providers,
                "opt_level": self.opt_level, "seed": self.seed, "data": list(self.data) or None}

    def verify_options(self) -> dict[str, Any]:
        """The options ``verify`` takes (without size, process and progress)."""
        return {**self.probe_options(), "batch_sizes": list(self.batch_sizes) or None,
                "atol": self.atol, "rtol": self.rtol}


@dataclass
class FoldFileResult:
    """What ``fold_file`` did: the fold, where it wrote, and the verification report.

    ``output`` is the destination (None when nothing was to be written: a model without BN and no
    output named); ``written`` the files actually written (empty when an in-place result failed
    verification and the input was left unchanged); ``report`` None without verification.
    """

    source: Path
    output: Path | None
    fold: FoldResult
    report: Report | None = None
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """False only when verification ran and failed."""
        return self.report is None or self.report.passed

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``bnfold fold --json`` prints."""
        payload = {"input": str(self.source),
                   "output": str(self.output) if self.output is not None else None,
                   **self.fold.to_dict()}
        if self.report is not None:
            payload["verification"] = json.loads(self.report.to_json())
        return payload


def default_output(path: str | os.PathLike[str]) -> Path:
    """model.onnx -> model.folded.onnx, beside the input."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.onnx')}.folded.onnx")


def fold_file(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
              in_place: bool = False, external_data: bool | None = None, check: bool = True,
              overwrite: bool = True, verify: VerifyOptions | None = VerifyOptions(),
              progress: Say | None = None, say: Say | None = None,
              reparam: bool = True, keep_model: bool = True) -> FoldFileResult:
    """Fold the model at ``src`` into ``out`` (default ``src``'s name + .folded.onnx; with
    ``in_place`` ``src`` itself, replaced atomically) and verify it when ``verify`` is given.

    Refuses (BnfoldError, nothing written) before any work: ``in_place`` with ``out``, an output
    on a file the input reads, an unavailable provider, an input no size runs; a model ORT
    cannot load is refused before anything is written (its load runs beside the fold). The output has
    external data when ``external_data`` says so, else when the input has, or when over 2 GiB.
    A model without BN is written only when ``out`` is named (``result.output`` is None
    otherwise). A failed verification keeps the written file (the report says it failed),
    except with ``in_place``, where the staged result is verified first and ``src`` is left
    unchanged. ``progress`` gets short status messages; ``say`` one line per step done.
    ``reparam``: merge Add trees of parallel Conv/BN/identity branches (RepVGG) into one Conv.
    ``keep_model=False``: ``result.fold.model`` is emptied once the file is written (read the
    file for it), so the folded weights are not held while the verification runs (the CLI).

    ORT runs in the one child the fold's proofs use (``shared_child.shared_process``): the size
    probe before the fold (beside it where nothing is to be sized), the original's runs while
    the folded model is written (``early``), the folded model's after (one ORT start).
    """
    from bnfold.folding import fold
    from bnfold.io.model_io import check_output_paths

    tell = say or (lambda msg: None)
    src = Path(src)
    if in_place and out is not None:
        raise BnfoldError("use either --in-place or -o/--output, not both")
    if verify is not None:
        verify.check()  # an unavailable provider fails before any work is done
    dest = src if in_place else Path(out) if out is not None else default_output(src)
    inputs = check_output_paths(src, dest, in_place=in_place, overwrite=overwrite,
                                external_data=external_data)
    original = proc = ahead = None
    if verify is not None:
        from bnfold.verification.api import LoadedModel
        from bnfold.verification.early import start_original
        from bnfold.verification.shared_child import shared_process

        proc = shared_process().start()  # imports ORT while the input is read
        original = LoadedModel.of(src)  # parsed and checked once, for the probe and verify
        # the sizes the original runs (a model no size fits is refused before anything is
        # written); where there is nothing to size ORT loads it while the fold goes on
        ahead = start_original(original, proc, **verify.probe_options(),
                               batch_sizes=list(verify.batch_sizes) or None)
    tell(f"loading and folding {src}")
    with _scratch(dest, keep_model) as scratch, ahead or nullcontext():
        try:
            folded = fold(src, check=check, lazy_external=True, progress=progress,
                          reparam=reparam, spill=scratch)
        except Exception:
            if ahead is not None:  # the original's own refusal first, as when probed before
                ahead.checked()
            raise
        if ahead is not None:
            ahead.checked()
        result = FoldFileResult(src, dest, folded)
        for note in folded.warnings:
            tell(f"warning: {note}")
        if out is None and folded.bn_before == 0:  # no BN: a copy only when asked
            result.output = None
            result.notes.append(f"nothing written: {src} left unchanged" if in_place else
                                "nothing written (give -o OUT to write a copy anyway)")
            tell(result.notes[-1])
            return result
        if external_data is None and len(inputs) > 1:  # the input has external data: so has the output
            external_data = True
        del folded  # result.fold is the one reference left (emptied once written without keep_model)
        if ahead is not None:  # the proofs are done: the child runs the original during the write
            ahead.send_runs()
        _write_and_verify(result, inputs, in_place, external_data, overwrite, verify, keep_model,
                          lambda folded_path: _verify(result, original, folded_path, verify, ahead,
                                                      proc, progress, tell), tell)
    return result


@contextmanager
def _scratch(dest: Path, keep_model: bool) -> Iterator[Spill | None]:
    """Without ``keep_model`` nobody reads the folded proto after the write: its large folded
    weights go to a scratch file beside the output as they are made (``io/spill.py``), not into
    memory; removed on the way out. None with ``keep_model`` or where nothing is writable."""
    from bnfold.io.interrupts import cleanup_on_termination
    from bnfold.io.spill import Spill

    with cleanup_on_termination():  # SIGTERM/SIGHUP remove the scratch file too
        scratch = None if keep_model else Spill.beside(dest)
        try:
            yield scratch
        finally:
            if scratch is not None:
                scratch.close()


def _write_and_verify(result: FoldFileResult, inputs: list[Path], in_place: bool,
                      external_data: bool | None, overwrite: bool, verify: VerifyOptions | None,
                      keep_model: bool, run_verify: Callable[[str], Report], tell: Say) -> None:
    """Write atomically (with ``in_place`` only after the staged files verified), then verify;
    without ``keep_model`` the folded proto is let go once written, before the verification."""
    import onnx

    from bnfold.io.model_io import stage_model

    fold, dest = result.fold, result.output
    with stage_model(fold.model, dest, overwrite=overwrite, external_data=external_data,
                     read_in=keep_model,
                     source_dir=fold.external_base,
                     protect=inputs[1:] if in_place else inputs) as staged:
        if not keep_model:
            from bnfold.verification.ort_child import trim_heap

            fold.model = onnx.ModelProto()
            if verify is not None:  # freed pages back before the child loads a model
                trim_heap()
        if verify is not None and in_place:  # verify the staged files before they replace the input
            result.report = run_verify(str(staged.path))
        if not result.passed:
            result.notes.append(f"verification failed: {result.source} left unchanged")
            tell(result.notes[-1])
        else:
            result.written = staged.commit()
            tell(f"wrote {', '.join(result.written)}")
    if verify is not None and not in_place:  # by path: ORT reads external data, so >2 GiB works too
        result.report = run_verify(str(dest))


def _verify(result: FoldFileResult, original: Any, folded_path: str, options: VerifyOptions,
            ahead: OriginalAhead, proc: OrtProcess | None, progress: Say | None,
            tell: Say) -> Report:
    """Compare the original and the folded file on ONNX Runtime (the original's outputs from
    ``ahead`` where it ran while the fold was written); write the reports when asked."""
    from bnfold.verification import verify

    tell("verifying on ONNX Runtime")
    report = verify(original, folded_path, fold_result=result.fold, size=ahead.size, proc=proc,
                    progress=progress, original_runs=ahead.runs(), **options.verify_options())
    report.folded = str(result.output)
    if options.report_dir is not None:
        report.write(options.report_dir)
        tell(f"wrote reports to {options.report_dir}")
    return report
