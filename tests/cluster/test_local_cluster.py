"""cluster/local/up.sh: three nodes of their own, an S3 bucket reached through the standard
environment only, and `mlc-dist submit` under Ray's token auth. Training across nodes and the
node-loss drill are in test_end_to_end.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import yaml

from mlc_dist.demo import JIGSAW_LABELS, write_demo

from .conftest import REPO


def _driver(cluster, code: str, timeout: float = 300) -> dict:
    """Run a Ray driver in the shell up.sh sets up; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=cluster.client_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cluster_has_head_and_two_workers_and_a_bucket(cluster):
    seen = _driver(cluster, """
        import json, os
        import pyarrow.fs as pafs
        import ray

        ray.init()  # RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH from up.sh
        nodes = {n["Labels"]["mlc-dist/node"]: {"cpus": n["Resources"].get("CPU", 0.0), "id": n["NodeID"]}
                 for n in ray.nodes() if n["Alive"]}
        # Only the AWS_* variables say where S3 is: no endpoint in the URI or the code.
        uri = f"s3://{os.environ['MLC_DIST_BUCKET']}/checks/hello.txt"
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_output_stream(path) as f:
            f.write(b"written by the driver")

        @ray.remote(num_cpus=0, resources={"worker2": 0.01})
        def read_on_worker2(uri):
            fs, path = pafs.FileSystem.from_uri(uri)
            with fs.open_input_stream(path) as f:
                return ray.get_runtime_context().get_node_id(), f.read().decode()

        node, text = ray.get(read_on_worker2.remote(uri))
        print(json.dumps({"nodes": nodes, "read_on": node, "text": text}))
    """)
    nodes = seen["nodes"]
    assert {name: n["cpus"] for name, n in nodes.items()} == \
        {"head": 0.0, "worker1": 2.0, "worker2": 2.0}
    assert len({n["id"] for n in nodes.values()}) == 3  # three raylets, not one node thrice
    # The node's own processes have the credentials too (as a cloud node has its role).
    assert seen["read_on"] == nodes["worker2"]["id"]
    assert seen["text"] == "written by the driver"


def test_submit_under_default_token_auth(cluster, tiny_bert, tmp_path):
    paths = write_demo(str(tmp_path / "data"), rows=120, seed=5)
    bucket = cluster.env["MLC_DIST_BUCKET"]
    job = tmp_path / "tiny.yaml"
    job.write_text(yaml.safe_dump({
        "run": {"name": "tiny", "output_dir": f"s3://{bucket}/runs"},
        "data": {"train": paths["train"], "text_column": "comment_text", "id_columns": ["id"],
                 "label_columns": list(JIGSAW_LABELS), "max_length": 32},
        "model": {"name": tiny_bert},
        "train": {"max_steps": 2, "batch_size_per_worker": 8, "log_every_steps": 1},
        "scaling": {"num_workers": 2, "placement_strategy": "SPREAD"}}))
    # Exactly what the README says after eval "$(cluster/local/up.sh)": no --address, no token
    # argument; the Jobs API refuses requests without the token.
    done = subprocess.run([sys.executable, "-m", "mlc_dist.cli", "submit", str(job), "--follow"],
                          env=cluster.client_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id}: SUCCEEDED" in done.stdout
    saved = _driver(cluster, f"""
        import json, pyarrow.fs as pafs
        fs, path = pafs.FileSystem.from_uri("s3://{bucket}/runs/tiny/metrics.json")
        with fs.open_input_stream(path) as f:
            print(json.dumps(json.loads(f.read())))
    """)
    assert saved["steps"] == 2 and saved["num_workers"] == 2
