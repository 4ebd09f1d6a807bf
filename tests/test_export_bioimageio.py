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
    assert [(a.size.min, a.size.step, a.scale) for a in raw.axes[2:]] == [(4, 4, 0.5), (4, 4, 0.5)]
    (pre,) = [p for p in raw.preprocessing if p.id == "scale_range"]
    assert (pre.kwargs.min_percentile, pre.kwargs.max_percentile) == (1.0, 99.8)
    assert [str(a) for a in pre.kwargs.axes] == ["y", "x"]  # per image and channel
    emb, prob = descr.outputs
    assert [a.scale for a in emb.axes[2:]] == [0.5, 0.5] and len(prob.axes[1].channel_names) == 2
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
    odd = np.random.default_rng(0).random((9, 50, 47)).astype(np.float32)  # cropped to multiples of the factor
    path = export_bioimageio(model, tmp_path / "m3.zip", PostprocessConfig(margin=2.0, min_votes=2), test_image=odd)
    with zipfile.ZipFile(path) as z:
        z.extract("test_input.npy", tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "test_input.npy"), odd[None, None, :, :48, :44])
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
