"""Named crash points in the commit protocol, for tests that kill a run at each step.

`MLC_DIST_FAULT_AT=<step>[:<n>]` ends the process (exit 99, no cleanup) at the n-th time (default
the first) a run reaches `step`; in-process tests set `HOOK` instead. Nothing else lives here.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable

FAULT_AT_ENV = "MLC_DIST_FAULT_AT"
#: The steps, in the order one part and then the output pass them.
STEPS = ("temp_written", "quarantine_moved", "part_visible", "record_written", "manifest_written",
         "before_success", "overwrite")

#: Tests: called with each step's name (and a count of times it was reached in this run).
HOOK: Callable[[str, int], None] | None = None

_seen: Counter = Counter()


class Crash(BaseException):
    """A simulated kill: nothing after it runs; the run's lease is left behind, as it would be."""


def reset() -> None:
    _seen.clear()


def point(step: str) -> None:
    assert step in STEPS, step
    _seen[step] += 1
    if HOOK is not None:
        HOOK(step, _seen[step])
    spec = os.environ.get(FAULT_AT_ENV)
    if spec:
        name, _, n = spec.partition(":")
        if name == step and _seen[step] == int(n or 1):
            os._exit(99)
