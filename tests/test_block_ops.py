"""The block ops of chunked post-processing: ``hough_votes_block`` (a block's votes, routed in
and out of the block) and ``CentreIndex`` (centres prepared once for ``assign_to_centres`` on many
blocks). Each equals its reference and, summed or tiled over blocks, the whole-image op."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch

from rdcnet_ext import _launch, ops
from rdcnet_ext import reference as ref

from helpers import (
    GEOMETRY_IDS,
    RANDOM_GEOMETRIES,
    assert_equal,
    random_centres,
    random_embeddings,
    random_mask,
    spacing_list,
)

geometries = pytest.mark.parametrize("shape,spacing", RANDOM_GEOMETRIES, ids=GEOMETRY_IDS)


def _random_block(shape, rng):
    """(origin, slices) of a random non-empty block of ``shape``: at a corner, an edge or inside."""
    lo = [int(rng.integers(0, n)) for n in shape]
    hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
    return lo, tuple(slice(a, b) for a, b in zip(lo, hi))


def _tiles(shape, block):
    for corner in itertools.product(*[range(0, n, b) for n, b in zip(shape, block)]):
        yield list(corner), tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, shape))


# ---- hough_votes_block ---------------------------------------------------------------------------


@geometries
@pytest.mark.parametrize("fraction", [0.0, 0.6, 1.0])
def test_hough_votes_block_equals_reference(shape, spacing, fraction, rng):
    """Random blocks; embeddings over and beyond the image, on .5 boundaries, some non-finite."""
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, fraction)
    sp = spacing_list(spacing, len(shape))
    for _ in range(4):
        origin, region = _random_block(shape, rng)
        e, m = emb[(slice(None),) + region].contiguous(), mask[region].contiguous()
        got = ops.hough_votes_block(e, m, spacing, shape, origin)
        votes, bins, counts = ref.hough_votes_block(e, m, sp, shape, origin)
        assert_equal(got.votes, votes, f"votes of the block at {origin}")
        assert_equal(got.outside_bins, bins, "outside bins")
        assert_equal(got.outside_counts, counts, "outside counts")
        # The torch implementation the CUDA path uses, run here on CPU tensors.
        own = torch.zeros(m.shape, dtype=torch.int32)
        t_bins, t_counts = _launch._hough_votes_block_torch(e, m, sp, shape, origin, own)
        assert_equal(own, votes, "votes (torch path)")
        assert_equal(t_bins, bins, "outside bins (torch path)")
        assert_equal(t_counts, counts, "outside counts (torch path)")


@geometries
def test_hough_votes_block_any_box(shape, spacing, rng):
    """The dense box need not be where the block lies: any box in the image, empty ones included."""
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, 0.8)
    sp = spacing_list(spacing, len(shape))
    for _ in range(4):
        _, pixels = _random_block(shape, rng)
        origin = [int(rng.integers(0, n + 1)) for n in shape]
        box = [int(rng.integers(0, n - o + 1)) for n, o in zip(shape, origin)]
        e, m = emb[(slice(None),) + pixels].contiguous(), mask[pixels].contiguous()
        got = ops.hough_votes_block(e, m, spacing, shape, origin, box)
        expected = ref.hough_votes_block(e, m, sp, shape, origin, box)
        for g, x, what in zip(got, expected, ("votes", "outside bins", "outside counts")):
            assert_equal(g, x, f"{what}, box {box} at {origin}")
        own = torch.zeros(box, dtype=torch.int32)
        t_bins, t_counts = _launch._hough_votes_block_torch(e, m, sp, shape, origin, own)
        assert_equal(own, expected[0], "votes (torch path)")
        assert_equal(t_bins, expected[1], "outside bins (torch path)")


@pytest.mark.parametrize("shape,spacing,block", [((31, 29), None, (7, 5)), ((40, 17), (1.0, 0.5), (40, 3)),
                                                 ((10, 20, 15), (2.0, 1.0, 0.7), (3, 8, 4)),
                                                 ((7, 9, 11), None, (1, 1, 1))])
def test_blocks_sum_to_the_whole_histogram(shape, spacing, block, rng):
    """Every tile's own votes plus the votes other tiles send it equal hough_votes of the image."""
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, 0.8)
    total = torch.zeros(shape, dtype=torch.int64)
    for origin, region in _tiles(shape, block):
        r = ops.hough_votes_block(emb[(slice(None),) + region].contiguous(), mask[region].contiguous(), spacing,
                                  shape, origin)
        total[region] += r.votes
        assert bool((r.outside_counts > 0).all()) and bool((r.outside_bins[1:] > r.outside_bins[:-1]).all())
        total.view(-1).index_add_(0, r.outside_bins, r.outside_counts)
    assert_equal(total.to(torch.int32), ops.hough_votes(emb, mask, spacing), "sum of the blocks' votes")


def test_hough_votes_block_defaults_and_numpy():
    """Without shape and origin it is hough_votes of the block with nothing outside; NumPy in,
    NumPy out."""
    rng = np.random.default_rng(3)
    emb = (rng.uniform(-5, 25, (2, 20, 20))).astype(np.float32)
    mask = rng.random((20, 20)) < 0.7
    r = ops.hough_votes_block(emb, mask, 0.5)
    assert isinstance(r.votes, np.ndarray) and isinstance(r.outside_bins, np.ndarray)
    np.testing.assert_array_equal(r.votes, ops.hough_votes(emb, mask, 0.5))
    assert r.outside_bins.size == 0 and r.outside_counts.dtype == np.int64
    # With an origin and no shape, the image ends where the block does.
    shifted = ops.hough_votes_block(emb + 5.0, mask, 1.0, origin=(5, 5))
    assert shifted.votes.shape == (20, 20) and shifted.outside_bins.dtype == np.int64


def test_hough_votes_block_bad_arguments():
    emb, mask = np.zeros((2, 4, 5), np.float32), np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="shape: expected 2 positive ints"):
        ops.hough_votes_block(emb, mask, shape=(4,))
    with pytest.raises(ValueError, match="shape: expected 2 positive ints"):
        ops.hough_votes_block(emb, mask, shape=(4, 0))
    with pytest.raises(TypeError, match="shape"):
        ops.hough_votes_block(emb, mask, shape=4)
    with pytest.raises(ValueError, match="does not fit"):
        ops.hough_votes_block(emb, mask, shape=(10, 10), origin=(7, 0))
    with pytest.raises(ValueError, match="does not fit"):
        ops.hough_votes_block(emb, mask, shape=(10, 10), origin=(0, 0), box_shape=(11, 2))
    with pytest.raises(ValueError, match="box_shape: expected 2 non-negative ints"):
        ops.hough_votes_block(emb, mask, shape=(10, 10), box_shape=(-1, 2))
    with pytest.raises(ValueError, match="shape: needed"):
        ops.hough_votes_block(emb, mask, box_shape=(0, 2))
    empty = ops.hough_votes_block(emb, mask, shape=(10, 10), box_shape=(0, 3))
    assert empty.votes.shape == (0, 3)
    with pytest.raises(ValueError, match="origin"):
        ops.hough_votes_block(emb, mask, shape=(10, 10), origin=(-1, 0))
    with pytest.raises(ValueError, match="shorter than 2\\*\\*31"):
        ops.hough_votes_block(emb, mask, shape=(4, 2**31))
    with pytest.raises(ValueError, match="spacing"):
        ops.hough_votes_block(emb, mask, spacing=0.0)


# ---- CentreIndex ---------------------------------------------------------------------------------


@geometries
@pytest.mark.parametrize("k", [0, 1, 9, 200])
@pytest.mark.parametrize("max_distance", [None, 2.0])
def test_centre_index_blocks_equal_the_whole_image(shape, spacing, k, max_distance, rng):
    """Labels of random blocks over a CentreIndex equal the whole-image labels there (ties,
    duplicate centres, embeddings beyond the image and non-finite ones included)."""
    emb = random_embeddings(shape, spacing, rng)
    mask = random_mask(shape, rng, 0.85)
    centres = random_centres(shape, k, rng, duplicates=True)
    whole = ops.assign_to_centres(emb, mask, centres, spacing, max_distance)
    assert_equal(whole, ref.assign_to_centres(emb, mask, centres, spacing_list(spacing, len(shape)), max_distance),
                 "whole image vs reference")
    index = ops.CentreIndex(centres, shape, spacing)
    assert len(index) == k and index.shape == tuple(shape)
    assert_equal(ops.assign_to_centres(emb, mask, index, max_distance=max_distance), whole, "whole image via index")
    for _ in range(4):
        origin, region = _random_block(shape, rng)
        got = ops.assign_to_centres(emb[(slice(None),) + region].contiguous(), mask[region].contiguous(), index,
                                    max_distance=max_distance, origin=origin)
        assert_equal(got, whole[region], f"block at {origin}")


def test_centre_index_numpy_pickle_and_repr():
    rng = np.random.default_rng(0)
    shape = (30, 40)
    emb = random_embeddings(shape, (1.0, 0.5), rng).numpy()
    mask = rng.random(shape) < 0.9
    centres = random_centres(shape, 12, rng).numpy()
    index = ops.CentreIndex(centres, shape, (1.0, 0.5))
    again = pickle.loads(pickle.dumps(index))  # dask ships it to workers
    got = ops.assign_to_centres(emb, mask, again, spacing=(1.0, 0.5))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, ops.assign_to_centres(emb, mask, centres, (1.0, 0.5)))
    assert "12 centres" in repr(index) and index.device == torch.device("cpu") and index.ndim == 2
    assert index.to("cpu").shape == shape


def test_centre_index_bad_arguments():
    centres = np.array([[1, 2], [3, 4]])
    emb, mask = np.zeros((2, 4, 5), np.float32), np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="inside the image"):
        ops.CentreIndex(centres, (3, 10))
    with pytest.raises(ValueError, match="centres: expected shape"):
        ops.CentreIndex(np.zeros((3, 4), np.int64), (3, 10))
    with pytest.raises(TypeError, match="centres: expected integer"):
        ops.CentreIndex(centres.astype(np.float32), (10, 10))
    with pytest.raises(ValueError, match="shape"):
        ops.CentreIndex(centres, (10, 10, 10))
    index = ops.CentreIndex(centres, (10, 10), (1.0, 2.0))
    with pytest.raises(ValueError, match="spacing: the CentreIndex was built with spacing"):
        ops.assign_to_centres(emb, mask, index, spacing=1.0)
    assert ops.assign_to_centres(emb, mask, index, spacing=(1.0, 2.0)).shape == (4, 5)
    with pytest.raises(ValueError, match="does not fit"):
        ops.assign_to_centres(emb, mask, index, origin=(8, 0))
    with pytest.raises(ValueError, match="3D"):
        ops.assign_to_centres(np.zeros((3, 2, 2, 2), np.float32), np.ones((2, 2, 2), bool), index)
    with pytest.raises(ValueError, match="max_distance"):
        ops.assign_to_centres(emb, mask, index, max_distance=-1.0)
