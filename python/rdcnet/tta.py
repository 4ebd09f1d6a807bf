"""Test-time augmentation (TTA): the network on flipped and rotated copies of the image, its
outputs mapped back and averaged.

The transforms act on the last two spatial axes (y, x): the plane of a 2D image and of a 3D stack
(whose z is usually sampled differently). A transform ``(k, flip)`` mirrors x when ``flip`` and
then turns the plane by ``k`` quarter turns (``torch.rot90`` over (y, x)). Quarter turns swap y
and x, so they are used only where the two axes have the same spacing and down-sampling factor;
otherwise the four mirror images only (:func:`transforms`).

Embeddings are absolute positions (offsets + pixel index × spacing). What is mapped back is the
offset, the embedding minus the transformed image's own pixel positions: a vector, turned and
mirrored back as a vector; the mean offset is then added to the original pixel positions. The
class probabilities are averaged as they are. Every function here is TorchScript-compatible, so
the exported pipeline (:mod:`rdcnet.export.pipeline`) averages exactly as :func:`rdcnet.predict`.
"""

from __future__ import annotations

from typing import List, Sequence

import torch

__all__ = ["transforms", "forward", "backward", "backward_offsets"]


def transforms(spacing: Sequence[float], factor: Sequence[int]) -> List[List[int]]:
    """The transforms ``[k, flip]`` (flip 0/1) for a model of this ``spacing`` and ``factor``:
    the 8 symmetries of the square when y and x have the same spacing and factor, else the 4
    mirror images. The identity comes first."""
    square = float(spacing[-1]) == float(spacing[-2]) and int(factor[-1]) == int(factor[-2])
    if square:
        return [[k, flip] for flip in (0, 1) for k in range(4)]
    return [[0, 0], [2, 0], [0, 1], [2, 1]]  # identity, both axes, x, y mirrored


def forward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x`` (..., Y, X) transformed: x mirrored when ``flip``, then ``k`` quarter turns."""
    if flip:
        x = torch.flip(x, [-1])
    if k % 4 != 0:
        x = torch.rot90(x, k, [-2, -1])
    return x


def backward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`forward` on an image (..., Y', X')."""
    if k % 4 != 0:
        x = torch.rot90(x, -k, [-2, -1])
    if flip:
        x = torch.flip(x, [-1])
    return x


def backward_offsets(offsets: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Offsets ``(ndim, Y', X')`` computed on the transformed image, back in the original frame:
    the pixels moved back (:func:`backward`) and the (y, x) components turned and mirrored back.
    A quarter turn maps a displacement (dy, dx) to (-dx, dy); its inverse maps (a, b) to (b, -a)."""
    v = backward(offsets, k, flip)
    ndim = v.shape[0]
    y, x = v[ndim - 2], v[ndim - 1]
    for _ in range(k % 4):
        y, x = x, -y
    if flip:
        x = -x
    return torch.cat([v[: ndim - 2], y[None], x[None]], 0)
