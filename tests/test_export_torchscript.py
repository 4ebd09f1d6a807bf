"""The TorchScript export of the whole pipeline: its network equals RDCNet, its decoding equals
rdcnet_ext.reference on random inputs, its normalisation equals rdcnet.data.normalize_image, and
the exported file, loaded in a fresh process without rdcnet, gives rdcnet.predict's labels."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rdcnet import cli
from rdcnet.data import nuclei_2d, nuclei_3d, normalize_image
from rdcnet.export import PortableRDCNet, build_pipeline, export_torchscript, portable_network
from rdcnet.export import pipeline as P
from rdcnet.model import RDCNet
from rdcnet.postprocess import PostprocessConfig
from rdcnet.predict import channel_axis_of, predict
from rdcnet.checkpoint import save_checkpoint
from rdcnet.train import TrainConfig
from rdcnet_ext import reference
from rdcnet_ext._geometry import ellipsoid_offsets, peak_window

from helpers import TINY_MODEL as TINY, tiny_model


@pytest.fixture(scope="module")
def scripted_ops():
    return {name: P.script(getattr(P, name))
            for name in ("hough_votes", "find_peaks", "assign_to_centres", "label_opening")}


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """A fixed-seed tiny model with non-trivial offsets, its checkpoint, and synthetic nuclei
    (the equality does not depend on training; the decoding still finds objects)."""
    model = tiny_model()
    post = PostprocessConfig(margin=4.0, min_votes=2, smooth_radius=1, opening_radius=1.5)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, model, TrainConfig(margin=4.0, postprocess=post))
    return model, post, path, [im for im, _ in nuclei_2d(3, (100, 92), seed=23)]


# ---- the network ----------------------------------------------------------------------------------


@pytest.mark.parametrize("config, shape", [
    (dict(TINY), (2, 1, 37, 50)),                                        # padded (reflect)
    (dict(TINY, in_channels=3, factor=(2, 4), spacing=(0.5, 0.25)), (1, 3, 3, 18)),  # replicate padding
    (dict(TINY, ndim=3, factor=(1, 2, 2), spacing=(2.0, 0.5, 0.5), n_classes=3), (1, 1, 5, 14, 12)),
])
def test_portable_network_equals_rdcnet(config, shape):
    model = tiny_model(0.05, **config)
    x = torch.randn(shape)
    net = P.script(portable_network(model))
    emb, prob = net(x)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(emb, out.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(prob, out.probabilities, rtol=0, atol=0)


def test_portable_network_rejects_bad_input():
    with pytest.raises(ValueError, match="ndim"):
        PortableRDCNet(ndim=4)
    with pytest.raises(ValueError, match="factor and spacing"):
        PortableRDCNet(ndim=3, factor=(4, 4), spacing=(1.0, 1.0, 1.0))
    net = P.script(PortableRDCNet(**{**TINY, "spacing": (1.0, 1.0), "factor": (4, 4)}))
    with pytest.raises(Exception, match="in_channels"):
        net(torch.zeros(1, 2, 16, 16))


# ---- the decoding equals the reference ----------------------------------------------------------


def _random_field(rng, shape, spacing, n_centres):
    ndim = len(shape)
    centres = np.stack([rng.integers(0, n, n_centres) for n in shape], 1) * np.asarray(spacing)
    owner = rng.integers(0, n_centres, size=shape)
    emb = centres[owner].transpose(ndim, *range(ndim)) + rng.normal(0, 1.0, (ndim, *shape))
    emb[:, rng.random(shape) < 0.02] = np.nan
    emb[0][rng.random(shape) < 0.02] = -5.0  # votes outside the image
    return torch.from_numpy(emb.astype(np.float32)), torch.from_numpy(rng.random(shape) < 0.7)


@pytest.mark.parametrize("shape, spacing", [((40, 33), (1.0, 1.0)), ((31, 45), (0.5, 0.25)),
                                            ((6, 20, 17), (2.0, 0.5, 0.5)), ((1, 30), (1.0, 1.0))])
def test_decoding_equals_reference(scripted_ops, shape, spacing):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    emb, mask = _random_field(rng, shape, spacing, 12)
    votes = scripted_ops["hough_votes"](emb, mask, list(spacing))
    assert torch.equal(votes, reference.hough_votes(emb, mask, spacing))
    for min_distance, min_votes, smooth in ((2.0, 1, 0), (3.5, 4, 1), (100.0, 1, 2), (0.0, 2, 0)):
        window = peak_window(min_distance, spacing)
        got = scripted_ops["find_peaks"](votes, window, min_votes, smooth)
        assert torch.equal(got, reference.find_peaks(votes, min_distance, min_votes, spacing, smooth))
    centres = reference.find_peaks(votes, 2.0, 1, spacing, 1)
    for max_distance in (None, 1.5):
        got = scripted_ops["assign_to_centres"](emb, mask, centres, list(spacing), max_distance, 97)
        assert torch.equal(got, reference.assign_to_centres(emb, mask, centres, spacing, max_distance))
    labels = reference.assign_to_centres(emb, mask, centres, spacing)
    for radius in (0.5, 1.0, 2.5):
        offsets = ellipsoid_offsets(radius, spacing).tolist()
        assert torch.equal(scripted_ops["label_opening"](labels, offsets),
                           reference.label_opening(labels, radius, spacing))


def test_decoder_equals_embeddings_to_labels():
    from rdcnet_ext import ops

    rng = np.random.default_rng(5)
    spacing = (1.0, 0.5)
    emb, mask = _random_field(rng, (48, 52), spacing, 15)
    prob = torch.stack([(~mask).float(), mask.float()])
    for post in (PostprocessConfig(margin=3.0, min_votes=2), PostprocessConfig(margin=2.0, min_distance=4.0,
                 min_votes=1, smooth_radius=0, max_distance=2.0, opening_radius=1.0)):
        decoder = P.script(P.ScriptableDecoder(spacing, post))
        expected = ops.embeddings_to_labels(emb, mask, post.min_distance or post.margin, spacing,
                                            post.min_votes, post.smooth_radius, post.max_distance,
                                            post.opening_radius)
        assert torch.equal(decoder(emb, prob), expected)


# ---- normalisation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["grey", "rgb_last", "rgb_first", "constant", "nan", "uint16", "tiny"])
def test_normalizer_equals_normalize_image(kind):
    rng = np.random.default_rng(3)
    ndim, channels = 2, 1
    image = rng.gamma(2.0, 100.0, (57, 43)).astype(np.float32)
    if kind == "rgb_last":
        image, channels = rng.random((30, 41, 3)).astype(np.float32), 3
    elif kind == "rgb_first":
        image, channels = rng.random((3, 30, 41)), 3
    elif kind == "constant":
        image = np.full((20, 20), 7.0, np.float32)
    elif kind == "nan":
        image[rng.random(image.shape) < 0.1] = np.nan
    elif kind == "uint16":
        image = rng.integers(0, 4000, (33, 35)).astype(np.uint16)
    elif kind == "tiny":
        image = np.array([[1.0, 5.0]], np.float32)
    model = RDCNet(**{**TINY, "in_channels": channels})
    norm = P.script(P.ScriptableNormalizer(ndim, channels))
    expected = normalize_image(image, channel_axis=channel_axis_of(image, model))
    got = norm(torch.from_numpy(image.astype(np.int32) if image.dtype == np.uint16 else image)).numpy()
    np.testing.assert_array_equal(got, expected)


# ---- the exported file ----------------------------------------------------------------------------


_FRESH = r"""
import sys, torch, json
sys.modules["rdcnet"] = None      # importing either package would fail
sys.modules["rdcnet_ext"] = None
pipeline = torch.jit.load(sys.argv[1])
images = torch.load(sys.argv[2])
torch.save([pipeline(im) for im in images], sys.argv[3])
print(json.dumps(sorted(m for m, v in sys.modules.items() if m.startswith("rdcnet") and v is not None)))
"""


def test_exported_pipeline_equals_predict_in_a_fresh_process(tmp_path, fixed):
    model, post, ckpt, images = fixed
    path = export_torchscript(ckpt, tmp_path / "rdcnet.pt")
    torch.save([torch.from_numpy(im) for im in images], tmp_path / "images.pt")
    run = subprocess.run([sys.executable, "-c", _FRESH, str(path), str(tmp_path / "images.pt"),
                          str(tmp_path / "labels.pt")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    got = torch.load(tmp_path / "labels.pt")
    for image, labels in zip(images, got):
        expected = predict(model, image, post)
        assert expected.max() > 5  # a non-trivial decoding
        assert labels.dtype == torch.int32
        np.testing.assert_array_equal(labels.numpy(), expected)


def test_pipeline_3d_rgb_and_outputs_equal_predict():
    model = tiny_model(0.05, ndim=3, factor=(1, 2, 2), spacing=(2.0, 1.04, 1.04))
    post = PostprocessConfig(margin=3.0, min_votes=2, opening_radius=1.5)
    image = nuclei_3d(1, (8, 40, 36), seed=1)[0][0]
    pipe = P.script(build_pipeline(model, post))
    labels, out = predict(model, image, post, return_output=True)
    np.testing.assert_array_equal(pipe(torch.from_numpy(image)).numpy(), labels)
    emb, prob = pipe.outputs(torch.from_numpy(image))
    assert torch.equal(emb, out.embeddings) and torch.equal(prob, out.probabilities)
    rgb_model = RDCNet(**{**TINY, "in_channels": 3}).eval()
    rgb = np.random.default_rng(0).random((45, 38, 3)).astype(np.float32)
    np.testing.assert_array_equal(P.script(build_pipeline(rgb_model, post))(torch.from_numpy(rgb)).numpy(),
                                  predict(rgb_model, rgb, post))


def test_cli_export_torchscript(tmp_path, capsys):
    torch.manual_seed(0)
    model = RDCNet(**TINY)
    save_checkpoint(tmp_path / "best.pt", model)
    assert cli.main(["export", str(tmp_path / "best.pt"), "--torchscript", str(tmp_path / "x.pt")]) == 0
    assert "x.pt" in capsys.readouterr().out
    image = np.random.default_rng(0).random((40, 44)).astype(np.float32)
    np.testing.assert_array_equal(torch.jit.load(str(tmp_path / "x.pt"))(torch.from_numpy(image)).numpy(),
                                  predict(model.eval(), image, PostprocessConfig()))
    assert cli.main(["export", str(tmp_path / "missing.pt"), "--torchscript", str(tmp_path / "y.pt")]) == 2
    assert cli.main(["export", str(tmp_path / "best.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.pt" in err[0] and "--torchscript" in err[1]
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--help"])
    assert info.value.code == 0 and "bioimage.io" in capsys.readouterr().out
