"""Chunked prediction of large images (rdcnet.large.predict_large, `rdcnet predict x.ome.zarr`),
on a cluster (dask.distributed), and its memory bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("dask")
pytest.importorskip("zarr")

from rdcnet import RDCNet, large  # noqa: E402
from rdcnet.predict import predict_output, prepare_image  # noqa: E402
from rdcnet_ext import ops  # noqa: E402


def tiny_model(ndim=2, spacing=None):
    torch.manual_seed(0)
    factor = 4 if ndim == 2 else (1, 2, 2)
    return RDCNet(ndim=ndim, in_channels=1, factor=factor, groups=2, channels_per_group=4, dilations=(1, 2),
                  iterations=2, downsampling_channels=8, spacing=spacing).eval()


def blobs(shape, seed=0):
    """Bright discs on a noisy background: something for the network to react to."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    img = rng.normal(10, 2, shape)
    for _ in range(max(3, int(np.prod(shape)) // 400)):
        c = np.array([rng.uniform(0, n) for n in shape]).reshape((-1,) + (1,) * len(shape))
        img += 40 * (((grid - c) ** 2).sum(0) < rng.uniform(9, 36))
    return img.astype(np.uint16)


@pytest.mark.parametrize("ndim", [2, 3])
def test_block_outputs_equal_whole_image_outputs(ndim):
    shape = (70, 90) if ndim == 2 else (12, 36, 40)
    spacing = None if ndim == 2 else (2.0, 0.5, 0.5)
    model = tiny_model(ndim, spacing)
    img = blobs(shape)
    whole = predict_output(model, prepare_image(img, model), tile_shape=shape)
    chunks = (32, 40) if ndim == 2 else (5, 16, 16)
    emb, fg = large.network_outputs(model, img, chunks=chunks)
    assert emb.chunksize == (ndim,) + chunks
    e, m = emb.compute(), fg.compute()
    np.testing.assert_allclose(e, whole.embeddings.numpy(), rtol=0, atol=1e-4)
    assert np.mean(m == (whole.probabilities.argmax(0) != 0).numpy()) > 0.999
    # Too little overlap changes the outputs: the default overlap is what makes them equal.
    e_small = large.network_outputs(model, img, chunks=chunks, overlap=(0,) * ndim)[0].compute()
    assert np.abs(e_small - whole.embeddings.numpy()).max() > 1e-3


def _checkpoint(tmp_path, model):
    from rdcnet.postprocess import PostprocessConfig
    from rdcnet.checkpoint import save_checkpoint
    from rdcnet.train import TrainConfig

    path = tmp_path / "best.pt"
    save_checkpoint(path, model, TrainConfig(postprocess=PostprocessConfig(margin=3.0, min_votes=2,
                                                                           opening_radius=1.5)))
    return path


def _write_ome_zarr(path, image, spacing):
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    names = "zyx"[3 - image.ndim:]
    write_image(image, root, fmt=FormatV05(), axes=list(names), scale_factors=(),
                scale=dict(zip(names, spacing)), storage_options={"chunks": (24,) * image.ndim})


def _read_labels(path):
    import zarr

    group = zarr.open_group(str(path), mode="r")["labels/rdcnet"]
    meta = dict(group.attrs)["ome"]
    ds = meta["multiscales"][0]["datasets"][0]
    return np.asarray(group[ds["path"]]), ds["coordinateTransformations"][0]["scale"], meta


def test_cli_ome_zarr_to_ome_zarr_is_exact(tmp_path, capsys):
    from rdcnet.cli import main

    model = tiny_model()
    ckpt = _checkpoint(tmp_path, model)
    img = blobs((80, 100))
    src = tmp_path / "big.ome.zarr"
    _write_ome_zarr(src, img, (0.5, 0.5))
    out, work = tmp_path / "labels.ome.zarr", tmp_path / "work"
    assert main(["predict", str(src), "--model", str(ckpt), "--out", str(out), "--chunks", "32,48",
                 "--workdir", str(work), "--keep-workdir"]) == 0
    labels, scale, meta = _read_labels(out)
    assert scale == [0.5, 0.5] and "image-label" in meta and labels.shape == img.shape
    # Exact: the labels are the whole-array decoding of the stored network outputs.
    import zarr

    emb = np.asarray(zarr.open_array(str(work / "embeddings.zarr"), mode="r"))
    fg = np.asarray(zarr.open_array(str(work / "foreground.zarr"), mode="r"))
    want = ops.embeddings_to_labels(emb, fg, 3.0, spacing=(1.0, 1.0), min_votes=2, smooth_radius=1,
                                    opening_radius=1.5)
    np.testing.assert_array_equal(labels, want)
    assert "objects" in capsys.readouterr().out


def test_cli_tiff_input_and_usage_errors(tmp_path, capsys):
    import tifffile

    from rdcnet.cli import main

    model = tiny_model()
    ckpt = _checkpoint(tmp_path, model)
    img = blobs((60, 70))
    tifffile.imwrite(tmp_path / "img.tif", img)
    out = tmp_path / "lab.tif"
    assert main(["predict", str(tmp_path / "img.tif"), "--model", str(ckpt), "--out", str(out),
                 "--chunks", "32", "--scheduler", "sync"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == img.shape and labels.max() > 0
    assert main(["predict", str(tmp_path / "img.tif"), "--model", str(ckpt), "--out", str(tmp_path / "x.png"),
                 "--chunks", "32"]) == 2
    assert main(["predict", str(tmp_path / "img.tif"), "--model", str(ckpt), "--out", str(tmp_path / "l.zarr"),
                 "--scheduler", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "scheduler" in err and "Traceback" not in err


def test_on_a_local_cluster_of_two_workers():
    """The same graph on dask.distributed (2 in-process workers) gives the same labels."""
    distributed = pytest.importorskip("distributed")
    from rdcnet_ext.testing import synthetic_embeddings

    f = synthetic_embeddings((40, 48), 8, noise=0.8, outliers=0.03, seed=1)
    want = ops.embeddings_to_labels(f.embeddings, f.mask, 3.0, smooth_radius=1, opening_radius=1.5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        with distributed.Client(lc):
            assert large._distributed_active()
            labels, _ = large.embeddings_to_labels(f.embeddings, f.mask, 3.0, smooth_radius=1, opening_radius=1.5,
                                                   chunks=(16, 20))
            got = labels.compute()
    np.testing.assert_array_equal(got, want)


_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys, numpy as np, zarr, torch
    from rdcnet import RDCNet, large
    torch.set_num_threads(1)
    shape = tuple(int(v) for v in sys.argv[2].split(","))
    src = zarr.open_array(sys.argv[1] + "/in.zarr", mode="w", shape=shape, chunks=(256, 256), dtype="uint16",
                          zarr_format=3)
    x = np.arange(shape[1])
    for i in range(0, shape[0], 256):  # written in strips: the script itself never holds the image
        y = np.arange(i, min(i + 256, shape[0]))[:, None]
        src[i:i + 256] = (1000 * (np.sin(y / 5.0) * np.sin(x / 5.0) > 0.5)).astype(np.uint16)
    torch.manual_seed(0)
    model = RDCNet(ndim=2, in_channels=1, factor=4, groups=2, channels_per_group=4, dilations=(1,),
                   iterations=1, downsampling_channels=8).eval()
    large.predict_large(model, src, out=sys.argv[1] + "/out.zarr", chunks=(256, 256), progress=False,
                        postprocess=dict(margin=3.0, min_votes=2))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
def test_peak_memory_is_bounded_by_the_chunk(tmp_path):
    """Two images 8x apart in size peak within 1.2x the memory (whole-image decoding of the big
    one would need ~30 MB more per float32 array of it)."""
    rss = {}  # kilobytes
    for name, shape in (("small", "512,512"), ("big", "2048,1024")):
        (tmp_path / name).mkdir()
        res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / name), shape],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"OMP_NUM_THREADS": "1",
                                                                               **__import__("os").environ})
        assert res.returncode == 0, res.stderr[-2000:]
        rss[name] = int(res.stdout.split()[-1])
    print(f"peak RSS: {rss}")
    assert rss["big"] <= 1.2 * rss["small"], rss
