"""Connecting to Ray: an existing cluster when RAY_ADDRESS says so, else a local one."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys

import ray

log = logging.getLogger(__name__)


def raised_remotely(exc: BaseException, base: type[BaseException]) -> BaseException | None:
    """Our exception of class `base` (or a subclass) raised in a Ray task or actor, rebuilt from
    the text Ray hands back: an actor's constructor error arrives as ActorDiedError and a Ray
    Data UDF's as UserCodeException, each holding the remote traceback as text only, which names
    the class by its module ("mlc_dist.data.read.DataError: <message>"). None if there is none."""
    for module, name, message in re.findall(r"\b(mlc_dist(?:\.\w+)*)\.(\w+): (.+)", str(exc)):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, base):
            try:
                return cls(message.strip())
            except TypeError:  # a subclass with its own constructor: the message is what counts
                return base(message.strip())
    return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset), which
    can be fewer than `os.cpu_count()` and than the logical CPUs a local Ray cluster advertises."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def init_ray(min_cpus: float = 0, dashboard: bool = True) -> None:
    """Join RAY_ADDRESS, or start a local cluster sized so Ray Data still gets CPUs.

    `dashboard=False` (scoring: no Ray Train) starts the local cluster without the dashboard
    and its agent: about 1 GB less memory (`mlc-dist bench score --backend onnx`, peak RSS of
    the driver and the cluster: 3.7 -> 2.75 GB at 30,000 rows, 3.8 -> 2.8 GB at 100,000), and
    up to 5% more rows/s on 2 cores at 30,000 rows (within the noise at 100,000).

    Training workers each hold their CPUs for the whole run; on a small machine that would leave
    Ray Data's read/tokenize tasks nothing to run on, so the local cluster advertises at least
    two logical CPUs more than the workers take (tokenizing is light next to a training step).
    """
    if ray.is_initialized():
        return
    from ray import data as ray_data

    from mlc_dist import logs

    verbose = logs.verbosity() >= logs.VERBOSE
    # Our own bar (progress.py) shows training and scoring; Ray Data's would draw over it on a
    # terminal and interleave into noise in logs. --verbose brings them back on a terminal.
    ctx = ray_data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False
    ctx.enable_progress_bars = verbose and sys.stderr.isatty()
    # The execution plan of every dataset, printed by every process that runs one.
    ctx.print_on_execution_start = verbose
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train V2 copies a worker's print() into its logger as well: every line came out twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if os.environ.get("RAY_ADDRESS"):
        # A submitted job's driver has the submission's runtime_env (submit.py adds ours); Ray
        # ignores another one there. A driver joining from a shell brings its own.
        submitted = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ray.init(log_to_driver=True, runtime_env=None if submitted else logs.ray_runtime_env())
        return
    num_cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999) + 2)
    # Ray Train's preemption watcher only reports spot-node drains, which a local cluster has
    # none of; starting it logs an error-level line about its actor arguments (ray#53727).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    logs.quiet_libraries(logs.verbosity())
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls (without
    # it the cleaner logs a warning every second): training needs it; loopback only, as
    # `ray start --head` does.
    # address="local": a new cluster even when this machine already runs one (`ray start`),
    # which ray.init() would otherwise join and then refuse num_cpus for.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
             dashboard_host="127.0.0.1", log_to_driver=True,
             # The same silencing in every process of the cluster (logs.quiet_libraries).
             runtime_env=logs.ray_runtime_env())
    log.info("started a local Ray cluster with %d logical CPUs", num_cpus)
