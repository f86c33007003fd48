"""Where the computation runs: device and precision, autocast, memory budget, hardware names.

The ground floor of the package, used alike by inference, training, evaluation, the CLI and the
widgets (it imports nothing of theirs, and no Qt).
"""

from __future__ import annotations

import contextlib
import platform
from functools import lru_cache

import torch

__all__ = [
    "DEVICES", "MEMORY_CAP_CPU", "MEMORY_FRACTION", "PRECISIONS", "PRECISION_CHOICES", "autocast", "autocast_dtype",
    "check_device", "check_precision", "cpu_has_bf16", "cpu_name", "hardware_name", "is_out_of_memory",
    "memory_budget", "resolve_device", "resolve_precision",
]

#: Autocast dtype of each precision name (fp32: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The device names every setting accepts (and "cuda:N").
DEVICES = ("auto", "cpu", "cuda")
#: The precision names every setting accepts.
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: Fraction of the free memory (CPU: available RAM; CUDA: free GPU memory) one forward pass may use.
MEMORY_FRACTION = {"cpu": 0.25, "cuda": 0.7}
#: Most bytes one forward pass may use on the CPU, whatever the free RAM: with the process's
#: ~0.3 GiB of Python, PyTorch and model, and the pages one tile touches, the peak RSS stays
#: under 3 GiB beyond the data (``docs/performance.md``). Larger tiles would save little: the
#: overlap waste of 2.5 GiB tiles is within 10-20 % of that of 5 GiB tiles.
MEMORY_CAP_CPU = int(2.5 * 1024**3)


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def hardware_name(device: torch.device | str = "cpu", *, threads: bool = True) -> str:
    """What a model card or a benchmark records as the hardware: the GPU's name for a CUDA
    device, else the CPU's model name and (with `threads`) PyTorch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads" if threads else cpu_name()


def check_device(device) -> None:
    """Raise ValueError (one line) unless `device` is a name of :data:`DEVICES` or ``"cuda:N"``
    (whether the hardware is there is :func:`resolve_device`'s question)."""
    if device not in DEVICES and not (isinstance(device, str) and device.startswith("cuda:")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def check_precision(precision) -> None:
    """Raise ValueError (one line) unless `precision` is one of :data:`PRECISION_CHOICES`."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}; got {precision!r}")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU.

    Raises
    ------
    ValueError
        For an unknown device, or ``"cuda"`` without a CUDA GPU.
    """
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 on older
    GPUs, fp32 otherwise.

    Raises
    ------
    ValueError
        For an unknown precision, or fp16 on the CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    check_precision(precision)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on the CPU use bf16 or fp32")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str):
    """A :func:`torch.autocast` context for a resolved `precision` on `device` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the errors of running out of memory: CUDA OOM, MemoryError, or the CPU
    allocator's RuntimeError."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def memory_budget(device: torch.device) -> int:
    """Bytes one forward pass may use: a fraction (:data:`MEMORY_FRACTION`) of the free memory.

    CUDA: free GPU memory (``torch.cuda.mem_get_info``) plus what PyTorch's caching allocator
    holds unused. CPU: the available RAM (``psutil``, else ``/proc/meminfo``), and at most
    :data:`MEMORY_CAP_CPU`.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(MEMORY_FRACTION["cuda"] * free)
    available = None
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil comes with napari
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
        except OSError:
            pass
    if available is None:  # pragma: no cover
        available = 4 * 1024**3
    return min(MEMORY_CAP_CPU, int(MEMORY_FRACTION["cpu"] * available))

