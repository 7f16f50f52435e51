"""Ray Jobs: submit a job file to a cluster's dashboard address, follow, inspect and stop it.

Owns the runtime environment a submission ships (the project and the job file) and the
entrypoint it runs; the training itself is cli.py -> train/ on the cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import ipaddress
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from mlc_dist.config import JobConfigError, load_job

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "score", "evaluate")
#: Never shipped: environments, outputs, local data and VCS state (gitignore syntax, Ray's own).
#: A leading "/" anchors to the project root: a bare "data/" also dropped the mlc_dist/data package.
EXCLUDES = ["/.venv/", "/venv/", "/runs/", "/data/", "/.git/", "/build/", "__pycache__/", "*.pyc",
            "*.egg-info/", ".pytest_cache/", ".whl/", ".gl/"]
#: Where a job file from outside the project lands inside the shipped working_dir.
SHIPPED_JOBS = ".mlc_dist_jobs"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
#: A job with one of these under our submission id is the run we would start: not again.
REUSABLE = {"PENDING", "RUNNING", "SUCCEEDED"}


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers(address))


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_headers(address: str) -> dict:
    """Ray's token for a head on this machine, where RAY_AUTH_MODE does not say.

    Ray 2.60's `ray start` turns token auth on by itself when a token exists (~/.ray/auth_token,
    RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH), but its clients send one only when RAY_AUTH_MODE=token:
    a default local head refused every submission. For a loopback address we send the token Ray
    itself would read; a remote cluster gets it the documented way (RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), so a local token never goes to another host.
    """
    if os.environ.get("RAY_AUTH_MODE") or not _is_loopback(address):
        return {}  # Ray's own handling: the SDK adds the header in token mode
    # The loader `ray get-auth-token` uses: same sources, same precedence.
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return {}
    return {"Authorization": f"Bearer {loader.get_raw_token(ignore_auth_mode=True)}"}


def entrypoint(command: str, job_path: str, overrides: list[str], date: str | None = None) -> str:
    """The command the cluster runs, in the unpacked working_dir (so paths are relative to it);
    `date` is score's --date (YYYY-MM-DD, or `yesterday` resolved where it runs)."""
    if command not in COMMANDS:
        raise ValueError(f"--command {command!r}: expected one of {', '.join(COMMANDS)}")
    args = ["python", "-m", "mlc_dist.cli", command, job_path]
    if date is not None:
        args += ["--date", date]
    for item in overrides:
        args += ["--set", item]
    return " ".join(shlex.quote(a) for a in args)


def submission_id_for(command: str, run_name: str, date: str) -> str:
    """The id of one night's run of a job: a retried submission finds the first one."""
    if command != "score":
        raise JobConfigError(f"--date {date!r}: only --command score takes a date")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise JobConfigError(f"--date {date!r}: expected YYYY-MM-DD") from None
    # Ray keeps a job's log as job-driver-<id>.log: keep the id a plain file name.
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-.") or "run"
    return f"mlc-dist-{command}-{name}-{date}"


class Submitted(NamedTuple):
    job_id: str
    #: Status of the job already under this id (then nothing was submitted), else None.
    existing: str | None = None


def _claim(jobs, base_id: str) -> Submitted:
    """The first of base_id, base_id-attempt2, ... that is free or holds a live or finished run.

    Ray never reuses a submission id, not even a FAILED or STOPPED job's; a retry after one
    takes the next attempt number, so each attempt keeps its own logs.
    """
    known = {j.submission_id: str(j.status.value) for j in jobs.list_jobs() if j.submission_id}
    job_id, attempt = base_id, 1
    while job_id in known and known[job_id] not in REUSABLE:
        attempt += 1
        job_id = f"{base_id}-attempt{attempt}"
    return Submitted(job_id, known.get(job_id))


def _excluded(directory: str, names: list[str]) -> set[str]:
    """EXCLUDES for shutil.copytree: root-anchored patterns apply in the project root only."""
    at_root = Path(directory).resolve() == REPO
    patterns = [e.strip("/") for e in EXCLUDES if at_root or not e.startswith("/")]
    return {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}


def _stage(job_file: Path) -> tuple[str, str, str | None]:
    """(working_dir, job path inside it, temp dir to remove) for a job file.

    A job file inside the project ships as-is with the project; one from elsewhere is copied next
    to a filtered copy of the project, because a runtime_env has a single working_dir.
    """
    try:
        return str(REPO), job_file.relative_to(REPO).as_posix(), None
    except ValueError:
        pass
    tmp = tempfile.mkdtemp(prefix="mlc_dist_submit_")
    work = os.path.join(tmp, "project")
    shutil.copytree(REPO, work, ignore=_excluded, symlinks=True)
    os.makedirs(os.path.join(work, SHIPPED_JOBS))
    shutil.copy(job_file, os.path.join(work, SHIPPED_JOBS, job_file.name))
    return work, f"{SHIPPED_JOBS}/{job_file.name}", tmp


AGENT_WAIT_S = 120


def runtime_env(working_dir: str) -> dict:
    from mlc_dist import logs

    ours = logs.ray_runtime_env()  # the job's processes print as a local run does
    env_vars = {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false",
                **ours.pop("env_vars")}
    if os.environ.get("HF_HUB_OFFLINE"):
        env_vars["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    return {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars, **ours}


def submit(job_path: str, address: str, overrides: list[str] | None = None,
           command: str = "train", submission_id: str | None = None,
           date: str | None = None) -> Submitted:
    """Validate the job locally (fail fast), then submit it through the Ray Jobs SDK.

    With a date (nightly scoring) or an explicit submission id the submission is idempotent: a
    job already PENDING, RUNNING or SUCCEEDED under that id is reported instead of started again.
    """
    overrides = list(overrides or [])
    job_file = Path(job_path).resolve()
    job = load_job(job_file, overrides)  # the same validation the cluster will run
    if not job_file.is_file():
        raise JobConfigError(f"{job_path}: job file not found")
    if date is not None:
        derived = submission_id_for(command, job.run.name, date)  # checks the date, too
        submission_id = submission_id or derived
    jobs = client(address)
    working_dir, shipped, tmp = _stage(job_file)
    deadline = time.monotonic() + AGENT_WAIT_S
    try:
        while True:
            claimed = _claim(jobs, submission_id) if submission_id else Submitted("")
            if claimed.existing:
                return claimed
            try:
                return Submitted(jobs.submit_job(
                    entrypoint=entrypoint(command, shipped, overrides, date),
                    runtime_env=runtime_env(working_dir), submission_id=claimed.job_id or None,
                    metadata={"mlc_dist_job": job_file.name, "mlc_dist_command": command,
                              **({"mlc_dist_date": date} if date else {})}))
            except RuntimeError as exc:
                # Another submit took the id between our look and ours: look again. A head that
                # just started answers 500 until its job agent registers: wait for it.
                retry = "already exists" in str(exc) or "No available agent" in str(exc)
                if not retry or time.monotonic() > deadline:
                    raise
                time.sleep(0 if "already exists" in str(exc) else 2)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def follow(job_id: str, address: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED, ...)."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    while (final := status(job_id, address)) not in TERMINAL:  # the log stream can end first
        time.sleep(0.5)
    return final


def status(job_id: str, address: str) -> str:
    return str(client(address).get_job_status(job_id).value)


def info(job_id: str, address: str) -> dict:
    details = client(address).get_job_info(job_id)
    return {"job_id": job_id, "status": str(details.status.value), "message": details.message,
            "entrypoint": details.entrypoint}


def logs(job_id: str, address: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(job_id: str, address: str) -> bool:
    return client(address).stop_job(job_id)
