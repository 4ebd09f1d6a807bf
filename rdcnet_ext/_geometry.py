"""Geometry shared by the fast ops and their references.

These small definitions (how a physical window or ball becomes pixel offsets) are part of the
op semantics, so both implementations take them from here rather than re-deriving them; the
kernels never decide window or ball membership themselves.

Exactness: a spacing, distance or radius is taken as the decimal number it is written as (the
shortest decimal that rounds to the float, i.e. Python's ``repr``: ``0.1`` is 1/10, ``0.26`` is
26/100), and every comparison (``floor(min_distance / spacing_a)``, ``sum_a (o_a * spacing_a)**2
<= radius**2``) is decided in exact rational arithmetic on those decimals. Binary floating point
would put points exactly on the surface on either side by rounding (``0.3 / 0.1`` is
``2.9999999999999996``; the offset (3, 4) at spacing 0.1 lies just outside radius 0.5 in binary).
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction
from typing import Optional, Sequence

import torch


def exact(x: float) -> Fraction:
    """The decimal value of ``x`` as written (shortest round-trip ``repr``), as an exact fraction."""
    return Fraction(Decimal(repr(float(x))))


def _floor_ratio(numerator: float, denominator: float) -> int:
    return math.floor(exact(numerator) / exact(denominator))


def peak_window(min_distance: float, spacing: Sequence[float], shape: Optional[Sequence[int]] = None) -> list[int]:
    """Half-size in pixels of the peak window per axis: ``floor(min_distance / spacing_a)``
    (exact), clipped to ``shape[a] - 1`` when ``shape`` is given. The clip never changes the
    result: the window is clipped to the image anyway, and a half-size of ``n_a - 1`` already
    reaches across the whole axis from every pixel.
    """
    window = [_floor_ratio(min_distance, s) for s in spacing]
    if shape is not None:
        window = [min(w, max(n - 1, 0)) for w, n in zip(window, shape)]
    return window


def box_radius(smooth_radius: int, shape: Sequence[int]) -> int:
    """The smoothing box radius, clipped to the longest axis minus one: the box is clipped to the
    image, and a radius of ``n_a - 1`` already covers axis ``a`` from every pixel, so this never
    changes the sums."""
    return min(int(smooth_radius), max(max(shape, default=1) - 1, 0))


def ball_halo(radius: float, spacing: Sequence[float]) -> list[int]:
    """Largest ``|o_a|`` of the ball per axis: ``floor(radius / spacing_a)`` (exact)."""
    return [_floor_ratio(radius, s) for s in spacing]


def ellipsoid_offsets(radius: float, spacing: Sequence[float]) -> torch.Tensor:
    """Integer offsets ``o`` (int32, ``(M, ndim)``, row-major order) of the ball of physical radius
    ``radius``: ``sum_a (o_a * spacing_a)**2 <= radius**2``, decided exactly (module docstring),
    so points on the surface belong to it: (3, 4) at radius 5 pixels, or at spacing 0.1 and
    radius 0.5.

    The origin is always included, so an opening never removes a set that is the whole image.
    Membership only grows as any ``|o_a|`` shrinks, so every row along the last axis is one run
    ``[-w, w]``; ``w`` per row is an integer square root.
    """
    ndim = len(spacing)
    # Scale to integers: sum_a o_a^2 * S_a <= T with S_a = (spacing_a * D)^2, T = (radius * D)^2.
    values = [exact(s) for s in spacing] + [exact(radius)]
    denominator = math.lcm(*(v.denominator for v in values))
    weights = [(v.numerator * (denominator // v.denominator)) ** 2 for v in values]
    scale, threshold = weights[:-1], weights[-1]
    halo = ball_halo(radius, spacing)
    lead_axes = [range(-h, h + 1) for h in halo[:-1]]
    rows, widths = [], []
    for lead in itertools.product(*lead_axes):
        rest = threshold - sum(o * o * s for o, s in zip(lead, scale))
        if rest >= 0:
            rows.append(lead)
            widths.append(math.isqrt(rest // scale[-1]))
    if not rows:  # cannot happen (the origin is inside); keeps the shapes below well defined
        return torch.zeros((1, ndim), dtype=torch.int32)
    width = torch.tensor(widths, dtype=torch.int64)
    counts = 2 * width + 1
    lead_t = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), ndim - 1)
    row_of = torch.repeat_interleave(torch.arange(len(rows)), counts)
    starts = torch.cumsum(counts, 0) - counts
    last = torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts) - torch.repeat_interleave(width, counts)
    return torch.cat([lead_t[row_of], last[:, None]], dim=1).to(torch.int32).contiguous()


# Work allowed for a ball that reaches beyond the image: the cost of the largest ball that fits,
# or 2**30 pixel operations, whichever is larger.
_OPENING_MIN_BUDGET = 2**30


def check_ball_size(radius: float, spacing: list[float], shape, name: str) -> None:
    """Refuses (ValueError naming ``name``) an opening ball that reaches beyond the image and
    costs more than a ball filling it. Called by the launchers, on concrete values, before any work.

    Such a ball cannot be clipped to the image without changing the result. With the outside
    counting as the same label, a pixel keeps its label iff some translate of the ball contains
    it and meets no other label inside the image; translates centred far outside the image cut
    it along arcs of the ball's surface, so the result depends on the ball's curvature up to
    radii of about the image size squared. E.g. random labels on 8x8 opened by radius 9.5 px
    change when the ball is clipped to offsets |o_a| < 8, and on 6x6 by radius 14 px when it
    is clipped to |o_a| <= 10. The cost is the erosion buffer (image plus the ball's halo on
    each side) times the ball's volume.
    """
    halo = ball_halo(radius, spacing)
    if all(h <= max(n - 1, 0) for h, n in zip(halo, shape)) or 0 in shape:
        return
    work = math.prod(n + 2 * h for n, h in zip(shape, halo)) * math.prod(2 * h + 1 for h in halo)
    budget = max(_OPENING_MIN_BUDGET, math.prod(3 * n - 2 for n in shape) * math.prod(2 * n - 1 for n in shape))
    if work > budget:
        fits = min(n * s for n, s in zip(shape, spacing))
        reach = tuple(halo) if max(halo) < 10**15 else "more than 1e15"
        cost = f"{float(work):.1e}" if work < 10**300 else "more than 1e300"
        raise ValueError(
            f"{name}: a ball of radius {radius} at spacing {tuple(spacing)} reaches {reach} pixels per "
            f"axis, beyond the image of shape {tuple(shape)}, and would cost about {cost} pixel "
            f"operations (more than {float(budget):.1e}, a ball filling the image); it cannot be clipped to "
            f"the image without changing the result. Use a radius below {fits:g} (the balls that fit the image)"
        )
