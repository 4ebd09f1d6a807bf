"""Geometry shared by the fast ops and their references.

These small definitions (how a physical window or ball becomes pixel offsets) are part of the
op semantics, so both implementations take them from here rather than re-deriving them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def peak_window(min_distance: float, spacing: Sequence[float]) -> list[int]:
    """Half-size in pixels of the peak window per axis: ``floor(min_distance / spacing_a)``."""
    return [int(math.floor(min_distance / s)) for s in spacing]


def ellipsoid_offsets(radius: float, spacing: Sequence[float]) -> torch.Tensor:
    """Integer offsets ``o`` (int32, ``(M, ndim)``, row-major order) of the ball of physical radius
    ``radius``: ``sum_a (o_a * spacing_a / radius)**2 <= 1``, evaluated in float64.

    The origin is always included, so an opening never removes a set that is the whole image.
    """
    half = [int(math.floor(radius / s)) for s in spacing]
    axes = [torch.arange(-h, h + 1, dtype=torch.float64) for h in half]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spacing))
    scale = torch.tensor([s / radius for s in spacing], dtype=torch.float64)
    inside = ((grid * scale) ** 2).sum(dim=-1) <= 1.0
    return grid[inside].to(torch.int32).contiguous()
