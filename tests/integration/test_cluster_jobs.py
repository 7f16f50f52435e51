"""A real `ray start --head` cluster: `mlc-dist submit --follow` of a smoke job and of a failing
job, `jobs status`; then `mlc-dist scale` at 1 and 2 workers (in-process local cluster)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mlc_dist.demo import JIGSAW_LABELS, write_demo
from mlc_dist.submit import REPO

from .helpers import demo_job

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


#: What a shell of the developer may carry (up.sh's exports, init_ray's token mode): not ours.
CLIENT_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
               "RAY_AUTH_TOKEN_PATH")


@pytest.fixture(scope="module")
def head():
    """`ray start --head` on free ports with its own temp dir: other local clusters are untouched.

    Ray's default auth: RAY_AUTH_MODE unset and a token on this machine, so `ray start` turns token
    auth on. The token is this fixture's own file (RAY_AUTH_TOKEN_PATH, for head and clients
    alike) rather than ~/.ray/auth_token, which may or may not exist where the tests run.
    """
    temp_dir = tempfile.mkdtemp(prefix="/tmp/mlc7_")  # short: Ray's unix sockets live under it
    token_path = os.path.join(temp_dir, "auth_token")
    with open(token_path, "w") as f:
        f.write(secrets.token_hex(32))
    gcs, dash, metrics, agent_http, agent_grpc, env_agent, client = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    env.update({"PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1",
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "RAY_AUTH_TOKEN_PATH": token_path,
                # The job's entrypoint runs `python` from the head's PATH: this venv's, as in an
                # image.
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    cmd = [RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
           f"--temp-dir={temp_dir}", f"--metrics-export-port={metrics}",
           # The agents' default ports are taken by any other Ray on this machine (the suite's
           # own local cluster included); a job agent that cannot bind never registers.
           f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
           f"--ray-client-server-port={client}", "--disable-usage-stats"]
    # A session of its own: every process of this head stays in it (workers and agents rename
    # themselves, so their command lines do not say whose they are).
    started_at = time.time()
    # RAY_ADDRESS for the head's processes only: those that look for "their" cluster (Ray
    # Train's placement-group cleaner) otherwise find every cluster on this machine and give up.
    proc = subprocess.Popen(cmd, env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        output = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, output[-4000:]
        _wait_for_jobs_api(address, token_path)
        yield address, env
    finally:
        _end_session(proc.pid, started_at)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _end_session(sid: int, started_at: float) -> None:
    """End the processes of one session; `ray stop` would stop every cluster on the machine.
    In `ray stop`'s order: raylets (they unregister from the GCS), the rest, the GCS last."""
    import psutil

    def rank(p):
        try:
            if os.getsid(p.pid) == sid and p.create_time() >= started_at - 1:
                return {"raylet": 0, "gcs_server": 2}.get(p.name(), 1)
        except (psutil.Error, OSError):
            pass
        return None

    for step in range(3):
        procs = [p for p in psutil.process_iter() if rank(p) == step]
        for p in procs:
            p.terminate()
        for p in psutil.wait_procs(procs, timeout=15)[1]:
            p.kill()


def _jobs_client(address: str, token_path: str | None):
    from ray.job_submission import JobSubmissionClient

    token = Path(token_path).read_text() if token_path else None
    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token
                               else None)


def _wait_for_jobs_api(address: str, token_path: str, timeout: float = 180) -> None:
    # The dashboard (which serves the Jobs API) comes up after `ray start` returns.
    deadline = time.monotonic() + timeout
    while True:
        try:
            _jobs_client(address, token_path).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_head_has_token_auth_on(head):
    from ray.exceptions import AuthenticationError

    address, env = head
    # What failed before: a client that sends no token (or another one) is refused.
    with pytest.raises(AuthenticationError):
        _jobs_client(address, None).list_jobs()
    assert isinstance(_jobs_client(address, env["RAY_AUTH_TOKEN_PATH"]).list_jobs(), list)


def _cli(env, *args, timeout=420):
    return subprocess.run([sys.executable, "-m", "mlc_dist.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _job_file(tmp: Path, model: str, **data) -> Path:
    paths = write_demo(str(tmp / "data"), rows=200, seed=3)
    tree = {"run": {"name": "smoke", "output_dir": str(tmp / "runs")},
            "data": {"train": paths["train"], "text_column": "comment_text", "id_columns": ["id"],
                     "label_columns": list(JIGSAW_LABELS), "max_length": 32, **data},
            "model": {"name": model},
            "train": {"max_steps": 4, "batch_size_per_worker": 16, "log_every_steps": 1},
            "scaling": {"num_workers": 1}}
    path = tmp / "smoke.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_submit_follow_succeeds_and_trains(head, tiny_bert, tmp_path):
    address, env = head
    job = _job_file(tmp_path, tiny_bert)
    done = _cli(env, "submit", str(job), "--address", address, "--follow",
                "--set", "train.max_steps=3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    # The override reached the cluster, which wrote the run where the job file says.
    saved = json.loads((tmp_path / "runs" / "smoke" / "metrics.json").read_text())
    assert saved["steps"] == 3 and saved["train_samples"] == 3 * 16  # 1 worker x batch 16
    assert "[mlc-dist] step 3/3" in done.stdout
    status = _cli(env, "jobs", "status", job_id, "--address", address, timeout=60)
    assert json.loads(status.stdout)["status"] == "SUCCEEDED"
    assert ".mlc_dist_jobs/smoke.yaml" in json.loads(status.stdout)["entrypoint"]


def test_failing_job_returns_nonzero_with_its_error(head, tiny_bert, tmp_path):
    address, env = head
    job = _job_file(tmp_path, tiny_bert)
    bad = yaml.safe_load(job.read_text())
    bad["data"]["train"] = str(tmp_path / "missing.csv")
    job.write_text(yaml.safe_dump(bad))
    done = _cli(env, "submit", str(job), "--address", address, "--follow")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "missing.csv: file not found" in done.stdout
    assert "FAILED" in done.stdout.splitlines()[-1]


def test_nightly_resubmit_finds_the_first_run_and_a_failed_one_gets_an_attempt(
        head, tiny_bert, tmp_path):
    import pyarrow.parquet as pq

    from mlc_dist.demo import generate
    from mlc_dist.labels import LabelSpace

    from ..conftest import export_tiny_model

    address, env = head
    model = export_tiny_model(tmp_path / "model", tiny_bert,
                              LabelSpace.from_names(["toxic", "insult"]), "comment_text")
    job = tmp_path / "nightly.yaml"
    job.write_text(yaml.safe_dump({
        "run": {"name": "nightly"}, "data": {"id_columns": ["id"]},
        "score": {"input": str(tmp_path / "in" / "{date}.parquet"),
                  "output": str(tmp_path / "out" / "{date}"), "model": model}}))
    night = ["submit", str(job), "--address", address, "--command", "score",
             "--date", "2026-11-29", "--follow"]
    # The night's input is not there yet: the first attempt fails.
    failed = _cli(env, *night)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert failed.stdout.splitlines()[0] == "mlc-dist-score-nightly-2026-11-29"
    # Ray never takes a FAILED job's id again: the retry is attempt 2, and it runs.
    (tmp_path / "in").mkdir()
    pq.write_table(generate(30, seed=4).select(["id", "comment_text"]),
                   tmp_path / "in" / "2026-11-29.parquet")
    retried = _cli(env, *night)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert retried.stdout.splitlines()[0] == "mlc-dist-score-nightly-2026-11-29-attempt2"
    assert "already submitted" not in retried.stderr
    # The date reached `score --date` on the cluster: the partition was written.
    assert list((tmp_path / "out" / "2026-11-29").glob("part-*.parquet"))
    # Submitting the same night again starts nothing: it reports the run that succeeded.
    again = _cli(env, *night[:-1], timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == "mlc-dist-score-nightly-2026-11-29-attempt2"
    assert "already submitted (SUCCEEDED)" in again.stderr
    ids = [j.submission_id for j in _jobs_client(address, env["RAY_AUTH_TOKEN_PATH"]).list_jobs()
           if (j.submission_id or "").startswith("mlc-dist-score-nightly-")]
    assert sorted(ids) == ["mlc-dist-score-nightly-2026-11-29",
                           "mlc-dist-score-nightly-2026-11-29-attempt2"]


def test_scale_one_and_two_workers_writes_table_and_plot(tiny_bert, tmp_path, ray_cluster):
    from mlc_dist.scale import COLUMNS, sweep

    job = demo_job(tmp_path, tiny_bert, rows=400, name="sc", data={"max_length": 32},
                   train={"batch_size_per_worker": 8, "log_every_steps": 100})
    result = sweep(job, [1, 2], steps=6)
    rows = list(csv.DictReader(open(result["csv"])))
    assert [r["num_workers"] for r in rows] == ["1", "2"] and list(rows[0]) == COLUMNS
    assert all(r["steps"] == "6" for r in rows)
    # Efficiency of 2 workers: their throughput over twice 1 worker's.
    assert float(rows[1]["scaling_efficiency"]) == pytest.approx(
        float(rows[1]["global_samples_per_s"]) / (2 * float(rows[0]["global_samples_per_s"])),
        rel=1e-3)
    for r, n in zip(rows, (1, 2)):
        total, per = float(r["global_samples_per_s"]), float(r["samples_per_s_per_worker"])
        assert total > 0 and per == pytest.approx(total / n)
        assert 0 < float(r["time_to_first_step_s"]) < 300
        # Tokens per sample is bounded by max_length: tokens were counted on real rows.
        assert 3 < float(r["tokens_per_s"]) / total <= 32
        assert r["mfu"] == ""  # no GPU, no --peak-tflops: no MFU claimed
    table = open(result["md"]).read()
    assert "| 1 | 6 |" in table and "| 2 | 6 |" in table
    assert os.path.getsize(result["png"]) > 5000
    # Each count trained in its own fresh run (no resume from the other).
    for n in (1, 2):
        saved = json.load(open(os.path.join(job.run_dir + "-scale", f"w{n}", "metrics.json")))
        # n ranks ran (one node id each), each a full batch of 8 per step.
        assert len(saved["worker_nodes"]) == n and saved["steps"] == 6
        assert saved["train_samples"] == 6 * 8 * n
