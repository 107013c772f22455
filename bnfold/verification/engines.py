"""What runs the models during verification: ONNX Runtime in a child process, or onnx.reference.

ORT runs in one child process per verification (``OrtProcess``, started once, reused for every
model and feed), so an ORT segfault becomes ``Crashed`` naming the model instead of killing bnfold.
Where ORT has no kernel for a model (float64 or bfloat16 Conv: NOT_IMPLEMENTED) the model runs on
``onnx.reference`` instead (``ReferenceModel``); the report names the engine of every case.
Models are handed to ORT by path where possible, so external data and models over 2 GiB work.
"""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from bnfold.errors import BnfoldError, InputError, first_line

if TYPE_CHECKING:  # imported where used: the child starts before numpy and onnx are imported
    import numpy as np
    import onnx

    from bnfold.verification.shared import SharedArrays

CHILD = Path(__file__).with_name("ort_child.py")
REFERENCE = "onnx.reference"  # the engine name cases carry when ORT lacks a kernel
_BOOT = ("import sys; sys.path[:] = [p for p in sys.path if p]; import runpy; "
         "runpy.run_path(sys.argv[1], run_name='__main__')")


class Crashed(Exception):
    """The ORT child process died while loading or running ``label``."""

    def __init__(self, label: str, how: str) -> None:
        super().__init__(f"onnxruntime crashed ({how}) on {label}")
        self.label, self.how = label, how


class NoKernel(Exception):
    """ORT has no kernel for some node of the model (NOT_IMPLEMENTED)."""


class Runner(Protocol):
    """A loaded model: ``engine`` names what runs it; ``run`` returns {output name: array}."""

    engine: str
    label: str

    def run(self, feed: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def require_provider(chain: Sequence[str], enabled: Sequence[str], label: str) -> None:
    """BnfoldError when ORT did not enable the provider asked for (the chain's first)."""
    if chain[0] not in enabled:
        raise BnfoldError(f"onnxruntime did not enable {chain[0]} for {label}; "
                          "check the GPU driver/CUDA install or use --provider cpu")


def _shapes(feed: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feed.items())


class Reply:
    """The reply to an ``OrtProcess.send``: read when asked (``get``) or when the process sends
    its next command, whichever comes first."""

    def __init__(self, proc: OrtProcess, label: str) -> None:
        self._proc, self._label = proc, label
        self._done = False
        self._value: Any = None
        self._error: Exception | None = None

    def settle(self) -> None:
        """Read the reply now (an error is kept for ``get``)."""
        if self._done:
            return
        self._done = True
        if self._proc._deferred is self:
            self._proc._deferred = None
        try:
            self._value = self._proc.collect(self._label)
        except Exception as exc:  # noqa: BLE001 - raised by get(), where the caller asks
            self._error = exc

    def get(self) -> Any:
        """The reply's value; the error ``OrtProcess.collect`` raised for it, raised here."""
        self.settle()
        if self._error is not None:
            raise self._error
        return self._value


class OrtProcess:
    """One ORT child process holding sessions by key; restarted (sessions reloaded) after a crash.

    Use as a context manager; ``scratch`` is a temporary folder for models written for ORT to load
    by path, removed on ``close``.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._loaded: dict[str, tuple[str | bytes, list[str], str, str]] = {}
        self._live: set[str] = set()
        self._scratch: str | None = None
        self._in_flight = False
        self._deferred: Reply | None = None

    def __enter__(self) -> OrtProcess:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="bnfold-verify-")
        return Path(self._scratch)

    def start(self) -> OrtProcess:
        """Start the child now (it imports ORT while the caller goes on); returns self."""
        self._start()
        return self

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(CHILD)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, env=env)
            self._live = set()
        return self._proc

    def _call(self, label: str, *msg: Any) -> Any:
        self.submit(label, *msg)
        return self.collect(label)

    def send(self, label: str, *msg: Any) -> Reply:
        """Send one command and return at once; its reply is read by ``Reply.get``, or before
        the next command is sent (then kept for ``get``): the caller need not wait for it."""
        self.submit(label, *msg)
        self._deferred = Reply(self, label)
        return self._deferred

    def submit(self, label: str, *msg: Any) -> None:
        """Send one command and return at once; ``collect`` reads its reply. Nothing else may
        be sent before that (one command in flight: the child answers in order), except that a
        ``send``'s reply is read here first."""
        if self._deferred is not None:
            self._deferred.settle()
        if self._in_flight:
            raise RuntimeError("an ORT child command is still in flight")
        proc = self._start()
        assert proc.stdin is not None
        try:
            pickle.dump(msg, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise self._crashed(proc, label) from None
        self._in_flight = True

    def collect(self, label: str) -> Any:
        """The reply to the command ``submit`` sent (waiting for it); errors raised as ``_call``
        raises them."""
        proc = self._proc
        if not self._in_flight or proc is None:
            raise RuntimeError("no ORT child command in flight")
        assert proc.stdout is not None
        try:
            reply = pickle.load(proc.stdout)
        except (EOFError, ConnectionResetError, pickle.UnpicklingError):
            raise self._crashed(proc, label) from None
        finally:
            self._in_flight = False
        if reply[0] == "error":
            _, kind, text = reply
            if kind == "no_kernel":
                raise NoKernel(text)
            raise RuntimeError(text)
        return reply[1]

    def _crashed(self, proc: subprocess.Popen[bytes], label: str) -> Crashed:
        said = self._reap()
        how = _how(proc.returncode)
        return Crashed(label, how if proc.returncode is None or proc.returncode < 0 or not said
                       else f"{how}: {said}")

    def _reap(self) -> str:
        """Forget a dead (or dying) child; the next call starts a fresh one. Returns the last
        line the child wrote to stderr (why it exited, when it says)."""
        proc, self._proc = self._proc, None
        self._in_flight = False
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close() if stream is not None else None
                except OSError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        last = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            last = lines[-1].strip()[:200] if lines else ""
            self._stderr.close()
            self._stderr = None
        return last

    def load(self, key: str, source: str | bytes, label: str, chain: Sequence[str],
             opt_level: str, fixed: Mapping[str, np.ndarray] | SharedArrays | None = None,
             ) -> None:
        """Create the session ``key``; InputError when ORT refuses the model, NoKernel when it
        lacks a kernel, Crashed when the child dies, BnfoldError when the provider is not used.

        ``fixed``: inputs fed to every run of this session, sent to the child once (pickled,
        or as a ``SharedArrays`` file the child maps; it must stay open while the session may
        be reloaded after a crash)."""
        from bnfold.verification.shared import SharedArrays

        kept = fixed if isinstance(fixed, SharedArrays) else dict(fixed or {})
        self._loaded[key] = (source, list(chain), opt_level, label, kept)
        try:
            self._ensure(key)
        except BaseException:  # not loaded: nothing to reload after a restart, or to drop
            self._loaded.pop(key, None)
            raise

    def _ensure(self, key: str) -> None:
        if key in self._live and self._proc is not None:
            return
        source, chain, opt_level, label, fixed = self._loaded[key]
        try:
            sent = fixed.spec() if not isinstance(fixed, dict) else fixed  # a SharedArrays
            enabled = self._call(label, "load", key, source, chain, opt_level, sent)
        except RuntimeError as exc:
            raise InputError(f"onnxruntime cannot load {label}: {exc}") from None
        self._live.add(key)
        require_provider(chain, enabled, label)

    def run(self, key: str, feed: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one feed on session ``key`` (reloaded first if the child was restarted)."""
        self._ensure(key)
        label = self._loaded[key][3]
        try:
            return self._call(label, "run", key, dict(feed),
                              None if outputs is None else list(outputs))
        except RuntimeError as exc:
            raise InputError(f"onnxruntime failed on {label} with inputs {_shapes(feed)}: "
                             f"{exc}") from None

    def info(self) -> tuple[str, list[str]]:
        """The child's onnxruntime version and available providers (for reports: bnfold itself
        need not import onnxruntime, about 20 MB)."""
        version, providers = self._call("onnxruntime", "info")
        return version, providers

    def has(self, key: str) -> bool:
        """Whether session ``key`` was loaded (it is reloaded on use if the child restarted)."""
        return key in self._loaded

    def drop(self, *keys: str) -> None:
        """Free sessions no longer needed (a big model's weights stay in ORT's memory otherwise),
        and the files ``ort_source`` wrote for them (a long-lived child loads the next model
        under the same key)."""
        for key in keys:
            self._loaded.pop(key, None)
            if key in self._live and self._proc is not None:
                self._live.discard(key)
                self._call(key, "drop", key)
            if self._scratch is not None:
                shutil.rmtree(os.path.join(self._scratch, key), ignore_errors=True)

    def close(self) -> None:
        """Ask the child to quit, make sure it is gone, and remove the scratch folder."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._call("shutdown", "quit")
            except (Crashed, RuntimeError, NoKernel):
                pass
        self._reap()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class OrtModel:
    """A model loaded in the ORT child."""

    def __init__(self, proc: OrtProcess, key: str, label: str, provider: str) -> None:
        self.proc, self.key, self.label = proc, key, label
        self.engine = f"onnxruntime {provider}"

    def run(self, feed: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return self.proc.run(self.key, feed, outputs)


class ReferenceModel:
    """A model run by onnx.reference (pure numpy): slow, but has float64 and bfloat16 everywhere."""

    engine = REFERENCE

    def __init__(self, model: onnx.ModelProto, label: str) -> None:
        from bnfold.graph.onnx_reference import evaluator

        self.label = label
        self.outputs = [o.name for o in model.graph.output]
        try:
            self._ev = evaluator(model)
        except Exception as exc:  # noqa: BLE001 - any failure means this engine cannot run it
            raise InputError(f"{REFERENCE} cannot load {label}: {_first(exc)}") from None

    def run(self, feed: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.outputs
        try:
            values = self._ev.run(names, dict(feed))
        except Exception as exc:  # noqa: BLE001 - reported as a one-line input error
            raise InputError(f"{REFERENCE} failed on {self.label} with inputs {_shapes(feed)}: "
                             f"{_first(exc)}") from None
        import numpy as np

        return {n: np.asarray(v) for n, v in zip(names, values)}


def _first(exc: BaseException) -> str:
    line = first_line(exc, empty="")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def ort_source(model: str | onnx.ModelProto, proc: OrtProcess, name: str,
               source_dir: str | Path | None = None) -> str | bytes:
    """What the ORT child loads: a path as is; a proto serialised, or written into the scratch
    folder with external data when it is too big for one protobuf or its tensors still live in
    files under ``source_dir`` (a lazily loaded model)."""
    import onnx

    from bnfold.io.model_io import (PROTO_HEADROOM, PROTOBUF_LIMIT, save_model, tensor_bytes,
                                    uses_external_data)

    if not isinstance(model, onnx.ModelProto):
        return str(model)
    lazy = source_dir is not None and uses_external_data(model)
    if not lazy and tensor_bytes(model) + PROTO_HEADROOM <= PROTOBUF_LIMIT:
        return model.SerializeToString()
    folder = proc.scratch / name
    shutil.rmtree(folder, ignore_errors=True)  # a model loaded under this name before, dropped
    folder.mkdir()
    path = folder / "model.onnx"
    save_model(model, path, external_data=True, source_dir=source_dir)
    return str(path)


def full_model(model: str | onnx.ModelProto) -> onnx.ModelProto:
    """The proto with its external data read in (for onnx.reference, which runs in memory)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    from bnfold.io.model_io import load_model

    return load_model(model, check=False)


def run_chunks(model: Runner, chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run every chunk of an input set and join the outputs along the batch axis."""
    return joined([model.run(c) for c in chunks])


def joined(results: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of an input set's chunks joined along the batch axis."""
    import numpy as np

    if len(results) == 1:
        return results[0]
    return {k: np.concatenate([r[k] for r in results], axis=0) for k in results[0]}
