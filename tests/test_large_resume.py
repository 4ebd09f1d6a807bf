"""Chunked prediction survives being killed: `rdcnet predict big.ome.zarr --out labels.ome.zarr`
killed with SIGKILL during the network pass, the peaks, the final write or just before the output
is renamed into place, then rerun: the labels equal an uninterrupted run's, nothing but the
output is left beside it, and the rerun's network pass runs only the chunks not yet finished.
Also: another run's work folder is refused, --no-resume starts over, and two runs on one output
cannot both write (a lock)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("zarr")

from test_large_predict import _checkpoint, _read_labels, _write_ome_zarr, blobs, tiny_model  # noqa: E402

from rdcnet import large  # noqa: E402
from rdcnet.cli import main  # noqa: E402

SHAPE, CHUNKS = (80, 100), "32,48"  # 3 x 3 chunks
N_CHUNKS = 9

# Runs `rdcnet predict` with one function of rdcnet.large wrapped so that the process kills itself
# (SIGKILL: no cleanup of any kind) when that function is called for the (n+1)-th time.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from rdcnet import cli, large
    name, n = sys.argv[1], int(sys.argv[2])
    original, calls = getattr(large, name), [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] > n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(large, name, wrapped)
    sys.exit(cli.main(sys.argv[3:]))
""")


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ckpt = _checkpoint(data, tiny_model())
    src = data / "big.ome.zarr"
    _write_ome_zarr(src, blobs(SHAPE), (0.5, 0.5))
    run = tmp_path / "run"
    run.mkdir()
    out = run / "labels.ome.zarr"
    argv = ["predict", str(src), "--model", str(ckpt), "--out", str(out), "--chunks", CHUNKS, "--scheduler", "sync"]
    ref = tmp_path / "ref" / "labels.ome.zarr"
    assert main(argv[:4] + ["--out", str(ref)] + argv[6:]) == 0
    return {"argv": argv, "out": out, "run": run, "ref": _read_labels(ref)[0], "ckpt": ckpt, "src": src}


def count_network_calls(monkeypatch):
    calls = []
    original = large._predict_block
    monkeypatch.setattr(large, "_predict_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def kill_during(setup, function: str, after: int):
    # cwd away from the source tree: `python -c` puts the cwd first on sys.path, and from the
    # repository root that would import the uncompiled source `rdcnet_ext` instead of the installed one.
    proc = subprocess.run([sys.executable, "-c", KILLER, function, str(after)] + setup["argv"],
                          capture_output=True, text=True, timeout=300, cwd=setup["out"].parent)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def finished_chunks(setup) -> int:
    done = large.default_workdir(setup["out"]) / "done"
    return len(list(done.iterdir())) if done.is_dir() else 0


@pytest.mark.parametrize("function,after,finished", [
    ("_predict_block", 4, 4),            # during the network pass: 4 chunks done
    pytest.param("_chunk_peaks", 2, N_CHUNKS, marks=pytest.mark.slow),   # during the votes and peaks
    pytest.param("_open_chunk", 3, N_CHUNKS, marks=pytest.mark.slow),    # writing the labels: 3 chunks written
    pytest.param("_replace_output", 0, N_CHUNKS, marks=pytest.mark.slow),  # labels written, not yet in place
])
def test_killed_run_resumes_to_the_same_labels_and_leaves_nothing(setup, monkeypatch, function, after, finished):
    kill_during(setup, function, after)
    assert not setup["out"].exists()  # a killed run never leaves an output that looks finished
    assert finished_chunks(setup) == finished
    calls = count_network_calls(monkeypatch)
    assert main(setup["argv"]) == 0
    assert len(calls) == N_CHUNKS - finished  # finished chunks are not recomputed
    np.testing.assert_array_equal(_read_labels(setup["out"])[0], setup["ref"])
    assert sorted(p.name for p in setup["run"].iterdir()) == ["labels.ome.zarr"]  # no work folder, lock, partial


@pytest.mark.slow
def test_a_rerun_with_another_model_is_refused_and_no_resume_starts_over(setup, monkeypatch, capsys):
    kill_during(setup, "_predict_block", 3)
    other = _checkpoint(setup["run"].parent / "data", tiny_model(spacing=(1.0, 1.0)).train())  # same weights...
    import torch

    from rdcnet.checkpoint import load_checkpoint, save_checkpoint

    model, _, _ = load_checkpoint(other)
    with torch.no_grad():
        model.up.bias.add_(0.25)  # ...but not any more
    save_checkpoint(other, model)
    argv = [a if a != str(setup["ckpt"]) else str(other) for a in setup["argv"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the network outputs of another run (model differ" in err[0] and "--no-resume" in err[0]
    calls = count_network_calls(monkeypatch)
    assert main(argv + ["--no-resume"]) == 0
    assert len(calls) == N_CHUNKS
    assert sorted(p.name for p in setup["run"].iterdir()) == ["labels.ome.zarr"]


@pytest.mark.slow
def test_decoding_options_may_change_on_resume(setup, monkeypatch):
    kill_during(setup, "_predict_block", 5)
    calls = count_network_calls(monkeypatch)
    assert main(setup["argv"] + ["--min-votes", "3"]) == 0
    assert len(calls) == N_CHUNKS - 5


HOLDER = textwrap.dedent("""
    import sys, time
    from rdcnet._files import OutputLock
    with OutputLock(sys.argv[1], "x"):
        print("holding", flush=True)
        time.sleep(120)
""")


def hold_lock(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=path.parent)  # not the source tree (see kill_during)
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.slow
def test_two_runs_on_one_output_the_second_refuses(setup, capsys):
    holder = hold_lock(setup["out"].with_name(setup["out"].name + ".lock"))
    try:
        assert main(setup["argv"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by another run (pid" in err[0] and str(holder.pid) in err[0]
        assert not setup["out"].exists() and not large.default_workdir(setup["out"]).exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(setup["argv"]) == 0  # the dead holder's lock is stale and taken over
    assert sorted(p.name for p in setup["run"].iterdir()) == ["labels.ome.zarr"]


@pytest.mark.slow
def test_two_trainings_on_one_run_folder_the_second_refuses(tmp_path, capsys):
    from rdcnet.data import nuclei_2d, write_image, write_labels
    from rdcnet.train import RUN_LOCK

    for split in ("images", "labels"):
        (tmp_path / split).mkdir()
    for i, (image, labels) in enumerate(nuclei_2d(3, (40, 40), seed=5)):
        write_image(tmp_path / "images" / f"n{i}.tif", image)
        write_labels(tmp_path / "labels" / f"n{i}.tif", labels)
    run = tmp_path / "run"
    run.mkdir()
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--out", str(run),
            "--groups", "2", "--channels", "4", "--downsampling-channels", "4", "--dilations", "1",
            "--iterations", "1", "--epochs", "1", "--steps", "1", "--crop", "32", "--device", "cpu"]
    holder = hold_lock(run / RUN_LOCK)
    try:
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
        assert len(err) == 1 and f"run folder {run} is in use by another run (pid {holder.pid}" in err[0]
        assert sorted(p.name for p in run.iterdir()) == [RUN_LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0
    assert not (run / RUN_LOCK).exists() and (run / "best.pt").is_file()


def test_without_the_large_extra_one_line_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zarr" else real(name, *a))
    assert main(["predict", str(tmp_path / "big.ome.zarr"), "--model", str(tmp_path / "best.pt"), "--out",
                 str(tmp_path / "labels.ome.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rdcnet predict: error: OME-Zarr and chunked prediction need the 'large' extra (zarr not "
                   "installed): pip install 'rdcnet[large]'"]


@pytest.mark.slow
def test_a_folder_that_is_not_a_work_folder_is_never_deleted(setup, capsys):
    """--workdir pointing at a user's folder (a typo): refused, even with --no-resume; nothing deleted."""
    mine = setup["run"].parent / "my-data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    argv = setup["argv"] + ["--workdir", str(mine)]
    for extra in ([], ["--no-resume"]):
        assert main(argv + extra) == 2
        assert "is not the work folder of a chunked prediction" in capsys.readouterr().err
    assert (mine / "precious.txt").read_text() == "keep me"
