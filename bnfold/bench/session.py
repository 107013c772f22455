"""Worker side of the benchmark: one ONNX Runtime session timed through IO binding.

Inputs are bound once as OrtValues on the provider's device and outputs are bound to
that device, so a CUDA run times the kernels and not host<->device copies. The same
code path runs on CPU (device "cpu"), which is how it is tested without a GPU.
"""
from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bnfold.errors import first_line
from bnfold.ort import PROVIDERS, session_options


class TimedSession:
    """An InferenceSession plus an IO binding; ``run_ms`` times one synchronous run."""

    def __init__(self, path: str, provider: str, opt_level: str, threads: int,
                 allow_spinning: bool) -> None:
        import onnxruntime as ort

        so = session_options(opt_level, threads=threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # An idle spinning pool would steal cores from the other variant's process.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        providers = PROVIDERS[provider]  # the parent checked availability (check_provider)
        start = time.perf_counter()
        self.session = ort.InferenceSession(path, so, providers=list(providers))
        self.create_ms = (time.perf_counter() - start) * 1000.0
        if providers[0] not in self.session.get_providers():
            raise RuntimeError(f"{providers[0]} could not be initialised for {path}")
        self.device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
        self.binding = self.session.io_binding()
        self._held: list[Any] = []

    def bind(self, inputs: dict[str, np.ndarray]) -> None:
        """Copy inputs to the device once and bind every output to the device."""
        import onnxruntime as ort

        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._held = []
        for info in self.session.get_inputs():
            if info.name not in inputs:
                raise RuntimeError(f"no input value for {info.name!r}")
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[info.name]),
                                                     self.device, 0)
            self._held.append(value)
            self.binding.bind_ortvalue_input(info.name, value)
        for info in self.session.get_outputs():
            self.binding.bind_output(info.name, self.device)
        self.binding.synchronize_inputs()

    def run_ms(self) -> float:
        """One run; the clock stops after outputs are synchronised on the device."""
        start = time.perf_counter_ns()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        return (time.perf_counter_ns() - start) / 1e6


def worker_main(conn: Connection) -> None:
    """Serve commands from the parent until "quit": load, bind, run, drop (one reply each)."""
    sessions: dict[str, TimedSession] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        op = msg[0]
        if op == "quit":
            conn.send(("ok", None))
            return
        try:
            if op == "load":
                _, key, path, provider, level, threads, spin = msg
                sessions.pop(key, None)
                sessions[key] = TimedSession(path, provider, level, threads, spin)
                reply: Any = sessions[key].create_ms
            elif op == "bind":
                sessions[msg[1]].bind(msg[2])
                reply = None
            elif op == "run":
                reply = sessions[msg[1]].run_ms()
            elif op == "drop":
                sessions.pop(msg[1], None)
                reply = None
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:  # noqa: BLE001 - sent to the parent, raised there as BnfoldError
            first = first_line(exc, empty="")
            conn.send(("error", f"{type(exc).__name__}: {first}"))
        else:
            conn.send(("ok", reply))
