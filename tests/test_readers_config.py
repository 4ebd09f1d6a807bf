"""Dataset readers (CVPPP, MoNuSeg, 3D stacks) on small fixtures in the real file formats,
experiment configs (shipped and on fixtures: a short training and an evaluation), the figures
of ``rdcnet show`` and the hyperparameter sweep. Tiny models only: the file runs in seconds."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from rdcnet.train import ResumeError
import tifffile
import torch
from PIL import Image

from rdcnet import RDCNet
from rdcnet.config import ExperimentConfig, load_config
from rdcnet.data import read_image, readers
from rdcnet.postprocess import PostprocessConfig
from rdcnet.show import show_iterations, show_votes
from rdcnet.sweep import evaluate_iterations, evaluate_model, run_sweep, table1

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(groups=2, channels_per_group=4, downsampling_channels=4, dilations=[1, 2], iterations=2)


# ---------------------------------------------------------------------------------------------
# fixtures in the real formats


def _blobs(shape, n, rng, radius=5):
    """int labels with n discs at random places (later discs on top)."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return labels


def _rgb_for(labels, rng):
    img = np.full(labels.shape + (3,), 60, np.uint8)
    img[labels > 0] = (40, 170, 40)
    img = img.astype(np.int16) + rng.integers(-10, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _palette_png(path, labels):
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0] + [v for k in range(1, 256) for v in ((37 * k) % 256, (91 * k) % 256, (151 * k) % 256)]
    im.putpalette(palette)
    im.save(path)


@pytest.fixture(scope="module")
def cvppp_dir(tmp_path_factory):
    """5 CVPPP-style plants: RGBA *_rgb.png, palette *_label.png (one RGB-coded), extra *_fg.png."""
    d = tmp_path_factory.mktemp("A1")
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        labels = _blobs((40, 44), 4, rng)
        rgba = np.concatenate([_rgb_for(labels, rng), np.full((40, 44, 1), 255, np.uint8)], -1)
        Image.fromarray(rgba, mode="RGBA").save(d / f"plant{i:03d}_rgb.png")
        if i == 5:  # RGB-coded labels: black background, one colour per leaf
            colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
            Image.fromarray(colours[labels]).save(d / f"plant{i:03d}_label.png")
        else:
            _palette_png(d / f"plant{i:03d}_label.png", labels)
        Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(d / f"plant{i:03d}_fg.png")
    return d


def _xml(polygons):
    regions = "".join(
        f'<Region Id="{k + 1}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for k, poly in enumerate(polygons))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Annotations MicronsPerPixel="0.252">'
            '<Annotation Id="1" Type="4"><Attributes><Attribute Name="Nucleus" Id="0" Value=""/></Attributes>'
            f'<Regions><RegionAttributeHeaders/>{regions}</Regions><Plots/></Annotation></Annotations>\n')


def _square(x0, y0, s):
    return [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]


def _monuseg_image(path, rng, shape=(48, 48)):
    img = rng.integers(120, 220, shape + (3,), dtype=np.uint8)
    tifffile.imwrite(path, img, photometric="rgb")


@pytest.fixture(scope="module")
def monuseg_dirs(tmp_path_factory):
    """Training folder in the official layout (Tissue Images/ + Annotations/, 4 images) and a
    test folder with TIFF and XML side by side (2 images)."""
    root = tmp_path_factory.mktemp("monuseg")
    rng = np.random.default_rng(2)
    train = root / "MoNuSeg 2018 Training Data"
    (train / "Tissue Images").mkdir(parents=True)
    (train / "Annotations").mkdir()
    test = root / "MoNuSegTestData"
    test.mkdir()
    for i in range(4):
        name = f"TCGA-{i:02d}"
        _monuseg_image(train / "Tissue Images" / f"{name}.tif", rng)
        polys = [_square(4 + 10 * k, 5 + 3 * k, 7.5) for k in range(4)]
        (train / "Annotations" / f"{name}.xml").write_text(_xml(polys))
    for i in range(2):
        name = f"TCGA-T{i}"
        _monuseg_image(test / f"{name}.tif", rng)
        (test / f"{name}.xml").write_text(_xml([_square(10, 10, 8), _square(30, 20, 6.4)]))
    return train, test


@pytest.fixture(scope="module")
def stacks_dir(tmp_path_factory):
    """4 stacks (8, 24, 24) uint16 with label stacks using 7 as the undefined value."""
    d = tmp_path_factory.mktemp("stacks")
    (d / "images").mkdir()
    (d / "labels").mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        labels = np.zeros((8, 24, 24), np.uint16)
        labels[2:6, 3:10, 3:10] = 1
        labels[2:6, 12:20, 12:20] = 2
        labels[2:6, 10:12, 3:10] = 7  # undefined boundary
        image = (rng.normal(100, 5, labels.shape) + 200 * (labels > 0)).astype(np.uint16)
        tifffile.imwrite(d / "images" / f"org{i}.tif", image)
        tifffile.imwrite(d / "labels" / f"org{i}.tif", labels)
    return d


# ---------------------------------------------------------------------------------------------
# readers


def test_split_indices_counts_fractions_and_seed():
    s = readers.split_indices(128, (0.6, 0.2, 0.2), seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [76, 26, 26]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(128))
    again = readers.split_indices(128, (0.6, 0.2, 0.2), seed=0)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = readers.split_indices(128, (0.6, 0.2, 0.2), seed=1)
    assert not np.array_equal(s["test"], other["test"])
    c = readers.split_indices(49, (32, 9, 8), seed=0)
    assert [len(c[k]) for k in ("train", "val", "test")] == [32, 9, 8]
    with pytest.raises(ValueError, match="add up to 48 but"):
        readers.split_indices(49, (32, 8, 8))
    with pytest.raises(ValueError, match="must add up to 1"):
        readers.split_indices(10, (0.5, 0.2, 0.2))


def test_read_cvppp_palette_and_rgb_labels_split_recorded(cvppp_dir, tmp_path):
    s = readers.read_cvppp(cvppp_dir, seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    assert s.metadata["seed"] == 3 and s.metadata["sizes"] == {"train": 3, "val": 1, "test": 1}
    all_names = sorted(n for k in s.keys() for n in s.names[k])
    assert all_names == [f"plant{i:03d}" for i in range(1, 6)]
    rng = np.random.default_rng(1)
    expected = {}
    for i in range(1, 6):
        labels = _blobs((40, 44), 4, rng)
        _rgb_for(labels, rng)
        expected[f"plant{i:03d}"] = labels
    for split in s.keys():
        for name, (image, labels), (ip, lp) in zip(s.names[split], s[split], s.files[split]):
            assert image.shape == (40, 44, 3) and image.dtype == np.uint8  # alpha dropped
            assert labels.dtype == np.int32
            assert ip.endswith(f"{name}_rgb.png") and lp.endswith(f"{name}_label.png")
            truth = expected[name]
            if name != "plant005":  # palette indices are the ids
                np.testing.assert_array_equal(labels, truth)
            else:  # RGB-coded: same partition, ids renumbered
                assert (labels > 0).sum() == (truth > 0).sum()
                assert len(np.unique(labels)) == len(np.unique(truth))
    # same seed, same split; the JSON records seed and files
    again = readers.read_cvppp(cvppp_dir, seed=3)
    assert again.names == s.names
    meta = json.loads(s.write_json(tmp_path / "splits.json").read_text())
    assert meta["seed"] == 3 and len(meta["splits"]["test"]) == 1
    assert meta["splits"]["test"][0]["image"].endswith("_rgb.png")


def test_read_cvppp_errors_name_the_file(cvppp_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        readers.read_cvppp(tmp_path / "missing")
    d = tmp_path / "A1"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="no plant"):
        readers.read_cvppp(d)
    (d / "plant001_rgb.png").write_bytes((cvppp_dir / "plant001_rgb.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="plant001_label.png"):
        readers.read_cvppp(d)
    (d / "plant001_label.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="plant001_label.png"):
        readers.read_cvppp(d)


def test_rasterize_imagescope_xml_overlaps_later_wins(tmp_path):
    xml = tmp_path / "a.xml"
    # region 1: square x 2..10, y 2..10; region 2 overlaps its right part; region 3 is inside
    # region 4 (which covers it completely: region 3 vanishes, ids are renumbered)
    xml.write_text(_xml([_square(2, 2, 8), _square(8, 4, 6), _square(20, 20, 3), _square(18, 18, 8),
                         [(1, 1), (3, 3)]]))
    labels = readers.rasterize_imagescope_xml(xml, (32, 32))
    assert labels.dtype == np.int32 and labels.shape == (32, 32)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    assert labels[5, 3] == 1 and labels[6, 9] == 2  # (row = Y, col = X); overlap goes to region 2
    assert labels[21, 21] == 3  # region 4 (renumbered 3) overwrote region 3
    polys = readers.parse_imagescope_xml(xml)
    assert len(polys) == 5 and polys[0].shape == (4, 2)
    np.testing.assert_allclose(polys[0][1], (10, 2))


def test_read_monuseg_layouts_and_split(monuseg_dirs):
    train, test = monuseg_dirs
    s = readers.read_monuseg(train, test, n_val=1, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 2]
    assert s.metadata["n_val"] == 1 and s.metadata["seed"] == 0
    image, labels = s.test[0]
    assert image.shape == (48, 48, 3) and labels.shape == (48, 48) and labels.max() == 2
    assert all(f[1].endswith(".xml") for f in s.files["train"])
    _, labels = s.train[0]
    assert labels.max() == 4
    assert readers.read_monuseg(train, None, n_val=1).test == []
    with pytest.raises(ValueError, match="n_val=4"):
        readers.read_monuseg(train, n_val=4)


def test_read_monuseg_errors_name_the_file(monuseg_dirs, tmp_path):
    train, _ = monuseg_dirs
    d = tmp_path / "bad"
    d.mkdir()
    rng = np.random.default_rng(0)
    _monuseg_image(d / "img.tif", rng)
    with pytest.raises(FileNotFoundError, match="img.xml"):
        readers.read_monuseg_folder(d)
    (d / "img.xml").write_text("<Annotations><Annotation><Regions><Region>")
    with pytest.raises(ValueError, match="img.xml.*not valid XML"):
        readers.read_monuseg_folder(d)
    (d / "img.xml").write_text(_xml([[(1, 1), (5, 1), (5, 5)]]).replace('X="5" Y="5"', 'Y="5"'))
    with pytest.raises(ValueError, match="img.xml.*region 1.*X and Y"):
        readers.read_monuseg_folder(d)
    (d / "img.xml").write_text("<Foo/>")
    with pytest.raises(ValueError, match="img.xml.*not an ImageScope"):
        readers.read_monuseg_folder(d)


def test_read_stacks3d_undefined_spacing_split(stacks_dir, tmp_path):
    s = readers.read_stacks3d(stacks_dir, undefined=7, split=(2, 1, 1), seed=5)
    assert [len(s[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    assert s.spacing == (2.0, 0.26, 0.26)
    image, labels = s.train[0]
    assert image.shape == labels.shape == (8, 24, 24) and labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == [-1, 0, 1, 2]
    assert (labels == -1).sum() == 4 * 2 * 7
    s2 = readers.read_stacks3d(stacks_dir / "images", stacks_dir / "labels", spacing=(1, 0.5, 0.5),
                               split=(0.5, 0.25, 0.25), seed=5)
    assert s2.spacing == (1.0, 0.5, 0.5) and s2.names == s.names
    assert 7 in np.unique(s2.train[0][1])  # no undefined value given: 7 stays an id
    with pytest.raises(ValueError, match="add up to 5 but"):
        readers.read_stacks3d(stacks_dir, split=(3, 1, 1))
    # a 2D label image among the stacks is named
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    tifffile.imwrite(bad / "images" / "a.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    tifffile.imwrite(bad / "labels" / "a.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="a.tif"):
        readers.read_stacks3d(bad, split=(1,))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        readers.read_stacks3d(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# configs


def test_shipped_configs_hold_the_paper_settings():
    expect = {
        "cvppp": dict(factor=(4, 4), crop=(480, 480), margin=10.0, ndim=2, in_channels=3, augment="rgb"),
        "monuseg": dict(factor=(4, 4), crop=(256, 256), margin=5.0, ndim=2, in_channels=3, augment="rgb"),
        "organoid3d": dict(factor=(1, 8, 8), crop=(20, 160, 160), margin=3.0, ndim=3, in_channels=1,
                           augment="grey"),
    }
    for name, e in expect.items():
        cfg = load_config(CONFIGS / f"{name}.toml")
        kw = cfg.model_kwargs()
        assert kw["factor"] == e["factor"] and kw["ndim"] == e["ndim"] and kw["in_channels"] == e["in_channels"]
        assert kw["groups"] == 8 and kw["channels_per_group"] == 64 and kw["downsampling_channels"] == 32
        assert kw["iterations"] == 5 and kw["dropout"] == 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tc = cfg.train_config(out_dir="x")
        assert tc.crop == e["crop"] and tc.margin == e["margin"] and tc.batch_size == 2
        assert tc.lr == 1e-3 and tc.lr_min == 1e-5 and tc.postprocess.margin == e["margin"]
        assert cfg.train["augment"] == e["augment"]
        aug = cfg.augmenter().config
        assert aug.flip_p == 0.5 and aug.offset_sigma == 0.2
        assert cfg.sweep["dilation_iterations"] == 10 and max(cfg.sweep["iteration_counts"]) == 10
        assert cfg.evaluate["split"] == "test"
        assert Path(tc.out_dir).name == "x"
        assert Path(cfg.train["out_dir"]).is_absolute()  # relative to the config's folder
    cv = load_config(CONFIGS / "cvppp.toml")
    assert cv.data["split"] == [0.6, 0.2, 0.2] and Path(cv.data["path"]).is_absolute()
    a = cv.augmenter().config
    assert a.blur_sigma == (0.5, 3.0) and a.elastic_amplitude == 20.0 and a.clip_p == 1.0
    assert a.max_hue == 0.3 and a.zoom == (0.9, 1.1) and a.shear_deg == 5 and a.rotation_deg == 10
    mo = load_config(CONFIGS / "monuseg.toml")
    assert mo.data["n_val"] == 7 and mo.augmenter().config.blur_sigma == (0.5, 2.0)
    org = load_config(CONFIGS / "organoid3d.toml")
    assert org.model_kwargs()["spacing"] == (2.0, 0.26, 0.26) and org.data["split"] == [32, 9, 8]
    assert org.postprocess_config().opening_radius == 0.5
    assert org.augmenter().config.flip_axes == (0, 1, 2) and org.augmenter().config.hsv_p == 0
    model = org.build_model(**TINY)
    assert model.config.factor == (1, 8, 8) and model.config.spacing == (2.0, 0.26, 0.26)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_errors_name_key_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = _write(tmp_path / "bad.toml", '[data]\nkind = "cvppp"\npath = "A1"\n[model]\nfactorr = 4\n')
    with pytest.raises(ValueError, match=r"bad.toml.*'factorr'.*\[model\]"):
        load_config(bad)
    bad = _write(tmp_path / "bad2.toml", '[data]\nkind = "cvppp"\nimages = "A1"\n')
    with pytest.raises(ValueError, match=r"bad2.toml.*'images'.*\[data\] for kind = 'cvppp'"):
        load_config(bad)
    bad = _write(tmp_path / "bad3.toml", '[data]\nkind = "cvppp"\n[trian]\nepochs = 1\n')
    with pytest.raises(ValueError, match=r"bad3.toml.*'trian'.*top level"):
        load_config(bad)
    bad = _write(tmp_path / "bad4.toml", '[data]\nkind = "imagenet"\n')
    with pytest.raises(ValueError, match=r"bad4.toml.*kind must be one of"):
        load_config(bad)
    bad = _write(tmp_path / "bad5.toml", '[data]\nkind = "cvppp"\n[augment]\nwarp = 3\n')
    with pytest.raises(ValueError, match=r"bad5.toml.*'warp'.*\[augment\]"):
        load_config(bad)
    bad = _write(tmp_path / "bad6.toml", '[data]\nkind = "cvppp"\npath = "A1"\n[train\n')
    with pytest.raises(ValueError, match=r"bad6.toml.*not valid TOML"):
        load_config(bad)
    cfg = load_config(_write(tmp_path / "c.toml", '[data]\nkind = "monuseg"\n'))
    with pytest.raises(ValueError, match="c.toml.*needs 'train'"):
        cfg.load_data()


def _fixture_config(tmp_path: Path, cvppp_dir: Path, extra: str = "") -> Path:
    """A config for the CVPPP fixture with a tiny model; data path relative to the file."""
    sub = tmp_path / "cfg"
    sub.mkdir(exist_ok=True)
    rel = Path(os.path.relpath(cvppp_dir, sub)).as_posix()
    path = sub / "fixture.toml"
    path.write_text(f"""
name = "CVPPP-fixture"
[data]
kind = "cvppp"
path = "{rel}"
seed = 0
[model]
factor = [4, 4]
groups = 2
channels_per_group = 4
downsampling_channels = 4
dilations = [1, 2]
iterations = 2
[train]
out_dir = "run"
margin = 4.0
crop = 32
epochs = 1
steps_per_epoch = 2
augment = "rgb"
device = "cpu"
[postprocess]
min_votes = 2
[evaluate]
thresholds = [0.5, 0.75]
save_predictions = true
{extra}
""")
    return path


def test_config_on_fixtures_trains_and_evaluates(tmp_path, cvppp_dir):
    cfg = load_config(_fixture_config(tmp_path, cvppp_dir))
    assert Path(cfg.data["path"]).resolve() == cvppp_dir.resolve()
    assert cfg.train["out_dir"] == str(tmp_path / "cfg" / "run")
    splits = cfg.load_data()
    assert splits.metadata["seed"] == 0 and len(splits.test) == 1
    result = cfg.run_training(progress=False)
    run = tmp_path / "cfg" / "run"
    assert result.best_checkpoint == run / "best.pt" and (run / "log.csv").exists()
    recorded = json.loads((run / "splits.json").read_text())
    assert recorded["seed"] == 0 and [e["name"] for e in recorded["splits"]["test"]] == splits.names["test"]
    assert json.loads((run / "config.json").read_text())["model_resolved"]["groups"] == 2
    ev = cfg.run_evaluation(progress=False)
    for name in ("metrics.md", "metrics.csv", "table1.md", "f1_vs_iou.png"):
        assert ev.files[name].exists() and ev.files[name].stat().st_size > 0
    assert ev.files["metrics.md"].parent == run / "evaluation"
    assert (run / "evaluation" / "predictions" / f"{splits.names['test'][0]}.tif").exists()
    assert ev.table1.splitlines()[0] == "| Dataset | Method | Precision | Recall | F1 | SBD | AJI |"
    assert ev.table1.splitlines()[2].startswith("| CVPPP-fixture | RDCNet | ")
    np.testing.assert_allclose(ev.summary.thresholds, [0.5, 0.75])
    # A resume that is refused touches nothing in the run folder (splits.json was rewritten before).
    (run / "splits.json").write_text("as it was")
    with pytest.raises(ResumeError, match="lr was"):
        cfg.run_training(progress=False, lr=0.5)
    assert (run / "splits.json").read_text() == "as it was"
    # an out_dir override (as from a CLI --out) and train overrides
    tc = cfg.train_config(out_dir=tmp_path / "other", epochs=3)
    assert tc.out_dir == str(tmp_path / "other") and tc.epochs == 3 and tc.crop == (32, 32)


def test_folder_and_synthetic_kinds(tmp_path, stacks_dir):
    cfg = ExperimentConfig.from_dict({"data": {"kind": "folder", "train": str(stacks_dir), "split": [2, 1, 1],
                                               "undefined": 7, "spacing": [2.0, 0.5, 0.5]}})
    s = cfg.load_data()
    assert [len(s[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    kw = cfg.model_kwargs()
    assert kw["ndim"] == 3 and kw["in_channels"] == 1 and kw["spacing"] == (2.0, 0.5, 0.5)
    syn = ExperimentConfig.from_dict({"data": {"kind": "synthetic", "generator": "leaves_2d", "sizes": [2, 1, 1],
                                               "shape": [32, 32]}})
    s = syn.load_data()
    assert len(s.train) == 2 and s.train[0][0].shape == (32, 32, 3)
    assert syn.model_kwargs()["in_channels"] == 3


# ---------------------------------------------------------------------------------------------
# figures, iteration analysis, sweep, Table 1


@pytest.fixture(scope="module")
def tiny2d():
    torch.manual_seed(0)
    return RDCNet(ndim=2, in_channels=3, factor=4, **TINY).eval()


def _png_ok(path: Path):
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_show_iterations_and_votes_2d_and_3d(tmp_path, tiny2d, cvppp_dir, stacks_dir):
    image = read_image(cvppp_dir / "plant001_rgb.png")
    post = PostprocessConfig(margin=4.0, min_votes=2)
    _png_ok(show_iterations(tiny2d, image, tmp_path / "it.png", post))
    _png_ok(show_iterations(tiny2d, image, tmp_path / "it_more.png", iterations=4))
    _png_ok(show_votes(tiny2d, image, tmp_path / "votes.png", post))
    _png_ok(show_votes(tiny2d, image, tmp_path / "votes_final.png", post, all_iterations=False))
    torch.manual_seed(0)
    m3 = RDCNet(ndim=3, in_channels=1, factor=(1, 4, 4), spacing=(2.0, 0.5, 0.5), **TINY).eval()
    stack = tifffile.imread(stacks_dir / "images" / "org0.tif")
    _png_ok(show_iterations(m3, stack, tmp_path / "it3d.png", PostprocessConfig(margin=2.0), z=3))
    _png_ok(show_votes(m3, stack, tmp_path / "votes3d.png", PostprocessConfig(margin=2.0)))
    with pytest.raises(ValueError, match="z=99"):
        show_iterations(m3, stack, tmp_path / "bad.png", z=99)


def test_evaluate_iterations_one_model(tiny2d, cvppp_dir):
    s = readers.read_cvppp(cvppp_dir)
    post = PostprocessConfig(margin=4.0, min_votes=2)
    curves = evaluate_iterations(tiny2d, s.test + s.val, post, iterations=[1, 3], thresholds=[0.5, 0.75, 0.9])
    assert sorted(curves) == [1, 3]
    th, f1 = curves[3]
    np.testing.assert_allclose(th, [0.5, 0.75, 0.9])
    assert f1.shape == (3,) and np.all((f1 >= 0) & (f1 <= 1))
    # the same as evaluating with predict(..., iterations=i)
    direct = evaluate_model(tiny2d, s.test + s.val, post, thresholds=[0.5, 0.75, 0.9], iterations=1)
    np.testing.assert_allclose(curves[1][1], direct.mean["f1"])


def test_table1_layout():
    from rdcnet import metrics

    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8], truth[10:18, 10:18] = 1, 2
    pred = truth.copy()
    pred[10:18, 10:18] = 0  # one of two objects found
    s = metrics.evaluate([truth], [pred], thresholds=[0.5])
    text = table1([("CVPPP2017", "RDCNet", s), ("CVPPP2017", "other", s), ("MoNuSeg", "RDCNet", s)])
    lines = text.splitlines()
    assert lines[0] == "| Dataset | Method | Precision | Recall | F1 | SBD | AJI |"
    assert lines[2] == f"| CVPPP2017 | RDCNet | 100.0 | 50.0 | 66.7 | {100 * s.mean['sbd']:.1f} | {100 * s.mean['aji']:.1f} |"
    assert lines[3].startswith("|  | other |") and lines[4].startswith("| MoNuSeg | RDCNet |")
    assert table1(s, dataset="X").splitlines()[2].startswith("| X | RDCNet | 100.0 |")


def test_run_sweep_writes_csv_and_figures_and_resumes(tmp_path, cvppp_dir):
    cfg = load_config(_fixture_config(tmp_path, cvppp_dir))
    out = tmp_path / "sweep"
    # 2 settings: dilations [1] and [1, 2] at 2 iterations; the iteration panel's "2" is the
    # second one again (shared run folder), "1" is evaluated on it with the recurrence stopped
    res = run_sweep(cfg, dilation_sets=[[1], [1, 2]], iteration_counts=[1, 2], out_dir=out, dilation_iterations=2,
                    iterations_from_one_model=True, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["d1-2_i2", "d1_i2"]
    for name in ("sweep.csv", "sweep.md", "fig4_dilations.png", "fig4_iterations.png"):
        assert res.files[name].exists()
    _png_ok(res.files["fig4_dilations.png"])
    with open(res.files["sweep.csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["panel"], r["dilations"], r["iterations"], r["trained_iterations"]) for r in rows] == [
        ("dilations", "1", "2", "2"), ("dilations", "1-2", "2", "2"),
        ("iterations", "1-2", "1", "2"), ("iterations", "1-2", "2", "2")]
    assert {"f1@0.5", "f1@0.75", "sbd", "aji", "run_dir"} <= set(rows[0])
    assert "| CVPPP-fixture | RDCNet dilations: dilations 1 |" in res.files["sweep.md"].read_text()
    # a second call finds the finished runs and does not train again
    ckpt = out / "d1_i2" / "best.pt"
    before = ckpt.stat().st_mtime_ns
    again = run_sweep(cfg, dilation_sets=[[1]], iteration_counts=[], out_dir=out, dilation_iterations=2,
                      progress=False)
    assert ckpt.stat().st_mtime_ns == before
    assert "fig4_iterations.png" not in again.files and len(again.rows) == 1
