"""DistributedDataParallel training: 2 CPU processes (gloo) through torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rdcnet.data import nuclei_2d, write_image, write_labels
from rdcnet.distributed import without_option
from rdcnet.checkpoint import load_checkpoint

TINY = ["--groups", "1", "--channels", "4", "--downsampling-channels", "4", "--dilations", "1",
        "--iterations", "1", "--crop", "32", "--steps", "2", "--margin", "4", "--device", "cpu"]


def _torchrun(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rdcnet", "train", "--nproc", "2", *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_two_process_training_is_reproducible_and_resumes(tmp_path):
    for i, (image, labels) in enumerate(nuclei_2d(4, (48, 48), seed=3)):
        write_image(tmp_path / "im" / f"{i}.tif", image)
        write_labels(tmp_path / "lab" / f"{i}.tif", labels)
    data = ["--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab")]
    for run in ("a", "b"):
        _torchrun(tmp_path, *data, "--out", str(tmp_path / run), "--epochs", "1", *TINY)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # Each rank drew its own crops: their generator states differ, and both are saved.
    states = a["numpy_rng_ranks"]
    assert len(states) == 2 and states[0] != states[1]
    model, _, _ = load_checkpoint(tmp_path / "a" / "best.pt")
    assert model.config.groups == 1
    res = _torchrun(tmp_path, *data, "--out", str(tmp_path / "a"), "--epochs", "2", *TINY)
    resumed = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 1 and len(resumed["history"]) == 2
    assert "resuming" in res.stderr
    assert not any(torch.equal(resumed["state_dict"][k], a["state_dict"][k]) for k in a["state_dict"]
                   if a["state_dict"][k].is_floating_point() and a["state_dict"][k].numel() > 1)


def test_nproc_is_removed_from_the_relaunched_command():
    assert without_option(["train", "--nproc", "2", "--out", "x"], "--nproc") == ["train", "--out", "x"]
    assert without_option(["train", "--nproc=2"], "--nproc") == ["train"]
    assert np.all(np.array(without_option([], "--nproc")) == np.array([]))
