"""Inference: image → normalised input → RDCNet (tiled for large images) → instance labels."""

from __future__ import annotations

import itertools
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._checks import check_bool, check_image, check_int, check_per_axis, resolve_device
from .machine import resolve_precision
from .model import RDCNet, RDCNetOutput, pixel_coordinates
from .postprocess import PostprocessConfig, labels_from_output

__all__ = ["prepare_image", "predict_output", "predict", "DEFAULT_TILE", "min_tile_shape", "tile_overlap",
           "check_tile_shape",
           "check_model", "as_postprocess"]

# Tiles bound memory on large images; the overlap covers the receptive field that matters.
DEFAULT_TILE = {2: (1024, 1024), 3: (64, 512, 512)}


def tile_overlap(cfg) -> tuple:
    """Per axis, the overlap (pixels) a tile needs on each side: half the coarse receptive field
    of the dilated block."""
    return tuple(f * max(cfg.dilations) * 2 for f in cfg.factor)


def min_tile_shape(cfg) -> tuple:
    """The smallest tile per axis for a model configuration: twice the overlap, so that a tile
    keeps at least half of its pixels and the work stays within 2**ndim times the untiled work."""
    return tuple(2 * o for o in tile_overlap(cfg))


def check_tile_shape(tile, cfg, name: str = "tile_shape") -> tuple:
    """``tile`` (one size per spatial axis) checked against :func:`min_tile_shape`."""
    tile = check_per_axis(tile, cfg.ndim, name, kind="int")
    smallest = min_tile_shape(cfg)
    if any(t < m for t, m in zip(tile, smallest)):
        raise ValueError(f"{name}: expected at least {','.join(map(str, smallest))} pixels per axis for this model "
                         f"(twice its receptive-field overlap), got {','.join(map(str, tile))}")
    return tile


def check_model(model, name: str = "model") -> RDCNet:
    """An :class:`rdcnet.RDCNet`, or a module standing in for one (``torch.compile`` of it, a
    wrapper) with its ``config``; a TypeError naming ``name`` otherwise."""
    from .model import RDCNetConfig

    if not (isinstance(getattr(model, "config", None), RDCNetConfig) and isinstance(model, torch.nn.Module)):
        raise TypeError(f"{name}: expected an rdcnet.RDCNet (e.g. from rdcnet.load_checkpoint), got "
                        f"{type(model).__name__}")
    return model


def as_postprocess(postprocess, name: str = "postprocess") -> PostprocessConfig:
    """None (the defaults), a dict of fields or a :class:`PostprocessConfig`, as a PostprocessConfig."""
    if postprocess is None:
        return PostprocessConfig()
    if isinstance(postprocess, dict):
        unknown = sorted(set(postprocess) - set(PostprocessConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{name}: unknown decoding setting(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(PostprocessConfig.__dataclass_fields__)}")
        try:
            return PostprocessConfig(**postprocess)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    if not isinstance(postprocess, PostprocessConfig):
        raise TypeError(f"{name}: expected a PostprocessConfig, a dict or None, got {type(postprocess).__name__}")
    return postprocess


def channel_axis_of(image: np.ndarray, model: RDCNet) -> Optional[int]:
    """Where the channels of a raw image are: None for grey, else 0 or -1 (channels last, as
    read from PNG/TIFF, unless the first axis matches the model's channels and the last does not)."""
    cfg = model.config
    if image.ndim == cfg.ndim:
        return None
    if image.ndim == cfg.ndim + 1:
        first, last = image.shape[0] == cfg.in_channels, image.shape[-1] == cfg.in_channels
        if cfg.ndim == 2 and cfg.in_channels == 1 and not (first or last):
            raise ValueError(f"image: the model is 2D with 1 channel, but shape {image.shape} is a 3D stack "
                             "(or a multi-channel image); use a 3D model for stacks")
        return 0 if first and not last else -1
    what = "a 3D model expects (Z, Y, X) stacks" if cfg.ndim == 3 else "a 2D model expects (Y, X) or colour images"
    raise ValueError(f"image: {what} ({cfg.ndim} spatial axes plus an optional channel axis), "
                     f"got a {image.ndim}D array of shape {image.shape}")


def prepare_image(image, model: RDCNet, return_nonfinite: bool = False):
    """Raw image (*S) grey, (Y, X, C) / (C, Y, X) colour in 2D, or (Z, Y, X) in 3D → float32
    (C, *S), normalised exactly as in training (:func:`rdcnet.data.normalize_image`).

    Non-finite pixels (NaN, ±Inf in any channel) are set to 0 and a warning gives their count;
    with ``return_nonfinite`` the spatial mask of them (or None) is returned as well."""
    from .data import nonfinite_pixels, normalize_image

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
    image = np.asarray(image)
    cfg = model.config
    x = normalize_image(image, channel_axis=channel_axis_of(image, model))
    if x.shape[0] != cfg.in_channels:
        raise ValueError(f"image: the model expects {cfg.in_channels} channel(s), got {x.shape[0]} "
                         f"(shape {image.shape})")
    bad = nonfinite_pixels(x)
    if bad is not None:
        warnings.warn(f"{int(bad.sum())} of {bad.size} pixels are not finite (NaN or Inf): they are "
                      "treated as background and the rest of the image is segmented as usual", stacklevel=2)
        x[:, bad] = 0.0
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (x, bad) if return_nonfinite else x


def _tiles(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int], factor: Sequence[int]):
    """Yield (read window in the image, kept window within the tile, kept window in the image)
    per tile. Tiles start at multiples of the model's down-sampling factor (so a tile sees the
    same pixel grid as the whole image), neighbours overlap by at least 2·overlap, and each
    keeps the half of the overlap nearer to its own centre."""
    per_axis = []
    for n, t, o, f in zip(shape, tile, overlap, factor):
        if t >= n:
            per_axis.append([(slice(0, n), slice(0, n), slice(0, n))])
            continue
        step = max((t - 2 * o) // f * f, f)
        last = (n - t) // f * f  # the last tile runs to the end: up to t + f - 1 long
        starts = list(range(0, last, step)) + [last]
        ends = [s + t for s in starts[:-1]] + [n]
        cuts = [0] + [(ends[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [n]
        per_axis.append([(slice(s, e), slice(cuts[i] - s, cuts[i + 1] - s), slice(cuts[i], cuts[i + 1]))
                         for i, (s, e) in enumerate(zip(starts, ends))])
    for combo in itertools.product(*per_axis):
        yield tuple(c[0] for c in combo), tuple(c[1] for c in combo), tuple(c[2] for c in combo)


@torch.no_grad()
def predict_output(model: RDCNet, x: torch.Tensor, tile_shape: Optional[Sequence[int]] = None,
                   overlap: Optional[Sequence[int]] = None, device=None,
                   iterations: Optional[int] = None, progress: bool = False, precision: str = "auto",
                   tta: bool = False) -> RDCNetOutput:
    """Model output for one normalised image ``x`` (C, *S): embeddings (ndim, *S) and
    probabilities (n_classes, *S), float32, on ``device``. Large images are processed in overlapping
    tiles (at least :func:`min_tile_shape`) whose centres are stitched; embeddings stay global
    because each tile passes its origin. ``progress`` shows a bar over the tiles. ``precision``:
    "auto" (bfloat16 where the hardware computes it natively, :func:`rdcnet.machine.resolve_precision`),
    "fp32" or "bf16"; the outputs are float32 either way. ``tta``: average the outputs of the
    flipped and rotated image (:mod:`rdcnet.tta`; 4 or 8 network runs)."""
    check_model(model)
    if not isinstance(x, torch.Tensor) or x.dim() != model.config.ndim + 1 or x.shape[0] != model.config.in_channels:
        raise ValueError(f"x: expected a normalised ({model.config.in_channels}, *{model.config.ndim} spatial axes) "
                         f"tensor (see prepare_image), got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if iterations is not None:
        iterations = check_int(iterations, "iterations", minimum=1)
    if check_bool(tta, "tta"):
        return _tta_output(model, x, lambda xt: predict_output(model, xt, tile_shape, overlap, device, iterations,
                                                               progress, precision))
    cfg = model.config
    device = resolve_device(device, "device") if device is not None else next(model.parameters()).device
    spatial = tuple(x.shape[1:])
    if tile_shape is not None:
        tile = check_tile_shape(tile_shape, cfg)
    else:
        tile = tuple(max(t, m) for t, m in zip(DEFAULT_TILE[cfg.ndim], min_tile_shape(cfg)))
    if overlap is None:
        # Half the coarse receptive field of the dilated block, in pixels, capped by the tile.
        overlap = tuple(min(t // 4, o) for t, o in zip(tile, tile_overlap(cfg)))
    compute_dtype = resolve_precision(precision, device)

    def run(tile_x, origin=None):
        with torch.autocast(device.type, dtype=compute_dtype or torch.float32, enabled=compute_dtype is not None):
            out = model(tile_x[None].to(device), origin=origin, iterations=iterations)
        return RDCNetOutput(out.embeddings[0], out.probabilities[0], out.logits[0].float())

    was_training = model.training
    model.eval()
    try:
        if all(n <= t for n, t in zip(spatial, tile)):
            return run(x)
        emb = torch.empty((cfg.ndim, *spatial), device=device)
        prob = torch.empty((cfg.n_classes, *spatial), device=device)
        logits = torch.empty((cfg.n_classes, *spatial), device=device)
        from tqdm.auto import tqdm

        tiles = list(_tiles(spatial, tile, overlap, cfg.factor))
        for read, inner, write in tqdm(tiles, desc="tiles", unit="tile", leave=False, mininterval=1.0,
                                       disable=not progress or len(tiles) < 4):
            out = run(x[(slice(None),) + read], origin=tuple(r.start for r in read))
            emb[(slice(None),) + write] = out.embeddings[(slice(None),) + inner]
            prob[(slice(None),) + write] = out.probabilities[(slice(None),) + inner]
            logits[(slice(None),) + write] = out.logits[(slice(None),) + inner]
        return RDCNetOutput(emb, prob, logits)
    finally:
        model.train(was_training)


def _tta_output(model: RDCNet, x: torch.Tensor, run) -> RDCNetOutput:
    """``run`` (one normalised image → RDCNetOutput) on every :func:`rdcnet.tta.transforms` of
    ``x``; offsets and probabilities mapped back and averaged (the arithmetic of the exported
    pipeline's ``outputs``, so both give the same numbers)."""
    from . import tta

    moves = tta.transforms(model.config.spacing, model.config.factor)
    sums = None
    for k, flip in moves:
        out = run(tta.forward(x, k, flip == 1))
        emb = out.embeddings
        offsets = emb - pixel_coordinates(emb.shape[1:], model.config.spacing, device=emb.device).to(emb.dtype)
        parts = (tta.backward_offsets(offsets, k, flip == 1), tta.backward(out.probabilities, k, flip == 1),
                 tta.backward(out.logits, k, flip == 1))
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts))
    offsets, probabilities, logits = (s / len(moves) for s in sums)
    embeddings = offsets + pixel_coordinates(x.shape[1:], model.config.spacing, device=offsets.device).to(offsets.dtype)
    return RDCNetOutput(embeddings, probabilities, logits)


def predict(model: RDCNet, image, postprocess: Union[PostprocessConfig, dict, None] = None,
            tile_shape: Optional[Sequence[int]] = None, device=None, iterations: Optional[int] = None,
            return_output: bool = False, progress: bool = False, precision: str = "auto",
            tta: Optional[bool] = None):
    """Segment one raw image into int32 instance labels (NumPy, same spatial shape).

    Args:
        model: a trained :class:`rdcnet.RDCNet` (its ``config.spacing`` gives the physical units).
        image: NumPy array or tensor; grey (*S), colour (Y, X, C) or (C, Y, X), or a 3D stack.
        postprocess: decoding parameters (:class:`rdcnet.postprocess.PostprocessConfig`); the
            checkpoint's, when loaded with :func:`rdcnet.train.load_checkpoint`.
        tile_shape: process in tiles of this size (default :data:`DEFAULT_TILE`).
        device: where the model runs (default: where its parameters are).
        iterations: stop the recurrence after this many steps (default: the configured number).
        return_output: also return the :class:`RDCNetOutput` (embeddings, probabilities).
        progress: show a progress bar over the tiles of a large image.
        precision: the network's arithmetic: "auto" (default: bfloat16 on CPUs with AVX512-BF16 or
            AMX and on CUDA GPUs of compute capability 8.0+, where it runs about twice as fast;
            float32 elsewhere), "fp32" or "bf16". Embeddings and probabilities are float32 either
            way, so the decoding is unchanged.
        tta: test-time augmentation (:mod:`rdcnet.tta`): average the outputs of the flipped and
            rotated image (None: as ``postprocess.tta`` says, which training sets only where it
            helped on the validation images).

    Non-finite input pixels (NaN, ±Inf) are labelled 0 (with a warning giving their count); they
    take no part in the normalisation, enter the network as 0 and cast no votes, so one bad patch
    does not spoil the rest of the image.

    Example::

        >>> import numpy as np, rdcnet
        >>> model = rdcnet.RDCNet(ndim=2, in_channels=1, factor=4, groups=2, channels_per_group=8)
        >>> labels = rdcnet.predict(model, np.random.rand(64, 80).astype(np.float32))
        >>> labels.shape, labels.dtype
        ((64, 80), dtype('int32'))
    """
    check_model(model)
    check_image(image, "image")
    postprocess = as_postprocess(postprocess)
    return_output, progress = check_bool(return_output, "return_output"), check_bool(progress, "progress")
    x, bad = prepare_image(image, model, return_nonfinite=True)
    tta = postprocess.tta if tta is None else check_bool(tta, "tta")
    out = predict_output(model, x, tile_shape=tile_shape, device=device, iterations=iterations, progress=progress,
                         precision=precision, tta=tta)
    if bad is not None:  # no data there: background, and no votes from it
        keep = torch.from_numpy(~bad).to(out.probabilities.device)
        probabilities = out.probabilities.clone()
        probabilities[0] = torch.where(keep, probabilities[0], torch.ones_like(probabilities[0]))
        probabilities[1:] *= keep
        out = RDCNetOutput(out.embeddings, probabilities, out.logits)
    labels = labels_from_output(out.embeddings, out.probabilities, model.config.spacing, postprocess)
    labels = labels.cpu().numpy().astype(np.int32, copy=False)
    return (labels, out) if return_output else labels
