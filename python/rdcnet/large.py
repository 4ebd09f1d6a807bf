"""Chunked post-processing of images larger than memory, equal to the whole-image result.

RDCNet's embeddings are global physical coordinates and Hough votes are additive, so the four
steps of :func:`rdcnet_ext.ops.embeddings_to_labels` split over chunks without any stitching:

1. votes: every chunk bins its own embeddings (:func:`rdcnet_ext.ops.hough_votes_block`); a
   first pass collects the votes landing in other chunks (sparse: bin and count) and routes them
   to their chunk, whose task adds them to its own votes, giving the global vote histogram;
2. peaks: :func:`rdcnet_ext.ops.find_peaks` on each chunk grown by a halo of one peak window
   plus the smoothing box, keeping the peaks of the chunk proper (the halo makes the window and
   the box sums exact; row-major tie breaking is unchanged by a shift of origin);
3. one global, row-major ordered centre list, prepared once as a
   :class:`rdcnet_ext.ops.CentreIndex` of the whole image (the nearest-centre search grid and
   each cell's candidates: memory in proportion to the centres, not the pixels); each chunk is
   assigned with :func:`rdcnet_ext.ops.assign_to_centres` over that index;
4. :func:`rdcnet_ext.ops.label_opening` on each chunk grown by two ball radii (a pixel's fate
   depends on labels up to two radii away); where the grown chunk meets the image border the
   op's "outside counts as the same label" rule applies, as on the whole image.

The result is bit for bit :func:`rdcnet_ext.ops.embeddings_to_labels` of the whole array, for any
chunking. Inputs are dask arrays (or NumPy arrays, chunked here); the graph runs on dask's
current scheduler: the threaded one by default, a ``dask.distributed`` cluster when a
``Client`` is active or ``scheduler=`` names one.

Needs the ``large`` extra: ``pip install "rdcnet[large]"``.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from rdcnet_ext import ops
from rdcnet_ext._geometry import ellipsoid_offsets, peak_window

__all__ = ["vote_histogram", "find_centres", "assign_labels", "embeddings_to_labels", "network_outputs",
           "predict_large", "receptive_radius", "scheduler"]


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:  # pragma: no cover - the extra is part of the test install
        raise ImportError("rdcnet.large needs dask: pip install 'rdcnet[large]'") from None
    return dask, da


# ---- inputs ----------------------------------------------------------------------------------


def _spacing(spacing, ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float)):
        spacing = (spacing,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing: expected {ndim} positive finite numbers, got {spacing}")
    return spacing


def _as_inputs(embeddings, mask, chunks):
    """(embeddings (ndim, *S) float32 one chunk along axis 0, mask (*S) bool), same spatial chunks."""
    _, da = _dask()
    if not hasattr(embeddings, "ndim") or embeddings.ndim not in (3, 4) or embeddings.shape[0] != embeddings.ndim - 1:
        raise ValueError("embeddings: expected an array of shape (ndim, *spatial) with 2 or 3 spatial axes, "
                         f"got shape {getattr(embeddings, 'shape', type(embeddings).__name__)}")
    ndim = embeddings.ndim - 1
    spatial = tuple(embeddings.shape[1:])
    if not hasattr(mask, "shape") or tuple(mask.shape) != spatial:
        raise ValueError(f"mask: expected the image shape {spatial}, got {getattr(mask, 'shape', type(mask).__name__)}")
    if chunks is None:
        chunks = mask.chunks if isinstance(mask, da.Array) else (
            embeddings.chunks[1:] if isinstance(embeddings, da.Array) else "auto")
    if not isinstance(mask, da.Array):
        mask = da.from_array(np.asarray(mask), chunks=chunks)
    mask = mask.rechunk(chunks)
    if mask.dtype != bool:
        mask = mask != 0
    if not isinstance(embeddings, da.Array):
        embeddings = da.from_array(np.asarray(embeddings), chunks=(ndim,) + tuple(mask.chunks))
    embeddings = embeddings.astype(np.float32).rechunk((ndim,) + tuple(mask.chunks))
    return embeddings, mask, ndim


def _blocks(chunks: Sequence[Sequence[int]]):
    """(block index, slices) per chunk in row-major block order."""
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        yield idx, tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx))


def _grown(core: Tuple[slice, ...], halo: Sequence[int], shape: Sequence[int]) -> Tuple[slice, ...]:
    return tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(core, halo, shape))


def _assemble(region_shape, dtype, offsets, *parts) -> np.ndarray:
    out = np.empty(region_shape, dtype)
    for (dst, src), part in zip(offsets, parts):
        out[dst] = part[src]
    return out


def _region(tasks: dict, chunks, region: Tuple[slice, ...], dtype):
    """A delayed array of ``region`` cut from the blocks ``tasks`` (block index -> delayed)
    (delayed only: dask.array would fuse and repeat the block tasks in every consumer)."""
    dask, _ = _dask()
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]
    ranges = []
    for b, r in zip(bounds, region):
        first = int(np.searchsorted(b, r.start, side="right") - 1)
        last = int(np.searchsorted(b, r.stop - 1, side="right") - 1)
        ranges.append(range(first, last + 1))
    offsets, parts = [], []
    for idx in itertools.product(*ranges):
        dst, src = [], []
        for a, i in enumerate(idx):
            lo, hi = max(int(bounds[a][i]), region[a].start), min(int(bounds[a][i + 1]), region[a].stop)
            dst.append(slice(lo - region[a].start, hi - region[a].start))
            src.append(slice(lo - int(bounds[a][i]), hi - int(bounds[a][i])))
        offsets.append((tuple(dst), tuple(src)))
        parts.append(tasks[idx])
    whole_block = [(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx)] == [(r.start, r.stop) for r in region]
    if len(parts) == 1 and whole_block:
        return parts[0]  # the region is exactly one block
    shape = tuple(r.stop - r.start for r in region)
    return dask.delayed(_assemble, pure=True)(shape, dtype, offsets, *parts)


def _from_blocks(tasks: dict, chunks, dtype):
    """A dask array from one delayed task per block (block index -> delayed)."""
    _, da = _dask()
    nested = np.empty([len(c) for c in chunks], dtype=object)
    for idx, sl in _blocks(chunks):
        nested[idx] = da.from_delayed(tasks[idx], shape=tuple(s.stop - s.start for s in sl), dtype=dtype)
    return da.block(nested.tolist())


# ---- step 1: the global vote histogram ---------------------------------------------------------


def _outgoing_votes(emb, mask, spacing, shape, origin):
    """(global bins, counts) of the votes of one chunk that land in other chunks
    (:func:`rdcnet_ext.ops.hough_votes_block`)."""
    r = ops.hough_votes_block(emb, mask, spacing, shape, origin)
    return r.outside_bins, r.outside_counts


def _route(outgoing, chunks, shape) -> dict:
    """{block index: (flat indices within the chunk, counts)} of the votes every chunk sends to
    another: the global bins each chunk returned, unravelled and grouped by destination chunk."""
    bins = np.concatenate([o[0] for o in outgoing]) if outgoing else np.zeros(0, np.int64)
    counts = np.concatenate([o[1] for o in outgoing]) if outgoing else np.zeros(0, np.int64)
    if bins.size == 0:
        return {}
    coords = np.unravel_index(bins, shape)
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]
    block = [np.searchsorted(b, c, side="right") - 1 for b, c in zip(bounds, coords)]
    dest = np.ravel_multi_index(block, [len(c) for c in chunks])
    order = np.argsort(dest, kind="stable")
    dest = dest[order]
    starts = np.flatnonzero(np.r_[True, dest[1:] != dest[:-1]])
    ends = np.r_[starts[1:], dest.size]
    routed = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        idx = np.unravel_index(int(dest[s]), [len(c) for c in chunks])
        sel = order[s:e]
        local = tuple(c[sel] - bounds[a][i] for a, (c, i) in enumerate(zip(coords, idx)))
        size = [int(chunks[a][i]) for a, i in enumerate(idx)]
        flat, where = np.unique(np.ravel_multi_index(local, size), return_inverse=True)
        routed[tuple(int(i) for i in idx)] = (flat, np.bincount(where, weights=counts[sel]).astype(np.int64))
    return routed


def _chunk_votes(emb, mask, spacing, shape, origin, incoming) -> np.ndarray:
    """The global histogram on one chunk: its own votes landing in it plus those routed to it."""
    votes = ops.hough_votes_block(emb, mask, spacing, shape, origin).votes
    if incoming is not None:
        flat, counts = incoming  # distinct indices
        view = votes.reshape(-1)
        total = view[flat].astype(np.int64) + counts
        if total.max(initial=0) > np.iinfo(np.int32).max:
            raise OverflowError("hough votes: a bin received more than 2**31 - 1 votes")
        view[flat] = total
    return votes


def _vote_tasks(embeddings, mask, spacing) -> dict:
    """Delayed vote histogram chunks (block index -> delayed int32 array). Computes now, in one
    pass over the chunks, the votes that leave each chunk, and routes them to their chunks; each
    chunk's task then bins its own pixels again and adds what it was sent (the dense votes of
    every chunk are never all in memory at once)."""
    dask, _ = _dask()
    shape = tuple(mask.shape)
    emb_blocks = embeddings.to_delayed().reshape(-1)
    mask_blocks = mask.to_delayed().reshape(-1)
    cores = [core for _, core in _blocks(mask.chunks)]
    outgoing = dask.compute(*[dask.delayed(_outgoing_votes, pure=True)(e, m, spacing, shape, [sl.start for sl in core])
                              for core, e, m in zip(cores, emb_blocks, mask_blocks)])
    routed = _route(list(outgoing), mask.chunks, shape)
    tasks = {}
    for (idx, core), e, m in zip(_blocks(mask.chunks), emb_blocks, mask_blocks):
        tasks[idx] = dask.delayed(_chunk_votes, pure=True)(e, m, spacing, shape, [sl.start for sl in core],
                                                          routed.get(idx))
    return tasks


def vote_histogram(embeddings, mask, spacing=None, chunks=None):
    """The global Hough vote histogram (:func:`rdcnet_ext.ops.hough_votes`) as a lazy dask array
    chunked like ``mask``. Runs one pass over the embeddings now (the votes that leave each chunk,
    kept in memory: one (bin, count) pair per distinct bin), so that each chunk's task needs only
    its own pixels and what was routed to it."""
    embeddings, mask, ndim = _as_inputs(embeddings, mask, chunks)
    return _from_blocks(_vote_tasks(embeddings, mask, _spacing(spacing, ndim)), mask.chunks, np.int32)


# ---- step 2: peaks ------------------------------------------------------------------------------


def _chunk_peaks(votes, core, region, min_distance, min_votes, spacing, smooth_radius) -> np.ndarray:
    peaks = ops.find_peaks(votes, min_distance, min_votes, spacing, smooth_radius)
    peaks = peaks + np.asarray([r.start for r in region], np.int64)
    keep = np.ones(len(peaks), bool)
    for a, s in enumerate(core):
        keep &= (peaks[:, a] >= s.start) & (peaks[:, a] < s.stop)
    return peaks[keep]


def find_centres(embeddings, mask, min_distance: float, spacing=None, min_votes: int = 1,
                 smooth_radius: int = 0, chunks=None) -> np.ndarray:
    """The centres :func:`rdcnet_ext.ops.find_peaks` finds on the global vote histogram, int64
    ``(K, ndim)`` in row-major order, computed chunk by chunk (computes now)."""
    embeddings, mask, ndim = _as_inputs(embeddings, mask, chunks)
    spacing = _spacing(spacing, ndim)
    return _find_centres(embeddings, mask, min_distance, spacing, min_votes, smooth_radius)


def _check_peak_options(ndim, min_distance, min_votes, spacing, smooth_radius) -> None:
    """Validates the scalars the way the op does, before any work."""
    ops.find_peaks(np.zeros((1,) * ndim, np.int32), min_distance, min_votes, spacing, smooth_radius)


def _find_centres(embeddings, mask, min_distance, spacing, min_votes, smooth_radius) -> np.ndarray:
    dask, _ = _dask()
    ndim = mask.ndim
    _check_peak_options(ndim, min_distance, min_votes, spacing, smooth_radius)
    votes = _vote_tasks(embeddings, mask, spacing)
    window = peak_window(min_distance, spacing)
    halo = [w + int(smooth_radius) for w in window]
    shape = tuple(mask.shape)
    tasks = []
    for _, core in _blocks(mask.chunks):
        region = _grown(core, halo, shape)
        tasks.append(dask.delayed(_chunk_peaks, pure=True)(_region(votes, mask.chunks, region, np.int32), core,
                                                           region, min_distance, int(min_votes), spacing,
                                                           int(smooth_radius)))
    found = [p for p in dask.compute(*tasks) if len(p)]
    if not found:
        return np.zeros((0, ndim), np.int64)
    centres = np.concatenate(found)
    order = np.lexsort(centres.T[::-1])  # row-major: first axis most significant
    return np.ascontiguousarray(centres[order])


# ---- step 3: assignment -----------------------------------------------------------------------

def _assign_chunk(emb, mask, index, max_distance) -> np.ndarray:
    """Nearest-centre labels of one chunk over the image's prepared centres (global labels)."""
    return ops.assign_to_centres(emb, mask, index, max_distance=max_distance)


def _open_chunk(labels, core, region, radius, spacing) -> np.ndarray:
    opened = ops.label_opening(labels, radius, spacing)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    return np.ascontiguousarray(opened[inner])


def _opening_halo(radius: float, spacing) -> list:
    """Pixels a chunk must be grown by for the opening: two ball extents (erosion, then dilation)."""
    offsets = ellipsoid_offsets(radius, spacing)
    extent = offsets.abs().amax(dim=0).tolist() if len(offsets) else [0] * len(spacing)
    bound = [int(math.floor(radius / s)) for s in spacing]
    return [2 * max(int(e), b) for e, b in zip(extent, bound)]


def assign_labels(embeddings, mask, centres, spacing=None, max_distance: Optional[float] = None,
                  opening_radius: Optional[float] = None, chunks=None):
    """Labels (lazy int32 dask array chunked like ``mask``): the nearest of ``centres`` per masked
    pixel (:func:`rdcnet_ext.ops.assign_to_centres`), then, if ``opening_radius``, the
    label-wise opening (:func:`rdcnet_ext.ops.label_opening`) chunk by chunk with its halo."""
    embeddings, mask, ndim = _as_inputs(embeddings, mask, chunks)
    return _assign_labels(embeddings, mask, centres, _spacing(spacing, ndim), max_distance, opening_radius)


def _check_assign_options(max_distance, opening_radius):
    if max_distance is not None:
        max_distance = float(max_distance)
        if not max_distance >= 0:
            raise ValueError(f"max_distance: expected a number >= 0 or None, got {max_distance}")
    if opening_radius is not None:
        opening_radius = float(opening_radius)
        if not (math.isfinite(opening_radius) and opening_radius > 0):
            raise ValueError(f"opening_radius: expected a finite number > 0 or None, got {opening_radius}")
    return max_distance, opening_radius


def _assign_labels(embeddings, mask, centres, spacing, max_distance, opening_radius):
    dask, _ = _dask()
    ndim = mask.ndim
    centres = np.asarray(centres, np.int64).reshape(-1, ndim)
    max_distance, opening_radius = _check_assign_options(max_distance, opening_radius)
    # The centre grid and candidate lists are built once for the whole image and shared by all
    # chunks (their size grows with the number of centres, not of pixels).
    index = dask.delayed(ops.CentreIndex(centres, mask.shape, spacing), pure=True, traverse=False)
    emb_blocks = embeddings.to_delayed().reshape(-1)
    mask_blocks = mask.to_delayed().reshape(-1)
    tasks = {}
    for (idx, core), e, m in zip(_blocks(mask.chunks), emb_blocks, mask_blocks):
        tasks[idx] = dask.delayed(_assign_chunk, pure=True)(e, m, index, max_distance)
    if opening_radius is None:
        return _from_blocks(tasks, mask.chunks, np.int32)
    halo = _opening_halo(opening_radius, spacing)
    shape = tuple(mask.shape)
    opened = {}
    for idx, core in _blocks(mask.chunks):
        region = _grown(core, halo, shape)
        opened[idx] = dask.delayed(_open_chunk, pure=True)(_region(tasks, mask.chunks, region, np.int32), core,
                                                           region, opening_radius, spacing)
    return _from_blocks(opened, mask.chunks, np.int32)


def embeddings_to_labels(embeddings, mask, min_distance: float, spacing=None, min_votes: int = 1,
                         smooth_radius: int = 0, max_distance: Optional[float] = None,
                         opening_radius: Optional[float] = None, chunks=None):
    """Chunked :func:`rdcnet_ext.ops.embeddings_to_labels`, equal to it bit for bit.

    Args:
        embeddings: ``(ndim, *S)`` physical embeddings, a dask array (any chunking) or NumPy array.
        mask: ``(*S)`` foreground (bool or nonzero), dask or NumPy.
        chunks: spatial chunking to work in (default: the mask's, or dask's "auto").
        the rest: as in :func:`rdcnet_ext.ops.embeddings_to_labels`.

    Returns ``(labels, centres)``: labels as a lazy int32 dask array (store it with
    ``labels.to_zarr(...)`` or :func:`compute` it), and the centres (int64 ``(K, ndim)``);
    label ``k + 1`` belongs to ``centres[k]``. The votes and peaks are computed during this call.
    """
    embeddings, mask, ndim = _as_inputs(embeddings, mask, chunks)
    spacing = _spacing(spacing, ndim)
    _check_peak_options(ndim, min_distance, min_votes, spacing, smooth_radius)
    _check_assign_options(max_distance, opening_radius)
    centres = _find_centres(embeddings, mask, min_distance, spacing, min_votes, smooth_radius)
    labels = _assign_labels(embeddings, mask, centres, spacing, max_distance, opening_radius)
    return labels, centres


# ---- chunked prediction -------------------------------------------------------------------------


def receptive_radius(model) -> Tuple[int, ...]:
    """Per axis, a bound in pixels on how far the network looks: the dilated recurrent block sees
    ``iterations * max(dilations)`` coarse pixels, the down- and up-sampling convolutions two more
    coarse pixels; blocks grown by this much give the whole-image output in their core."""
    cfg = model.config
    coarse = cfg.iterations * max(cfg.dilations) + 3
    return tuple(int(f) * coarse for f in cfg.factor)


def _task_device(device):
    """The device of this task's worker (with "auto", each GPU worker's own)."""
    from ._checks import resolve_device

    return resolve_device("auto" if device is None else device)


def _predict_block(image, core, region, model, ranges, channel_axis, device, iterations):
    """Network on one grown block; returns (embeddings (ndim, *core) float32, foreground (*core) bool)."""
    import torch

    from .data.dataset import apply_normalization, to_channels_first
    from .postprocess import foreground

    x = np.array(to_channels_first(np.asarray(image), channel_axis), dtype=np.float32, order="C", copy=True)
    apply_normalization(x, ranges)
    dev = _task_device(device)
    if next(model.parameters()).device != dev:
        model = model.to(dev)  # a GPU worker runs on its own device
    with torch.no_grad():
        out = model(torch.from_numpy(x)[None].to(dev), origin=tuple(r.start for r in region), iterations=iterations)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    emb = out.embeddings[0][(slice(None),) + inner].float().cpu().numpy()
    mask = foreground(out.probabilities[0][(slice(None),) + inner]).cpu().numpy()
    return np.ascontiguousarray(emb), np.ascontiguousarray(mask)


def _pick(pair, i):
    return pair[i]


def _sample_ranges(image, channel_axis, max_samples: int = 1 << 24):
    """Normalisation ranges of the whole image (:func:`rdcnet.data.normalize_image`), computed
    on a regular subsample of at most ``max_samples`` pixels per channel (exact when smaller)."""
    from .data.dataset import normalization_ranges, to_channels_first

    spatial = [n for i, n in enumerate(image.shape) if channel_axis is None or i != channel_axis % image.ndim]
    step = max(1, math.ceil((np.prod(spatial, dtype=np.float64) / max_samples) ** (1 / len(spatial))))
    index = tuple(slice(None) if channel_axis is not None and i == channel_axis % image.ndim else slice(None, None, step)
                  for i in range(image.ndim))
    sample = np.asarray(image[index])
    x = np.array(to_channels_first(sample, channel_axis), dtype=np.float32)
    return normalization_ranges(x)


def network_outputs(model, image, chunks=None, overlap=None, device=None, iterations=None, ranges=None):
    """Lazy ``(embeddings (ndim, *S) float32, foreground (*S) bool)`` dask arrays of ``image``
    (NumPy, zarr or dask array; grey, or with a channel axis as :func:`rdcnet.predict.prepare_image`
    accepts), computed block by block: each output chunk runs the network on the chunk grown by
    ``overlap`` pixels (default :func:`receptive_radius`), starting on the model's down-sampling
    grid, with its global origin, so that the embeddings are global coordinates."""
    dask, da = _dask()
    from .predict import DEFAULT_TILE, channel_axis_of

    cfg = model.config
    channel_axis = channel_axis_of(image, model)  # reads only the shape
    if not isinstance(image, da.Array):
        image = da.from_array(image, chunks=image.chunks if hasattr(image, "chunks") and not isinstance(
            image, np.ndarray) else "auto")
    spatial_axes = [i for i in range(image.ndim) if channel_axis is None or i != channel_axis % image.ndim]
    shape = tuple(image.shape[i] for i in spatial_axes)
    if chunks is None:
        chunks = DEFAULT_TILE[cfg.ndim]
    chunks = da.core.normalize_chunks(chunks, shape)
    overlap = receptive_radius(model) if overlap is None else tuple(overlap)
    if ranges is None:
        ranges = _sample_ranges(image, channel_axis)
    model_task = dask.delayed(model, pure=True, traverse=False)
    emb, mask = {}, {}
    for idx, core in _blocks(chunks):
        # Start on the down-sampling grid so a block sees the pixel grid of the whole image.
        region = tuple(slice(max(0, (c.start - o) // f * f), min(n, c.stop + o))
                       for c, o, f, n in zip(core, overlap, cfg.factor, shape))
        read = [slice(None)] * image.ndim
        for a, r in zip(spatial_axes, region):
            read[a] = r
        pair = dask.delayed(_predict_block, pure=True, nout=2)(
            image[tuple(read)], core, region, model_task, ranges, channel_axis, device, iterations)
        emb[idx], mask[idx] = pair[0], pair[1]
    nested_e = np.empty([len(c) for c in chunks], dtype=object)
    for idx, core in _blocks(chunks):
        size = tuple(s.stop - s.start for s in core)
        nested_e[idx] = da.from_delayed(emb[idx], shape=(cfg.ndim,) + size, dtype=np.float32)
    embeddings = da.block(nested_e.tolist())
    return embeddings, _from_blocks(mask, chunks, bool)


def scheduler(spec: Optional[str] = None):
    """Context in which dask computations run on ``spec``: None keeps the current one (threads,
    or an active ``dask.distributed.Client``); "threads", "sync" or "processes" pick a local one;
    an address such as ``tcp://host:8786`` connects a ``dask.distributed.Client`` to a cluster."""
    import contextlib

    import dask

    if spec is None:
        return contextlib.nullcontext()
    if "://" in spec:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - part of the large extra
            raise ImportError("a cluster address needs dask.distributed: pip install 'rdcnet[large]'") from None
        return Client(spec)
    if spec not in ("threads", "sync", "processes", "synchronous", "single-threaded"):
        raise ValueError(f"scheduler: expected threads, sync, processes or a tcp:// address, got {spec!r}")
    return dask.config.set(scheduler=spec)


def _distributed_active() -> bool:
    import dask

    return dask.config.get("scheduler", None) == "dask.distributed"


class _TaskBar:
    """A tqdm bar over the tasks of a dask computation (local schedulers; dask's callbacks)."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled = desc, enabled

    def __enter__(self):
        self.enabled = self.enabled and not _distributed_active()  # callbacks run only locally
        if not self.enabled:
            return self
        from dask.callbacks import Callback
        from tqdm.auto import tqdm

        bar = tqdm(desc=self.desc, unit="task", mininterval=1.0)

        def start_state(dsk, state):
            bar.total = sum(len(state[k]) for k in ("ready", "waiting", "running")) + len(state.get("finished", ()))
            bar.refresh()

        self._bar = bar
        self._cb = Callback(start_state=start_state, posttask=lambda *a: bar.update(1))
        self._cb.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._cb.__exit__(*exc)
            self._bar.close()
        return False


def predict_large(model, image, out=None, postprocess=None, chunks=None, overlap=None, device=None,
                  iterations=None, spacing=None, workdir=None, progress: bool = True):
    """Segment an image larger than memory, chunk by chunk, into the labels whole-image
    post-processing of the same network outputs would give.

    Args:
        model: a trained :class:`rdcnet.RDCNet` (its ``config.spacing`` sets the physical units).
        image: a NumPy, zarr or dask array (grey, or colour with a channel axis), or a path to an
            OME-Zarr or TIFF (read lazily; see :func:`rdcnet.ngff.open_image`).
        out: where to write the labels: ``*.zarr`` (OME-Zarr NGFF labels, zarr v3, with the
            physical scale) or ``*.tif`` (small images); None returns a lazy dask array.
        postprocess: :class:`rdcnet.postprocess.PostprocessConfig` (default: its defaults).
        chunks: output chunk per spatial axis (default :data:`rdcnet.predict.DEFAULT_TILE`); the
            network runs on each chunk grown by ``overlap`` (default :func:`receptive_radius`).
        device: "cpu", "cuda" or "auto" (each worker picks its own GPU when it has one).
        spacing: physical pixel size written to the OME-Zarr (default: the image's, else the model's).
        workdir: folder for the intermediate embeddings and foreground (a zarr store; default: a
            temporary folder beside ``out``, removed at the end).
        progress: show progress bars.

    The network outputs are stored once to ``workdir`` (memory stays bounded by the chunk), then
    :func:`embeddings_to_labels` runs on them. Computations run on dask's current scheduler (the
    threaded one, or a ``dask.distributed.Client`` if one is active). Returns ``(out, centres)``
    when writing, else ``(labels as a NumPy int32 array, centres)``; label ``k + 1`` is the
    object of ``centres[k]``.
    """
    import shutil
    import tempfile

    import dask.array as da
    import zarr

    from .postprocess import PostprocessConfig

    if isinstance(postprocess, dict):
        postprocess = PostprocessConfig(**postprocess)
    postprocess = postprocess or PostprocessConfig()
    image_spacing = None
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        from .ngff import open_image

        image, image_spacing, _ = open_image(image)
    out_spacing = tuple(spacing) if spacing is not None else (image_spacing or tuple(model.config.spacing))
    embeddings, mask = network_outputs(model, image, chunks=chunks, overlap=overlap, device=device,
                                       iterations=iterations)
    from pathlib import Path

    base = Path(out).parent if out is not None else None
    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="rdcnet-", dir=base))
    try:
        z_emb = zarr.open_array(str(tmp / "embeddings.zarr"), mode="w", shape=embeddings.shape,
                                chunks=embeddings.chunksize, dtype=np.float32, zarr_format=3)
        z_mask = zarr.open_array(str(tmp / "foreground.zarr"), mode="w", shape=mask.shape,
                                 chunks=mask.chunksize, dtype=bool, zarr_format=3)
        with _TaskBar("network", progress):
            da.store([embeddings, mask], [z_emb, z_mask], lock=False)
        emb_s, mask_s = da.from_zarr(z_emb), da.from_zarr(z_mask)
        with _TaskBar("votes and peaks", progress):
            labels, centres = embeddings_to_labels(
                emb_s, mask_s, float(postprocess.peak_window), spacing=tuple(model.config.spacing),
                min_votes=int(postprocess.min_votes), smooth_radius=int(postprocess.smooth_radius),
                max_distance=postprocess.max_distance, opening_radius=postprocess.opening_radius)
        with _TaskBar("labels", progress):
            if out is None:
                return labels.compute(), centres
            out = Path(out)
            if out.suffix.lower() in (".tif", ".tiff"):
                from .data import write_labels

                write_labels(out, labels.compute())
            else:
                from .ngff import write_ome_zarr_labels

                write_ome_zarr_labels(out, labels, out_spacing)
        return out, centres
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
