"""Training: Adam, cosine learning rate, random crops with online augmentation, validation
(F1 at IoU 0.5) every epoch, atomic checkpoints with the full configuration, resume, a CSV log
and a PNG plot of the curves."""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._files import atomic_write
from .distributed import Context, state_for
from .losses import RDCNetLoss
from .model import RDCNet, RDCNetConfig
from .postprocess import PostprocessConfig, labels_from_output
from .predict import channel_axis_of, predict_output

__all__ = ["TrainConfig", "TrainResult", "train", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_VERSION = 1


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_checkpoint(path, model: RDCNet, train_config: Optional[TrainConfig] = None, **state) -> None:
    """Atomically save the model's weights with everything needed to rebuild and use it."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "postprocess": (train_config.postprocess if train_config else PostprocessConfig()).to_dict(),
        "state_dict": model.state_dict(),
        **state,
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path, device="cpu", fused: Optional[bool] = None, ssdc_path: Optional[str] = None):
    """Rebuild a model from a checkpoint. Returns (model in eval mode, PostprocessConfig, raw dict).
    ``ssdc_path`` (or the older ``fused``) chooses how the model computes its sSDC (:mod:`rdcnet.ssdc`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # truncated or foreign files
        raise ValueError(f"checkpoint: {path} is not an rdcnet checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint: {path} is not an rdcnet checkpoint (no model_config/state_dict)")
    model = RDCNet.from_config(ckpt["model_config"], fused=fused, ssdc_path=ssdc_path).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, PostprocessConfig(**ckpt.get("postprocess", {})), ckpt


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


def _prepare(pairs, model: RDCNet, name: str):
    from .data import normalize_image

    images, labels = [], []
    for i, pair in enumerate(pairs):
        try:
            image, lab = pair
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected (image, labels) pairs, item {i} is {type(pair).__name__}") from None
        image, lab = np.asarray(image), np.asarray(lab)
        try:
            axis = channel_axis_of(image, model)
        except ValueError:
            raise ValueError(f"{name}[{i}]: expected an image with {model.config.ndim} spatial axes (plus an "
                             f"optional channel axis), got shape {image.shape}") from None
        x = normalize_image(image, channel_axis=axis)
        if x.shape[1:] != lab.shape:
            raise ValueError(f"{name}[{i}]: image spatial shape {x.shape[1:]} does not match labels {lab.shape}")
        if x.shape[0] != model.config.in_channels:
            raise ValueError(f"{name}[{i}]: the model expects {model.config.in_channels} channel(s), "
                             f"got {x.shape[0]} (image shape {image.shape})")
        images.append(x)
        labels.append(lab.astype(np.int64))
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


def _validate(model, loss_fn, images, labels, postprocess, device) -> dict:
    outputs, losses = [], []
    for x, y in zip(images, labels):
        out = predict_output(model, torch.from_numpy(x), device=device)
        yt = torch.from_numpy(y).to(device)[None]
        batched = type(out)(out.embeddings[None], out.probabilities[None], out.logits[None])
        losses.append(float(loss_fn(batched, yt)[0]))
        outputs.append(out)
    return {"val_loss": float(np.mean(losses)), "val_f1": _mean_f1(model, outputs, labels, postprocess)}


def tune_postprocess(model: RDCNet, images, labels, postprocess: PostprocessConfig, device="cpu",
                     window_factors: Sequence[float] = (0.5, 0.75, 1.0, 1.25)) -> Tuple[PostprocessConfig, float, float]:
    """Pick the peak window (``min_distance`` as a multiple of the margin) and ``min_votes`` that
    maximise the mean F1@0.5 on validation images, as the paper suggests ("we find it beneficial to
    fine tune the window size on the validation set"). The network runs once per image; only the
    decoding is repeated. ``images`` are normalised (C, *S) arrays. Returns (best config, its F1,
    the F1 of ``postprocess``); ties keep ``postprocess``."""
    outputs = [predict_output(model, torch.from_numpy(x), device=device) for x in images]

    def score(cfg: PostprocessConfig) -> float:
        return _mean_f1(model, outputs, labels, cfg)

    base = score(postprocess)
    best, best_f1 = postprocess, base
    votes = sorted({max(1, postprocess.min_votes // 2), postprocess.min_votes, postprocess.min_votes * 2,
                    postprocess.min_votes * 4})
    for factor in window_factors:
        for v in votes:
            cand = dataclasses.replace(postprocess, min_distance=factor * postprocess.margin, min_votes=v)
            f1 = score(cand)
            if f1 > best_f1 + 1e-9:
                best, best_f1 = cand, f1
    return best, best_f1, base


def _write_log(out_dir: Path, history: List[dict]) -> None:
    if not history:
        return
    keys = list(history[0].keys())

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)

    atomic_write(out_dir / "log.csv", write)
    from .viz import plot_training

    atomic_write(out_dir / "training.png", lambda tmp: plot_training(history, tmp))


def train(model: Union[RDCNet, RDCNetConfig, dict], train_data: Sequence, val_data: Sequence,
          config: TrainConfig = TrainConfig(), resume: bool = True, progress: bool = True) -> TrainResult:
    """Train an RDCNet on (image, labels) pairs.

    Args:
        model: an RDCNet, or its configuration (the model is then built, seeded by ``config.seed``).
        train_data, val_data: sequences of (raw image, int labels) pairs, NumPy arrays; labels
            0 = background, < 0 = undefined (ignored by the losses).
        config: :class:`TrainConfig`.
        resume: continue from ``out_dir/last.pt`` when it exists (same model configuration).
        progress: show progress bars.

    Every epoch writes ``last.pt`` (atomically) and, when the validation F1 at IoU 0.5 improves,
    ``best.pt``; an interrupted run resumes after its last finished epoch.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    if not isinstance(model, RDCNet):
        model = RDCNet.from_config(model)
    device = _device(config.device)
    ctx = Context.from_env(device)  # torchrun: one rank of a DistributedDataParallel job
    device = ctx.device(device)
    progress = progress and ctx.is_main
    model.to(device)
    if len(config.crop) != model.config.ndim:
        raise ValueError(f"crop: expected {model.config.ndim} sizes, got {config.crop}")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = _prepare(train_data, model, "train_data")
    val_images, val_labels = _prepare(val_data, model, "val_data")

    loss_fn = RDCNetLoss(config.margin)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=config.lr_min)
    rng = np.random.default_rng(ctx.seed(config.seed))
    if ctx.active:
        torch.manual_seed(ctx.seed(config.seed))  # distinct dropout per rank; weights come from rank 0
    history: List[dict] = []
    best_f1, start_epoch = -1.0, 0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if ckpt.get("model_config") != model.config.to_dict():
            raise ValueError(f"resume: {last_path} holds a model with another configuration; "
                             "use another out_dir or resume=False")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        if ctx.active and ckpt.get("numpy_rng_ranks") and len(ckpt["numpy_rng_ranks"]) == ctx.world:
            rng.bit_generator.state = ckpt["numpy_rng_ranks"][ctx.rank]
            torch.set_rng_state(ckpt["torch_rng_ranks"][ctx.rank])
        history, best_f1, start_epoch = ckpt["history"], ckpt["best_f1"], ckpt["epoch"] + 1
        if progress:
            print(f"resuming from {last_path} after epoch {start_epoch} (best F1@0.5 {best_f1:.3f})", file=sys.stderr)

    sampler = _Sampler(train_images, train_labels, config.crop, config.augment, model.config.ndim, rng)
    net = ctx.wrap(model)  # DDP averages the gradients of all ranks
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "class": 0.0, "embedding": 0.0}
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress, unit="step", mininterval=1.0)
        for _ in bar:
            x, y = sampler.batch(config.batch_size)
            loss, parts = loss_fn(net(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums["loss"] += float(loss.detach())
            sums["class"] += parts["class"]
            sums["embedding"] += parts["embedding"]
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        n = max(config.steps_per_epoch, 1)
        row = {"epoch": epoch + 1, "train_loss": sums["loss"] / n, "train_class_loss": sums["class"] / n,
               "train_embedding_loss": sums["embedding"] / n}
        ranks_state = state_for(ctx, rng.bit_generator.state, torch.get_rng_state())
        if not ctx.is_main:  # rank 0 validates and writes; the others wait for the checkpoints
            ctx.barrier()
            continue
        row.update(_validate(model, loss_fn, val_images, val_labels, config.postprocess, device))
        row["lr"] = scheduler.get_last_lr()[0]
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        improved = row["val_f1"] > best_f1
        best_f1 = max(best_f1, row["val_f1"])
        state = dict(epoch=epoch, history=history, best_f1=best_f1, optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), numpy_rng=rng.bit_generator.state,
                     torch_rng=torch.get_rng_state(), **(ranks_state or {}))
        if improved:
            save_checkpoint(best_path, model, config, epoch=epoch, history=history, best_f1=best_f1)
        save_checkpoint(last_path, model, config, **state)
        _write_log(out_dir, history)
        ctx.barrier()
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f} "
                  f"val loss {row['val_loss']:.4f} val F1@0.5 {row['val_f1']:.3f}"
                  f"{' (best)' if improved else ''} [{row['seconds']:.1f} s]", file=sys.stderr)
    if not ctx.is_main:
        ctx.barrier()  # until rank 0 has tuned and written best.pt
        ctx.close()
        return TrainResult(best_path, last_path, history, best_f1)
    if not best_path.exists():  # zero epochs requested: still leave a usable checkpoint
        save_checkpoint(best_path, model, config, epoch=-1, history=history, best_f1=best_f1)
    elif config.tune_postprocess and start_epoch < config.epochs:
        best_model, _, ckpt = load_checkpoint(best_path, device=device)
        tuned, tuned_f1, base_f1 = tune_postprocess(best_model, val_images, val_labels, config.postprocess, device)
        if progress:
            print(f"validation F1@0.5 {base_f1:.3f} -> {tuned_f1:.3f} with peak window "
                  f"{tuned.min_distance if tuned.min_distance is not None else tuned.margin:g} and min_votes "
                  f"{tuned.min_votes} (saved in {best_path.name})", file=sys.stderr)
        extra = {k: ckpt[k] for k in ("epoch", "history", "best_f1") if k in ckpt}
        save_checkpoint(best_path, best_model, dataclasses.replace(config, postprocess=tuned), **extra,
                        postprocess_tuning={"f1": tuned_f1, "f1_before": base_f1})
    ctx.barrier()
    ctx.close()
    return TrainResult(best_path, last_path, history, best_f1)
