"""Pure-PyTorch references of the post-processing ops: the executable specification.

Every function here has the signature of its fast twin in :mod:`rdcnet_ext.ops` and defines its
result exactly; the fast kernels are tested for equality against these on random inputs. They are
written for clarity first, vectorised enough to run on benchmark-sized images, and work on any
device torch supports. Inputs are torch tensors; arguments are assumed valid (``rdcnet_ext.ops``
validates).

Conventions (see DESIGN.md, "Op semantics"): an image has ``ndim`` (2 or 3) spatial axes,
embeddings are ``(ndim, *spatial)`` in physical units, ``spacing`` is the physical size of a
pixel per axis. Arithmetic on positions is float64.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._geometry import box_radius, ellipsoid_offsets, peak_window

__all__ = [
    "hough_votes",
    "hough_votes_block",
    "find_peaks",
    "assign_to_centres",
    "label_opening",
    "embeddings_to_labels",
    "ssdc",
]


def _spacing(spacing: Optional[Sequence[float]], ndim: int, device) -> torch.Tensor:
    values = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _row_major_strides(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


def _vote_bins(embeddings: torch.Tensor, mask: torch.Tensor, spacing, shape: Sequence[int]) -> torch.Tensor:
    """Flat row-major bins (int64) in an image of ``shape`` of the pixels that vote: masked, with
    finite embeddings whose bin ``round(e_a / spacing_a)`` (float64, half to even) is in the image."""
    ndim = embeddings.shape[0]
    s = _spacing(spacing, ndim, embeddings.device)
    emb = embeddings.reshape(ndim, -1).to(torch.float64)
    bins = torch.round(emb / s[:, None])
    valid = mask.reshape(-1).bool() & torch.isfinite(emb).all(dim=0)
    for a in range(ndim):
        valid &= (bins[a] >= 0) & (bins[a] <= shape[a] - 1)
    bins = torch.where(valid[None], bins, torch.zeros_like(bins)).to(torch.int64)
    flat = torch.zeros_like(bins[0])
    for a, stride in enumerate(_row_major_strides(shape)):
        flat += bins[a] * stride
    return flat[valid]


def hough_votes(
    embeddings: torch.Tensor, mask: torch.Tensor, spacing: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """Vote histogram, int32 of the image's shape.

    Each pixel with ``mask`` true votes for the bin ``round(e_a / spacing_a)`` (float64, round half
    to even); bins outside the image and non-finite embeddings cast no vote.
    """
    shape = embeddings.shape[1:]
    n = int(mask.numel())
    votes = torch.bincount(_vote_bins(embeddings, mask, spacing, shape), minlength=max(n, 1))[:n]
    return votes.to(torch.int32).reshape(shape)


def hough_votes_block(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    spacing: Optional[Sequence[float]] = None,
    shape: Optional[Sequence[int]] = None,
    origin: Optional[Sequence[int]] = None,
    box_shape: Optional[Sequence[int]] = None,
):
    """Votes of a block's pixels in an image of ``shape``: the whole image's vote histogram of
    these pixels, cut into the box of ``box_shape`` (default the block's) at pixel ``origin``
    (dense) and the rest (nonzero bins, flat row-major, ascending, with their counts). Returns
    ``(votes, outside_bins, outside_counts)``."""
    ndim = embeddings.shape[0]
    block = tuple(embeddings.shape[1:]) if box_shape is None else tuple(int(b) for b in box_shape)
    origin = [0] * ndim if origin is None else [int(o) for o in origin]
    shape = [o + b for o, b in zip(origin, block)] if shape is None else [int(n) for n in shape]
    size = 1
    for n in shape:
        size *= n
    whole = torch.bincount(_vote_bins(embeddings, mask, spacing, shape), minlength=size).reshape(shape)
    region = tuple(slice(o, o + b) for o, b in zip(origin, block))
    votes = whole[region].to(torch.int32).clone()
    whole[region] = 0
    outside = torch.nonzero(whole.reshape(-1)).reshape(-1)
    return votes, outside, whole.reshape(-1)[outside]


def _shifted(x: torch.Tensor, offset: Sequence[int], fill) -> torch.Tensor:
    """``out[p] = x[p + offset]`` where ``p + offset`` is inside the image, else ``fill``."""
    out = torch.full_like(x, fill)
    src, dst = [], []
    for o, n in zip(offset, x.shape):
        lo, hi = max(0, -o), min(n, n - o)
        if lo >= hi:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + o, hi + o))
    out[tuple(dst)] = x[tuple(src)]
    return out


def box_sum(votes: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over the box of ``+-radius`` pixels per axis, clipped to the image, in int64."""
    score = votes.to(torch.int64)
    if radius == 0:
        return score
    for axis in range(score.ndim):
        acc = torch.zeros_like(score)
        for o in range(-radius, radius + 1):
            offset = [0] * score.ndim
            offset[axis] = o
            acc += _shifted(score, offset, 0)
        score = acc
    return score


def find_peaks(
    votes: torch.Tensor,
    min_distance: float,
    min_votes: int = 1,
    spacing: Optional[Sequence[float]] = None,
    smooth_radius: int = 0,
) -> torch.Tensor:
    """Centres of the vote histogram, int64 ``(K, ndim)`` in row-major order.

    The score ``s`` is the sum of votes over a box of ``+-smooth_radius`` pixels (clipped to the
    image). With window half-size ``r_a = floor(min_distance / spacing_a)``, decided exactly on
    the decimal values (:func:`rdcnet_ext._geometry.peak_window`: 0.3 / 0.1 is 3), pixel ``p``
    is a peak iff ``s[p] >= min_votes`` and every other ``q`` in its window (clipped to the
    image) has ``s[q] < s[p]``, or ``s[q] == s[p]`` and ``q`` after ``p`` in row-major order.
    Windows and boxes wider than the image are the whole image, so they are clipped first.
    """
    ndim = votes.ndim
    spacing = [1.0] * ndim if spacing is None else [float(x) for x in spacing]
    window = peak_window(min_distance, spacing, votes.shape)
    score = box_sum(votes, box_radius(smooth_radius, votes.shape))
    n = score.numel()
    # One int64 key orders pixels by (score, earlier in row-major order); p is a peak iff it holds
    # the largest key in its window. The window maximum of keys is separable over axes.
    index = torch.arange(n, device=votes.device, dtype=torch.int64).reshape(score.shape)
    key = score * n + (n - 1 - index)
    lowest = torch.iinfo(torch.int64).min
    window_max = key
    for axis in range(ndim):
        acc = window_max.clone()
        for o in range(-window[axis], window[axis] + 1):
            if o == 0:
                continue
            offset = [0] * ndim
            offset[axis] = o
            acc = torch.maximum(acc, _shifted(window_max, offset, lowest))
        window_max = acc
    is_peak = (key == window_max) & (score >= min_votes)
    return torch.nonzero(is_peak).to(torch.int64).reshape(-1, ndim)


def assign_to_centres(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    centres: torch.Tensor,
    spacing: Optional[Sequence[float]] = None,
    max_distance: Optional[float] = None,
    origin: Optional[Sequence[int]] = None,
    chunk: int = 1 << 16,
) -> torch.Tensor:
    """Nearest-centre labels, int32 of the image's shape.

    ``origin`` (the block's first pixel in a larger image, whose pixel indices ``centres`` then
    are) changes nothing here: a pixel's label depends only on its embedding, already in the
    larger image's physical frame. It matters to the op's validation and search grid only.

    A masked pixel with finite embedding ``e`` gets ``k + 1`` for the centre minimising
    ``d2 = sum_a (e_a - centres[k, a] * spacing_a)**2`` (float64, summed over axes in order; ties
    to the lowest ``k``), or 0 if ``max_distance`` is given and ``d2 > max_distance**2``.
    Background, non-finite embeddings and an empty ``centres`` give 0.
    """
    ndim = embeddings.shape[0]
    shape = embeddings.shape[1:]
    s = _spacing(spacing, ndim, embeddings.device)
    emb = embeddings.reshape(ndim, -1).to(torch.float64)
    labels = torch.zeros(emb.shape[1], dtype=torch.int32, device=embeddings.device)
    if centres.shape[0] == 0:
        return labels.reshape(shape)
    positions = centres.to(torch.float64) * s  # (K, ndim)
    todo = torch.nonzero(mask.reshape(-1).bool() & torch.isfinite(emb).all(dim=0)).flatten()
    for start in range(0, todo.numel(), chunk):
        idx = todo[start : start + chunk]
        d2 = None
        for a in range(ndim):
            diff = emb[a, idx][:, None] - positions[None, :, a]
            d2 = diff * diff if d2 is None else d2 + diff * diff
        best, k = torch.min(d2, dim=1)  # ties: first (lowest) k
        lab = (k + 1).to(torch.int32)
        if max_distance is not None:
            lab = torch.where(best <= float(max_distance) * float(max_distance), lab, torch.zeros_like(lab))
        labels[idx] = lab
    return labels.reshape(shape)


def label_opening(
    labels: torch.Tensor, radius: float, spacing: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """Label-wise morphological opening by the ellipsoid of physical ``radius``.

    A pixel keeps its label ``l != 0`` iff it lies in the opening of ``{labels == l}`` by the
    ball :func:`rdcnet_ext._geometry.ellipsoid_offsets` (offsets ``o`` with
    ``sum_a (o_a * spacing_a)**2 <= radius**2``, decided exactly on the decimal values, so points
    on the surface belong to it); otherwise it becomes 0. Pixels outside
    the image count as label ``l`` too (the set is padded with itself), so objects touching the
    border are not shaved. Equivalently, with ``E(q)`` the common label of the in-image pixels of
    the ball around ``q`` (``q`` may lie outside the image; 0 if they differ or are background):
    ``p`` keeps ``l`` iff ``E(p + o) == l`` for some offset ``o`` of the ball. A ball larger
    than the image is not clipped: translates centred outside cut the image along the ball's
    curved surface, so the result depends on all of it (:func:`rdcnet_ext.ops.label_opening`
    refuses balls that would cost more than one filling the image).
    """
    ndim = labels.ndim
    spacing = [1.0] * ndim if spacing is None else [float(x) for x in spacing]
    offsets = ellipsoid_offsets(radius, spacing).tolist()
    halo = [max(abs(o[a]) for o in offsets) for a in range(ndim)]
    # Pad by two halos: E is needed one halo outside the image and reads one halo further.
    pad = []
    for h in reversed(halo):
        pad += [2 * h, 2 * h]
    inside = torch.nn.functional.pad(torch.ones_like(labels, dtype=torch.uint8), pad).bool()
    padded = torch.nn.functional.pad(labels, pad)
    # Candidate common label: the largest in-image label of the ball; then check all agree.
    lowest = torch.iinfo(labels.dtype).min
    common = torch.full_like(padded, lowest)
    for o in offsets:
        common = torch.maximum(common, torch.where(_shifted(inside, o, False), _shifted(padded, o, 0), lowest))
    agree = (common != lowest) & (common != 0)
    for o in offsets:
        agree &= (_shifted(padded, o, 0) == common) | ~_shifted(inside, o, False)
    eroded = torch.where(agree, common, torch.zeros_like(common))
    kept = torch.zeros_like(inside)
    for o in offsets:
        kept |= _shifted(eroded, o, 0) == padded
    kept &= inside & (padded != 0)
    crop = tuple(slice(2 * h, 2 * h + n) for h, n in zip(halo, labels.shape))
    return torch.where(kept, padded, torch.zeros_like(padded))[crop].contiguous()


def embeddings_to_labels(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    min_distance: float,
    spacing: Optional[Sequence[float]] = None,
    min_votes: int = 1,
    smooth_radius: int = 0,
    max_distance: Optional[float] = None,
    opening_radius: Optional[float] = None,
) -> torch.Tensor:
    """Votes, peaks, nearest-centre assignment and (if ``opening_radius``) opening, in one call."""
    votes = hough_votes(embeddings, mask, spacing)
    centres = find_peaks(votes, min_distance, min_votes, spacing, smooth_radius)
    labels = assign_to_centres(embeddings, mask, centres, spacing, max_distance)
    if opening_radius:
        labels = label_opening(labels, opening_radius, spacing)
    return labels


def ssdc(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_weight: torch.Tensor,
    reduce_bias: Optional[torch.Tensor],
    dilations: Sequence[int],
    groups: int,
    negative_slope: float = 0.3,
) -> torch.Tensor:
    """Shared stacked dilated convolution, the unfused chain (DESIGN.md, "ssdc").

    For each dilation ``d``: the grouped 3x3(x3) conv with ``weight``/``bias``, dilation and padding
    ``d``, then LeakyReLU; the ``D`` results are concatenated per group, dilation-major (group g's
    input to the reduction is [its C channels at d_0, its C channels at d_1, ...]); then the grouped
    1x1 conv ``reduce_weight``/``reduce_bias``. Differentiable with torch's autograd.
    """
    import torch.nn.functional as F

    ndim = x.dim() - 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    batch, spatial = x.shape[0], x.shape[2:]
    channels = x.shape[1] // groups
    acts = [
        F.leaky_relu(conv(x, weight, bias, padding=int(d), dilation=int(d), groups=groups), negative_slope)
        for d in dilations
    ]
    stacked = torch.stack([a.reshape(batch, groups, channels, *spatial) for a in acts], dim=2)
    stacked = stacked.reshape(batch, groups * len(acts) * channels, *spatial)
    return conv(stacked, reduce_weight, reduce_bias, groups=groups)
