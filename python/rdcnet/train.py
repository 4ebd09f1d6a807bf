"""Training: Adam, cosine learning rate, random crops with online augmentation, validation
(F1 at IoU 0.5) every epoch, atomic checkpoints with the full configuration, resume, a CSV log
and a PNG plot of the curves."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._checks import (check_bool, check_image, check_int, check_number, check_path, check_per_axis,
                      resolve_device)
from ._files import OutputLock, atomic_write, remove_stale_temporaries
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .distributed import Context, state_for
from .losses import RDCNetLoss
from .model import RDCNet, RDCNetConfig
from .postprocess import PostprocessConfig, labels_from_output
from .predict import channel_axis_of, predict_output
from .ssdc import SSDC_PATHS

# load_checkpoint and save_checkpoint live in rdcnet.checkpoint (the one owner of model files); they
# stay importable from here for code written against earlier versions.
__all__ = ["TrainConfig", "TrainResult", "train", "load_checkpoint", "save_checkpoint", "ResumeError",
           "NonFiniteLossError", "resume_differences", "resume_state", "check_crop", "check_finite_pixels"]

#: Settings that may change when a run is resumed. ``epochs``: the cosine schedule is re-planned
#: from the learning rate reached so far down to ``lr_min`` over the new remaining steps (so the
#: learning rate never climbs back up); the others do not change what is learned. Every other
#: difference (model, margin, crop, steps, learning rates, augmentation, seed, decoding, masking)
#: makes ``train`` refuse to resume (:class:`ResumeError`).
RESUMABLE_CHANGES = ("epochs", "device", "out_dir", "tune_postprocess", "amp", "time_limit")
# Mixed precision (TrainConfig.amp): the autocast dtype of the network's forward pass.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: the clock a time-limited run is paced by (tests substitute a simulated one)
_clock = time.perf_counter


class ResumeError(ValueError):
    """``out_dir/last.pt`` cannot be resumed: unreadable, or written with other settings.
    ``path``: the checkpoint; ``reason``: why; ``differences``: (setting, saved, now) triples."""

    def __init__(self, path, reason: str, differences=(), how: str = "resume=False"):
        self.path, self.reason, self.differences = Path(path), reason, list(differences)
        super().__init__(f"cannot resume from {path}: {reason}; to start over pass {how} "
                         "(or use another out_dir)")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or weights; the checkpoints on disk are left untouched."""


@dataclass
class TrainConfig:
    """Training settings (stored in every checkpoint).

    out_dir: folder for ``last.pt``, ``best.pt``, ``log.csv`` and ``training.png``.
    margin: ESJ margin in physical units (also the default peak window at inference).
    crop: training crop per spatial axis, in pixels.
    epochs, steps_per_epoch, batch_size: the schedule (paper: batch size 2).
    lr, lr_min: Adam's learning rate, annealed with a cosine from ``lr`` to ``lr_min``.
    augment: "grey", "rgb" (supplement Table 1 presets), "none", or a dict
        ``{"preset": name, **rdcnet.data.AugmentConfig overrides}``.
    seed: seeds crops, augmentation, dropout and initialisation.
    device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
    postprocess: decoding used for validation and saved for inference.
    tune_postprocess: after training, choose the peak window and ``min_votes`` on the
        validation images and store them in ``best.pt`` (see :func:`tune_postprocess`).
    mask_nonfinite: leave non-finite image pixels (NaN, ±Inf) out of the loss (their labels
        become -1, their values 0) instead of refusing such images.
    amp: mixed precision: None (float32), "bf16" (CUDA and CPU) or "fp16" (CUDA, with a gradient
        scaler). The network runs under ``torch.autocast``; the embeddings, probabilities and
        losses stay float32 (positions in bfloat16 would be pixels off).
    time_limit: seconds the epochs (training steps and validations) and the decoding tuning
        after them may take, or None. When set, ``epochs`` is where the run starts: after every
        epoch the epochs that fit at the run's pace so far are counted again (whole ones, then a
        shorter last one; the tuning estimated from the validations; at most twice ``epochs``),
        and when that changes, the cosine is re-planned from the current learning rate over the
        new remaining steps. A run on a machine slower or faster than its plan measured then
        still ends on time, and its number of steps depends on the machine's pace. None:
        exactly ``epochs``, and the same seed gives the same weights bit for bit.
    """

    out_dir: str = "rdcnet-run"
    margin: float = 5.0
    crop: Tuple[int, ...] = (128, 128)
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 2
    lr: float = 1e-3
    lr_min: float = 1e-5
    augment: Union[str, dict] = "grey"
    seed: int = 0
    device: str = "auto"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    tune_postprocess: bool = True
    mask_nonfinite: bool = False
    amp: Optional[str] = None
    time_limit: Optional[float] = None

    def __post_init__(self):
        self.out_dir = str(check_path(self.out_dir, "out_dir"))
        self.margin = check_number(self.margin, "margin", positive=True)
        self.crop = check_per_axis(self.crop, None, "crop", kind="int", minimum=1)
        self.epochs = check_int(self.epochs, "epochs", minimum=0)
        self.steps_per_epoch = check_int(self.steps_per_epoch, "steps_per_epoch", minimum=1)
        self.batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        self.lr = check_number(self.lr, "lr", positive=True)
        self.lr_min = check_number(self.lr_min, "lr_min", minimum=0.0)
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min: expected at most lr ({self.lr:g}), got {self.lr_min:g}")
        self.seed = check_int(self.seed, "seed", minimum=0, maximum=2**63 - 1)
        if self.time_limit is not None:
            self.time_limit = check_number(self.time_limit, "time_limit", positive=True)
        if self.amp is not None and (not isinstance(self.amp, str) or self.amp not in AMP_DTYPES):
            raise ValueError(f"amp: expected None or one of {', '.join(map(repr, AMP_DTYPES))}, got {self.amp!r}")
        if not isinstance(self.device, str):
            self.device = str(resolve_device(self.device, "device"))  # stored as text; availability: train()
        self.tune_postprocess = check_bool(self.tune_postprocess, "tune_postprocess")
        self.mask_nonfinite = check_bool(self.mask_nonfinite, "mask_nonfinite")
        make_augmenter(self.augment, len(self.crop) if len(self.crop) > 1 else 2)  # a bad augment fails here
        if isinstance(self.postprocess, dict):
            self.postprocess = PostprocessConfig(**self.postprocess)
        if not isinstance(self.postprocess, PostprocessConfig):
            raise TypeError(f"postprocess: expected a PostprocessConfig, got {type(self.postprocess).__name__}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop"] = list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["crop"] = tuple(d.get("crop", cls.crop))
        d["postprocess"] = PostprocessConfig(**d.get("postprocess", {}))
        return cls(**d)


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    history: List[dict]
    best_f1: float


def make_augmenter(augment: Union[str, dict], ndim: int):
    """The augmenter of ``TrainConfig.augment``: a preset name ("grey", "rgb", "none") or a dict
    ``{"preset": name, **AugmentConfig overrides}`` (e.g. supplement Table 1 per data set)."""
    from .data import Augmenter

    overrides = {}
    if isinstance(augment, dict):
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items() if k != "preset"}
        augment = augment.get("preset", "grey")
    if augment == "grey":
        return Augmenter.for_grey(ndim, **overrides)
    if augment == "rgb":
        return Augmenter.for_rgb(**overrides)
    if augment == "none":
        return Augmenter(dict(ndim=ndim, flip_p=0.0, rotate90=False, **overrides)) if overrides else None
    raise ValueError(f"augment: expected 'grey', 'rgb', 'none' or a dict with a 'preset', got {augment!r}")


class _Sampler:
    """Random crops of random training images, augmented, as (B, C, *S) / (B, *S) tensors."""

    def __init__(self, images, labels, crop, augment, ndim: int, rng: np.random.Generator):
        self.images, self.labels, self.crop, self.rng = images, labels, tuple(crop), rng
        self.augmenter = make_augmenter(augment, ndim)

    def batch(self, size: int):
        from .data import random_crop

        xs, ys = [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.images)))
            x, y = random_crop(self.images[i], self.labels[i], self.crop, self.rng)
            if self.augmenter is not None:
                x, y = self.augmenter(x, y, self.rng)
            xs.append(np.ascontiguousarray(x, dtype=np.float32))
            ys.append(np.ascontiguousarray(y, dtype=np.int64))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def check_crop(crop, factor, name: str = "crop", image_shapes=None) -> tuple:
    """A training crop spans at least one down-sampling step per axis (one size serves every axis)
    and, given the training images' spatial shapes, is no larger than the largest image along any
    axis (a larger crop would only pad: memory and time for nothing)."""
    crop = check_per_axis(crop, len(factor), name, kind="int", minimum=1)
    if any(c < f for c, f in zip(crop, factor)):
        raise ValueError(f"{name}: expected at least the down-sampling factor ({','.join(map(str, factor))}) "
                         f"per axis, got {','.join(map(str, crop))}")
    if image_shapes:
        largest = tuple(max(s[a] for s in image_shapes) for a in range(len(crop)))
        if any(c > n for c, n in zip(crop, largest)):
            fitted = ",".join(str(max(f, min(c, n))) for c, n, f in zip(crop, largest, factor))
            raise ValueError(f"{name}: {','.join(map(str, crop))} is larger than the largest training image "
                             f"({'x'.join(map(str, largest))}); use at most {fitted}")
    return crop


def check_finite_pixels(image, name: str, option: str = "mask_nonfinite=True") -> None:
    """Refuse a training image with NaN/Inf pixels, naming it and the ``option`` that masks them."""
    from .data import count_nonfinite

    n = count_nonfinite(image)
    if n:
        raise ValueError(f"{name}: {n} of {np.asarray(image).size} pixel values are not finite (NaN or Inf); "
                         f"fix the image, or pass {option} to leave those pixels out of the loss")


def _prepare(pairs, model: RDCNet, name: str, mask_nonfinite: bool = False):
    from .data import nonfinite_pixels, normalize_image

    if isinstance(pairs, (np.ndarray, str, bytes, dict)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of (image, labels) pairs, got {type(pairs).__name__}")
    images, labels = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected (image, labels) pairs, item {i} is "
                            f"{type(pair).__name__}{f' of length {len(pair)}' if hasattr(pair, '__len__') else ''}")
        check_image(pair[0], f"{name}[{i}] image")
        check_image(pair[1], f"{name}[{i}] labels")
        image, lab = np.asarray(pair[0]), np.asarray(pair[1])
        if lab.dtype.kind == "f" and not (np.isfinite(lab).all() and (lab == np.round(lab)).all()):
            raise ValueError(f"{name}[{i}] labels: expected whole numbers (instance ids; < 0 undefined), got "
                             "fractional or non-finite values")
        if not mask_nonfinite:
            check_finite_pixels(image, f"{name}[{i}]")
        try:
            axis = channel_axis_of(image, model)
        except ValueError as exc:
            raise ValueError(f"{name}[{i}]: {str(exc).split(': ', 1)[-1]}") from None
        x = normalize_image(image, channel_axis=axis)
        if x.shape[1:] != lab.shape:
            raise ValueError(f"{name}[{i}]: image spatial shape {x.shape[1:]} does not match labels {lab.shape}")
        if x.shape[0] != model.config.in_channels:
            raise ValueError(f"{name}[{i}]: the model expects {model.config.in_channels} channel(s), "
                             f"got {x.shape[0]} (image shape {image.shape})")
        lab = lab.astype(np.int64)
        bad = nonfinite_pixels(x)
        if bad is not None:  # only with mask_nonfinite: no data there, so no loss either
            x[:, bad] = 0.0
            lab[bad] = -1
        images.append(x)
        labels.append(lab)
    if not images:
        raise ValueError(f"{name}: expected at least one (image, labels) pair, got none")
    return images, labels


def _mean_f1(model: RDCNet, outputs, labels, postprocess: PostprocessConfig) -> float:
    """Mean F1 at IoU 0.5 of the decoded ``outputs`` (one per image) against ``labels``."""
    from .metrics import evaluate_image

    return float(np.mean([
        evaluate_image(y, labels_from_output(o.embeddings, o.probabilities, model.config.spacing,
                                             postprocess).cpu().numpy())["f1@0.5"]
        for o, y in zip(outputs, labels)]))


def _validate(model, loss_fn, images, labels, postprocess, device, timing: Optional[dict] = None) -> dict:
    """The validation loss and mean F1@0.5; ``timing`` receives the seconds spent running the
    network and decoding (on :data:`_clock`)."""
    outputs, losses = [], []
    t0 = _clock()
    for x, y in zip(images, labels):  # float32 on every machine: the F1 that picks best.pt does not vary
        out = predict_output(model, torch.from_numpy(x), device=device, precision="fp32")
        yt = torch.from_numpy(y).to(device)[None]
        batched = type(out)(out.embeddings[None], out.probabilities[None], out.logits[None])
        losses.append(float(loss_fn(batched, yt)[0]))
        outputs.append(out)
    t1 = _clock()
    f1 = _mean_f1(model, outputs, labels, postprocess)
    if timing is not None:
        timing.update(network=t1 - t0, decoding=_clock() - t1)
    return {"val_loss": float(np.mean(losses)), "val_f1": f1}


def _grid_scores(outputs, labels, spacing, base: PostprocessConfig, thresholds, windows, votes, radii) -> np.ndarray:
    """Mean F1@0.5 over the images of every decoding in the grid thresholds × windows × votes ×
    radii, as an array of that shape. The stages are shared: one vote map per threshold, one
    assignment per set of centres, one opening per radius; the result of each equals
    :func:`labels_from_output` with those parameters (ops.embeddings_to_labels is these four ops)."""
    from rdcnet_ext import ops

    from .metrics import precision_recall_f1
    from .postprocess import foreground

    spacing = tuple(float(s) for s in spacing)
    f1 = np.zeros((len(thresholds), len(windows), len(votes), len(radii)))
    for out, truth in zip(outputs, labels):
        emb = out.embeddings.detach().float().contiguous()
        for ti, t in enumerate(thresholds):
            mask = foreground(out.probabilities, t).contiguous()
            vote_map = ops.hough_votes(emb, mask, spacing)
            for wi, w in enumerate(windows):
                previous, scores = None, None
                for vi, v in enumerate(votes):  # a higher min_votes keeps a subset of the centres
                    centres = ops.find_peaks(vote_map, float(w), int(v), spacing, int(base.smooth_radius))
                    if previous is None or not torch.equal(centres, previous):
                        assigned = ops.assign_to_centres(emb, mask, centres, spacing, base.max_distance)
                        scores = []
                        for r in radii:
                            lab = assigned if r is None else ops.label_opening(assigned, float(r), spacing)
                            scores.append(precision_recall_f1(truth, lab.cpu().numpy(), [0.5]).f1[0])
                    previous = centres
                    f1[ti, wi, vi] += scores
    return f1 / max(len(outputs), 1)


def _first_unique(values) -> list:
    """``values`` without repeats, in order (the first is the starting value: ties keep it)."""
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def tune_postprocess(model: RDCNet, images, labels, postprocess: PostprocessConfig, device="cpu",
                     window_factors: Sequence[float] = (0.5, 0.75, 1.0, 1.25),
                     thresholds: Optional[Sequence[Optional[float]]] = None,
                     opening_radii: Optional[Sequence[Optional[float]]] = None, tta: Optional[bool] = None,
                     details: Optional[dict] = None) -> Tuple[PostprocessConfig, float, float]:
    """Choose the decoding that maximises the mean F1@0.5 on validation images, as the paper
    suggests for the window ("we find it beneficial to fine tune the window size on the
    validation set"): the peak window (``min_distance`` as a multiple of the margin), ``min_votes``
    (½, 1, 2, 4 × the current), the foreground threshold (``thresholds``, default argmax and
    0.3 … 0.7), the opening radius (``opening_radii``, default none, 1 and 2 pixels of the finest
    axis) and test-time augmentation (``tta``: None tries both and keeps TTA only if it scores
    higher; True/False fixes it). The network runs once per image (4-8 times with TTA); the grid
    of decodings reuses vote maps and assignments (:func:`_grid_scores`). ``images`` are
    normalised (C, *S) arrays. Returns (best config, its F1, the F1 of ``postprocess``); ties keep
    the current values. ``details``, when given, receives the grid size, the F1 with and without
    TTA and the seconds spent running the network and decoding."""
    spacing = tuple(float(s) for s in model.config.spacing)
    windows = _first_unique([postprocess.peak_window] + [f * postprocess.margin for f in window_factors])
    v0 = postprocess.min_votes
    votes = _first_unique([v0, max(1, v0 // 2), v0 * 2, v0 * 4])
    if thresholds is None:
        thresholds = (None, 0.3, 0.4, 0.6, 0.7) + ((0.5,) if model.config.n_classes > 2 else ())
    thresholds = _first_unique([postprocess.foreground_threshold] + list(thresholds))
    if opening_radii is None:
        opening_radii = (None, min(spacing), 2 * min(spacing))
    radii = _first_unique([postprocess.opening_radius] + list(opening_radii))
    modes = _first_unique([postprocess.tta] + ([False, True] if tta is None else [bool(tta)]))
    seconds = {"network": 0.0, "decoding": 0.0}
    grids = {}
    for mode in modes:
        t0 = time.perf_counter()
        outputs = [predict_output(model, torch.from_numpy(x), device=device, tta=mode, precision="fp32")
                   for x in images]
        t1 = time.perf_counter()
        grids[mode] = _grid_scores(outputs, labels, spacing, postprocess, thresholds, windows, votes, radii)
        seconds["network"] += t1 - t0
        seconds["decoding"] += time.perf_counter() - t1
    base = float(grids[postprocess.tta][0, 0, 0, 0])
    best, best_f1 = postprocess, base
    allowed = modes if tta is None else [bool(tta)]
    for mode in allowed:
        grid = grids[mode]
        index = np.unravel_index(int(np.argmax(grid)), grid.shape)  # the first maximum: nearest the start
        if grid[index] > best_f1 + 1e-9 or (mode != best.tta and tta is not None):
            t, w, v, r = index
            window = postprocess.min_distance if w == 0 else windows[w]  # (None stays None: the margin)
            best = dataclasses.replace(postprocess, foreground_threshold=thresholds[t], min_distance=window,
                                       min_votes=votes[v], opening_radius=radii[r], tta=mode)
            best_f1 = float(grid[index])
    if details is not None:
        details.update(decodings=int(sum(g.size for g in grids.values())) * len(images),
                       f1_without_tta=float(grids[False].max()) if False in grids else None,
                       f1_with_tta=float(grids[True].max()) if True in grids else None,
                       network_seconds=seconds["network"], decoding_seconds=seconds["decoding"])
    return best, best_f1, base


#: Seconds between redrawings of training.png (about 0.25 s each on a CPU: every epoch of a
#: minutes-long run would spend several percent of it drawing); the last epoch always draws.
PLOT_INTERVAL = 30.0


def _write_log(out_dir: Path, history: List[dict], plot: bool = True) -> None:
    if not history:
        return
    keys = list(history[0].keys())

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)

    atomic_write(out_dir / "log.csv", write)
    if not plot:
        return
    from .viz import plot_training

    atomic_write(out_dir / "training.png", lambda tmp: plot_training(history, tmp))


# The lock file of a run folder while a run writes it (rdcnet._files.OutputLock).
RUN_LOCK = "run.lock"
# What a run folder holds (and so which stray temporaries of atomic_write may be cleaned).
_RUN_FILES = ("last.pt", "best.pt", "log.csv", "training.png", "splits.json", "config.json", "plan.json")
_RESUME_KEYS = ("model_config", "state_dict", "optimizer", "scheduler", "numpy_rng", "torch_rng", "history",
                "best_f1", "epoch")


def _plain(value):
    """Lists for tuples, recursively, so settings compare equal however they were stored."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _train_defaults() -> dict:
    return TrainConfig().to_dict()


def resume_differences(saved: dict, config: TrainConfig, saved_model: Optional[dict] = None,
                       model: Optional[RDCNetConfig] = None) -> List[Tuple[str, object, object]]:
    """The settings that differ between a checkpoint (its ``train_config`` and ``model_config``)
    and this run and may not change on resume (all but :data:`RESUMABLE_CHANGES`), as
    ``(setting, saved, now)``; decoding settings as ``postprocess.<field>``, model settings as
    ``model.<field>``."""
    diffs = []
    if saved_model is not None and model is not None:
        now_model = model.to_dict()
        for key in sorted(set(saved_model) | set(now_model)):
            if _plain(saved_model.get(key)) != _plain(now_model.get(key)):
                diffs.append((f"model.{key}", saved_model.get(key), now_model.get(key)))
    defaults, now = _train_defaults(), config.to_dict()
    for key, value in now.items():
        if key in RESUMABLE_CHANGES:
            continue
        old = (saved or {}).get(key, defaults[key])
        if key == "postprocess":
            for name, v in value.items():
                o = (old or {}).get(name, defaults[key][name])
                if _plain(o) != _plain(v):
                    diffs.append((f"postprocess.{name}", o, v))
        elif _plain(old) != _plain(value):
            diffs.append((key, old, value))
    return diffs


def resume_state(config: TrainConfig, model: RDCNet) -> Optional[dict]:
    """The run state in ``config.out_dir/last.pt`` that :func:`train` would resume from (None
    when there is none), checked to be readable and written with the same settings; raises
    :class:`ResumeError` otherwise. Callers may use it to fail before any other work."""
    path = Path(config.out_dir) / "last.pt"
    return _read_resume_state(path, model, config) if path.exists() else None


def _read_resume_state(path: Path, model: RDCNet, config: TrainConfig) -> dict:
    try:
        ckpt = read_checkpoint(path, map_location="cpu", required=_RESUME_KEYS, what="resumable checkpoint")
    except CheckpointError as exc:  # truncated, empty, foreign or code-carrying files
        raise ResumeError(path, f"it is {exc.reason}") from None
    diffs = resume_differences(ckpt.get("train_config") or {}, config, ckpt["model_config"], model.config)
    if diffs:
        listed = "; ".join(f"{k} was {old!r}, now {new!r}" for k, old, new in diffs)
        raise ResumeError(path, f"it was written with other settings ({listed})", diffs)
    return ckpt


@contextlib.contextmanager
def _keeping_ssdc_path(model: RDCNet):
    """The model's requested sSDC path is the caller's again when training ends (train() fixes it)."""
    requested = model.ssdc_path
    try:
        yield
    finally:
        model.ssdc_path = requested


def _replan_schedule(optimizer, config: TrainConfig, remaining_steps: int):
    """A cosine from the learning rate reached so far down to ``lr_min`` over the remaining
    steps: the schedule of a run whose ``epochs`` changed continues without a jump."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(remaining_steps, 1),
                                                      eta_min=min(config.lr_min, optimizer.param_groups[0]["lr"]))


MAX_EPOCHS_GROWTH = 2  # a time-limited run trains at most this many times its planned epochs
#: The decoding tuning after training costs about this many validations' network and decoding
#: seconds: measured 7-11× and 64-209× on the runs of benchmarks/self_config.py (2D and 3D).
TUNING_PER_VALIDATION = {"network": 10, "decoding": 150}


@dataclass
class _Pace:
    """How a time-limited run has spent its seconds so far (rank 0's clock, earlier sessions of
    the run included): what the epochs that still fit are counted from."""

    loop_seconds: float = 0.0  # every finished epoch, validation and checkpoints included
    step_seconds: float = 0.0  # their training steps alone
    steps: int = 0
    overhead: float = 0.0      # an epoch's validation, checkpoints and plot ...
    reserve: float = 0.0       # ... and the decoding tuning to come, estimated from a validation
    epochs: int = 0

    def after_epoch(self, seconds: float, step_seconds: float, steps: int, overhead: float, reserve: float):
        """The pace with one more epoch. The overhead and tuning reserve are the least seen after
        the first epoch: the first validation decodes an untrained model, which took about 400×
        a trained one's decoding in 3D (benchmarks/self_config.py, 24 px), and a run must not end
        early on that; until a second epoch is timed only the steps count."""
        if self.epochs >= 2:
            overhead, reserve = min(self.overhead, overhead), min(self.reserve, reserve)
        elif self.epochs == 0:
            overhead = reserve = 0.0
        return _Pace(self.loop_seconds + seconds, self.step_seconds + step_seconds, self.steps + steps,
                     overhead, reserve, self.epochs + 1)

    def schedule(self, time_limit: float, epochs_done: int, steps_per_epoch: int, planned_epochs: int):
        """(epochs, steps of the last epoch) ending, with the tuning, within ``time_limit`` at
        this pace: whole epochs, then a shorter last one with the steps the rest allows; at least
        ``epochs_done``, at most :data:`MAX_EPOCHS_GROWTH` × ``planned_epochs``."""
        left = max(time_limit - self.loop_seconds - self.reserve, 0.0)
        per_step = max(self.step_seconds / max(self.steps, 1), 1e-9)
        per_epoch = steps_per_epoch * per_step + self.overhead
        full = int(left / per_epoch + 1e-9)
        cap = max(epochs_done, MAX_EPOCHS_GROWTH * planned_epochs)
        if epochs_done + full >= cap:
            return cap, steps_per_epoch
        partial = int((left - full * per_epoch - self.overhead) / per_step + 1e-9)
        if partial >= 1:
            return epochs_done + full + 1, min(partial, steps_per_epoch)
        return epochs_done + full, steps_per_epoch


def _check_finite_weights(model: RDCNet, epoch: int) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteLossError(f"training diverged: the weights are not finite after epoch {epoch + 1}; the "
                                 "checkpoints of earlier epochs are kept; lower the learning rate or check the data")


def _tune_best(best_path: Path, val_images, val_labels, config: TrainConfig, device, progress: bool) -> None:
    """Tune the decoding of ``best.pt`` unless it already was: the tuning is part of the run's
    state, so a run killed before it resumes into it."""
    best_model, _, ckpt = load_checkpoint(best_path, device=device)
    if "postprocess_tuning" in ckpt:
        return
    details = {}
    tuned, tuned_f1, base_f1 = tune_postprocess(best_model, val_images, val_labels, config.postprocess, device,
                                                details=details)
    if progress:
        threshold = tuned.foreground_threshold
        print(f"validation F1@0.5 {base_f1:.3f} -> {tuned_f1:.3f} with peak window {tuned.peak_window:g}, "
              f"min_votes {tuned.min_votes}, foreground {'argmax' if threshold is None else f'> {threshold:g}'}, "
              f"opening {tuned.opening_radius or 0:g}, TTA {'on' if tuned.tta else 'off'} "
              f"({details['decodings']} decodings in {details['decoding_seconds']:.1f} s, network "
              f"{details['network_seconds']:.1f} s; saved in {best_path.name})", file=sys.stderr)
    extra = {k: ckpt[k] for k in ("epoch", "history", "best_f1", "best_val_loss", "selected_by") if k in ckpt}
    save_checkpoint(best_path, best_model, dataclasses.replace(config, postprocess=tuned), **extra,
                    postprocess_tuning={"f1": tuned_f1, "f1_before": base_f1, **details})


def train(model: Union[RDCNet, RDCNetConfig, dict], train_data: Sequence, val_data: Sequence,
          config: TrainConfig = TrainConfig(), resume: bool = True, progress: bool = True,
          callback: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Train an RDCNet on (image, labels) pairs.

    Args:
        model: an RDCNet, or its configuration (the model is then built, seeded by ``config.seed``).
        train_data, val_data: sequences of (raw image, int labels) pairs, NumPy arrays; labels
            0 = background, < 0 = undefined (ignored by the losses). Images with NaN/Inf pixels
            are refused unless ``config.mask_nonfinite``.
        config: :class:`TrainConfig`.
        resume: continue from ``out_dir/last.pt`` when it exists. Only the settings in
            :data:`RESUMABLE_CHANGES` may differ from the saved run (a changed ``epochs``
            re-plans the cosine from the current learning rate); any other difference, or an
            unreadable ``last.pt``, raises :class:`ResumeError`.
        progress: show progress bars.
        callback: called after every training step with a dict: ``epoch`` and ``epochs`` (1-based,
            this run's), ``step`` and ``steps`` (counted over the whole run), ``loss`` and
            ``eta_seconds`` (the remaining training steps at this run's pace so far; validation and
            tuning come on top). An exception it raises stops training (finished epochs are kept).

    Every epoch writes ``last.pt`` (atomically) and, when the validation F1 at IoU 0.5 improves,
    ``best.pt`` (by the validation loss instead, with a warning, when the validation labels hold
    no instances); an interrupted run resumes after its last finished epoch, and into the
    post-processing tuning when it was killed before that. A NaN/Inf loss stops the run with
    :class:`NonFiniteLossError` before it touches a checkpoint.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    resume, progress = check_bool(resume, "resume"), check_bool(progress, "progress")
    device = resolve_device(config.device, "device")
    torch.manual_seed(config.seed)
    if isinstance(model, (dict, RDCNetConfig)):
        model = RDCNet.from_config(model)
    elif not isinstance(model, RDCNet):
        raise TypeError(f"model: expected an RDCNet, an RDCNetConfig or a dict, got {type(model).__name__}")
    check_crop(config.crop, model.config.factor)
    ctx = Context.from_env(device)  # torchrun: one rank of a DistributedDataParallel job
    device = ctx.device(device)
    progress = progress and ctx.is_main
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp: 'fp16' needs a CUDA device (got {device}); use 'bf16' on the CPU")
    # The data is checked before anything is written: a mistake leaves no run folder behind.
    train_images, train_labels = _prepare(train_data, model, "train_data", config.mask_nonfinite)
    val_images, val_labels = _prepare(val_data, model, "val_data", config.mask_nonfinite)
    crop = check_crop(config.crop, model.config.factor, image_shapes=[y.shape for y in train_labels])
    config = dataclasses.replace(config, crop=crop)  # one size per axis, as a resumed run stored it
    model.to(device)
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    ckpt = resume_state(config, model) if resume else None
    out_dir.mkdir(parents=True, exist_ok=True)
    # One run per folder: a second train() on it (another process, a second click) is refused.
    lock = OutputLock(out_dir / RUN_LOCK, f"run folder {out_dir}") if ctx.is_main else contextlib.nullcontext()
    requested_ssdc = model.ssdc_path
    with lock, _keeping_ssdc_path(model):
        stale = remove_stale_temporaries(out_dir, _RUN_FILES) if ctx.is_main else []  # rank 0 is the only writer
        if stale and progress:
            print(f"removed {len(stale)} temporary file(s) of an interrupted write in {out_dir}", file=sys.stderr)
        select_by = "val_f1" if any(bool((y > 0).any()) for y in val_labels) else "val_loss"
        if select_by == "val_loss":
            warnings.warn("val_data: the validation labels hold no instances (all background or undefined), so "
                          "F1 says nothing: best.pt is chosen by the lowest validation loss and the decoding is not "
                          "tuned", stacklevel=2)

        tunes = config.tune_postprocess and select_by == "val_f1"  # the decoding, after the epochs
        loss_fn = RDCNetLoss(config.margin)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        total_steps = config.epochs * config.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=config.lr_min)
        rng = np.random.default_rng(ctx.seed(config.seed))
        if ctx.active:
            torch.manual_seed(ctx.seed(config.seed))  # distinct dropout per rank; weights come from rank 0
        history: List[dict] = []
        best_f1, best_loss, start_epoch = -1.0, math.inf, 0
        # What time_limit makes of the epochs: how many, and the steps of the last one.
        run_epochs, last_steps, pace = config.epochs, config.steps_per_epoch, _Pace()

        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            rng.bit_generator.state = ckpt["numpy_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            if ctx.active and ckpt.get("numpy_rng_ranks") and len(ckpt["numpy_rng_ranks"]) == ctx.world:
                rng.bit_generator.state = ckpt["numpy_rng_ranks"][ctx.rank]
                torch.set_rng_state(ckpt["torch_rng_ranks"][ctx.rank])
            history, best_f1, start_epoch = ckpt["history"], ckpt["best_f1"], ckpt["epoch"] + 1
            best_loss = ckpt.get("best_val_loss", math.inf)
            saved_epochs = (ckpt.get("train_config") or {}).get("epochs", config.epochs)
            pace = _Pace(**ckpt.get("pace", {}))
            if saved_epochs == config.epochs:  # as the time limit last counted them
                run_epochs = int(ckpt.get("run_epochs", config.epochs))
                last_steps = int(ckpt.get("last_steps", config.steps_per_epoch))
            elif start_epoch < config.epochs:
                scheduler = _replan_schedule(optimizer, config, (config.epochs - start_epoch) * config.steps_per_epoch)
                if progress:
                    print(f"epochs changed from {saved_epochs} to {config.epochs}: the learning rate anneals from "
                          f"{optimizer.param_groups[0]['lr']:.3g} to {config.lr_min:.3g} over the remaining "
                          f"{config.epochs - start_epoch} epoch(s)", file=sys.stderr)
            if progress:
                print(f"resuming from {last_path} after epoch {start_epoch} (best F1@0.5 {best_f1:.3f})", file=sys.stderr)

        sampler = _Sampler(train_images, train_labels, config.crop, config.augment, model.config.ndim, rng)
        net = ctx.wrap(model)  # DDP averages the gradients of all ranks
        amp_dtype = AMP_DTYPES.get(config.amp)
        # The way the sSDC is computed is fixed for the whole run and kept on resume ("auto": the
        # fastest measured for this run's batches), so that the same command and seed give the same
        # weights, bit for bit, however the machine's timings vary.
        if requested_ssdc == "auto":
            saved = (ckpt or {}).get("ssdc_path")
            model.ssdc_path = saved if saved in SSDC_PATHS else model.ssdc_path_for(
                config.batch_size, config.crop, device, amp_dtype, needs_grad=True)
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        if ckpt is not None and ckpt.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["grad_scaler"])
        run_start = time.perf_counter()  # the pace of this run, for the callback's ETA
        last_plot, drawn = -math.inf, len(history)  # the first epoch draws training.png
        epoch, paced_at = start_epoch, None
        while True:
            if paced_at is not None:  # the checkpoint writes since the pace was taken count too
                pace = dataclasses.replace(pace, loop_seconds=pace.loop_seconds + _clock() - paced_at)
            if config.time_limit is not None and epoch > 0:
                pace = _Pace(**ctx.gather(dataclasses.asdict(pace))[0])  # rank 0's count for every rank
                fit = pace.schedule(config.time_limit, epoch, config.steps_per_epoch, config.epochs)
                if fit[0] <= epoch:
                    if progress and run_epochs > epoch:
                        print(f"time limit {config.time_limit:.0f} s: no more steps fit; stopping after epoch {epoch} "
                              f"of the {run_epochs} counted before", file=sys.stderr)
                    run_epochs = epoch  # the time is spent
                elif fit != (run_epochs, last_steps):
                    remaining = (fit[0] - 1 - epoch) * config.steps_per_epoch + fit[1]
                    scheduler = _replan_schedule(optimizer, config, remaining)
                    if progress and fit[0] != run_epochs:
                        print(f"time limit {config.time_limit:.0f} s: at this pace {fit[0]} epoch(s) fit, not "
                              f"{run_epochs}; the learning rate anneals from {optimizer.param_groups[0]['lr']:.3g} "
                              f"over the remaining {remaining} steps", file=sys.stderr)
                    run_epochs, last_steps = fit
            if epoch >= run_epochs:
                break
            epoch_steps = last_steps if epoch == run_epochs - 1 else config.steps_per_epoch
            epoch_start = _clock()
            model.train()
            sums = {"loss": 0.0, "class": 0.0, "embedding": 0.0}
            bar = tqdm(range(epoch_steps), desc=f"epoch {epoch + 1}/{run_epochs}", leave=False,
                       disable=not progress, unit="step", mininterval=1.0)
            for step in bar:
                x, y = sampler.batch(config.batch_size)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    output = net(x.to(device))
                loss, parts = loss_fn(output, y.to(device))  # float32 outputs (the model's head), float32 loss
                value = float(loss.detach())
                if ctx.any_rank(not math.isfinite(value)):  # every rank stops together (no one waits in DDP)
                    kept = (f"{last_path.name} and {best_path.name} keep epoch {epoch}" if epoch > 0
                            else "no checkpoint was written")
                    raise NonFiniteLossError(
                        f"training diverged: the loss is {value} at epoch {epoch + 1}, step {step + 1} (learning "
                        f"rate {scheduler.get_last_lr()[0]:.3g}); {kept}; lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # (skipped by the fp16 scaler when the gradients overflowed)
                scaler.update()
                scheduler.step()
                sums["loss"] += value
                sums["class"] += parts["class"]
                sums["embedding"] += parts["embedding"]
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                if callback is not None:
                    done = (epoch - start_epoch) * config.steps_per_epoch + step + 1
                    steps = (run_epochs - 1) * config.steps_per_epoch + last_steps
                    remaining = steps - epoch * config.steps_per_epoch - step - 1
                    callback({"epoch": epoch + 1, "epochs": run_epochs,
                              "step": epoch * config.steps_per_epoch + step + 1,
                              "steps": steps, "loss": value,
                              "eta_seconds": (time.perf_counter() - run_start) / done * remaining})
            steps_end = _clock()
            _check_finite_weights(model, epoch)
            n = max(epoch_steps, 1)
            row = {"epoch": epoch + 1, "train_loss": sums["loss"] / n, "train_class_loss": sums["class"] / n,
                   "train_embedding_loss": sums["embedding"] / n}
            ranks_state = state_for(ctx, rng.bit_generator.state, torch.get_rng_state())
            if not ctx.is_main:  # rank 0 validates and writes; the others wait for the checkpoints
                ctx.barrier()
                epoch += 1
                continue
            timing = {}
            row.update(_validate(model, loss_fn, val_images, val_labels, config.postprocess, device, timing))
            row["lr"] = scheduler.get_last_lr()[0]
            # No wall time in the history: the same command and seed give the same log.csv.
            seconds = _clock() - epoch_start
            history.append(row)
            if select_by == "val_f1":
                improved = row["val_f1"] > best_f1
            else:
                improved = row["val_loss"] < best_loss
            if improved:
                best_f1, best_loss = row["val_f1"], row["val_loss"]
            reserve = sum(TUNING_PER_VALIDATION[k] * timing[k] for k in TUNING_PER_VALIDATION) if tunes else 0.0
            now = _clock()
            pace = pace.after_epoch(now - epoch_start, steps_end - epoch_start, epoch_steps, now - steps_end, reserve)
            paced_at = now
            state = dict(epoch=epoch, history=history, best_f1=best_f1, best_val_loss=best_loss, selected_by=select_by,
                         optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         numpy_rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(), **(ranks_state or {}),
                         grad_scaler=scaler.state_dict() if scaler.is_enabled() else None, ssdc_path=model.ssdc_path,
                         run_epochs=run_epochs, last_steps=last_steps, pace=dataclasses.asdict(pace))
            if improved:
                save_checkpoint(best_path, model, config, epoch=epoch, history=history, best_f1=best_f1,
                                best_val_loss=best_loss, selected_by=select_by)
            save_checkpoint(last_path, model, config, **state)
            last_epoch = epoch + 1 == run_epochs
            plot = last_epoch or time.perf_counter() - last_plot >= PLOT_INTERVAL
            _write_log(out_dir, history, plot=plot)
            if plot:
                last_plot, drawn = time.perf_counter(), len(history)
            ctx.barrier()
            if progress:
                print(f"epoch {epoch + 1}/{run_epochs}: loss {row['train_loss']:.4f} "
                      f"val loss {row['val_loss']:.4f} val F1@0.5 {row['val_f1']:.3f}"
                      f"{' (best)' if improved else ''} [{seconds:.1f} s]", file=sys.stderr)
            epoch += 1
        if ctx.is_main:
            if drawn < len(history):  # a time limit ended the run before the epoch it counted last
                _write_log(out_dir, history, plot=True)
            if not best_path.exists():  # zero epochs requested: still leave a usable checkpoint
                save_checkpoint(best_path, model, config, epoch=-1, history=history, best_f1=best_f1)
            elif tunes and history:
                _tune_best(best_path, val_images, val_labels, config, device, progress)
        ctx.barrier()  # the other ranks wait until rank 0 has tuned and written best.pt
        ctx.close()
        return TrainResult(best_path, last_path, history, best_f1 if select_by == "val_f1" else math.nan)
