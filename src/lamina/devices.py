"""Where a model runs, on the ground floor: the device people name (`--device cuda`), the dtype
that suits it when they name none, and whether the weights fit before any is loaded."""

from __future__ import annotations

import torch

from .dtypes import parse_dtype
from .errors import LaminaError

GiB = 1 << 30


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`name` as a torch device; None or "auto": the GPU when one is visible, else the CPU.
    A device this machine lacks is one clear error, not a crash at the first tensor."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LaminaError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise LaminaError(f"--device {name}: this machine has no CUDA device visible (torch "
                              f"{torch.__version__}, {built}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LaminaError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LaminaError(f"--device {name}: Apple's Metal (mps) is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise LaminaError(f"--device {name}: lamina runs models on cpu, cuda or mps")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU that has it (half the bytes to read per token, what models are trained
    in); float32 elsewhere (CPUs without bfloat16 matmuls run it slower than float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def placement(device: str | torch.device | None = None,
              dtype: str | torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to load a model on, each defaulted for the other."""
    where = resolve_device(device)
    return where, parse_dtype(dtype) if dtype not in (None, "", "auto") else default_dtype(where)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a model on `device` now (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Refuse, before loading, weights that cannot fit in the memory `device` has free."""
    free = available_bytes(device)
    if free is not None and needed > free:
        raise LaminaError(f"{what} needs {needed / GiB:.1f} GiB for its weights on {device}, and "
                          f"{free / GiB:.1f} GiB is free; try --dtype bfloat16, --quantize int8 or int4, "
                          f"or another device")
