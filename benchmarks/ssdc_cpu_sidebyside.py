"""Side-by-side CPU timing of the fused sSDC against the oneDNN chain, float32 and bfloat16.

All variants run interleaved in one process (round-robin, ``--rounds`` rounds after one warm-up
call each) and the medians are compared, so that load from other jobs on the machine hits every
variant alike. Paper block: 8 groups x 64 channels, dilations 1, 2, 4, 8, LeakyReLU 0.3.

Variants:

- ``fused-f32`` / ``chain-f32``: ``rdcnet_ext.ops.ssdc`` / ``rdcnet.ssdc.ssdc_chain`` on float32;
- ``fused-bf16``: ``rdcnet_ext.ops.ssdc`` on bfloat16 tensors (the bf16 CPU kernel);
- ``chain-bf16``: the chain on bfloat16 tensors (oneDNN bf16 convolutions);
- ``chain-amp``: the chain on float32 tensors under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Cases: ``2d-120`` (B=2, 120², the isolated-block benchmark), ``2d-64`` (B=2, 64²: the coarse map
of two 256² crops in the model), ``3d-32`` (B=1, 32³: a 32x256x256 patch at factor (1, 8, 8)).

Usage::

    python benchmarks/ssdc_cpu_sidebyside.py [--cases 2d-120,2d-64,3d-32] [--passes fwd,fwdbwd]
        [--variants fused-f32,chain-f32,fused-bf16,chain-bf16,chain-amp] [--rounds 5] [--threads 2]

Prints, per case and pass, the median time of every variant, the fused/chain ratios (speed-ups:
chain time / fused time, > 1 means the fused kernel is faster) and GFLOP/s of useful work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from rdcnet.ssdc import ssdc_chain
from rdcnet_ext import ops
from test_ssdc import DILATIONS, GROUPS, SLOPE, flops, make_inputs  # benchmarks/test_ssdc.py: same block and inputs

CASES = {"2d-120": (2, (120, 120)), "2d-64": (2, (64, 64)), "3d-32": (1, (32, 32, 32))}
VARIANTS = ("fused-f32", "chain-f32", "fused-bf16", "chain-bf16", "chain-amp")


def make_step(variant: str, batch: int, shape: tuple, passes: str):
    fused = variant.startswith("fused")
    dtype = torch.bfloat16 if variant.endswith("bf16") else torch.float32
    inputs = [t.to(dtype).requires_grad_(passes == "fwdbwd") for t in make_inputs(batch, shape, "cpu", False)]
    fn = ops.ssdc if fused else ssdc_chain
    amp = variant == "chain-amp"
    gy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(dtype)

    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        if passes == "fwd":
            with torch.no_grad(), ctx:
                return fn(*inputs, DILATIONS, GROUPS, SLOPE)
        with ctx:
            y = fn(*inputs, DILATIONS, GROUPS, SLOPE)
        return torch.autograd.grad(y, inputs, gy.to(y.dtype))

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="2d-120,2d-64,3d-32")
    p.add_argument("--passes", default="fwd,fwdbwd")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rdcnet_ext import _C

    print(f"torch {torch.__version__}, {args.threads} threads, CPU sSDC ISA: {_C.ssdc_cpu_isa()}, "
          f"load average at start: {os.getloadavg()[0]:.2f}")
    variants = [v for v in args.variants.split(",") if v]
    for case in args.cases.split(","):
        batch, shape = CASES[case]
        for passes in args.passes.split(","):
            steps = {v: make_step(v, batch, shape, passes) for v in variants}
            for s in steps.values():
                s()  # warm-up
            times = {v: [] for v in variants}
            for _ in range(args.rounds):
                for v, s in steps.items():
                    t0 = time.perf_counter()
                    s()
                    times[v].append(time.perf_counter() - t0)
            med = {v: statistics.median(t) for v, t in times.items()}
            fl = flops(batch, shape, passes)
            line = ", ".join(f"{v} {med[v] * 1e3:.0f} ms ({fl / med[v] / 1e9:.0f} GFLOP/s)" for v in variants)
            print(f"{case} {passes}: {line}")
            ratios = []
            for fused, chains in (("fused-f32", ("chain-f32",)), ("fused-bf16", ("chain-bf16", "chain-amp"))):
                for c in chains:
                    if fused in med and c in med:
                        ratios.append(f"{c}/{fused} = {med[c] / med[fused]:.2f}x")
            if ratios:
                print(f"    speed-ups (chain time / fused time): {', '.join(ratios)}; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
