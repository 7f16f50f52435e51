"""A real `ray start --head` cluster: `mlc-dist submit --follow` of a smoke job and of a failing
job, `jobs status`; then `mlc-dist scale` at 1 and 2 workers (in-process local cluster)."""

from __future__ import annotations

import csv
import json
import os
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


@pytest.fixture(scope="module")
def head():
    """`ray start --head` on free ports with its own temp dir, so other local clusters are untouched."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/mlc7_")  # short: Ray's unix sockets live under it
    gcs, dash, metrics, agent_http, agent_grpc, env_agent = _free_ports(6)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # Head and clients must agree on auth; an ~/.ray/auth_token left by another cluster
           # on this machine must not switch ours to token mode. Dashboard is on 127.0.0.1.
           "RAY_AUTH_MODE": "disabled",
           # The job's entrypoint runs `python` from the head's PATH: this venv's, as in an image.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
           f"--temp-dir={temp_dir}", f"--metrics-export-port={metrics}",
           # The agents' default ports are taken by any other Ray on this machine (the suite's
           # own local cluster included); a job agent that cannot bind never registers.
           f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
           "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_jobs_api(address)
        yield address, env
    finally:
        # `ray stop` would stop every cluster on the machine: end only our processes, found by
        # the temp dir that only they were started with.
        import psutil

        ours = [p for p in psutil.process_iter(["cmdline"])
                if any(temp_dir in part for part in (p.info["cmdline"] or []))]
        for p in ours:
            p.terminate()
        for p in psutil.wait_procs(ours, timeout=15)[1]:
            p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(address: str, timeout: float = 180) -> None:
    # The dashboard (which serves the Jobs API) comes up after `ray start` returns.
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


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
    assert saved["steps"] == 3 and saved["num_workers"] == 1
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


def test_scale_one_and_two_workers_writes_table_and_plot(tiny_bert, tmp_path, ray_cluster):
    from mlc_dist.scale import COLUMNS, sweep

    job = demo_job(tmp_path, tiny_bert, rows=400, name="sc", data={"max_length": 32},
                   train={"batch_size_per_worker": 8, "log_every_steps": 100})
    result = sweep(job, [1, 2], steps=6)
    rows = list(csv.DictReader(open(result["csv"])))
    assert [r["num_workers"] for r in rows] == ["1", "2"] and list(rows[0]) == COLUMNS
    assert all(r["steps"] == "6" for r in rows)
    assert float(rows[0]["scaling_efficiency"]) == pytest.approx(1.0)
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
        assert saved["num_workers"] == n and saved["steps"] == 6
