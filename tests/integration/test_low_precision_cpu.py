"""bf16 under DeepSpeed, on CPU: the MLP's fp32 feature columns meet bf16 parameters (DeepSpeed
casts the module), and the export holds the optimizer's fp32 master weights, not the 16-bit copy
the module trains with."""

import os

import numpy as np
import torch
from safetensors.torch import load_file

from mlc_dist import train
from mlc_dist.config import validate_job
from mlc_dist.demo import TABULAR_FEATURES, TABULAR_LABELS, write_demo_kind


def test_deepspeed_bf16_mlp_trains_and_exports_fp32_masters(tmp_path, ray_cluster):
    paths = write_demo_kind(str(tmp_path / "tabular"), "tabular", rows=200, seed=3)
    job = validate_job({
        "run": {"name": "bf16-mlp", "output_dir": str(tmp_path / "runs")},
        "data": {"train": paths["train"], "id_columns": ["id"],
                 "feature_columns": list(TABULAR_FEATURES), "label_columns": list(TABULAR_LABELS)},
        "model": {"kind": "mlp", "head": "multi_binary", "hidden_size": 32},
        "train": {"max_steps": 4, "batch_size_per_worker": 16, "lr": 1e-3, "log_every_steps": 1,
                  "warmup_ratio": 0.0, "shuffle_buffer_rows": 0, "strategy": "deepspeed",
                  "zero_stage": 2, "precision": "bf16"},
        "scaling": {"num_workers": 1},
    })
    summary = train.fit(job)
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert summary["steps"] == 4 and len(losses) == 4 and np.all(np.isfinite(losses))
    assert summary["engine"]["zero_stage"] == 2
    weights = load_file(os.path.join(job.model_dir, "model.safetensors"))
    linear = [v for k, v in weights.items() if k.endswith("weight") and v.ndim == 2]
    assert linear and all(v.dtype == torch.float32 for v in weights.values() if
                          v.is_floating_point())
    # fp32 masters: after 4 AdamW steps of lr 1e-3 they are no longer values bf16 can hold
    # (the 16-bit copy's are, every one of them).
    stacked = torch.cat([v.flatten() for v in linear])
    assert (stacked.bfloat16().float() != stacked).float().mean() > 0.9
