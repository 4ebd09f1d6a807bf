"""Every subcommand with bad options and bad files, each in its own process: exit status 2,
exactly one line on stderr naming the problem, no traceback, nothing left behind.

One Python process imports rdcnet once and forks a child per case (a fresh interpreter per
case would spend most of the test importing torch); each child runs ``rdcnet.cli.main`` with its
own stderr file and working folder, as the ``rdcnet`` entry point would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rdcnet.data import nuclei_2d, write_image, write_labels
from rdcnet.model import RDCNet
from rdcnet.checkpoint import save_checkpoint

from helpers import write_code_carrying_checkpoint

PWNED = "created-by-a-model-file"

CUDA = torch.cuda.is_available()

TINY = ["--groups", "2", "--channels", "4", "--downsampling-channels", "4", "--dilations", "1,2",
        "--iterations", "1", "--epochs", "1", "--steps", "1", "--crop", "32", "--device", "cpu"]
TRAIN = ["train", "--images", "{D}/good/images", "--labels", "{D}/good/labels", "--out", "{O}"] + TINY
PREDICT = ["predict", "{D}/image.tif", "--model", "{D}/model.pt", "--out", "{O}"]
SHOW = ["show", "{D}/image.tif", "--model", "{D}/model.pt", "--out", "{O}"]

# (id, argv, fragment the one stderr line must contain)
CASES = [
    ("train-epochs-0", TRAIN + ["--epochs", "0"], "--epochs"),
    ("train-epochs-negative", TRAIN + ["--epochs", "-2"], "--epochs"),
    ("train-epochs-text", TRAIN + ["--epochs", "many"], "--epochs: expected an integer"),
    ("train-steps-0", TRAIN + ["--steps", "0"], "--steps"),
    ("train-val-fraction-1", TRAIN + ["--val-fraction", "1"], "--val-fraction"),
    ("train-val-fraction-negative", TRAIN + ["--val-fraction", "-0.5"], "--val-fraction"),
    ("train-val-fraction-leaves-nothing", TRAIN + ["--val-fraction", "0.9"], "--val-fraction 0.9 holds out 3 of 3"),
    ("train-min-votes-negative", TRAIN + ["--min-votes", "-1"], "--min-votes"),
    ("train-opening-radius-negative", TRAIN + ["--opening-radius", "-1"], "--opening-radius"),
    ("train-spacing-nan", TRAIN + ["--spacing", "nan"], "--spacing"),
    ("train-margin-inf", TRAIN + ["--margin", "inf"], "--margin"),
    ("train-margin-0", TRAIN + ["--margin", "0"], "--margin"),
    ("train-lr-0", TRAIN + ["--lr", "0"], "--lr"),
    ("train-crop-below-factor", TRAIN + ["--factor", "4", "--crop", "2"],
     "--crop: expected at least the down-sampling factor"),
    ("train-time-without-unit", TRAIN + ["--time", "10"], "--time: expected a duration such as 90s"),
    ("train-time-with-epochs-and-steps", TRAIN + ["--time", "1m"], "--time: the time budget plans --epochs"),
    ("train-crop-3-axes-for-2d", TRAIN + ["--crop", "32,32,32"], "--crop: expected 1 or 2 values"),
    ("train-crop-larger-than-images", TRAIN + ["--crop", "100000"],
     "--crop: 100000,100000 is larger than the largest training image (40x40); use at most 40,40"),
    ("train-crop-larger-on-one-axis", TRAIN + ["--crop", "32,5000"], "use at most 32,40"),
    ("train-device-cuda", TRAIN + ["--device", "cuda"], "--device"),
    ("train-device-unknown", TRAIN + ["--device", "gpu"], "--device"),
    ("train-seed-negative", TRAIN + ["--seed", "-1"], "--seed"),
    ("train-groups-0", TRAIN + ["--groups", "0"], "--groups"),
    ("train-dilations-0", TRAIN + ["--dilations", "0"], "--dilations"),
    ("train-ndim-mismatch", TRAIN + ["--ndim", "3"], "--ndim 3"),
    ("train-val-images-alone", TRAIN + ["--val-images", "{D}/good/images"], "--val-labels"),
    ("train-mixed-2d-3d", ["train", "--images", "{D}/mixed/images", "--labels", "{D}/mixed/labels",
                           "--out", "{O}"] + TINY, "a2d.tif is 2D with 1 channel(s) but"),
    ("train-nonfinite-image", ["train", "--images", "{D}/nan/images", "--labels", "{D}/nan/labels",
                               "--out", "{O}"] + TINY, "n1.tif: 16 of 1600 pixel values are not finite"),
    ("train-missing-label", ["train", "--images", "{D}/missing/images", "--labels", "{D}/missing/labels",
                             "--out", "{O}"] + TINY, "without a label file"),
    ("train-truncated-last-pt", TRAIN[:-len(TINY) - 2] + ["--out", "{D}/truncated"] + TINY, "--no-resume"),
    ("predict-tile-0", PREDICT + ["--tile", "0"], "--tile"),
    ("predict-tile-tiny", PREDICT + ["--tile", "3"], "--tile: expected at least 32,32"),
    ("predict-min-distance-0", PREDICT + ["--min-distance", "0"], "--min-distance"),
    ("predict-min-distance-nan", PREDICT + ["--min-distance", "nan"], "--min-distance"),
    ("predict-min-votes-huge", PREDICT + ["--min-votes", str(2**70)], "--min-votes"),
    ("predict-opening-radius-inf", PREDICT + ["--opening-radius", "inf"], "--opening-radius"),
    ("predict-device-cuda", PREDICT + ["--device", "cuda"], "--device"),
    ("predict-3d-stack-into-2d-model", ["predict", "{D}/stack.tif", "--model", "{D}/model.pt", "--out", "{O}"],
     "3D stack"),
    ("predict-corrupt-image", ["predict", "{D}/corrupt.tif", "--model", "{D}/model.pt", "--out", "{O}"],
     "cannot read image file"),
    ("predict-not-a-checkpoint", ["predict", "{D}/image.tif", "--model", "{D}/garbage.pt", "--out", "{O}"],
     "not an rdcnet checkpoint"),
    ("predict-no-model", ["predict", "{D}/image.tif", "--out", "{O}"], "--model"),
    # Model files that would run code (a pickle creating a file): refused before anything runs.
    ("predict-code-carrying-model", ["predict", "{D}/image.tif", "--model", "{D}/evil.pt", "--out", "{O}"],
     "would run code when loaded"),
    ("predict-chunked-code-carrying-model", ["predict", "{D}/image.tif", "--model", "{D}/evil.pt", "--out",
                                             "{O}/labels.ome.zarr"], "would run code when loaded"),
    ("export-code-carrying-model", ["export", "{D}/evil.pt", "--torchscript", "{O}/x.pt"], "would run code"),
    ("show-code-carrying-model", ["show", "{D}/image.tif", "--model", "{D}/evil.pt", "--out", "{O}"],
     "would run code"),
    ("train-resume-code-carrying-last-pt", TRAIN[:-len(TINY) - 2] + ["--out", "{D}/evilrun"] + TINY,
     "would run code"),
    ("demo-steps-0", ["demo", "--steps", "0", "--out", "{O}"], "--steps"),
    ("demo-device-cuda", ["demo", "--device", "cuda", "--out", "{O}"], "--device"),
    ("demo-seed-negative", ["demo", "--seed", "-1", "--out", "{O}"], "--seed"),
    ("show-iterations-0", SHOW + ["--iterations", "0"], "--iterations"),
    ("show-z-negative", SHOW + ["--z", "-1"], "--z"),
    ("sweep-epochs-0", ["sweep", "--config", "{D}/none.toml", "--epochs", "0", "--out", "{O}"], "--epochs"),
    ("sweep-dilations-0", ["sweep", "--config", "{D}/none.toml", "--dilations", "0", "--out", "{O}"],
     "--dilations"),
    ("evaluate-missing-truth", ["evaluate", "--truth", "{D}/nowhere", "--pred", "{D}/nowhere", "--out", "{O}"],
     "no such file or folder"),
    ("evaluate-device-cuda", ["evaluate", "--config", "{D}/none.toml", "--device", "cuda"], "--device"),
    ("no-command", [], "command"),
    ("unknown-command", ["segment"], "invalid choice"),
]
if CUDA:  # these are valid where CUDA works
    CASES = [c for c in CASES if not c[0].endswith("device-cuda")]

DRIVER = r"""
import json, os, sys, traceback
from rdcnet import cli
results = []
for case in json.load(open(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.makedirs(case["cwd"], exist_ok=True)
            os.chdir(case["cwd"])
            fd = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            try:
                code = cli.main(case["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()  # what the console script would show
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(results))
"""


def make_data(root: Path) -> None:
    pairs = nuclei_2d(3, (40, 40), seed=5)
    for name, items in (("good", pairs), ("nan", pairs), ("missing", pairs[:2])):
        for split in ("images", "labels"):
            (root / name / split).mkdir(parents=True)
        for i, (image, labels) in enumerate(items):
            image = image.astype(np.float32)
            if name == "nan" and i == 1:
                image = image.copy()
                image[4:8, 4:8] = np.nan
            write_image(root / name / "images" / f"n{i}.tif", image)
            if not (name == "missing" and i == 1):
                write_labels(root / name / "labels" / f"n{i}.tif", labels)
    for split in ("images", "labels"):
        (root / "mixed" / split).mkdir(parents=True)
    write_image(root / "mixed" / "images" / "a2d.tif", pairs[0][0])
    write_labels(root / "mixed" / "labels" / "a2d.tif", pairs[0][1])
    write_image(root / "mixed" / "images" / "b3d.tif", np.stack([pairs[1][0]] * 4), rgb=False)
    write_labels(root / "mixed" / "labels" / "b3d.tif", np.stack([pairs[1][1]] * 4))
    write_image(root / "image.tif", pairs[0][0])
    write_image(root / "stack.tif", np.random.default_rng(0).random((8, 40, 40)).astype(np.float32), rgb=False)
    (root / "corrupt.tif").write_bytes(b"II*\x00this is not a tiff")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    write_code_carrying_checkpoint(root / "evil.pt", root.parent / PWNED)
    (root / "evilrun").mkdir()
    write_code_carrying_checkpoint(root / "evilrun" / "last.pt", root.parent / PWNED)
    torch.manual_seed(0)
    model = RDCNet(2, 1, factor=4, downsampling_channels=4, groups=2, channels_per_group=4, dilations=(1, 2),
                   iterations=1)
    save_checkpoint(root / "model.pt", model)
    (root / "truncated").mkdir()
    save_checkpoint(root / "truncated" / "last.pt", model)
    data = (root / "truncated" / "last.pt").read_bytes()
    (root / "truncated" / "last.pt").write_bytes(data[: len(data) // 3])


def listing(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    make_data(data)
    before = listing(data)
    cases = []
    for i, (name, argv, _) in enumerate(CASES):
        case_dir = root / "cases" / name
        out = case_dir / "out"
        cases.append({"argv": [a.replace("{D}", str(data)).replace("{O}", str(out)) for a in argv],
                      "cwd": str(case_dir), "stderr": str(root / f"{name}.stderr")})
    (root / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, RDCNET_DEBUG="")
    env.pop("RDCNET_DEBUG")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json")], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"root": root, "codes": dict(zip([c[0] for c in CASES], codes)), "data_before": before,
            "data_after": listing(data)}


@pytest.mark.parametrize("name,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(fuzz, name, argv, fragment):
    err = (fuzz["root"] / f"{name}.stderr").read_text()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rdcnet") and fragment in lines[0], lines[0]
    assert fuzz["codes"][name] == 2, (fuzz["codes"][name], err)
    case_dir = fuzz["root"] / "cases" / name
    assert not (case_dir / "out").exists(), listing(case_dir / "out")
    assert fuzz["data_after"] == fuzz["data_before"]  # inputs untouched, no temporaries beside them


def test_no_model_file_ran_code(fuzz):
    assert not (fuzz["root"] / PWNED).exists()
