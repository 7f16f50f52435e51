"""End to end on a real local Ray cluster: 2 DDP workers (gloo), export, kill drill, resume
(strict, falling back past a checkpoint that does not load), scoring."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file

from mlc_dist import scoring, train
from mlc_dist.artifacts import read_meta

from .helpers import demo_job

FAULT = 11  # the drill kills rank 1 at this step; it checkpoints every 4


def _losses(summary):
    return [(h["step"], h["loss"]) for h in summary["history"] if "loss" in h]


def _checkpoints(job):
    return sorted(d for d in glob.glob(os.path.join(job.run_dir, "checkpoint_*"))
                  if os.path.isdir(d))


def _drop_a_weight(checkpoint):
    """Leave one tensor out of a checkpoint's weights: a load that ignores missing keys passes."""
    path = os.path.join(checkpoint, "model", "model.safetensors")
    weights = load_file(path)
    weights.pop(sorted(weights)[0])
    save_file(weights, path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, ray_cluster):
    tmp = tmp_path_factory.mktemp("pipeline")
    # A zero output-bias start, so a tiny model's loss falls clearly in 24 steps (from a prior
    # start it has little left to fall; test_architectures checks that start).
    job = demo_job(tmp, tiny_bert, rows=800, train={"max_steps": 24, "epochs": 3,
                                                    "output_bias_init": "zero"})
    summary = train.fit(job)
    # The export as this run left it (later tests resume the run and replace it).
    return job, summary, load_file(os.path.join(job.model_dir, "model.safetensors"))


def test_two_workers_train_and_the_loss_falls(trained):
    job, summary, _ = trained
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert summary["steps"] == 24 and len(summary["worker_nodes"]) == 2  # a node id per rank
    assert len(losses) >= 6
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.03, losses
    # Each of 2 workers sees 16 rows a step, except the short last batch of an epoch.
    assert 23 * 16 * 2 <= summary["train_samples"] <= 24 * 16 * 2


def test_export_and_metrics_json(trained):
    job, summary, _ = trained
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
    # Each validation row evaluated exactly once across the 2 ranks (none twice, none missed).
    assert [row["support"] for row in saved["validation"]["per_label"]] == \
        saved["data"]["validation"]["positives"]
    # Where the time to the first step went: the parts after the driver's add up to it.
    startup = saved["startup"]
    assert all(startup[k] >= 0 for k in startup), startup
    after_driver = sum(startup[k] for k in ("workers_s", "model_s", "first_batch_s",
                                            "first_step_s"))
    assert after_driver == pytest.approx(saved["time_to_first_step_s"], abs=0.03)


def test_a_killed_ddp_worker_resumes_on_the_uninterrupted_trajectory(trained, tiny_bert,
                                                                     tmp_path):
    job, clean, clean_weights = trained
    killed_job = job.model_copy(update={
        "run": job.run.model_copy(update={"name": "killed"}),
        "train": job.train.model_copy(update={"checkpoint_every_steps": 4, "max_failures": 1})})
    os.environ.update(MLC_DIST_FAULT_STEP=str(FAULT), MLC_DIST_FAULT_RANK="1")
    try:
        killed = train.fit(killed_job)
    finally:
        os.environ.pop("MLC_DIST_FAULT_STEP"), os.environ.pop("MLC_DIST_FAULT_RANK")
    assert os.path.exists(os.path.join(killed_job.run_dir, f"fault_injected_step{FAULT}"))
    # Resumed once, from step 8 (or 4 when Ray's poll lost the report just before the kill).
    (resumed,) = killed["resumed_from"]
    assert resumed in (4, 8), killed["resumed_from"]
    # Same data position, every RNG (dropout is on), optimizer and schedule: the same run.
    (steps, losses), (clean_steps, clean_losses) = zip(*_losses(killed)), zip(*_losses(clean))
    assert steps == clean_steps
    np.testing.assert_allclose(losses, clean_losses, rtol=0, atol=1e-5)
    weights = load_file(os.path.join(killed_job.model_dir, "model.safetensors"))
    assert weights.keys() == clean_weights.keys()
    for name, value in clean_weights.items():
        np.testing.assert_allclose(weights[name].numpy(), value.numpy(), rtol=0, atol=1e-5,
                                   err_msg=name)
    assert killed["train_samples"] == clean["train_samples"]


def test_rerun_of_the_same_run_name_resumes(trained):
    job, first, _ = trained
    longer = job.model_copy(update={"train": job.train.model_copy(update={"max_steps": 30})})
    second = train.fit(longer)
    # Resumed at step 24 (a fresh start would have none): its history up to there is the first
    # run's, and only 6 more steps of samples were trained.
    assert second["steps"] == 30 and second["resumed_from"] == [24]
    assert _losses(second)[:len(_losses(first))] == _losses(first)
    assert second["train_samples"] - first["train_samples"] == 6 * 16 * 2


def test_a_checkpoint_that_does_not_load_falls_back_to_the_one_before(trained):
    job, _, _ = trained
    # Kept: step 24 (the first run's last) and step 30 (the rerun's). A weight missing from
    # the latest: a strict load refuses it, so the run resumes from step 24 with a warning.
    latest = _checkpoints(job)[-1]
    _drop_a_weight(latest)
    longer = job.model_copy(update={"train": job.train.model_copy(update={"max_steps": 32})})
    third = train.fit(longer)
    assert third["steps"] == 32 and third["resumed_from"] == [24]


def test_score_end_to_end(trained):
    job, _, _ = trained
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


def test_a_run_whose_checkpoints_all_fail_to_load_stops_with_a_clear_message(trained):
    job, _, _ = trained
    for checkpoint in _checkpoints(job):
        _drop_a_weight(checkpoint)
    # Restarting forever would retry the same checkpoints forever: the run fails instead.
    longer = job.model_copy(update={"train": job.train.model_copy(
        update={"max_steps": 34, "max_failures": -1})})
    with pytest.raises(RuntimeError, match="no checkpoint of run .* loads") as error:
        train.fit(longer)
    assert "model.safetensors" in str(error.value) or "Missing key" in str(error.value)
