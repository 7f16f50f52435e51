"""Model selection on a real local Ray cluster (one worker, tiny BERT): model/ holds the best
evaluation by train.checkpoint_metric, early stopping, and the epochs a run completed.

`checkpoint_metric: step` with `checkpoint_mode: min` makes the first evaluation the best and
every later one no improvement: which checkpoint is exported, and when patience runs out, are
known in advance.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mlc_dist import data, metrics, scoring, train
from mlc_dist.artifacts import read_meta
from mlc_dist.data import Tokenize
from mlc_dist.train.worker import STATE_FILE

from .helpers import demo_job

ROWS, BATCH, EVERY = 400, 64, 2  # 360 training rows: 6 batches (steps) an epoch
STEPS_PER_EPOCH = 6


def _fit(tmp, tiny_bert, name, **train_keys):
    job = demo_job(tmp, tiny_bert, rows=ROWS, name=name, scaling={"num_workers": 1},
                   train={"batch_size_per_worker": BATCH, "eval_every_steps": EVERY,
                          "checkpoint_metric": "step", "checkpoint_mode": "min", **train_keys})
    return job, train.fit(job)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("selection")


@pytest.fixture(scope="module")
def one_epoch(tmp, tiny_bert, ray_cluster):
    return _fit(tmp, tiny_bert, "epoch")  # evaluations at 2 (the best), 4, 6 (the epoch's end)


@pytest.fixture(scope="module")
def stopped(tmp, tiny_bert, ray_cluster):
    # Two epochs unless stopped: evaluations at 1 (the best), 2, 3 -> stopped at 3.
    return _fit(tmp, tiny_bert, "stopped", epochs=2, eval_every_steps=1,
                early_stopping_patience=2)


def _evaluation_at(summary, step):
    (entry,) = [h for h in summary["history"] if h["step"] == step and "val_mean_auc" in h]
    return entry


def _latest_checkpoint_weights(job):
    """The step and weights of the run's latest checkpoint."""
    steps = {torch.load(os.path.join(d, STATE_FILE), weights_only=True)["global_step"]: d
             for d in glob.glob(os.path.join(job.run_dir, "checkpoint_*")) if os.path.isdir(d)}
    step = max(steps)
    return step, load_file(os.path.join(steps[step], "model", "model.safetensors"))


def test_a_full_epoch_counts_as_completed(one_epoch):
    _, summary = one_epoch
    assert summary["epochs_completed"] == 1
    assert -(-summary["data"]["train"]["num_rows"] // BATCH) == STEPS_PER_EPOCH
    assert summary["steps"] == summary["last_step"] == STEPS_PER_EPOCH
    assert summary["epochs_trained"] == 1.0 and summary["stopped_early_at"] is None


def test_model_holds_the_best_evaluation_not_the_latest(one_epoch):
    job, summary = one_epoch
    best = _evaluation_at(summary, EVERY)
    assert best["val_mean_auc"] != _evaluation_at(summary, STEPS_PER_EPOCH)["val_mean_auc"]
    # Not the latest checkpoint's weights...
    latest_step, latest = _latest_checkpoint_weights(job)
    exported = load_file(os.path.join(job.model_dir, "model.safetensors"))
    assert latest_step == STEPS_PER_EPOCH
    assert any(not np.array_equal(exported[k].numpy(), latest[k].numpy()) for k in exported)
    # ...but the model that scored that evaluation: scoring the validation rows reproduces it.
    rows = data.prepare(job.data, job.train.seed).validation.take_all()
    texts = np.array([r[data.TEXT] for r in rows], dtype=object)
    labels = np.array([r[data.LABELS] for r in rows], dtype=np.float32)
    scored = scoring.Scorer(job.model_dir, passthrough=[])(
        Tokenize(job.model_dir, job.data.max_length, keep=[])({"text": texts}))
    probs = np.stack([scored[f"score_{name}"] for name in summary["data"]["labels"]], 1)
    assert metrics.summary(labels, probs)["mean_auc"] == pytest.approx(best["val_mean_auc"],
                                                                       abs=1e-6)
    # metrics.json's figures are the exported checkpoint's; its history the whole run's.
    assert summary["val_mean_auc"] == best["val_mean_auc"]
    assert summary["validation"]["mean_auc"] == pytest.approx(best["val_mean_auc"])
    assert [h["step"] for h in summary["history"] if "val_mean_auc" in h] == [2, 4, 6]
    assert summary["exported_step"] == EVERY and read_meta(job.model_dir).extra["step"] == EVERY
    assert summary["selection"] == {"metric": "step", "mode": "min", "value": EVERY,
                                    "step": EVERY}
    saved = json.load(open(os.path.join(job.run_dir, "metrics.json")))
    assert saved["exported_step"] == EVERY and saved["steps"] == STEPS_PER_EPOCH


def test_early_stopping_ends_the_run_when_patience_runs_out(stopped):
    job, summary = stopped
    # Evaluations at 2 and 3 did not improve on step 1's: stopped at 3, mid-epoch, with no
    # evaluation after it.
    assert summary["stopped_early_at"] == 3 and summary["steps"] == 3
    assert [h["step"] for h in summary["history"] if "val_mean_auc" in h] == [1, 2, 3]
    assert summary["exported_step"] == 1 and read_meta(job.model_dir).extra["step"] == 1
    assert summary["epochs_completed"] == 0
    assert summary["epochs_trained"] == pytest.approx(3 / STEPS_PER_EPOCH)
    # The last checkpoint (the stopping evaluation's) holds the training time so far.
    assert 0 < summary["train_samples_per_s"] < 1e6
