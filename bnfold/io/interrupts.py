"""SIGTERM and SIGHUP unwind like Ctrl-C while temporary files exist, so they get removed.

Python turns SIGINT into KeyboardInterrupt, which runs ``finally`` blocks; SIGTERM (``kill``,
a container stop, a job timeout) and SIGHUP (a closed terminal) kill the process outright and
leave temporary files behind. Inside ``cleanup_on_termination`` they raise ``Terminated``
instead; once the block has unwound, the previous handlers are back and the signal is sent
again, so the process still ends the conventional way (killed by that signal).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bnfold.errors import OutputError

SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(BaseException):
    """A termination signal arrived; BaseException so that ``except Exception`` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextmanager
def cleanup_on_termination() -> Iterator[None]:
    """Within the block SIGTERM/SIGHUP raise ``Terminated``; afterwards they are re-sent.

    A signal that was ignored (``nohup``) stays ignored. Outside the main thread Python
    cannot install handlers, and the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        old = signal.getsignal(sig)
        if old in (signal.SIG_IGN, None):  # None: installed outside Python; leave it alone
            continue
        previous[sig] = old
        signal.signal(sig, _raise)
    received = None
    try:
        yield
    except Terminated as exc:
        received = exc.signum
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if received is not None:
        os.kill(os.getpid(), received)  # the default action ends the process here
        raise OutputError(f"interrupted by {signal.Signals(received).name}; "
                          "temporary files removed, nothing replaced")
