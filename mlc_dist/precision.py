"""Which floating-point precision a device runs: `auto` resolved, and choices it cannot run refused.

`torch.cuda.is_bf16_supported()` counts *emulated* bf16 (V100, T4: every bf16 matmul becomes
several fp32 ones, slower than fp32); only native support (compute capability >= 8, or ROCm)
counts here. This module decides; the train loop and the scorer only ask.
"""

from __future__ import annotations

import torch

CHOICES = ("auto", "fp32", "bf16", "fp16")


class PrecisionError(ValueError):
    """A precision the device cannot run (or cannot run at a useful speed)."""


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 tensor cores; False on CPU and on GPUs that only emulate bf16."""
    if device.type != "cuda":
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def _cpu_has_amx_bf16() -> bool:
    # Inference only: CPUs with AMX tiles run bf16 matmuls fast; others crawl (fp32 it is).
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_bf16" in f.read()
    except OSError:
        return False


def _device_name(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} (compute capability {props.major}.{props.minor})"


def resolve(precision: str, device: torch.device, *, key: str = "train.precision",
            training: bool = True) -> str:
    """`auto` -> bf16 on GPUs with native bf16, fp16 on other GPUs, fp32 on CPU (bf16 for
    scoring on CPUs with AMX).

    An explicit choice is checked against the device: bf16 on a GPU that only emulates it is
    refused (it would run slower than fp32); fp16 training needs a GPU (its GradScaler is CUDA's).
    bf16 on CPU is allowed when asked for (correct, though slow on CPUs without AMX).
    """
    if precision not in CHOICES:
        raise PrecisionError(f"{key}: {precision!r} is not one of {', '.join(CHOICES)}")
    if precision == "auto":
        if device.type != "cuda":
            return "bf16" if not training and _cpu_has_amx_bf16() else "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise PrecisionError(
            f"{key}: bf16 asked for, but {_device_name(device)} has no native bf16 (it would "
            "be emulated, slower than fp32); use fp16 or auto")
    if precision == "fp16" and training and device.type != "cuda":
        raise PrecisionError(f"{key}: fp16 training needs a GPU (loss scaling is CUDA's); "
                             f"this worker's device is {device.type}; use fp32 or auto")
    return precision
