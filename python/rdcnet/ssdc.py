"""How the model computes its shared stacked dilated convolution (sSDC), and which way is chosen.

One result (DESIGN.md, "ssdc"), three ways to compute it:

- ``"chain"``: framework convolutions (cuDNN / oneDNN): one grouped 3x3(x3) conv per dilation,
  LeakyReLU, the dilation-major stack, the grouped 1x1 reduction; autograd stores every
  dilation's activations (about ``2·D`` feature maps of the block's width).
- ``"recompute"``: the same framework convolutions, one dilation at a time: conv → LeakyReLU →
  that dilation's slice of the 1x1 reduction, accumulated, so only one dilation's activations
  exist at a time; backward recomputes them (:class:`RecomputedSSDC`). Memory ≈ one activation,
  time ≈ the chain plus one more forward.
- ``"fused"``: ``rdcnet_ext.ops.ssdc``, one kernel that never writes the activations to memory.

``"auto"`` times the usable ways (the chain, and the fused kernel where this build has one for the
device) at the first call of each kind -- device, dtype, ndim, groups, channels, dilations, batch,
a bucket of the spatial size, forward or forward+backward -- and keeps the fastest, in memory and
in a per-user cache file (:mod:`rdcnet.autotune`), like ``cudnn.benchmark``. ``RDCNET_SSDC_PATH``
forces a way; with tuning off (``RDCNET_AUTOTUNE=0``), under ``torch.compile`` and TorchScript,
the prior :data:`MEASURED_FASTEST` decides. ``"recompute"`` (memory) is asked for explicitly. Every way works under ``torch.autocast``: the
framework convs autocast themselves; ``"recompute"`` and ``"fused"`` cast their inputs to the
autocast dtype first, so each sees one dtype (the fused op computes in float32 where it has no
kernel for that dtype, e.g. float16 on CPU).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .autotune import Autotuner, tuning_enabled

__all__ = ["SSDC_PATHS", "MEASURED_FASTEST", "choose_ssdc_path", "requested_path", "apply_ssdc", "ssdc_chain", "RecomputedSSDC",
           "fused_ssdc_available", "SSDC_TUNER", "tune_ssdc_path", "auto_ssdc_path"]

SSDC_PATHS = ("chain", "recompute", "fused")

# The fastest way measured for (device type, dtype); anything not listed uses the chain, which every
# device and dtype has. Change an entry only with a side-by-side measurement (benchmarks/README.md).
MEASURED_FASTEST = {
    # NVIDIA H200, 2026-11-29, paper block B8 x 128²: fused forward 83.5 ms vs chain 7.0 ms (float32),
    # 92.1 vs 4.7 ms (bfloat16); forward+backward 85-160x slower than the chain.
    ("cuda", torch.float32): "chain",
    ("cuda", torch.bfloat16): "chain",
    ("cuda", torch.float16): "chain",  # same kernel as bfloat16; not measured separately
    # 2-core Xeon, 2026-11-25: fused 0.75x the chain's speed in a paper-config 2D training step and
    # 0.76x in 3D inference (benchmarks/NOTES.md); recompute costs one more forward than the chain.
    ("cpu", torch.float32): "chain",
    ("cpu", torch.float64): "chain",
}


@functools.lru_cache(maxsize=None)
def fused_ssdc_available(device_type: str) -> bool:
    """Whether ``rdcnet_ext.ops.ssdc`` has kernels for tensors on ``device_type`` in this build."""
    try:
        import rdcnet_ext
        from rdcnet_ext import ops
    except ImportError:
        return False
    if not hasattr(ops, "ssdc"):
        return False
    if device_type == "cuda":
        return bool(getattr(rdcnet_ext, "has_cuda", False))
    return device_type == "cpu"


def choose_ssdc_path(requested: str, device_type: str, dtype: torch.dtype) -> str:
    """The way to compute the sSDC for inputs of ``device_type`` and (compute) ``dtype``.

    ``requested`` is ``"auto"`` (the measured-fastest way, never the fused kernel where this build
    has none) or one of :data:`SSDC_PATHS`, returned as is except that ``"fused"`` raises where
    the extension has no kernel for the device at all (a dtype without a kernel is upcast by the op).
    """
    if requested == "auto":
        path = MEASURED_FASTEST.get((device_type, dtype), "chain")
        return path if path != "fused" or fused_ssdc_available(device_type) else "chain"
    requested = requested_path(requested)
    if requested == "fused" and not fused_ssdc_available(device_type):
        raise RuntimeError(f"sSDC path 'fused': rdcnet_ext provides no fused sSDC for {device_type} tensors in this "
                           f"build; use 'recompute' to save memory with framework convolutions")
    return requested


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``x``'s convolutions compute in: the autocast dtype where autocast is on for its
    device (autocast leaves float64 alone), else ``x.dtype``."""
    device_type = x.device.type
    if (x.dtype != torch.float64 and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def ssdc_chain(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope):
    """The sSDC as a chain of framework ops (the executable specification, ``rdcnet_ext.reference``)."""
    from rdcnet_ext import reference

    return reference.ssdc(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope)


def _reduce_slices(reduce_weight: torch.Tensor, n_dilations: int):
    """``P_d`` for every dilation: the grouped 1x1 weights (G·C, C, 1[, 1, 1]) acting on dilation d
    (the reduction's input channels are dilation-major within each group)."""
    gc, dc = reduce_weight.shape[:2]
    c = dc // n_dilations
    ones = reduce_weight.shape[2:]
    per = reduce_weight.reshape(gc, n_dilations, c, *ones)
    return [per[:, i].contiguous() for i in range(n_dilations)]


def _accumulate(total, part):
    return part if total is None or part is None else total.add_(part)


class RecomputedSSDC(torch.autograd.Function):
    """The sSDC one dilation at a time over framework convolutions; backward recomputes each
    dilation's activations instead of storing them. Inputs share one dtype (see :func:`apply_ssdc`);
    runs with autocast off so that forward and recomputation are bit-identical."""

    @staticmethod
    def forward(ctx, x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope):
        ndim = x.dim() - 2
        conv = F.conv2d if ndim == 2 else F.conv3d
        with torch.autocast(x.device.type, enabled=False):
            y = None
            for d, p in zip(dilations, _reduce_slices(reduce_weight, len(dilations))):
                a = F.leaky_relu(conv(x, weight, bias, padding=d, dilation=d, groups=groups), negative_slope, inplace=True)
                part = conv(a, p, reduce_bias if y is None else None, groups=groups)
                del a  # before the next dilation's activation is made
                y = part if y is None else y.add_(part)
        ctx.save_for_backward(x, weight, bias, reduce_weight)
        ctx.geometry = (tuple(int(d) for d in dilations), int(groups), float(negative_slope))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight, bias, reduce_weight = ctx.saved_tensors
        dilations, groups, slope = ctx.geometry
        need_x, need_w, need_b, need_p, need_pb = ctx.needs_input_grad[:5]
        ndim = x.dim() - 2
        conv = F.conv2d if ndim == 2 else F.conv3d
        ones, zeros = [1] * ndim, [0] * ndim
        grad_y = grad_y.contiguous()
        gx = gw = gb = None
        gp = []
        with torch.autocast(x.device.type, enabled=False):
            slices = _reduce_slices(reduce_weight, len(dilations))
            for d, p in zip(dilations, slices):
                z = conv(x, weight, bias, padding=d, dilation=d, groups=groups)
                a = F.leaky_relu(z, slope)
                ga, gp_d, _ = torch.ops.aten.convolution_backward(
                    grad_y, a, p, None, ones, zeros, ones, False, zeros, groups, [True, need_p, False])
                del a
                gz = torch.ops.aten.leaky_relu_backward(ga, z, slope, False)
                del ga, z
                gx_d, gw_d, gb_d = torch.ops.aten.convolution_backward(
                    gz, x, weight, [weight.shape[0]], ones, [d] * ndim, [d] * ndim, False, zeros, groups,
                    [need_x, need_w, need_b])
                del gz
                gx, gw, gb = _accumulate(gx, gx_d), _accumulate(gw, gw_d), _accumulate(gb, gb_d)
                gp.append(gp_d)
        # (G·C, C) per dilation → (G·C, D·C): dilation-major within each group, as the layout says.
        grad_p = torch.stack(gp, dim=1).reshape(reduce_weight.shape) if need_p else None
        grad_pb = grad_y.sum(dim=[0] + list(range(2, grad_y.dim()))) if need_pb else None
        return gx, gw, gb, grad_p, grad_pb, None, None, None


def apply_ssdc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reduce_weight: torch.Tensor,
               reduce_bias: torch.Tensor, dilations: Sequence[int], groups: int, negative_slope: float,
               path: str = "chain") -> torch.Tensor:
    """The sSDC of ``x`` (layouts of ``rdcnet_ext.ops.ssdc``) computed the way ``path`` says
    (one of :data:`SSDC_PATHS`; use :func:`choose_ssdc_path` to resolve ``"auto"``)."""
    dilations = [int(d) for d in dilations]
    if path == "chain":
        return ssdc_chain(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope)
    if path == "fused":
        from rdcnet_ext import ops

        return ops.ssdc(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope)
    if path == "recompute":
        dtype = autocast_dtype(x)
        args = [t.to(dtype) for t in (x, weight, bias, reduce_weight, reduce_bias)]
        return RecomputedSSDC.apply(*args, dilations, groups, negative_slope)
    raise ValueError(f"path: expected one of {', '.join(map(repr, SSDC_PATHS))}, got {path!r}")


def requested_path(path: Optional[str], fused: Optional[bool] = None) -> str:
    """The validated request: ``path`` (default ``"auto"``), or the older switch ``fused=True/False``
    as ``"fused"`` / ``"chain"``. Both given and disagreeing is an error."""
    if fused is not None:
        alias = "fused" if fused else "chain"
        if path not in (None, "auto", alias):
            raise ValueError(f"fused={fused!r} contradicts ssdc_path={path!r}; pass only ssdc_path")
        path = alias
    path = "auto" if path is None else path
    if path != "auto" and path not in SSDC_PATHS:
        raise ValueError(f"ssdc_path: expected 'auto' or one of {', '.join(map(repr, SSDC_PATHS))}, got {path!r}")
    return path


# ---- "auto": the fastest way for each kind of call, measured --------------------------------------

SSDC_TUNER = Autotuner("ssdc-paths")


def _bucket(n: int) -> int:
    """Spatial sizes within a factor of about 1.4 share a measurement (the nearest power of two)."""
    return 1 << max(0, round(math.log2(max(int(n), 1))))


#: Coarse voxels per batch item the tuner times at most: a larger map is timed on a proxy of about
#: this size (its largest axes halved), so tuning a big 3D volume costs neither the time nor the
#: memory of running the slower path on all of it (the chain's peak on the organoid model's 32³ map
#: was 1.15 GB against the fused kernel's 0.72 GB); the paths' ratio has settled at this size.
TUNING_MAX_VOXELS = 1 << 14


def _tuning_shape(spatial: Sequence[int]) -> tuple:
    """The map the candidates are timed on: ``spatial`` with its largest axes halved (down to 8)
    until it holds at most :data:`TUNING_MAX_VOXELS` voxels."""
    shape = [int(n) for n in spatial]
    while math.prod(shape) > TUNING_MAX_VOXELS and max(shape) > 8:
        a = shape.index(max(shape))
        shape[a] = max(8, -(-shape[a] // 2))
    return tuple(shape)


def _tuning_key(device: torch.device, dtype: torch.dtype, groups: int, channels: int, dilations, batch: int,
                spatial, needs_grad: bool) -> str:
    return (f"{device.type} {str(dtype).replace('torch.', '')} {len(spatial)}d g{groups} c{channels} "
            f"d{','.join(map(str, dilations))} b{batch} s{'x'.join(str(_bucket(n)) for n in spatial)} "
            f"{'fwd+bwd' if needs_grad else 'fwd'}")


def tune_ssdc_path(device, dtype: torch.dtype, groups: int, channels: int, dilations: Sequence[int], batch: int,
                   spatial: Sequence[int], needs_grad: bool, negative_slope: float = 0.3,
                   input_dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """The fastest usable way for an sSDC call of this kind, measured on random tensors of its
    shape the first time (see the module's documentation); None when tuning is off.

    ``dtype`` is the compute dtype; ``input_dtype`` that of the input tensor when it differs (a
    float32 input under bfloat16 autocast: the candidates then run under the same autocast)."""
    device = torch.device(device)
    candidates_available = ["chain"] + (["fused"] if fused_ssdc_available(device.type) else [])
    key = _tuning_key(device, dtype, groups, channels, dilations, batch, spatial, needs_grad)
    from .machine import machine_key

    machine = machine_key(device.type)
    if len(candidates_available) == 1:
        return candidates_available[0]
    known = SSDC_TUNER.cached(key, machine)
    if known in candidates_available or not tuning_enabled():
        return known
    input_dtype = input_dtype or dtype
    gen = torch.Generator(device="cpu").manual_seed(0)  # no draw from the global generators: runs stay seeded

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=input_dtype)

    ndim = len(spatial)
    width, taps = groups * channels, 3 ** ndim
    x = rand(batch, width, *_tuning_shape(spatial))
    params = [rand(width, channels, *(3,) * ndim, scale=1 / math.sqrt(channels * taps)), rand(width, scale=0.1),
              rand(width, len(dilations) * channels, *(1,) * ndim, scale=1 / math.sqrt(len(dilations) * channels)),
              rand(width, scale=0.1)]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != input_dtype)

    def runner(path):
        def run():
            with autocast:
                if not needs_grad:
                    with torch.no_grad():
                        apply_ssdc(x, *params, dilations, groups, negative_slope, path)
                    return
                with torch.enable_grad():
                    leaves = [t.detach().requires_grad_() for t in (x, *params)]
                    y = apply_ssdc(*leaves, dilations, groups, negative_slope, path)
                y.float().sum().backward()
        return run

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return SSDC_TUNER.choose(key, machine, {p: runner(p) for p in candidates_available}, synchronize=sync)


def _tracing() -> bool:
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool((compiling is not None and compiling()) or torch.jit.is_tracing() or torch.jit.is_scripting())


def auto_ssdc_path(device, dtype: torch.dtype, groups: int, channels: int, dilations: Sequence[int], batch: int,
                   spatial: Sequence[int], needs_grad: bool, negative_slope: float = 0.3,
                   input_dtype: Optional[torch.dtype] = None) -> str:
    """The way ``"auto"`` computes an sSDC call of this kind (arguments as :func:`tune_ssdc_path`):
    ``RDCNET_SSDC_PATH`` when set, else the measured fastest, else the prior."""
    device = torch.device(device)
    forced = os.environ.get("RDCNET_SSDC_PATH")
    if forced:
        if forced not in SSDC_PATHS:
            raise ValueError(f"RDCNET_SSDC_PATH: expected one of {', '.join(map(repr, SSDC_PATHS))}, got {forced!r}")
        return choose_ssdc_path(forced, device.type, dtype)
    prior = choose_ssdc_path("auto", device.type, dtype)
    if _tracing():
        return prior
    tuned = tune_ssdc_path(device, dtype, groups, channels, dilations, batch, spatial, needs_grad, negative_slope,
                           input_dtype)
    return tuned or prior
