"""The one logging channel: how mlc_dist's own lines look, and `--quiet` / `--verbose`.

Every module logs through `logging.getLogger(__name__)`; `configure` runs once per process (the
CLI, each Ray Train worker). Library noise is silenced where it starts (see `quiet_libraries`).
"""

from __future__ import annotations

import logging
import os
import sys

#: Set by the CLI for every process it starts (Ray workers inherit the driver's environment).
VERBOSITY_ENV = "MLC_DIST_VERBOSITY"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


class _Formatter(logging.Formatter):
    """`[mlc-dist] message`; warnings and errors say so; --verbose adds time and module."""

    def __init__(self, verbose: bool):
        super().__init__("%(asctime)s %(name)s: %(message)s" if verbose else "%(message)s",
                         "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"[mlc-dist] {level}{super().format(record)}"


def verbosity() -> int:
    try:
        return max(QUIET, min(VERBOSE, int(os.environ.get(VERBOSITY_ENV, NORMAL))))
    except ValueError:
        return NORMAL


def configure(level: int | None = None) -> None:
    """Send the `mlc_dist` loggers to stderr at `level` (default: $MLC_DIST_VERBOSITY)."""
    if level is not None:
        os.environ[VERBOSITY_ENV] = str(level)
    level = verbosity()
    logger = logging.getLogger("mlc_dist")
    logger.setLevel(_LEVELS[level])
    logger.propagate = False  # Ray and libraries configure the root logger their own way
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(level >= VERBOSE))
    logger.addHandler(handler)
    quiet_libraries(level)


def quiet_libraries(level: int) -> None:
    """Library lines that tell a user nothing they can act on, each silenced at its source."""
    if level >= VERBOSE:
        return
