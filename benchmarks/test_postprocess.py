"""Post-processing benchmarks: rdcnet_ext against its pure-PyTorch reference and scipy/skimage.

For every case (see conftest.CASES) and every op (votes, peaks, assign, opening) and the whole
pipeline, one pytest-benchmark group ``<case>/<op>`` holds, timed in the same process:

- ``rdcnet_ext``: :mod:`rdcnet_ext.ops` on torch tensors (CPU: all torch threads; CUDA);
- ``reference``: :mod:`rdcnet_ext.reference` (CPU: one call, it is slow; CUDA);
- the best scipy / scikit-image / NumPy equivalent (see benchmarks/alternatives.py), CPU;
- for the pipeline, the ``floor``: one streaming pass over the pipeline's inputs.

Each op is fed rdcnet_ext's own result of the previous step, so every implementation of an op sees
the same input. The CPU reference of ``assign`` (a dense pixel x centre distance matrix) and hence
of the pipeline takes minutes at full size, so on the CPU it runs on a crop of the case (groups
``<case>-crop/...``, beside rdcnet_ext on the same crop); ``RDCNET_BENCH_FULL_REFERENCE=1`` also
runs it at full size. CUDA variants run when ``torch.cuda.is_available() and
rdcnet_ext.has_cuda`` and are skipped otherwise; their timed functions end with
``torch.cuda.synchronize()``.

``extra_info`` of each benchmark records the case, op, implementation, device, the instance
count, the centres found and how closely the result matches rdcnet_ext's.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch

import alternatives as alt
from bench_setup import BUDGET_S, CASES, CUDA_OK, CUDA_SKIP_REASON, SLOW_LIMIT_S
from rdcnet_ext import ops, reference

CASE_NAMES = list(CASES)
FULL_REFERENCE = os.environ.get("RDCNET_BENCH_FULL_REFERENCE", "") not in ("", "0")

_cuda_marks = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)]
_full_reference_skip = pytest.mark.skipif(
    not FULL_REFERENCE,
    reason=(
        "pure-PyTorch reference of assign (hence of the pipeline) on the CPU at full size takes minutes (a dense "
        "pixels x centres distance matrix); it is timed on the case's crop instead "
        "(group <case>-crop); set RDCNET_BENCH_FULL_REFERENCE=1 to run it"
    ),
)


def _param(impl: str, device: str, region: str = "full", *, slow_reference: bool = False):
    marks = list(_cuda_marks) if device == "cuda" else []
    if slow_reference and impl == "reference" and device == "cpu" and region == "full":
        marks.append(_full_reference_skip)
    return pytest.param(impl, device, region, marks=marks, id=f"{impl}-{device}" + ("-crop" if region == "crop" else ""))


# rdcnet_ext and the reference on each device.
IMPLS = [_param(i, d) for d in ("cpu", "cuda") for i in ("rdcnet_ext", "reference")]
# Ops whose CPU reference is too slow at full size: time it on the crop, beside rdcnet_ext.
IMPLS_CROPPED = [
    _param("rdcnet_ext", "cpu"),
    _param("reference", "cpu", slow_reference=True),  # skipped unless RDCNET_BENCH_FULL_REFERENCE=1
    _param("rdcnet_ext", "cpu", "crop"),
    _param("reference", "cpu", "crop"),
    _param("rdcnet_ext", "cuda"),
    _param("reference", "cuda"),
]

ALTERNATIVE = "scipy/skimage"  # the `impl` of every non-torch alternative


# ------------------------------------------------------------------------------------- helpers
def measure(benchmark, fn, *, once: bool = False):
    """Time ``fn`` and return its result. ``once``: a single call, no warm-up (the slow CPU
    references). Otherwise one warm-up call, then about ``BUDGET_S`` seconds of rounds
    (3 to 50; fewer, down to 1, for functions slower than a second)."""
    if once:
        return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    t0 = time.perf_counter()
    fn()
    seconds = max(time.perf_counter() - t0, 1e-9)
    rounds = int(min(50, max(3 if seconds < 1.0 else 1, math.ceil(BUDGET_S / seconds))))
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def synced(device: str, fn):
    """``fn`` followed by ``torch.cuda.synchronize()`` on CUDA, so the time covers the kernels."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def setup(benchmark, prepared, case: str, op: str, impl: str, device: str, region: str = "full", variant: str = ""):
    """Generate/fetch the case, set the group and the common extra_info; return (prepared, inputs)."""
    p = prepared(case)
    info = p.info(region)
    benchmark.group = f"{info['case']}/{op}"
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(op=op, impl=impl, device=device, variant=variant)
    return p, p.inputs(device, region)


def as_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def compare_labels(benchmark, out, expected: torch.Tensor, extra: dict | None = None) -> None:
    out, expected = as_numpy(out), expected.numpy()
    benchmark.extra_info["matches_rdcnet_ext"] = float((out == expected).mean())
    benchmark.extra_info["instances_found"] = int(len(np.unique(out[out != 0])))
    benchmark.extra_info.update(extra or {})


def is_once(impl: str, device: str) -> bool:
    return impl == "reference" and device == "cpu"


# --------------------------------------------------------------------------------------- votes
@pytest.mark.parametrize("impl,device,region", IMPLS)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_votes(benchmark, prepared, case, impl, device, region):
    p, x = setup(benchmark, prepared, case, "votes", impl, device, region)
    fn = ops.hough_votes if impl == "rdcnet_ext" else reference.hough_votes
    sp = p.case.spacing
    out = measure(benchmark, synced(device, lambda: fn(x.embeddings, x.mask, sp)), once=is_once(impl, device))
    benchmark.extra_info["matches_rdcnet_ext"] = float((as_numpy(out) == p.full.votes.numpy()).mean())
    benchmark.extra_info["total_votes"] = int(out.sum())


@pytest.mark.parametrize("case", CASE_NAMES)
def test_votes_numpy(benchmark, prepared, case):
    p, x = setup(benchmark, prepared, case, "votes", ALTERNATIVE, "cpu", variant="np.bincount of np.rint bins")
    emb, mask, sp = x.numpy("embeddings"), x.numpy("mask"), p.case.spacing
    out = measure(benchmark, lambda: alt.votes_numpy(emb, mask, sp))
    benchmark.extra_info["matches_rdcnet_ext"] = float((out == p.full.votes.numpy()).mean())
    benchmark.extra_info["total_votes"] = int(out.sum())


# --------------------------------------------------------------------------------------- peaks
def _record_peaks(benchmark, p, centres) -> None:
    found = {tuple(c) for c in as_numpy(centres).tolist()}
    expected = {tuple(c) for c in p.full.centres.numpy().tolist()}
    benchmark.extra_info["centres_found"] = len(found)
    benchmark.extra_info["centres_not_in_rdcnet_ext"] = len(found - expected)
    benchmark.extra_info["rdcnet_ext_centres_missed"] = len(expected - found)


@pytest.mark.parametrize("impl,device,region", IMPLS)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_peaks(benchmark, prepared, case, impl, device, region):
    p, x = setup(benchmark, prepared, case, "peaks", impl, device, region)
    fn = ops.find_peaks if impl == "rdcnet_ext" else reference.find_peaks
    c = p.case
    out = measure(
        benchmark,
        synced(device, lambda: fn(x.votes, c.min_distance, c.min_votes, c.spacing)),
        once=is_once(impl, device),
    )
    _record_peaks(benchmark, p, out)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_peaks_skimage(benchmark, prepared, case):
    """skimage.feature.peak_local_max(votes, min_distance=r, threshold_abs=min_votes - 1,
    exclude_border=False); a rectangular footprint of the op's window when anisotropic. Plateau
    handling and output order differ from the op (see alternatives.peaks_skimage): a speed
    comparison; extra_info counts the centres that differ."""
    p, x = setup(
        benchmark, prepared, case, "peaks", ALTERNATIVE, "cpu", variant="skimage.feature.peak_local_max"
    )
    votes, c = x.numpy("votes"), p.case
    out = measure(benchmark, lambda: alt.peaks_skimage(votes, c.min_distance, c.min_votes, c.spacing))
    _record_peaks(benchmark, p, out)


# -------------------------------------------------------------------------------------- assign
@pytest.mark.parametrize("impl,device,region", IMPLS_CROPPED)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_assign(benchmark, prepared, case, impl, device, region):
    p, x = setup(benchmark, prepared, case, "assign", impl, device, region)
    fn = ops.assign_to_centres if impl == "rdcnet_ext" else reference.assign_to_centres
    sp = p.case.spacing
    out = measure(
        benchmark, synced(device, lambda: fn(x.embeddings, x.mask, x.centres, sp)), once=is_once(impl, device)
    )
    compare_labels(benchmark, out, p.inputs("cpu", region).labels)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_assign_kdtree(benchmark, prepared, case):
    """scipy.spatial.cKDTree(centres * spacing).query(embeddings of masked pixels, workers=-1),
    including gathering the masked embeddings and scattering the labels into an image."""
    p, x = setup(
        benchmark, prepared, case, "assign", ALTERNATIVE, "cpu", variant="scipy.spatial.cKDTree.query(workers=-1)"
    )
    emb, mask, centres, sp = x.numpy("embeddings"), x.numpy("mask"), x.numpy("centres"), p.case.spacing
    out = measure(benchmark, lambda: alt.assign_kdtree(emb, mask, centres, sp))
    compare_labels(benchmark, out, p.full.labels)


# ------------------------------------------------------------------------------------- opening
@pytest.mark.parametrize("impl,device,region", IMPLS)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_opening(benchmark, prepared, case, impl, device, region):
    p, x = setup(benchmark, prepared, case, "opening", impl, device, region)
    fn = ops.label_opening if impl == "rdcnet_ext" else reference.label_opening
    c = p.case
    out = measure(benchmark, synced(device, lambda: fn(x.labels, c.opening_radius, c.spacing)), once=is_once(impl, device))
    compare_labels(benchmark, out, p.full.opened)


@pytest.mark.parametrize("variant", list(alt.OPENINGS))
@pytest.mark.parametrize("case", CASE_NAMES)
def test_opening_scipy(benchmark, prepared, case, variant):
    """Label-wise opening with the op's ellipsoid (from rdcnet_ext._geometry.ellipsoid_offsets):
    scipy.ndimage.find_objects + scipy.ndimage.binary_opening (or skimage.morphology.opening) on
    each label's padded bounding box, and a whole-image version with scipy.ndimage rank filters.
    All three give exactly the op's result (see alternatives.py).

    The per-label variants cost the sum of the labels' bounding boxes; with outliers (pixels
    whose embedding points far away, assigned to a distant centre) most boxes span most of the
    image. When a call is projected to take more than RDCNET_BENCH_SLOW_LIMIT seconds it is
    skipped with the projection as the reason."""
    p, x = setup(benchmark, prepared, case, "opening", ALTERNATIVE, "cpu", variant=variant)
    labels, c, fn = x.numpy("labels"), p.case, alt.OPENINGS[variant]
    once = False
    if variant in alt.PER_LABEL:
        seconds, how = p.opening_time(variant)
        if how.startswith("projected"):
            pytest.skip(
                f"{variant} on {case}: {seconds:.3g} s per call ({how}; limit "
                f"RDCNET_BENCH_SLOW_LIMIT={SLOW_LIMIT_S:g} s); the labels' bounding boxes span most of "
                "the image because outlier pixels are assigned to distant centres"
            )
        once = seconds > BUDGET_S
    out = measure(benchmark, lambda: fn(labels, c.opening_radius, c.spacing), once=once)
    compare_labels(benchmark, out, p.full.opened)
    if benchmark.stats:  # None under --benchmark-disable
        p.opening_times[variant] = (benchmark.stats["median"], "benchmark median")


# ------------------------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("impl,device,region", IMPLS_CROPPED)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_pipeline(benchmark, prepared, case, impl, device, region):
    """votes -> peaks -> assign -> opening: ops.embeddings_to_labels or
    reference.embeddings_to_labels, embeddings and mask to final labels."""
    p, x = setup(benchmark, prepared, case, "pipeline", impl, device, region)
    fn = ops.embeddings_to_labels if impl == "rdcnet_ext" else reference.embeddings_to_labels
    c = p.case

    def run():
        return fn(x.embeddings, x.mask, c.min_distance, c.spacing, c.min_votes, 0, None, c.opening_radius)

    out = measure(benchmark, synced(device, run), once=is_once(impl, device))
    compare_labels(benchmark, out, p.inputs("cpu", region).pipeline)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_pipeline_scipy(benchmark, prepared, case):
    """The fastest scipy/skimage/NumPy combination: np.bincount votes, skimage peak_local_max,
    cKDTree assignment and whichever label opening of alternatives.OPENINGS is fastest on this
    case (by the medians of test_opening_scipy, else timed or projected here; the times used
    are in extra_info["opening_choice"])."""
    p = prepared(case)
    name, opening, times = p.opening_choice()
    p, x = setup(
        benchmark,
        prepared,
        case,
        "pipeline",
        ALTERNATIVE,
        "cpu",
        variant=f"np.bincount + peak_local_max + cKDTree + {name}",
    )
    benchmark.extra_info["opening_choice"] = {k: f"{v[0]:.4g} s ({v[1]})" for k, v in times.items()}
    emb, mask, c = x.numpy("embeddings"), x.numpy("mask"), p.case
    out = measure(
        benchmark,
        lambda: alt.pipeline(emb, mask, c.spacing, c.min_distance, c.min_votes, c.opening_radius, opening),
    )
    compare_labels(benchmark, out, p.full.pipeline)


FLOORS = {
    "torch.sum(embeddings) + torch.sum(mask)": lambda e, m: (torch.sum(e), torch.sum(m)),
    "torch.sum(embeddings) + torch.count_nonzero(mask)": lambda e, m: (torch.sum(e), torch.count_nonzero(m)),
}


@pytest.mark.parametrize("variant", list(FLOORS))
@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=_cuda_marks)])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_pipeline_floor(benchmark, prepared, case, device, variant):
    """The floor: one streaming pass over the pipeline's inputs, i.e. the time to read the float32
    embeddings ``(ndim, *spatial)`` and the bool mask once, measured as ``torch.sum`` over the
    embeddings tensor plus a reduction over the mask (torch, all CPU threads; on CUDA followed by
    ``torch.cuda.synchronize()``). No post-processing can beat it by much, since every op reads
    these inputs at least once.

    Two variants: the definition ``torch.sum(embeddings) + torch.sum(mask)``, and the same with
    ``torch.count_nonzero(mask)``: torch sums a bool tensor through a slow int64 path (about 10x
    slower than reading the 8x larger float embeddings), which inflates the first variant.
    render.py judges the "within 3x of the floor" target against the faster of the two.
    """
    p, x = setup(benchmark, prepared, case, "pipeline", "floor", device, variant=variant)
    fn = FLOORS[variant]
    out = measure(benchmark, synced(device, lambda: fn(x.embeddings, x.mask)))
    benchmark.extra_info["masked_pixels_counted"] = int(out[1])
