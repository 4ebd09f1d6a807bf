"""Chunked post-processing (rdcnet.large) equals the whole-array op bit for bit, for any chunking."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("dask")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rdcnet import large  # noqa: E402
from rdcnet_ext import ops  # noqa: E402
from rdcnet_ext.testing import synthetic_embeddings  # noqa: E402

FIELDS = {
    "2d": dict(shape=(40, 52), count=9, spacing=None),
    "2d-aniso": dict(shape=(36, 44), count=7, spacing=(0.5, 0.8)),
    "3d-aniso": dict(shape=(10, 22, 26), count=6, spacing=(2.0, 0.6, 0.6)),
}


@functools.lru_cache(maxsize=None)
def field(name: str):
    """Synthetic embeddings with outliers (some vote into far chunks or off the image) and NaNs."""
    f = synthetic_embeddings(**FIELDS[name], noise=0.8, outliers=0.05, nonfinite=0.01, seed=3)
    return f.embeddings, f.mask, tuple(f.spacing)


def _chunks(draw, shape, most):
    # Per axis: from a few pixels (smaller than the peak window) to the whole axis, with at most
    # `most` chunks per axis so that an example stays fast.
    return tuple(draw(st.integers(max(2, -(-n // most)), n)) for n in shape)


@st.composite
def problems(draw, names):
    name = draw(st.sampled_from(names))
    emb, mask, spacing = field(name)
    chunks = _chunks(draw, mask.shape, 5 if mask.ndim == 2 else 3)
    params = dict(
        min_distance=draw(st.sampled_from([1.0, 2.5, 4.0, 7.0])),
        min_votes=draw(st.sampled_from([0, 1, 3])),
        smooth_radius=draw(st.sampled_from([0, 1, 2])),
        max_distance=draw(st.sampled_from([None, 2.0, 6.0])),
        opening_radius=draw(st.sampled_from([None, 1.0, 2.6])),
    )
    return emb, mask, spacing, chunks, params


def _check(emb, mask, spacing, chunks, params):
    import dask.array as da

    expected = ops.embeddings_to_labels(emb, mask, spacing=spacing, **params)
    e = da.from_array(emb, chunks=(emb.shape[0],) + chunks)
    m = da.from_array(mask, chunks=chunks)
    labels, centres = large.embeddings_to_labels(e, m, spacing=spacing, **params)
    got = labels.compute(scheduler="sync")
    np.testing.assert_array_equal(got, expected)
    whole = ops.find_peaks(ops.hough_votes(emb, mask, spacing), params["min_distance"], params["min_votes"],
                           spacing, params["smooth_radius"])
    np.testing.assert_array_equal(centres, whole)


_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(problems(["2d", "2d-aniso"]))
def test_chunked_equals_whole_2d(problem):
    _check(*problem)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(["3d-aniso"]))
def test_chunked_equals_whole_3d(problem):
    _check(*problem)


def test_one_chunk_whose_votes_all_stay_home():
    """A single chunk (hypothesis found it: every routed vote returns to its own chunk)."""
    emb, mask, spacing = field("2d-aniso")
    _check(emb, mask, spacing, mask.shape, dict(min_distance=1.0, min_votes=0, smooth_radius=0, max_distance=None,
                                                opening_radius=None))


@pytest.mark.parametrize("name,chunks", [("2d", (2, 3)), ("2d-aniso", (3, 2)),
                                         pytest.param("3d-aniso", (2, 3, 4), marks=pytest.mark.slow)])
def test_chunks_far_smaller_than_the_halos(name, chunks):
    """Chunks of a few pixels: a peak region spans several chunks per axis, a chunk's border
    faces are the whole chunk, and votes are routed to many regions at once."""
    emb, mask, spacing = field(name)
    _check(emb, mask, spacing, chunks, dict(min_distance=7.0, min_votes=1, smooth_radius=2, max_distance=None,
                                            opening_radius=2.6))


def test_label_tasks_read_only_their_own_chunk():
    """Memory stays bounded by the chunk: each task of the returned labels reads its own chunk of
    the embeddings and mask (and the shared centre index), never another task's result, so dask
    holds no chunk in memory for a neighbour."""
    import dask.array as da
    from dask.core import get_dependencies

    emb, mask, spacing = field("2d")
    e, m = da.from_array(emb, chunks=(2, 10, 13)), da.from_array(mask, chunks=(10, 13))
    labels, _ = large.embeddings_to_labels(e, m, 4.0, spacing=spacing, opening_radius=1.5)
    graph = dict(labels.__dask_graph__())
    tasks = [k for k in graph if isinstance(k, str) and k.startswith("_then_release_memory")]
    assert len(tasks) == m.npartitions
    emb_name, mask_name = e.name, m.name
    for key in tasks:
        deps = get_dependencies(graph, key)
        chunk_reads = sorted((d for d in deps if isinstance(d, tuple)), key=len)
        assert [d[0] for d in chunk_reads] == [mask_name, emb_name], deps
        assert chunk_reads[0][1:] == chunk_reads[1][2:]  # the same block of both
        assert all(isinstance(d, tuple) or d.startswith("centre-index-") for d in deps), deps


def test_votes_are_global_and_additive():
    """The chunked histogram is hough_votes of the whole image, votes across chunks included."""
    import dask.array as da

    emb, mask, spacing = field("2d")
    votes = large.vote_histogram(da.from_array(emb, chunks=(2, 7, 9)), da.from_array(mask, chunks=(7, 9)),
                                 spacing).compute(scheduler="sync")
    np.testing.assert_array_equal(votes, ops.hough_votes(emb, mask, spacing))


def test_far_votes_and_no_centres():
    """Every pixel voting into one far corner chunk; and a mask with no foreground at all."""
    shape = (24, 30)
    emb = np.zeros((2,) + shape, np.float32)
    emb[0], emb[1] = 22.0, 28.6
    mask = np.ones(shape, bool)
    for m in (mask, np.zeros(shape, bool)):
        expected = ops.embeddings_to_labels(emb, m, 3.0, opening_radius=1.5)
        labels, centres = large.embeddings_to_labels(emb, m, 3.0, opening_radius=1.5, chunks=(5, 4))
        np.testing.assert_array_equal(labels.compute(scheduler="sync"), expected)
        assert len(centres) == int(m.any())


def test_numpy_input_and_bad_arguments():
    emb, mask, spacing = field("2d")
    labels, _ = large.embeddings_to_labels(emb, mask, 3.0, spacing=spacing, chunks=(16, 16))
    assert labels.chunks == ((16, 16, 8), (16, 16, 16, 4))
    with pytest.raises(ValueError, match="mask"):
        large.embeddings_to_labels(emb, mask[:-1], 3.0)
    with pytest.raises(ValueError, match="embeddings"):
        large.embeddings_to_labels(emb[0], mask, 3.0)
    with pytest.raises(ValueError, match="min_distance"):
        large.embeddings_to_labels(emb, mask, -1.0)



@pytest.mark.parametrize("spacing", [None, (0.5, 1.3)])
@pytest.mark.parametrize("max_distance", [None, 3.0])
def test_assignment_with_ties_outliers_and_remote_centres(spacing, max_distance):
    """assign_labels equals the whole-image op when embeddings sit exactly between centres (ties),
    far outside the image, or are NaN/inf, and most centres lie in other chunks."""
    rng = np.random.default_rng(7)
    shape = (23, 31)
    sp = np.asarray(spacing or (1.0, 1.0))
    centres = np.stack([rng.integers(0, n, 40) for n in shape], 1).astype(np.int64)
    centres = centres[np.lexsort(centres.T[::-1])]
    pos = centres * sp
    # Midpoints of random centre pairs (exact ties in float64 and often in float32), plus noise.
    a, b = rng.integers(0, len(centres), (2,) + shape)
    emb = ((pos[a] + pos[b]) / 2).transpose(2, 0, 1).astype(np.float32)
    noisy = rng.random(shape) < 0.3
    emb[:, noisy] += rng.normal(0, 2.0, (2, int(noisy.sum()))).astype(np.float32)
    emb[0, rng.random(shape) < 0.03] = 1e6
    emb[1, rng.random(shape) < 0.02] = np.nan
    emb[0, rng.random(shape) < 0.02] = -np.inf
    mask = rng.random(shape) < 0.9
    expected = ops.assign_to_centres(emb, mask, centres, spacing, max_distance)
    for chunks in [(5, 4), (7, 31), (23, 9)]:
        got = large.assign_labels(emb, mask, centres, spacing, max_distance, chunks=chunks)
        np.testing.assert_array_equal(got.compute(scheduler="sync"), expected, err_msg=str(chunks))
