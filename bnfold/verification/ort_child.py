"""ONNX Runtime in a child process: the parent (``bnfold.verification.engines``) sends commands, this
process holds the sessions and runs them.

ORT segfaults on some valid models; in its own process a crash kills only this child, and the
parent reports which model did it. The parent runs this file by path (not ``-m bnfold...``), so
only numpy and onnxruntime are imported here: the start-up costs one ORT import, not bnfold's.

Protocol: pickled tuples on stdin, one pickled reply per command on the original stdout (native
code printing to stdout is redirected to stderr so it cannot corrupt replies).
  ("load", key, model path or bytes, [providers], opt level, {fixed input: array}
   or ("shared", file, [(name, dtype, shape, offset)]))       -> ("ok", enabled providers)
  ("run", key, {input: array}, [outputs] or None)            -> ("ok", {output: array})
  ("drop", key) -> ("ok", None);  ("quit",) -> ("ok", None), then exit
  ("once", model path or bytes, [providers], opt level, fixed as for "load", feeds, outputs)
   -> ("ok", (enabled providers, [result per feed])): load, run, drop in one command; with
   ("session", key) for the model, the session "load" made under key is run and dropped. feeds:
   [{input: array}], or ("draws", [seed], [(input, shape, dtype)]) for ``draws(seed, ...)``;
   outputs: [names] (result: {output: array}), or ("errors", [(original, folded)]) (result:
   ``pair_errors`` of those outputs, with their shapes: no arrays go back), or ("cap", bytes)
   (result: every output, as for None; the whole list None once they exceed ``bytes``), or
   ("same", {output: expected array} or a shared spec of them) (result: every output, None
   where it is byte-identical to its expected array).
  ("info",) -> ("ok", (onnxruntime version, [available providers]))
Errors reply ("error", kind, first line) with kind "no_kernel" (ORT NOT_IMPLEMENTED) or "ort".
"""
from __future__ import annotations

import os
import pickle
import sys
from typing import Any, BinaryIO

# bnfold.ort's table, repeated: this file imports no bnfold (tests/test_ort.py checks they agree)
LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
          "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16 (onnx itself is not imported here)


def _load(source: str | bytes, providers: list[str], opt_level: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[opt_level])
    so.log_severity_level = 3
    # No arena and no memory pattern: activations are freed after each run instead of held at
    # the largest run's peak (ResNet-50 verification: child peak 656 -> 398 MB, no slower);
    # the arithmetic is the same.
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    # No spinning threads, for every session kind: an idle pool thread that spins for work takes
    # a core the parent (the fold's Python) or another process needs, and a spinning pool under
    # CPU contention waits on descheduled spinners. Measured on 2 shared cores, paired:
    # ResNet-50 verification (load, batches 1, 2, 1): 0.28 s either way on a quiet machine
    # (0.44 s CPU vs 0.50 spinning), 0.32 s vs 0.55 s with a CPU burner; the fold's small proof
    # sessions (ResNet-50, in process): 0.51 vs 0.60 s at load 2.5, MobileNetV2 0.19-0.20 vs
    # 0.24-0.43 s with a burner; ``bnfold fold resnet50`` CPU 2.8 vs 3.3 s at load 3.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, so, providers=providers)


def map_shared(spec: Any) -> dict[str, Any]:
    """The arrays of a ``bnfold.verification.shared.SharedArrays`` file, mapped copy-on-write: read
    in place (no copy), and writable for ORT without changing the file. An entry with a file of
    its own (name, dtype, shape, offset, file) is read where it lies in that file (a weight
    still in the model file or in the fold's scratch file); each file is mapped once."""
    import mmap

    import numpy as np

    _, path, entries = spec
    maps: dict[str, Any] = {}
    out = {}
    for name, dtype, shape, offset, *where in entries:
        file = where[0] if where and where[0] else path
        if file not in maps:
            with open(file, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                maps[file] = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) if size else b""
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(maps[file], dtype=np.dtype(dtype), count=count,
                                  offset=offset).reshape(shape)
    return out


def _ort_value(arr: Any) -> Any:
    """bfloat16 goes through an OrtValue of raw uint16; everything else as the numpy array."""
    if arr.dtype.name == "bfloat16":
        import numpy as np
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.asarray(arr, order="C").view(np.uint16), BFLOAT16)
    return arr


def _run(session: Any, feed: dict[str, Any], outputs: list[str] | None) -> dict[str, Any]:
    import numpy as np

    names = outputs if outputs is not None else [o.name for o in session.get_outputs()]
    values = session.run(names, {k: _ort_value(v) for k, v in feed.items()})
    return {n: np.asarray(v) for n, v in zip(names, values)}


def trim_heap() -> None:
    """Give the freed heap back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Freed big buffers mostly stay in a process's heap: after a first big buffer is freed, glibc
    serves the next ones from the heap and keeps them when freed. Here (on every dropped
    session; for ResNet-50, 80 of the 100 MB of its weights stayed resident) and in bnfold once
    a folded model is written (``pipeline.fold_file``: 80 MB) they are memory nobody uses while
    the other model runs."""
    import ctypes

    try:  # the C library this process already has loaded (no find_library: it runs ldconfig)
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)


def _once(source: str | bytes, providers: list[str], opt_level: str, fixed: Any, feeds: Any,
          outputs: Any, session: Any = None) -> tuple[list[str], list[Any] | None]:
    """The "once" command: load (or take ``session``, loaded before), run every feed, drop
    (and give the heap back)."""
    session = session if session is not None else _load(source, providers, opt_level)
    given = map_shared(fixed) if isinstance(fixed, tuple) else fixed or {}
    if isinstance(feeds, tuple):  # ("draws", seeds, specs): made here, not sent
        feeds = [draws(seed, feeds[2]) for seed in feeds[1]]
    kind, arg = outputs if isinstance(outputs, tuple) else (None, None)
    pairs = arg if kind == "errors" else None
    cap = arg if kind == "cap" else None
    same = (map_shared(arg) if isinstance(arg, tuple) else arg) if kind == "same" else None
    names = ([n for pair in pairs for n in pair] if pairs is not None
             else outputs if kind is None else None)
    try:
        results: list[Any] | None = []
        for feed in feeds:
            out = _run(session, {**given, **feed}, names)
            if same is not None:  # outputs equal to their expected bytes are not sent back
                out = {n: None if _identical(v, same.get(n)) else v for n, v in out.items()}
            if pairs is None:
                results.append(out)
                if cap is not None:
                    cap -= sum(v.nbytes for v in out.values())
                    if cap < 0:  # too big to hold: the caller runs them when it needs them
                        results = None
                        break
                continue
            found = [(out[o], out[f]) for o, f in pairs]
            results.append([(stats, r.shape, c.shape)
                            for stats, (r, c) in zip(pair_errors(found), found)])
        return session.get_providers(), results
    finally:
        del session, given
        trim_heap()


def _identical(value: Any, expected: Any) -> bool:
    """Same dtype, shape and bytes (NaN payloads included)."""
    import numpy as np

    if expected is None or value.dtype != expected.dtype or value.shape != expected.shape:
        return False
    return bool(np.array_equal(np.ascontiguousarray(value).reshape(-1).view(np.uint8),
                               np.ascontiguousarray(expected).reshape(-1).view(np.uint8)))


def draws(seed: int, specs: list[tuple[str, list[int], str]]) -> dict[str, Any]:
    """Seeded standard-normal inputs, in ``specs``' order (name, shape, dtype name): float32
    draws (half the cost of float64) cast to the dtype; float64 inputs drawn in float64."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype_name in specs:
        dtype = _dtype(dtype_name)
        wide = np.float64 if dtype == np.float64 else np.float32
        out[name] = rng.standard_normal(shape, dtype=wide).astype(dtype, copy=False)
    return out


def _dtype(name: str) -> Any:
    """A numpy dtype by its name; bfloat16 and float8 types from ml_dtypes (imported only then)."""
    import numpy as np

    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def pair_errors(pairs: list[tuple[Any, Any]]) -> list[tuple[float, float] | None]:
    """Per (original, folded) pair: the largest |folded - original| and the largest finite
    |original|, both in float64 (None where the shapes differ; (0, 0) when empty). NaN or inf
    where both agree counts as no difference, where they do not as an infinite one (the rule
    of ``bnfold.verification.compare.abs_errors``). All pairs are measured together, each array
    op once over their concatenation: the same numbers as pair by pair."""
    import numpy as np

    sized = [r.shape == c.shape and r.size > 0 for r, c in pairs]
    live = [pc for pc, ok in zip(pairs, sized) if ok]
    if live:
        # joined in their own dtypes (a common one where they differ: float16 and float32
        # values are exact in it), widened once
        ref = np.concatenate([np.ravel(r) for r, _ in live]).astype(np.float64)
        cand = np.concatenate([np.ravel(c) for _, c in live]).astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, judged below
            diff = np.abs(np.subtract(cand, ref))
        if np.isfinite(diff).all():  # both finite everywhere: the plain difference is it
            size = np.abs(ref, out=ref)
        else:
            same = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
            diff[same] = 0.0
            diff[np.isnan(diff)] = np.inf
            size = np.abs(ref)
            size[~np.isfinite(ref)] = 0.0
        starts = np.cumsum([0] + [r.size for r, _ in live[:-1]])
        found = iter(zip(np.maximum.reduceat(diff, starts).tolist(),
                         np.maximum.reduceat(size, starts).tolist()))
    return [next(found) if ok else None if r.shape != c.shape else (0.0, 0.0)
            for (r, c), ok in zip(pairs, sized)]


def _error(exc: BaseException) -> tuple[str, str, str]:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    kind = "no_kernel" if (type(exc).__name__ == "NotImplemented"
                           or "NOT_IMPLEMENTED" in text) else "ort"
    return ("error", kind, first)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer commands until "quit" or end of input."""
    sessions: dict[str, Any] = {}
    fixed_feeds: dict[str, dict[str, Any]] = {}  # inputs every run of a session gets
    while True:
        try:
            msg = pickle.load(requests)
        except EOFError:
            return
        reply: tuple[Any, ...]
        try:
            if msg[0] == "load":
                _, key, source, providers, opt_level, fixed = msg
                sessions.pop(key, None)
                sessions[key] = _load(source, providers, opt_level)
                fixed_feeds[key] = map_shared(fixed) if isinstance(fixed, tuple) else fixed
                reply = ("ok", sessions[key].get_providers())
            elif msg[0] == "run":
                reply = ("ok", _run(sessions[msg[1]], {**fixed_feeds[msg[1]], **msg[2]}, msg[3]))
            elif msg[0] == "once":  # one round trip: the parent can work while it runs
                loaded = None
                if isinstance(msg[1], tuple):  # ("session", key): a loaded session, used up
                    loaded = sessions.pop(msg[1][1])
                    fixed_feeds.pop(msg[1][1], None)
                reply = ("ok", _once(*msg[1:], session=loaded))
                if loaded is not None:  # the last reference: freed now, the heap given back
                    del loaded
                    trim_heap()
            elif msg[0] == "drop":
                if sessions.pop(msg[1], None) is not None:
                    fixed_feeds.pop(msg[1], None)
                    trim_heap()
                reply = ("ok", None)
            elif msg[0] == "info":
                import onnxruntime as ort

                reply = ("ok", (ort.__version__, list(ort.get_available_providers())))
            elif msg[0] == "quit":
                reply = ("ok", None)
            else:
                reply = ("error", "ort", f"unknown command {msg[0]!r}")
        except Exception as exc:  # noqa: BLE001 - every ORT failure goes back to the parent
            reply = _error(exc)
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
        if msg[0] == "quit":
            return


def main() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    import onnxruntime  # noqa: F401 - while the parent prepares its first command

    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
