"""Tests of the data layer: file I/O, synthetic data, folder data sets, normalisation, crops and
augmentation. All files are written by the tests into pytest's tmp_path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rdcnet.data import (
    DEFAULT_SPACING_3D,
    PAD_LABEL,
    AugmentConfig,
    Augmenter,
    FolderDataset,
    affine,
    elastic,
    flip,
    gaussian_blur,
    gaussian_noise,
    hsv_shift,
    intensity_clip,
    intensity_offset,
    leaves_2d,
    normalize_image,
    nuclei_2d,
    nuclei_3d,
    random_crop,
    read_image,
    read_labels,
    write_image,
    write_labels,
    write_synthetic_folder,
)


def _labels_2d(shape=(20, 24), n=5, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        lab[y : y + 4, x : x + 5] = k
    return lab


def _touching_pairs(labels):
    pairs = set()
    for ax in range(labels.ndim):
        a = np.moveaxis(labels, ax, 0)
        m = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[:-1][m].tolist(), a[1:][m].tolist())}
    return pairs


# ============================================================================================
# io


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png"])
def test_labels_round_trip_2d(tmp_path, suffix):
    lab = _labels_2d()
    lab[0, 0] = 65535 if suffix == ".png" else 70000  # > uint16 for TIFF: stored as uint32
    p = write_labels(tmp_path / f"lab{suffix}", lab)
    out = read_labels(p)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, lab)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_labels_round_trip_3d_and_negative(tmp_path):
    lab = np.stack([_labels_2d(seed=s) for s in range(4)])
    lab[0, :2, :2] = -1
    p = write_labels(tmp_path / "sub" / "lab3d.tif", lab)  # parent folder created
    out = read_labels(p)
    assert out.shape == lab.shape and out.dtype == np.int32
    np.testing.assert_array_equal(out, lab)


def test_write_labels_overwrites_atomically(tmp_path):
    p = tmp_path / "lab.tif"
    write_labels(p, np.ones((5, 5), np.int32))
    write_labels(p, np.full((5, 5), 2, np.int32))
    np.testing.assert_array_equal(read_labels(p), 2)
    assert sorted(os.listdir(tmp_path)) == ["lab.tif"]


def test_write_labels_rejects(tmp_path):
    with pytest.raises(ValueError, match="PNG"):
        write_labels(tmp_path / "a.png", np.zeros((2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="PNG"):
        write_labels(tmp_path / "a.png", np.full((3, 3), -1, np.int32))
    with pytest.raises(ValueError, match="non-integer"):
        write_labels(tmp_path / "a.tif", np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="unsupported"):
        write_labels(tmp_path / "a.jpg", np.zeros((3, 3), np.int32))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "shape,dtype,suffix",
    [
        ((12, 10), np.float32, ".tif"),
        ((3, 12, 10), np.float32, ".tif"),  # stack of 3, not RGB (last axis is 10)
        ((12, 10, 3), np.float32, ".tif"),
        ((5, 12, 10), np.uint16, ".tiff"),
        ((12, 10), np.uint8, ".png"),
        ((12, 10), np.uint16, ".png"),
        ((12, 10, 3), np.uint8, ".png"),
    ],
)
def test_image_round_trip(tmp_path, shape, dtype, suffix):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        img = rng.normal(size=shape).astype(dtype)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, size=shape).astype(dtype)
    p = write_image(tmp_path / f"img{suffix}", img)
    out = read_image(p)
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_read_image_rgba_palette_and_jpeg(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (8, 9, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])
    pal = Image.fromarray(np.arange(72, dtype=np.uint8).reshape(8, 9) % 4, "L").convert("P")
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (8, 9, 3)
    write_image(tmp_path / "j.jpg", rgba[..., :3])
    assert read_image(tmp_path / "j.jpg").shape == (8, 9, 3)


def test_rgb_coded_png_labels(tmp_path):
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 30]], np.uint8)
    idx = np.array([[0, 1, 1, 2], [0, 3, 3, 2], [1, 1, 0, 0]])
    Image.fromarray(colours[idx], "RGB").save(tmp_path / "lab.png")
    lab = read_labels(tmp_path / "lab.png")
    assert lab.dtype == np.int32
    # black -> 0, other colours -> 1..n in order of first appearance
    np.testing.assert_array_equal(lab, [[0, 1, 1, 2], [0, 3, 3, 2], [1, 1, 0, 0]])
    # an undefined colour
    lab = read_labels(tmp_path / "lab.png", undefined=(10, 20, 30))
    np.testing.assert_array_equal(lab, [[0, 1, 1, 2], [0, -1, -1, 2], [1, 1, 0, 0]])


def test_palette_png_labels_use_indices(tmp_path):
    idx = np.array([[0, 1, 1], [2, 2, 0], [5, 5, 5]], np.uint8)
    im = Image.fromarray(idx, "P")
    palette = np.zeros((256, 3), np.uint8)
    palette[1:] = np.random.default_rng(0).integers(1, 255, (255, 3))
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "lab.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "lab.png"), idx)


def test_undefined_value_mapping(tmp_path):
    lab = np.array([[0, 1, 2], [255, 255, 1]], np.int32)
    write_labels(tmp_path / "l.png", lab)
    out = read_labels(tmp_path / "l.png", undefined=255)
    np.testing.assert_array_equal(out, [[0, 1, 2], [-1, -1, 1]])
    with pytest.raises(ValueError, match="colour"):
        read_labels(tmp_path / "l.png", undefined=(1, 2, 3))


def test_missing_and_bad_files_named(tmp_path):
    missing = tmp_path / "nope_42.tif"
    with pytest.raises(FileNotFoundError, match="nope_42.tif"):
        read_image(missing)
    with pytest.raises(FileNotFoundError, match="nope_42.tif"):
        read_labels(missing)
    bad = tmp_path / "corrupt_7.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="corrupt_7.png"):
        read_image(bad)
    bad_tif = tmp_path / "corrupt_8.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="corrupt_8.tif"):
        read_labels(bad_tif)
    other = tmp_path / "data_9.npy"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="data_9.npy"):
        read_image(other)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image(tmp_path)


def test_float_labels_must_be_integral(tmp_path):
    write_image(tmp_path / "f.tif", np.array([[0.0, 1.0], [2.0, 3.0]], np.float32))
    np.testing.assert_array_equal(read_labels(tmp_path / "f.tif"), [[0, 1], [2, 3]])
    write_image(tmp_path / "g.tif", np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(ValueError, match="g.tif"):
        read_labels(tmp_path / "g.tif")


# ============================================================================================
# synthetic


def _check_instances(labels, min_objects):
    k = int(labels.max())
    assert labels.dtype == np.int32 and labels.min() == 0
    assert k >= min_objects
    np.testing.assert_array_equal(np.unique(labels), np.arange(k + 1))  # sequential
    for i, slc in enumerate(ndimage.find_objects(labels), start=1):
        _, n = ndimage.label(labels[slc] == i)
        assert n == 1, f"label {i} has {n} components"


def test_nuclei_2d_properties():
    data = nuclei_2d(3, seed=5)
    assert len(data) == 3
    for image, labels in data:
        assert image.shape == (128, 128) and image.dtype == np.float32
        assert np.all(np.isfinite(image))
        _check_instances(labels, min_objects=10)
        assert len(_touching_pairs(labels)) >= 3  # dense clusters that share borders
        areas = np.bincount(labels.ravel())[1:]
        assert areas.max() >= 3 * areas.min()  # varied sizes
        # nuclei brighter than background, but the contact lines stay subtle
        fg, bg = image[labels > 0].mean(), image[labels == 0].mean()
        assert fg > bg + 0.1
        contact = np.zeros(labels.shape, bool)
        for ax in range(2):
            a = np.moveaxis(labels, ax, 0)
            t = np.moveaxis(contact, ax, 0)
            m = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
            t[:-1] |= m
            t[1:] |= m
        assert image[contact].mean() > 0.75 * fg


def test_synthetic_deterministic_and_per_index():
    a = nuclei_2d(3, shape=(64, 80), seed=11)
    b = nuclei_2d(2, shape=(64, 80), seed=11)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert a[0][0].shape == (64, 80)
    c = nuclei_2d(1, shape=(64, 80), seed=12)
    assert not np.array_equal(a[0][1], c[0][1])
    assert not np.array_equal(a[0][1], a[1][1])
    l1, l2 = leaves_2d(1, seed=3), leaves_2d(1, seed=3)
    np.testing.assert_array_equal(l1[0][0], l2[0][0])
    z1, z2 = nuclei_3d(1, seed=3), nuclei_3d(1, seed=3)
    np.testing.assert_array_equal(z1[0][0], z2[0][0])
    np.testing.assert_array_equal(z1[0][1], z2[0][1])


def test_nuclei_2d_count_argument():
    for _, labels in nuclei_2d(2, seed=0, n_nuclei=6, touching=0.0):
        assert 1 <= labels.max() <= 6


def test_leaves_2d_properties():
    for image, labels in leaves_2d(2, seed=1):
        assert image.shape == (128, 128, 3) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1
        _check_instances(labels, min_objects=4)
        assert len(_touching_pairs(labels)) >= 3
        leaf = image[labels > 0].mean(0)
        soil = image[labels == 0].mean(0)
        assert leaf[1] > leaf[0] and leaf[1] > leaf[2]  # green leaves
        assert soil[0] > soil[2]  # brown soil
        # elongated: principal axis ratio well above 1 for most leaves
        ratios = []
        for i in range(1, labels.max() + 1):
            yx = np.argwhere(labels == i).astype(float)
            if len(yx) < 30:
                continue
            ev = np.linalg.eigvalsh(np.cov(yx.T))
            ratios.append(np.sqrt(ev[1] / max(ev[0], 1e-6)))
        assert np.median(ratios) > 1.4


def test_nuclei_3d_properties():
    (image, labels), = nuclei_3d(1, seed=2)
    assert image.shape == (16, 64, 64) and image.dtype == np.float32
    _check_instances(labels, min_objects=20)
    assert len(_touching_pairs(labels)) >= 3
    assert DEFAULT_SPACING_3D[0] > DEFAULT_SPACING_3D[1]
    slices = ndimage.find_objects(labels)
    z_ext = np.mean([s[0].stop - s[0].start for s in slices])
    y_ext = np.mean([s[1].stop - s[1].start for s in slices])
    assert z_ext < 0.75 * y_ext  # anisotropic: fewer slices than pixels per object
    (img2, lab2), = nuclei_3d(1, shape=(8, 32, 40), spacing=(1.0, 1.0, 1.0), seed=2)
    assert img2.shape == lab2.shape == (8, 32, 40)


def test_synthetic_folder_and_dataset(tmp_path):
    pairs = write_synthetic_folder(tmp_path / "d", "nuclei_2d", n=3, seed=4, shape=(48, 40))
    assert len(pairs) == 3
    ds = FolderDataset(tmp_path / "d")
    assert len(ds) == 3 and ds.names == [p[0].stem for p in pairs]
    ref = nuclei_2d(3, shape=(48, 40), seed=4)
    for (img, lab), (ri, rl) in zip(ds, ref):
        np.testing.assert_array_equal(img, ri)
        np.testing.assert_array_equal(lab, rl)
    write_synthetic_folder(tmp_path / "r", "leaves_2d", n=1, shape=(32, 32))
    ds = FolderDataset(tmp_path / "r", normalize=True)
    img, lab = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == np.float32 and lab.shape == (32, 32)
    write_synthetic_folder(tmp_path / "z", "nuclei_3d", n=1, shape=(6, 20, 24))
    ds = FolderDataset(tmp_path / "z", spacing=DEFAULT_SPACING_3D, normalize=True)
    img, lab = ds[0]
    assert img.shape == (1, 6, 20, 24) and lab.shape == (6, 20, 24)
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        write_synthetic_folder(tmp_path / "x", "cells", n=1)


# ============================================================================================
# folder data sets


def _write_pair(img_path, lab_path, shape=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    write_image(img_path, rng.integers(0, 255, shape).astype(np.uint8))
    write_labels(lab_path, _labels_2d(shape, seed=seed))


def test_folder_pairing_images_labels_subfolders(tmp_path):
    for i, name in enumerate(["b", "a", "c"]):
        _write_pair(tmp_path / "images" / f"{name}.png", tmp_path / "labels" / f"{name}.tif", seed=i)
    ds = FolderDataset(tmp_path)
    assert ds.names == ["a", "b", "c"]
    assert [p[1].name for p in ds.pairs] == ["a.tif", "b.tif", "c.tif"]
    img, lab = ds[1]
    assert img.shape == (10, 12) and lab.dtype == np.int32
    np.testing.assert_array_equal(lab, _labels_2d((10, 12), seed=0))
    # explicit label_dir and a pattern
    ds2 = FolderDataset(tmp_path / "images", tmp_path / "labels", pattern="[ab]*")
    assert ds2.names == ["a", "b"]
    # explicit pairs
    ds3 = FolderDataset(ds.pairs[:2])
    assert len(ds3) == 2
    np.testing.assert_array_equal(ds3[0][1], ds[0][1])
    with pytest.raises(IndexError):
        ds3[2]


def test_folder_pairing_suffix_map_same_folder(tmp_path):
    colours = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10]], np.uint8)
    for name in ["plant001", "plant002"]:
        rgb = np.random.default_rng(0).integers(0, 255, (9, 11, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{name}_rgb.png")
        idx = np.zeros((9, 11), int)
        idx[2:5, 2:6], idx[5:8, 3:9] = 1, 2
        Image.fromarray(colours[idx]).save(tmp_path / f"{name}_label.png")
        Image.fromarray(rgb[..., 0]).save(tmp_path / f"{name}_fg.png")  # ignored
    ds = FolderDataset(tmp_path, suffixes=("_rgb", "_label"))
    assert ds.names == ["plant001", "plant002"]
    img, lab = ds[0]
    assert img.shape == (9, 11, 3)
    assert set(np.unique(lab)) == {0, 1, 2}
    with pytest.raises(ValueError, match="suffixes"):
        FolderDataset(tmp_path)


def test_folder_pairing_errors(tmp_path):
    _write_pair(tmp_path / "images" / "x1.tif", tmp_path / "labels" / "x1.tif")
    _write_pair(tmp_path / "images" / "x2.tif", tmp_path / "labels" / "other.tif")
    with pytest.raises(FileNotFoundError, match="x2.tif"):
        FolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        FolderDataset(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="no_labels"):
        FolderDataset(tmp_path / "images", tmp_path / "no_labels")
    with pytest.raises(ValueError, match="no images"):
        FolderDataset(tmp_path / "images", tmp_path / "labels", pattern="zzz*")
    with pytest.raises(FileNotFoundError, match="gone.tif"):
        FolderDataset([(tmp_path / "images" / "x1.tif", tmp_path / "gone.tif")])
    # ambiguous partners
    write_labels(tmp_path / "labels" / "x1.png", np.zeros((10, 12), np.int32))
    with pytest.raises(ValueError, match="ambiguous"):
        FolderDataset(tmp_path / "images", tmp_path / "labels", pattern="x1*")


def test_folder_shape_mismatch_and_spacing(tmp_path):
    write_image(tmp_path / "images" / "a.tif", np.zeros((10, 12), np.float32))
    write_labels(tmp_path / "labels" / "a.tif", np.zeros((10, 13), np.int32))
    ds = FolderDataset(tmp_path, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="a.tif"):
        ds[0]
    with pytest.raises(ValueError, match="spacing"):
        FolderDataset(tmp_path, spacing=(1.0, -1.0))
    write_labels(tmp_path / "labels" / "a.tif", np.zeros((10, 12), np.int32))
    with pytest.raises(ValueError, match="spacing"):
        FolderDataset(tmp_path, spacing=(1.0, 1.0, 1.0))[0]


def test_folder_undefined_and_cache(tmp_path):
    lab = np.array([[0, 1], [9, 9]], np.int32)
    write_image(tmp_path / "images" / "a.tif", np.zeros((2, 2), np.float32))
    write_labels(tmp_path / "labels" / "a.tif", lab)
    ds = FolderDataset(tmp_path, undefined=9, cache=True)
    np.testing.assert_array_equal(ds[0][1], [[0, 1], [-1, -1]])
    os.remove(tmp_path / "labels" / "a.tif")
    np.testing.assert_array_equal(ds[0][1], [[0, 1], [-1, -1]])  # served from the cache


# ============================================================================================
# normalisation and crops


def test_normalize_grey_percentiles():
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 1000, (50, 60)).astype(np.uint16)
    before = img.copy()
    x = normalize_image(img)
    assert x.shape == (1, 50, 60) and x.dtype == np.float32
    np.testing.assert_array_equal(img, before)
    assert np.percentile(x, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(x, 99.8) == pytest.approx(1.0, abs=1e-5)
    assert x.min() < 0 and x.max() > 1  # not clipped
    f = rng.normal(size=(4, 8, 8)).astype(np.float32)
    f_before = f.copy()
    y = normalize_image(f)  # 3D grey stack
    assert y.shape == (1, 4, 8, 8)
    np.testing.assert_array_equal(f, f_before)  # input untouched


def test_normalize_constant_and_sparse():
    for value in (0.0, 7.5):
        x = normalize_image(np.full((8, 8), value, np.float32))
        assert np.all(np.isfinite(x)) and np.all(x == 0)
    sparse = np.zeros((100, 100), np.float32)
    sparse[0, 0] = 5.0  # both percentiles 0: falls back to max - min
    x = normalize_image(sparse)
    assert np.all(np.isfinite(x)) and x.max() == pytest.approx(1.0)
    with_nan = np.arange(16, dtype=np.float32).reshape(4, 4)
    with_nan[0, 0] = np.nan
    x = normalize_image(with_nan)
    assert np.isnan(x[0, 0, 0]) and np.all(np.isfinite(x[0].ravel()[1:]))


def test_normalize_rgb_layout():
    rng = np.random.default_rng(1)
    rgb = np.stack(
        [rng.uniform(0, 10, (16, 20)), rng.uniform(100, 200, (16, 20)), np.full((16, 20), 3.0)],
        axis=-1,
    )
    x = normalize_image(rgb, channel_axis=-1)
    assert x.shape == (3, 16, 20)
    for c in range(2):
        expected = normalize_image(rgb[..., c])[0]
        np.testing.assert_allclose(x[c], expected, atol=1e-6)
    assert np.all(x[2] == 0)


def test_random_crop_inside():
    img = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40)
    lab = np.arange(30 * 40, dtype=np.int32).reshape(30, 40)
    ci, cl = random_crop(img, lab, (16, 24), np.random.default_rng(3))
    assert ci.shape == (2, 16, 24) and cl.shape == (16, 24)
    y0, x0 = divmod(int(cl[0, 0]), 40)
    np.testing.assert_array_equal(cl, lab[y0 : y0 + 16, x0 : x0 + 24])
    np.testing.assert_array_equal(ci, img[:, y0 : y0 + 16, x0 : x0 + 24])
    ci2, cl2 = random_crop(img, lab, (16, 24), np.random.default_rng(3))
    np.testing.assert_array_equal(cl, cl2)
    # None keeps a whole axis, int applies to all axes
    assert random_crop(img, lab, (None, 8), np.random.default_rng(0))[1].shape == (30, 8)
    assert random_crop(img, None, 8, np.random.default_rng(0))[1] is None


def test_random_crop_pads_small_images():
    img = np.random.default_rng(0).normal(size=(1, 5, 12)).astype(np.float32)
    lab = np.arange(1, 61, dtype=np.int32).reshape(5, 12)
    ci, cl = random_crop(img, lab, (9, 8), np.random.default_rng(1))
    assert ci.shape == (1, 9, 8) and cl.shape == (9, 8)
    pad_rows = np.all(cl == PAD_LABEL, axis=1)
    assert PAD_LABEL == -1 and pad_rows.sum() == 4  # padded rows: undefined
    assert np.all(cl[~pad_rows] > 0)
    rows = np.flatnonzero(~pad_rows)
    assert np.all(np.diff(rows) == 1)  # original rows kept together
    # image padded by reflection: padded rows repeat real rows
    real = {tuple(r) for r in np.round(ci[0][~pad_rows], 6)}
    assert all(tuple(r) in real for r in np.round(ci[0][pad_rows], 6))
    # a single-pixel axis pads too
    ci, cl = random_crop(np.ones((1, 1, 4), np.float32), np.ones((1, 4), np.int32), 4,
                         np.random.default_rng(0))
    assert ci.shape == (1, 4, 4) and np.all(ci == 1) and (cl == -1).sum() == 12
    with pytest.raises(ValueError, match="labels shape"):
        random_crop(img, lab[:4], 4, np.random.default_rng(0))


# ============================================================================================
# augmentation


@pytest.fixture(scope="module")
def rgb_sample():
    image, labels = leaves_2d(1, shape=(48, 48), seed=0)[0]
    return normalize_image(image, -1), labels


@pytest.fixture(scope="module")
def grey3d_sample():
    image, labels = nuclei_3d(1, shape=(6, 24, 24), seed=0)[0]
    labels = labels.copy()
    labels[0, :3, :3] = -1
    return normalize_image(image), labels


GEOMETRIC = {
    "flip": lambda im, lb, rng: flip(im, lb, rng),
    "flip_axes": lambda im, lb, rng: flip(im, lb, rng, axes=(-1,), p=1.0),
    "affine": lambda im, lb, rng: affine(im, lb, rng, (0.8, 1.2), 10.0, 30.0),
    "affine_constant": lambda im, lb, rng: affine(im, lb, rng, mode="constant"),
    "elastic": lambda im, lb, rng: elastic(im, lb, rng, amplitude=4.0),
    "elastic_axes": lambda im, lb, rng: elastic(im, lb, rng, amplitude=[0.0] * (im.ndim - 3) + [3.0, 3.0]),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("sample", ["rgb_sample", "grey3d_sample"])
def test_geometric_augmentations(name, sample, request):
    image, labels = request.getfixturevalue(sample)
    fn = GEOMETRIC[name]
    before = image.copy(), labels.copy()
    out_i, out_l = fn(image, labels, np.random.default_rng(7))
    assert out_i.shape == image.shape and out_i.dtype == np.float32
    assert out_l.shape == labels.shape and out_l.dtype == labels.dtype
    allowed = set(np.unique(labels).tolist()) | ({-1} if name == "affine_constant" else set())
    assert set(np.unique(out_l).tolist()) <= allowed  # never interpolated
    assert np.all(np.isfinite(out_i))
    again_i, again_l = fn(image, labels, np.random.default_rng(7))
    np.testing.assert_array_equal(out_i, again_i)
    np.testing.assert_array_equal(out_l, again_l)
    np.testing.assert_array_equal(image, before[0])  # inputs untouched
    np.testing.assert_array_equal(labels, before[1])
    img_only, none = fn(image, None, np.random.default_rng(7))
    assert none is None
    np.testing.assert_array_equal(img_only, out_i)


def test_geometric_image_label_alignment():
    # a label image used as the image: after any geometric transform both must agree
    labels = nuclei_2d(1, shape=(48, 48), seed=1)[0][1]
    image = labels[None].astype(np.float32)
    out_i, out_l = flip(image, labels, np.random.default_rng(3))
    np.testing.assert_array_equal(out_i[0], out_l)
    # interpolated image vs nearest-neighbour labels: they agree except along edges
    out_i, out_l = elastic(image, labels, np.random.default_rng(3), amplitude=4.0)
    assert not np.array_equal(out_l, labels)
    assert np.mean(np.abs(out_i[0] - out_l) < 0.5) > 0.9
    out_i, out_l = affine(image, labels, np.random.default_rng(3), (1.0, 1.0), 0.0, 0.0)
    np.testing.assert_array_equal(out_l, labels)  # identity transform
    np.testing.assert_allclose(out_i[0], labels, atol=1e-4)


def test_flips_invertible(rgb_sample, grey3d_sample):
    for image, labels in (rgb_sample, grey3d_sample):
        seen_change = False
        for seed in range(6):
            i1, l1 = flip(image, labels, np.random.default_rng(seed), rotate90=False)
            seen_change |= not np.array_equal(l1, labels)
            i2, l2 = flip(i1, l1, np.random.default_rng(seed), rotate90=False)
            np.testing.assert_array_equal(i2, image)
            np.testing.assert_array_equal(l2, labels)
        assert seen_change
    # the 90-degree rotations are exact permutations of the pixels
    image, labels = rgb_sample
    for seed in range(4):
        i1, l1 = flip(image, labels, np.random.default_rng(seed), p=0.0)
        np.testing.assert_array_equal(np.sort(l1, axis=None), np.sort(labels, axis=None))
        assert any(np.array_equal(l1, np.rot90(labels, k)) for k in range(4))


@pytest.mark.parametrize(
    "fn",
    [
        lambda im, rng: intensity_offset(im, rng, 0.2),
        lambda im, rng: gaussian_noise(im, rng, 0.1),
        lambda im, rng: gaussian_blur(im, rng, 2.0, p=1.0),
        lambda im, rng: hsv_shift(im, rng),
        lambda im, rng: intensity_clip(im, rng),
    ],
    ids=["offset", "noise", "blur", "hsv", "clip"],
)
def test_intensity_augmentations(rgb_sample, fn):
    image, _ = rgb_sample
    before = image.copy()
    out = fn(image, np.random.default_rng(5))
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, fn(image, np.random.default_rng(5)))
    np.testing.assert_array_equal(image, before)
    assert not np.array_equal(out, image)


def test_intensity_details(rgb_sample):
    image, _ = rgb_sample
    off = intensity_offset(image, np.random.default_rng(0), 0.5) - image
    assert np.allclose(off, off.flat[0], atol=1e-5)  # one offset per patch
    assert gaussian_blur(image, np.random.default_rng(0), p=0.0) is not image
    np.testing.assert_array_equal(gaussian_blur(image, np.random.default_rng(0), p=0.0), image)
    same = hsv_shift(image, np.random.default_rng(0), 0.0, 0.0, 0.0)
    np.testing.assert_allclose(same, image, atol=1e-4)  # HSV round trip keeps the range
    with pytest.raises(ValueError, match="3 channels"):
        hsv_shift(image[:1], np.random.default_rng(0))


def test_augmenter_presets(rgb_sample, grey3d_sample):
    image, labels = rgb_sample
    aug = Augmenter.for_rgb()
    a1 = aug(image, labels, np.random.default_rng(9))
    a2 = aug(image, labels, np.random.default_rng(9))
    np.testing.assert_array_equal(a1[0], a2[0])
    np.testing.assert_array_equal(a1[1], a2[1])
    assert a1[0].shape == image.shape and a1[1].shape == labels.shape
    assert set(np.unique(a1[1]).tolist()) <= set(np.unique(labels).tolist())
    image3, labels3 = grey3d_sample
    aug3 = Augmenter.for_grey(3)
    b = aug3(image3, labels3, np.random.default_rng(1))
    assert b[0].shape == image3.shape
    assert set(np.unique(b[1]).tolist()) <= set(np.unique(labels3).tolist())
    with pytest.raises(ValueError, match="3D"):
        aug3(image, labels, np.random.default_rng(0))
    assert Augmenter.for_grey(2).config.noise_max_sigma > 0


def test_augmenter_config():
    aug = Augmenter({"flip_p": 0.0, "rotate90": False, "offset_sigma": 0.3})
    assert aug.config.offset_sigma == 0.3
    aug2 = Augmenter(AugmentConfig(offset_sigma=0.3, blur_p=0.5), noise_max_sigma=0.2)
    assert (aug2.config.offset_sigma, aug2.config.blur_p, aug2.config.noise_max_sigma) == (
        0.3, 0.5, 0.2,
    )
    with pytest.raises(ValueError, match="bogus"):
        Augmenter({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        Augmenter(bogus=1)
    ident = Augmenter(flip_p=0.0, rotate90=False)
    x = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    lab = np.ones((8, 8), np.int32)
    out, out_l = ident(x, lab, np.random.default_rng(0))
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(out_l, lab)
