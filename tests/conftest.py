"""Shared pytest settings: hypothesis profiles (fast by default, long by hand), and click's
CliRunner with stderr kept apart on every supported click."""
from __future__ import annotations

import functools
import inspect
import os

from click.testing import CliRunner
from hypothesis import HealthCheck, settings

# click 8.1's CliRunner mixes stderr into the output unless told not to; 8.2 always keeps it
# apart (and has no mix_stderr). Tests read result.stderr, so keep it apart on 8.1 too.
if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
    CliRunner.__init__ = functools.partialmethod(CliRunner.__init__, mix_stderr=False)

settings.register_profile("fast", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("BNFOLD_FUZZ_EXAMPLES", 2000)),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
