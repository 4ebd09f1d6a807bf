"""The bfloat16 CPU sSDC kernel (AVX512-BF16, csrc/ssdc/ssdc_cpu_bf16.cpp) against the float64
reference, forward and every gradient, on random shapes: 2D and 3D, odd sizes, 1x1 maps, dilations
larger than the map, channel counts that are not a multiple of the vector width or of two, several
groups, non-contiguous inputs; and the path without the kernel (float32 computation) agreeing.

The reference gets the same bf16-rounded inputs in float64; the kernel's error is then that of
bf16 products summed in float32 plus the rounding of the activations and of the results to bf16:
a relative error (norm of the difference over the norm of the reference) of about 2-3e-3 measured;
the tests allow 1e-2. On a CPU without AVX512-BF16 the kernel tests skip (the fallback test runs)."""

import math
import os
import subprocess
import sys

import pytest
import torch

from rdcnet_ext import _launch, ops, reference

HAS_KERNEL = bool(_launch.SSDC_CPU_BF16)
needs_kernel = pytest.mark.skipif(not HAS_KERNEL, reason="this CPU has no AVX512-BF16 (bf16 runs in float32)")
NAMES = ["y", "grad x", "grad weight", "grad bias", "grad reduce_weight", "grad reduce_bias"]
TOL = 1e-2

# (batch, groups, channels per group, spatial, dilations)
CASES = [
    (1, 1, 3, (7, 9), (1,)),
    (2, 2, 5, (13, 11), (1, 2)),
    (1, 3, 17, (5, 40), (1, 2, 4, 8)),
    (2, 1, 16, (12, 12), (1, 2, 4, 8)),
    (1, 1, 33, (3, 4, 5), (1, 2)),
    (1, 2, 8, (6, 7, 9), (1, 3)),
    (1, 1, 2, (1, 1), (1,)),                # a single pixel
    (1, 1, 4, (1, 1, 1), (2,)),
    (1, 1, 4, (2, 200), (1, 2, 300)),       # a dilation longer than every axis
    (2, 1, 1, (9, 17), (1, 2)),             # one channel: a pair half empty
    (1, 2, 64, (10, 37), (1, 2, 4, 8)),     # the paper's width
]


def make(batch, groups, channels, spatial, dilations, seed=0):
    g = torch.Generator().manual_seed(seed)
    nd = len(spatial)
    gc = groups * channels
    ts = [torch.randn(batch, gc, *spatial, generator=g),
          torch.randn(gc, channels, *(3,) * nd, generator=g) / math.sqrt(channels * 3 ** nd),
          torch.randn(gc, generator=g) * 0.1,
          torch.randn(gc, len(dilations) * channels, *(1,) * nd, generator=g) / math.sqrt(len(dilations) * channels),
          torch.randn(gc, generator=g) * 0.1]
    return [t.bfloat16() for t in ts]


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def check(inputs, dilations, groups, tol=TOL):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = ops.ssdc(*leaves, dilations, groups, 0.3)
    assert y.dtype == torch.bfloat16 and y.shape == inputs[0].shape
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    grads = torch.autograd.grad(y, leaves, gy)
    ref_leaves = [t.double().requires_grad_() for t in inputs]
    ref = reference.ssdc(*ref_leaves, dilations, groups, 0.3)
    ref_grads = torch.autograd.grad(ref, ref_leaves, gy.double())
    for name, got, want in zip(NAMES, (y, *grads), (ref, *ref_grads)):
        assert got.dtype == torch.bfloat16, name
        assert rel(got, want) <= tol, (name, rel(got, want))


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}g{c[1]}c{c[2]}-{'x'.join(map(str, c[3]))}-d{','.join(map(str, c[4]))}"
                                             for c in CASES])
def test_bf16_kernel_matches_the_float64_reference(case):
    batch, groups, channels, spatial, dilations = case
    check(make(*case), dilations, groups)


@needs_kernel
def test_non_contiguous_inputs():
    batch, groups, channels, spatial, dilations = 2, 2, 5, (11, 14), (1, 2)
    x, w, b, rw, rb = make(batch, groups, channels, spatial, dilations)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not x_nc.is_contiguous()
    check([x_nc, w, b, rw, rb], dilations, groups)


@needs_kernel
def test_under_autocast_the_model_block_uses_the_bf16_kernel():
    """Under CPU bfloat16 autocast the fused op casts to bfloat16 and runs the kernel (not the float32
    one): its result equals a direct call on bfloat16 tensors."""
    inputs = [t.float() for t in make(1, 2, 8, (9, 10), (1, 2))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.ssdc(*inputs, (1, 2), 2, 0.3)
    direct = ops.ssdc(*[t.bfloat16() for t in inputs], (1, 2), 2, 0.3)
    assert y.dtype == torch.bfloat16 and torch.equal(y, direct)


@pytest.mark.slow  # a fresh interpreter (~5 s)
def test_without_the_kernel_bf16_is_computed_in_float32(tmp_path):
    """RDCNET_EXT_SSDC_ISA caps the CPU variants below AVX512-BF16: bfloat16 is then upcast to float32
    (as on CPUs without it), and still matches the reference."""
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_ssdc_bf16 as t
from rdcnet_ext import _launch
assert _launch.SSDC_CPU_BF16 == "", _launch.SSDC_CPU_BF16
for case in (t.CASES[1], t.CASES[4], t.CASES[9]):
    t.check(t.make(*case), case[4], case[1], tol=5e-3)
print("ok")
"""
    env = dict(os.environ, RDCNET_EXT_SSDC_ISA="avx512")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] == "ok"


@needs_kernel
def test_kernel_and_float32_path_agree_in_a_model():
    """A whole RDCNet forward under bf16 autocast, fused path, against the chain in float32: the
    outputs agree to bf16 accuracy (the kernel is used inside the model, not only in isolation)."""
    import rdcnet

    torch.manual_seed(0)
    model = rdcnet.RDCNet(ndim=2, in_channels=1, groups=2, channels_per_group=16, downsampling_channels=8,
                          dilations=(1, 2, 4), iterations=3, ssdc_path="fused").eval()
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused = model(x)
        model.ssdc_path = "chain"
        chain = model(x)
    assert rel(fused.embeddings - model.coordinates((48, 40)), chain.embeddings - model.coordinates((48, 40))) < 5e-2
    assert rel(fused.probabilities, chain.probabilities) < 1e-2
