"""The run directory across reruns: resume only a run that was started with the same settings.

A rerun of the same `run.name` resumes from its last checkpoint (crash recovery, a nightly rerun,
more steps). That is only sound when the checkpoint can continue this job: the same model, data,
labels, optimizer recipe, parallel strategy and worker count. `claim_run_dir` records the job in
`runs/<name>/job.json`; when a rerun changes any of those, the old run is moved aside (never
deleted, never mixed with the new one) and the new run starts fresh.
"""

from __future__ import annotations

import json
import logging
import os
import time

from mlc_dist import storage
from mlc_dist.config import JobConfig

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
# Keys a rerun may change and still resume: how long to train and how often to log, evaluate and
# checkpoint, how many failures to tolerate, and where and how to score afterwards.
RESUMABLE_CHANGES = {
    "run.name", "run.output_dir",
    "train.epochs", "train.max_steps", "train.eval_every_steps", "train.checkpoint_every_steps",
    "train.num_checkpoints_to_keep", "train.checkpoint_metric", "train.checkpoint_mode",
    "train.log_every_steps", "train.max_failures", "train.throughput_warmup_steps",
}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "deepspeed" and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def incompatible_changes(before: dict, after: dict) -> dict[str, tuple]:
    """{dotted key: (recorded value, new value)} for changes that forbid resuming."""
    old, new = _flatten(before), _flatten(after)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in RESUMABLE_CHANGES and not k.startswith("score.")
            and old.get(k) != new.get(k)}


def claim_run_dir(job: JobConfig) -> str | None:
    """Record this job in its run directory (local or object store). Returns where an
    incompatible earlier run was moved to (and logs why), or None when the directory is new or
    can be resumed."""
    run_dir = job.run_dir if storage.is_uri(job.run_dir) else os.path.abspath(job.run_dir)
    path = storage.join(run_dir, JOB_FILE)
    tree = json.loads(job.model_dump_json())
    moved = None
    if storage.is_file(path):
        changes = incompatible_changes(storage.read_json(path), tree)
        if changes:
            moved = base = f"{run_dir}.prev-{time.strftime('%Y%m%dT%H%M%S')}"
            n = 1
            while storage.exists(moved):
                moved, n = f"{base}-{n}", n + 1
            storage.move_dir(run_dir, moved)
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            log.warning("%s holds a run with other settings (%s); it cannot be resumed, so it was "
                        "moved to %s and this run starts fresh", run_dir, listed, moved)
    storage.write_json(path, tree)
    return moved
