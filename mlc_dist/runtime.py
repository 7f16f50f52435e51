"""Connecting to Ray: an existing cluster when RAY_ADDRESS says so, else a local one."""

from __future__ import annotations

import logging
import os
import sys

import ray

log = logging.getLogger(__name__)


def init_ray(min_cpus: float = 0) -> None:
    """Join RAY_ADDRESS, or start a local cluster sized so Ray Data still gets CPUs.

    Training workers each hold their CPUs for the whole run; on a small machine that would leave
    Ray Data's read/tokenize tasks nothing to run on, so the local cluster advertises at least
    two logical CPUs more than the workers take (tokenizing is light next to a training step).
    """
    if ray.is_initialized():
        return
    from ray import data as ray_data

    # Per-operator bars from every worker interleave into noise in logs; keep the global bar
    # on a terminal, and our own step lines for training.
    ctx = ray_data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False
    ctx.enable_progress_bars = sys.stderr.isatty()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    num_cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999) + 2)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    log.info("started a local Ray cluster with %d logical CPUs", num_cpus)
