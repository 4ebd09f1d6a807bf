"""Training (loss falls, F1 rises, checkpoints, resume after interruption) and the command line."""

import csv
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rdcnet import cli, metrics
from rdcnet.data import nuclei_2d, read_labels, write_image, write_labels
from rdcnet.model import RDCNet
from rdcnet.postprocess import PostprocessConfig
from rdcnet.predict import predict
from rdcnet.checkpoint import load_checkpoint, save_checkpoint
from rdcnet.train import TrainConfig, train

SMALL = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=8, groups=2, channels_per_group=8,
             dilations=(1, 2, 4), iterations=3, dropout=0.0)


@pytest.fixture(scope="module")
def nuclei():
    return {"train": nuclei_2d(6, (80, 80), seed=11), "val": nuclei_2d(2, (80, 80), seed=12)}


def config(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), margin=4.0, crop=(64, 64), epochs=2, steps_per_epoch=5,
                augment="grey", seed=0, device="cpu", postprocess=PostprocessConfig(margin=4.0, min_votes=5))
    base.update(kw)
    return TrainConfig(**base)


def mean_f1(model, pairs, post):
    preds = [predict(model, im, post) for im, _ in pairs]
    return metrics.evaluate([l for _, l in pairs], preds).mean["f1@0.5"]


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_raises_f1(tmp_path, nuclei):
    torch.manual_seed(0)
    model = RDCNet(**SMALL)
    cfg = config(tmp_path, epochs=6, steps_per_epoch=25, lr=3e-3)
    before = mean_f1(model, nuclei["val"], cfg.postprocess)
    result = train(model, nuclei["train"], nuclei["val"], cfg, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    best, post, _ = load_checkpoint(result.best_checkpoint)
    after = mean_f1(best, nuclei["val"], post)
    assert after > before + 0.2, (before, after, [h["val_f1"] for h in result.history])
    # Logs and plot.
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"train_loss", "val_loss", "val_f1", "lr"} <= set(rows[0])
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    # The decoding was tuned on the validation images and stored with the best model.
    tuning = torch.load(result.best_checkpoint, weights_only=True)["postprocess_tuning"]
    assert tuning["f1"] >= tuning["f1_before"]
    # A 20×20 NaN patch (issue 9) leaves the objects elsewhere found.
    image = nuclei["val"][0][0].astype(np.float32)
    clean = predict(best, image, post)
    holed = image.copy()
    holed[:20, :20] = np.nan
    with pytest.warns(UserWarning, match="400 of 6400 pixels are not finite"):
        labels = predict(best, holed, post)
    assert not labels[:20, :20].any()
    objects_away = len(np.setdiff1d(np.unique(clean[30:, 30:]), [0]))
    assert objects_away > 0 and len(np.setdiff1d(np.unique(labels[30:, 30:]), [0])) >= objects_away - 1


def test_tune_postprocess_recovers_from_a_bad_window(nuclei):
    from rdcnet.data import normalize_image
    from rdcnet.train import tune_postprocess
    from rdcnet_ext.testing import synthetic_labels

    # A "model" whose output is perfect: decode tuning alone decides the F1.
    class Perfect(torch.nn.Module):
        def __init__(self, labels):
            super().__init__()
            self.config = RDCNet(**SMALL).config
            self.labels = labels
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, origin=None, iterations=None):
            from rdcnet.model import RDCNetOutput

            lab = self.labels
            emb = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in lab.shape],
                                             indexing="ij"))
            for k in lab.unique()[1:]:
                m = lab == k
                emb[:, m] = emb[:, m].mean(1, keepdim=True).round()
            fg = (lab > 0).float()
            p = torch.stack([1 - fg, fg])[None]
            return RDCNetOutput(emb[None], p, p.log())

    labels = synthetic_labels((64, 64), 25, seed=1)
    model = Perfect(torch.from_numpy(labels).long())
    bad = PostprocessConfig(margin=12.0, min_votes=1, smooth_radius=0)  # window far too large
    best, f1, before = tune_postprocess(model, [np.zeros((1, 64, 64), np.float32)], [labels], bad)
    assert before < 0.9 and f1 == 1.0 and best.min_distance < 12.0


def test_checkpoint_has_full_configuration_and_reloads(tmp_path, nuclei):
    torch.manual_seed(0)
    model = RDCNet(**SMALL, spacing=(0.5, 0.5))
    cfg = config(tmp_path, epochs=1, steps_per_epoch=2, margin=2.0)
    result = train(model, nuclei["train"], nuclei["val"], cfg, progress=False)
    again, post, ckpt = load_checkpoint(result.last_checkpoint)
    assert again.config == model.config and post.margin == 4.0
    assert ckpt["train_config"]["margin"] == 2.0 and ckpt["epoch"] == 0
    x = torch.rand(1, 1, 40, 40)
    model.eval()
    torch.testing.assert_close(again(x).embeddings, model(x).embeddings)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_interrupted_training_resumes_after_the_last_finished_epoch(tmp_path, nuclei, monkeypatch):
    train_module = importlib.import_module("rdcnet.train")

    cfg = config(tmp_path, epochs=3, steps_per_epoch=3)
    torch.manual_seed(0)
    train(RDCNet(**SMALL), nuclei["train"], nuclei["val"], config(tmp_path, epochs=3, steps_per_epoch=3),
          progress=False)
    reference = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]

    other = tmp_path / "interrupted"
    cfg = config(other, epochs=3, steps_per_epoch=3)
    calls = {"n": 0}
    real_batch = train_module._Sampler.batch

    def interrupting_batch(self, size):
        calls["n"] += 1
        if calls["n"] == 5:  # during the second epoch
            raise KeyboardInterrupt
        return real_batch(self, size)

    monkeypatch.setattr(train_module._Sampler, "batch", interrupting_batch)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(RDCNet(**SMALL), nuclei["train"], nuclei["val"], cfg, progress=False)
    ckpt = torch.load(other / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and len(ckpt["history"]) == 1  # the finished epoch is on disk
    monkeypatch.setattr(train_module._Sampler, "batch", real_batch)
    torch.manual_seed(123)  # resuming restores the RNG states: the seed here must not matter
    result = train(RDCNet(**SMALL), nuclei["train"], nuclei["val"], cfg, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    resumed = torch.load(other / "run" / "last.pt", weights_only=True)["state_dict"]
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], msg=k)


def test_resume_refuses_another_model(tmp_path, nuclei):
    cfg = config(tmp_path, epochs=1, steps_per_epoch=1)
    train(RDCNet(**SMALL), nuclei["train"], nuclei["val"], cfg, progress=False)
    with pytest.raises(ValueError, match="resume"):
        train(RDCNet(**{**SMALL, "groups": 4}), nuclei["train"], nuclei["val"], cfg, progress=False)


def test_train_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="train_data"):
        train(RDCNet(**SMALL), [], [(np.zeros((8, 8)), np.zeros((8, 8), int))], config(tmp_path), progress=False)
    with pytest.raises(ValueError, match="does not match"):
        train(RDCNet(**SMALL), [(np.zeros((8, 8)), np.zeros((8, 9), int))], [], config(tmp_path), progress=False)


# ---- command line --------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = RDCNet(**SMALL)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config(tmp_path))
    return path, model


def test_cli_predict_on_a_tiff_writes_the_expected_labels(tmp_path, checkpoint, nuclei):
    path, model = checkpoint
    image = nuclei["val"][0][0]
    write_image(tmp_path / "cells.tif", image)
    assert cli.main(["predict", str(tmp_path / "cells.tif"), "--model", str(path), "--out", str(tmp_path / "out")]) == 0
    written = read_labels(tmp_path / "out" / "cells.tif")
    model.eval()
    np.testing.assert_array_equal(written, predict(model, image, PostprocessConfig(margin=4.0, min_votes=5)))


def test_cli_predict_folder_and_3d(tmp_path):
    torch.manual_seed(0)
    model = RDCNet(3, 1, factor=(1, 4, 4), groups=2, channels_per_group=4, iterations=1, spacing=(2, .5, .5))
    save_checkpoint(tmp_path / "m3.pt", model)
    (tmp_path / "in").mkdir()
    for i in range(2):
        write_image(tmp_path / "in" / f"stack{i}.tif", np.random.rand(4, 20, 24).astype(np.float32))
    assert cli.main(["predict", str(tmp_path / "in"), "--model", str(tmp_path / "m3.pt"), "--out",
                     str(tmp_path / "out"), "--opening-radius", "0.5"]) == 0
    assert read_labels(tmp_path / "out" / "stack1.tif").shape == (4, 20, 24)


def test_cli_evaluate_writes_table_csv_and_plot(tmp_path, nuclei, capsys):
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    for i, (_, lab) in enumerate(nuclei["train"][:2]):
        write_labels(tmp_path / "gt" / f"im{i}.tif", lab)
        write_labels(tmp_path / "pred" / f"im{i}.tif", lab if i == 0 else np.zeros_like(lab))
    assert cli.main(["evaluate", "--truth", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                     "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "| mean |" in out and "0.500" in out  # F1 1 and 0 → mean 0.5
    for name in ("metrics.md", "metrics.csv", "f1_vs_iou.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 0


def test_cli_train_on_folders(tmp_path, nuclei):
    for split in ("images", "labels"):
        (tmp_path / split).mkdir()
    for i, (im, lab) in enumerate(nuclei["train"][:3]):
        write_image(tmp_path / "images" / f"n{i}.tif", im)
        write_labels(tmp_path / "labels" / f"n{i}.tif", lab)
    code = cli.main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "--out", str(tmp_path / "run"), "--epochs", "1", "--steps", "2", "--groups", "2",
                     "--channels", "4", "--iterations", "1", "--crop", "48", "--device", "cpu"])
    assert code == 0
    model, post, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert model.config.groups == 2 and ckpt["train_config"]["crop"] == [48, 48]


@pytest.mark.parametrize("argv,fragment", [
    (["predict", "missing.tif", "--model", "missing.pt", "--out", "o"], "no such file"),
    (["evaluate", "--truth", "nowhere", "--pred", "nowhere"], "no such file or folder"),
    (["train", "--images", "nowhere", "--labels", "nowhere", "--out", "o"], "no such file or folder"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and err.startswith("rdcnet ")


def test_cli_predict_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    write_image(tmp_path / "im.tif", np.zeros((16, 16), np.float32))
    assert cli.main(["predict", str(tmp_path / "im.tif"), "--model", str(tmp_path / "bad.pt"), "--out", "x"]) == 2
    assert "not an rdcnet checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "train", "predict", "evaluate"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_entry_point_runs_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rdcnet.cli", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "F1@0.5" in out and "AJI" in out
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 1000


def test_cli_predict_with_tiles(tmp_path, checkpoint, nuclei):
    path, model = checkpoint
    write_image(tmp_path / "big.tif", np.tile(nuclei["val"][0][0], (2, 2)))
    assert cli.main(["predict", str(tmp_path / "big.tif"), "--model", str(path), "--out", str(tmp_path / "o.tif"),
                     "--tile", "96"]) == 0
    assert read_labels(tmp_path / "o.tif").shape == (160, 160)
