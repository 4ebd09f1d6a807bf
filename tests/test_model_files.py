"""Model files are untrusted input: every Python entry point that reads one refuses a file whose
unpickling would run code, before any of it runs (the command-line entry points are in
test_cli_fuzz.py, the bioimage.io loader in test_export_bioimageio.py)."""

import numpy as np
import pytest
import torch

import rdcnet
from helpers import write_code_carrying_checkpoint
from rdcnet.checkpoint import CheckpointError, convert_trusted, load_checkpoint, read_checkpoint, save_checkpoint
from rdcnet.data import nuclei_2d
from rdcnet.train import ResumeError, TrainConfig, train

TINY = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=4, groups=2, channels_per_group=4,
            dilations=(1, 2), iterations=1)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "created-by-a-model-file"
    path = tmp_path / "evil.pt"
    write_code_carrying_checkpoint(path, marker)
    yield path
    assert not marker.exists(), "loading the model file ran code from it"


@pytest.mark.parametrize("load", [
    lambda p: rdcnet.load_checkpoint(p),
    lambda p: rdcnet.load_model(p),
    lambda p: read_checkpoint(p),
    lambda p: __import__("rdcnet.export").export.load_model(p),
], ids=["load_checkpoint", "load_model", "read_checkpoint", "export.load_model"])
def test_loaders_refuse_code_carrying_files(evil, load):
    with pytest.raises(CheckpointError, match="would run code when loaded.*nothing from it was executed"):
        load(evil)


def test_napari_core_refuses_code_carrying_files(evil):
    from rdcnet.napari import _core

    with pytest.raises(CheckpointError, match="would run code"):
        _core.decoding_defaults(evil)


def test_resume_refuses_a_code_carrying_last_pt(tmp_path):
    marker = tmp_path / "created-by-a-model-file"
    (tmp_path / "run").mkdir()
    write_code_carrying_checkpoint(tmp_path / "run" / "last.pt", marker)
    pairs = nuclei_2d(2, (32, 32), seed=0)
    config = TrainConfig(out_dir=str(tmp_path / "run"), margin=3.0, crop=(32, 32), epochs=1, steps_per_epoch=1,
                         device="cpu")
    with pytest.raises(ResumeError, match="would run code"):
        train(rdcnet.RDCNet(**TINY), pairs[:1], pairs[1:], config, progress=False)
    assert not marker.exists()


def test_checkpoints_hold_plain_data_and_round_trip(tmp_path):
    """What save_checkpoint writes passes the weights-only reader and rebuilds the same model."""
    torch.manual_seed(0)
    model = rdcnet.RDCNet(**TINY)
    post = rdcnet.PostprocessConfig(margin=3.0, min_votes=2, opening_radius=1.0)
    save_checkpoint(tmp_path / "m.pt", model, TrainConfig(margin=3.0, crop=(32, 32), postprocess=post),
                    history=[{"epoch": 1, "val_f1": 0.5}], best_f1=0.5)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["train_config"]["postprocess"]["opening_radius"] == 1.0
    again, post2, _ = load_checkpoint(tmp_path / "m.pt")
    assert post2 == post
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    assert torch.equal(model(x).embeddings, again(x).embeddings)


def test_old_checkpoint_with_numpy_values_says_how_to_convert(tmp_path):
    """A (trusted) file that only pickle can read -- here one holding NumPy scalars, which no
    rdcnet version writes but a user's script might -- is refused with the way to convert it;
    the converted file loads safely and gives the same model."""
    torch.manual_seed(0)
    model = rdcnet.RDCNet(**TINY)
    save_checkpoint(tmp_path / "plain.pt", model)
    payload = torch.load(tmp_path / "plain.pt", weights_only=True)
    payload["best_f1"] = np.float64(0.75)
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"convert_trusted"):
        load_checkpoint(tmp_path / "old.pt")
    convert_trusted(tmp_path / "old.pt", tmp_path / "new.pt")
    converted, _, raw = load_checkpoint(tmp_path / "new.pt")
    assert raw["best_f1"] == 0.75 and type(raw["best_f1"]) is float
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    assert torch.equal(model(x).embeddings, converted(x).embeddings)


@pytest.mark.parametrize("contents,fragment", [
    ([1, 2, 3], "holds a list"),
    ({"state_dict": {}}, "no model_config"),
    ({"model_config": {"ndim": 7}, "state_dict": {}}, "does not match its weights or settings"),
    ({"model_config": {"ndim": 2, "spacing": [float("nan"), 1.0]}, "state_dict": {}}, "spacing"),
    ({"model_config": "not a dict", "state_dict": {}}, "must be dicts"),
])
def test_foreign_contents_are_one_clear_error(tmp_path, contents, fragment):
    torch.save(contents, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(tmp_path / "x.pt")
