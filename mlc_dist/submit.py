"""Ray Jobs: submit a job file to a cluster's dashboard address, follow, inspect and stop it.

Owns the runtime environment a submission ships (the project and the job file) and the
entrypoint it runs; the training itself is cli.py -> train/ on the cluster.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
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


def entrypoint(command: str, job_path: str, overrides: list[str]) -> str:
    """The command the cluster runs, in the unpacked working_dir (so paths are relative to it)."""
    if command not in COMMANDS:
        raise ValueError(f"--command {command!r}: expected one of {', '.join(COMMANDS)}")
    args = ["python", "-m", "mlc_dist.cli", command, job_path]
    for item in overrides:
        args += ["--set", item]
    return " ".join(shlex.quote(a) for a in args)


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
    env_vars = {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("HF_HUB_OFFLINE"):
        env_vars["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    return {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars}


def submit(job_path: str, address: str, overrides: list[str] | None = None,
           command: str = "train", submission_id: str | None = None) -> str:
    """Validate the job locally (fail fast), then submit it through the Ray Jobs SDK."""
    overrides = list(overrides or [])
    job_file = Path(job_path).resolve()
    load_job(job_file, overrides)  # the same validation the cluster will run
    if not job_file.is_file():
        raise JobConfigError(f"{job_path}: job file not found")
    working_dir, shipped, tmp = _stage(job_file)
    jobs = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    try:
        while True:
            try:
                return jobs.submit_job(
                    entrypoint=entrypoint(command, shipped, overrides),
                    runtime_env=runtime_env(working_dir), submission_id=submission_id,
                    metadata={"mlc_dist_job": job_file.name, "mlc_dist_command": command})
            except RuntimeError as exc:
                # A head that just started answers 500 until its job agent registers.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
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
