"""napari_cryoden.device: device and precision resolution, autocast, out-of-memory errors, memory, hardware."""

import pytest
import torch

from napari_cryoden import device


def test_resolve_device():
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            device.resolve_device("cuda")


def test_resolve_precision_and_autocast(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert device.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        device.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        device.resolve_precision("int8", cpu)
    assert device.autocast_dtype("bf16") is torch.bfloat16 and device.autocast_dtype("fp32") is None
    with device.autocast(cpu, "bf16"):
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert y.dtype == torch.bfloat16
    with device.autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("exc, expected", [
    (MemoryError(), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(exc, expected):
    assert device.is_out_of_memory(exc) is expected


def test_memory_budget_and_hardware_name():
    budget = device.memory_budget(torch.device("cpu"))
    assert 0 < budget <= device.MEMORY_CAP_CPU
    name = device.hardware_name("cpu")
    assert name.endswith(f"{torch.get_num_threads()} threads") and name.startswith(device.cpu_name())
    assert device.hardware_name("cpu", threads=False) == device.cpu_name()
