"""Issue 9: bad data, bad arguments and interrupted runs, as a new user would meet them.

Non-finite pixels, option validation (Python API), reproducible CLI training, resume (changed
epochs, interrupted tuning, changed options, damaged last.pt, stray temporaries), validation sets
without instances, tile minimum and progress. The command-line fuzz table is test_cli_fuzz.py."""

import csv
import importlib
import math
import shutil

import numpy as np
import pytest
import torch

from rdcnet import cli
from rdcnet.data import normalize_image, nuclei_2d, write_image, write_labels
from rdcnet.model import RDCNet
from rdcnet.postprocess import PostprocessConfig
from rdcnet.predict import min_tile_shape, predict, predict_output
from rdcnet.train import NonFiniteLossError, ResumeError, TrainConfig, train
from test_train_cli import config as train_cli_config

train_module = importlib.import_module("rdcnet.train")

TINY = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=4, groups=2, channels_per_group=4,
            dilations=(1, 2), iterations=1, dropout=0.0)


@pytest.fixture(scope="module")
def pairs():
    return {"train": nuclei_2d(3, (48, 48), seed=21), "val": nuclei_2d(1, (48, 48), seed=22)}


def config(tmp_path, **kw):
    """test_train_cli's settings, smaller."""
    small = dict(crop=(32, 32), steps_per_epoch=2, augment="none",
                 postprocess=PostprocessConfig(margin=4.0, min_votes=2))
    return train_cli_config(tmp_path, **{**small, **kw})


def tiny_train(tmp_path, pairs, **kw):
    return train(RDCNet(**TINY), pairs["train"], pairs["val"], config(tmp_path, **kw), progress=False)


# ---- 1. non-finite pixels ---------------------------------------------------------------------


def plateau_image():
    """Background 10, squares of 200 (10 % of the pixels): the 1st and 99.8th percentiles stay
    10 and 200 when a background patch is removed, so normalisation is the same without it."""
    image = np.full((64, 64), 10.0, np.float32)
    for y, x in ((8, 40), (40, 8), (44, 44), (30, 30)):
        image[y:y + 10, x:x + 10] = 200.0
    return image


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalisation_ignores_nonfinite_pixels(bad):
    image = plateau_image()
    image[0:20, 0:20] = bad
    x = normalize_image(image)
    finite = np.isfinite(image)
    assert np.isnan(x[0][~finite]).all()  # marked, not blanking the image
    np.testing.assert_array_equal(x[0][finite], np.where(image[finite] == 200.0, 1.0, 0.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_with_a_nonfinite_patch_segments_the_rest_and_warns(bad):
    torch.manual_seed(0)
    model = RDCNet(**TINY).eval()
    post = PostprocessConfig(margin=4.0, min_votes=1)
    clean = plateau_image()
    holed = clean.copy()
    holed[0:20, 0:20] = bad  # a background area of the clean image
    with pytest.warns(UserWarning, match="400 of 4096 pixels are not finite"):
        labels, out = predict(model, holed, post, return_output=True)
    _, expected = predict(model, clean, post, return_output=True)
    # The network saw the same input: outputs are finite and equal; the patch is background.
    torch.testing.assert_close(out.embeddings, expected.embeddings, rtol=0, atol=0)
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[0:20, 0:20] = False
    torch.testing.assert_close(out.probabilities[:, outside], expected.probabilities[:, outside], rtol=0, atol=0)
    assert (out.probabilities[0, ~outside] == 1).all() and not labels[0:20, 0:20].any()


def test_training_refuses_nonfinite_images_naming_them(tmp_path, pairs):
    bad = [(pairs["train"][0][0], pairs["train"][0][1]), (pairs["train"][1][0].astype(np.float32).copy(),
                                                          pairs["train"][1][1])]
    bad[1][0][5:9, 5:9] = np.nan
    with pytest.raises(ValueError, match=r"train_data\[1\]: 16 of 2304 .*mask_nonfinite=True"):
        train(RDCNet(**TINY), bad, pairs["val"], config(tmp_path), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
    # With the option the pixels leave the loss: training runs and its weights stay finite.
    result = train(RDCNet(**TINY), bad, pairs["val"], config(tmp_path, epochs=1, mask_nonfinite=True),
                   progress=False)
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert math.isfinite(result.history[0]["train_loss"])


def test_a_nonfinite_loss_stops_training_and_keeps_the_checkpoints(tmp_path, pairs, monkeypatch):
    tiny_train(tmp_path, pairs, epochs=1)
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt")}

    class Diverging(train_module.RDCNetLoss):
        def forward(self, output, labels):
            loss, parts = super().forward(output, labels)
            return loss * float("nan"), parts

    monkeypatch.setattr(train_module, "RDCNetLoss", Diverging)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, step 1"):
        tiny_train(tmp_path, pairs, epochs=2)
    assert {name: (run / name).read_bytes() for name in before} == before


# ---- 2./5. settings rejected before any work (Python API) ---------------------------------------


@pytest.mark.parametrize("kw,name", [
    (dict(margin=math.inf), "margin"), (dict(margin=0), "margin"), (dict(min_distance=math.nan), "min_distance"),
    (dict(min_votes=-1), "min_votes"), (dict(min_votes=2**70), "min_votes"), (dict(smooth_radius=-1), "smooth_radius"),
    (dict(opening_radius=-1.0), "opening_radius"), (dict(max_distance=0.0), "max_distance"),
])
def test_postprocess_config_rejects_bad_values(kw, name):
    with pytest.raises(ValueError, match=name):
        PostprocessConfig(**kw)


@pytest.mark.parametrize("kw,name", [
    (dict(epochs=-1), "epochs"), (dict(steps_per_epoch=0), "steps_per_epoch"), (dict(lr=math.nan), "lr"),
    (dict(lr=0.0), "lr"), (dict(batch_size=0), "batch_size"), (dict(seed=-1), "seed"), (dict(crop=(0, 8)), "crop"),
    (dict(margin=-2.0), "margin"), (dict(lr_min=1.0), "lr_min"),
])
def test_train_config_rejects_bad_values(kw, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kw)


def test_crops_smaller_than_the_factor_are_refused(tmp_path, pairs):
    with pytest.raises(ValueError, match="crop: expected at least the down-sampling factor"):
        tiny_train(tmp_path, pairs, crop=(2, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, pairs):
    with pytest.raises(ValueError, match="device: 'cuda' asked for"):
        tiny_train(tmp_path, pairs, device="cuda")


def test_a_3d_stack_given_to_a_2d_model_is_called_a_3d_stack():
    model = RDCNet(**TINY)
    with pytest.raises(ValueError, match="3D stack"):
        predict(model, np.zeros((64, 40, 40), np.float32))
    with pytest.raises(ValueError, match=r"3D model expects \(Z, Y, X\) stacks"):
        predict(RDCNet(3, 1, factor=(1, 4, 4), groups=2, channels_per_group=4, iterations=1), np.zeros((40, 40)))


# ---- 6. tiles ------------------------------------------------------------------------------------


def test_tiles_have_a_minimum_and_long_predictions_show_progress(capsys):
    model = RDCNet(**TINY).eval()
    smallest = min_tile_shape(model.config)
    assert smallest == (32, 32)  # twice the overlap: 2 · factor 4 · dilation 2 · 2
    x = torch.rand(1, 100, 100)
    with pytest.raises(ValueError, match="tile_shape: expected at least 32,32"):
        predict_output(model, x, tile_shape=(3, 3))
    capsys.readouterr()
    tiled = predict_output(model, x, tile_shape=smallest, progress=True)
    assert "tiles" in capsys.readouterr().err
    assert tiled.embeddings.shape == (2, 100, 100) and torch.isfinite(tiled.embeddings).all()


# ---- 7. validation sets without instances ------------------------------------------------------


def test_empty_validation_labels_warn_and_select_by_loss(tmp_path, pairs):
    empty_val = [(pairs["val"][0][0], np.zeros_like(pairs["val"][0][1]))]
    with pytest.warns(UserWarning, match="no instances"):
        result = train(RDCNet(**TINY), pairs["train"], empty_val, config(tmp_path), progress=False)
    assert math.isnan(result.best_f1)
    best = torch.load(result.best_checkpoint, weights_only=True)
    losses = [h["val_loss"] for h in result.history]
    assert best["selected_by"] == "val_loss" and best["best_val_loss"] == min(losses)
    assert "postprocess_tuning" not in best


# ---- 4. resume (Python API) ---------------------------------------------------------------------


def test_more_epochs_on_resume_continue_the_schedule_downwards(tmp_path, pairs):
    tiny_train(tmp_path, pairs, epochs=2, steps_per_epoch=3, lr=1e-3, lr_min=1e-5)
    result = tiny_train(tmp_path, pairs, epochs=4, steps_per_epoch=3, lr=1e-3, lr_min=1e-5)
    lrs = [h["lr"] for h in result.history]
    assert len(lrs) == 4 and all(b <= a for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[-1] == pytest.approx(1e-5)
    # The re-planned schedule is saved: resuming the extended run again changes nothing.
    again = tiny_train(tmp_path, pairs, epochs=4, steps_per_epoch=3, lr=1e-3, lr_min=1e-5)
    assert [h["lr"] for h in again.history] == lrs


def test_a_run_killed_before_tuning_tunes_when_resumed(tmp_path, pairs, monkeypatch):
    real = train_module.tune_postprocess

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "tune_postprocess", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny_train(tmp_path, pairs, epochs=1)
    assert "postprocess_tuning" not in torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    monkeypatch.setattr(train_module, "tune_postprocess", real)
    tiny_train(tmp_path, pairs, epochs=1)
    assert "postprocess_tuning" in torch.load(tmp_path / "run" / "best.pt", weights_only=True)


def test_resume_refuses_changed_settings_and_damaged_checkpoints(tmp_path, pairs):
    tiny_train(tmp_path, pairs, epochs=1)
    with pytest.raises(ResumeError, match=r"margin was 4\.0, now 3\.0.*resume=False") as info:
        tiny_train(tmp_path, pairs, epochs=1, margin=3.0, postprocess=PostprocessConfig(margin=4.0, min_votes=3))
    assert [d[0] for d in info.value.differences] == ["margin", "postprocess.min_votes"]
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(ResumeError, match="damaged one"):
        tiny_train(tmp_path, pairs, epochs=1)


# ---- the command line: reproducibility and resume ---------------------------------------------


def write_folders(root, pairs):
    for split in ("images", "labels"):
        (root / split).mkdir(parents=True)
    for i, (image, labels) in enumerate(pairs):
        write_image(root / "images" / f"n{i}.tif", image)
        write_labels(root / "labels" / f"n{i}.tif", labels)
    return root


def train_argv(root, out, *extra):
    return ["train", "--images", str(root / "images"), "--labels", str(root / "labels"), "--out", str(out),
            "--epochs", "2", "--steps", "2", "--groups", "2", "--channels", "4", "--downsampling-channels", "4",
            "--dilations", "1,2", "--iterations", "1", "--crop", "32", "--margin", "4", "--min-votes", "2",
            "--device", "cpu", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, pairs):
    root = write_folders(tmp_path_factory.mktemp("cli"), pairs["train"] + pairs["val"])
    assert cli.main(train_argv(root, root / "run")) == 0
    return root


def test_same_command_and_seed_give_the_same_log_and_weights(cli_run, tmp_path):
    torch.manual_seed(12345)  # whatever came before must not matter
    assert cli.main(train_argv(cli_run, tmp_path / "again")) == 0
    assert (tmp_path / "again" / "log.csv").read_bytes() == (cli_run / "run" / "log.csv").read_bytes()
    rows = list(csv.DictReader(open(tmp_path / "again" / "log.csv")))
    assert len(rows) == 2
    for name in ("last.pt", "best.pt"):
        a = torch.load(cli_run / "run" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "again" / name, weights_only=True)["state_dict"]
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.fixture
def run_copy(cli_run, tmp_path):
    shutil.copytree(cli_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_cli_resume_with_changed_options_names_the_flags(cli_run, run_copy, capsys):
    assert cli.main(train_argv(cli_run, run_copy, "--margin", "3", "--min-votes", "4")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--margin was 4.0, now 3.0" in err and "--min-votes was 2, now 4" in err
    assert "--no-resume" in err and "resume=False" not in err


def test_cli_resume_of_a_truncated_last_pt_is_one_line(cli_run, run_copy, capsys):
    last = run_copy / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert cli.main(train_argv(cli_run, run_copy)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(last) in err and "--no-resume" in err
    assert cli.main(train_argv(cli_run, run_copy, "--no-resume")) == 0


def test_cli_rerun_removes_stray_temporaries(cli_run, run_copy):
    stray = [run_copy / ".training.png.k9x2.tmp", run_copy / ".last.pt.a1b2.tmp"]
    for path in stray:
        path.write_bytes(b"half a file")
    keep = run_copy / "notes.tmp"
    keep.write_text("not ours")
    assert cli.main(train_argv(cli_run, run_copy)) == 0  # finished run: nothing to train
    assert not any(path.exists() for path in stray) and keep.exists()


def test_cli_predict_warns_about_nonfinite_pixels_naming_the_file(tmp_path, capsys):
    from rdcnet.data import read_labels
    from rdcnet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", RDCNet(**TINY))
    image = plateau_image()
    image[0:20, 0:20] = np.nan
    write_image(tmp_path / "holed.tif", image)
    assert cli.main(["predict", str(tmp_path / "holed.tif"), "--model", str(tmp_path / "model.pt"),
                     "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rdcnet predict: warning: {tmp_path / 'holed.tif'}: 400 of 4096 pixels are not finite (NaN or "
                   "Inf): they are treated as background and the rest of the image is segmented as usual"]
    assert not read_labels(tmp_path / "out" / "holed.tif")[0:20, 0:20].any()
