"""The train loop's evaluate() on what a GPU worker's shard hands it: every tensor on the device."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
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


def test_ranks_reading_validation_in_different_orders_are_caught(tiny_bert):
    """Two ranks keep every other batch of the validation set: in one order every row is
    evaluated once; if a rank reads another order (Ray without preserve_order), rows are
    evaluated twice or not at all, and the check refuses the result."""
    from mlc_dist.train.worker import check_coverage

    space = LabelSpace(["a", "b", "c"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=tiny_bert), space)
    outputs = OutputSchema(space, "linear")
    rows = [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]]
    batches = [{"input_ids": torch.tensor([[101, 2000 + i, 102]]),
                "attention_mask": torch.tensor([[1, 1, 1]]),
                "labels": torch.tensor([r], dtype=torch.float32)} for i, r in enumerate(rows)]
    stats = {"num_rows": 4, "positives": [2.0, 2.0, 1.0]}

    def gathered(order0, order1):
        _, l0 = evaluate(Engine(model), Shard([batches[i] for i in order0]), None, 1, 0, 2,
                         outputs)
        _, l1 = evaluate(Engine(model), Shard([batches[i] for i in order1]), None, 1, 1, 2,
                         outputs)
        return np.concatenate([l0, l1])

    same = gathered([0, 1, 2, 3], [0, 1, 2, 3])
    check_coverage(same, stats)
    np.testing.assert_array_equal(same.sum(0), stats["positives"])
    other = gathered([0, 1, 2, 3], [1, 0, 3, 2])  # rank 1 keeps rows 0 and 2 again
    with pytest.raises(RuntimeError, match="different orders"):
        check_coverage(other, stats)
