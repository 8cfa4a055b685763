import pytest
import torch

from src.core.device import autocast, inference_dtype, pick_device, training_amp


def test_inference_dtype_follows_the_device(monkeypatch):
    assert inference_dtype(torch.device("cpu")) is None
    for capability, dtype in (((7, 5), torch.float16), ((6, 0), torch.float16), ((8, 0), torch.bfloat16),
                              ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert inference_dtype(torch.device("cuda:0")) == dtype  # T4 7.5, P100 6.0: fp16; A100/H100: bf16


def test_training_amp_and_cpu_fallbacks():
    cpu = pick_device("cpu")
    assert cpu.type == "cpu" and training_amp("bf16", cpu) == (None, False)  # bf16 on the CPU gave NaN now and then
    assert training_amp("fp16", torch.device("cuda:0")) == (torch.float16, True)
    assert training_amp("bf16", torch.device("cuda:0")) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="amp must be"):
        training_amp("fp8", cpu)
    with autocast(cpu, None):
        assert torch.ones(1).dtype == torch.float32
