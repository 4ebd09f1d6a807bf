"""rdcnet.machine: a busy machine is reported before a long CPU run, --threads sets torch's threads
for the command only."""

import os

import pytest
import torch

from rdcnet import machine


@pytest.mark.parametrize("load,threads,cores,busy", [
    (0.1, 2, 2, False), (1.0, 2, 2, True), (3.5, 2, 2, True), (3.5, 1, 2, False), (1.0, 8, 16, False),
    (10.0, 16, 16, True),
])
def test_busy_warning(monkeypatch, load, threads, cores, busy):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(machine, "usable_cores", lambda: cores)
    message = machine.busy_warning(threads)
    assert (message is not None) == busy
    if busy:
        assert f"load {load:.1f} on {cores} cores" in message and "--threads" in message


def test_busy_machine_is_reported_and_threads_apply_to_the_command(tmp_path, monkeypatch, capsys):
    import importlib

    from rdcnet.cli import main
    from rdcnet.data import nuclei_2d, write_image, write_labels

    train_module = importlib.import_module("rdcnet.train")
    for split in ("images", "labels"):
        (tmp_path / split).mkdir()
    for i, (image, labels) in enumerate(nuclei_2d(3, (40, 40), seed=5)):
        write_image(tmp_path / "images" / f"n{i}.tif", image)
        write_labels(tmp_path / "labels" / f"n{i}.tif", labels)
    threads_in_training = []

    def stop_at_once(*args, **kwargs):  # training itself is tested elsewhere
        threads_in_training.append(torch.get_num_threads())
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", stop_at_once)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--out",
            str(tmp_path / "run"), "--groups", "2", "--channels", "4", "--device", "cpu", "--crop", "32"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(argv) == 130
        assert "rdcnet train: warning: the machine is busy (load 7.0 on 2 cores)" in capsys.readouterr().err
        assert main(argv + ["--threads", "1"]) == 130
        assert threads_in_training[-1] == 1 and torch.get_num_threads() == 2  # restored after the command
        assert "machine is busy" not in capsys.readouterr().err  # an explicit --threads is the user's choice
    finally:
        torch.set_num_threads(before)
