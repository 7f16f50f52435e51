"""The export's thresholds follow the job's threshold settings, whichever checkpoint is exported:
a rerun that changes train.threshold* evaluates again, but model selection may export an earlier
checkpoint, tuned under the old settings; fit re-tunes it from its stored validation predictions."""

from __future__ import annotations

import os

import numpy as np
import torch

from mlc_dist import metrics
from mlc_dist.artifacts import ModelMeta, read_meta, save_export
from mlc_dist.config import ModelConfig, TrainConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model
from mlc_dist.train.fit import export_checkpoint
from mlc_dist.train.state import TrainState
from mlc_dist.train.worker import STATE_FILE, VAL_FILE, tune_thresholds

SPACE = LabelSpace.from_names(["common", "rare", "middling"])


def _checkpoint(tmp_path, tiny_bert, tcfg: TrainConfig):
    import ray.train
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    labels = (rng.random((400, 3)) < [0.4, 0.02, 0.1]).astype(np.float32)
    # The rare label's scores sit lower than the others' (as a rare label's do).
    probs = ((labels * 0.3 + rng.random(labels.shape) * 0.7) * [1.0, 0.4, 1.0]).astype(np.float32)
    tuned = tune_thresholds(tcfg, labels, probs)  # what the worker stored at this checkpoint
    meta = ModelMeta(SPACE, tuned.values, "text", None, 32, tiny_bert, extra={**tuned.meta(),
                                                                               "step": 7})
    directory = tmp_path / "checkpoint"
    save_export(str(directory / "model"), build_model(ModelConfig(name=tiny_bert), SPACE),
                AutoTokenizer.from_pretrained(tiny_bert), meta)
    torch.save(TrainState(global_step=7).state_dict(), directory / STATE_FILE)
    np.savez_compressed(directory / VAL_FILE, probs=probs, labels=labels)
    os.makedirs(tmp_path / "run")
    return ray.train.Checkpoint.from_directory(str(directory)), labels, probs


def test_an_export_tuned_under_other_settings_is_tuned_again(tmp_path, tiny_bert):
    old = TrainConfig(threshold_min_support=1)  # every label its own threshold
    checkpoint, labels, probs = _checkpoint(tmp_path, tiny_bert, old)
    new = TrainConfig(threshold_min_support=30, threshold_fallback="global")
    state, export_dir, val = export_checkpoint(checkpoint, str(tmp_path / "run"), new)
    assert state.global_step == 7 and np.array_equal(val["probs"], probs)
    meta = read_meta(export_dir)
    expected = metrics.tune_thresholds(labels, probs, min_support=30, fallback="global")
    assert meta.thresholds == expected.values
    assert meta.extra["threshold_rules"] == ["tuned", "fallback_global", "tuned"]
    assert meta.thresholds != read_meta(os.path.join(checkpoint.path, "model")).thresholds
    assert meta.extra["step"] == 7  # the rest of the metadata is the checkpoint's


def test_an_export_tuned_under_the_same_settings_is_copied_as_is(tmp_path, tiny_bert):
    same = TrainConfig()
    checkpoint, _, _ = _checkpoint(tmp_path, tiny_bert, same)
    _, export_dir, _ = export_checkpoint(checkpoint, str(tmp_path / "run"), same)
    source = os.path.join(checkpoint.path, "model")
    for name in os.listdir(source):
        with open(os.path.join(source, name), "rb") as a, \
                open(os.path.join(export_dir, name), "rb") as b:
            assert a.read() == b.read(), name
