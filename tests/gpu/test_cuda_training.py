"""On a CUDA machine: real Ray Train runs on one GPU worker (its process group is NCCL): fp32,
bf16 (autocast) and fp16 (autocast + GradScaler) under DDP follow the same loss curve, and
DeepSpeed ZeRO-2 in bf16 trains over NCCL with one process.

Dropout is off (model.dropout=0) and the shuffle is off, so the runs differ only in precision.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from mlc_dist import train

from ..integration.helpers import demo_job

STEPS = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, ray_cluster):
    """precision, strategy -> (job, metrics) of a 1-GPU run, each trained once."""
    done = {}

    def get(precision: str, strategy: str = "ddp"):
        key = (precision, strategy)
        if key not in done:
            tmp = tmp_path_factory.mktemp(f"{precision}-{strategy}")
            job = demo_job(tmp, tiny_bert, rows=800, name=f"{precision}-{strategy}",
                           model={"dropout": 0.0},
                           train={"max_steps": STEPS, "epochs": 3, "batch_size_per_worker": 32,
                                  "log_every_steps": 1, "precision": precision,
                                  "strategy": strategy, "shuffle_buffer_rows": 0,
                                  "output_bias_init": "zero"},
                           scaling={"num_workers": 1, "use_gpu": True})
            done[key] = job, train.fit(job)
        return done[key]
    return get


def _losses(metrics: dict) -> np.ndarray:
    return np.array([h["loss"] for h in metrics["history"] if "loss" in h])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_the_fp32_curve(precision, run):
    _, exact = run("fp32")
    job, low = run(precision)
    reference, losses = _losses(exact), _losses(low)
    assert low["steps"] == STEPS and len(losses) == len(reference) == STEPS
    assert np.all(np.isfinite(losses)), losses  # fp16: the scaler skipped no step into NaN
    # It learns (from ln 2 at a zero bias), and the same way as fp32: a loss never unscaled, a
    # scaler stuck skipping steps or a wrong autocast dtype each bend the curve away from it.
    assert losses[-5:].mean() < losses[:5].mean() - 0.03, losses
    np.testing.assert_allclose(losses, reference, atol=0.05, rtol=0)
    assert np.abs(losses - reference).max() > 0, "identical to fp32: autocast did not run"
    # The export holds fp32 weights whatever the training precision.
    weights = load_file(f"{job.model_dir}/model.safetensors")
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert floats and all(w.dtype.itemsize == 4 and w.isfinite().all() for w in floats)


def test_deepspeed_zero2_bf16_trains_over_nccl_with_one_process(run):
    _, exact = run("fp32")
    _, zero = run("bf16", "deepspeed")
    losses = _losses(zero)
    assert zero["steps"] == STEPS and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean() - 0.03, losses
    # DeepSpeed casts the whole module to bf16 (not autocast): near fp32's curve, less close.
    np.testing.assert_allclose(losses, _losses(exact), atol=0.1, rtol=0)
