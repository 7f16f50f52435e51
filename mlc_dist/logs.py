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
    """Send the `mlc_dist` loggers to stderr at `level` (default: $MLC_DIST_VERBOSITY).

    Run before Ray starts: the processes of a local cluster inherit these variables.
    """
    if level is not None:
        os.environ[VERBOSITY_ENV] = str(level)
    level = verbosity()
    if level < VERBOSE:
        # transformers' "Loading weights" / "Writing model shards" bars, drawn by every worker
        # and scoring actor at each load and checkpoint (read when transformers is imported).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logger = logging.getLogger("mlc_dist")
    logger.setLevel(_LEVELS[level])
    logger.propagate = False  # Ray and libraries configure the root logger their own way
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(level >= VERBOSE))
    logger.addHandler(handler)
    quiet_libraries(level)


class DropMessage(logging.Filter):
    """Drops the records of one logger that contain one known text; everything else passes."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _drop(logger: str, text: str) -> None:
    target = logging.getLogger(logger)
    if not any(isinstance(f, DropMessage) and f.text == text for f in target.filters):
        target.addFilter(DropMessage(text))


def quiet_libraries(level: int) -> None:
    """Library lines that tell a user nothing they can act on, each silenced at its source.

    Only INFO lines and one notice about a choice we made; the libraries' real warnings pass.
    The other sources are settings where we call the library: Ray Data's execution-plan lines
    (runtime.init_ray), Ray Train's INFO lines (fit's LoggingConfig), the preemption watcher's
    error line (runtime.init_ray), transformers' load report (models/hf.py).
    """
    if level >= VERBOSE:
        return
    # We turn Ray Data's progress bars off when stderr is not a terminal (they interleave in
    # logs); its once-per-process WARNING says only that.
    _drop("ray.data._internal.progress", "Progress bars disabled")
    # One INFO line per dataset execution, from every process that runs one.
    _drop("ray.data._internal.execution.streaming_executor", " execution finished in ")
    # Ray Train logs every report at INFO on a logger named after its file, which Ray's own
    # LoggingConfig does not reach. (The path is built, not imported: every Ray worker process
    # runs this, and importing Ray Train there would slow each one's start.)
    import ray

    context = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal",
                           "execution", "context.py")
    _drop(context, "Reporting training result ")


def ray_runtime_env() -> dict:
    """What a job's Ray processes need for the same output as ours: the verbosity, transformers'
    bars off, and `quiet_ray_worker` in every worker process. For a runtime_env of our own
    (a local cluster, a driver joining one, a submission)."""
    level = verbosity()
    env = {VERBOSITY_ENV: str(level)}
    if level >= VERBOSE:
        return {"env_vars": env}
    return {"env_vars": {**env, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
            "worker_process_setup_hook": "mlc_dist.logs.quiet_ray_worker"}


def quiet_ray_worker() -> None:
    """Ray's worker_process_setup_hook for the local cluster: the same silencing in every worker
    process (Ray Data's coordinators, Train workers, scoring actors)."""
    quiet_libraries(verbosity())
