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


def cpu_runs_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, through oneDNN); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN's query
        return False


def training_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for the config's amp: bf16 | fp16 | none.

    CUDA runs either. The CPU runs bf16 where it computes it natively (the 2-core dev box: a localizer or
    cnn_lstm step 2x faster, docs/BENCHMARKS.md), else fp32; it never runs fp16.
    """
    if amp not in ("bf16", "fp16", "none"):
        raise ValueError(f"amp must be bf16, fp16 or none, not {amp!r}")
    if amp == "none":
        return None, False
    if device.type == "cpu":
        return (torch.bfloat16, False) if amp == "bf16" and cpu_runs_bf16() else (None, False)
    if device.type != "cuda":
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
