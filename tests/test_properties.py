"""Property-based tests (hypothesis): on small random images every op equals its reference
exactly, and the opening keeps its guarantees (subset of the input, idempotent)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rdcnet_ext import ops
from rdcnet_ext import reference as ref

from helpers import assert_equal

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPACINGS = st.sampled_from([0.26, 0.5, 1.0, 2.0, 0.3, 1.7])


@st.composite
def geometry(draw, max_side=(9, 5)):
    """(shape, spacing): 2D up to 9 per side or 3D up to 5, any axis possibly of length 1."""
    ndim = draw(st.sampled_from([2, 3]))
    side = max_side[0] if ndim == 2 else max_side[1]
    shape = tuple(draw(st.lists(st.integers(1, side), min_size=ndim, max_size=ndim)))
    spacing = tuple(draw(st.lists(SPACINGS, min_size=ndim, max_size=ndim)))
    return shape, spacing


@st.composite
def embeddings(draw, shape, spacing):
    """Float32 ``(ndim, *shape)``: mostly multiples of half a pixel (rounding boundaries, inside,
    on and beyond the border), otherwise any float32 including NaN/inf."""
    ndim = len(shape)
    top = 2 * max(shape) + 4
    halves = arrays(np.int64, (ndim, *shape), elements=st.integers(-4, top))
    steps = draw(halves).astype(np.float64) / 2 * np.asarray(spacing).reshape(ndim, *[1] * ndim)
    anything = draw(arrays(np.float32, (ndim, *shape), elements=st.floats(width=32, allow_nan=True,
                                                                          allow_infinity=True)))
    pick = draw(arrays(np.bool_, (ndim, *shape), elements=st.booleans()))
    return torch.from_numpy(np.where(pick, anything, steps.astype(np.float32)))


@st.composite
def field(draw):
    shape, spacing = draw(geometry())
    emb = draw(embeddings(shape, spacing))
    mask = torch.from_numpy(draw(arrays(np.bool_, shape, elements=st.booleans())))
    return shape, spacing, emb, mask


@SETTINGS
@given(field())
def test_hough_votes_property(data):
    shape, spacing, emb, mask = data
    votes = ops.hough_votes(emb, mask, spacing)
    assert_equal(votes, ref.hough_votes(emb, mask, spacing), "votes")
    assert int(votes.sum()) <= int(mask.sum())


@SETTINGS
@given(geometry(), st.data(), st.floats(0.0, 4.0), st.integers(0, 3), st.integers(0, 2))
def test_find_peaks_property(geom, data, min_distance, min_votes, smooth_radius):
    shape, spacing = geom
    votes = torch.from_numpy(data.draw(arrays(np.int32, shape, elements=st.integers(0, 3))))
    peaks = ops.find_peaks(votes, min_distance, min_votes, spacing, smooth_radius)
    assert_equal(peaks, ref.find_peaks(votes, min_distance, min_votes, spacing, smooth_radius), "peaks")
    # Peaks are more than one window apart (along at least one axis).
    window = [math.floor(min_distance / s) for s in spacing]
    p = peaks.tolist()
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            assert any(abs(a - b) > w for a, b, w in zip(p[i], p[j], window)), (p[i], p[j], window)


@SETTINGS
@given(field(), st.data(), st.one_of(st.none(), st.floats(0.0, 6.0)))
def test_assign_to_centres_property(data_field, data, max_distance):
    shape, spacing, emb, mask = data_field
    k = data.draw(st.integers(0, 6))
    flat = data.draw(st.lists(st.integers(0, math.prod(shape) - 1), min_size=k, max_size=k))
    centres = torch.tensor([list(np.unravel_index(i, shape)) for i in flat], dtype=torch.int64)
    centres = centres.reshape(k, len(shape))
    labels = ops.assign_to_centres(emb, mask, centres, spacing, max_distance)
    assert_equal(labels, ref.assign_to_centres(emb, mask, centres, spacing, max_distance), "labels")
    assert 0 <= int(labels.min()) and int(labels.max()) <= k


@SETTINGS
@given(geometry(), st.data(), st.floats(0.2, 3.0), st.sampled_from([torch.int32, torch.int64]))
def test_label_opening_property(geom, data, radius, dtype):
    shape, spacing = geom
    labels = torch.from_numpy(data.draw(arrays(np.int64, shape, elements=st.integers(-1, 3)))).to(dtype)
    opened = ops.label_opening(labels, radius, spacing)
    assert_equal(opened, ref.label_opening(labels, radius, spacing), "opened")
    assert bool(((opened == labels) | (opened == 0)).all())
    assert_equal(ops.label_opening(opened, radius, spacing), opened, "idempotent")


@SETTINGS
@given(field(), st.floats(0.0, 3.0), st.integers(0, 2), st.integers(0, 1),
       st.one_of(st.none(), st.floats(0.0, 4.0)), st.one_of(st.none(), st.floats(0.3, 2.5)))
def test_embeddings_to_labels_property(data_field, min_distance, min_votes, smooth_radius, max_distance,
                                       opening_radius):
    shape, spacing, emb, mask = data_field
    args = (min_distance, spacing, min_votes, smooth_radius, max_distance, opening_radius)
    labels = ops.embeddings_to_labels(emb, mask, *args)
    assert_equal(labels, ref.embeddings_to_labels(emb, mask, *args), "labels")
    assert not bool((labels[~mask] != 0).any())
