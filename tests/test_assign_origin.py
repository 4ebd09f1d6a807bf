"""assign_to_centres on a block of a larger image (``origin=``): equal to the reference, and to the
whole-image op restricted to the block, with centres anywhere in the larger image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rdcnet_ext import ops
from rdcnet_ext import reference as ref

from helpers import assert_equal, random_centres, random_embeddings, random_mask, spacing_list

# (larger image shape, spacing, block shape)
BLOCK_GEOMETRIES = [
    ((40, 33), None, (13, 11)),
    ((37, 50), (1.0, 0.4), (9, 20)),
    ((12, 30, 26), (2.0, 1.0, 0.7), (5, 9, 8)),
    ((9, 1, 40), (3.0, 1.0, 1.0), (4, 1, 7)),
]
BLOCK_IDS = ["x".join(map(str, s)) + f"-{sp}" for s, sp, _ in BLOCK_GEOMETRIES]
blocks = pytest.mark.parametrize("image,spacing,block", BLOCK_GEOMETRIES, ids=BLOCK_IDS)


def _tiles(image, block):
    """Slices of the blocks tiling ``image`` (the last ones shorter)."""
    starts = [range(0, n, b) for n, b in zip(image, block)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, image))


@blocks
@pytest.mark.parametrize("k", [1, 5, 120])
@pytest.mark.parametrize("max_distance", [None, 2.5])
def test_block_equals_reference(image, spacing, block, k, max_distance, rng):
    """Random blocks of a larger image; most centres lie outside the block, some far outside."""
    ndim = len(image)
    for _ in range(3):
        origin = [int(rng.integers(0, n - b + 1)) for n, b in zip(image, block)]
        region = tuple(slice(o, o + b) for o, b in zip(origin, block))
        # Embeddings over (and beyond) the whole larger image, as a block's embeddings may point anywhere.
        emb = random_embeddings(image, spacing, rng)[(slice(None),) + region].contiguous()
        mask = random_mask(block, rng, 0.9)
        centres = random_centres(image, k, rng, duplicates=True)
        if k > 1:  # one centre well beyond the larger image
            centres[0] = torch.tensor([3 * n + 5 for n in image])
        expected = ref.assign_to_centres(emb, mask, centres, spacing_list(spacing, ndim), max_distance)
        got = ops.assign_to_centres(emb, mask, centres, spacing, max_distance, origin=origin)
        assert_equal(got, expected, f"labels of the block at {origin}")


@blocks
@pytest.mark.parametrize("k", [0, 1, 40])
def test_blocks_tile_the_whole_image_result(image, spacing, block, k, rng):
    """Assigning every block with the global centres and its origin gives the whole-image labels."""
    emb = random_embeddings(image, spacing, rng)
    mask = random_mask(image, rng, 0.85)
    centres = random_centres(image, k, rng, duplicates=True)
    whole = ops.assign_to_centres(emb, mask, centres, spacing)
    for region in _tiles(image, block):
        origin = [s.start for s in region]
        part = ops.assign_to_centres(emb[(slice(None),) + region].contiguous(), mask[region].contiguous(), centres,
                                     spacing, origin=origin)
        assert_equal(part, whole[region].contiguous(), f"block at {origin}")


def test_ties_in_a_block_go_to_the_lowest_index():
    """Pixels equidistant from centres outside the block take the lowest index."""
    mask = torch.ones((3, 4), dtype=torch.bool)
    emb = torch.zeros((2, 3, 4), dtype=torch.float32)
    emb[0], emb[1] = 50.0, 10.0  # midway between (40, 10) and (60, 10), both outside the block
    for centres, label in [([[60, 10], [40, 10]], 1), ([[40, 10], [60, 10], [50, 0], [50, 20]], 1),
                           ([[0, 0], [60, 10], [40, 10]], 2)]:
        got = ops.assign_to_centres(emb, mask, torch.tensor(centres), origin=[100, 100])
        assert got.unique().tolist() == [label], centres


def test_numpy_inputs_and_array_origin(rng):
    image, block, origin = (30, 24), (8, 6), np.array([11, 9])
    emb = random_embeddings(image, None, rng)[:, 11:19, 9:15].numpy().copy()
    mask = np.ones(block, bool)
    centres = random_centres(image, 25, rng).numpy()
    got = ops.assign_to_centres(emb, mask, centres, origin=origin)
    assert isinstance(got, np.ndarray)
    assert_equal(got, ref.assign_to_centres(torch.from_numpy(emb), torch.from_numpy(mask), torch.from_numpy(centres)),
                 "labels")


def test_without_origin_centres_must_lie_in_the_image():
    emb, mask = torch.zeros((2, 4, 4)), torch.ones((4, 4), dtype=torch.bool)
    with pytest.raises(ValueError, match="centres"):
        ops.assign_to_centres(emb, mask, torch.tensor([[4, 0]]))
    assert ops.assign_to_centres(emb, mask, torch.tensor([[4, 0]]), origin=(0, 0)).unique().tolist() == [1]


@pytest.mark.parametrize("origin,exc", [
    ((1,), ValueError), ((0, 0, 0), ValueError), ((0, -1), ValueError), ((0.0, 1), ValueError),
    ((True, 0), ValueError), (5, TypeError), ("ab", ValueError), (np.zeros((2, 1), np.int64), ValueError),
])
def test_bad_origin(origin, exc):
    emb, mask = torch.zeros((2, 4, 4)), torch.ones((4, 4), dtype=torch.bool)
    with pytest.raises(exc, match="origin"):
        ops.assign_to_centres(emb, mask, torch.tensor([[1, 1]]), origin=origin)


def test_origin_centres_must_be_non_negative():
    emb, mask = torch.zeros((2, 4, 4)), torch.ones((4, 4), dtype=torch.bool)
    with pytest.raises(ValueError, match=r"centres.*>= 0"):
        ops.assign_to_centres(emb, mask, torch.tensor([[1, 1], [-1, 3]]), origin=(2, 2))


def test_origin_through_the_dispatcher(rng):
    """The registered custom op (torch.compile's path) takes the origin too."""
    image, region = (20, 16), (slice(5, 12), slice(3, 9))
    emb = random_embeddings(image, None, rng)[(slice(None),) + region].contiguous()
    mask = random_mask((7, 6), rng, 0.9)
    centres = random_centres(image, 12, rng)
    got = torch.ops.rdcnet_ext.assign_to_centres(emb, mask, centres, [1.0, 1.0], None, [5, 3])
    assert_equal(got, ref.assign_to_centres(emb, mask, centres), "labels")
    torch.library.opcheck(torch.ops.rdcnet_ext.assign_to_centres.default,
                          (emb, mask, centres, [1.0, 1.0], None, [5, 3]))
