"""Benchmarks of the fused sSDC (rdcnet_ext.ops.ssdc) against the unfused PyTorch chain.

Cases (the paper's configurations, 8 groups x 64 channels, dilations 1, 2, 4, 8, LeakyReLU 0.3):

- ``2d-120``: 2D feature map 120 x 120, batch 2;
- ``2d-512``: 2D feature map 512 x 512, batch 2 (on CPU only with ``RDCNET_BENCH_SSDC_LARGE=1``:
  one fused forward+backward takes about a minute on two cores);
- ``3d-32``: 3D, a 32 x 256 x 256 patch downsampled by (1, 8, 8), i.e. a 32 x 32 x 32 map, batch 1.

For each case, pass (``fwd``: forward only under ``torch.no_grad``; ``fwdbwd``: forward and
backward of ``y.sum()`` w.r.t. every input) and device, pytest-benchmark times ``fused``
(``rdcnet_ext.ops.ssdc``), ``unfused`` (``rdcnet_ext.reference.ssdc``: per-dilation grouped
conv + LeakyReLU, concatenation, grouped 1x1 conv; on CUDA with ``cudnn.benchmark`` and
channels_last) and ``recompute`` (``rdcnet.ssdc.apply_ssdc(..., path="recompute")``: the same
framework convs one dilation at a time, activations recomputed in backward). ``extra_info`` records the FLOPs, the peak memory of one call (CUDA:
``torch.cuda.max_memory_allocated`` above the inputs; CPU: the growth of the peak RSS of a fresh
subprocess running one call), and the relative difference of the fused output to the unfused one.
Render with ``python benchmarks/render.py bench.json benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_setup import CUDA_OK, CUDA_SKIP_REASON, SMALL

from rdcnet_ext import ops, reference

GROUPS, CHANNELS, DILATIONS, SLOPE = 8, 64, (1, 2, 4, 8), 0.3
LARGE = os.environ.get("RDCNET_BENCH_SSDC_LARGE", "") not in ("", "0")
ROUNDS = int(os.environ.get("RDCNET_BENCH_SSDC_ROUNDS", "2"))

# name -> (batch, spatial shape, description)
CASES = {
    "2d-120": (2, (120, 120), "2D 120x120 feature map, batch 2"),
    "2d-512": (2, (512, 512), "2D 512x512 feature map, batch 2"),
    "3d-32": (1, (32, 32, 32), "3D 32x256x256 patch / (1,8,8) = 32x32x32 feature map, batch 1"),
}
if SMALL:
    CASES = {k: (b, tuple(max(8, s // 4) for s in shape), d + " (SMALL: /4)") for k, (b, shape, d) in CASES.items()}


def flops(batch: int, shape: tuple, passes: str) -> int:
    """Useful FLOPs: 2·B·G·C·C·taps·D·|S| (convs) + 2·B·G·C·D·C·|S| (reduction); x3 with backward."""
    n = 1
    for s in shape:
        n *= s
    taps = 3 ** len(shape)
    d = len(DILATIONS)
    fwd = 2 * batch * GROUPS * CHANNELS * CHANNELS * taps * d * n + 2 * batch * GROUPS * CHANNELS * d * CHANNELS * n
    return fwd * (3 if passes == "fwdbwd" else 1)


def make_inputs(batch: int, shape: tuple, device: str, requires_grad: bool):
    gen = torch.Generator().manual_seed(0)
    nd = len(shape)
    gc = GROUPS * CHANNELS

    def randn(*size, scale=1.0):
        t = (torch.randn(*size, generator=gen) * scale).to(device)
        return t.requires_grad_(requires_grad)

    return [
        randn(batch, gc, *shape),
        randn(gc, CHANNELS, *(3,) * nd, scale=(CHANNELS * 3**nd) ** -0.5),
        randn(gc, scale=0.1),
        randn(gc, len(DILATIONS) * CHANNELS, *(1,) * nd, scale=(len(DILATIONS) * CHANNELS) ** -0.5),
        randn(gc, scale=0.1),
    ]


def _recompute(*args):
    from rdcnet.ssdc import apply_ssdc

    return apply_ssdc(*args, path="recompute")


def _impl(name: str):
    return {"fused": ops.ssdc, "unfused": reference.ssdc, "recompute": _recompute}[name]


def step(impl: str, inputs, passes: str):
    fn = _impl(impl)
    if passes == "fwd":
        with torch.no_grad():
            return fn(*inputs, DILATIONS, GROUPS, SLOPE)
    y = fn(*inputs, DILATIONS, GROUPS, SLOPE)
    grads = torch.autograd.grad(y.sum(), inputs)
    return y.detach(), grads


def _skip_reason(case: str, device: str):
    if device == "cuda" and not CUDA_OK:
        return CUDA_SKIP_REASON
    if device == "cpu" and case == "2d-512" and not LARGE and not SMALL:
        return "2d-512 on CPU runs only with RDCNET_BENCH_SSDC_LARGE=1 (minutes)"
    return None


PARAMS = [
    pytest.param(case, passes, impl, device, id=f"{case}-{passes}-{impl}-{device}")
    for device in ("cpu", "cuda")
    for case in CASES
    for passes in ("fwd", "fwdbwd")
    for impl in ("fused", "unfused", "recompute")
]


def _cpu_peak_rss(case: str, passes: str, impl: str) -> int:
    """Growth of the peak RSS (bytes) of a fresh process over its RSS just before its first call
    (-1 when that growth stays below the peak the process had already reached, e.g. at import)."""
    code = f"""
import json, sys
sys.path[:0] = {json.dumps([str(Path(__file__).resolve().parent)])}
import torch
torch.set_num_threads({torch.get_num_threads()})
import test_ssdc as t
batch, shape, _ = t.CASES[{case!r}]
inputs = t.make_inputs(batch, shape, "cpu", {passes == "fwdbwd"})
def status(key):  # VmHWM is this process's own peak (ru_maxrss can inherit the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
before = status("VmRSS")
peak_before = status("VmHWM")
out = t.step({impl!r}, inputs, {passes!r})
peak = status("VmHWM")
print(json.dumps({{"growth": max(0, peak - before), "hidden": peak == peak_before}}))
"""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)  # not the repository root: the installed package, not the source tree
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=here)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return -1 if info["hidden"] else int(info["growth"])


@pytest.mark.parametrize("case,passes,impl,device", PARAMS)
def test_ssdc(benchmark, case, passes, impl, device):
    reason = _skip_reason(case, device)
    if reason:
        pytest.skip(reason)
    batch, shape, describe = CASES[case]
    benchmark.group = f"ssdc/{case}/{passes}/{device}"
    benchmark.extra_info.update(
        suite="ssdc", ssdc_case=case, describe=describe, passes=passes, impl=impl, device=device,
        flops=flops(batch, shape, passes), dtype="float32", threads=torch.get_num_threads(),
    )
    inputs = make_inputs(batch, shape, device, passes == "fwdbwd")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        if impl == "unfused":  # channels_last where it helps (cuDNN's grouped convs)
            x = inputs[0].detach().to(memory_format=torch.channels_last if len(shape) == 2 else torch.channels_last_3d)
            inputs[0] = x.requires_grad_(passes == "fwdbwd")

    def run():
        out = step(impl, inputs, passes)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    out = run()  # warm-up (cuDNN autotuning, allocator, first-call overheads)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        benchmark.extra_info["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    elif os.environ.get("RDCNET_BENCH_SSDC_MEMORY", "1") not in ("", "0"):
        benchmark.extra_info["peak_bytes"] = _cpu_peak_rss(case, passes, impl)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if passes == "fwd":  # agreement of the outputs (the tests check gradients)
        other = step("fused" if impl == "unfused" else "unfused", inputs, passes)
        benchmark.extra_info["rel_diff_y"] = float((out.double() - other.double()).norm() / other.double().norm())
