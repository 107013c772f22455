"""The one long-lived ORT child process that fold-time checks share.

The local proofs (``folding/proof.py``) and the ORT cross-check of constant subgraphs
(``graph/consteval.py``) both run ONNX Runtime in this child, so an ORT segfault on an odd model
becomes ``Crashed`` instead of killing bnfold. It is started on first use and kept for later folds
(a start costs an ORT import); callers drop their sessions when done, and it exits with bnfold.
A child that crashed is restarted by ``OrtProcess`` itself. It lives here, not in the fold
package, so that ``bnfold.graph`` can use it without importing the fold engine.
"""
from __future__ import annotations

import os
from typing import Any

_PROCESS: list[tuple[Any, int]] = []  # [(OrtProcess, pid of the process that started it)]


def shared_process() -> Any:
    """The shared ``OrtProcess`` (started in this process: a forked child gets its own)."""
    if not _PROCESS or _PROCESS[0][1] != os.getpid():
        import atexit

        from bnfold.verification.engines import OrtProcess

        proc = OrtProcess()
        atexit.register(proc.close)
        _PROCESS[:] = [(proc, os.getpid())]
    return _PROCESS[0][0]
