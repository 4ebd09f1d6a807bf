"""Inference: decoding, tiling, the predict() entry point."""

import numpy as np
import pytest
import torch

from rdcnet import metrics
from rdcnet.model import RDCNet
from rdcnet.postprocess import PostprocessConfig, labels_from_output
from rdcnet.predict import _tiles, predict, predict_output
from rdcnet_ext.testing import synthetic_labels


def perfect_output(labels: np.ndarray, spacing):
    """Embeddings of a perfect model: each pixel at its object's (rounded) centroid, in physical
    units; probabilities one-hot foreground."""
    ndim = labels.ndim
    emb = np.zeros((ndim, *labels.shape), np.float32)
    for k in np.unique(labels[labels > 0]):
        idx = np.nonzero(labels == k)
        centre = np.round(np.mean(idx, axis=1))
        for a in range(ndim):
            emb[a][idx] = centre[a] * spacing[a]
    fg = (labels > 0).astype(np.float32)
    return torch.from_numpy(emb), torch.from_numpy(np.stack([1 - fg, fg]))


def assert_same_partition(a: np.ndarray, b: np.ndarray):
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("shape,spacing,count", [
    ((96, 80), (1.0, 1.0), 20), ((64, 64), (0.5, 0.5), 12), ((12, 48, 48), (2.0, 0.5, 0.5), 10),
])
def test_perfect_embeddings_decode_to_the_true_labels_exactly(shape, spacing, count):
    labels = synthetic_labels(shape, count, spacing, seed=3)
    emb, prob = perfect_output(labels, spacing)
    # Window: a little less than half the smallest distance between centres.
    centres = np.stack([emb[a][labels > 0] for a in range(len(shape))], 1)
    centres = np.unique(centres, axis=0)
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    d[d == 0] = np.inf
    post = PostprocessConfig(margin=float(d.min()) * 0.45, min_votes=1, smooth_radius=0)
    got = labels_from_output(emb, prob, spacing, post).numpy()
    assert_same_partition(labels, got)
    scores = metrics.evaluate_image(labels, got)
    assert scores["f1@0.95"] == 1.0 and scores["aji"] == 1.0


@pytest.mark.parametrize("n,t,o,f", [(100, 48, 8, 4), (64, 64, 8, 4), (257, 64, 16, 8), (33, 20, 2, 1), (10, 40, 4, 4)])
def test_tiles_cover_the_image_once_and_start_on_the_grid(n, t, o, f):
    covered = np.zeros(n, int)
    for read, inner, write in _tiles((n,), (t,), (o,), (f,)):
        r, i, w = read[0], inner[0], write[0]
        assert r.start % f == 0 and r.stop <= n
        assert w.stop - w.start == i.stop - i.start and w.start == r.start + i.start
        covered[w] += 1
        if r.start > 0:
            assert i.start >= o  # kept pixels are away from the cut
        if r.stop < n:
            assert (r.stop - r.start) - i.stop >= o
    assert (covered == 1).all()


@pytest.mark.parametrize("ndim", [2, 3])
def test_tiled_prediction_equals_whole_image(ndim):
    torch.manual_seed(0)
    factor = 4 if ndim == 2 else (1, 2, 2)
    model = RDCNet(ndim, 1, factor=factor, downsampling_channels=4, groups=2, channels_per_group=4, dilations=(1,),
                   iterations=1, fused=False).eval()
    shape = (70, 90) if ndim == 2 else (6, 30, 34)
    x = torch.randn(1, *shape)
    whole = predict_output(model, x, tile_shape=shape)
    tile = (40, 48) if ndim == 2 else (6, 16, 20)
    tiled = predict_output(model, x, tile_shape=tile, overlap=(12,) * ndim if ndim == 2 else (0, 6, 6))
    torch.testing.assert_close(tiled.embeddings, whole.embeddings, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tiled.probabilities, whole.probabilities, atol=1e-5, rtol=1e-5)


def test_predict_returns_int32_labels_for_grey_rgb_and_3d():
    torch.manual_seed(0)
    m2 = RDCNet(2, 1, factor=4, groups=2, channels_per_group=4, iterations=1)
    lab = predict(m2, np.random.rand(40, 52).astype(np.float32))
    assert lab.shape == (40, 52) and lab.dtype == np.int32
    rgb = RDCNet(2, 3, factor=4, groups=2, channels_per_group=4, iterations=1)
    assert predict(rgb, (np.random.rand(40, 52, 3) * 255).astype(np.uint8)).shape == (40, 52)
    assert predict(rgb, np.random.rand(3, 40, 52)).shape == (40, 52)
    m3 = RDCNet(3, 1, factor=(1, 4, 4), groups=2, channels_per_group=4, iterations=1, spacing=(2, .5, .5))
    lab3, out = predict(m3, torch.rand(5, 24, 20), PostprocessConfig(margin=2.0, opening_radius=0.5),
                        return_output=True)
    assert lab3.shape == (5, 24, 20) and out.embeddings.shape == (3, 5, 24, 20)


def test_predict_rejects_wrong_shapes():
    m = RDCNet(2, 1, factor=4, groups=2, channels_per_group=4, iterations=1)
    with pytest.raises(ValueError, match="image"):
        predict(m, np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="channel"):
        predict(m, np.zeros((20, 20, 3)))
