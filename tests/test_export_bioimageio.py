"""bioimage.io packages: written by `rdcnet export --bioimageio`, valid for bioimageio.spec, passing
bioimageio.core's model test, and run by `rdcnet predict --model package.zip` with the same labels
as the checkpoint. Skipped when the `bioimageio` extra is not installed."""

import zipfile

import numpy as np
import pytest
import torch

spec = pytest.importorskip("bioimageio.spec", reason="needs the 'bioimageio' extra")

from rdcnet import cli  # noqa: E402
from rdcnet.data import nuclei_2d, read_labels, write_image  # noqa: E402
from rdcnet.export.bioimageio import export_bioimageio, load_bioimageio  # noqa: E402
from rdcnet.postprocess import PostprocessConfig  # noqa: E402
from rdcnet.predict import predict  # noqa: E402
from rdcnet.checkpoint import save_checkpoint  # noqa: E402
from rdcnet.train import TrainConfig
from helpers import tiny_model  # noqa: E402

def _model(**overrides):
    return tiny_model(**{"spacing": (0.5, 0.5), **overrides})


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A package written by the command line from a tiny fixed-seed checkpoint."""
    tmp = tmp_path_factory.mktemp("bioimageio")
    model = _model()
    post = PostprocessConfig(margin=2.0, min_votes=2, smooth_radius=1, opening_radius=0.75)
    save_checkpoint(tmp / "best.pt", model, TrainConfig(margin=2.0, postprocess=post))
    assert cli.main(["export", str(tmp / "best.pt"), "--bioimageio", str(tmp / "model.zip")]) == 0
    return tmp, model, post


def test_package_passes_the_bioimageio_core_model_test(package):
    core = pytest.importorskip("bioimageio.core")
    tmp, _, _ = package
    summary = core.test_model(tmp / "model.zip")
    assert summary.status == "passed", summary.format()


def test_package_describes_axes_normalisation_and_decoding(package):
    from bioimageio.spec import load_model_description

    tmp, model, post = package
    descr = load_model_description(tmp / "model.zip", perform_io_checks=False)
    (raw,) = descr.inputs
    assert [str(a.id) for a in raw.axes] == ["batch", "channel", "y", "x"]
    halo = 2 * 4 * 4  # tile_overlap: twice the coarse reach of the largest dilation (4) at factor 4
    assert [(a.size.min, a.size.step, a.scale) for a in raw.axes[2:]] == [(2 * halo + 4, 4, 0.5)] * 2
    (pre,) = [p for p in raw.preprocessing if p.id == "scale_range"]
    assert (pre.kwargs.min_percentile, pre.kwargs.max_percentile) == (1.0, 99.8)
    assert [str(a) for a in pre.kwargs.axes] == ["y", "x"]  # per image and channel
    offsets, prob = descr.outputs
    assert str(offsets.id) == "offsets" and [a.scale for a in offsets.axes[2:]] == [0.5, 0.5]
    assert [a.halo for a in offsets.axes[2:]] == [halo, halo] and [a.halo for a in prob.axes[2:]] == [halo, halo]
    assert len(prob.axes[1].channel_names) == 2
    assert descr.weights.pytorch_state_dict is not None and descr.weights.torchscript is not None
    assert descr.cite[0].text.startswith("Ortiz") and descr.covers
    rdcnet = descr.config.model_extra["rdcnet"]
    assert rdcnet["postprocess"] == post.to_dict() and rdcnet["model_config"] == model.config.to_dict()
    names = zipfile.ZipFile(tmp / "model.zip").namelist()
    assert {"rdcnet_pipeline.pt", "network.py", "README.md", "cover.png"} <= set(names)
    doc = zipfile.ZipFile(tmp / "model.zip").read("README.md").decode()
    assert "embeddings_to_labels" in doc and "min_votes=2" in doc and "opening_radius=0.75" in doc


def test_predict_with_the_package_equals_the_checkpoint(package):
    tmp, model, post = package
    loaded, loaded_post = load_bioimageio(tmp / "model.zip")
    assert loaded_post == post
    image = nuclei_2d(1, (70, 66), seed=3)[0][0]
    write_image(tmp / "cells.tif", image)
    for name in ("model.zip", "best.pt"):
        assert cli.main(["predict", str(tmp / "cells.tif"), "--model", str(tmp / name),
                         "--out", str(tmp / f"out-{name}")]) == 0
    from_package = read_labels(tmp / "out-model.zip" / "cells.tif")
    np.testing.assert_array_equal(from_package, read_labels(tmp / "out-best.pt" / "cells.tif"))
    np.testing.assert_array_equal(from_package, predict(model, image, post))
    assert from_package.max() > 3


def test_3d_anisotropic_package(tmp_path):
    from bioimageio.spec import load_model_description

    model = _model(ndim=3, factor=(1, 4, 4), spacing=(2.0, 0.5, 0.5))
    odd = np.random.default_rng(0).random((19, 70, 71)).astype(np.float32)  # cropped to multiples of the factor
    path = export_bioimageio(model, tmp_path / "m3.zip", PostprocessConfig(margin=2.0, min_votes=2), test_image=odd)
    with zipfile.ZipFile(path) as z:
        z.extract("test_input.npy", tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "test_input.npy"), odd[None, None, :, :68, :68])
    descr = load_model_description(path, perform_io_checks=False)
    axes = descr.inputs[0].axes
    assert [str(a.id) for a in axes] == ["batch", "channel", "z", "y", "x"]
    assert [(a.size.step, a.scale) for a in axes[2:]] == [(1, 2.0), (4, 0.5), (4, 0.5)]
    loaded, _ = load_bioimageio(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_bad_packages_are_one_line_errors(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as z:
        z.writestr("hello.txt", "not a model")
    write_image(tmp_path / "x.tif", np.zeros((16, 16), np.float32))
    assert cli.main(["predict", str(tmp_path / "x.tif"), "--model", str(tmp_path / "foreign.zip"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "not a bioimage.io package" in capsys.readouterr().err
    with pytest.raises(ValueError, match="path: expected a .zip"):
        export_bioimageio(_model(), tmp_path / "model.pt")


@pytest.mark.slow
def test_bioimageio_blockwise_prediction_equals_whole_image_labels(tmp_path, trained_2d):
    """bioimage.io's own tiled prediction (predict with a block size parameter, as `bioimageio
    predict --blockwise`) of a trained model, decoded as the package's README says, gives the
    labels of whole-image prediction. (Packages used to output tile-relative absolute positions:
    each tile's embeddings were off by the tile's origin, F1 0.01.)"""
    import contextlib
    import io

    core = pytest.importorskip("bioimageio.core")
    from rdcnet.metrics import evaluate_image
    from rdcnet_ext import ops

    model, post, _ = trained_2d
    path = export_bioimageio(model, tmp_path / "m.zip", post)
    descr = core.load_description(path)
    image = nuclei_2d(1, (300, 260), seed=3)[0][0].astype(np.float32)
    whole = predict(model, image, post, precision="fp32")

    def labels_from(offsets, probabilities):  # the package README's decoding
        position = np.stack(np.meshgrid(*[np.arange(n) * 0.5 for n in offsets.shape[1:]], indexing="ij"))
        return ops.embeddings_to_labels((offsets + position).astype(np.float32), probabilities.argmax(0) != 0,
                                        post.peak_window, spacing=(0.5, 0.5), min_votes=post.min_votes,
                                        smooth_radius=post.smooth_radius, opening_radius=post.opening_radius)

    outputs = {}
    for n in (None, 0, 3):  # whole image, then blocks of two sizes
        with contextlib.redirect_stderr(io.StringIO()):
            sample = core.predict(model=descr, inputs=image[None, None], blocksize_parameter=n)
        outputs[n] = [sample.members[k].data.values[0] for k in ("offsets", "probabilities")]
    whole_bio = labels_from(*outputs[None])
    for n in (0, 3):
        offsets = outputs[n][0]
        assert np.abs(offsets - outputs[None][0]).mean() < 0.05  # physical units (0.1 px)
        tiled = labels_from(*outputs[n])
        assert evaluate_image(whole_bio, tiled)["f1@0.5"] >= 0.95
        assert evaluate_image(whole, tiled)["f1@0.5"] >= 0.85


def test_package_with_code_carrying_weights_is_refused(package, tmp_path, capsys):
    """A package whose weights file is a pickle that would run code: refused, nothing runs."""
    from helpers import write_code_carrying_checkpoint
    from rdcnet.checkpoint import CheckpointError

    tmp, _, _ = package
    marker = tmp_path / "created-by-a-model-file"
    write_code_carrying_checkpoint(tmp_path / "evil.pt", marker)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(tmp / "model.zip") as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = (tmp_path / "evil.pt").read_bytes() if item.filename == "weights.pt" else src.read(item.filename)
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="would run code"):
        load_bioimageio(evil)
    write_image(tmp_path / "x.tif", np.zeros((16, 16), np.float32))
    assert cli.main(["predict", str(tmp_path / "x.tif"), "--model", str(evil), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would run code" in err[0]
    assert not marker.exists() and not (tmp_path / "o").exists()
