"""Chunked post-processing (rdcnet.large) against the whole-array op, and its throughput on a
zarr volume on disk.

- ``large/<case>``: :func:`rdcnet_ext.ops.embeddings_to_labels` on the whole 3D case versus
  :func:`rdcnet.large.embeddings_to_labels` on the same arrays in chunks (dask threaded
  scheduler), with the peak resident memory each adds above what was resident before the call
  (``extra_info["peak_rss_mb"]``, sampled every 5 ms) and a check that the labels are equal.
- ``large-zarr``: the chunked path on a volume of embeddings stored as zarr on disk (the 3D case
  tiled ``RDCNET_BENCH_LARGE_TILES`` times along y and x and ``RDCNET_BENCH_LARGE_TILES_Z`` times
  along z with global coordinates, default 1 x 2 x 2; 4 x 4 x 4 is 256 x 2048 x 2048, 1.07 Gvoxel),
  labels written back to zarr; ``extra_info["mvoxel_per_s"]``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest

from bench_setup import prepare

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
psutil = pytest.importorskip("psutil")

from rdcnet import large  # noqa: E402
from rdcnet_ext import ops  # noqa: E402

CHUNKS = {"2d": (1024, 1024), "3d": (32, 256, 256)}
TILES = int(os.environ.get("RDCNET_BENCH_LARGE_TILES", "2"))  # along y and x
TILES_Z = int(os.environ.get("RDCNET_BENCH_LARGE_TILES_Z", "1"))  # 4 with TILES=4: 256 x 2048 x 2048


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20
        return False


def _params(case):
    return dict(min_distance=case.min_distance, spacing=case.spacing, min_votes=case.min_votes,
                smooth_radius=1, opening_radius=case.opening_radius)


@pytest.mark.parametrize("impl", ["whole", "chunked"])
def test_chunked_vs_whole(benchmark, impl):
    p = prepare("3d")
    case = p.case
    emb, mask = p.field.embeddings, p.field.mask
    params = _params(case)
    if impl == "whole":
        def run():
            return ops.embeddings_to_labels(emb, mask, **params)
    else:
        e = da.from_array(emb, chunks=(3,) + CHUNKS["3d"])
        m = da.from_array(mask, chunks=CHUNKS["3d"])

        def run():
            labels, _ = large.embeddings_to_labels(e, m, **params)
            return labels.compute()
    benchmark.group = "large/3d"
    with PeakRSS() as rss:
        out = run()
    result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    same = bool(np.array_equal(result, ops.embeddings_to_labels(emb, mask, **params))) if impl == "chunked" else True
    benchmark.extra_info.update(case=case.name, shape=list(case.shape), impl=impl, chunks=list(CHUNKS["3d"]),
                                peak_rss_mb=round(rss.mb, 1), equal_to_whole=same, objects=int(out.max()))
    assert same


def test_chunked_zarr_throughput(benchmark):
    p = prepare("3d")
    case = p.case
    emb, mask = p.field.embeddings, p.field.mask
    shape = (case.shape[0] * TILES_Z, case.shape[1] * TILES, case.shape[2] * TILES)
    work = tempfile.mkdtemp(prefix="rdcnet-bench-", dir=os.environ.get("RDCNET_BENCH_TMP"))
    try:
        z_emb = zarr.open_array(f"{work}/emb.zarr", mode="w", shape=(3,) + shape, chunks=(3,) + CHUNKS["3d"],
                                dtype=np.float32, zarr_format=3)
        z_mask = zarr.open_array(f"{work}/mask.zarr", mode="w", shape=shape, chunks=CHUNKS["3d"], dtype=bool,
                                 zarr_format=3)
        sp = np.asarray(case.spacing, np.float32).reshape(3, 1, 1, 1)
        for tz, ty, tx in itertools.product(range(TILES_Z), range(TILES), range(TILES)):
            tile = (tz, ty, tx)
            off = np.array([t * n for t, n in zip(tile, case.shape)], np.float32).reshape(3, 1, 1, 1)
            where = tuple(slice(t * n, (t + 1) * n) for t, n in zip(tile, case.shape))
            z_emb[(slice(None),) + where] = emb + off * sp  # the same objects, at their global place
            z_mask[where] = mask
        e, m = da.from_zarr(z_emb), da.from_zarr(z_mask)
        params = _params(case)

        def run():
            labels, centres = large.embeddings_to_labels(e, m, **params)
            out = zarr.open_array(f"{work}/labels.zarr", mode="w", shape=shape, chunks=CHUNKS["3d"],
                                  dtype=np.int32, zarr_format=3)
            da.store(labels, out, lock=False)
            return len(centres)

        benchmark.group = "large-zarr"
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            n = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
            seconds = time.perf_counter() - t0
        voxels = int(np.prod(shape))
        benchmark.extra_info.update(shape=list(shape), chunks=list(CHUNKS["3d"]), objects=n,
                                    mvoxel_per_s=round(voxels / seconds / 1e6, 2), peak_rss_mb=round(rss.mb, 1),
                                    disk_gb=round(sum(f.stat().st_size for f in __import__("pathlib").Path(work)
                                                      .rglob("*") if f.is_file()) / 1e9, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _one_chunk(p):
    """The 3D case's chunk at block (1, 1, 1) (contiguous copies, as a zarr read gives them)."""
    region = tuple(slice(c, 2 * c) for c in CHUNKS["3d"])
    emb = np.ascontiguousarray(p.field.embeddings[(slice(None),) + region])
    return emb, np.ascontiguousarray(p.field.mask[region]), [r.start for r in region]


def _numpy_block_votes(emb, mask, spacing, shape, origin):
    """The NumPy routing rdcnet.large used before hough_votes_block: float64 quotient, rint,
    unique, split into the block's dense votes and the bins outside it."""
    ndim = emb.shape[0]
    e = emb.reshape(ndim, -1)[:, mask.reshape(-1)].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.rint(e / np.asarray(spacing, np.float64)[:, None])
    ok = np.all(np.isfinite(q), axis=0)
    for a in range(ndim):
        ok &= (q[a] >= 0) & (q[a] <= shape[a] - 1)
    q = q[:, ok].astype(np.int64)
    bins, counts = np.unique(np.ravel_multi_index(tuple(q), shape), return_counts=True)
    local = np.stack(np.unravel_index(bins, shape)) - np.asarray(origin)[:, None]
    inside = np.all((local >= 0) & (local < np.asarray(mask.shape)[:, None]), axis=0)
    votes = np.zeros(mask.shape, np.int32)
    votes[tuple(local[:, inside])] = counts[inside]
    return votes, bins[~inside], counts[~inside]


@pytest.mark.parametrize("impl", ["rdcnet_ext", "reference", "numpy"])
def test_block_votes(benchmark, impl):
    """One chunk's votes with those leaving it (group large-ops/votes-block)."""
    import torch

    from rdcnet_ext import reference

    p = prepare("3d")
    emb, mask, origin = _one_chunk(p)
    shape, spacing = p.case.shape, p.case.spacing
    run = {
        "rdcnet_ext": lambda: tuple(ops.hough_votes_block(emb, mask, spacing, shape, origin)),
        "reference": lambda: tuple(x.numpy() for x in reference.hough_votes_block(
            torch.from_numpy(emb), torch.from_numpy(mask), list(spacing), shape, origin)),
        "numpy": lambda: _numpy_block_votes(emb, mask, spacing, shape, origin),
    }[impl]
    benchmark.group = "large-ops/votes-block"
    got = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    expected = ops.hough_votes_block(emb, mask, spacing, shape, origin)
    same = all(np.array_equal(a, b) for a, b in zip(got, expected))
    benchmark.extra_info.update(impl=impl, chunk=list(CHUNKS["3d"]), outside_bins=int(len(expected.outside_bins)),
                                equal=same)
    assert same


@pytest.mark.parametrize("impl", ["index", "origin"])
def test_chunk_assign(benchmark, impl):
    """One chunk's nearest-centre labels: over a CentreIndex of the whole image built once
    (``index``, what rdcnet.large does), or with ``origin=`` and the grid built per call."""
    p = prepare("3d")
    emb, mask, origin = _one_chunk(p)
    case = p.case
    centres = ops.find_peaks(ops.hough_votes(p.field.embeddings, p.field.mask, case.spacing), case.min_distance,
                             case.min_votes, case.spacing, 1)
    index = ops.CentreIndex(centres, case.shape, case.spacing)
    run = {"index": lambda: ops.assign_to_centres(emb, mask, index),
           "origin": lambda: ops.assign_to_centres(emb, mask, centres, case.spacing, origin=origin)}[impl]
    benchmark.group = "large-ops/assign-chunk"
    got = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(impl=impl, centres=len(centres))
    assert np.array_equal(got, ops.assign_to_centres(emb, mask, centres, case.spacing, origin=origin))
