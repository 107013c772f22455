"""Paired, interleaved timing of several model variants, each in its own process.

Two ORT sessions in one process share cores and disturb each other's thread pools,
so each variant gets a spawned worker (``isolate=True``). The parent asks the workers
for one run at a time in the order A B, B A, A B, ... so slow drift of the machine
falls on every variant alike and round i of each variant forms a pair.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.bench.session import worker_main
from bnfold.errors import BnfoldError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunConfig:
    """One cell of the benchmark grid."""

    provider: str
    opt_level: str
    threads: int
    batch: int

    def label(self) -> str:
        return f"{self.provider}/{self.opt_level}/t{self.threads}/b{self.batch}"


@dataclass
class VariantRun:
    """Raw timings of one variant in one config: session creation and per-round latency."""

    name: str
    create_ms: float
    samples_ms: list[float]


def round_order(n_variants: int, round_index: int) -> list[int]:
    """Variant order for a round: forward on even rounds, reversed on odd (A B B A A B ...).

    With more than two variants the start also rotates every two rounds (A B C, C B A,
    B C A, A C B, ...) so no variant always runs in the middle.
    """
    order = list(range(n_variants))
    if n_variants > 2:
        k = (round_index // 2) % n_variants
        order = order[k:] + order[:k]
    return order if round_index % 2 == 0 else order[::-1]


class Runner:
    """Spawned ORT workers for a fixed list of model files; use as a context manager."""

    def __init__(self, variants: Sequence[tuple[str, str]], *, isolate: bool = True,
                 allow_spinning: bool = False) -> None:
        self.variants = list(variants)
        self.allow_spinning = allow_spinning
        ctx = mp.get_context("spawn")
        n_workers = len(self.variants) if isolate else 1
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        try:
            for _ in range(n_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise
        self._worker = [i if isolate else 0 for i in range(len(self.variants))]

    def __enter__(self) -> Runner:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, variant: int, *msg: Any) -> Any:
        conn = self._conns[self._worker[variant]]
        try:
            conn.send(msg)
            status, value = conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            raise BnfoldError(f"benchmark worker for {self.variants[variant][0]!r} died "
                              f"({type(exc).__name__}); is the machine out of memory?") from exc
        if status != "ok":
            name, path = self.variants[variant]
            raise BnfoldError(f"onnxruntime failed on {name} ({path}): {value}")
        return value

    def measure(self, config: RunConfig, inputs: dict[str, np.ndarray], *, warmup: int,
                runs: int, progress: Progress | None = None) -> list[VariantRun]:
        """Create each session, bind inputs, warm up, then time ``runs`` interleaved rounds."""
        results = []
        for i, (name, path) in enumerate(self.variants):
            create_ms = self._call(i, "load", name, path, config.provider, config.opt_level,
                                   config.threads, self.allow_spinning)
            self._call(i, "bind", name, inputs)
            results.append(VariantRun(name, float(create_ms), []))
        try:
            n = len(self.variants)
            for r in range(warmup):
                for i in round_order(n, r):
                    self._call(i, "run", self.variants[i][0])
            step = max(1, runs // 4)
            for r in range(runs):
                for i in round_order(n, r):
                    results[i].samples_ms.append(float(self._call(i, "run", self.variants[i][0])))
                if progress and (r + 1) % step == 0 and r + 1 < runs:
                    progress(f"  {config.label()}: {r + 1}/{runs} rounds")
        finally:
            for i, (name, _) in enumerate(self.variants):
                if self._procs[self._worker[i]].is_alive():
                    try:
                        self._call(i, "drop", name)
                    except BnfoldError:
                        pass  # the error that got us here is the one to report
        return results

    def close(self) -> None:
        """Ask workers to quit, then make sure they are gone."""
        for conn, proc in zip(self._conns, self._procs):
            try:
                if proc.is_alive():
                    conn.send(("quit",))
                    if conn.poll(5):
                        conn.recv()
            except (EOFError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
        self._conns, self._procs = [], []
