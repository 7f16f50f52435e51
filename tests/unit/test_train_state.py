"""A checkpoint's random number generator states: every generator a step can draw from, per rank."""

import random

import numpy as np
import torch

from mlc_dist.train.state import read_rng, restore_rng, save_rng


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_every_cpu_generator_continues_where_the_checkpoint_left_it(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    _draws()
    save_rng(str(tmp_path), rank=3)
    expected = _draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)  # as a restarted worker's set_seed
    restore_rng(read_rng(str(tmp_path), rank=3))  # loads with weights_only=True
    assert _draws() == expected
    assert read_rng(str(tmp_path), rank=0) is None  # per rank: another rank's file is not this one


def test_cuda_generators_are_saved_and_restored_when_present(tmp_path, monkeypatch):
    # No GPU here: a stand-in for torch.cuda's RNG calls, holding one state per device.
    devices = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    save_rng(str(tmp_path), rank=0)
    restore_rng(read_rng(str(tmp_path), rank=0))
    assert [t.tolist() for t in restored] == [[1, 2, 3], [4, 5]]
