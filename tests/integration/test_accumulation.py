"""Gradient accumulation trains what one bigger batch trains: batch 8 x 2 micro-batches gives
batch 16 x 1's loss curve (fp32, no dropout, no shuffle: the same rows make each step) under DDP
on 2 workers (gradients all-reduced only at the boundary) and ZeRO-2; the accumulated runs start
through the CLI, `--set train.grad_accum_steps=2`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mlc_dist import train
from mlc_dist.cli import app

from .helpers import demo_job

STEPS = 6


def _job(tmp, tiny_bert, name, strategy):
    job = demo_job(tmp, tiny_bert, rows=240, name=name,
                   train={"max_steps": STEPS, "batch_size_per_worker": 16,
                          "shuffle_buffer_rows": 0, "log_every_steps": 1,
                          "output_bias_init": "zero", "strategy": strategy})
    # Our encoder honours model.dropout everywhere; 0 makes a step depend on its rows only.
    model = job.model.model_copy(update={"kind": "encoder", "tokenizer": tiny_bert,
                                         "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                         "dropout": 0.0})
    return job.model_copy(update={"model": model})


def _losses(summary):
    return [(h["step"], h["loss"]) for h in summary["history"] if "loss" in h]


def _cli_accumulated(job, tmp) -> dict:
    path = tmp / f"{job.run.name}.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_defaults=True)))
    result = CliRunner().invoke(app, ["train", str(path), "--set", "run.name=" + job.run.name +
                                      "-accum", "--set", "train.batch_size_per_worker=8",
                                      "--set", "train.grad_accum_steps=2", "--json"])
    assert result.exit_code == 0, result.output
    with open(os.path.join(job.run.output_dir, job.run.name + "-accum", "metrics.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_batch_8_accumulated_twice_trains_like_batch_16(strategy, tiny_bert, tmp_path,
                                                        ray_cluster):
    job = _job(tmp_path, tiny_bert, strategy, strategy)
    whole = train.fit(job)
    accumulated = _cli_accumulated(job, tmp_path)
    assert accumulated["steps"] == whole["steps"] == STEPS
    assert accumulated["train_samples"] == whole["train_samples"] == STEPS * 16 * 2
    (steps, losses), (whole_steps, whole_losses) = zip(*_losses(accumulated)), zip(*_losses(whole))
    assert steps == whole_steps == tuple(range(1, STEPS + 1))
    assert np.ptp(whole_losses) > 1e-3  # it trained: equal curves are not two flat lines
    np.testing.assert_allclose(losses, whole_losses, rtol=0, atol=1e-5)
