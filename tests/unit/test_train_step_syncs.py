"""The train step leaves the loss and the token count on the device: no host sync per step
(each `.item()`, `int(t)` or `float(t)` of a CUDA tensor waits for the GPU); one per log step."""

from __future__ import annotations

import contextlib

import torch

from mlc_dist.config import ModelConfig, validate_job
from mlc_dist.labels import LabelSpace
from mlc_dist.losses import build_loss
from mlc_dist.models import build_model
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.train.state import StepClock, TrainState
from mlc_dist.train.worker import Worker


class Engine:
    """A single-process engine: plain SGD, no accumulation."""

    def __init__(self, model):
        self.model = self.module = model
        self.device = torch.device("cpu")
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # reads nothing back
        self.lr = 1e-3

    def autocast(self):
        return contextlib.nullcontext()

    accumulate = autocast

    def backward(self, loss):
        loss.backward()

    def step(self, flush=False):
        self.optimizer.step()
        self.optimizer.zero_grad()
        return True


def worker(tiny_bert, log_every):
    space = LabelSpace(["a", "b", "c"])
    torch.manual_seed(0)
    w = object.__new__(Worker)
    w.engine = Engine(build_model(ModelConfig(name=tiny_bert), space))
    w.job = validate_job({"run": {"name": "t"}, "train": {"log_every_steps": log_every}})
    w.state, w.world, w.total_steps, w.progress = TrainState(), 2, 100, None
    w.loss_fn = build_loss(OutputSchema(space, "linear"), None)
    w._loss_sum, w._loss_count, w._sent_at, w._tokens = 0.0, 0, 0.0, 0
    w.clock = StepClock(w.state, 0)
    return w


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": torch.randint(1000, 2000, (4, 6), generator=g), "attention_mask": mask,
            "labels": torch.randint(0, 2, (4, 3), generator=g).float()}


def test_no_host_sync_per_step_one_per_log_step(tiny_bert, monkeypatch):
    w = worker(tiny_bert, log_every=5)
    reads = []
    for name in ("item", "__int__", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    for step in range(1, 5):
        assert w.train_step(batch(step))
        w.clock.step(w.tokens_seen())
    assert reads == [], reads  # four steps, nothing read back
    assert w.train_step(batch(5))
    w.clock.step(w.tokens_seen())
    w.log_step()
    assert 0 < len(reads) <= 4, reads
    # The counts are still exact: 5 batches of 22 real tokens on each of 2 workers.
    assert w.state.train_tokens == 5 * 22 * 2
    assert w.state.steady_tokens == 4 * 22 * 2  # the first step only sets the clock's mark
    (logged,) = [h for h in w.state.history if "loss" in h]
    assert logged["step"] == 5 and isinstance(logged["loss"], float) and logged["loss"] > 0
