"""The whole rdcnet inference pipeline as one TorchScript module: raw image → normalisation →
network → decoding → int32 instance labels, in pure torch ops (no rdcnet, no rdcnet_ext, no
Python needed to run it: ``torch.jit.load`` in Python, LibTorch in C++, DJL in Java).

The decoding follows the op semantics of ``rdcnet_ext`` (DESIGN.md, "Op semantics";
:mod:`rdcnet_ext.reference` is the executable specification, and the functions here are tested
equal to it on random inputs). Everything that depends on the decoding parameters only, the peak
window and the opening ball's offsets, is computed by ``rdcnet_ext._geometry`` at export time and
baked into the module as constants, so it cannot drift from the ops. The image is processed in
one pass (no tiling): equal to :func:`rdcnet.predict` for images up to its tile size
(``rdcnet.predict.DEFAULT_TILE``); larger images need that much memory.
"""

import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .. import tta
from ..postprocess import foreground
from .network import PortableRDCNet

__all__ = ["ScriptableDecoder", "ScriptableNormalizer", "RDCNetPipeline", "build_pipeline", "export_torchscript",
           "portable_network", "script"]


# ---- decoding (scriptable twins of rdcnet_ext.reference) ----------------------------------------


def _shift(x: torch.Tensor, axis: int, offset: int, fill: float) -> torch.Tensor:
    """``out[p] = x[p + offset·e_axis]`` where inside the image, else ``fill``."""
    n = x.shape[axis]
    if offset == 0:
        return x
    if abs(offset) >= n:
        return torch.full_like(x, fill)
    shape: List[int] = list(x.shape)
    shape[axis] = abs(offset)
    slab = torch.full(shape, fill, dtype=x.dtype, device=x.device)
    if offset > 0:
        return torch.cat([x.narrow(axis, offset, n - offset), slab], dim=axis)
    return torch.cat([slab, x.narrow(axis, 0, n + offset)], dim=axis)


def _shift_nd(x: torch.Tensor, offset: List[int], fill: float) -> torch.Tensor:
    for a in range(len(offset)):
        x = _shift(x, a, offset[a], fill)
    return x


def hough_votes(embeddings: torch.Tensor, mask: torch.Tensor, spacing: List[float]) -> torch.Tensor:
    ndim = embeddings.shape[0]
    shape: List[int] = embeddings.shape[1:]
    s = torch.tensor(spacing, dtype=torch.float64, device=embeddings.device)
    emb = embeddings.reshape(ndim, -1).to(torch.float64)
    bins = torch.round(emb / s[:, None])
    valid = mask.reshape(-1).to(torch.bool) & torch.isfinite(emb).all(dim=0)
    for a in range(ndim):
        valid = valid & (bins[a] >= 0) & (bins[a] <= shape[a] - 1)
    bins = torch.where(valid[None], bins, torch.zeros_like(bins)).to(torch.int64)
    flat = torch.zeros_like(bins[0])
    stride = 1
    for a in range(ndim - 1, -1, -1):
        flat = flat + bins[a] * stride
        stride *= shape[a]
    n = flat.numel()
    votes = torch.bincount(flat[valid], minlength=max(n, 1))[:n]
    return votes.to(torch.int32).reshape(shape)


def find_peaks(votes: torch.Tensor, window: List[int], min_votes: int, smooth_radius: int) -> torch.Tensor:
    """``rdcnet_ext.reference.find_peaks`` with the window half-sizes given in pixels."""
    ndim = votes.dim()
    score = votes.to(torch.int64)
    if smooth_radius > 0:
        for a in range(ndim):
            acc = torch.zeros_like(score)
            for o in range(-smooth_radius, smooth_radius + 1):
                acc = acc + _shift(score, a, o, 0.0)
            score = acc
    n = score.numel()
    # One key orders pixels by (score, earlier in row-major order); a peak holds its window's largest.
    index = torch.arange(n, device=votes.device, dtype=torch.int64).reshape(score.shape)
    key = score * n + (n - 1 - index)
    lowest = -9.223372036854775808e18  # int64 min, exact as a float
    window_max = key
    for a in range(ndim):
        acc = window_max
        r = min(window[a], score.shape[a] - 1)  # a window beyond the image adds nothing
        for o in range(-r, r + 1):
            if o != 0:
                acc = torch.maximum(acc, _shift(window_max, a, o, lowest))
        window_max = acc
    is_peak = (key == window_max) & (score >= min_votes)
    return torch.nonzero(is_peak).reshape(-1, ndim)


def assign_to_centres(embeddings: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, spacing: List[float],
                      max_distance: Optional[float], chunk: int = 0) -> torch.Tensor:
    """The reference's dense pixels × centres search, in chunks of about 4M distances (``chunk``
    pixels if given); the result does not depend on the chunking."""
    ndim = embeddings.shape[0]
    shape: List[int] = embeddings.shape[1:]
    s = torch.tensor(spacing, dtype=torch.float64, device=embeddings.device)
    emb = embeddings.reshape(ndim, -1).to(torch.float64)
    labels = torch.zeros(emb.shape[1], dtype=torch.int32, device=embeddings.device)
    if centres.shape[0] == 0:
        return labels.reshape(shape)
    positions = centres.to(torch.float64) * s
    if chunk <= 0:
        chunk = max(256, (1 << 22) // centres.shape[0])
    todo = torch.nonzero(mask.reshape(-1).to(torch.bool) & torch.isfinite(emb).all(dim=0)).flatten()
    for start in range(0, todo.numel(), chunk):
        idx = todo[start:start + chunk]
        d2 = torch.zeros(0)
        for a in range(ndim):
            diff = emb[a, idx][:, None] - positions[None, :, a]
            d2 = diff * diff if a == 0 else d2 + diff * diff
        best, k = torch.min(d2, dim=1)  # ties: the lowest k
        lab = (k + 1).to(torch.int32)
        if max_distance is not None:
            lab = torch.where(best <= max_distance * max_distance, lab, torch.zeros_like(lab))
        labels[idx] = lab
    return labels.reshape(shape)


def label_opening(labels: torch.Tensor, offsets: List[List[int]]) -> torch.Tensor:
    """``rdcnet_ext.reference.label_opening`` with the ball given as its pixel offsets."""
    ndim = labels.dim()
    halo: List[int] = []
    for a in range(ndim):
        h = 0
        for o in offsets:
            h = max(h, abs(o[a]))
        halo.append(h)
    pad: List[int] = []
    for a in range(ndim - 1, -1, -1):
        pad += [2 * halo[a], 2 * halo[a]]
    inside = torch.nn.functional.pad(torch.ones_like(labels, dtype=torch.uint8), pad).to(torch.bool)
    padded = torch.nn.functional.pad(labels, pad)
    lowest = -2147483648 if labels.dtype == torch.int32 else -9223372036854775807 - 1
    common = torch.full_like(padded, lowest)
    for o in offsets:
        common = torch.maximum(common, torch.where(_shift_nd(inside, o, 0.0), _shift_nd(padded, o, 0.0),
                                                   torch.full_like(padded, lowest)))
    agree = (common != lowest) & (common != 0)
    for o in offsets:
        agree = agree & ((_shift_nd(padded, o, 0.0) == common) | ~_shift_nd(inside, o, 0.0))
    eroded = torch.where(agree, common, torch.zeros_like(common))
    kept = torch.zeros_like(inside)
    for o in offsets:
        kept = kept | (_shift_nd(eroded, o, 0.0) == padded)
    kept = kept & inside & (padded != 0)
    out = torch.where(kept, padded, torch.zeros_like(padded))
    for a in range(ndim):
        out = out.narrow(a, 2 * halo[a], labels.shape[a])
    return out.contiguous()


class ScriptableDecoder(nn.Module):
    """``rdcnet.postprocess.labels_from_output`` with its parameters fixed: (embeddings (ndim, *S),
    probabilities (n_classes, *S)) → int32 labels (*S)."""

    max_distance: Optional[float]
    opening_offsets: List[List[int]]
    foreground_threshold: Optional[float]

    def __init__(self, spacing, postprocess):
        super().__init__()
        from rdcnet_ext._geometry import ellipsoid_offsets, peak_window

        self.spacing: List[float] = [float(s) for s in spacing]
        min_distance = postprocess.margin if postprocess.min_distance is None else postprocess.min_distance
        self.window: List[int] = peak_window(float(min_distance), self.spacing)
        self.min_votes = int(postprocess.min_votes)
        self.smooth_radius = int(postprocess.smooth_radius)
        self.max_distance = None if postprocess.max_distance is None else float(postprocess.max_distance)
        radius = postprocess.opening_radius
        self.opening_offsets = (ellipsoid_offsets(float(radius), self.spacing).tolist()
                                                 if radius else [])
        threshold = postprocess.foreground_threshold
        self.foreground_threshold = None if threshold is None else float(threshold)

    def forward(self, embeddings: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        mask = foreground(probabilities, self.foreground_threshold)
        emb = embeddings.detach().float().contiguous()
        votes = hough_votes(emb, mask, self.spacing)
        centres = find_peaks(votes, self.window, self.min_votes, self.smooth_radius)
        labels = assign_to_centres(emb, mask, centres, self.spacing, self.max_distance)
        if len(self.opening_offsets) > 0:
            labels = label_opening(labels, self.opening_offsets)
        return labels


# ---- normalisation (scriptable twin of rdcnet.data.normalize_image) ------------------------------


def _percentile(sorted_values: torch.Tensor, q: float) -> float:
    """NumPy's default ('linear') percentile of already sorted float32 values, with NumPy's
    rounding: the difference of the neighbours in float32, the interpolation in float64."""
    n = sorted_values.numel()
    virtual = (n - 1) * (q / 100.0)
    below = int(virtual)  # floor: virtual >= 0
    gamma = virtual - below
    if virtual >= n - 1:
        below, gamma = n - 1, 0.0
    above = min(below + 1, n - 1)
    a = sorted_values[below]
    b = sorted_values[above]
    diff = float(b - a)
    if gamma >= 0.5:
        return float(b) - diff * (1.0 - gamma)
    return float(a) + diff * gamma


class ScriptableNormalizer(nn.Module):
    """Raw image → float32 (C, *S), per channel 1st percentile → 0, 99.8th → 1, not clipped
    (``rdcnet.data.normalize_image`` with the channel rule of ``rdcnet.predict.channel_axis_of``)."""

    def __init__(self, ndim: int, in_channels: int, low: float = 1.0, high: float = 99.8):
        super().__init__()
        self.ndim, self.in_channels, self.low, self.high = ndim, in_channels, float(low), float(high)

    def channels_first(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() == self.ndim:
            return image[None]
        if image.dim() != self.ndim + 1:
            raise ValueError("image: expected the model's spatial axes plus an optional channel axis")
        if image.shape[0] == self.in_channels and image.shape[-1] != self.in_channels:
            return image
        return image.movedim(-1, 0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.channels_first(image).to(torch.float32).clone()
        if x.shape[0] != self.in_channels:
            raise ValueError("image: the number of channels does not match the model's")
        flat = x.reshape(x.shape[0], -1)
        has_nan = not bool(torch.isfinite(flat).all())
        for c in range(flat.shape[0]):
            ch = flat[c]
            values = ch[~torch.isnan(ch)] if has_nan else ch
            if values.numel() == 0:
                continue
            ordered = torch.sort(values)[0]
            lo = _percentile(ordered, self.low)
            hi = _percentile(ordered, self.high)
            scale = hi - lo
            if not scale > 0:
                mn, mx = float(ordered[0]), float(ordered[-1])
                scale = mx - mn if mx > mn else 1.0
            # As NumPy does it: float32(x) - float32(lo), times float32(1 / scale).
            lo32 = torch.tensor(lo, dtype=torch.float32, device=x.device)
            inv32 = torch.tensor(1.0 / scale, dtype=torch.float32, device=x.device)
            flat[c] = (ch - lo32) * inv32
        return x


# ---- the pipeline -------------------------------------------------------------------------------


class RDCNetPipeline(nn.Module):
    """``forward(image)``: one raw image, (*S) grey or with a channel axis first or last, any real
    dtype → int32 instance labels (*S) (0 background). ``outputs(image)`` gives the network's
    (embeddings (ndim, *S), probabilities (n_classes, *S)) instead, averaged over the flipped and
    rotated image when the decoding asks for test-time augmentation (:mod:`rdcnet.tta`)."""

    tta_moves: List[List[int]]

    def __init__(self, network: PortableRDCNet, decoder: ScriptableDecoder,
                 tta_moves: Optional[List[List[int]]] = None):
        super().__init__()
        self.normalize = ScriptableNormalizer(network.ndim, network.in_channels)
        self.network = network
        self.decoder = decoder
        self.tta_moves = [] if tta_moves is None else [[int(k), int(f)] for k, f in tta_moves]

    @torch.jit.export
    def outputs(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(image)
        device = self.network.down.weight.device
        if len(self.tta_moves) == 0:
            emb, prob = self.network(x[None].to(device))
            return emb[0], prob[0]
        # Test-time augmentation: the arithmetic of rdcnet.predict's (rdcnet.tta).
        x = x.to(device)
        offsets_sum = torch.zeros(0)
        prob_sum = torch.zeros(0)
        for i, move in enumerate(self.tta_moves):
            emb, prob = self.network(tta.forward(x, move[0], move[1] == 1)[None])
            offsets = emb[0] - self.network.coordinates(list(emb.shape[2:]), emb.device).to(emb.dtype)
            offsets = tta.backward_offsets(offsets, move[0], move[1] == 1)
            prob = tta.backward(prob[0], move[0], move[1] == 1)
            offsets_sum = offsets if i == 0 else offsets_sum + offsets
            prob_sum = prob if i == 0 else prob_sum + prob
        offsets = offsets_sum / len(self.tta_moves)
        coords = self.network.coordinates(list(x.shape[1:]), offsets.device).to(offsets.dtype)
        return offsets + coords, prob_sum / len(self.tta_moves)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        emb, prob = self.outputs(image)
        return self.decoder(emb, prob)


def portable_network(model, relative: bool = False) -> PortableRDCNet:
    """A :class:`PortableRDCNet` with the weights of an :class:`rdcnet.RDCNet`, in eval mode
    (``relative``: it outputs offsets instead of embeddings)."""
    net = PortableRDCNet(**model.config.to_dict(), relative=relative)
    net.load_state_dict(model.state_dict())
    return net.to(next(model.parameters()).device).eval()


def build_pipeline(model, postprocess=None) -> RDCNetPipeline:
    """The (unscripted) pipeline of a model and its decoding parameters."""
    from ..postprocess import PostprocessConfig

    if isinstance(postprocess, dict):
        postprocess = PostprocessConfig(**postprocess)
    postprocess = postprocess or PostprocessConfig()
    moves = tta.transforms(model.config.spacing, model.config.factor) if postprocess.tta else None
    return RDCNetPipeline(portable_network(model), ScriptableDecoder(model.config.spacing, postprocess), moves).eval()


def script(module):
    """``torch.jit.script`` (a module or function) without its deprecation warning: TorchScript is
    what LibTorch and DJL load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def _load(model_or_checkpoint, postprocess):
    from ..model import RDCNet
    from ..checkpoint import load_checkpoint

    if isinstance(model_or_checkpoint, RDCNet):
        return model_or_checkpoint, postprocess
    model, post, _ = load_checkpoint(model_or_checkpoint, device="cpu")
    return model, postprocess if postprocess is not None else post


def export_torchscript(model_or_checkpoint: Union[str, Path, nn.Module], path: Union[str, Path],
                       postprocess=None) -> Path:
    """Write the whole pipeline (normalisation, network, decoding) as one TorchScript file.

    Args:
        model_or_checkpoint: an :class:`rdcnet.RDCNet` or a checkpoint path (``best.pt``).
        path: the file to write (``torch.jit.load`` reads it; no rdcnet import needed).
        postprocess: decoding parameters (default: the checkpoint's, or ``PostprocessConfig()``).
    """
    from .._files import atomic_write

    model, postprocess = _load(model_or_checkpoint, postprocess)
    scripted = script(build_pipeline(model, postprocess).cpu())
    path = Path(path)
    atomic_write(path, lambda tmp: scripted.save(str(tmp)))
    return path
