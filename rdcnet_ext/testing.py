"""Synthetic instance fields for tests, benchmarks and examples.

:func:`synthetic_embeddings` makes what a trained RDCNet would output for an image of touching
objects: a foreground mask and embeddings in which every pixel of an object points, with noise,
at the object's centre. Optional defects (pixels pointing elsewhere, non-finite values) make the
post-processing face what a weak model produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class SyntheticField:
    labels: np.ndarray      # int32 (*spatial): true instances, 0 = background
    centres: np.ndarray     # int64 (K, ndim): pixel the embeddings of instance k+1 point at
    embeddings: np.ndarray  # float32 (ndim, *spatial), physical units
    mask: np.ndarray        # bool (*spatial): foreground
    spacing: tuple


def _grid_seeds(shape: Sequence[int], count: int, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """About `count` seed points (pixel coordinates) on a grid that is regular in physical space,
    jittered, so objects are roundish in physical units and touch without piling up."""
    shape = np.asarray(shape, dtype=np.float64)
    extent = shape * spacing
    per_axis = np.maximum(1, np.round(extent / np.prod(extent) ** (1 / len(shape)) * count ** (1 / len(shape))))
    per_axis = np.minimum(per_axis, shape)
    axes = [(np.arange(n) + 0.5) * (s / n) for n, s in zip(per_axis.astype(int), shape)]
    seeds = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    step = shape / per_axis
    seeds += rng.uniform(-0.35, 0.35, seeds.shape) * step
    return np.clip(seeds, 0, shape - 1)


def synthetic_labels(
    shape: Sequence[int],
    count: int,
    spacing: Optional[Sequence[float]] = None,
    fill: float = 0.8,
    seed: int = 0,
) -> np.ndarray:
    """Touching convex-ish objects of varied size: a weighted Voronoi partition of about `count`
    seeds (in physical space), with background where a pixel is far from its seed."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    ndim = len(shape)
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    seeds = _grid_seeds(shape, count, spacing, rng)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, ndim)
    tree = cKDTree(seeds * spacing)
    dist, nearest = tree.query(coords * spacing, k=1, workers=-1)
    # Per-object radius: objects of varied size, background between some of them.
    typical = (np.prod(np.asarray(shape) * spacing) / max(len(seeds), 1)) ** (1 / ndim) / 2
    radius = typical * rng.uniform(0.75, 1.35, len(seeds)) * fill / 0.8
    labels = np.where(dist <= radius[nearest], nearest + 1, 0).astype(np.int32)
    return labels.reshape(shape)


def synthetic_embeddings(
    shape: Sequence[int],
    count: int,
    spacing: Optional[Sequence[float]] = None,
    noise: float = 0.7,
    outliers: float = 0.0,
    nonfinite: float = 0.0,
    seed: int = 0,
) -> SyntheticField:
    """Labels of ~`count` touching objects and the embeddings a good model would predict.

    noise: standard deviation, in pixels, of the embedding around the object's centre.
    outliers: fraction of foreground pixels whose embedding points at a random place (some
    outside the image). nonfinite: fraction of pixels with NaN/inf embeddings.
    """
    rng = np.random.default_rng(seed + 1)
    ndim = len(shape)
    spacing_t = tuple(1.0 for _ in range(ndim)) if spacing is None else tuple(float(s) for s in spacing)
    sp = np.asarray(spacing_t)
    labels = synthetic_labels(shape, count, spacing_t, seed=seed)
    n_labels = int(labels.max())
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(ndim, -1)
    flat = labels.reshape(-1)
    # Centre of each instance: the rounded centroid, moved onto the instance if it falls outside.
    counts = np.bincount(flat, minlength=n_labels + 1)[1:]
    centres = np.zeros((n_labels, ndim), dtype=np.int64)
    for a in range(ndim):
        sums = np.bincount(flat, weights=coords[a], minlength=n_labels + 1)[1:]
        centres[:, a] = np.round(sums / np.maximum(counts, 1))
    present = counts > 0
    inside = np.zeros(n_labels, bool)
    idx = np.ravel_multi_index(tuple(np.clip(centres.T, 0, np.asarray(shape)[:, None] - 1)), shape)
    inside[present] = flat[idx[present]] == np.arange(1, n_labels + 1)[present]
    for k in np.flatnonzero(present & ~inside):
        members = np.flatnonzero(flat == k + 1)
        centres[k] = coords[:, members[len(members) // 2]]
    mask = flat > 0
    target = np.zeros((ndim, flat.size))
    target[:, mask] = centres[flat[mask] - 1].T
    embeddings = (target + rng.normal(0, noise, target.shape)) * sp[:, None]
    embeddings[:, ~mask] = coords[:, ~mask] * sp[:, None]
    if outliers > 0:
        pick = mask & (rng.random(flat.size) < outliers)
        span = np.asarray(shape)[:, None] * sp[:, None]
        embeddings[:, pick] = rng.uniform(-0.1, 1.1, (ndim, int(pick.sum()))) * span
    if nonfinite > 0:
        pick = rng.random(flat.size) < nonfinite
        bad = rng.choice(np.array([np.nan, np.inf, -np.inf]), int(pick.sum()))
        embeddings[rng.integers(0, ndim, int(pick.sum())), np.flatnonzero(pick)] = bad
    keep = present  # drop ids of objects that vanished (tiny shapes), keep ids consecutive
    relabel = np.zeros(n_labels + 1, np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return SyntheticField(
        labels=relabel[labels],
        centres=centres[keep],
        embeddings=embeddings.astype(np.float32).reshape((ndim, *shape)),
        mask=mask.reshape(shape),
        spacing=spacing_t,
    )
