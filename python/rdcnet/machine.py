"""What this machine can do, for choosing how to run: its CPU cores and how busy they are, and the
number of threads torch computes with."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["usable_cores", "busy_warning", "set_threads"]


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
