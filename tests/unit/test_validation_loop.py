"""The train loop's evaluate() on what a GPU worker's shard hands it: every tensor on the device."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mlc_dist.config import ModelConfig
from mlc_dist.labels import LabelSpace
from mlc_dist.models import build_model
from mlc_dist.models.outputs import OutputSchema
from mlc_dist.train.worker import evaluate


class OnDevice(torch.Tensor):
    """A tensor as Ray hands it to a GPU worker: .numpy() refuses until it is moved to the CPU."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu()")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


class Shard:
    def __init__(self, batches):
        self.batches = batches

    def iter_torch_batches(self, batch_size, collate_fn):
        return iter(self.batches)


class Engine:
    def __init__(self, model):
        self.model = self.module = model
        self.device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()


def test_evaluate_moves_labels_to_the_cpu_before_numpy(tiny_bert):
    space = LabelSpace(["a", "b", "c"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=tiny_bert), space)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
    batch = {"input_ids": torch.tensor([[101, 2000, 102], [101, 2001, 102], [101, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]]),
             "labels": labels.as_subclass(OnDevice)}
    outputs = OutputSchema(space, "linear")
    probs, got = evaluate(Engine(model), Shard([batch]), None, 3, 0, 1, outputs)
    np.testing.assert_array_equal(got, labels.numpy())
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]).logits)
    np.testing.assert_allclose(probs, expected.numpy(), rtol=0, atol=1e-6)
