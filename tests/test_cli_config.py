"""The experiment-file commands: rdcnet train/evaluate --config, sweep, show."""

import csv
import textwrap

import pytest

from rdcnet import cli

CONFIG = """
name = "tiny-synthetic"

[data]
kind = "synthetic"
generator = "nuclei_2d"
sizes = [3, 1, 2]
shape = [48, 48]
seed = 5

[model]
factor = [4, 4]
downsampling_channels = 4
groups = 2
channels_per_group = 4
dilations = [1, 2]
iterations = 2

[train]
out_dir = "run"
margin = 4.0
crop = [32, 32]
epochs = 1
steps_per_epoch = 2
augment = "grey"
device = "cpu"

[augment]
noise_max_sigma = 0.05

[postprocess]
min_votes = 3
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def test_train_then_evaluate_from_a_config(config_file, tmp_path, capsys):
    assert cli.main(["train", "--config", str(config_file)]) == 0
    run = tmp_path / "run"
    assert (run / "best.pt").exists() and (run / "log.csv").exists()
    assert cli.main(["evaluate", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "| mean |" in out and "tiny-synthetic" in out  # per-image table and the Table 1 row
    assert (run / "evaluation" / "table1.md").exists()
    assert (run / "evaluation" / "f1_vs_iou.png").stat().st_size > 1000


def test_show_writes_both_figures(config_file, tmp_path):
    assert cli.main(["train", "--config", str(config_file), "--out", str(tmp_path / "r2")]) == 0
    from rdcnet.data import nuclei_2d, write_image

    write_image(tmp_path / "im.tif", nuclei_2d(1, (48, 48), seed=9)[0][0])
    assert cli.main(["show", str(tmp_path / "im.tif"), "--model", str(tmp_path / "r2" / "best.pt"),
                     "--out", str(tmp_path / "fig")]) == 0
    for name in ("iterations.png", "votes.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000


def test_sweep_from_the_command_line(config_file, tmp_path):
    assert cli.main(["sweep", "--config", str(config_file), "--dilations", "1;1,2", "--iterations", "1,2",
                     "--epochs", "1", "--steps", "1", "--out", str(tmp_path / "sweep")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert len(rows) == 4
    assert (tmp_path / "sweep" / "fig4_dilations.png").exists() and (tmp_path / "sweep" / "fig4_iterations.png").exists()


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nkind = "synthetic"\n[model]\nwidth = 3\n')
    assert cli.main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "width" in err and len(err.splitlines()) == 1
    assert cli.main(["train", "--config", str(tmp_path / "missing.toml")]) == 2


def test_train_without_data_or_config_is_a_usage_error(capsys):
    assert cli.main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
