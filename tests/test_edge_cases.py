"""Edge cases of DESIGN.md's op semantics, with hand-computed expectations (not only the reference):
empty masks, one-pixel and zero-size images, everything foreground, borders and rounding, plateaus,
anisotropic windows, non-contiguous inputs, K = 0 / 1 centres, assignment ties, the opening's
border rule and its never-grow/never-merge guarantees, label dtypes, min_votes = 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdcnet_ext import ops
from rdcnet_ext import reference as ref

from helpers import ANISO_3D, Case, assert_equal, blocky_labels, random_embeddings, random_mask

NAN, INF = float("nan"), float("inf")


def emb_from_points(points, shape) -> torch.Tensor:
    """Embeddings ``(ndim, *shape)`` from a list of per-pixel points (row-major order)."""
    e = torch.tensor(points, dtype=torch.float32).reshape(*shape, len(shape))
    return e.permute(len(shape), *range(len(shape))).contiguous()


def identity_embeddings(shape, spacing=None) -> torch.Tensor:
    """Every pixel points at itself (physical units)."""
    sp = [1.0] * len(shape) if spacing is None else list(spacing)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * s for n, s in zip(shape, sp)], indexing="ij")
    return torch.stack(grids)


def constant_embeddings(shape, point) -> torch.Tensor:
    return torch.tensor(point, dtype=torch.float32).reshape(-1, *[1] * len(shape)).expand(len(shape), *shape).clone()


SHAPES = [(1, 1), (1, 7), (6, 1), (9, 8), (1, 1, 1), (3, 1, 5), (4, 6, 5)]
shapes = pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])


# ---- empty masks, one pixel, everything foreground ----------------------------------------------


@shapes
def test_empty_mask(shape, rng):
    emb = random_embeddings(shape, None, rng, nonfinite=0.0)
    mask = torch.zeros(shape, dtype=torch.bool)
    votes = ops.hough_votes(emb, mask)
    assert votes.dtype == torch.int32 and votes.shape == shape and not votes.any()
    peaks = ops.find_peaks(votes, 1.0)
    assert peaks.dtype == torch.int64 and peaks.shape == (0, len(shape))
    centres = torch.zeros((1, len(shape)), dtype=torch.int64)
    labels = ops.assign_to_centres(emb, mask, centres)
    assert labels.dtype == torch.int32 and not labels.any()
    assert not ops.embeddings_to_labels(emb, mask, 1.0, opening_radius=1.0).any()


@pytest.mark.parametrize("ndim", [2, 3])
def test_one_pixel_image(ndim):
    shape = (1,) * ndim
    mask = torch.ones(shape, dtype=torch.bool)
    for point, expect in [(0.0, 1), (0.49, 1), (-0.5, 1), (0.5, 1), (0.51, 0), (-0.51, 0), (NAN, 0)]:
        emb = torch.full((ndim, *shape), point)
        votes = ops.hough_votes(emb, mask)
        assert votes.reshape(-1).tolist() == [expect], point
        assert_equal(votes, ref.hough_votes(emb, mask), f"votes at {point}")
        labels = ops.embeddings_to_labels(emb, mask, 1.0, opening_radius=3.0)
        assert labels.reshape(-1).tolist() == [expect], point
    assert ops.find_peaks(torch.zeros(shape, dtype=torch.int32), 1.0, min_votes=0).tolist() == [[0] * ndim]
    assert ops.find_peaks(torch.zeros(shape, dtype=torch.int32), 1.0, min_votes=1).shape == (0, ndim)


@pytest.mark.parametrize("shape", [(9, 12), (5, 7, 6)])
def test_single_foreground_pixel(shape, rng):
    mask = torch.zeros(shape, dtype=torch.bool)
    pixel = tuple(n // 2 for n in shape)
    mask[pixel] = True
    emb = identity_embeddings(shape)
    votes = ops.hough_votes(emb, mask)
    assert int(votes.sum()) == 1 and votes[pixel] == 1
    assert ops.find_peaks(votes, 3.0).tolist() == [list(pixel)]
    labels = ops.embeddings_to_labels(emb, mask, 3.0)
    assert labels[pixel] == 1 and int((labels != 0).sum()) == 1
    # An opening removes a one-pixel object unless the ball is a single pixel.
    assert not ops.label_opening(labels, 1.0).any()
    assert_equal(ops.label_opening(labels, 0.9), labels, "opening by a point")


@pytest.mark.parametrize("shape,spacing", [((20, 24), None), ((8, 10, 12), ANISO_3D)])
def test_everything_foreground_one_object(shape, spacing):
    sp = [1.0] * len(shape) if spacing is None else list(spacing)
    centre = [n // 3 for n in shape]
    emb = constant_embeddings(shape, [c * s for c, s in zip(centre, sp)])
    mask = torch.ones(shape, dtype=torch.bool)
    votes = ops.hough_votes(emb, mask, spacing)
    assert int(votes.sum()) == votes.numel() and int(votes[tuple(centre)]) == votes.numel()
    labels = ops.embeddings_to_labels(emb, mask, 2.0, spacing, opening_radius=3.0)
    # One object filling the image: the opening keeps all of it (no border shaving).
    assert_equal(labels, torch.ones(shape, dtype=torch.int32), "labels")


# ---- votes: borders, outside, rounding half to even, non-finite ----------------------------------


@pytest.mark.parametrize(
    "value,n,expected_bin",
    [
        (0.0, 10, 0), (-0.5, 10, 0), (-0.5000001, 10, None), (0.5, 10, 0), (1.5, 10, 2), (2.5, 10, 2),
        (3.5, 10, 4), (8.5, 10, 8), (9.0, 10, 9), (9.4999, 10, 9), (9.5, 10, None), (8.5, 9, 8),
        (7.5, 9, 8), (-3.0, 10, None), (1e30, 10, None), (-1e30, 10, None), (NAN, 10, None),
        (INF, 10, None), (-INF, 10, None),
    ],
)
@pytest.mark.parametrize("axis", [0, 1])
def test_vote_bins_round_half_to_even_and_drop_outside(value, n, expected_bin, axis):
    shape = [3, 3]
    shape[axis] = n
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[1, 1] = True
    emb = torch.ones((2, *shape))  # the other axis points at 1
    emb[axis, 1, 1] = value
    votes = ops.hough_votes(emb, mask)
    if expected_bin is None:
        assert not votes.any()
    else:
        where = [1, 1]
        where[axis] = expected_bin
        assert votes[tuple(where)] == 1 and int(votes.sum()) == 1
    assert_equal(votes, ref.hough_votes(emb, mask), "votes")


@pytest.mark.parametrize("value,spacing,expected_bin", [
    (0.75, 0.5, 2), (1.25, 0.5, 2), (2.6, 0.26, 10), (4.0, 2.0, 2), (5.0, 2.0, 2), (7.0, 2.0, 4), (0.99, 2.0, 0)])
def test_vote_bins_use_spacing(value, spacing, expected_bin):
    wide_mask = torch.zeros((1, 16), dtype=torch.bool)
    wide_mask[0, 0] = True
    wide = torch.zeros((2, 1, 16))
    wide[1, 0, 0] = value
    votes = ops.hough_votes(wide, wide_mask, (1.0, spacing))
    assert torch.nonzero(votes).tolist() == [[0, expected_bin]]


def test_votes_accumulate_and_non_finite_axes_drop_the_vote():
    shape = (4, 5)
    mask = torch.ones(shape, dtype=torch.bool)
    emb = constant_embeddings(shape, [2.0, 3.0])
    emb[0, 0, 0] = NAN
    emb[1, 0, 1] = INF
    emb[0, 0, 2] = -INF
    emb[1, 3, 4] = 7.0  # outside along one axis only
    votes = ops.hough_votes(emb, mask)
    assert int(votes[2, 3]) == 20 - 4 and int(votes.sum()) == 16


# ---- find_peaks: plateaus, windows, borders, min_votes = 0 ---------------------------------------


def test_plateau_constant_image_single_peak_at_origin():
    votes = torch.ones((5, 7), dtype=torch.int32)
    assert ops.find_peaks(votes, 1.0).tolist() == [[0, 0]]
    assert ops.find_peaks(votes.reshape(5, 7, 1).expand(5, 7, 3).contiguous(), 1.0).tolist() == [[0, 0, 0]]
    # Window 0: every pixel is its own window.
    assert ops.find_peaks(votes, 0.0).shape == (35, 2)
    assert ops.find_peaks(votes, 0.99).shape == (35, 2)


def test_plateau_tie_break_row_major():
    votes = torch.zeros((6, 8), dtype=torch.int32)
    votes[2, 3] = votes[2, 4] = 3       # horizontal pair: the left one
    votes[4, 6] = votes[5, 5] = 2       # diagonal pair: the upper one (row-major first)
    votes[0, 7] = 1
    got = ops.find_peaks(votes, 1.0).tolist()
    assert got == [[0, 7], [2, 3], [4, 6]]
    assert_equal(ops.find_peaks(votes, 1.0), ref.find_peaks(votes, 1.0), "peaks")


def test_equal_peaks_farther_than_window_both_survive():
    votes = torch.zeros((3, 12), dtype=torch.int32)
    votes[1, 2] = votes[1, 5] = 4
    assert ops.find_peaks(votes, 2.0).tolist() == [[1, 2], [1, 5]]
    assert ops.find_peaks(votes, 3.0).tolist() == [[1, 2]]


def test_peak_window_is_anisotropic():
    votes = torch.zeros((6, 10), dtype=torch.int32)
    votes[2, 4], votes[3, 4] = 5, 6  # adjacent rows, same column
    votes[0, 0], votes[0, 2] = 5, 6  # same row, two columns apart
    # spacing (2, 0.5), min_distance 1: window (0 rows, 2 columns).
    assert ops.find_peaks(votes, 1.0, spacing=(2.0, 0.5)).tolist() == [[0, 2], [2, 4], [3, 4]]
    # isotropic: window 1 -> rows 2 and 3 compete, columns 0 and 2 do not.
    assert ops.find_peaks(votes, 1.0).tolist() == [[0, 0], [0, 2], [3, 4]]


def test_peaks_on_the_border_and_windows_clipped():
    votes = torch.zeros((5, 5, 5), dtype=torch.int32)
    for corner in [(0, 0, 0), (4, 4, 4), (0, 4, 0)]:
        votes[corner] = 2
    votes[2, 2, 2] = 1
    assert ops.find_peaks(votes, 1.5).tolist() == [[0, 0, 0], [0, 4, 0], [2, 2, 2], [4, 4, 4]]
    assert ops.find_peaks(votes, 1.5, min_votes=2).tolist() == [[0, 0, 0], [0, 4, 0], [4, 4, 4]]
    assert ops.find_peaks(votes, 10.0).tolist() == [[0, 0, 0]]


def test_smoothing_box_sums_and_window_compare_scores():
    votes = torch.zeros((7, 7), dtype=torch.int32)
    votes[3, 2] = votes[3, 4] = 3  # the box sum with radius 1 is highest between them
    votes[3, 3] = 1
    assert ops.find_peaks(votes, 1.0).tolist() == [[3, 2], [3, 4]]
    # Box sums of 7 at (2..4, 3): a vertical plateau, its first pixel wins.
    assert ops.find_peaks(votes, 1.0, smooth_radius=1).tolist() == [[2, 3]]
    assert ops.find_peaks(votes, 1.0, min_votes=8, smooth_radius=1).shape == (0, 2)
    assert ops.find_peaks(votes, 1.0, min_votes=7, smooth_radius=1).tolist() == [[2, 3]]
    votes[4, 3] = 1  # breaks the plateau: box sums 7, 8, 8 -> (3, 3)
    assert ops.find_peaks(votes, 1.0, smooth_radius=1).tolist() == [[3, 3]]


def test_min_votes_zero():
    votes = torch.zeros((4, 9), dtype=torch.int32)
    votes[3, 8] = 1
    # Zero-vote pixels qualify: the connected plateau of zeros yields its row-major-first pixel
    # (every other zero has an earlier zero next to it).
    got = ops.find_peaks(votes, 2.0, min_votes=0)
    assert got.tolist() == [[0, 0], [3, 8]]
    assert_equal(got, ref.find_peaks(votes, 2.0, 0), "peaks")
    assert ops.find_peaks(votes, 2.0, min_votes=1).tolist() == [[3, 8]]
    # Full pipeline on an empty mask with min_votes=0: centres exist but no pixel is labelled.
    emb = identity_embeddings((4, 9))
    assert not ops.embeddings_to_labels(emb, torch.zeros((4, 9), dtype=torch.bool), 2.0, min_votes=0).any()


# ---- assign_to_centres: K = 0, one centre, ties, max_distance ------------------------------------


@shapes
def test_no_centres_gives_background(shape, rng):
    emb = random_embeddings(shape, None, rng)
    mask = torch.ones(shape, dtype=torch.bool)
    labels = ops.assign_to_centres(emb, mask, torch.zeros((0, len(shape)), dtype=torch.int64))
    assert_equal(labels, torch.zeros(shape, dtype=torch.int32), "labels")


@pytest.mark.parametrize("shape,spacing", [((9, 8), None), ((5, 6, 7), ANISO_3D), ((1, 1), None)])
def test_single_centre_takes_every_finite_masked_pixel(shape, spacing, rng):
    emb = random_embeddings(shape, spacing, rng, nonfinite=0.1)
    mask = random_mask(shape, rng, 0.7)
    centre = torch.tensor([[n - 1 for n in shape]])
    labels = ops.assign_to_centres(emb, mask, centre, spacing)
    expected = (mask & torch.isfinite(emb).all(0)).to(torch.int32)
    assert_equal(labels, expected, "labels")


def test_assignment_ties_go_to_the_lowest_index():
    shape = (3, 9)
    mask = torch.ones(shape, dtype=torch.bool)
    emb = constant_embeddings(shape, [0.0, 2.0])  # equidistant to (0, 0) and (0, 4)
    for centres, expected in [
        ([[2, 8], [0, 0], [0, 4]], 2),
        ([[2, 8], [0, 4], [0, 0]], 2),
        ([[0, 4], [0, 0]], 1),
        ([[1, 1], [1, 3], [0, 4], [0, 0]], 1),  # (1, 1) and (1, 3) are nearer, tied, k=0 wins
        ([[2, 2], [1, 2], [1, 2]], 2),           # duplicate centres: the first copy
    ]:
        labels = ops.assign_to_centres(emb, mask, torch.tensor(centres))
        assert labels.unique().tolist() == [expected], centres


def test_assignment_ties_with_anisotropic_spacing():
    spacing = (2.0, 0.5)
    shape = (6, 6)
    mask = torch.ones(shape, dtype=torch.bool)
    # centres (0, 4), (1, 0), (0, 0) are at physical (0, 2), (2, 0), (0, 0); (5, 5) is far.
    centres = torch.tensor([[5, 5], [0, 4], [1, 0], [0, 0]])
    for point, expected in [((0.0, 1.0), 2), ((1.0, 0.0), 3), ((1.0, 1.0), 2), ((0.0, 0.9), 4)]:
        emb = constant_embeddings(shape, point)
        got = ops.assign_to_centres(emb, mask, centres, spacing)
        assert got.unique().tolist() == [expected], point
        assert_equal(got, ref.assign_to_centres(emb, mask, centres, spacing), f"labels at {point}")


def test_max_distance_is_inclusive():
    mask = torch.ones((1, 3), dtype=torch.bool)
    emb = torch.tensor([[[3.0, 3.0, 0.0]], [[4.0, 4.001, 0.0]]])  # distances 5, >5, 0 from (0, 0)
    centres = torch.tensor([[0, 0]])
    assert ops.assign_to_centres(emb, mask, centres, max_distance=5.0).tolist() == [[1, 0, 1]]
    assert ops.assign_to_centres(emb, mask, centres, max_distance=0.0).tolist() == [[0, 0, 1]]
    assert ops.assign_to_centres(emb, mask, centres, max_distance=INF).tolist() == [[1, 1, 1]]


def test_far_outside_embeddings_still_find_the_nearest_centre():
    mask = torch.zeros((10, 10), dtype=torch.bool)
    mask[0, :4] = True
    emb = torch.zeros((2, 10, 10))
    emb[:, 0, :4] = torch.tensor([[-1e6, 1e6, 5.0, 4.0], [0.0, 9.0, -1e7, 1e7]])
    centres = torch.tensor([[9, 9], [0, 0], [9, 0], [0, 9], [5, 5]])
    labels = ops.assign_to_centres(emb, mask, centres)
    assert labels[0, :4].tolist() == [2, 1, 3, 4] and not labels[1:].any() and not labels[0, 4:].any()
    assert_equal(labels, ref.assign_to_centres(emb, mask, centres), "labels")


# ---- label_opening: border, subset, never merge/grow, dtypes -------------------------------------


def test_opening_does_not_shave_objects_touching_the_border():
    # Radius 1.5 on a unit grid is the 3x3 square, so rectangles of at least 3x3 survive whole.
    labels = torch.zeros((12, 14), dtype=torch.int32)
    labels[:, :5] = 1          # touches three sides
    labels[10:, 10:] = 2       # 2 rows thick, in the bottom-right corner: outside fills it up
    labels[0:2, 11:] = 5       # 2 rows thick along the top: likewise
    labels[8:10, 7:9] = 3      # 2x2 interior block: smaller than the ball, removed
    labels[3:6, 8:11] = 4      # 3x3 interior block: exactly the ball, kept
    out = ops.label_opening(labels, 1.5)
    expected = labels.clone()
    expected[labels == 3] = 0
    assert_equal(out, expected, "opened")
    assert_equal(out, ref.label_opening(labels, 1.5), "opened vs reference")
    # A disk rounds convex corners, but only those inside the image.
    disk = ops.label_opening(labels, 2.0)
    assert bool((disk[:, :5] == 1).all()), "the strip touching three sides was shaved"
    assert not (disk == 4).any(), "the 3x3 block cannot hold the radius-2 disk"
    assert disk[11, 13] == 2 and disk[0, 13] == 5, "corners at the image's corners were rounded"
    assert_equal(disk, ref.label_opening(labels, 2.0), "disk opening vs reference")


def test_opening_removes_thin_structures_and_keeps_thick_ones():
    labels = torch.zeros((15, 15), dtype=torch.int64)
    labels[2:13, 2:13] = 7
    labels[7, 13:] = 7  # a one-pixel-wide spur reaching the border
    out = ops.label_opening(labels, 1.5)  # the 3x3 square
    expected = labels.clone()
    expected[7, 13:] = 0
    assert_equal(out, expected, "opened")


def test_opening_by_a_single_pixel_ball_is_the_identity(rng):
    labels = blocky_labels((9, 10, 11), rng, 1, 5, negative=True)
    for radius, spacing in [(0.5, None), (1.9, (2.0, 2.0, 2.0)), (0.25, ANISO_3D)]:
        assert_equal(ops.label_opening(labels, radius, spacing), labels, f"radius {radius}")


@pytest.mark.parametrize("shape,spacing", [((30, 31), None), ((10, 24, 22), ANISO_3D), ((1, 40), (1.0, 0.5))])
@pytest.mark.parametrize("radius", [1.0, 2.0, 3.5])
def test_opening_never_grows_merges_or_moves_labels_and_is_idempotent(shape, spacing, radius, rng):
    labels = blocky_labels(shape, rng, 4, 6, negative=True, speckle=0.05)
    out = ops.label_opening(labels, radius, spacing)
    assert out.dtype == labels.dtype and out.shape == labels.shape
    assert bool(((out == labels) | (out == 0)).all()), "a pixel changed to another nonzero label"
    assert set(out.unique().tolist()) <= set(labels.unique().tolist()) | {0}
    assert_equal(ops.label_opening(out, radius, spacing), out, "opening twice")


@pytest.mark.parametrize("shape", [(7, 9), (3, 4, 5)])
def test_whole_image_one_label_survives_any_radius(shape):
    labels = torch.full(shape, 5, dtype=torch.int32)
    # Radii beyond the image too (kept moderate: the cost grows with the ball's volume).
    for radius in (1.0, 3.0, 7.0 if len(shape) == 3 else 20.0):
        assert_equal(ops.label_opening(labels, radius), labels, f"radius {radius}")


TORCH_LABEL_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
NUMPY_LABEL_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


@pytest.mark.parametrize("dtype", TORCH_LABEL_DTYPES, ids=str)
def test_opening_preserves_torch_label_dtype(dtype, rng):
    labels = blocky_labels((16, 18), rng, 4, 3, speckle=0.05)
    top = 100 if dtype in (torch.int8,) else 200 if dtype == torch.uint8 else 30000
    labels = torch.where(labels == 3, top, labels)
    out = ops.label_opening(labels.to(dtype), 1.5)
    assert out.dtype == dtype
    assert_equal(out.to(torch.int64), ref.label_opening(labels, 1.5), "opened")


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32], ids=str)
def test_opening_preserves_torch_unsigned_wide_label_dtype(dtype):
    labels = torch.zeros((8, 8), dtype=torch.int64)
    labels[1:7, 1:7] = 40000
    labels[0, 0] = 3
    out = ops.label_opening(labels.to(dtype), 1.5)
    assert out.dtype == dtype
    assert_equal(out.to(torch.int64), ref.label_opening(labels, 1.5), "opened")


@pytest.mark.parametrize("dtype", NUMPY_LABEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_opening_preserves_numpy_label_dtype(dtype, rng):
    labels = blocky_labels((12, 10, 9), rng, 3, 3, speckle=0.05)
    top = np.iinfo(dtype).max
    labels = torch.where(labels == 3, top if top < 2**62 else 2**62, labels)
    out = ops.label_opening(labels.numpy().astype(dtype), 1.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.astype(np.int64), ref.label_opening(labels, 1.0).numpy())


def test_opening_numpy_uint64_beyond_int64_raises():
    labels = np.full((4, 4), 2**63, dtype=np.uint64)
    with pytest.raises(ValueError, match="labels"):
        ops.label_opening(labels, 1.0)


# ---- zero-size images ---------------------------------------------------------------------------

ZERO_SHAPES = [(0, 5), (5, 0), (0, 0), (0, 3, 4), (2, 0, 3), (3, 4, 0)]


@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=["x".join(map(str, s)) for s in ZERO_SHAPES])
@pytest.mark.parametrize("as_numpy", [False, True], ids=["torch", "numpy"])
def test_zero_size_images_give_empty_results(shape, as_numpy):
    ndim = len(shape)
    emb = torch.zeros((ndim, *shape))
    mask = torch.zeros(shape, dtype=torch.bool)
    votes = torch.zeros(shape, dtype=torch.int32)
    labels = torch.zeros(shape, dtype=torch.int16)
    centres = torch.zeros((0, ndim), dtype=torch.int64)
    conv = (lambda t: t.numpy()) if as_numpy else (lambda t: t)
    kind = np.ndarray if as_numpy else torch.Tensor
    results = {
        "votes": (ops.hough_votes(conv(emb), conv(mask)), shape, "int32"),
        "peaks": (ops.find_peaks(conv(votes), 1.0, 0, None, 1), (0, ndim), "int64"),
        "assign": (ops.assign_to_centres(conv(emb), conv(mask), conv(centres)), shape, "int32"),
        "opening": (ops.label_opening(conv(labels), 1.5), shape, "int16"),
        "pipeline": (ops.embeddings_to_labels(conv(emb), conv(mask), 1.0, None, 0, 1, 2.0, 1.0), shape, "int32"),
    }
    for name, (out, out_shape, dtype) in results.items():
        assert isinstance(out, kind), name
        assert tuple(out.shape) == out_shape, name
        assert str(out.dtype).replace("torch.", "") == dtype, name


# ---- non-contiguous inputs -----------------------------------------------------------------------


def _views(t: torch.Tensor, lead: int):
    """Non-contiguous views equal to `t`: channels-last storage, a strided slice of a bigger
    tensor, and a flip of a flipped copy (negative-stride-like layouts are covered for NumPy)."""
    spatial = list(range(lead, t.dim()))
    perm = list(range(lead)) + spatial[::-1]
    transposed = t.permute(*perm).contiguous().permute(*perm)  # reversed spatial strides
    big = torch.zeros([n * 2 for n in t.shape], dtype=t.dtype)
    big[tuple(slice(None, None, 2) for _ in t.shape)] = t
    strided = big[tuple(slice(None, None, 2) for _ in t.shape)]
    views = {"transposed": transposed, "strided": strided}
    for name, v in views.items():
        torch.testing.assert_close(v, t, rtol=0, atol=0, equal_nan=True)
        assert not v.is_contiguous(), name
    return views


def _numpy_views(a: np.ndarray):
    flipped = np.flip(np.ascontiguousarray(np.flip(a)))  # negative strides everywhere
    fortran = np.asfortranarray(a)
    views = {"negative_strides": flipped, "fortran": fortran}
    for v in views.values():
        np.testing.assert_array_equal(v, a)
    assert any(s < 0 for s in flipped.strides)
    return views


@pytest.mark.parametrize("case", [Case((21, 18), 5, (1.0, 0.5), outliers=0.1, nonfinite=0.05, seed=20),
                                  Case((7, 12, 10), 4, ANISO_3D, outliers=0.1, nonfinite=0.05, seed=21)],
                         ids=["2d", "3d"])
def test_non_contiguous_inputs(case):
    f = case.make()
    sp = f.spacing
    votes = ref.hough_votes(f.embeddings, f.mask, sp)
    centres = ref.find_peaks(votes, 2.0, 1, sp, 1)
    expected = {
        "votes": votes,
        "peaks": centres,
        "assign": ref.assign_to_centres(f.embeddings, f.mask, centres, sp, 3.0),
        "opening": ref.label_opening(f.labels, 1.5, sp),
        "pipeline": ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, sp, 1, 1, 3.0, 1.5),
    }

    def run(emb, mask, votes, centres, labels):
        return {
            "votes": ops.hough_votes(emb, mask, sp),
            "peaks": ops.find_peaks(votes, 2.0, 1, sp, 1),
            "assign": ops.assign_to_centres(emb, mask, centres, sp, 3.0),
            "opening": ops.label_opening(labels, 1.5, sp),
            "pipeline": ops.embeddings_to_labels(emb, mask, 2.0, sp, 1, 1, 3.0, 1.5),
        }

    ev, mv, vv, lv = _views(f.embeddings, 1), _views(f.mask, 0), _views(votes, 0), _views(f.labels, 0)
    cv = centres.T.contiguous().T  # column-major (K, ndim)
    for layout in ev:
        got = run(ev[layout], mv[layout], vv[layout], cv, lv[layout])
        for name in expected:
            assert_equal(got[name], expected[name], f"{name} ({layout})")
    en, mn, vn, ln = (_numpy_views(t.numpy()) for t in (f.embeddings, f.mask, votes, f.labels))
    cn = np.asfortranarray(centres.numpy())
    for layout in en:
        got = run(en[layout], mn[layout], vn[layout], cn, ln[layout])
        for name in expected:
            assert isinstance(got[name], np.ndarray), name
            assert_equal(got[name], expected[name], f"{name} (numpy {layout})")


# ---- inputs are never modified -------------------------------------------------------------------


def test_inputs_are_not_modified(field):
    emb, mask, labels = field.embeddings.clone(), field.mask.clone(), field.labels.clone()
    votes = ops.hough_votes(emb, mask, field.spacing)
    votes_copy = votes.clone()
    centres = ops.find_peaks(votes, 2.0, 1, field.spacing, 1)
    centres_copy = centres.clone()
    ops.assign_to_centres(emb, mask, centres, field.spacing, 2.0)
    out = ops.label_opening(labels, 2.0, field.spacing)
    ops.embeddings_to_labels(emb, mask, 2.0, field.spacing, opening_radius=1.0)
    assert torch.equal(emb.isnan(), field.embeddings.isnan())
    assert torch.equal(emb.nan_to_num(), field.embeddings.nan_to_num())
    assert torch.equal(mask, field.mask) and torch.equal(labels, field.labels)
    assert torch.equal(votes, votes_copy) and torch.equal(centres, centres_copy)
    assert out.data_ptr() != labels.data_ptr()


# ---- exact geometry: surface points of the ball, exact peak windows (issue 9, item 8) ----------


def exact_ball(radius, spacing):
    """Oracle for _geometry.ellipsoid_offsets: every offset of the bounding box tested one by one
    in exact decimal arithmetic (the values as written)."""
    import itertools
    from decimal import Decimal
    from fractions import Fraction

    r = Fraction(Decimal(repr(float(radius))))
    s = [Fraction(Decimal(repr(float(x)))) for x in spacing]
    box = [range(-int(r / sa), int(r / sa) + 1) for sa in s]
    return [list(o) for o in itertools.product(*box) if sum((oa * sa) ** 2 for oa, sa in zip(o, s)) <= r * r]


SURFACE_CASES = [  # (radius, spacing, an offset exactly on the surface)
    (2.5, (2.0, 0.25, 0.25), (0, 8, 6)),
    (2.5, (0.5, 0.5), (3, 4)),
    (5.0, (1.0, 1.0), (3, 4)),
    (0.5, (0.1, 0.1), (3, 4)),          # decimal spacing: 0.1 is 1/10, not the binary float
    (1.3, (0.26, 0.26, 0.26), (3, 4, 0)),
    (0.65, (2.0, 0.13, 0.13), (0, 3, 4)),
]


@pytest.mark.parametrize("radius,spacing,point", SURFACE_CASES, ids=[f"r{c[0]}-{c[2]}" for c in SURFACE_CASES])
def test_ball_contains_its_surface_points(radius, spacing, point):
    from rdcnet_ext._geometry import ellipsoid_offsets

    offsets = ellipsoid_offsets(radius, spacing).tolist()
    assert offsets == exact_ball(radius, spacing)  # same set, row-major order
    ndim = len(point)
    for signs in np.ndindex(*(2,) * ndim):
        mirrored = [p if s else -p for p, s in zip(point, signs)]
        assert mirrored in offsets, f"{mirrored} on the surface is missing"


@pytest.mark.parametrize("seed", range(4))
def test_ball_equals_the_exact_oracle_on_random_decimal_geometries(seed):
    from rdcnet_ext._geometry import ellipsoid_offsets

    rng = np.random.default_rng(seed)
    for _ in range(25):
        ndim = int(rng.integers(2, 4))
        spacing = [round(float(x), 2) for x in rng.uniform(0.1, 2.0, ndim)]
        radius = round(float(rng.uniform(0.1, 4.0)), 2)
        assert ellipsoid_offsets(radius, spacing).tolist() == exact_ball(radius, spacing), (radius, spacing)


@pytest.mark.parametrize("radius,spacing,point", SURFACE_CASES[:4], ids=[f"r{c[0]}" for c in SURFACE_CASES[:4]])
def test_opening_keeps_an_object_shaped_exactly_like_the_ball(radius, spacing, point):
    # The object is the ball with its surface points; opening it by the ball keeps all of it.
    # (Dropping the surface points from the ball would shave them off the object.)
    offsets = torch.tensor(exact_ball(radius, spacing))
    halo = offsets.abs().amax(dim=0)
    labels = torch.zeros([int(2 * h + 5) for h in halo], dtype=torch.int32)
    labels[tuple((offsets + halo + 2).T)] = 3
    out = ops.label_opening(labels, radius, spacing)
    assert_equal(out, labels, "opened")
    if len(spacing) == 2:  # (the 3D reference is slow with this many offsets; 2D shows it agrees)
        assert_equal(ref.label_opening(labels, radius, list(spacing)), labels, "reference")


@pytest.mark.parametrize("min_distance,spacing,window", [(0.3, (0.1, 0.1), 3), (0.7, (0.1, 0.1), 7), (1.0, (0.2, 0.2), 5)])
def test_peak_window_is_exact_for_decimal_spacing(min_distance, spacing, window):
    # In binary floating point 0.3 / 0.1 = 2.9999999999999996, a window of 2 instead of 3.
    votes = torch.zeros((3, 2 * window + 4), dtype=torch.int32)
    votes[1, 1], votes[1, 1 + window] = 5, 4  # exactly one window apart: the lower is suppressed
    votes[1, 2 + 2 * window] = 3              # one more pixel away: kept
    expected = [[1, 1], [1, 2 + 2 * window]]
    assert ops.find_peaks(votes, min_distance, 1, spacing).tolist() == expected
    assert ref.find_peaks(votes, min_distance, 1, list(spacing)).tolist() == expected


# ---- windows, boxes and balls larger than the image (issue 9, item 6) ----------------------------


@pytest.mark.parametrize("shape,spacing", [((7, 11), None), ((4, 5, 6), ANISO_3D)])
def test_huge_windows_and_boxes_are_clipped_without_changing_the_result(shape, spacing, rng):
    votes = torch.from_numpy(rng.integers(0, 4, shape).astype(np.int32))
    sp = [1.0] * len(shape) if spacing is None else list(spacing)
    # A window or box reaching across the image from every pixel is the whole image either way.
    whole = max(n * s for n, s in zip(shape, sp))
    for smooth in (0, 1):
        expected = ref.find_peaks(votes, whole, 0, sp, smooth)
        for min_distance in (whole, 1e30, 1e300):
            assert_equal(ops.find_peaks(votes, min_distance, 0, spacing, smooth), expected, f"{min_distance}")
        assert_equal(ref.find_peaks(votes, 1e300, 0, sp, smooth), expected, "reference")
    box = ref.find_peaks(votes, 1.0, 0, sp, max(shape) - 1)
    for smooth in (max(shape), 2**40, 2**63 - 1):
        assert_equal(ops.find_peaks(votes, 1.0, 0, spacing, smooth), box, f"smooth_radius {smooth}")
        assert_equal(ref.find_peaks(votes, 1.0, 0, sp, smooth), box, f"reference smooth_radius {smooth}")
    assert ops.find_peaks(votes, 1.0, 2**63 - 1, spacing).shape == (0, len(shape))


def opening_by_definition(labels: torch.Tensor, radius, spacing, offsets=None) -> torch.Tensor:
    """DESIGN.md's label_opening read literally, as an oracle independent of the reference's
    padding: p keeps l iff some translate q + B (q anywhere, also outside the image) contains p
    and all of its in-image pixels have label l. ``offsets`` replaces the ball B if given."""
    from rdcnet_ext._geometry import ellipsoid_offsets

    offsets = (ellipsoid_offsets(radius, spacing) if offsets is None else offsets).long()
    halo = offsets.abs().amax(dim=0)
    table = torch.zeros([int(2 * h + 1) for h in halo], dtype=torch.bool)
    table[tuple((offsets + halo).T)] = True
    pixels = torch.stack(torch.meshgrid(*[torch.arange(n) for n in labels.shape], indexing="ij"), -1).reshape(-1, labels.dim())
    centres = torch.stack(torch.meshgrid(*[torch.arange(-h, n + h) for n, h in zip(labels.shape, halo.tolist())],
                                         indexing="ij"), -1).reshape(-1, labels.dim())
    d = pixels[None, :, :] - centres[:, None, :] + halo  # (Q, N, ndim) index into the table
    inside = ((d >= 0) & (d < 2 * halo + 1)).all(-1)
    member = torch.zeros(inside.shape, dtype=torch.bool)
    member[inside] = table[tuple(d[inside].T)]
    flat = labels.reshape(-1)
    top = torch.where(member, flat[None], torch.iinfo(flat.dtype).min).amax(1)
    low = torch.where(member, flat[None], torch.iinfo(flat.dtype).max).amin(1)
    eroded = torch.where((top == low) & (top != 0), top, torch.zeros_like(top))  # E(q)
    kept = (member & (eroded[:, None] == flat[None])).any(0) & (flat != 0)
    return torch.where(kept, flat, torch.zeros_like(flat)).reshape(labels.shape)


BIG_BALLS = [  # balls just inside and just beyond the image, in every or only some axes
    ((6, 7), (1.0, 1.0), [5.0, 6.0, 9.5]),
    ((5, 9), (0.5, 1.3), [2.6, 7.9]),
    ((3, 4, 5), ANISO_3D, [0.9, 1.1, 2.1]),
    ((2, 5, 6), (1.0, 1.0, 1.0), [1.5, 4.5]),
]


@pytest.mark.parametrize("shape,spacing,radii", BIG_BALLS, ids=["x".join(map(str, c[0])) for c in BIG_BALLS])
def test_opening_by_balls_near_and_beyond_the_image_size(shape, spacing, radii, rng):
    # Exact semantics are kept beyond the image (clipping the ball would change them: translates
    # centred outside cut the image along the ball's curved surface).
    for block in (1, 2):
        labels = blocky_labels(shape, rng, block, 2, speckle=0.1).to(torch.int32)
        for radius in radii:
            expected = opening_by_definition(labels, radius, spacing)
            assert_equal(ref.label_opening(labels, radius, list(spacing)), expected, f"reference r={radius}")
            assert_equal(ops.label_opening(labels, radius, spacing), expected, f"op r={radius}")


@pytest.mark.parametrize("shape,spacing,radius", [
    ((64, 64), None, 300.0), ((64, 64), None, 1e5), ((64, 64), 1e-100, 1.0), ((9, 10, 11), ANISO_3D, 40.0),
    ((1, 1), None, 1e300),
])
def test_opening_balls_far_beyond_the_image_are_refused_early(shape, spacing, radius):
    labels = torch.ones(shape, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^radius: .*beyond the image.*cannot be clipped") as info:
        ops.label_opening(labels, radius, spacing)
    assert "Use a radius below" in str(info.value)
    emb = torch.zeros((len(shape), *shape))
    with pytest.raises(ValueError, match=r"^opening_radius: "):
        ops.embeddings_to_labels(emb, labels.bool(), 1.0, spacing, opening_radius=radius)


def test_clipping_a_ball_beyond_the_image_would_change_the_result():
    # Why label_opening does not clip balls to the image: translates centred outside the image
    # cut it along the ball's curved surface. Random labels on 8x8, radius 9.5 px.
    from rdcnet_ext._geometry import ellipsoid_offsets

    ball = ellipsoid_offsets(9.5, (1.0, 1.0))
    clipped = ball[(ball.abs() <= 7).all(dim=1)]
    changed = 0
    for seed in range(40):
        labels = torch.from_numpy((np.random.default_rng(seed).random((8, 8)) < 0.85).astype(np.int32))
        out = ops.label_opening(labels, 9.5)
        assert_equal(out, opening_by_definition(labels, 9.5, (1.0, 1.0)), f"seed {seed}")
        changed += not torch.equal(out, opening_by_definition(labels, 9.5, None, clipped))
        if changed:
            break
    assert changed, "no example found where the clipped ball differs"
