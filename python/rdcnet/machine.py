"""What this machine can do, for choosing how to run: its CPU cores and how busy they are, the
number of threads torch computes with, which precisions the hardware computes natively (and so
which one ``precision="auto"`` picks), and the key and folder under which measurements made here
are kept (:mod:`rdcnet.autotune`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

__all__ = ["usable_cores", "busy_warning", "set_threads", "cpu_description", "cpu_has_native_bf16",
           "cuda_has_native_bf16", "PRECISIONS", "resolve_precision", "precision_name", "machine_key", "cache_dir"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_warning(threads: Optional[int] = None) -> Optional[str]:
    """A warning when other work already occupies the cores torch is about to use with several
    threads: a multi-threaded run then competes with it, and on a small machine one step can take
    ten times longer (the threads wait for each other at every operation). None when all is well
    or the load cannot be read."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    try:
        load = os.getloadavg()[0]  # processes running or waiting for a core, over the last minute
    except (AttributeError, OSError):
        return None
    cores = usable_cores()
    if threads <= 1 or load + threads <= cores + 0.5:
        return None
    free = max(1, int(cores - load + 0.5))
    return (f"the machine is busy (load {load:.1f} on {cores} cores) and torch would use {threads} threads: "
            f"the run competes with the other work and may be many times slower; use --threads {free} "
            f"(or set OMP_NUM_THREADS={free}) for a steady pace, or run it when the machine is free")


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` CPU threads for torch's operations and rdcnet_ext's kernels (None: leave
    torch's default, one per core)."""
    if threads is None:
        return
    import torch

    from ._checks import check_int

    torch.set_num_threads(check_int(threads, "threads", minimum=1, maximum=4096))


# ---- what the hardware computes natively ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def cpu_description() -> dict:
    """The CPU's model name and instruction-set flags (Linux: /proc/cpuinfo; elsewhere what
    ``platform`` reports and no flags)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": model or "unknown", "flags": sorted(flags)}


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16), where oneDNN's
    bfloat16 convolutions and rdcnet_ext's bfloat16 kernel run at about twice the float32 rate.
    ``RDCNET_CPU_BF16=0/1`` overrides the detection."""
    forced = os.environ.get("RDCNET_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = set(cpu_description()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cuda_has_native_bf16(device=None) -> bool:
    """Whether a CUDA device has bfloat16 tensor cores (compute capability 8.0 or newer)."""
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device) -> Optional["torch.dtype"]:
    """The autocast dtype of a network run at ``precision`` on ``device``: None for float32.
    ``"auto"`` is bfloat16 where the hardware has it natively (CPUs with AVX512-BF16/AMX, CUDA
    sm_80+), float32 elsewhere; ``"bf16"`` is bfloat16 anywhere (emulated, slowly, without native
    support); ``"fp32"`` float32. The outputs stay float32 either way (the model's head)."""
    import torch

    from ._checks import check_choice

    check_choice(precision, "precision", PRECISIONS)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    native = cpu_has_native_bf16() if device.type == "cpu" else cuda_has_native_bf16(device)
    return torch.bfloat16 if native else None


def precision_name(dtype) -> str:
    """"bf16" or "fp32", as :func:`resolve_precision`'s result is written in logs and tables."""
    return "fp32" if dtype is None else {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


# ---- a key for measurements that hold on this machine only ----------------------------------------

def machine_key(device_type: str = "cpu") -> str:
    """What a timing measured here depends on: the processor (CPU model and the flags the kernels
    dispatch on, or the GPU's name and compute capability), the CPU threads, and the versions of
    torch and rdcnet_ext."""
    import torch

    import rdcnet_ext

    if device_type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        proc = f"{torch.cuda.get_device_name()} sm_{major}{minor}"
    else:
        cpu = cpu_description()
        isa = [f for f in cpu["flags"] if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma",
                                                 "asimd", "sve", "bf16")]
        proc = f"{cpu['model']} [{' '.join(isa)}] {torch.get_num_threads()} threads"
    return f"{proc} | torch {torch.__version__} | rdcnet_ext {rdcnet_ext.__version__}"


def cache_dir() -> Path:
    """Where rdcnet keeps per-user measurements (``RDCNET_CACHE_DIR``, else the XDG cache folder)."""
    root = os.environ.get("RDCNET_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rdcnet"
