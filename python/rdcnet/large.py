"""Chunked post-processing of images larger than memory, equal to the whole-image result.

RDCNet's embeddings are global physical coordinates and Hough votes are additive, so the four
steps of :func:`rdcnet_ext.ops.embeddings_to_labels` split over chunks without any stitching:

1. votes: a first pass bins every chunk's embeddings (:func:`rdcnet_ext.ops.hough_votes_block`)
   and keeps only the votes landing outside the chunk's interior (sparse: bin and count), routed
   to every chunk whose grown region (below) holds them;
2. peaks: each chunk bins its own pixels again over its core grown by a halo of one peak window
   plus the smoothing box, adds the votes routed to it (giving the global histogram there) and
   runs :func:`rdcnet_ext.ops.find_peaks`, keeping the peaks of the chunk proper (the halo makes
   the window and the box sums exact; row-major tie breaking is unchanged by a shift of origin);
3. one global, row-major ordered centre list, prepared once as a
   :class:`rdcnet_ext.ops.CentreIndex` of the whole image (the nearest-centre search grid and
   each cell's candidates: memory in proportion to the centres, not the pixels); each chunk is
   assigned with :func:`rdcnet_ext.ops.assign_to_centres` over that index;
4. :func:`rdcnet_ext.ops.label_opening` on each chunk grown by two ball radii (a pixel's fate
   depends on labels up to two radii away): a pass labels each chunk's border slabs, and each
   chunk's task surrounds its own labels with its neighbours' slabs; where the grown chunk meets
   the image border the op's "outside counts as the same label" rule applies, as on the whole
   image.

No task takes another chunk's result as input: each reads its own chunk (plus small routed
data), so dask never keeps a chunk in memory for a neighbour and memory is bounded by the chunks
in flight, whatever the image size.

The result is bit for bit :func:`rdcnet_ext.ops.embeddings_to_labels` of the whole array, for any
chunking. Inputs are dask arrays (or NumPy arrays, chunked here); the graph runs on dask's
current scheduler: the threaded one by default, a ``dask.distributed`` cluster when a
``Client`` is active or ``scheduler=`` names one.

Needs the ``large`` extra: ``pip install "rdcnet[large]"``.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from rdcnet_ext import ops
from rdcnet_ext._geometry import ellipsoid_offsets, peak_window

__all__ = ["vote_histogram", "find_centres", "assign_labels", "embeddings_to_labels", "network_outputs",
           "predict_large", "default_workdir", "receptive_radius", "scheduler"]


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


def _bounds(chunks: Sequence[Sequence[int]]) -> list:
    """Per axis, the chunk boundaries: 0, then the cumulative chunk sizes (int64)."""
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


def _block_of(core, chunks) -> tuple:
    """Block index of the chunk whose slices are ``core``."""
    return tuple(int(np.searchsorted(b, s.start, side="right") - 1) for b, s in zip(_bounds(chunks), core))


def _blocks(chunks: Sequence[Sequence[int]]):
    """(block index, slices) per chunk in row-major block order."""
    bounds = _bounds(chunks)
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        yield idx, tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx))


def _grown(core: Tuple[slice, ...], halo: Sequence[int], shape: Sequence[int]) -> Tuple[slice, ...]:
    return tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(core, halo, shape))


def _from_blocks(tasks: dict, chunks, dtype):
    """A dask array from one delayed task per block (block index -> delayed)."""
    _, da = _dask()
    nested = np.empty([len(c) for c in chunks], dtype=object)
    for idx, sl in _blocks(chunks):
        nested[idx] = da.from_delayed(tasks[idx], shape=tuple(s.stop - s.start for s in sl), dtype=dtype)
    return da.block(nested.tolist())


def _per_block(func, embeddings, mask, *args, **per_block):
    """One delayed ``func(emb, mask, core, *args, **{k: v[idx]})`` per block (block index -> delayed).
    Each task reads only its own chunk of the inputs, so no chunk is held for another task."""
    dask, _ = _dask()
    emb_blocks = embeddings.to_delayed().reshape(-1)
    mask_blocks = mask.to_delayed().reshape(-1)
    tasks = {}
    call = dask.delayed(_then_release_memory, pure=True)
    for (idx, core), e, m in zip(_blocks(mask.chunks), emb_blocks, mask_blocks):
        extra = {k: v.get(idx) for k, v in per_block.items()}
        tasks[idx] = call(func, e, m, core, *args, **extra)
    return tasks


def _then_release_memory(func, *args, **kwargs):
    """func(...), then, every few tasks, hands the C library's free memory back to the system.
    glibc keeps freed chunk-sized buffers in its per-thread heaps, pinned there by the small
    results that outlive them; over hundreds of chunks that grows the process far beyond what is
    in use (measured: +1.5 GB resident for 3 MB of results on a 537 Mvoxel volume, +0.15 GB with
    the release). Not after every task: the next task would fault its buffers' pages back in."""
    try:
        return func(*args, **kwargs)
    finally:
        if next(_tasks_done) % _TRIM_EVERY == 0:
            _malloc_trim()


_tasks_done = itertools.count(1)
_TRIM_EVERY = 8


@functools.lru_cache(maxsize=None)
def _libc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        return None


def _malloc_trim() -> None:
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def _compute(tasks: dict) -> dict:
    dask, _ = _dask()
    keys = list(tasks)
    return dict(zip(keys, dask.compute(*[tasks[k] for k in keys])))


# ---- step 1: the global vote histogram ---------------------------------------------------------
#
# Chunk c's peaks need the votes on c grown by the peak halo (region R_c). They are c's own votes
# landing in R_c (binned in c's task) plus the votes of other chunks d landing there. A first pass
# collects from every chunk d the votes landing outside its core shrunk by the halo (I_d): R_c
# never meets I_d for d != c, so these (bin, count) pairs hold every vote another chunk needs;
# they are routed to each chunk whose grown region holds them. No chunk's dense votes wait in
# memory for another chunk's task.


def _inner(core, halo):
    """The core shrunk by ``halo`` per axis (possibly empty)."""
    out = []
    for s, h in zip(core, halo):
        lo = min(s.start + h, s.stop)
        out.append(slice(lo, max(lo, s.stop - h)))
    return tuple(out)


def _outgoing_votes(emb, mask, core, spacing, shape, halo, chunks) -> dict:
    """The chunk's votes landing outside its core shrunk by ``halo``, routed:
    {block index: (flat indices in that block's grown region, counts)} for every other block
    whose grown region holds them."""
    box = _inner(core, halo)
    r = ops.hough_votes_block(emb, mask, spacing, shape, [b.start for b in box], [b.stop - b.start for b in box],
                              dense=False)
    own = _block_of(core, chunks)
    return _route(r.outside_bins, r.outside_counts, own, chunks, shape, halo)


def _route(bins, counts, source, chunks, shape, halo) -> dict:
    """{block index: (flat indices in the block's grown region, counts)} of the (global bin,
    count) pairs, for every block other than ``source`` whose core grown by ``halo`` (clipped to
    the image) holds the bin."""
    if bins.size == 0:
        return {}
    nblocks = [len(c) for c in chunks]
    coords = np.unravel_index(bins, shape)
    bounds = _bounds(chunks)
    # Per axis, the blocks whose grown range [start - h, stop + h) holds the coordinate: a run of
    # consecutive blocks (more than three when chunks are narrower than the halo).
    rows = np.arange(bins.size)
    dest = []
    for a, (b, h) in enumerate(zip(bounds, halo)):
        first = np.searchsorted(b[1:] + h, coords[a], side="right")
        last = np.searchsorted(b[:-1] - h, coords[a], side="right") - 1
        span = (last - first + 1)[rows]
        start = np.cumsum(span) - span
        new_rows = np.repeat(rows, span)
        offset = np.arange(new_rows.size) - np.repeat(start, span)
        dest = [d[np.repeat(np.arange(rows.size), span)] for d in dest] + [first[new_rows] + offset]
        rows = new_rows
    target = np.ravel_multi_index(dest, nblocks)
    keep = target != np.ravel_multi_index(source, nblocks)  # the source bins its own region itself
    rows, target = rows[keep], target[keep]
    if target.size == 0:  # every vote stays in the source's own region
        return {}
    order = np.argsort(target, kind="stable")
    rows, target = rows[order], target[order]
    starts = np.flatnonzero(np.r_[True, target[1:] != target[:-1]])
    ends = np.r_[starts[1:], target.size]
    routed = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        idx = tuple(int(i) for i in np.unravel_index(int(target[s]), nblocks))
        region = _grown(tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx)), halo, shape)
        sel = rows[s:e]
        local = tuple(coords[a][sel] - r.start for a, r in enumerate(region))
        routed[idx] = (np.ravel_multi_index(local, [r.stop - r.start for r in region]), counts[sel])
    return routed


def _region_votes(emb, mask, spacing, shape, region, incoming) -> np.ndarray:
    """The global vote histogram on ``region``: the chunk's own votes there plus those routed in
    (a list of (flat index, count) arrays from other chunks)."""
    votes = ops.hough_votes_block(emb, mask, spacing, shape, [r.start for r in region],
                                  [r.stop - r.start for r in region]).votes
    if incoming:
        flat, where = np.unique(np.concatenate([f for f, _ in incoming]), return_inverse=True)
        counts = np.bincount(where, weights=np.concatenate([c for _, c in incoming])).astype(np.int64)
        view = votes.reshape(-1)
        total = view[flat].astype(np.int64) + counts
        if total.max(initial=0) > np.iinfo(np.int32).max:
            raise OverflowError("hough votes: a bin received more than 2**31 - 1 votes")
        view[flat] = total
    return votes


def _routed_votes(embeddings, mask, spacing, halo) -> dict:
    """Computes now the votes each chunk's grown region receives from other chunks:
    {block index: [(flat indices, counts) from each sending chunk]}."""
    shape = tuple(mask.shape)
    routed = {}
    for parts in _compute(_per_block(_outgoing_votes, embeddings, mask, spacing, shape, halo, mask.chunks)).values():
        for dest, part in parts.items():
            routed.setdefault(dest, []).append(part)
    return routed


def _chunk_votes(emb, mask, core, spacing, shape, incoming=None) -> np.ndarray:
    return _region_votes(emb, mask, spacing, shape, core, incoming)


def vote_histogram(embeddings, mask, spacing=None, chunks=None):
    """The global Hough vote histogram (:func:`rdcnet_ext.ops.hough_votes`) as a lazy dask array
    chunked like ``mask``. Runs one pass over the embeddings now (the votes that leave each chunk,
    kept in memory: one (bin, count) pair per distinct bin), so that each chunk's task needs only
    its own pixels and what was routed to it."""
    embeddings, mask, ndim = _as_inputs(embeddings, mask, chunks)
    spacing = _spacing(spacing, ndim)
    halo = [0] * ndim
    routed = _routed_votes(embeddings, mask, spacing, halo)
    tasks = _per_block(_chunk_votes, embeddings, mask, spacing, tuple(mask.shape), incoming=routed)
    return _from_blocks(tasks, mask.chunks, np.int32)


# ---- step 2: peaks ------------------------------------------------------------------------------


def _chunk_peaks(emb, mask, core, spacing, shape, halo, min_distance, min_votes, smooth_radius,
                 incoming=None) -> np.ndarray:
    """Peaks of the global histogram inside the chunk, found on its grown region."""
    region = _grown(core, halo, shape)
    votes = _region_votes(emb, mask, spacing, shape, region, incoming)
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
    ndim = mask.ndim
    _check_peak_options(ndim, min_distance, min_votes, spacing, smooth_radius)
    shape = tuple(mask.shape)
    halo = [w + int(smooth_radius) for w in peak_window(min_distance, spacing)]
    routed = _routed_votes(embeddings, mask, spacing, halo)
    found = _compute(_per_block(_chunk_peaks, embeddings, mask, spacing, shape, halo, min_distance, int(min_votes),
                                int(smooth_radius), incoming=routed))
    found = [p for p in found.values() if len(p)]
    if not found:
        return np.zeros((0, ndim), np.int64)
    centres = np.concatenate(found)
    order = np.lexsort(centres.T[::-1])  # row-major: first axis most significant
    return np.ascontiguousarray(centres[order])


# ---- step 3: assignment, step 4: opening ---------------------------------------------------------
#
# The opening of chunk c needs the labels on c grown by two ball radii. Labels are per pixel, so
# a first pass labels every chunk and keeps only its border faces (thickness: the halo), which
# hold every label another chunk's region needs; c's task then labels its own pixels again and
# puts the faces of its neighbours around them.


def _assign_chunk(emb, mask, core, index, max_distance) -> np.ndarray:
    """Nearest-centre labels of one chunk over the image's prepared centres (global labels)."""
    return ops.assign_to_centres(emb, mask, index, max_distance=max_distance)


def _faces(emb, mask, core, index, max_distance, halo) -> dict:
    """{(axis, side): labels of the chunk's face slab of thickness halo[axis] on that side}
    (only the slabs' pixels are assigned)."""
    out = {}
    for a, h in enumerate(halo):
        if h:
            n = mask.shape[a]
            for side, part in (("low", slice(0, min(h, n))), ("high", slice(max(0, n - h), n))):
                cut = [slice(None)] * mask.ndim
                cut[a] = part
                out[a, side] = ops.assign_to_centres(np.ascontiguousarray(emb[(slice(None),) + tuple(cut)]),
                                                     np.ascontiguousarray(mask[tuple(cut)]), index,
                                                     max_distance=max_distance)
    return out


def _neighbour_faces(core, chunks, region, faces: dict) -> list:
    """[(slices in ``region``, labels)] of every other chunk's part of ``region``, cut from the
    face that chunk turns towards ``core`` (it holds that part: the region is within the halo)."""
    bounds = _bounds(chunks)
    own = _block_of(core, chunks)
    parts = []
    for idx in _overlapping(chunks, region):
        if idx == own:
            continue
        a = next(i for i in range(len(idx)) if idx[i] != own[i])  # an axis where it differs
        side = "low" if idx[a] > own[a] else "high"
        face = faces[idx][a, side]
        start = [int(b[i]) for b, i in zip(bounds, idx)]
        if side == "high":
            start[a] = int(bounds[a][idx[a] + 1]) - face.shape[a]
        src, dst = [], []
        for ax, (r, st, n) in enumerate(zip(region, start, face.shape)):
            lo, hi = max(r.start, st), min(r.stop, st + n)
            src.append(slice(lo - st, hi - st))
            dst.append(slice(lo - r.start, hi - r.start))
        parts.append((tuple(dst), face[tuple(src)]))
    return parts


def _open_chunk(emb, mask, core, index, max_distance, radius, spacing, halo, shape, chunks, faces) -> np.ndarray:
    region = _grown(core, halo, shape)
    labels = np.empty([r.stop - r.start for r in region], np.int32)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    labels[inner] = _assign_chunk(emb, mask, core, index, max_distance)
    for dst, part in _neighbour_faces(core, chunks, region, faces):
        labels[dst] = part
    return np.ascontiguousarray(ops.label_opening(labels, radius, spacing)[inner])


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
    label-wise opening (:func:`rdcnet_ext.ops.label_opening`) chunk by chunk with its halo (the
    chunks' border faces are computed during this call)."""
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
    # Named from the centres, so that dask does not pickle the whole index to hash it.
    name = "centre-index-" + dask.base.tokenize(centres, tuple(mask.shape), spacing)
    index = dask.delayed(ops.CentreIndex(centres, mask.shape, spacing), name=name, pure=True, traverse=False)
    if opening_radius is None:
        return _from_blocks(_per_block(_assign_chunk, embeddings, mask, index, max_distance), mask.chunks, np.int32)
    halo = _opening_halo(opening_radius, spacing)
    faces = _compute(_per_block(_faces, embeddings, mask, index, max_distance, halo))
    shape, chunks = tuple(mask.shape), mask.chunks
    neighbours = {}
    for idx, core in _blocks(chunks):  # each task gets the faces it reads, not all of them
        neighbours[idx] = {j: faces[j] for j in _overlapping(chunks, _grown(core, halo, shape)) if j != idx}
    tasks = _per_block(_open_chunk, embeddings, mask, index, max_distance, opening_radius, spacing, halo, shape, chunks,
                       faces=neighbours)
    return _from_blocks(tasks, chunks, np.int32)


def _overlapping(chunks, region):
    """Block indices of the chunks that overlap ``region``, row-major."""
    ranges = [range(int(np.searchsorted(b, r.start, side="right") - 1), int(np.searchsorted(b, r.stop - 1, side="right")))
              for b, r in zip(_bounds(chunks), region)]
    return itertools.product(*ranges)


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
    label ``k + 1`` belongs to ``centres[k]``. The votes, peaks and (with an opening) the chunks'
    border labels are computed during this call; each pass reads every chunk once, and no task
    keeps a chunk in memory for another (memory: the chunks in flight, plus the centres, the votes
    that leave their chunk and the border labels, which scale with objects and chunk surfaces).
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


def _predict_block(image, core, region, model, ranges, channel_axis, device, iterations, precision="fp32",
                   threshold=None):
    """Network on one grown block; returns (embeddings (ndim, *core) float32, foreground (*core) bool)."""
    import torch

    from .data.dataset import apply_normalization, to_channels_first
    from .machine import resolve_precision
    from .postprocess import foreground

    x = np.array(to_channels_first(np.asarray(image), channel_axis), dtype=np.float32, order="C", copy=True)
    apply_normalization(x, ranges)
    dev = _task_device(device)
    if next(model.parameters()).device != dev:
        model = model.to(dev)  # a GPU worker runs on its own device
    compute_dtype = resolve_precision(precision, dev)
    with torch.no_grad(), torch.autocast(dev.type, dtype=compute_dtype or torch.float32,
                                         enabled=compute_dtype is not None):
        out = model(torch.from_numpy(x)[None].to(dev), origin=tuple(r.start for r in region), iterations=iterations)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region))
    emb = out.embeddings[0][(slice(None),) + inner].float().cpu().numpy()
    mask = foreground(out.probabilities[0][(slice(None),) + inner], threshold).cpu().numpy()
    return np.ascontiguousarray(emb), np.ascontiguousarray(mask)


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


class _NetworkPlan:
    """The network pass over an image: per output chunk (row-major block index), the chunk and the
    grown region the network reads; the image as a dask array, its channel axis and normalisation."""

    def __init__(self, model, image, chunks=None, overlap=None, ranges=None):
        _, da = _dask()
        from .predict import DEFAULT_TILE, channel_axis_of

        cfg = model.config
        self.model, self.ndim = model, cfg.ndim
        self.channel_axis = channel_axis_of(image, model)  # reads only the shape
        if not isinstance(image, da.Array):
            image = da.from_array(image, chunks=image.chunks if hasattr(image, "chunks") and not isinstance(
                image, np.ndarray) else "auto")
        self.image = image
        self.spatial_axes = [i for i in range(image.ndim)
                             if self.channel_axis is None or i != self.channel_axis % image.ndim]
        self.shape = tuple(image.shape[i] for i in self.spatial_axes)
        self.chunks = da.core.normalize_chunks(DEFAULT_TILE[cfg.ndim] if chunks is None else chunks, self.shape)
        self.overlap = receptive_radius(model) if overlap is None else tuple(overlap)
        self.ranges = _sample_ranges(image, self.channel_axis) if ranges is None else ranges
        self.blocks = list(_blocks(self.chunks))

    def read(self, core):
        """(the image's block the network reads for output chunk ``core``, that block's region)."""
        # Start on the down-sampling grid so a block sees the pixel grid of the whole image.
        region = tuple(slice(max(0, (c.start - o) // f * f), min(n, c.stop + o))
                       for c, o, f, n in zip(core, self.overlap, self.model.config.factor, self.shape))
        index = [slice(None)] * self.image.ndim
        for a, r in zip(self.spatial_axes, region):
            index[a] = r
        return self.image[tuple(index)], region


def network_outputs(model, image, chunks=None, overlap=None, device=None, iterations=None, ranges=None,
                    precision: str = "auto", foreground_threshold=None):
    """Lazy ``(embeddings (ndim, *S) float32, foreground (*S) bool)`` dask arrays of ``image``
    (NumPy, zarr or dask array; grey, or with a channel axis as :func:`rdcnet.predict.prepare_image`
    accepts), computed block by block: each output chunk runs the network on the chunk grown by
    ``overlap`` pixels (default :func:`receptive_radius`), starting on the model's down-sampling
    grid, with its global origin, so that the embeddings are global coordinates. ``precision``:
    as :func:`rdcnet.predict.predict` (each worker resolves "auto" for its own device).
    ``foreground_threshold``: as :attr:`rdcnet.postprocess.PostprocessConfig.foreground_threshold`."""
    from .machine import PRECISIONS
    from ._checks import check_choice

    check_choice(precision, "precision", PRECISIONS)
    dask, da = _dask()
    plan = _NetworkPlan(model, image, chunks, overlap, ranges)
    model_task = dask.delayed(model, pure=True, traverse=False)
    emb, mask = {}, {}
    for idx, core in plan.blocks:
        block, region = plan.read(core)
        pair = dask.delayed(_predict_block, pure=True, nout=2)(
            block, core, region, model_task, plan.ranges, plan.channel_axis, device, iterations, precision,
            foreground_threshold)
        emb[idx], mask[idx] = pair[0], pair[1]
    nested_e = np.empty([len(c) for c in plan.chunks], dtype=object)
    for idx, core in plan.blocks:
        size = tuple(s.stop - s.start for s in core)
        nested_e[idx] = da.from_delayed(emb[idx], shape=(plan.ndim,) + size, dtype=np.float32)
    embeddings = da.block(nested_e.tolist())
    return embeddings, _from_blocks(mask, plan.chunks, bool)


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


# ---- resumable chunked prediction ------------------------------------------------------------------
#
# The network pass is the expensive one. Its outputs go to a work folder derived from the output
# (``<out>.rdcnet-work`` beside it, or ``workdir``): embeddings.zarr, foreground.zarr, run.json (what
# was run: model, input, chunking) and done/<block> markers, each written after its chunk's data,
# so a half-written chunk is never taken for a finished one. A rerun of the same command reuses the
# finished chunks; a rerun with another model, input or chunking is refused (or starts over with
# resume=False). The labels are written beside the output and renamed onto it at the end, so a
# killed run never leaves an output that looks finished; the work folder goes once it is.

WORK_SUFFIX = ".rdcnet-work"
_WORK_FORMAT = 1


def default_workdir(out) -> Path:
    """Where the intermediate results of a chunked prediction to ``out`` go: beside it."""
    out = Path(out)
    return out.with_name(out.name + WORK_SUFFIX)


def _model_digest(model) -> str:
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _source_identity(source, image) -> dict:
    """What identifies the input: its path and file times, or (arrays) a digest of its contents."""
    import hashlib

    if source is not None:
        path = Path(source).resolve()
        meta = [p for p in (path / "zarr.json", path / ".zattrs", path / ".zgroup", path) if p.exists()][0]
        stat = meta.stat()
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if isinstance(image, np.ndarray):
        return {"sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:32]}
    from dask.base import tokenize

    return {"token": tokenize(image)}


class _WorkDir:
    """The work folder of one chunked prediction (see the comment above)."""

    def __init__(self, path: Path, identity: dict, resume: bool):
        import json
        import shutil

        self.path, self.identity = Path(path), json.loads(json.dumps(identity))
        self.done_dir = self.path / "done"
        record = self.path / "run.json"
        if self.path.exists() and not record.is_file() and (not self.path.is_dir() or any(self.path.iterdir())):
            # Never delete or fill a folder that is not a work folder of ours (a mistyped --workdir).
            raise ValueError(f"workdir {self.path}: exists and is not the work folder of a chunked prediction; "
                             "choose an empty or new folder")
        if self.path.exists() and not resume:
            shutil.rmtree(self.path)
        if record.is_file():
            try:
                saved = json.loads(record.read_text())
            except (OSError, ValueError):
                saved = None
            if saved != self.identity:
                what = sorted(k for k in set(self.identity) | set(saved or {})
                              if (saved or {}).get(k) != self.identity.get(k))
                raise ValueError(f"workdir {self.path}: holds the network outputs of another run ({', '.join(what)} "
                                 "differ); to start over pass resume=False (--no-resume), or use another workdir")

    def open(self, shape, chunks):
        """(embeddings, foreground) zarr arrays, created on the first run, reopened on a rerun."""
        import json
        import shutil

        import zarr

        from ._files import atomic_write

        emb_shape, emb_chunks = (len(shape),) + tuple(shape), (len(shape),) + tuple(chunks)
        if (self.path / "run.json").is_file():
            try:
                z_emb = zarr.open_array(str(self.path / "embeddings.zarr"), mode="r+")
                z_mask = zarr.open_array(str(self.path / "foreground.zarr"), mode="r+")
                if z_emb.shape == emb_shape and z_mask.shape == tuple(shape):
                    return z_emb, z_mask
            except Exception:  # damaged stores: start this work folder afresh
                pass
        self.path.mkdir(parents=True, exist_ok=True)
        for name in ("done", "embeddings.zarr", "foreground.zarr", "run.json"):
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        self.done_dir.mkdir()
        z_emb = zarr.open_array(str(self.path / "embeddings.zarr"), mode="w", shape=emb_shape, chunks=emb_chunks,
                                dtype=np.float32, zarr_format=3)
        z_mask = zarr.open_array(str(self.path / "foreground.zarr"), mode="w", shape=tuple(shape),
                                 chunks=tuple(chunks), dtype=bool, zarr_format=3)
        atomic_write(self.path / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(self.identity, indent=1)))
        return z_emb, z_mask

    @staticmethod
    def marker_name(idx) -> str:
        return "_".join(map(str, idx))

    def finished(self) -> set:
        return {name.name for name in self.done_dir.iterdir()} if self.done_dir.is_dir() else set()


def _network_chunk_to_store(block, core, region, model, ranges, channel_axis, device, iterations, precision, threshold,
                            z_emb, z_mask, marker: str) -> int:
    """Run the network on one grown block, store its chunk, then mark the chunk finished."""
    emb, mask = _predict_block(block, core, region, model, ranges, channel_axis, device, iterations, precision,
                               threshold)
    z_emb[(slice(None),) + tuple(core)] = emb
    z_mask[tuple(core)] = mask
    with open(marker, "w"):  # written after the data: a marker always means a whole chunk
        pass
    return 1


def _check_large_options(model, out, chunks, overlap, device, iterations, spacing, workdir, ndim) -> dict:
    """The options of :func:`predict_large`, checked by the library's rules (as the CLI's are)."""
    from ._checks import check_int, check_path, check_per_axis, resolve_device

    if device is not None:
        resolve_device(device, "device")  # "auto" stays "auto": each worker picks its own device
    if out is not None:
        check_path(out, "out")
        if Path(out).suffix.lower() not in (".zarr", ".tif", ".tiff"):
            raise ValueError(f"out: expected a .zarr (OME-Zarr labels) or .tif path, got {out}")
    return dict(
        chunks=None if chunks is None else check_per_axis(chunks, ndim, "chunks", kind="int"),
        overlap=None if overlap is None else check_per_axis(overlap, ndim, "overlap", kind="int", minimum=0),
        device=device,
        iterations=None if iterations is None else check_int(iterations, "iterations", minimum=1),
        spacing=None if spacing is None else check_per_axis(spacing, ndim, "spacing", kind="spacing"),
        workdir=check_path(workdir, "workdir", optional=True))


def _replace_output(staged: Path, out: Path) -> None:
    """Put the finished ``staged`` output where ``out`` is (a rename: the output appears whole)."""
    import shutil

    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        out.rename(old)
        staged.rename(out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        staged.rename(out)


def predict_large(model, image, out=None, postprocess=None, chunks=None, overlap=None, device=None,
                  iterations=None, spacing=None, workdir=None, progress: bool = True, resume: bool = True,
                  keep_workdir: bool = False, precision: str = "auto"):
    """Segment an image larger than memory, chunk by chunk, into the labels whole-image
    post-processing of the same network outputs would give.

    Args:
        model: a trained :class:`rdcnet.RDCNet` (its ``config.spacing`` sets the physical units).
        image: a NumPy, zarr or dask array (grey, or colour with a channel axis), or a path to an
            OME-Zarr or TIFF (read lazily; see :func:`rdcnet.ngff.open_image`).
        out: where to write the labels: ``*.zarr`` (OME-Zarr NGFF labels, zarr v3, with the
            physical scale) or ``*.tif`` (small images); None returns the labels.
        postprocess: :class:`rdcnet.postprocess.PostprocessConfig` (default: its defaults).
        chunks: output chunk per spatial axis (default :data:`rdcnet.predict.DEFAULT_TILE`); the
            network runs on each chunk grown by ``overlap`` (default :func:`receptive_radius`).
        device: "cpu", "cuda" or "auto" (each worker picks its own GPU when it has one).
        spacing: physical pixel size written to the OME-Zarr (default: the image's, else the model's).
        workdir: folder for the intermediate embeddings and foreground (zarr stores) and the record
            of finished chunks; default :func:`default_workdir` of ``out`` (a temporary folder when
            ``out`` is None, which cannot be resumed).
        progress: show progress bars.
        resume: reuse the chunks a killed or interrupted run with the same model, input and
            chunking finished in ``workdir`` (another run's work folder is refused); False starts over.
        keep_workdir: keep the work folder after the output is written (default: removed).
        precision: the network's arithmetic, as :func:`rdcnet.predict.predict` ("auto": bfloat16
            where the hardware has it natively); resolved per worker for its device.

    The network outputs are stored once to the work folder (memory stays bounded by the chunk),
    then :func:`embeddings_to_labels` runs on them and the labels are written beside ``out`` and
    renamed onto it, so ``out`` only ever holds a whole result. An interrupted run (Ctrl-C,
    SIGTERM, kill -9) keeps its work folder: the same call resumes. Decoding settings may change
    between the runs (they do not touch the stored network outputs). Only one run may write an
    output at a time (a lock file ``<out>.lock``; one left by a killed run is taken over).
    Computations run on dask's current scheduler (the threaded one, or a ``dask.distributed.Client``
    if one is active). Returns ``(out, centres)`` when writing, else ``(labels as a NumPy int32
    array, centres)``; label ``k + 1`` is the object of ``centres[k]``.
    """
    import shutil
    import tempfile

    dask, da = _dask()
    from ._checks import check_bool, check_choice
    from ._files import OutputLock
    from .predict import as_postprocess, check_model

    from ._checks import resolve_device
    from .machine import PRECISIONS, precision_name, resolve_precision

    check_model(model)
    check_choice(precision, "precision", PRECISIONS)
    postprocess = as_postprocess(postprocess)
    progress, resume, keep_workdir = (check_bool(v, n) for v, n in ((progress, "progress"), (resume, "resume"),
                                                                    (keep_workdir, "keep_workdir")))
    opts = _check_large_options(model, out, chunks, overlap, device, iterations, spacing, workdir, model.config.ndim)
    try:
        import zarr  # noqa: F401 - the stores of the work folder
    except ImportError:  # pragma: no cover - part of the large extra
        raise ImportError("rdcnet.large needs zarr: pip install 'rdcnet[large]'") from None
    source, image_spacing = None, None
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        from .ngff import open_image

        source = image
        image, image_spacing, _ = open_image(image)
    else:
        from ._checks import check_image

        check_image(image, "image")
    if postprocess.tta:
        import warnings

        warnings.warn("postprocess.tta: the chunked path runs the network once per block, without test-time "
                      "augmentation", stacklevel=2)
    out = Path(out) if out is not None else None
    out_spacing = opts["spacing"] or image_spacing or tuple(model.config.spacing)
    plan = _NetworkPlan(model, image, opts["chunks"], opts["overlap"])
    temporary = opts["workdir"] is None and out is None
    work = Path(tempfile.mkdtemp(prefix="rdcnet-")) if temporary else Path(opts["workdir"] or default_workdir(out))
    lock_path = out.with_name(out.name + ".lock") if out is not None else work.with_name(work.name + ".lock")
    finished_output = False
    with OutputLock(lock_path, f"output {out if out is not None else work}"):
        try:
            identity = {"format": _WORK_FORMAT, "model": _model_digest(model), "input": _source_identity(source, image),
                        "shape": list(plan.shape), "channel_axis": plan.channel_axis,
                        "ranges": [None if r is None else [float(v) for v in r] for r in plan.ranges],
                        "chunks": [list(c) for c in plan.chunks], "overlap": list(plan.overlap),
                        "iterations": opts["iterations"], "foreground_threshold": postprocess.foreground_threshold,
                        "precision": precision_name(resolve_precision(precision, resolve_device(opts["device"] or "auto")))}
            state = _WorkDir(work, identity, resume and not temporary)
            z_emb, z_mask = state.open(plan.shape, [c[0] for c in plan.chunks])
            done = state.finished()
            model_task = dask.delayed(model, pure=True, traverse=False)
            tasks = []
            for idx, core in plan.blocks:
                name = state.marker_name(idx)
                if name in done:
                    continue
                block, region = plan.read(core)
                tasks.append(dask.delayed(_network_chunk_to_store, pure=False)(
                    block, core, region, model_task, plan.ranges, plan.channel_axis, opts["device"],
                    opts["iterations"], precision, postprocess.foreground_threshold, z_emb, z_mask,
                    str(state.done_dir / name)))
            if done and progress:
                print(f"resuming: {len(done)} of {len(plan.blocks)} chunks of network outputs are already in {work}",
                      file=sys.stderr)
            with _TaskBar("network", progress):
                dask.compute(*tasks)
            emb_s, mask_s = da.from_zarr(z_emb), da.from_zarr(z_mask)
            with _TaskBar("votes and peaks", progress):
                labels, centres = embeddings_to_labels(
                    emb_s, mask_s, float(postprocess.peak_window), spacing=tuple(model.config.spacing),
                    min_votes=int(postprocess.min_votes), smooth_radius=int(postprocess.smooth_radius),
                    max_distance=postprocess.max_distance, opening_radius=postprocess.opening_radius)
            with _TaskBar("labels", progress):
                if out is None:
                    result = labels.compute(), centres
                elif out.suffix.lower() in (".tif", ".tiff"):
                    from .data import write_labels

                    write_labels(out, labels.compute())  # atomic: a temporary file renamed onto out
                    result = out, centres
                else:
                    from .ngff import write_ome_zarr_labels

                    staged = out.with_name(out.name + ".partial")
                    if staged.exists():
                        shutil.rmtree(staged)  # a killed run's unfinished labels
                    write_ome_zarr_labels(staged, labels, out_spacing)
                    _replace_output(staged, out)
                    result = out, centres
            finished_output = True
            return result
        finally:
            # A finished run leaves only its output; an interrupted one keeps its work to resume
            # (unless the folder was a temporary one, which nothing could resume from).
            if temporary or (finished_output and not keep_workdir):
                shutil.rmtree(work, ignore_errors=True)
