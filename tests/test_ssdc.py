"""The fused sSDC op (rdcnet_ext.ops.ssdc) against its reference, the unfused PyTorch chain.

Forward and every gradient on random inputs (relative error <= 1e-5 in float32), gradcheck in
float64 on CPU, torch.library registration (opcheck, torch.compile), argument errors, and CUDA
(float32/float16/bfloat16 against a float64 reference; skipped without a GPU).
"""

from __future__ import annotations

import pytest
import torch

import rdcnet_ext
from rdcnet_ext import ops, reference

CUDA_OK = torch.cuda.is_available() and rdcnet_ext.has_cuda

# (batch, groups, channels per group, spatial shape, dilations)
CASES = [
    (1, 1, 1, (5, 6), (1,)),
    (2, 2, 3, (7, 9), (1, 2)),
    (2, 1, 4, (9, 11), (1, 2, 4, 8)),  # d = 8 nearly spans the image
    (1, 3, 2, (4, 5), (3, 7, 20)),  # dilations larger than the image
    (1, 2, 5, (3, 37), (1, 5, 40)),  # d > height, < width, > width
    (1, 1, 9, (130, 3), (2,)),  # more than one row tile; width < dilation
    (2, 2, 3, (5, 4, 6), (1, 2, 4, 8)),
    (1, 1, 4, (3, 5, 150), (1, 2)),  # 3D, two row tiles
    (1, 2, 3, (4, 5, 7), (9,)),
]
IDS = [f"b{b}g{g}c{c}-{'x'.join(map(str, s))}-d{'_'.join(map(str, d))}" for b, g, c, s, d in CASES]


def make(batch, groups, channels, shape, dilations, dtype=torch.float32, device="cpu", seed=0):
    """Seeded (x, weight, bias, reduce_weight, reduce_bias), scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    gc, d = groups * channels, len(dilations)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    return [
        randn(batch, gc, *shape),
        randn(gc, channels, *(3,) * ndim, scale=(channels * 3**ndim) ** -0.5),
        randn(gc, scale=0.5),
        randn(gc, d * channels, *(1,) * ndim, scale=(d * channels) ** -0.5),
        randn(gc, scale=0.5),
    ]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def forward_and_grads(fn, inputs, dilations, groups, slope, grad_out=None):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves, dilations, groups, slope)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grad_out = grad_out.to(dtype=y.dtype, device=y.device)
    grads = torch.autograd.grad(y, leaves, grad_out)
    return y.detach(), grads, grad_out


NAMES = ["y", "grad x", "grad weight", "grad bias", "grad reduce_weight", "grad reduce_bias"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["f32", "f64"])
def test_matches_reference(case, dtype, tol):
    b, g, c, shape, dil = case
    inputs = make(b, g, c, shape, dil, dtype)
    y, grads, gy = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3)
    y_ref, grads_ref, _ = forward_and_grads(reference.ssdc, inputs, dil, g, 0.3, gy)
    assert y.shape == inputs[0].shape and y.dtype == dtype
    for name, got, want in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert got.shape == want.shape, name
        assert rel_err(got, want) <= tol, f"{name}: relative error {rel_err(got, want):.2e}"


GRADCHECK_CASES = [
    (2, 2, 2, (4, 5), (1,)),
    (1, 1, 3, (5, 3), (1, 2)),
    (1, 2, 2, (3, 6), (1, 2, 4, 8)),
    (2, 1, 2, (2, 3, 4), (1, 2)),
    (1, 1, 2, (3, 2, 5), (1, 4, 9)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: f"{len(c[3])}d-{'x'.join(map(str, c[3]))}-d{c[4]}")
def test_gradcheck_float64(case):
    b, g, c, shape, dil = case
    inputs = [t.requires_grad_() for t in make(b, g, c, shape, dil, torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: ops.ssdc(*t, dil, g, 0.3), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_negative_slope_and_no_bias():
    b, g, c, shape, dil = 1, 2, 3, (6, 7), (1, 3)
    x, w, _, rw, _ = make(b, g, c, shape, dil, torch.float64)
    for slope in (0.0, 1.0, -0.5, 0.01):
        got = ops.ssdc(x, w, None, rw, None, dil, g, slope)
        want = reference.ssdc(x, w, None, rw, None, dil, g, slope)
        assert rel_err(got, want) <= 1e-12, slope


def test_dilation_int_and_noncontiguous_inputs():
    b, g, c, shape, dil = 2, 2, 3, (6, 7), (2,)
    x, w, bias, rw, rb = make(b, g, c, shape, dil, torch.float64)
    x_cl = x.to(memory_format=torch.channels_last)
    w_nc = w.transpose(2, 3).contiguous().transpose(2, 3)
    got = ops.ssdc(x_cl, w_nc, bias, rw, rb, 2, g)
    assert got.is_contiguous()
    assert rel_err(got, reference.ssdc(x, w, bias, rw, rb, [2], g)) <= 1e-12


def test_thread_counts_agree():
    b, g, c, shape, dil = 3, 2, 4, (9, 10), (1, 2)
    inputs = make(b, g, c, shape, dil, torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3)
        torch.set_num_threads(2)
        two = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3, one[2])
    finally:
        torch.set_num_threads(old)
    for a, b_ in zip((one[0], *one[1]), (two[0], *two[1])):
        assert rel_err(a, b_) <= 1e-13


def test_empty_batch():
    x, w, bias, rw, rb = make(1, 2, 3, (4, 5), (1, 2), torch.float64)
    x = x[:0].requires_grad_()
    y = ops.ssdc(x, w, bias, rw, rb, (1, 2), 2)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_opcheck():
    inputs = make(1, 2, 2, (4, 5), (1, 2), torch.float64)
    inputs = [t.requires_grad_() for t in inputs]
    torch.library.opcheck(torch.ops.rdcnet_ext.ssdc.default, (*inputs, [1, 2], 2, 0.3))


@pytest.mark.parametrize("ndim", [2, 3])
def test_torch_compile_forward_and_backward(ndim):
    shape = (5, 6) if ndim == 2 else (3, 4, 5)
    dil = (1, 2)
    inputs = make(2, 2, 2, shape, dil, torch.float32)

    def block(x, w, b, rw, rb):
        return torch.nn.functional.leaky_relu(ops.ssdc(x, w, b, rw, rb, dil, 2, 0.3), 0.3).square().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in inputs]
    loss = compiled(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in inputs]

    def ref_block(x, w, b, rw, rb):
        return torch.nn.functional.leaky_relu(reference.ssdc(x, w, b, rw, rb, dil, 2, 0.3), 0.3).square().sum()

    ref_loss = ref_block(*ref_leaves)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    assert rel_err(loss.detach(), ref_loss.detach()) <= 1e-5
    for name, a, b in zip(NAMES[1:], grads, ref_grads):
        assert rel_err(a, b) <= 1e-5, name


# ---- errors ---------------------------------------------------------------------------------------


def _good():
    return make(1, 2, 3, (5, 6), (1, 2), torch.float32)


@pytest.mark.parametrize(
    "mutate,exc,name",
    [
        (lambda a: a.update(x=a["x"][0]), ValueError, "x"),
        (lambda a: a.update(x=a["x"].long()), TypeError, "x"),
        (lambda a: a.update(x=a["x"].numpy()), TypeError, "x"),
        (lambda a: a.update(x=a["x"].to(torch.complex64)), TypeError, "x"),  # (half precision: computed in float32)
        (lambda a: a.update(groups=4), ValueError, "x"),
        (lambda a: a.update(groups=0), ValueError, "groups"),
        (lambda a: a.update(groups=True), TypeError, "groups"),
        (lambda a: a.update(groups=2.0), TypeError, "groups"),
        (lambda a: a.update(weight=a["weight"][:, :, :2]), ValueError, "weight"),
        (lambda a: a.update(weight=a["weight"][:3]), ValueError, "weight"),
        (lambda a: a.update(weight=a["weight"].double()), TypeError, "weight"),
        (lambda a: a.update(weight=a["weight"].tolist()), TypeError, "weight"),
        (lambda a: a.update(bias=a["bias"][:4]), ValueError, "bias"),
        (lambda a: a.update(reduce_weight=a["reduce_weight"][:, :3]), ValueError, "reduce_weight"),
        (lambda a: a.update(reduce_bias=a["reduce_bias"][None]), ValueError, "reduce_bias"),
        (lambda a: a.update(dilations=[]), ValueError, "dilations"),
        (lambda a: a.update(dilations=[1, 0]), ValueError, "dilations"),
        (lambda a: a.update(dilations=[1, 2.0]), TypeError, "dilations"),
        (lambda a: a.update(dilations="12"), TypeError, "dilations"),
        (lambda a: a.update(dilations=[1] * 17), ValueError, "dilations"),
        (lambda a: a.update(dilations=[1, 2, 4]), ValueError, "reduce_weight"),
        (lambda a: a.update(negative_slope=float("nan")), ValueError, "negative_slope"),
        (lambda a: a.update(negative_slope="0.3"), TypeError, "negative_slope"),
    ],
)
def test_bad_arguments(mutate, exc, name):
    x, w, b, rw, rb = _good()
    args = dict(x=x, weight=w, bias=b, reduce_weight=rw, reduce_bias=rb, dilations=[1, 2], groups=2,
                negative_slope=0.3)
    mutate(args)
    with pytest.raises(exc, match=rf"^{name}: expected"):
        ops.ssdc(**args)


def test_cuda_tensor_without_cuda_build_or_device_mismatch():
    x, w, b, rw, rb = _good()
    if not torch.cuda.is_available():
        meta = torch.empty_like(x, device="meta")
        with pytest.raises(ValueError, match="^x: expected a CPU or CUDA tensor"):
            ops.ssdc(meta, w.to("meta"), b.to("meta"), rw.to("meta"), rb.to("meta"), [1, 2], 2)
        with pytest.raises(ValueError, match="^weight: expected a tensor on the same device as x"):
            ops.ssdc(x, w.to("meta"), b, rw, rb, [1, 2], 2)
        return
    with pytest.raises(ValueError, match="^weight: expected a tensor on the same device as x"):
        ops.ssdc(x.cuda(), w, b, rw, rb, [1, 2], 2)


# ---- CUDA -----------------------------------------------------------------------------------------

CUDA_CASES = [
    (2, 2, 3, (7, 9), (1, 2)),
    (1, 8, 16, (33, 40), (1, 2, 4, 8)),
    (2, 2, 3, (5, 4, 6), (1, 2, 4, 8)),
    (1, 2, 8, (6, 9, 70), (1, 3, 20)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: "x".join(map(str, c[3])) + f"-g{c[1]}c{c[2]}")
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)],
    ids=["f32", "f64", "f16", "bf16"],
)
def test_cuda_matches_float64_reference(case, dtype, tol):
    b, g, c, shape, dil = case
    inputs = make(b, g, c, shape, dil, dtype, device="cuda")
    y, grads, gy = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3)
    ref_inputs = [t.double().cpu() for t in inputs]
    y_ref, grads_ref, _ = forward_and_grads(reference.ssdc, ref_inputs, dil, g, 0.3, gy.double().cpu())
    assert y.dtype == dtype and y.device.type == "cuda"
    for name, got, want in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == dtype, name
        assert rel_err(got.cpu(), want) <= tol, f"{name}: relative error {rel_err(got.cpu(), want):.2e}"


@pytest.mark.cuda
def test_cuda_compile_and_stream():
    inputs = [t.requires_grad_() for t in make(2, 2, 4, (9, 10), (1, 2), torch.float32, device="cuda")]
    compiled = torch.compile(lambda *t: ops.ssdc(*t, (1, 2), 2).sum(), fullgraph=True, backend="aot_eager")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        loss = compiled(*inputs)
        loss.backward()
    torch.cuda.synchronize()
    ref = reference.ssdc(*[t.detach().double().cpu() for t in inputs], (1, 2), 2).sum()
    assert abs(float(loss) - float(ref)) <= 1e-4 * abs(float(ref)) + 1e-4


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_narrower_cpu_variants(isa, tmp_path):
    """The AVX2 and baseline builds of the CPU kernels (forced with RDCNET_EXT_SSDC_ISA) agree too."""
    import os
    import subprocess
    import sys

    code = f"""
import sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_ssdc as t
from rdcnet_ext import _C
for case in (t.CASES[2], t.CASES[6]):
    t.test_matches_reference(case, torch.float32, 1e-5)
print(_C.ssdc_cpu_isa())
"""
    env = dict(os.environ, RDCNET_EXT_SSDC_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] in (isa, "generic")  # generic where the CPU lacks AVX2


# ---- choice of the CUDA kernel (pure Python: runs without a GPU) -----------------------------------


@pytest.mark.parametrize("value,expected", [(None, "simt"), ("", "simt"), ("simt", "simt"), (" TensorCore ", "tensorcore")])
def test_cuda_kernel_variable(value, expected, monkeypatch):
    from rdcnet_ext import _launch

    if value is None:
        monkeypatch.delenv(_launch.SSDC_KERNEL_ENV, raising=False)
    else:
        monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, value)
    assert _launch.ssdc_kernel_request() == expected


def test_cuda_kernel_variable_rejects_other_values(monkeypatch):
    from rdcnet_ext import _launch

    monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, "wmma")
    with pytest.raises(ValueError, match=r"RDCNET_EXT_SSDC_CUDA_KERNEL: expected one of simt, tensorcore .*'wmma'"):
        _launch.ssdc_kernel_request()


@pytest.mark.parametrize("dtype,allow_tf32,ok", [
    (torch.float16, False, True), (torch.bfloat16, False, True), (torch.float32, True, True),
    (torch.float32, False, False), (torch.float64, True, False),
])
def test_tensorcore_dtype_policy(dtype, allow_tf32, ok):
    from rdcnet_ext import _launch

    assert _launch.ssdc_tensorcore_dtype_ok(dtype, allow_tf32) is ok


def test_cpu_tensors_never_take_the_cuda_kernels(monkeypatch):
    from rdcnet_ext import _launch

    monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, "tensorcore")
    x = torch.zeros(1, 16, 4, 4, dtype=torch.float16)
    assert _launch.ssdc_cuda_kernel(x, 16) == "simt"
    inputs = make(1, 1, 16, (4, 5), (1, 2), torch.float64)  # and the CPU op ignores the variable
    assert rel_err(ops.ssdc(*inputs, (1, 2), 1), reference.ssdc(*inputs, (1, 2), 1)) <= 1e-12
