"""The best scipy / scikit-image / NumPy equivalents of the rdcnet_ext post-processing ops.

These are what a careful user would write without rdcnet_ext; the benchmarks time them beside the
fast ops. All take and return NumPy arrays. Where their semantics differ from the ops (see each
docstring) the difference is small and they are a speed comparison; the benchmarks record how
closely each result matches rdcnet_ext in ``extra_info``.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from rdcnet_ext._geometry import ellipsoid_offsets, peak_window


# --------------------------------------------------------------------------------------- votes
def votes_numpy(embeddings: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Hough votes with ``np.bincount`` on rounded bins (``np.rint`` rounds half to even, as the
    op does). Same result as :func:`rdcnet_ext.ops.hough_votes`."""
    shape = mask.shape
    sp = np.asarray(spacing, dtype=np.float64)[:, None]
    bins = np.rint(embeddings[:, mask] / sp)  # (ndim, n) float64; NaN/inf stay non-finite
    valid = np.ones(bins.shape[1], dtype=bool)
    for a, n in enumerate(shape):
        valid &= (bins[a] >= 0) & (bins[a] <= n - 1)  # False for NaN/inf
    flat = np.ravel_multi_index(tuple(bins[:, valid].astype(np.intp)), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).astype(np.int32).reshape(shape)


# --------------------------------------------------------------------------------------- peaks
def peaks_skimage(votes: np.ndarray, min_distance: float, min_votes: int, spacing: Sequence[float]) -> np.ndarray:
    """``skimage.feature.peak_local_max`` with the op's window.

    Differences from :func:`rdcnet_ext.ops.find_peaks`: on plateaus skimage keeps every pixel
    equal to the window maximum and then thins them with a KD-tree (``_ensure_spacing``) instead
    of keeping the first in row-major order; its threshold is strict (``> threshold_abs``), so
    ``threshold_abs = min_votes - 1`` gives the op's ``>= min_votes`` on integer votes; the result
    is sorted by score, not row-major. With anisotropic spacing the window is passed as a
    rectangular ``footprint`` (``min_distance`` then only thins plateaus).
    """
    window = peak_window(min_distance, spacing)
    kwargs = dict(threshold_abs=min_votes - 1, exclude_border=False)
    from skimage.feature import peak_local_max

    if len(set(window)) == 1:
        return peak_local_max(votes, min_distance=window[0], **kwargs)
    footprint = np.ones([2 * w + 1 for w in window], dtype=bool)
    return peak_local_max(votes, min_distance=max(1, min(window)), footprint=footprint, **kwargs)


# -------------------------------------------------------------------------------------- assign
def assign_kdtree(
    embeddings: np.ndarray, mask: np.ndarray, centres: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Nearest centre with ``scipy.spatial.cKDTree(centres * spacing).query(..., workers=-1)``.

    Same result as :func:`rdcnet_ext.ops.assign_to_centres` (no ``max_distance``) up to exact ties;
    assumes finite embeddings (the benchmark fields have none that are not).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(centres * sp)
    _, nearest = tree.query(embeddings[:, mask].T, workers=-1)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[mask] = nearest + 1
    return labels


# ------------------------------------------------------------------------------------- opening
def ball_footprint(radius: float, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(footprint, halo): the op's structuring element (``_geometry.ellipsoid_offsets``) as a
    boolean array of shape ``2 * halo + 1``."""
    offsets = ellipsoid_offsets(radius, spacing).numpy().astype(np.intp)
    halo = np.abs(offsets).max(axis=0)
    footprint = np.zeros(tuple(2 * halo + 1), dtype=bool)
    footprint[tuple((offsets + halo).T)] = True
    return footprint, halo


def _opening_per_label(
    labels: np.ndarray, radius: float, spacing, open_box: Callable, max_labels: int | None = None
) -> np.ndarray:
    """Label-wise opening, one ``open_box`` call per label on its padded bounding box.

    The image is padded by one halo of "outside" pixels (-1) that count as part of every label,
    which gives exactly the op's border rule (outside the image counts as the same label): each
    box is the label's bounding box grown by one halo, so it holds the outside pixels the erosion
    must see plus, on inner sides, a margin that no kept pixel's dilation reads past.
    ``open_box(set, footprint)`` must treat pixels beyond the box as in the set for the erosion.
    ``max_labels``: stop after that many labels (to estimate the time of a full call).

    The cost is the sum of the bounding boxes' sizes: a label with a few stray pixels far away
    (embeddings of outliers assigned to a distant centre) has a box of most of the image.
    """
    footprint, halo = ball_footprint(radius, spacing)
    padded = np.pad(labels, [(h, h) for h in halo], constant_values=-1)
    out = np.zeros_like(padded)
    done = 0
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        if max_labels is not None and done >= max_labels:
            break
        done += 1
        label = index + 1
        # bounding box [start - h, stop + h) in image coordinates = [start, stop + 2h) padded
        grown = tuple(slice(s.start, s.stop + 2 * h) for s, h in zip(box, halo))
        crop = padded[grown]
        own = crop == label
        kept = open_box(own | (crop == -1), footprint) & own
        out[grown][kept] = label
    return out[tuple(slice(h, h + n) for h, n in zip(halo, labels.shape))]


def _scipy_open_box(region: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    # border_value=1 is used by both steps; the extra dilation it causes stays within one halo of
    # the box edge, where there are no pixels of the label (see _opening_per_label).
    return ndi.binary_opening(region, structure=footprint, border_value=1)


def _skimage_open_box(region: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    from skimage.morphology import opening

    # mode="ignore": erosion pads with True, dilation with False.
    return opening(region, footprint, mode="ignore")


def opening_scipy_per_label(labels: np.ndarray, radius: float, spacing, max_labels: int | None = None) -> np.ndarray:
    """``scipy.ndimage.find_objects`` + ``scipy.ndimage.binary_opening`` on each label's padded
    bounding box with the op's ellipsoid. Same result as :func:`rdcnet_ext.ops.label_opening`."""
    return _opening_per_label(labels, radius, spacing, _scipy_open_box, max_labels)


def opening_skimage_per_label(labels: np.ndarray, radius: float, spacing, max_labels: int | None = None) -> np.ndarray:
    """``scipy.ndimage.find_objects`` + ``skimage.morphology.opening(mode="ignore")`` per label.
    Same result as :func:`rdcnet_ext.ops.label_opening`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _opening_per_label(labels, radius, spacing, _skimage_open_box, max_labels)


def opening_scipy_rank_filters(labels: np.ndarray, radius: float, spacing) -> np.ndarray:
    """Whole-image label-wise opening with three ``scipy.ndimage`` rank filters, no per-label loop.

    A pixel lies in the erosion of label ``l`` iff min == max == ``l`` over its footprint
    (outside pixels are excluded with ``cval``: +inf for the minimum, -1 for the maximum). At most
    one eroded label can be within a footprint of a pixel (it would otherwise belong to two
    labels), so a maximum filter of the eroded image is the label-wise dilation. Same result as
    :func:`rdcnet_ext.ops.label_opening`.
    """
    footprint, halo = ball_footprint(radius, spacing)
    pad = [(h, h) for h in halo]  # the erosion is needed one halo outside the image
    labels = labels.astype(np.int32, copy=False)
    big = np.iinfo(np.int32).max
    low = ndi.minimum_filter(np.pad(labels, pad, constant_values=big), footprint=footprint, mode="constant", cval=big)
    high = ndi.maximum_filter(np.pad(labels, pad, constant_values=-1), footprint=footprint, mode="constant", cval=-1)
    eroded = np.where((low == high) & (high > 0), high, 0)
    dilated = ndi.maximum_filter(eroded, footprint=footprint, mode="constant", cval=0)
    dilated = dilated[tuple(slice(h, h + n) for h, n in zip(halo, labels.shape))]
    return np.where((dilated == labels) & (labels != 0), labels, 0)


# Per-label variants accept `max_labels`, to project the time of a full call from a few labels.
PER_LABEL = ("scipy per-label binary_opening", "skimage per-label opening")
OPENINGS: dict[str, Callable] = {
    "scipy per-label binary_opening": opening_scipy_per_label,
    "skimage per-label opening": opening_skimage_per_label,
    "scipy rank filters": opening_scipy_rank_filters,
}


# ------------------------------------------------------------------------------------ pipeline
def pipeline(
    embeddings: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    min_distance: float,
    min_votes: int,
    opening_radius: float,
    opening: Callable,
) -> np.ndarray:
    """votes_numpy -> peaks_skimage -> assign_kdtree -> ``opening``.

    The centres are put in row-major order (as the op returns them) so that the label ids match
    rdcnet_ext's; this costs microseconds.
    """
    votes = votes_numpy(embeddings, mask, spacing)
    centres = peaks_skimage(votes, min_distance, min_votes, spacing)
    centres = centres[np.lexsort(centres.T[::-1])]
    labels = assign_kdtree(embeddings, mask, centres, spacing)
    return opening(labels, opening_radius, spacing)
