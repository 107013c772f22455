"""interrupts: SIGTERM/SIGHUP unwind a block (its cleanup runs), then reach the old handler."""
from __future__ import annotations

import os
import signal

import pytest

from bnfold.errors import OutputError
from bnfold.io.interrupts import cleanup_on_termination


@pytest.fixture()
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_signal_unwinds_the_block_then_reaches_the_previous_handler(restore_handlers, name):
    signum = getattr(signal, name)
    seen, steps = [], []
    signal.signal(signum, lambda s, f: seen.append(s))
    with pytest.raises(OutputError, match=name):
        with cleanup_on_termination():
            try:
                os.kill(os.getpid(), signum)
                steps.append("went on")  # never: the signal raised at the kill
            finally:
                steps.append("cleaned up")
    assert steps == ["cleaned up"] and seen == [signum]


def test_handlers_are_restored_after_the_block(restore_handlers):
    mine = lambda s, f: None  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    with cleanup_on_termination():
        assert signal.getsignal(signal.SIGTERM) is not mine
    assert signal.getsignal(signal.SIGTERM) is mine


def test_an_ignored_signal_stays_ignored(restore_handlers):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with cleanup_on_termination():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
