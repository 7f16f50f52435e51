"""Rendered manifests carry the job's settings; length bucketing keeps rows and cuts padding."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mlc_dist import data
from mlc_dist.render import render
from mlc_dist.submit import REPO, entrypoint

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")


def test_rayjob_carries_image_resources_and_entrypoint():
    sets = ["scaling.num_workers=3", "scaling.use_gpu=true", "scaling.cpus_per_worker=4",
            "train.lr=2e-5"]
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "reg.example/mlc:1.2", sets))
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    assert spec["entrypoint"] == ("python -m mlc_dist.cli train jobs/quickstart.yaml "
                                  "--set scaling.num_workers=3 --set scaling.use_gpu=true "
                                  "--set scaling.cpus_per_worker=4 --set train.lr=2e-5")
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    assert group["rayStartParams"] == {"num-cpus": "4", "num-gpus": "1"}
    [worker] = group["template"]["spec"]["containers"]
    assert worker["image"] == "reg.example/mlc:1.2"
    assert worker["resources"]["limits"] == {"cpu": "4.0", "memory": "16Gi", "nvidia.com/gpu": "1"}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "reg.example/mlc:1.2"
    assert all("value" not in e or "KEY" not in e["name"] for e in worker["env"])


def test_cpu_rayjob_has_no_gpu_and_quickstart_sizes():
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "img:cpu"))
    [group] = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 2  # quickstart.yaml: scaling.num_workers: 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["cpu"] == "1.0"


def test_cronjob_submits_scoring_on_schedule():
    text = render("cronjob", QUICKSTART, "img:2", ["score.batch_size=128"], schedule="30 1 * * *",
                  address="http://ray-head:8265")
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "CronJob" and manifest["spec"]["schedule"] == "30 1 * * *"
    [pod] = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert pod["image"] == "img:2"
    assert pod["command"] == ["python", "-m", "mlc_dist.cli", "submit", "jobs/quickstart.yaml",
                              "--command", "score", "--address", "http://ray-head:8265", "--follow",
                              "--set", "score.batch_size=128"]


def test_render_rejects_bad_kind_schedule_and_outside_job(tmp_path):
    with pytest.raises(ValueError, match="rayjob"):
        render("deployment", QUICKSTART, "img")
    with pytest.raises(ValueError, match="5 cron fields"):
        render("cronjob", QUICKSTART, "img", schedule="nightly")
    outside = tmp_path / "job.yaml"
    outside.write_text("run: {name: x}\n")
    with pytest.raises(ValueError, match="inside the project"):
        render("rayjob", str(outside), "img")


def test_entrypoint_quotes_and_checks_command():
    assert entrypoint("score", "jobs/a b.yaml", ["data.text_column=x y"]) == \
        "python -m mlc_dist.cli score 'jobs/a b.yaml' --set 'data.text_column=x y'"
    with pytest.raises(ValueError, match="--command"):
        entrypoint("deploy", "jobs/a.yaml", [])


def _window(lengths):
    ids = np.empty(len(lengths), dtype=object)
    ids[:] = [np.full(n, i, dtype=np.int32) for i, n in enumerate(lengths)]
    return {"input_ids": ids, "labels": np.arange(len(lengths))}


def test_length_buckets_keep_every_row_and_cut_padding():
    rng = np.random.default_rng(0)
    windows = [_window(rng.integers(3, 120, size=64)) for _ in range(3)] + [_window([5, 90, 7])]
    batches = list(data.length_buckets(iter(windows), batch_size=8, seed=1))
    seen = np.concatenate([b["labels"] for b in batches])
    assert len(batches) == 3 * 8 + 1 and len(seen) == 3 * 64 + 3
    # Every row exactly once (labels restart per window: 3 x 0..63 and 0..2).
    assert sorted(seen.tolist()) == sorted(list(range(64)) * 3 + [0, 1, 2])
    padded = sum(len(b["input_ids"]) * max(map(len, b["input_ids"])) for b in batches)
    unbucketed = sum(8 * max(map(len, w["input_ids"][i:i + 8])) for w in windows[:3]
                     for i in range(0, 64, 8)) + 3 * 90
    assert padded < 0.75 * unbucketed
    # Rows stay with their labels, and batch order is not the sorted order.
    assert all((b["input_ids"][k][0] == b["labels"][k]) for b in batches for k in range(len(b["labels"])))
    firsts = [max(map(len, b["input_ids"])) for b in batches[:8]]
    assert firsts != sorted(firsts)
