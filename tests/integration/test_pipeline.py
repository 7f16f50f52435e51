"""End to end on a real local Ray cluster: 2 DDP workers (gloo), export, resume, scoring."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlc_dist import scoring, train
from mlc_dist.artifacts import read_meta

from .helpers import demo_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, ray_cluster):
    tmp = tmp_path_factory.mktemp("pipeline")
    # A zero output-bias start, so a tiny model's loss falls clearly in 24 steps (from a prior
    # start it has little left to fall; test_architectures checks that start).
    job = demo_job(tmp, tiny_bert, rows=800, train={"max_steps": 24, "epochs": 3,
                                                    "output_bias_init": "zero"})
    return job, train.fit(job)


def test_two_workers_train_and_the_loss_falls(trained):
    job, summary = trained
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert summary["steps"] == 24 and len(summary["worker_nodes"]) == 2  # a node id per rank
    assert len(losses) >= 6
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.03, losses
    # Each of 2 workers sees 16 rows a step, except the short last batch of an epoch.
    assert 23 * 16 * 2 <= summary["train_samples"] <= 24 * 16 * 2


def test_export_and_metrics_json(trained):
    job, summary = trained
    model_dir = job.model_dir
    assert os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    assert os.path.isfile(os.path.join(model_dir, "tokenizer.json"))
    meta = read_meta(model_dir)
    assert meta.label_space.names[0] == "toxic" and meta.text_column == "comment_text"
    assert meta.max_length == 64 and len(meta.thresholds) == 6
    saved = json.load(open(os.path.join(job.run_dir, "metrics.json")))
    for key in ("val_mean_auc", "val_micro_f1", "val_macro_f1", "train_samples_per_s", "steps"):
        assert saved[key] is not None, key
    # The logged figure is the one the report recomputes from the saved validation predictions.
    assert saved["val_mean_auc"] == pytest.approx(saved["validation"]["mean_auc"])
    # A stratified 10% split of 800 rows.
    assert saved["data"]["validation"]["num_rows"] == pytest.approx(80, abs=4)
    assert saved["data"]["train"]["num_rows"] + saved["data"]["validation"]["num_rows"] == 800


def test_rerun_of_the_same_run_name_resumes(trained):
    job, first = trained
    longer = job.model_copy(update={"train": job.train.model_copy(update={"max_steps": 30})})
    second = train.fit(longer)
    # Resumed at step 24: only 6 more steps of samples were trained in this run's history.
    assert second["steps"] == 30
    assert second["train_samples"] - first["train_samples"] == 6 * 16 * 2
    steps_logged = [h["step"] for h in second["history"] if "loss" in h]
    assert steps_logged == sorted(steps_logged) and steps_logged[0] == 2


def test_score_end_to_end(trained):
    job, _ = trained
    result = scoring.run(job)
    table = pq.read_table(job.score.output)
    source = pq.read_table(job.score.input)
    assert result["rows"] == table.num_rows == source.num_rows
    assert sorted(table.column("id").to_pylist()) == sorted(source.column("id").to_pylist())
    meta = read_meta(job.model_dir)
    for name, threshold in zip(meta.label_space.names, meta.thresholds):
        s = table.column(f"score_{name}").to_numpy()
        assert table.schema.field(f"score_{name}").type == "float"
        assert table.schema.field(f"pred_{name}").type == "int8"
        assert np.array_equal(table.column(f"pred_{name}").to_numpy(), s >= np.float32(threshold))
    # A rerun skips the committed parts and keeps them; --overwrite scores them again in place.
    parts = result["parts_committed"]
    again = scoring.run(job)
    assert (again["parts_committed"], again["parts_skipped"]) == (0, parts)
    replaced = scoring.run(job, overwrite=True)
    assert (replaced["parts_committed"], replaced["parts_skipped"]) == (parts, 0)
    rescored = pq.read_table(job.score.output)
    assert rescored.num_rows == source.num_rows
    assert rescored.sort_by("id").equals(table.sort_by("id"))
