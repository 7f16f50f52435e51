"""DeepSpeed and fault-tolerance keys: derived DeepSpeed dict, raw-block merge, load-time errors."""

from __future__ import annotations

import pytest

from mlc_dist.config import JobConfigError, load_job, validate_job


def _job(train: dict, **extra):
    return validate_job({"run": {"name": "t"}, "train": train, **extra}, "job.yaml")


def test_derived_config_with_raw_block_merged_on_top():
    job = _job({"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": True,
                "offload_params": True, "precision": "bf16", "grad_accum_steps": 4,
                "batch_size_per_worker": 8, "max_grad_norm": 0.5},
               deepspeed={"zero_optimization": {"overlap_comm": False, "stage": 3}})
    ds = job.deepspeed_config()
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["overlap_comm"] is False
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def test_default_stage_is_2():
    assert _job({"strategy": "deepspeed"}).deepspeed_config()["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize("train, extra, words", [
    ({"strategy": "deepspeed", "zero_stage": 4}, {}, ["train.zero_stage"]),
    ({"strategy": "deepspeed", "precision": "fp16"}, {}, ["train.precision", "use_gpu"]),
    ({"offload_optimizer": True}, {}, ["train.offload_optimizer", "deepspeed"]),
    ({"strategy": "deepspeed", "zero_stage": 2, "offload_params": True}, {},
     ["train.offload_params", "zero_stage: 3"]),
    ({"zero_stage": 2}, {}, ["train.zero_stage", "ddp"]),
    ({}, {"deepspeed": {"zero_optimization": {"stage": 1}}}, ["deepspeed", "ddp"]),
    ({"strategy": "deepspeed", "zero_stage": 2},
     {"deepspeed": {"zero_optimization": {"stage": 3}}},
     ["deepspeed.zero_optimization.stage", "train.zero_stage"]),
    ({"strategy": "deepspeed"}, {"deepspeed": {"bf16": {"enabled": True}}},
     ["deepspeed.bf16.enabled", "train.precision"]),
    ({"strategy": "deepspeed"}, {"deepspeed": {"optimizer": {"type": "Adam"}}},
     ["deepspeed.optimizer", "train.lr"]),
    ({"checkpoint_metric": "mean_auc"}, {}, ["train.checkpoint_metric"]),
    ({"early_stopping_patience": 3}, {},
     ["train.early_stopping_patience", "train.checkpoint_metric"]),
    ({"early_stopping_patience": 0, "checkpoint_metric": "val_mean_auc"}, {},
     ["train.early_stopping_patience"]),
    ({"early_stopping_patience": 2, "checkpoint_metric": "step",
      "early_stopping_min_delta": -0.1}, {}, ["train.early_stopping_min_delta"]),
    ({"max_failures": -2}, {}, ["train.max_failures"]),
])
def test_bad_config_names_the_key(train, extra, words):
    with pytest.raises(JobConfigError) as err:
        _job(train, **extra)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert "job.yaml" in str(err.value)


def test_early_stopping_with_a_metric_is_valid():
    t = _job({"checkpoint_metric": "val_mean_auc", "early_stopping_patience": 2}).train
    assert t.early_stopping_patience == 2 and t.early_stopping_min_delta == 0.0


def test_load_job_overrides_reach_the_deepspeed_check(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run: {name: t}\ndeepspeed: {gradient_accumulation_steps: 2}\n")
    with pytest.raises(JobConfigError, match="train.grad_accum_steps"):
        load_job(path, ["train.strategy=deepspeed"])
    job = load_job(path, ["train.strategy=deepspeed", "train.grad_accum_steps=2"])
    assert job.deepspeed_config()["gradient_accumulation_steps"] == 2
