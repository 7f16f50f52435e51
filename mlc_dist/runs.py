"""The run directory across reruns: resume only a run that was started with the same settings.

A rerun of the same `run.name` resumes from its last checkpoint (crash recovery, a nightly rerun,
more steps). That is only sound when the checkpoint can continue this job: the same model, data,
labels, optimizer recipe, parallel strategy and worker count. `claim_run_dir` records the job in
`runs/<name>/job.json`, with fingerprints of the files it names (data, label tables and names,
the base model: the same path may hold new files); when a rerun changes any of those, the old run
is moved aside (never deleted, never mixed with the new one) and the new run starts fresh.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import logging
import os
import time

import pyarrow.fs as pafs

from mlc_dist import storage
from mlc_dist.config import JobConfig

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
# Keys a rerun may change and still resume: how long to train and how often to log, evaluate and
# checkpoint, how many failures to tolerate, and where and how to score afterwards.
# Thresholds are tuned from the validation predictions at every evaluation (a rerun of a finished
# run evaluates again), and `evaluate.*` is read only by `mlc-dist evaluate`: neither needs new
# weights.
RESUMABLE_CHANGES = {
    "run.name", "run.output_dir",
    "train.epochs", "train.max_steps", "train.eval_every_steps", "train.checkpoint_every_steps",
    "train.num_checkpoints_to_keep", "train.checkpoint_metric", "train.checkpoint_mode",
    "train.early_stopping_patience", "train.early_stopping_min_delta",
    "train.log_every_steps", "train.max_failures", "train.throughput_warmup_steps",
    "train.threshold_strategy", "train.threshold", "train.threshold_beta",
    "train.threshold_min_support", "train.threshold_fallback", "train.threshold_shrinkage",
}
RESUMABLE_SECTIONS = ("score.", "evaluate.")
LENGTH_KEYS = ("train.max_steps", "train.epochs")


def _data_files(path: str) -> list:
    """FileInfo of every file a data path names: a file, a folder, a glob; local or a URI."""
    fs, inner = storage.filesystem(path)
    if any(c in inner for c in "*?["):
        if not storage.is_uri(path):
            return [fs.get_file_info(p) for p in sorted(glob.glob(inner))]
        listed = fs.get_file_info(pafs.FileSelector(os.path.dirname(inner), allow_not_found=True))
        return [i for i in listed if fnmatch.fnmatch(i.path, inner)]
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        return fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return [info]


def files_fingerprint(paths: str | list[str]) -> str:
    """Path, size and modification time of each file (what an object store lists without reading
    the data), hashed: new data at the same path, or more files under a glob, change it."""
    infos = [i for p in ([paths] if isinstance(paths, str) else paths) for i in _data_files(p)]
    listing = sorted(f"{i.path}\t{i.size}\t{i.mtime_ns}" for i in infos
                     if i.type == pafs.FileType.File)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def model_fingerprint(name: str) -> str:
    """The content of a local model folder (every file's sha256); a hub name as it is (its
    revision is whatever the local cache holds)."""
    from mlc_dist.models import resolve_model_path

    path = resolve_model_path(name)
    if storage.is_uri(path):
        return files_fingerprint(path)
    if not os.path.isdir(path):
        return f"hub:{name}"
    return hashlib.sha256(storage.content_listing(path).encode()).hexdigest()[:16]


def fingerprints(job: JobConfig) -> dict[str, str]:
    """{key: fingerprint} of the files the job's keys name."""
    d, out = job.data, {}
    for key in ("train", "validation", "train_labels", "validation_labels", "label_names_file"):
        if getattr(d, key):
            out[f"data.{key}"] = files_fingerprint(getattr(d, key))
    if job.model.kind == "hf":
        out["model.name"] = model_fingerprint(job.model.name)
    if job.model.tokenizer:
        out["model.tokenizer"] = model_fingerprint(job.model.tokenizer)
    return out


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
            if k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_SECTIONS)
            and old.get(k) != new.get(k)}


def claim_run_dir(job: JobConfig) -> str | None:
    """Record this job in its run directory (local or object store). Returns where an
    incompatible earlier run was moved to (and logs why), or None when the directory is new or
    can be resumed."""
    run_dir = job.run_dir if storage.is_uri(job.run_dir) else os.path.abspath(job.run_dir)
    path = storage.join(run_dir, JOB_FILE)
    tree = {**json.loads(job.model_dump_json()), "files": fingerprints(job)}
    moved = None
    if storage.is_file(path):
        recorded = storage.read_json(path)
        changes = incompatible_changes(recorded, tree)
        if changes:
            moved = base = f"{run_dir}.prev-{time.strftime('%Y%m%dT%H%M%S')}"
            n = 1
            while storage.exists(moved):
                moved, n = f"{base}-{n}", n + 1
            storage.move_dir(run_dir, moved)
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            log.warning("%s holds a run with other settings (%s); it cannot be resumed, so it was "
                        "moved to %s and this run starts fresh", run_dir, listed, moved)
        else:
            _say_schedule_changes(recorded, tree)
    storage.write_json(path, tree)
    return moved


def _say_schedule_changes(before: dict, after: dict) -> None:
    """A resumed run with another length keeps its weights and optimizer state, but its LR
    schedule is rebuilt over the new number of steps (the scheduler's saved state holds the step
    reached, not the horizon)."""
    old, new = _flatten(before), _flatten(after)
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in LENGTH_KEYS
               if old.get(k) != new.get(k)]
    if changed:
        log.warning("resuming with another length (%s): the learning-rate schedule (warmup, then "
                    "linear decay to 0) is recomputed for the new total number of steps; from the "
                    "step the run resumes at, the learning rate follows the new schedule, not the "
                    "one the run started with", "; ".join(changed))
