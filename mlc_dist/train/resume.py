"""Resuming a run: the checkpoint Ray hands over, else the run's older ones, newest first.

Every rank must continue from the same checkpoint, so a candidate is taken only when all ranks
loaded it. When none loads, restarting would only repeat the failure (forever with
`max_failures: -1`): the workers leave a note in the run folder and end, and the driver fails
the run with that note (`raise_if_resume_failed`).
"""

from __future__ import annotations

import logging
import os

import pyarrow.fs as pafs
import torch.distributed as dist

from mlc_dist import storage

log = logging.getLogger(__name__)
FAILED_FILE = "resume_failed.txt"


class NoCheckpointLoads(RuntimeError):
    pass


def candidates(latest) -> list:
    """`latest` (a ray.train.Checkpoint), then the run's checkpoints older than it, newest first.

    Ray Train names checkpoint folders by time; a newer folder than the latest registered one was
    never registered (a worker died while reporting it) and may be incomplete, so it is skipped.
    """
    import ray.train

    fs, path = latest.filesystem, latest.path.rstrip("/")
    parent, name = os.path.dirname(path), os.path.basename(path)
    older = sorted((info.path for info in fs.get_file_info(pafs.FileSelector(parent))
                    if info.type == pafs.FileType.Directory
                    and info.base_name.startswith("checkpoint_") and info.base_name < name),
                   reverse=True)
    return [latest] + [ray.train.Checkpoint(p, filesystem=fs) for p in older]


def _on_every_rank(ok: bool) -> bool:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ok
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, ok)
    return all(flags)


def load_first_that_loads(latest, load):
    """load(local_directory) on each candidate until every rank succeeds; returns its result.

    A failed candidate may have loaded in part: the next one's load overwrites all of it."""
    tried = []
    for checkpoint in candidates(latest):
        try:
            with checkpoint.as_directory() as directory:
                result, error = load(directory), None
        except Exception as exc:  # noqa: BLE001 -- whatever the fault, the one before may load
            result, error = None, f"{type(exc).__name__}: {exc}"[:500]
        if _on_every_rank(error is None):
            if tried:
                log.warning("resuming from %s instead of the latest checkpoint", checkpoint.path)
            return result
        tried.append(f"{checkpoint.path}: {error or 'loaded here but not on another rank'}")
        log.warning("checkpoint %s does not load (%s); trying the one before", checkpoint.path,
                    error or "on another rank")
    run = os.path.dirname(latest.path.rstrip("/"))
    raise NoCheckpointLoads(f"no checkpoint of run {run} loads, so it cannot resume; move the "
                            "run folder aside to start fresh. Tried:\n  " + "\n  ".join(tried))


def record_failure(latest, error: NoCheckpointLoads) -> None:
    """The note the driver raises from (rank 0 writes it, next to the checkpoints)."""
    fs, run = latest.filesystem, os.path.dirname(latest.path.rstrip("/"))
    with fs.open_output_stream(f"{run}/{FAILED_FILE}") as f:
        f.write(str(error).encode())


def clear(run_dir: str) -> None:
    """Before a run starts: a note from an earlier attempt no longer applies."""
    fs, inner = storage.filesystem(storage.join(run_dir, FAILED_FILE))
    if fs.get_file_info(inner).type == pafs.FileType.File:
        fs.delete_file(inner)


def raise_if_resume_failed(run_dir: str) -> None:
    path = storage.join(run_dir, FAILED_FILE)
    if storage.is_file(path):
        raise RuntimeError(storage.read_bytes(path).decode())
