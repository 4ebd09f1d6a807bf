"""The bfloat16 CPU sSDC kernel (rdcnet_ext.ops.ssdc on bfloat16 CPU tensors) against the float64
reference, and its fallback without AVX512-BF16.

The reference is ``rdcnet_ext.reference.ssdc`` in float64 on exact float64 copies of the
bf16-rounded inputs (and of the bf16 output gradient), so what remains is the kernel's own
rounding: float32 accumulation, the activations and gz rounded to bfloat16 (as the bf16 chain of
framework ops rounds them), and the outputs and gradients rounded once to bfloat16. Rounding a
result to bfloat16 alone costs a relative-norm error of 1e-3 to 3e-3 here (2^-9 at most per
element; up to 3.0e-3 on the cases below). Measured errors of the kernel, worst over the cases
below (AVX512-BF16 and the fallback alike): y 2.3e-3, grad x 3.1e-3, grad weight 5.2e-3, grad bias
3.0e-3, grad reduce_weight 5.6e-3, grad reduce_bias 2.3e-3. The tolerance is 1e-2.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from rdcnet_ext import _C, ops, reference
from test_ssdc import make

TOL = 1e-2

# (batch, groups, channels per group, spatial shape, dilations)
EDGE_CASES = [
    (1, 1, 3, (1, 1), (1,)),  # 1x1 map
    (2, 1, 5, (1, 1, 1), (1, 2)),  # 1x1x1 map
    (1, 2, 3, (2, 3), (4, 9)),  # every dilation larger than the map
    (2, 3, 17, (5, 7), (1, 2, 4, 8)),
    (1, 1, 33, (9, 13), (1, 3)),
    (1, 2, 5, (3, 4, 5), (1, 2, 4)),
    (2, 1, 1, (7, 1), (1, 2)),  # width 1, a single channel (its pair partner is padding)
    (1, 1, 16, (3, 130), (1, 2)),  # two row tiles
    (1, 1, 17, (2, 3, 131), (1, 40)),  # 3D, two row tiles, d > two axes
]


def _random_cases(n: int, seed: int = 16):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        ndim = rng.choice((2, 3))
        shape = tuple(rng.randint(1, 13 if ndim == 2 else 6) for _ in range(ndim))
        dils = tuple(sorted(rng.sample(range(1, 11), rng.randint(1, 4))))
        cases.append((rng.randint(1, 2), rng.randint(1, 3), rng.choice((1, 2, 3, 5, 8, 17, 33)), shape, dils))
    return cases


CASES = EDGE_CASES + _random_cases(8)
IDS = [f"b{b}g{g}c{c}-{'x'.join(map(str, s))}-d{'_'.join(map(str, d))}" for b, g, c, s, d in CASES]
NAMES = ["y", "grad x", "grad weight", "grad bias", "grad reduce_weight", "grad reduce_bias"]


def make_bf16(batch, groups, channels, shape, dilations, seed=0):
    """Seeded bf16 (x, weight, bias, reduce_weight, reduce_bias) of test_ssdc.make, and a bf16 grad_y."""
    inputs = make(batch, groups, channels, shape, dilations, torch.bfloat16, seed=seed)
    gy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return [*inputs, gy.to(torch.bfloat16)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(fn, inputs, dilations, groups, gy, dtype=None):
    """y and the five gradients of fn on (copies of) inputs, for the output gradient gy."""
    leaves = [(t if dtype is None else t.to(dtype)).detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves, dilations, groups, 0.3)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return [y.detach(), *grads]


def check_case(case, inputs=None):
    """Errors of the kernel against the float64 reference; returns the kernel's results."""
    b, g, c, shape, dil = case
    *inputs_, gy = make_bf16(*case) if inputs is None else inputs
    got = run(ops.ssdc, inputs_, dil, g, gy)
    want = run(reference.ssdc, inputs_, dil, g, gy, torch.float64)
    for name, t, w, src in zip(NAMES, got, want, [inputs_[0], *inputs_]):
        assert t.dtype == torch.bfloat16 and t.shape == src.shape, name
        err = rel_err(t, w)
        assert err <= TOL, f"{name}: relative error {err:.2e}"
    return got


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bf16_kernel_matches_float64_reference(case):
    check_case(case)


def test_bf16_error_is_bf16_rounding():
    """On a paper-width group the error is that of rounding the float64 result to bfloat16, within 3x."""
    case = (1, 2, 64, (11, 37), (1, 2, 4, 8))
    *inputs, gy = make_bf16(*case)
    got = run(ops.ssdc, inputs, case[4], case[1], gy)
    want = run(reference.ssdc, inputs, case[4], case[1], gy, torch.float64)
    for name, t, w in zip(NAMES, got, want):
        floor = rel_err(w.to(torch.bfloat16), w)
        assert rel_err(t, w) <= 3 * floor + 1e-4, f"{name}: {rel_err(t, w):.2e} vs rounding alone {floor:.2e}"


def test_noncontiguous_inputs():
    b, g, c, shape, dil = 2, 2, 5, (6, 7), (1, 3)
    x, w, bias, rw, rb, gy = make_bf16(b, g, c, shape, dil)
    x_cl = x.to(memory_format=torch.channels_last)
    w_nc = w.transpose(2, 3).contiguous().transpose(2, 3)
    x_big = torch.zeros(b, g * c, shape[0], 2 * shape[1], dtype=torch.bfloat16)
    x_big[..., ::2] = x
    want = reference.ssdc(*(t.double() for t in (x, w, bias, rw, rb)), dil, g)
    for xv, wv in ((x_cl, w_nc), (x_big[..., ::2], w)):
        assert not xv.is_contiguous()
        y = ops.ssdc(xv, wv, bias, rw, rb, dil, g)
        assert y.dtype == torch.bfloat16 and y.is_contiguous()
        assert rel_err(y, want) <= TOL


def test_autocast_and_float16():
    """Under CPU autocast float32 inputs run the bf16 kernel (bf16 out, float32 grads); float16
    keeps the float32 computation and answers in float16."""
    case = (1, 2, 3, (5, 6), (1, 2))
    *inputs, gy = make_bf16(*case)
    leaves = [t.float().requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.ssdc(*leaves, case[4], case[1])
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y, leaves, gy)
    assert all(t.dtype == torch.float32 for t in grads)
    assert rel_err(y, reference.ssdc(*(t.double() for t in inputs), case[4], case[1])) <= TOL
    assert torch.equal(y, ops.ssdc(*inputs, case[4], case[1]))  # the bf16 kernel, not the float32 one
    y16 = ops.ssdc(*(t.half() for t in inputs), case[4], case[1])
    assert y16.dtype == torch.float16


def test_kernel_inside_the_model():
    """A whole RDCNet forward under CPU bf16 autocast on the fused path agrees with the float32
    chain to bf16 accuracy (the kernel runs inside the model, not only in isolation)."""
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
    grid = model.coordinates((48, 40))
    assert rel_err(fused.embeddings - grid, chain.embeddings - grid) < 5e-2
    assert rel_err(fused.probabilities, chain.probabilities) < 1e-2


def test_bad_inputs_raise():
    *inputs, _ = make_bf16(1, 2, 3, (4, 5), (1,))
    x, w, b, rw, rb = inputs
    with pytest.raises(TypeError, match="weight: expected dtype torch.bfloat16"):
        ops.ssdc(x, w.float(), b, rw, rb, 1, 2)
    with pytest.raises(TypeError, match="reduce_bias: expected dtype torch.bfloat16"):
        ops.ssdc(x, w, b, rw, rb.double(), 1, 2)
    with pytest.raises(ValueError, match="weight: expected shape"):
        ops.ssdc(x, w[:, :2], b, rw, rb, 1, 2)
    # The native entry point refuses a dtype it has no kernel for (float16 = code 2) instead of crashing.
    with pytest.raises(ValueError, match="float32, float64 or bfloat16"):
        _C.ssdc_forward_cpu(1, 2, 3, [4, 5], [1], 0.3, 2, 0, 0, 0, 0, 0, 0, 1)


def test_isa_names():
    assert _C.ssdc_cpu_isa() in ("avx512", "avx2", "generic")
    assert _C.ssdc_cpu_isa(3) in ("avx512_bf16", "avx512", "avx2", "generic")


FALLBACK_CASES = [EDGE_CASES[3], EDGE_CASES[5], (1, 1, 33, (3, 40), (1, 2))]


@pytest.mark.parametrize("isa", ["avx512", pytest.param("generic", marks=pytest.mark.slow)])
def test_fallback_without_avx512_bf16(isa, tmp_path):
    """RDCNET_EXT_SSDC_ISA=avx512 (AVX-512F, no BF16) or generic runs the bf16 build whose
    micro-kernels widen bf16 pairs to float32: it meets the reference and agrees with this process's
    kernel (vdpbf16ps where the CPU has it) to float32 summation order and bf16 rounding flips."""
    native = [check_case(case) for case in FALLBACK_CASES]
    torch.save(native, tmp_path / "native.pt")
    code = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_ssdc_bf16 as t
from rdcnet_ext import _C
native = torch.load({str(tmp_path / "native.pt")!r})
worst = 0.0
for case, theirs in zip(t.FALLBACK_CASES, native):
    for a, b in zip(t.check_case(case), theirs):
        worst = max(worst, t.rel_err(a, b))
print(_C.ssdc_cpu_isa(3), worst)
"""
    env = dict(os.environ, RDCNET_EXT_SSDC_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    chosen, worst = res.stdout.split()[-2:]
    assert chosen in (isa, "avx2", "generic")  # narrower where the CPU lacks AVX-512
    assert float(worst) <= 1e-2
