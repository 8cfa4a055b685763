"""Where models run and in which precision: one home for the device choice, AMP dtypes and autocast."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' is the process's GPU (cuda:local_rank) when there is one, else the CPU; any torch name works."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def place_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The model on the device, its weights channels-last where asked (the config's `channels_last`) on CUDA and
    the CPU, whose kernels (cuDNN, oneDNN) are faster so: 1.2-1.7x a batched forward of the tiny models on the
    CPU (docs/BENCHMARKS.md). Inputs may stay contiguous: the first convolution's output follows the weights."""
    model = model.to(device)
    if channels_last and device.type in ("cuda", "cpu"):
        model = model.to(memory_format=torch.channels_last)
    return model


def training_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for the config's amp: bf16 | fp16 | none.

    Only CUDA uses mixed precision; the CPU trains in fp32: bf16 autocast on a CPU with native bf16 is 1.4-2.7x
    faster a step, but gives NaN now and then for the same seed and inputs (docs/BENCHMARKS.md).
    """
    if amp not in ("bf16", "fp16", "none"):
        raise ValueError(f"amp must be bf16, fp16 or none, not {amp!r}")
    if device.type != "cuda" or amp == "none":
        return None, False
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for inference: bf16 where the GPU runs it natively, fp16 on older GPUs (Kaggle's T4 and
    P100), none (fp32) on the CPU."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for a forward pass: autocast to dtype, or nothing when dtype is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
