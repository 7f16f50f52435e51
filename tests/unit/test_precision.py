"""Precision resolved per device: native bf16 only, and choices a device cannot run refused."""

from types import SimpleNamespace

import pytest
import torch

from mlc_dist.precision import PrecisionError, resolve
from mlc_dist.scoring.pipeline import resolve_precision

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def fake_gpu(monkeypatch, major: int, name: str) -> None:
    """A CUDA device of the given compute capability, on which bf16 *emulation* works (as on
    a V100 or T4: `torch.cuda.is_bf16_supported()` says True there)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(major=major, minor=0, name=name))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert torch.cuda.is_bf16_supported()  # the emulation-counting answer we must not trust


def test_auto_on_an_emulating_gpu_is_fp16_for_training_and_scoring(monkeypatch):
    fake_gpu(monkeypatch, 7, "Tesla V100-SXM2-16GB")
    assert resolve("auto", CUDA) == "fp16"
    assert resolve_precision("auto", CUDA) == "fp16"


def test_bf16_on_an_emulating_gpu_is_refused_naming_the_gpu(monkeypatch):
    fake_gpu(monkeypatch, 7, "Tesla T4")
    with pytest.raises(PrecisionError, match=r"train\.precision: bf16.*Tesla T4.*7\.0"):
        resolve("bf16", CUDA)
    with pytest.raises(PrecisionError, match=r"score\.precision: bf16.*Tesla T4"):
        resolve_precision("bf16", CUDA)


def test_auto_on_an_ampere_or_later_gpu_is_bf16(monkeypatch):
    fake_gpu(monkeypatch, 9, "NVIDIA H200")
    assert resolve("auto", CUDA) == "bf16" and resolve("bf16", CUDA) == "bf16"
    assert resolve_precision("auto", CUDA) == "bf16"


def test_cpu_auto_is_fp32_and_fp16_training_is_refused():
    assert resolve("auto", CPU) == "fp32" and resolve_precision("auto", CPU) == "fp32"
    assert resolve("bf16", CPU) == "bf16"  # asked for explicitly: slow here, but correct
    with pytest.raises(PrecisionError, match="fp16 training needs a GPU"):
        resolve("fp16", CPU)
    with pytest.raises(PrecisionError, match="not one of"):
        resolve("fp8", CPU)
