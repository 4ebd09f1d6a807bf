"""The ``rdcnet`` command line: demo, train, predict, evaluate, sweep, show, export.

Errors the user can fix (bad paths, shapes, options) are reported as one line on stderr with
exit status 2, not as a traceback (set RDCNET_DEBUG=1 to see the traceback)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ._checks import check_int, check_number, check_per_axis, resolve_device
from .demo import DEMO_DURATION, DEMO_EPOCHS, DEMO_STEPS
from .machine import PRECISIONS
from .postprocess import check_postprocess_value

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SEED_MAX = 2**63 - 1


class UsageError(Exception):
    """A problem with the user's input, reported in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage block), like every other CLI error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _checked(parse, check):
    """An argparse type: ``parse`` the text, then ``check`` the value (a _checks rule)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _count(minimum: int = 1, maximum: int = 2**31 - 1):
    return _checked(int, lambda v: check_int(v, None, minimum=minimum, maximum=maximum))


def _post(field: str):
    """The rule of PostprocessConfig ``field`` as an argparse type."""
    parse = int if field in ("min_votes", "smooth_radius") else float
    return _checked(parse, lambda v: check_postprocess_value(field, v, name=""))


def _positive_number(text: str) -> float:
    return _checked(float, lambda v: check_number(v, None, positive=True))(text)


def _fraction(text: str) -> float:
    value = _checked(float, lambda v: check_number(v, None, positive=True))(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def _duration(text: str) -> float:
    from .plan import parse_duration

    try:
        return parse_duration(text, "")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).lstrip(": ")) from None


def _device(text: str) -> str:
    try:
        resolve_device(text, what="")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).lstrip(": ")) from None
    return text


def _floats(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    for v in values:
        _checked(float, lambda x: check_number(x, None, positive=True))(repr(v))
    return values


def _ints(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")
    for v in values:
        _count()(str(v))
    return values


def _per_axis(values: Optional[tuple], ndim: int, name: str):
    """An option's values (already checked one by one) for each of ``ndim`` axes (the library's rule)."""
    if values is None:
        return None
    kind = "int" if all(isinstance(v, int) for v in values) else "spacing"
    try:
        return check_per_axis(values, ndim, f"--{name}", kind=kind)
    except ValueError as exc:
        raise UsageError(f"{exc} for {ndim}D data") from None


def _image_files(path: Path, what: str) -> List[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"{what}: no TIFF/PNG/JPEG images in folder {path}")
        return files
    raise UsageError(f"{what}: no such file or folder: {path}")


def _label_path_for(image: Path, label_dir: Path) -> Path:
    for cand in [label_dir / image.name] + [label_dir / (image.stem + s) for s in IMAGE_SUFFIXES]:
        if cand.is_file():
            return cand
    raise UsageError(f"no label image for {image.name} in {label_dir}")


def _load_pairs(image_dir: Path, label_dir: Path, undefined=None):
    """(pairs, image paths) of a folder pair."""
    from .data import FolderDataset

    for path, what in ((image_dir, "images"), (label_dir, "labels")):
        if not path.is_dir():
            raise UsageError(f"{what}: no such file or folder: {path}")
    dataset = FolderDataset(image_dir, label_dir, undefined=undefined)
    return list(dataset), [image for image, _ in dataset.pairs]


def _data_shape(pairs, paths, ndim_option: Optional[int]):
    """(ndim, channels) agreed by every image, else a UsageError naming two files that differ.
    The labels give the spatial dimensions; an image with one more axis has channels last."""
    kinds = {}
    for (image, labels), path in zip(pairs, paths):
        channels = image.shape[-1] if image.ndim == labels.ndim + 1 else 1
        kinds.setdefault((labels.ndim, channels), path)
    if len(kinds) > 1:
        (a, pa), (b, pb) = list(kinds.items())[:2]
        raise UsageError(f"{pa} is {a[0]}D with {a[1]} channel(s) but {pb} is {b[0]}D with {b[1]} channel(s); "
                         "one model trains on one kind of image: put them in separate folders")
    (ndim, channels), path = next(iter(kinds.items()))
    if ndim_option is not None and ndim_option != ndim:
        raise UsageError(f"--ndim {ndim_option}: {path} (labels {pairs[0][1].shape}) is {ndim}D")
    return ndim, channels


# ---- demo ------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from .demo import run_demo

    if not args.quick:
        _warn_if_busy(args)
    return run_demo(out_dir=Path(args.out), steps=args.steps, seed=args.seed, device=args.device, quick=args.quick)


# ---- train -----------------------------------------------------------------------------------


def _train_from_config(args) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("steps_per_epoch", args.steps), ("lr", args.lr),
                                   ("device", args.device)) if v is not None}
    result = cfg.run_training(out_dir=args.out, resume=not args.no_resume, **overrides)
    _report_training(result)
    return 0


PLAN_ENV = "RDCNET_PLAN"  # the plan file --nproc's parent made, for the processes it starts


def _train_options(args, ndim: int) -> dict:
    """The settings given explicitly on the command line (None: planned)."""
    return {"margin": args.margin, "factor": _per_axis(args.factor, ndim, "factor"),
            "crop": _per_axis(args.crop, ndim, "crop"), "dilations": args.dilations, "groups": args.groups,
            "channels_per_group": args.channels, "downsampling_channels": args.downsampling_channels,
            "iterations": args.iterations, "batch_size": args.batch, "precision": args.amp, "augment": args.augment,
            "time": args.time, "epochs": args.epochs, "steps_per_epoch": args.steps, "lr": args.lr,
            "min_votes": args.min_votes, "opening_radius": args.opening_radius}


def _train_plan(args, options: dict, pairs, val, spacing, ndim: int, in_channels: int):
    """The run's plan: the saved one (``--plan``, the --nproc parent's, or the run folder's when
    resuming) with this command's options, else a new one from the data and this machine."""
    from .plan import PLAN_FILE, Plan, crop_sampler, fingerprint, plan_training

    out = Path(args.out)
    source = args.plan or os.environ.get(PLAN_ENV)
    if source is None and not args.no_resume and (out / "last.pt").exists() and (out / PLAN_FILE).exists():
        source = out / PLAN_FILE  # a resumed run keeps its plan (no new measurement)
    if source is not None:
        try:
            saved = Plan.load(source)
        except FileNotFoundError:
            raise UsageError(f"--plan: no such file: {source}") from None
        fp = saved.fingerprint
        if (fp.ndim, fp.channels) != (ndim, in_channels):
            raise UsageError(f"--plan {source}: made for {fp.ndim}D images with {fp.channels} channel(s), these are "
                             f"{ndim}D with {in_channels}")
        return saved.with_options(options)
    timed = options["epochs"] is None or options["steps_per_epoch"] is None
    if timed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("under torchrun each process would measure its own plan: give --epochs and --steps, or "
                         "--plan FILE, or start with 'rdcnet train --nproc N'")
    fp = fingerprint(pairs + val, spacing)
    val_pixels = sum(int(np.prod(labels.shape)) for _, labels in val)
    return plan_training(fp, options, device=args.device or "auto", val_pixels=val_pixels,
                         sample=crop_sampler(pairs, seed=args.seed))


def cmd_train(args) -> int:
    parent = args.nproc is not None and int(os.environ.get("WORLD_SIZE", "1")) <= 1
    if parent and args.config:
        from .distributed import launch, without_option

        return launch(args.nproc, without_option(args.argv, "--nproc"))
    if args.config:
        return _train_from_config(args)
    if not (args.images and args.labels and args.out):
        raise UsageError("give --images, --labels and --out (or --config FILE)")
    if bool(args.val_images) != bool(args.val_labels):
        raise UsageError("--val-images and --val-labels go together")
    if args.time is not None and args.epochs is not None and args.steps is not None:
        raise UsageError("--time: the time budget plans --epochs and --steps; give --time or both of them, not all "
                         "three")
    import torch

    from .model import RDCNet
    from .plan import PLAN_FILE
    from ._files import OutputLock
    from .train import RUN_LOCK, check_crop, check_finite_pixels, resume_state, train

    pairs, paths = _load_pairs(Path(args.images), Path(args.labels), args.undefined)
    val, val_paths = [], []
    if args.val_images:
        val, val_paths = _load_pairs(Path(args.val_images), Path(args.val_labels), args.undefined)
    ndim, in_channels = _data_shape(pairs + val, paths + val_paths, args.ndim)
    if not args.mask_nonfinite:
        for (image, _), path in zip(pairs + val, paths + val_paths):
            check_finite_pixels(image, str(path), "--mask-nonfinite")
    spacing = _per_axis(args.spacing, ndim, "spacing") or (1.0,) * ndim
    options = _train_options(args, ndim)
    shapes = [labels.shape for _, labels in pairs + val]
    if options["crop"] is not None:  # an explicit crop larger than every image is refused before planning
        check_crop(options["crop"], options["factor"] or (1,) * ndim, "--crop", image_shapes=shapes)
    if not args.val_images:
        if len(pairs) < 2:
            raise UsageError("need at least 2 training images to hold one out for validation "
                             "(or give --val-images/--val-labels)")
        n_val = max(1, int(round(len(pairs) * args.val_fraction)))
        if n_val >= len(pairs):
            raise UsageError(f"--val-fraction {args.val_fraction:g} holds out {n_val} of {len(pairs)} images, "
                             "leaving none to train on; lower it or give --val-images/--val-labels")
        order = np.random.default_rng(args.seed).permutation(len(pairs))
        val = [pairs[i] for i in order[:n_val]]
        pairs = [pairs[i] for i in order[n_val:]]
    main = os.environ.get("RANK", "0") == "0"  # once per DDP job
    plan = _train_plan(args, options, pairs, val, spacing, ndim, in_channels)
    check_crop(plan.values["crop"], plan.values["factor"], "--crop", image_shapes=shapes)
    cfg = plan.train_config(args.out, seed=args.seed, device=args.device or "auto", mask_nonfinite=args.mask_nonfinite,
                            tune_postprocess=not args.no_tune)
    torch.manual_seed(args.seed)  # the initial weights too: same command and seed, same run
    model = RDCNet(ndim, in_channels, spacing=spacing, ssdc_path=args.ssdc, **plan.model_kwargs())
    # The run folder is claimed before anything is written to it (plan.json included); train()
    # takes the same lock again (re-entrant). A --nproc parent holds it only until its processes
    # start: they claim it themselves.
    out = Path(args.out)
    with OutputLock(out / RUN_LOCK, f"run folder {out}") if main else contextlib.nullcontext():
        if not args.no_resume:
            resume_state(cfg, model)  # a run folder that cannot be resumed fails here, before any output
        if main:
            if os.environ.get(PLAN_ENV) is None:  # (--nproc's processes: their parent printed it)
                print(plan.fingerprint.table() + "\n" + plan.table(), file=sys.stderr)
            path = plan.save(out / PLAN_FILE)
        if not parent:
            if main:
                print(f"training a {ndim}D RDCNet on {len(pairs)} images (validation: {len(val)}), "
                      f"{sum(p.numel() for p in model.parameters()):,} parameters, device {cfg.device}; "
                      f"plan in {path}", file=sys.stderr)
                _warn_if_busy(args)
            result = train(model, pairs, val, cfg, resume=not args.no_resume)
            _report_training(result)
            return 0
    # the processes plan nothing: they read this plan
    os.environ[PLAN_ENV] = str(path.resolve())
    from .distributed import launch, without_option

    return launch(args.nproc, without_option(args.argv, "--nproc"))


def _warn_if_busy(args) -> None:
    """Before a long CPU run: say so when other work occupies the cores (unless --threads was given)."""
    from .machine import busy_warning

    if getattr(args, "threads", None) is None and (args.device or "auto") != "cuda":
        message = busy_warning()
        if message:
            warnings.warn(message)


def _report_training(result) -> None:
    if result.best_f1 == result.best_f1:
        print(f"best validation F1@0.5 {result.best_f1:.3f}; checkpoint {result.best_checkpoint}")
    else:
        print(f"checkpoint {result.best_checkpoint} (lowest validation loss: the validation labels hold no instances)")


# ---- predict ---------------------------------------------------------------------------------


def _output_path(out: Path, image: Path, single: bool) -> Path:
    if single and out.suffix.lower() in (".tif", ".tiff"):
        return out
    return out / (image.stem + ".tif")


def _load_model(path, device):
    from .checkpoint import load_model

    try:
        return load_model(path, device=device)
    except ImportError as exc:  # a package without the bioimageio extra
        raise UsageError(f"--model {path}: {exc}") from None


def _is_large_request(args) -> bool:
    """OME-Zarr in or out, or chunked options: the chunked path (rdcnet.large)."""
    from .ngff import is_zarr_path

    return (is_zarr_path(args.input) or str(args.out).lower().rstrip("/").endswith(".zarr")
            or args.chunks is not None or args.scheduler is not None)


def _require_large_extra() -> None:
    """The chunked path needs the 'large' extra; without it, one line saying how to install it."""
    import importlib.util

    missing = [m for m in ("dask", "zarr", "ome_zarr") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"OME-Zarr and chunked prediction need the 'large' extra ({', '.join(missing)} not "
                         "installed): pip install 'rdcnet[large]'")


def _predict_large(args) -> int:
    _require_large_extra()
    from .large import default_workdir, predict_large, scheduler

    inp = Path(args.input)
    if not inp.exists():
        raise UsageError(f"input: no such file or folder: {inp}")
    if inp.is_dir() and not (inp.suffix.lower() == ".zarr" or (inp / "zarr.json").is_file()
                             or (inp / ".zgroup").is_file() or (inp / ".zarray").is_file()):
        raise UsageError(f"input: a folder of images is segmented one by one; give an OME-Zarr, a TIFF or "
                         f"drop --chunks/--scheduler and the .zarr output ({inp})")
    out = Path(args.out)
    if out.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        raise UsageError(f"--out: expected a .zarr (OME-Zarr labels) or .tif path for a large image, got {out}")
    model, post = _load_model(args.model, "cpu")
    model.ssdc_path = args.ssdc
    for name in ("min_distance", "min_votes", "opening_radius", "foreground_threshold", "tta"):
        value = getattr(args, name)
        if value is not None:
            setattr(post, name, value)
    ndim = model.config.ndim
    args.interrupted_note = (f"finished chunks are kept in {args.workdir or default_workdir(out)}; rerun the same "
                             "command to resume (--no-resume starts over)")
    with scheduler(args.scheduler):
        _, centres = predict_large(model, inp, out, post, chunks=_per_axis(args.chunks, ndim, "chunks"),
                                   overlap=_per_axis(args.overlap, ndim, "overlap"), device=args.device,
                                   workdir=args.workdir, resume=not args.no_resume, keep_workdir=args.keep_workdir,
                                   precision=args.precision)
    print(f"{inp} -> {out}: {len(centres)} objects")
    return 0


def cmd_predict(args) -> int:
    if _is_large_request(args):
        return _predict_large(args)
    from tqdm.auto import tqdm

    from .data import read_image, write_labels
    from .predict import check_tile_shape, predict

    files = _image_files(Path(args.input), "input")
    model, post = _load_model(args.model, args.device)
    model.ssdc_path = args.ssdc
    tile = None
    if args.tile is not None:
        tile = check_tile_shape(_per_axis(args.tile, model.config.ndim, "tile"), model.config, "--tile")
    for name in ("min_distance", "min_votes", "opening_radius", "foreground_threshold", "tta"):
        value = getattr(args, name)
        if value is not None:
            setattr(post, name, value)
    out = Path(args.out)
    single = len(files) == 1 and Path(args.input).is_file()
    if out.exists() and not out.is_dir() and not single:
        raise UsageError(f"--out {out}: exists and is not a folder")
    # The output folder is created by the first write: a failure before it leaves nothing behind.
    for path in tqdm(files, desc="segmenting", unit="image", disable=len(files) < 2):
        image = read_image(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                labels = predict(model, image, post, tile_shape=tile, device=args.device, progress=True,
                                 precision=args.precision)
            except ValueError as exc:
                raise UsageError(f"{path}: {exc}") from None
        for w in caught:  # what the user should see, now naming the file
            if issubclass(w.category, (UserWarning, RuntimeWarning)):
                warnings.warn(f"{path}: {w.message}", w.category)
        target = _output_path(out, path, single)
        write_labels(target, labels)
        print(f"{path} -> {target}: {int(labels.max())} objects")
    return 0


# ---- evaluate --------------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    from . import metrics
    from .data import read_labels

    if args.config:
        from .config import load_config

        result = load_config(args.config).run_evaluation(checkpoint=args.checkpoint, out=args.out, split=args.split,
                                                         device=args.device)
        print(result.table)
        print()
        print(result.table1)
        return 0
    if not (args.truth and args.pred):
        raise UsageError("give --truth and --pred (or --config FILE)")

    truth_files = _image_files(Path(args.truth), "truth")
    pred_dir = Path(args.pred)
    pairs, names = [], []
    for t in truth_files:
        p = pred_dir if pred_dir.is_file() else _label_path_for(t, pred_dir)
        if not p.exists():
            raise UsageError(f"pred: no such file or folder: {p}")
        pairs.append((read_labels(t, undefined=args.undefined), read_labels(p)))
        names.append(t.stem)
    summary = metrics.evaluate([a for a, _ in pairs], [b for _, b in pairs], names=names)
    table = metrics.summary_table_markdown(summary)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.md").write_text(table + "\n")
        metrics.to_csv(summary, out / "metrics.csv")
        metrics.plot_f1_vs_iou({"mean over images": (summary.thresholds, summary.mean["f1"])},
                               out / "f1_vs_iou.png")
        print(f"wrote {out / 'metrics.md'}, {out / 'metrics.csv'} and {out / 'f1_vs_iou.png'}", file=sys.stderr)
    return 0


# ---- sweep and show ---------------------------------------------------------------------------


def _int_sets(text: str):
    try:
        sets = [tuple(int(v) for v in part.split(",") if v) for part in text.split(";") if part.strip()]
    except ValueError:
        sets = []
    if not sets or not all(s and min(s) >= 1 for s in sets):
        raise argparse.ArgumentTypeError(f"expected sets of positive integers like '1;1,2;1,2,4,8', got {text!r}")
    return sets


def cmd_sweep(args) -> int:
    from .sweep import run_sweep

    result = run_sweep(args.config, dilation_sets=args.dilations, iteration_counts=args.iterations, out_dir=args.out,
                       epochs=args.epochs, steps_per_epoch=args.steps, device=args.device,
                       resume=not args.no_resume)
    for name, path in sorted(result.files.items()):
        print(f"{name}: {path}")
    return 0


def cmd_show(args) -> int:
    from .data import read_image
    from .show import show_iterations, show_votes
    from .checkpoint import load_checkpoint

    model, post, _ = load_checkpoint(args.model, device=args.device)
    image = read_image(_image_files(Path(args.image), "image")[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a = show_iterations(model, image, out / "iterations.png", post, iterations=args.iterations, z=args.z,
                        device=args.device)
    b = show_votes(model, image, out / "votes.png", post, iterations=args.iterations, z=args.z, device=args.device)
    print(f"wrote {a} and {b}")
    return 0


# ---- export ----------------------------------------------------------------------------------


def cmd_export(args) -> int:
    if not (args.torchscript or args.bioimageio):
        raise UsageError("give --torchscript FILE and/or --bioimageio FILE.zip")
    if args.torchscript:
        from .export import export_torchscript

        path = export_torchscript(args.checkpoint, args.torchscript)
        print(f"wrote {path}: the whole pipeline (image -> int32 labels) for torch.jit.load / LibTorch / DJL")
    if args.bioimageio:
        from .export.bioimageio import export_bioimageio

        try:
            path = export_bioimageio(args.checkpoint, args.bioimageio)
        except ImportError as exc:
            raise UsageError(f"--bioimageio: {exc}") from None
        print(f"wrote {path}: a bioimage.io model package")
    return 0


# ---- parser ----------------------------------------------------------------------------------


SSDC_CHOICES = ("auto", "chain", "recompute", "fused")
SSDC_HELP = ("how the sSDC is computed: auto (default: the fastest, timed on this machine at first use), chain, recompute "
             "(about half the memory) or fused (rdcnet_ext's kernel, least memory)")


def _add_threads(parser) -> None:
    parser.add_argument("--threads", type=_count(1, 4096), help="CPU threads (default: one per core; fewer when "
                                                                 "other work runs on the machine)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rdcnet",
        description="RDCNet instance segmentation for 2D and 3D microscopy (Ortiz et al. 2020).",
        epilog="Run 'rdcnet <command> --help' for the options of a command.")
    sub = p.add_subparsers(dest="command", metavar="command", required=True)

    d = sub.add_parser("demo", help="train on built-in synthetic nuclei, segment held-out images, report metrics",
                       description=f"Generate synthetic 2D nuclei, train a small RDCNet ({DEMO_DURATION}), "
                                   "segment held-out images, print precision/recall/F1@0.5, SBD and AJI and "
                                   "write an overlay PNG. Needs no data and no GPU.")
    d.add_argument("--out", default="rdcnet-demo", help="output folder (default: %(default)s)")
    d.add_argument("--steps", type=_count(), default=DEMO_STEPS,
                   help=f"training steps per epoch, {DEMO_EPOCHS} epochs (default: %(default)s)")
    d.add_argument("--seed", type=_count(0, SEED_MAX), default=0)
    d.add_argument("--device", type=_device, default="auto", help="auto, cpu or cuda (default: %(default)s)")
    _add_threads(d)
    d.add_argument("--quick", action="store_true", help="a 20-step run to check the installation (about 10 seconds)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model on image/label folders",
                       description="Train RDCNet on pairs of images and instance labels (same file names in "
                                   "the two folders; TIFF or PNG; 2D, 2D RGB or 3D).")
    t.epilog = ("examples: rdcnet train --images data/images --labels data/labels --out runs/nuclei (every setting "
                "planned from the data and the machine; plan.json in the run folder) | ... --time 30m --margin 4 | "
                "rdcnet train --config configs/monuseg.toml (rerun the same command to resume)")
    t.add_argument("--config", help="experiment file (configs/*.toml): data, model and training settings; "
                                    "--out/--epochs/--steps/--lr/--device override it")
    t.add_argument("--images", help="folder of training images")
    t.add_argument("--labels", help="folder of label images (0 background, 1..K instances)")
    t.add_argument("--val-images", help="folder of validation images (default: hold out --val-fraction)")
    t.add_argument("--val-labels", help="folder of validation labels")
    t.add_argument("--val-fraction", type=_fraction, default=0.2,
                   help="share of the images held out for validation, in (0, 1) (default: %(default)s)")
    t.add_argument("--out", help="run folder: checkpoints, log.csv, training.png")
    t.add_argument("--ndim", type=int, choices=(2, 3), help="spatial dimensions (default: from the images)")
    t.add_argument("--spacing", type=_floats, help="pixel size per axis, e.g. 2,0.26,0.26 (default: 1)")
    t.add_argument("--factor", type=_ints, help="down-sampling factor per axis (default: planned: objects stay at "
                                              "least 4 coarse pixels wide)")
    t.add_argument("--crop", type=_ints, help="training crop in pixels (default: planned: about 6 objects across)")
    t.add_argument("--margin", type=_post("margin"), help="ESJ margin in physical units (default: planned: a quarter "
                                                          "of the median object diameter)")
    t.add_argument("--time", type=_duration, help="time budget of the run, e.g. 90s, 10m, 2h (default: 5m on a CPU, "
                                                  "20m on a GPU); plans --epochs and --steps")
    t.add_argument("--epochs", type=_count(), help="default: planned for --time; a larger value on resume extends "
                                                   "the run")
    t.add_argument("--steps", type=_count(), help="steps per epoch (default: planned for --time)")
    t.add_argument("--batch", type=_count(), help="crops per step (default: 2, more when crops hold few objects)")
    t.add_argument("--lr", type=_positive_number, help="initial learning rate (default: 1e-3, cosine to 1e-5)")
    t.add_argument("--groups", type=_count(), help="default: planned (8 on a GPU and CPU, fewer for a short budget)")
    t.add_argument("--channels", type=_count(), help="channels per group (default: planned: 64 on a GPU, 16 or "
                                                      "fewer on a CPU)")
    t.add_argument("--downsampling-channels", type=_count(), help="default: planned (32 on a GPU, 16 or fewer on "
                                                                   "a CPU)")
    t.add_argument("--dilations", type=_ints, help="default: planned: 1,2,4,8 or fewer for small crops")
    t.add_argument("--iterations", type=_count(), help="default: 5")
    t.add_argument("--augment", choices=("grey", "rgb", "none"), help="default: rgb for colour images, else grey")
    t.add_argument("--min-votes", type=_post("min_votes"),
                   help="minimum votes of a centre (default: planned from the object size, then tuned)")
    t.add_argument("--opening-radius", type=_post("opening_radius"),
                   help="label-wise opening radius at inference (physical units; default: planned, then tuned)")
    t.add_argument("--no-tune", action="store_true",
                   help="keep the decoding as planned or given (default: tune it on the validation images)")
    t.add_argument("--plan", help="use this plan.json (of another run) instead of planning; options still override")
    t.add_argument("--undefined", type=int, help="label value meaning 'undefined' (ignored in the loss)")
    t.add_argument("--mask-nonfinite", action="store_true",
                   help="leave NaN/Inf image pixels out of the loss (default: refuse such images)")
    t.add_argument("--seed", type=_count(0, SEED_MAX), default=0,
                   help="seeds the split, initial weights, crops and augmentation (default: %(default)s)")
    t.add_argument("--device", type=_device, help="auto (default), cpu or cuda")
    t.add_argument("--no-resume", action="store_true",
                   help="start over even if the run folder has last.pt (a resumed run must keep its options, "
                        "except --epochs and --device)")
    t.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision: bf16 (CUDA or CPU) or fp16 (CUDA); "
                                                          "default: planned ('auto': float32 for now)")
    t.add_argument("--ssdc", choices=SSDC_CHOICES, default="auto", help=SSDC_HELP)
    _add_threads(t)
    t.add_argument("--nproc", type=_count(), help="train with DistributedDataParallel on this many processes of this "
                                                 "machine (one GPU each with CUDA; gloo on CPU); same as "
                                                 "'torchrun --nproc-per-node N -m rdcnet train ...'")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="segment images with a trained model",
                       description="Segment a TIFF/PNG image or a folder of them; writes TIFF label images "
                                   "(one per input, same file stem) into --out.")
    r.epilog = ("examples: rdcnet predict images/ --model runs/nuclei/best.pt --out labels/ "
                "(3D stacks and RGB images alike; --tile 512 for very large 2D images) | "
                "rdcnet predict big.ome.zarr --model best.pt --out labels.ome.zarr --chunks 64,512,512 "
                "[--scheduler tcp://host:8786]")
    r.add_argument("input", help="image file or folder")
    r.add_argument("--model", required=True, help="checkpoint (best.pt) written by 'rdcnet train' or 'rdcnet demo', "
                                                  "or a bioimage.io package (.zip) written by 'rdcnet export'")
    r.add_argument("--out", required=True, help="output folder, or a .tif path for a single input")
    r.add_argument("--tile", type=_ints, help="tile size in pixels for large images (at least twice the model's "
                                              "receptive-field overlap, e.g. 128 for the default 2D model)")
    r.add_argument("--min-distance", type=_post("min_distance"),
                   help="peak window half-size (default: the training margin)")
    r.add_argument("--min-votes", type=_post("min_votes"), help="minimum votes of a centre (default: from the checkpoint)")
    r.add_argument("--opening-radius", type=_post("opening_radius"),
                   help="label-wise opening radius (default: from the checkpoint)")
    r.add_argument("--foreground-threshold", type=_post("foreground_threshold"),
                   help="foreground where 1 - P(background) exceeds it (default: from the checkpoint; argmax)")
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average over flips and 90° turns (default: as tuned in training)")
    r.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or auto (large images: each dask "
                                                                 "worker uses its own GPU with auto)")
    _add_threads(r)
    r.add_argument("--ssdc", choices=SSDC_CHOICES, default="auto", help=SSDC_HELP)
    r.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's arithmetic: auto (default: bfloat16 where the CPU or GPU computes it natively, "
                        "about twice as fast; float32 elsewhere), fp32 or bf16")
    large = r.add_argument_group("large images (OME-Zarr/TIFF, chunked; exact: equals whole-image decoding)")
    large.add_argument("--chunks", type=_ints, help="chunk size per axis for the chunked path (default: 1024 in "
                                                    "2D, 64,512,512 in 3D); implied by a .zarr input or output")
    large.add_argument("--overlap", type=_ints, help="pixels each chunk is grown by for the network "
                                                     "(default: the receptive field)")
    large.add_argument("--scheduler", help="dask scheduler: threads (default), sync, processes, or a "
                                           "dask.distributed address tcp://host:port")
    large.add_argument("--workdir", help="folder for the intermediate network outputs and the record of finished "
                                         "chunks (default: <out>.rdcnet-work beside --out); kept when a run is "
                                         "interrupted, so rerunning the same command resumes; removed at the end")
    large.add_argument("--no-resume", action="store_true",
                       help="start over, discarding the finished chunks of an interrupted run")
    large.add_argument("--keep-workdir", action="store_true", help="keep the work folder after the labels are written")
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="compare predicted labels with ground truth",
                       description="Precision, recall and F1 at IoU 0.1…0.95, SBD and AJI per image and averaged; "
                                   "prints a Markdown table and with --out writes metrics.md, metrics.csv and "
                                   "the F1-vs-IoU curve as PNG.")
    e.add_argument("--config", help="experiment file: segment its test split with the run's best.pt and "
                                    "write metrics.md/csv, table1.md and f1_vs_iou.png")
    e.add_argument("--checkpoint", help="with --config: model to evaluate (default: <run>/best.pt)")
    e.add_argument("--split", help="with --config: split to evaluate (default: test)")
    e.add_argument("--device", type=_device, help="with --config: cpu or cuda")
    e.add_argument("--truth", help="ground-truth label file or folder")
    e.add_argument("--pred", help="predicted label file or folder (same file names)")
    e.add_argument("--out", help="folder for metrics.md, metrics.csv, f1_vs_iou.png")
    e.add_argument("--undefined", type=int, help="truth label value meaning 'undefined' (ignored)")
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("sweep", help="hyperparameter analysis: F1 vs IoU over dilations and iterations (Fig. 4)",
                       description="Train and evaluate one model per setting of an experiment file; writes "
                                   "sweep.csv, sweep.md and the two Fig. 4 panels as PNG. Interrupted sweeps resume.")
    w.add_argument("--config", required=True, help="experiment file (configs/*.toml)")
    w.add_argument("--dilations", type=_int_sets, help="dilation sets, e.g. '1;1,2;1,2,4;1,2,4,8'")
    w.add_argument("--iterations", type=_ints, help="iteration counts, e.g. 1,2,3,5,10")
    w.add_argument("--out", help="sweep folder (default: from the file)")
    w.add_argument("--epochs", type=_count())
    w.add_argument("--steps", type=_count(), help="steps per epoch")
    w.add_argument("--device", type=_device)
    w.add_argument("--no-resume", action="store_true")
    w.set_defaults(func=cmd_sweep)

    v = sub.add_parser("show", help="figures of one image: per-iteration outputs (Fig. 1) and votes (suppl. Fig. 2)",
                       description="Writes iterations.png (foreground probability and pseudo-coloured embeddings "
                                   "per iteration) and votes.png (Hough votes with the detected centres).")
    v.add_argument("image", help="image file")
    v.add_argument("--model", required=True, help="checkpoint")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--iterations", type=_count(), help="iterations to run (default: the model's)")
    v.add_argument("--z", type=_count(0), help="3D: slice to show (default: the middle)")
    v.add_argument("--device", type=_device, default="cpu")
    v.set_defaults(func=cmd_show)

    x = sub.add_parser("export", help="export a trained model for other runtimes (TorchScript, bioimage.io)",
                       description="Write the whole pipeline (normalisation, network, decoding; no rdcnet needed "
                                   "to run it) as one TorchScript file, and/or a bioimage.io model package.")
    x.epilog = "example: rdcnet export runs/nuclei/best.pt --torchscript rdcnet.pt --bioimageio rdcnet.zip"
    x.add_argument("checkpoint", help="checkpoint (best.pt)")
    x.add_argument("--torchscript", help="TorchScript file to write (image -> int32 labels)")
    x.add_argument("--bioimageio", help="bioimage.io package (.zip) to write (needs the 'bioimageio' extra)")
    x.set_defaults(func=cmd_export)
    return p


# Settings of a run (TrainConfig / RDCNet fields) -> the option that sets them, for resume messages.
_FLAGS = {"margin": "--margin", "crop": "--crop", "steps_per_epoch": "--steps", "lr": "--lr", "seed": "--seed",
          "batch_size": "--batch",
          "augment": "--augment", "mask_nonfinite": "--mask-nonfinite", "postprocess.margin": "--margin",
          "postprocess.min_votes": "--min-votes", "postprocess.opening_radius": "--opening-radius",
          "model.groups": "--groups", "model.channels_per_group": "--channels", "model.dilations": "--dilations",
          "model.iterations": "--iterations", "model.factor": "--factor", "model.spacing": "--spacing",
          "model.downsampling_channels": "--downsampling-channels", "model.ndim": "--ndim",
          "model.in_channels": "image channels"}


def _resume_message(exc) -> str:
    how = "rerun with --no-resume to start over (or use another --out)"
    if not exc.differences:
        return f"cannot resume from {exc.path}: {exc.reason}; {how}"
    seen, parts = set(), []
    for key, old, new in exc.differences:
        flag = _FLAGS.get(key, key)
        if flag not in seen:
            seen.add(flag)
            parts.append(f"{flag} was {old!r}, now {new!r}")
    return (f"cannot resume from {exc.path}: it was trained with other options ({'; '.join(parts)}); "
            f"rerun with the same options, or {how.replace('rerun with', 'with')}")


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings as 'rdcnet <command>: warning: ...' lines, like the errors."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: print(
            f"rdcnet {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        yield


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc re-runs per process
    import torch

    from .machine import set_threads

    threads_before = torch.get_num_threads()  # main() may run inside a longer process (tests, notebooks)
    try:
        set_threads(getattr(args, "threads", None))
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> int:
    """Run the command; a problem the user can fix is one line on stderr and exit status 2."""
    from ._files import OutputLockedError
    from .train import NonFiniteLossError, ResumeError

    try:
        with _one_line_warnings(args.command):
            return args.func(args)
    except UsageError as exc:
        print(f"rdcnet {args.command}: error: {exc}", file=sys.stderr)
    except ResumeError as exc:
        print(f"rdcnet {args.command}: error: {_resume_message(exc)}", file=sys.stderr)
    except (FileNotFoundError, ValueError, TypeError, OSError, NonFiniteLossError, OutputLockedError) as exc:
        if os.environ.get("RDCNET_DEBUG"):
            raise
        message = " ".join(str(exc).split())  # some messages list files on several lines
        print(f"rdcnet {args.command}: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        note = getattr(args, "interrupted_note", None) or (
            "finished epochs are saved in the run folder" if args.command == "train" else "files already written are kept")
        print(f"rdcnet {args.command}: interrupted ({note})", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
