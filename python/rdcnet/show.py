"""Figures of what the network does (``rdcnet show``), with matplotlib's object API.

* :func:`show_iterations` — the paper's Fig. 1: per recurrent iteration the foreground
  probability (grey, white = 1) and the embeddings in pseudo-colour.
* :func:`show_votes` — the supplement's Fig. 2: the Hough vote histogram of the embeddings (log
  scale) with the detected centres, per iteration or for the final output.

Embedding colours: each pixel is coloured by *where its embedding points* (in pixels, i.e.
embedding / spacing), through a smooth periodic 2D colour field: hue = frac(3 · x_e / W)
and value = 0.6 + 0.4 · cos(2π · 3 · y_e / H). An untrained network (every pixel embeds at its own
position) shows a smooth plaid over the image; as the iterations converge, all pixels of an
instance point at one spot and the instance becomes a flat patch of one colour, neighbouring
instances in different colours. Background (P(foreground) < 0.5) is darkened.

3D inputs show the middle z slice (or ``z``) for the maps and a maximum projection over z of
the votes; embeddings use their y and x components.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["show_iterations", "show_votes", "embedding_colours", "forward_all"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def forward_all(model, image, iterations: Optional[int] = None, device=None):
    """Run ``model`` on one raw image (normalised as in training) and return the list of
    :class:`rdcnet.RDCNetOutput` of every iteration (batch axis removed, on the CPU) and the
    normalised input ``(C, *S)``. The whole image is processed at once (no tiling): crop large
    images first."""
    import torch

    from .model import RDCNetOutput
    from .predict import prepare_image

    x = prepare_image(image, model)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = model(x[None].to(dev), return_all=True, iterations=iterations)
    finally:
        model.train(was_training)
    return [RDCNetOutput(o.embeddings[0].cpu(), o.probabilities[0].cpu(), o.logits[0].cpu()) for o in outs], x


def embedding_colours(embeddings: np.ndarray, spacing: Sequence[float], foreground: Optional[np.ndarray] = None,
                      periods: float = 3.0) -> np.ndarray:
    """RGB float ``(Y, X, 3)`` of 2D embeddings ``(2, Y, X)`` (physical units): hue from the x
    position the embedding points at, value from its y position (``periods`` colour cycles
    across the image); pixels with ``foreground`` false are darkened."""
    from matplotlib.colors import hsv_to_rgb

    emb = np.asarray(embeddings, np.float64)
    H, W = emb.shape[1:]
    y = emb[0] / float(spacing[-2])
    x = emb[1] / float(spacing[-1])
    hue = np.mod(periods * x / max(W, 1), 1.0)
    val = 0.6 + 0.4 * np.cos(2 * np.pi * periods * y / max(H, 1))
    rgb = hsv_to_rgb(np.stack([hue, np.full_like(hue, 0.85), val], -1))
    if foreground is not None:
        rgb = np.where(np.asarray(foreground)[..., None], rgb, 0.2 * rgb)
    return np.clip(rgb, 0, 1)


def _plane(a, ndim: int, z: Optional[int]):
    """2D plane of a (..., *S) array: itself in 2D, slice ``z`` (default middle) in 3D."""
    a = np.asarray(a)
    if ndim == 2:
        return a
    zz = a.shape[-3] // 2 if z is None else int(z)
    if not 0 <= zz < a.shape[-3]:
        raise ValueError(f"z={z} is outside the stack (0..{a.shape[-3] - 1})")
    return a[..., zz, :, :]


def _image_rgb(image, ndim: int, z: Optional[int]) -> np.ndarray:
    """Display RGB (percentile-stretched) of the raw input: grey (*S) or colour (Y, X, C)."""
    from .viz import _to_rgb

    image = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if ndim == 3:
        image = _plane(image if image.ndim == 3 else np.moveaxis(image, -1, 0)[0], 3, z)
    elif image.ndim == 3 and image.shape[-1] not in (1, 3) and image.shape[0] in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] not in (1, 3):
        image = image[..., 0]
    return _to_rgb(image)


def show_iterations(model, image, path, postprocess=None, iterations: Optional[int] = None, z: Optional[int] = None,
                    device=None, max_columns: int = 10) -> Path:
    """Write a PNG grid: the input (and, with ``postprocess``, the final instance labels), then
    per iteration ``i`` (``model(x, return_all=True)``) the foreground probability ``1 - P(bg)``
    (grey, white = 1) on top and the pseudo-coloured embeddings below (paper Fig. 1; colours
    explained in the module docstring). ``iterations``: how many steps to show (default: the
    model's); at most ``max_columns`` evenly spaced iterations are drawn (always the last).
    3D: slice ``z`` (default the middle). Returns ``path``."""
    from .postprocess import labels_from_output
    from .viz import label_overlay

    outs, x = forward_all(model, image, iterations, device)
    cfg = model.config
    ndim, spacing = cfg.ndim, cfg.spacing
    n = len(outs)
    shown = sorted(set(np.linspace(0, n - 1, min(n, max_columns)).round().astype(int).tolist()))
    cols = len(shown) + 1
    fig = _figure(2.1 * cols, 4.6)
    axes = fig.subplots(2, cols, squeeze=False)
    rgb = _image_rgb(image, ndim, z)
    axes[0, 0].imshow(rgb, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize="small")
    if postprocess is not None:
        final = outs[-1]
        labels = labels_from_output(final.embeddings, final.probabilities, spacing, postprocess).numpy()
        axes[1, 0].imshow(label_overlay(rgb, _plane(labels, ndim, z)), interpolation="nearest")
        axes[1, 0].set_title(f"labels ({int(labels.max())})", fontsize="small")
    for c, i in enumerate(shown, start=1):
        out = outs[i]
        fg = _plane(1.0 - out.probabilities[0].numpy(), ndim, z)
        emb = _plane(out.embeddings.numpy(), ndim, z)[-2:]  # y, x components
        axes[0, c].imshow(fg, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0, c].set_title(f"i = {i + 1}", fontsize="small")
        axes[1, c].imshow(embedding_colours(emb, spacing, fg >= 0.5), interpolation="nearest")
    axes[0, 1].set_ylabel("P(foreground)", fontsize="small")
    axes[1, 1].set_ylabel("embeddings", fontsize="small")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    where = f", z = {x.shape[1] // 2 if z is None else z}" if ndim == 3 else ""
    fig.suptitle(f"RDCNet per iteration{where}: foreground probability (top), embeddings (bottom)",
                 fontsize="medium")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _votes_and_centres(out, spacing, postprocess):
    from rdcnet_ext import ops

    from .postprocess import foreground

    emb = out.embeddings.float().contiguous()
    mask = foreground(out.probabilities, postprocess.foreground_threshold).contiguous()
    votes = ops.hough_votes(emb, mask, spacing=tuple(float(s) for s in spacing))
    centres = ops.find_peaks(votes, float(postprocess.peak_window), min_votes=int(postprocess.min_votes),
                             spacing=tuple(float(s) for s in spacing), smooth_radius=int(postprocess.smooth_radius))
    return votes.numpy(), centres.numpy()


def show_votes(model, image, path, postprocess=None, iterations: Optional[int] = None, all_iterations: bool = True,
               z: Optional[int] = None, device=None, max_columns: int = 10) -> Path:
    """Write a PNG of the Hough vote histogram (supplement Fig. 2): every foreground pixel votes
    for the pixel its embedding points at (``rdcnet_ext.ops.hough_votes``), shown as
    log(1 + votes); the centres found by ``rdcnet_ext.ops.find_peaks`` with the
    ``postprocess`` window/threshold are marked with red crosses and counted in the titles.
    With ``all_iterations`` one column per iteration (at most ``max_columns``), else only the
    final output. The first column shows the input with the final centres.
    3D: votes are max-projected over z and all centres drawn at their (y, x). Returns ``path``."""
    from .postprocess import PostprocessConfig

    postprocess = postprocess if postprocess is not None else PostprocessConfig()
    if isinstance(postprocess, dict):
        postprocess = PostprocessConfig(**postprocess)
    outs, x = forward_all(model, image, iterations, device)
    cfg = model.config
    n = len(outs)
    shown = (sorted(set(np.linspace(0, n - 1, min(n, max_columns)).round().astype(int).tolist()))
             if all_iterations else [n - 1])
    results = {i: _votes_and_centres(outs[i], cfg.spacing, postprocess) for i in shown}
    cols = len(shown) + 1
    fig = _figure(2.3 * cols, 2.8)
    axes = fig.subplots(1, cols, squeeze=False)[0]
    rgb = _image_rgb(image, cfg.ndim, z)
    vmax = max(float(np.log1p(v.max())) for v, _ in results.values()) or 1.0

    def project(v):
        return v if cfg.ndim == 2 else v.max(axis=0)

    def mark(ax, centres):
        if len(centres):
            ax.plot(centres[:, -1], centres[:, -2], "+", color="red", ms=6, mew=1.2)

    axes[0].imshow(rgb, interpolation="nearest")
    mark(axes[0], results[shown[-1]][1])
    axes[0].set_title("input + centres", fontsize="small")
    im = None
    for ax, i in zip(axes[1:], shown):
        votes, centres = results[i]
        im = ax.imshow(np.log1p(project(votes).astype(np.float64)), cmap="magma", vmin=0, vmax=vmax,
                       interpolation="nearest")
        mark(ax, centres)
        ax.set_title(f"i = {i + 1}: {len(centres)} centres", fontsize="small")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
        ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
    if im is not None:
        fig.colorbar(im, ax=list(axes[1:]), shrink=0.8, label="log(1 + votes)")
    what = " (max projection over z)" if cfg.ndim == 3 else ""
    fig.suptitle(f"Hough votes{what}, window {postprocess.min_distance or postprocess.margin:g}, "
                 f"min votes {postprocess.min_votes}", fontsize="medium")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
