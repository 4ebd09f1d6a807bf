"""Every fast op equals its pure-PyTorch reference exactly (torch.equal, same dtype and shape).

Inputs: seeded synthetic instance fields (with noise, outliers, NaN/inf embeddings; 2D/3D,
isotropic/anisotropic) and purely random data (embeddings over and beyond the image, many on .5
rounding boundaries; vote images full of plateaus; random centres with duplicates; blocky and
speckled label images), over a range of op parameters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdcnet_ext import ops
from rdcnet_ext import reference as ref

from helpers import (
    ANISO_3D,
    GEOMETRY_IDS,
    RANDOM_GEOMETRIES,
    assert_equal,
    blocky_labels,
    random_centres,
    random_embeddings,
    random_mask,
    spacing_list,
)

geometries = pytest.mark.parametrize("shape,spacing", RANDOM_GEOMETRIES, ids=GEOMETRY_IDS)


# ---- hough_votes ---------------------------------------------------------------------------------


def test_hough_votes_synthetic(field):
    votes = ops.hough_votes(field.embeddings, field.mask, field.spacing)
    assert_equal(votes, ref.hough_votes(field.embeddings, field.mask, field.spacing), "votes")
    # Sanity of the oracle itself: a vote per masked pixel with a finite in-image bin, at most.
    assert 0 < int(votes.sum()) <= int(field.mask.sum())


@geometries
@pytest.mark.parametrize("fraction", [0.0, 0.6, 1.0])
def test_hough_votes_random(shape, spacing, fraction, rng):
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, fraction)
    expected = ref.hough_votes(emb, mask, spacing_list(spacing, len(shape)))
    assert_equal(ops.hough_votes(emb, mask, spacing), expected, "votes")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_hough_votes_other_float_dtypes_computed_in_float32(dtype, rng):
    # Embeddings of any floating dtype are computed in float32: equal to the reference on the
    # float32 conversion (exactly representable .5 values included).
    shape, spacing = (17, 23), (0.5, 1.0)
    emb = random_embeddings(shape, spacing, rng).to(dtype)
    mask = random_mask(shape, rng, 0.8)
    expected = ref.hough_votes(emb.to(torch.float32), mask, spacing)
    assert_equal(ops.hough_votes(emb, mask, spacing), expected, "votes")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
def test_hough_votes_integer_mask_nonzero_is_true(dtype, rng):
    shape = (13, 11)
    emb = random_embeddings(shape, None, rng)
    values = torch.from_numpy(rng.integers(0, 3, shape)).to(dtype)
    if dtype != torch.uint8:
        values[0] = -1  # negative is nonzero too
    expected = ref.hough_votes(emb, values != 0)
    assert_equal(ops.hough_votes(emb, values), expected, "votes")


# ---- find_peaks ----------------------------------------------------------------------------------

# (min_distance, min_votes, smooth_radius)
PEAK_PARAMS = [(0.0, 1, 0), (1.0, 1, 0), (2.0, 2, 1), (3.5, 0, 2), (6.0, 3, 0), (1.3, 1, 3)]


@pytest.mark.parametrize("min_distance,min_votes,smooth_radius", PEAK_PARAMS)
def test_find_peaks_synthetic(field, min_distance, min_votes, smooth_radius):
    votes = ref.hough_votes(field.embeddings, field.mask, field.spacing)
    peaks = ops.find_peaks(votes, min_distance, min_votes, field.spacing, smooth_radius)
    expected = ref.find_peaks(votes, min_distance, min_votes, field.spacing, smooth_radius)
    assert_equal(peaks, expected, "peaks")


@geometries
@pytest.mark.parametrize("levels", [1, 2, 4, 50])
@pytest.mark.parametrize("min_distance,min_votes,smooth_radius", PEAK_PARAMS[:5])
def test_find_peaks_random_plateaus(shape, spacing, levels, min_distance, min_votes, smooth_radius, rng):
    # Few distinct vote levels: plateaus everywhere, so the row-major tie-break decides.
    votes = torch.from_numpy(rng.integers(0, levels, shape).astype(np.int32))
    sp = spacing_list(spacing, len(shape))
    expected = ref.find_peaks(votes, min_distance, min_votes, sp, smooth_radius)
    assert_equal(ops.find_peaks(votes, min_distance, min_votes, spacing, smooth_radius), expected, "peaks")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("smooth_radius", [0, 1])
def test_find_peaks_vote_dtypes(dtype, smooth_radius, rng):
    low = -3 if dtype.is_signed else 0
    votes = torch.from_numpy(rng.integers(low, 5, (19, 14))).to(dtype)
    expected = ref.find_peaks(votes, 1.5, 0, None, smooth_radius)
    assert_equal(ops.find_peaks(votes, 1.5, 0, None, smooth_radius), expected, "peaks")


def test_find_peaks_int64_votes_beyond_int32():
    # Votes that only differ above 32 bits must not be truncated.
    votes = torch.zeros((3, 4), dtype=torch.int64)
    votes[0, 0] = 1
    votes[0, 1] = 2**32
    votes[2, 3] = 2**32 + 1
    expected = ref.find_peaks(votes, 5.0, 1)
    assert expected.tolist() == [[2, 3]]
    assert_equal(ops.find_peaks(votes, 5.0, 1), expected, "peaks")


def test_find_peaks_smoothing_does_not_overflow_int32():
    votes = torch.full((5, 5), 2**30, dtype=torch.int32)
    votes[1, 3] += 1  # the box sums around it exceed 2**31
    for radius in (1, 2):
        expected = ref.find_peaks(votes, 9.0, 1, None, radius)
        assert_equal(ops.find_peaks(votes, 9.0, 1, None, radius), expected, f"peaks r={radius}")
    assert ops.find_peaks(votes, 9.0, 1, None, 0).tolist() == [[1, 3]]


# ---- assign_to_centres ---------------------------------------------------------------------------

MAX_DISTANCES = [None, 0.0, 1.0, 3.0, math.inf]


@pytest.mark.parametrize("max_distance", MAX_DISTANCES)
@pytest.mark.parametrize("centres_from", ["peaks", "truth"])
def test_assign_synthetic(field, centres_from, max_distance):
    if centres_from == "peaks":
        votes = ref.hough_votes(field.embeddings, field.mask, field.spacing)
        centres = ref.find_peaks(votes, 2.0, 1, field.spacing, 1)
    else:
        centres = field.centres
    labels = ops.assign_to_centres(field.embeddings, field.mask, centres, field.spacing, max_distance)
    expected = ref.assign_to_centres(field.embeddings, field.mask, centres, field.spacing, max_distance)
    assert_equal(labels, expected, "labels")


@geometries
@pytest.mark.parametrize("k", [1, 2, 7, 60])
@pytest.mark.parametrize("max_distance", [None, 2.0])
def test_assign_random(shape, spacing, k, max_distance, rng):
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, 0.9)
    centres = random_centres(shape, k, rng, duplicates=True)
    sp = spacing_list(spacing, len(shape))
    expected = ref.assign_to_centres(emb, mask, centres, sp, max_distance)
    assert_equal(ops.assign_to_centres(emb, mask, centres, spacing, max_distance), expected, "labels")


@pytest.mark.parametrize(
    "shape,spacing",
    [((30, 26), (1.0, 1.0)), ((20, 40), (0.5, 2.0)), ((9, 12, 10), ANISO_3D), ((1, 50), (1.0, 0.25))],
)
@pytest.mark.parametrize("k", [2, 5, 40, 300])
def test_assign_ties_and_far_points(shape, spacing, k, rng):
    # Embeddings on midpoints of pairs of centres (exact ties), exactly on centres (duplicates
    # included), and far outside the image (the search beyond the image's box).
    ndim = len(shape)
    centres = random_centres(shape, k, rng, duplicates=True)
    pos = centres.double() * torch.tensor(spacing, dtype=torch.float64)
    n = math.prod(shape)
    i, j = torch.from_numpy(rng.integers(0, k, n)), torch.from_numpy(rng.integers(0, k, n))
    ext = torch.tensor(shape, dtype=torch.float64) * torch.tensor(spacing, dtype=torch.float64)
    choices = torch.stack([
        (pos[i] + pos[j]) / 2,
        pos[i],
        torch.from_numpy(rng.uniform(-30, 30, (n, ndim))) * ext,
        torch.from_numpy(rng.uniform(-0.5, 1.5, (n, ndim))) * ext,
    ])
    pick = torch.from_numpy(rng.integers(0, 4, n))
    emb = choices[pick, torch.arange(n)].T.to(torch.float32).reshape(ndim, *shape).contiguous()
    mask = torch.ones(shape, dtype=torch.bool)
    expected = ref.assign_to_centres(emb, mask, centres, spacing)
    assert_equal(ops.assign_to_centres(emb, mask, centres, spacing), expected, "labels")


# ---- label_opening -------------------------------------------------------------------------------

RADII = [0.5, 1.0, 1.5, 2.5, 4.0]


@pytest.mark.parametrize("radius", RADII)
def test_label_opening_synthetic(field, radius):
    labels = field.labels
    assert_equal(ops.label_opening(labels, radius, field.spacing),
                 ref.label_opening(labels, radius, field.spacing), "opened")


@geometries
@pytest.mark.parametrize("radius", [0.7, 1.0, 1.5, 2.9])
@pytest.mark.parametrize("block,negative,speckle", [(1, False, 0.0), (3, False, 0.05), (5, True, 0.02)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_label_opening_random(shape, spacing, radius, block, negative, speckle, dtype, rng):
    labels = blocky_labels(shape, rng, block, 4, negative=negative, speckle=speckle).to(dtype)
    expected = ref.label_opening(labels, radius, spacing_list(spacing, len(shape)))
    assert_equal(ops.label_opening(labels, radius, spacing), expected, "opened")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_label_opening_extreme_label_values(dtype):
    info = torch.iinfo(dtype)
    labels = torch.zeros((9, 10), dtype=dtype)
    labels[1:7, 1:7] = info.max
    labels[:, 8:] = info.min + 1  # (info.min itself is the reference's internal sentinel)
    labels[7, 0] = -1
    expected = ref.label_opening(labels, 1.5)
    assert set(expected.unique().tolist()) == {0, info.max, info.min + 1}
    assert_equal(ops.label_opening(labels, 1.5), expected, "opened")


# ---- embeddings_to_labels ------------------------------------------------------------------------

# (min_distance, min_votes, smooth_radius, max_distance, opening_radius)
PIPELINE_PARAMS = [
    (2.0, 1, 0, None, None),
    (3.0, 2, 1, 4.0, 1.0),
    (1.0, 0, 0, 2.5, 1.5),
    (5.0, 3, 2, None, 2.0),
]


@pytest.mark.parametrize("min_distance,min_votes,smooth_radius,max_distance,opening_radius", PIPELINE_PARAMS)
def test_embeddings_to_labels_synthetic(field, min_distance, min_votes, smooth_radius, max_distance, opening_radius):
    args = (min_distance, field.spacing, min_votes, smooth_radius, max_distance, opening_radius)
    labels = ops.embeddings_to_labels(field.embeddings, field.mask, *args)
    expected = ref.embeddings_to_labels(field.embeddings, field.mask, *args)
    assert_equal(labels, expected, "labels")


def test_embeddings_to_labels_recovers_clean_instances():
    # Not only equal to the reference: on a clean field the pipeline finds the true objects.
    from helpers import Case

    f = Case((64, 64), 12, noise=0.2, seed=11).make()
    labels = ops.embeddings_to_labels(f.embeddings, f.mask, 3.0, f.spacing)
    assert int(labels.max()) == f.centres.shape[0]
    assert torch.equal(labels > 0, f.mask)
    # Same partition up to renumbering: every true object maps to exactly one label and back.
    pairs = torch.unique(torch.stack([f.labels[f.mask], labels[f.mask]]), dim=1)
    assert pairs.shape[1] == f.centres.shape[0]


@geometries
@pytest.mark.parametrize("min_distance,min_votes,smooth_radius,max_distance,opening_radius", PIPELINE_PARAMS)
def test_embeddings_to_labels_random(shape, spacing, min_distance, min_votes, smooth_radius, max_distance,
                                     opening_radius, rng):
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, 0.8)
    sp = spacing_list(spacing, len(shape))
    expected = ref.embeddings_to_labels(emb, mask, min_distance, sp, min_votes, smooth_radius, max_distance,
                                        opening_radius)
    labels = ops.embeddings_to_labels(emb, mask, min_distance, spacing, min_votes, smooth_radius, max_distance,
                                      opening_radius)
    assert_equal(labels, expected, "labels")


def test_embeddings_to_labels_equals_the_four_ops(field):
    args = dict(min_distance=2.0, min_votes=2, smooth_radius=1, max_distance=3.0)
    votes = ops.hough_votes(field.embeddings, field.mask, field.spacing)
    centres = ops.find_peaks(votes, args["min_distance"], args["min_votes"], field.spacing, args["smooth_radius"])
    labels = ops.assign_to_centres(field.embeddings, field.mask, centres, field.spacing, args["max_distance"])
    opened = ops.label_opening(labels, 1.5, field.spacing)
    fused = ops.embeddings_to_labels(field.embeddings, field.mask, spacing=field.spacing, opening_radius=1.5, **args)
    assert_equal(fused, opened, "fused")


# ---- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_thread_count(threads, field):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = [
            ops.hough_votes(field.embeddings, field.mask, field.spacing),
            ops.find_peaks(ref.hough_votes(field.embeddings, field.mask, field.spacing), 2.0, 1, field.spacing, 1),
            ops.label_opening(field.labels, 1.5, field.spacing),
            ops.embeddings_to_labels(field.embeddings, field.mask, 2.0, field.spacing, opening_radius=1.0),
        ]
    finally:
        torch.set_num_threads(before)
    votes = ref.hough_votes(field.embeddings, field.mask, field.spacing)
    expected = [
        votes,
        ref.find_peaks(votes, 2.0, 1, field.spacing, 1),
        ref.label_opening(field.labels, 1.5, field.spacing),
        ref.embeddings_to_labels(field.embeddings, field.mask, 2.0, field.spacing, opening_radius=1.0),
    ]
    for name, g, e in zip(["votes", "peaks", "opened", "labels"], got, expected):
        assert_equal(g, e, name)
