"""``torch.library`` registration of the ops (namespace ``rdcnet_ext``).

Each op is a custom op whose real implementation is in :mod:`rdcnet_ext._launch` and whose fake
implementation gives output shapes and dtypes, so ``torch.compile`` traces through calls to them
without graph breaks. ``find_peaks`` has a data-dependent output size (an unbacked symbol).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _launch

_NS = "rdcnet_ext"


def call(name: str, *args):
    """Runs op `name`: through the dispatcher (``torch.ops.rdcnet_ext``) while tracing or on
    tensor subclasses, so ``torch.compile``/``make_fx`` see the custom op; straight to the
    launcher for plain eager tensors, skipping the dispatcher's per-call overhead (and its
    one-time ~1 s warm-up on the first call of a process)."""
    if torch.compiler.is_compiling() or any(
        isinstance(a, torch.Tensor) and type(a) is not torch.Tensor for a in args
    ):
        return getattr(torch.ops.rdcnet_ext, name)(*args)
    return getattr(_launch, name)(*args)


@torch.library.custom_op(f"{_NS}::hough_votes", mutates_args=())
def hough_votes(embeddings: torch.Tensor, mask: torch.Tensor, spacing: list[float]) -> torch.Tensor:
    return _launch.hough_votes(embeddings, mask, spacing)


@hough_votes.register_fake
def _(embeddings, mask, spacing):
    return mask.new_empty(mask.shape, dtype=torch.int32)


@torch.library.custom_op(f"{_NS}::find_peaks", mutates_args=())
def find_peaks(
    votes: torch.Tensor, min_distance: float, min_votes: int, spacing: list[float], smooth_radius: int
) -> torch.Tensor:
    return _launch.find_peaks(votes, min_distance, min_votes, spacing, smooth_radius)


@find_peaks.register_fake
def _(votes, min_distance, min_votes, spacing, smooth_radius):
    count = torch.library.get_ctx().new_dynamic_size()
    return votes.new_empty((count, votes.dim()), dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::assign_to_centres", mutates_args=())
def assign_to_centres(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    centres: torch.Tensor,
    spacing: list[float],
    max_distance: Optional[float],
    origin: Optional[list[int]] = None,
) -> torch.Tensor:
    return _launch.assign_to_centres(embeddings, mask, centres, spacing, max_distance, origin)


@assign_to_centres.register_fake
def _(embeddings, mask, centres, spacing, max_distance, origin=None):
    return mask.new_empty(mask.shape, dtype=torch.int32)


@torch.library.custom_op(f"{_NS}::label_opening", mutates_args=())
def label_opening(labels: torch.Tensor, radius: float, spacing: list[float]) -> torch.Tensor:
    return _launch.label_opening(labels, radius, spacing)


@label_opening.register_fake
def _(labels, radius, spacing):
    return torch.empty_like(labels)


@torch.library.custom_op(f"{_NS}::embeddings_to_labels", mutates_args=())
def embeddings_to_labels(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    min_distance: float,
    spacing: list[float],
    min_votes: int,
    smooth_radius: int,
    max_distance: Optional[float],
    opening_radius: Optional[float],
) -> torch.Tensor:
    return _launch.embeddings_to_labels(
        embeddings, mask, min_distance, spacing, min_votes, smooth_radius, max_distance, opening_radius
    )


@embeddings_to_labels.register_fake
def _(embeddings, mask, min_distance, spacing, min_votes, smooth_radius, max_distance, opening_radius):
    return mask.new_empty(mask.shape, dtype=torch.int32)


# ---- sSDC: differentiable; backward is its own custom op so that torch.compile traces both. -------


@torch.library.custom_op(f"{_NS}::ssdc", mutates_args=())
def ssdc(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    reduce_weight: torch.Tensor,
    reduce_bias: torch.Tensor,
    dilations: list[int],
    groups: int,
    negative_slope: float,
) -> torch.Tensor:
    return _launch.ssdc_forward(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope)


@ssdc.register_fake
def _(x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_NS}::ssdc_backward", mutates_args=())
def ssdc_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    reduce_weight: torch.Tensor,
    dilations: list[int],
    groups: int,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch.ssdc_backward(grad, x, weight, bias, reduce_weight, dilations, groups, negative_slope)


@ssdc_backward.register_fake
def _(grad, x, weight, bias, reduce_weight, dilations, groups, negative_slope):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight),
        torch.empty_like(bias),
        torch.empty_like(reduce_weight),
        torch.empty_like(bias),
    )


def _ssdc_setup_context(ctx, inputs, output):
    x, weight, bias, reduce_weight, reduce_bias, dilations, groups, negative_slope = inputs
    ctx.save_for_backward(x, weight, bias, reduce_weight)
    ctx.dilations, ctx.groups, ctx.negative_slope = dilations, groups, negative_slope


def _ssdc_backward(ctx, grad):
    x, weight, bias, reduce_weight = ctx.saved_tensors
    gx, gw, gb, grw, grb = ssdc_backward(
        grad.contiguous(), x, weight, bias, reduce_weight, ctx.dilations, ctx.groups, ctx.negative_slope
    )
    return gx, gw, gb, grw, grb, None, None, None


ssdc.register_autograd(_ssdc_backward, setup_context=_ssdc_setup_context)
