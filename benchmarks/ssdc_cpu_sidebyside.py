"""The fused CPU sSDC against the framework chain (oneDNN), side by side in one process.

Paper block (8 groups x 64 channels, dilations 1-2-4-8, LeakyReLU 0.3) at the sizes the issue
names -- batch 2 at 120 x 120, and the maps inside the real models (64 x 64 in 2D, 32 x 32 x 32 in
3D) -- in float32 and bfloat16, forward and forward+backward. Variants are interleaved round by
round; medians and ratios are printed (chain time / fused time: > 1 means the fused kernel is
faster). The bf16 chain is the chain on bfloat16 tensors (what autocast runs; oneDNN's bf16
convolutions); the fused bf16 is rdcnet_ext's AVX512-BF16 kernel where the CPU has one.

    python benchmarks/ssdc_cpu_sidebyside.py [--rounds 5] [--cases 2d-120,2d-64,3d-32]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

from rdcnet_ext import _C, ops, reference

CASES = {"2d-120": (2, (120, 120)), "2d-64": (2, (64, 64)), "3d-32": (1, (32, 32, 32))}
G, C, DIL = 8, 64, (1, 2, 4, 8)


def inputs(batch, spatial, dtype, grad):
    torch.manual_seed(0)
    nd = len(spatial)
    ts = [torch.randn(batch, G * C, *spatial), torch.randn(G * C, C, *(3,) * nd) / math.sqrt(9 * C),
          torch.randn(G * C) * 0.1, torch.randn(G * C, len(DIL) * C, *(1,) * nd) / math.sqrt(len(DIL) * C),
          torch.randn(G * C) * 0.1]
    return [t.to(dtype).requires_grad_(grad) for t in ts]


def variant(fn, ts, grad):
    def run():
        y = fn(*ts, DIL, G, 0.3)
        if grad:
            y.backward(torch.ones_like(y))
            for t in ts:
                t.grad = None
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default="2d-120,2d-64,3d-32")
    args = p.parse_args(argv)
    print(f"CPU kernels: {_C.ssdc_cpu_isa()}, bf16: {_C.ssdc_cpu_bf16_kind() or 'none (computed in float32)'}; "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}")
    print("| case | dtype | pass | chain | fused | chain/fused | fused GFLOP/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.cases.split(","):
        batch, spatial = CASES[name]
        taps = 3 ** len(spatial)
        flops = 2 * batch * G * C * C * (taps + 1) * len(DIL) * math.prod(spatial)
        for dtype in (torch.float32, torch.bfloat16):
            for grad in (False, True):
                ts_c, ts_f = inputs(batch, spatial, dtype, grad), inputs(batch, spatial, dtype, grad)
                runs = {"chain": variant(reference.ssdc, ts_c, grad), "fused": variant(ops.ssdc, ts_f, grad)}
                for r in runs.values():
                    r()
                times = {k: [] for k in runs}
                for _ in range(args.rounds):
                    for k, r in runs.items():
                        t0 = time.perf_counter()
                        r()
                        times[k].append(time.perf_counter() - t0)
                chain, fused = (statistics.median(times[k]) for k in ("chain", "fused"))
                total = flops * (3 if grad else 1)
                print(f"| {name} | {str(dtype).replace('torch.', '')} | {'fwd+bwd' if grad else 'fwd'} | "
                      f"{chain * 1000:.0f} ms | {fused * 1000:.0f} ms | {chain / fused:.2f}× | {total / fused / 1e9:.0f} |",
                      flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
