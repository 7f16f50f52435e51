"""The product the way its users run it: a head and two worker nodes, data, checkpoints, the
export and the scores on the S3-compatible store, every command a separate driver process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from mlc_dist.demo import JIGSAW_LABELS, write_demo

from .conftest import REPO

DATE = "2024-05-01"
STEPS = 16  # 2 per checkpoint: the drill's kill lands while most steps are still to come


def _cli(cluster, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mlc_dist.cli", *args],
                          env=cluster.client_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _s3(cluster) -> pafs.S3FileSystem:
    env = cluster.env
    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"],
                             access_key=env["AWS_ACCESS_KEY_ID"],
                             secret_key=env["AWS_SECRET_ACCESS_KEY"])


def _read_json(fs, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory) -> str:
    """A tiny BERT initialised wide, so its scores spread and equality to 1e-5 means something."""
    from tests.conftest import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("wide_bert"), initializer_range=0.5)


@pytest.fixture(scope="module")
def workspace(cluster, wide_bert, tmp_path_factory):
    """A training set and a 3-file nightly drop on the object store, and a job file for them."""
    tmp = tmp_path_factory.mktemp("e2e")
    fs, bucket = _s3(cluster), cluster.env["MLC_DIST_BUCKET"]
    prefix = f"{bucket}/e2e-{uuid.uuid4().hex[:8]}"
    paths = write_demo(str(tmp / "data"), rows=400, seed=5)
    pafs.copy_files(paths["train"], f"{prefix}/data/train.csv",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    drop = pq.read_table(paths["score"])
    cuts = [0, 20, 45, drop.num_rows]
    for i in range(3):
        pq.write_table(drop.slice(cuts[i], cuts[i + 1] - cuts[i]),
                       f"{prefix}/drops/date={DATE}/part-{i}.parquet", filesystem=fs)
    uri = f"s3://{prefix}"
    tree = {"run": {"name": "e2e", "output_dir": f"{uri}/runs"},
            "data": {"train": f"{uri}/data/train.csv", "text_column": "comment_text",
                     "id_columns": ["id"], "label_columns": list(JIGSAW_LABELS),
                     "max_length": 32},
            "model": {"name": wide_bert},  # a local folder every node of this machine can read
            "train": {"max_steps": STEPS, "batch_size_per_worker": 8, "lr": 1e-3,
                      "log_every_steps": 1, "checkpoint_every_steps": 2, "warmup_ratio": 0.0,
                      "shuffle_buffer_rows": 0, "output_bias_init": "zero"},
            # STRICT_SPREAD: one worker per node, so the two run on the two worker nodes (the head
            # has no CPUs) and a restart waits for a lost node to come back.
            "scaling": {"num_workers": 2, "placement_strategy": "STRICT_SPREAD"},
            "score": {"input": f"{uri}/drops/date={{date}}/",
                      "output": f"{uri}/scores/date={{date}}", "num_actors": 2}}
    job = tmp / "e2e.yaml"
    job.write_text(yaml.safe_dump(tree))
    return {"job": job, "fs": fs, "prefix": prefix, "drop": drop, "tmp": tmp}


@pytest.fixture(scope="module")
def trained(cluster, workspace):
    done = _cli(cluster, "train", str(workspace["job"]))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    fs, prefix = workspace["fs"], workspace["prefix"]
    return _read_json(fs, f"{prefix}/runs/e2e/metrics.json")


def _worker_node_ids(cluster) -> set[str]:
    with open(f"{cluster.env['MLC_DIST_CLUSTER_DIR']}/state.json") as f:
        state = json.load(f)
    return {n["node_id"] for name, n in state["nodes"].items() if name != "head"}


def _scorer_nodes(cluster) -> list[str]:
    code = ("import json, os\n"
            "from ray.util.state import list_actors\n"
            "actors = list_actors(address=os.environ['RAY_API_SERVER_ADDRESS'], detail=True,\n"
            "                     limit=10_000, raise_on_missing_output=False)\n"
            "print(json.dumps([a.node_id for a in actors if 'Scorer' in a.class_name]))")
    done = subprocess.run([sys.executable, "-c", code], env=cluster.client_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_workers_train_on_two_nodes_with_everything_on_the_object_store(cluster, workspace,
                                                                            trained):
    fs, prefix = workspace["fs"], workspace["prefix"]
    assert trained["steps"] == STEPS and trained["num_workers"] == 2
    nodes = trained["worker_nodes"]
    assert len(set(nodes)) == 2 and set(nodes) <= _worker_node_ids(cluster), nodes
    run = f"{prefix}/runs/e2e"
    listed = {i.path[len(run) + 1:] for i in fs.get_file_info(
        pafs.FileSelector(run, recursive=True))}
    assert {"model/model.safetensors", "model/mlc_dist.json", "model/content.sha256",
            "report/report.html", "metrics.json", "job.json"} <= listed
    assert any(p.startswith("checkpoint_") for p in listed)  # Ray Train's, on the store
    assert trained["model_dir"] == f"s3://{prefix}/runs/e2e/model"


def test_nightly_score_from_and_to_the_object_store_equals_local_scoring(cluster, workspace,
                                                                         trained, tmp_path):
    fs, prefix, drop = workspace["fs"], workspace["prefix"], workspace["drop"]
    done = _cli(cluster, "score", str(workspace["job"]), "--date", DATE)
    assert done.returncode == 0, done.stderr[-4000:]
    out = f"{prefix}/scores/date={DATE}"
    manifest = _read_json(fs, f"{out}/_manifest.json")
    assert fs.get_file_info(f"{out}/_SUCCESS").type == pafs.FileType.File
    assert [p["part"] for p in manifest["parts"]] == ["part-part-0", "part-part-1", "part-part-2"]
    assert [p["rows_in"] for p in manifest["parts"]] == [20, 25, drop.num_rows - 45]
    scored = pa.concat_tables(pq.read_table(f"{out}/{p['part']}.parquet", filesystem=fs)
                              for p in manifest["parts"])
    ids = scored.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == drop.num_rows == manifest["rows_out"]
    assert sorted(ids) == sorted(drop.column("id").to_pylist())

    # The scoring actors ran on worker nodes (the head keeps no workloads). On an idle machine
    # both nodes get one; under load the second may still be starting when the drop is done.
    placed = {n for n in _scorer_nodes(cluster) if n}
    assert placed and placed <= _worker_node_ids(cluster), placed

    # The same rows scored in this process from a local copy of the export: equal to 1e-5.
    from mlc_dist.data import Tokenize
    from mlc_dist.scoring import Scorer

    local = tmp_path / "model"
    local.mkdir()
    pafs.copy_files(f"{prefix}/runs/e2e/model", str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    texts = drop.column("comment_text").to_pylist()
    batch = Tokenize(str(local), 32, keep=["id"])({"text": np.array(texts, dtype=object),
                                                  "id": np.array(drop.column("id").to_pylist(),
                                                                 dtype=object)})
    ref = Scorer(str(local), ["id"])(batch)
    order = {v: i for i, v in enumerate(ids)}
    rows = [order[v] for v in ref["id"]]
    for name in JIGSAW_LABELS:
        got = scored.column(f"score_{name}").to_numpy()[rows]
        np.testing.assert_allclose(got, ref[f"score_{name}"], atol=1e-5, rtol=0)
    # A spread of scores, so equality means something (a constant would not pass).
    assert np.ptp(ref[f"score_{JIGSAW_LABELS[0]}"]) > 0.05


def test_losing_a_worker_node_resumes_from_the_object_store_checkpoint(cluster, workspace,
                                                                       trained):
    fs, prefix = workspace["fs"], workspace["prefix"]
    cmd = [sys.executable, "-m", "mlc_dist.cli", "train", str(workspace["job"]),
           "--set", "run.name=drill", "--set", "train.max_failures=3"]
    proc = subprocess.Popen(cmd, env=cluster.client_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        # A second checkpoint on the store means the first is registered with Ray Train (reports
        # are sequential): a restart from here must resume, never start from scratch.
        while len([i for i in fs.get_file_info(pafs.FileSelector(f"{prefix}/runs/drill",
                                                                 allow_not_found=True))
                   if "checkpoint_" in i.path]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint came"
            time.sleep(0.25)
        cluster.kill("worker2")  # every process of that node, SIGKILL: a lost machine
        time.sleep(5)
        cluster.start("worker2")  # capacity returns
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    drill = _read_json(fs, f"{prefix}/runs/drill/metrics.json")
    assert drill["steps"] == STEPS and drill["resumed_from"], (drill["resumed_from"], err[-3000:])
    assert drill["resumed_from"][0] >= 2  # from a checkpoint, not from scratch
    # Within noise of the uninterrupted run of the same job (same data, seed and order).
    loss = {h["step"]: h["loss"] for h in trained["history"] if "loss" in h}
    resumed = {h["step"]: h["loss"] for h in drill["history"] if "loss" in h}
    assert set(resumed) >= set(range(drill["resumed_from"][0] + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(loss)], [loss[s] for s in sorted(loss)],
                               atol=0.05)
    assert abs(drill["val_mean_auc"] - trained["val_mean_auc"]) < 0.05
