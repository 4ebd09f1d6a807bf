"""Figures: training curves, label overlays. Matplotlib's object API (no display needed)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

__all__ = ["plot_training", "label_overlay", "save_overlay"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_training(history: List[dict], path) -> None:
    """Losses (train and validation) and validation F1@0.5 per epoch, as a PNG."""
    epochs = [h["epoch"] for h in history]
    fig = _figure(9, 3.5)
    ax_loss, ax_f1 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation"),
                       ("train_class_loss", "train: class"), ("train_embedding_loss", "train: embedding")):
        if history and key in history[0]:
            ax_loss.plot(epochs, [h[key] for h in history], marker=".", label=label,
                         linestyle="-" if "class" not in key and "embedding" not in key else ":")
    ax_loss.set(xlabel="epoch", ylabel="loss (soft Jaccard + ESJ)", title="Loss")
    ax_loss.legend(fontsize="small")
    ax_f1.plot(epochs, [h.get("val_f1", np.nan) for h in history], marker="o", color="C2")
    ax_f1.set(xlabel="epoch", ylabel="F1 at IoU 0.5", title="Validation F1@0.5", ylim=(0, 1.02))
    ax_f1.grid(alpha=0.3)
    fig.savefig(path, format="png")


def _colours(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.permutation(n) / max(n, 1), np.full(n, 0.85), np.full(n, 1.0)], -1)
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(hsv) if n else np.zeros((0, 3))


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    lo, hi = np.percentile(image, (1, 99.8))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB float image: the (normalised) image with each instance in its own colour and
    instance boundaries drawn opaque."""
    from skimage.segmentation import find_boundaries

    rgb = _to_rgb(image)
    labels = np.asarray(labels)
    ids = np.unique(labels[labels > 0])
    lut = np.zeros((int(labels.max()) + 1 if labels.size and labels.max() > 0 else 1, 3))
    lut[ids] = _colours(len(ids))
    colour = lut[np.clip(labels, 0, None)]
    fg = (labels > 0)[..., None]
    out = np.where(fg, (1 - alpha) * rgb + alpha * colour, rgb)
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    out[edges] = colour[edges]
    return out


def save_overlay(path, image: np.ndarray, predicted: np.ndarray, truth: Optional[np.ndarray] = None,
                 title: str = "") -> None:
    """PNG with the image, the prediction overlay and (optionally) the ground-truth overlay."""
    panels = [("image", _to_rgb(image)), ("prediction", label_overlay(image, predicted))]
    if truth is not None:
        panels.append(("ground truth", label_overlay(image, truth)))
    fig = _figure(3.2 * len(panels), 3.4)
    for ax, (name, rgb) in zip(fig.subplots(1, len(panels)), panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(path, format="png")
