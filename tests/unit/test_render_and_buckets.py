"""Rendered manifests carry the job's settings; length bucketing keeps rows and cuts padding."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
import yaml

from mlc_dist import data
from mlc_dist.render import render
from mlc_dist.submit import REPO, entrypoint

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")
NIGHTLY = str(REPO / "jobs" / "nightly_score.yaml")


#: Every path the pods read or write must be one they can reach (render refuses the rest).
REMOTE_TRAIN = ["run.output_dir=s3://bucket/runs", "data.train=s3://bucket/demo/train.csv"]
REMOTE_SCORE = ["score.input=s3://bucket/drops/date={date}/*.parquet",
                "score.output=s3://bucket/scores/date={date}", "score.model=/models/goemotions"]


def test_rayjob_carries_image_resources_and_entrypoint():
    sets = [*REMOTE_TRAIN, "scaling.num_workers=3", "scaling.use_gpu=true",
            "scaling.cpus_per_worker=4", "train.lr=2e-5"]
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "reg.example/mlc:1.2", sets))
    assert manifest["kind"] == "RayJob" and manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    assert spec["entrypoint"] == ("python -m mlc_dist.cli train jobs/quickstart.yaml "
                                  "--set run.output_dir=s3://bucket/runs "
                                  "--set data.train=s3://bucket/demo/train.csv "
                                  "--set scaling.num_workers=3 --set scaling.use_gpu=true "
                                  "--set scaling.cpus_per_worker=4 --set train.lr=2e-5")
    assert spec["shutdownAfterJobFinishes"] and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    # 4 CPUs for the training worker + 1 for Ray Data's read/tokenize tasks.
    assert group["rayStartParams"] == {"num-cpus": "5", "num-gpus": "1"}
    [worker] = group["template"]["spec"]["containers"]
    assert worker["image"] == "reg.example/mlc:1.2"
    assert worker["resources"]["limits"] == {"cpu": "5", "memory": "16Gi", "nvidia.com/gpu": "1"}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "reg.example/mlc:1.2"
    assert all("value" not in e or "KEY" not in e["name"] for e in worker["env"])
    assert worker["envFrom"] == [{"secretRef": {"name": "mlc-dist-storage", "optional": False}}]
    [submitter] = spec["submitterPodTemplate"]["spec"]["containers"]
    assert submitter["image"] == "reg.example/mlc:1.2" and "command" not in submitter


def test_cpu_rayjob_has_no_gpu_and_quickstart_sizes():
    manifest = yaml.safe_load(render("rayjob", QUICKSTART, "img:cpu", REMOTE_TRAIN))
    [group] = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 2  # quickstart.yaml: scaling.num_workers: 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["cpu"] == "2"
    assert "tolerations" not in group["template"]["spec"]


def test_raycronjob_scores_yesterday_on_schedule_with_deadlines():
    text = render("cronjob", NIGHTLY, "img:2", [*REMOTE_SCORE, "score.batch_size=128"],
                  schedule="30 1 * * *")
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "RayCronJob" and manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"]
    assert spec["schedule"] == "30 1 * * *" and spec["timeZone"] == "Etc/UTC"
    job = spec["jobTemplate"]
    assert shlex.split(job["entrypoint"]) == [
        "python", "-m", "mlc_dist.cli", "score", "jobs/nightly_score.yaml", "--date", "yesterday",
        *[a for s in [*REMOTE_SCORE, "score.batch_size=128"] for a in ("--set", s)]]
    # Each night's cluster goes when its job ends, and no night outlives the next one's start.
    assert job["shutdownAfterJobFinishes"] is True
    assert 0 < job["preRunningDeadlineSeconds"] < job["activeDeadlineSeconds"] < 24 * 3600
    [group] = job["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 1  # nightly_score.yaml: score.num_actors: 1
    for tpl in (job["rayClusterSpec"]["headGroupSpec"]["template"], group["template"]):
        [c] = tpl["spec"]["containers"]
        assert c["image"] == "img:2"
        assert c["envFrom"] == [{"secretRef": {"name": "mlc-dist-storage", "optional": False}}]


@pytest.mark.parametrize("kind, job, sets, key", [
    ("cronjob", NIGHTLY, REMOTE_SCORE[:1] + REMOTE_SCORE[2:], "score.output"),
    ("cronjob", NIGHTLY, [*REMOTE_SCORE, "score.output=/mnt/scores"], "score.output"),
    ("cronjob", NIGHTLY, REMOTE_SCORE[1:], "score.input"),
    ("cronjob", NIGHTLY, REMOTE_SCORE[:2], "score.model"),
    ("cronjob", NIGHTLY, [*REMOTE_SCORE[:2], "score.model=runs/x/model"], "score.model"),
    ("rayjob", QUICKSTART, REMOTE_TRAIN[1:], "run.output_dir"),
    ("rayjob", QUICKSTART, REMOTE_TRAIN[:1], "data.train"),
])
def test_render_refuses_paths_the_pods_cannot_reach(kind, job, sets, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        render(kind, job, "img", sets)


def test_render_takes_a_model_on_the_object_store():
    out = render("cronjob", NIGHTLY, "img", [*REMOTE_SCORE[:2], "score.model=s3://b/runs/x/model"])
    assert "score.model=s3://b/runs/x/model" in out


@pytest.mark.parametrize("value", ["it's", "a;b", "$HOME", 'x"y'])
def test_render_refuses_overrides_that_kuberays_shells_would_change(value):
    # The submitter's bash, then `ray job submit` re-joining the words for the head's sh.
    with pytest.raises(ValueError, match="shell"):
        render("rayjob", QUICKSTART, "img", [*REMOTE_TRAIN, f"data.text_column={value}"])
    render("rayjob", QUICKSTART, "img", [*REMOTE_TRAIN, "data.text_column=two words"])


def test_cli_render_turns_a_local_output_into_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from mlc_dist.cli import app

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["render", "cronjob", "jobs/nightly_score.yaml",
                                      "--image", "img", "--set", REMOTE_SCORE[0],
                                      "--set", REMOTE_SCORE[2]])
    assert result.exit_code == 2 and "score.output" in result.output
    ok = CliRunner().invoke(app, ["render", "cronjob", "jobs/nightly_score.yaml", "--image", "img",
                                  *[a for s in REMOTE_SCORE for a in ("--set", s)]])
    assert ok.exit_code == 0 and "kind: RayCronJob" in ok.stdout


def test_render_rejects_bad_kind_schedule_and_outside_job(tmp_path):
    with pytest.raises(ValueError, match="rayjob"):
        render("deployment", QUICKSTART, "img")
    with pytest.raises(ValueError, match="5 cron fields"):
        render("cronjob", NIGHTLY, "img", REMOTE_SCORE, schedule="nightly")
    # More often than daily would overlap runs and score "yesterday" twice.
    with pytest.raises(ValueError, match="once a day"):
        render("cronjob", NIGHTLY, "img", REMOTE_SCORE, schedule="*/30 * * * *")
    outside = tmp_path / "job.yaml"
    outside.write_text("run: {name: x}\n")
    with pytest.raises(ValueError, match="inside the project"):
        render("rayjob", str(outside), "img", REMOTE_TRAIN)


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
