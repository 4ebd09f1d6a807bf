"""CUDA kernels: equal to the CPU references exactly, outputs on the input's device, launched on
torch's current stream, mixed devices rejected. Skipped without a GPU or a CUDA build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

import rdcnet_ext
from rdcnet_ext import _launch, ops
from rdcnet_ext import reference as ref

from helpers import (
    ANISO_3D,
    GEOMETRY_IDS,
    RANDOM_GEOMETRIES,
    Case,
    assert_equal,
    blocky_labels,
    random_centres,
    random_embeddings,
    random_mask,
    spacing_list,
)
from test_ssdc import NAMES as SSDC_NAMES
from test_ssdc import forward_and_grads, make, rel_err

CUDA_OK = torch.cuda.is_available() and rdcnet_ext.has_cuda
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build of rdcnet_ext"),
]

OP_NAMES = ["hough_votes", "find_peaks", "assign_to_centres", "label_opening", "embeddings_to_labels"]
geometries = pytest.mark.parametrize("shape,spacing", RANDOM_GEOMETRIES, ids=GEOMETRY_IDS)


def cuda(t: torch.Tensor, device="cuda") -> torch.Tensor:
    return t.to(device)


def _run_all(f, device):
    """Every op on field `f` with its arrays on `device`; returns name -> output."""
    sp = f.spacing
    e, m, l = f.embeddings.to(device), f.mask.to(device), f.labels.to(device)
    votes = ref.hough_votes(f.embeddings, f.mask, sp).to(device)
    centres = ref.find_peaks(votes.cpu(), 2.0, 1, sp, 1).to(device)
    return {
        "hough_votes": ops.hough_votes(e, m, sp),
        "find_peaks": ops.find_peaks(votes, 2.0, 1, sp, 1),
        "assign_to_centres": ops.assign_to_centres(e, m, centres, sp, 3.0),
        "label_opening": ops.label_opening(l, 1.5, sp),
        "embeddings_to_labels": ops.embeddings_to_labels(e, m, 2.0, sp, 1, 1, 3.0, 1.5),
    }


def _expected_all(f):
    sp = f.spacing
    votes = ref.hough_votes(f.embeddings, f.mask, sp)
    centres = ref.find_peaks(votes, 2.0, 1, sp, 1)
    return {
        "hough_votes": votes,
        "find_peaks": centres,
        "assign_to_centres": ref.assign_to_centres(f.embeddings, f.mask, centres, sp, 3.0),
        "label_opening": ref.label_opening(f.labels, 1.5, sp),
        "embeddings_to_labels": ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, sp, 1, 1, 3.0, 1.5),
    }


# ---- equal to the CPU reference ------------------------------------------------------------------


def test_every_op_on_synthetic_fields(field):
    got = _run_all(field, "cuda")
    expected = _expected_all(field)
    for name in OP_NAMES:
        assert got[name].device.type == "cuda", name
        assert_equal(got[name], expected[name], name)


@geometries
@pytest.mark.parametrize("fraction", [0.0, 0.7, 1.0])
def test_hough_votes_random(shape, spacing, fraction, rng):
    emb, mask = random_embeddings(shape, spacing, rng), random_mask(shape, rng, fraction)
    expected = ref.hough_votes(emb, mask, spacing_list(spacing, len(shape)))
    assert_equal(ops.hough_votes(cuda(emb), cuda(mask), spacing), expected, "votes")


@geometries
@pytest.mark.parametrize("levels", [1, 3, 50])
@pytest.mark.parametrize("min_distance,min_votes,smooth_radius", [(0.0, 0, 0), (1.0, 1, 0), (2.0, 2, 1), (3.5, 0, 2)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_find_peaks_random_plateaus(shape, spacing, levels, min_distance, min_votes, smooth_radius, dtype, rng):
    votes = torch.from_numpy(rng.integers(0, levels, shape)).to(dtype)
    expected = ref.find_peaks(votes, min_distance, min_votes, spacing_list(spacing, len(shape)), smooth_radius)
    got = ops.find_peaks(cuda(votes), min_distance, min_votes, spacing, smooth_radius)
    assert_equal(got, expected, "peaks")


@geometries
@pytest.mark.parametrize("k", [0, 1, 7, 300])
@pytest.mark.parametrize("max_distance", [None, 2.0])
def test_assign_random(shape, spacing, k, max_distance, rng):
    emb, mask = random_embeddings(shape, spacing, rng), random_mask(shape, rng, 0.9)
    centres = random_centres(shape, k, rng, duplicates=True)
    expected = ref.assign_to_centres(emb, mask, centres, spacing_list(spacing, len(shape)), max_distance)
    got = ops.assign_to_centres(cuda(emb), cuda(mask), cuda(centres), spacing, max_distance)
    assert_equal(got, expected, "labels")


@pytest.mark.parametrize("image,spacing,block", [((40, 33), (1.0, 0.4), (13, 11)), ((12, 30, 26), ANISO_3D, (5, 9, 8))])
@pytest.mark.parametrize("k", [1, 120])
@pytest.mark.parametrize("max_distance", [None, 2.5])
def test_assign_block_with_origin(image, spacing, block, k, max_distance, rng):
    """A block of a larger image with centres anywhere in it (origin=): equal to the reference and
    to the CPU op."""
    origin = [int(rng.integers(0, n - b + 1)) for n, b in zip(image, block)]
    region = (slice(None),) + tuple(slice(o, o + b) for o, b in zip(origin, block))
    emb = random_embeddings(image, spacing, rng)[region].contiguous()
    mask = random_mask(block, rng, 0.9)
    centres = random_centres(image, k, rng, duplicates=True)
    centres[0] = torch.tensor([3 * n + 5 for n in image])  # far beyond the larger image
    expected = ref.assign_to_centres(emb, mask, centres, spacing_list(spacing, len(image)), max_distance)
    got = ops.assign_to_centres(cuda(emb), cuda(mask), cuda(centres), spacing, max_distance, origin=origin)
    assert_equal(got, expected, "labels")
    assert_equal(got.cpu(), ops.assign_to_centres(emb, mask, centres, spacing, max_distance, origin=origin), "cpu")


@pytest.mark.parametrize("image,spacing,block", [((40, 33), (1.0, 0.4), (13, 11)), ((12, 30, 26), ANISO_3D, (5, 9, 8))])
def test_hough_votes_block(image, spacing, block, rng):
    """A block's votes on CUDA (torch operations): equal to the reference and to the CPU kernel."""
    origin = [int(rng.integers(0, n - b + 1)) for n, b in zip(image, block)]
    region = tuple(slice(o, o + b) for o, b in zip(origin, block))
    emb = random_embeddings(image, spacing, rng)[(slice(None),) + region].contiguous()
    mask = random_mask(block, rng, 0.8)
    got = ops.hough_votes_block(cuda(emb), cuda(mask), spacing, image, origin)
    assert got.votes.is_cuda and got.outside_bins.is_cuda
    expected = ref.hough_votes_block(emb, mask, spacing_list(spacing, len(image)), image, origin)
    for g, e, what in zip(got, expected, ("votes", "outside bins", "outside counts")):
        assert_equal(g, e, what)


@pytest.mark.parametrize("shape,spacing", [((40, 33), (1.0, 0.4)), ((12, 30, 26), ANISO_3D)])
@pytest.mark.parametrize("k", [1, 120])
def test_centre_index_on_cuda(shape, spacing, k, rng):
    """A CentreIndex built on CUDA (and one moved there) labels blocks as the CPU op does."""
    emb, mask = random_embeddings(shape, spacing, rng), random_mask(shape, rng, 0.9)
    centres = random_centres(shape, k, rng, duplicates=True)
    whole = ops.assign_to_centres(emb, mask, centres, spacing)
    region = tuple(slice(n // 3, n) for n in shape)
    for index in (ops.CentreIndex(cuda(centres), shape, spacing), ops.CentreIndex(centres, shape, spacing).to("cuda")):
        got = ops.assign_to_centres(cuda(emb[(slice(None),) + region].contiguous()), cuda(mask[region].contiguous()),
                                    index)
        assert_equal(got.cpu(), whole[region], "labels")
    with pytest.raises(ValueError, match="CentreIndex is on cpu"):
        ops.assign_to_centres(cuda(emb), cuda(mask), ops.CentreIndex(centres, shape, spacing))


@geometries
@pytest.mark.parametrize("radius", [0.7, 1.5, 2.9])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
def test_label_opening_random(shape, spacing, radius, dtype, rng):
    labels = blocky_labels(shape, rng, 3, 4, negative=dtype != torch.uint8, speckle=0.05)
    expected = ref.label_opening(labels, radius, spacing_list(spacing, len(shape)))
    got = ops.label_opening(cuda(labels.to(dtype)), radius, spacing)
    assert got.dtype == dtype and got.device.type == "cuda"
    assert_equal(got.to(torch.int64), expected, "opened")


@pytest.mark.parametrize("shape,radius,spacing", [
    ((21, 22), 2.5, (0.5, 0.5)),             # (3, 4) on the surface
    ((7, 21, 22), 2.5, (2.0, 0.25, 0.25)),   # (0, 8, 6) on the surface
    ((19, 20), 0.5, (0.1, 0.1)),             # decimal spacing
    ((6, 7), 9.5, (1.0, 1.0)),               # a ball beyond the image
    ((2, 5, 6), 4.5, (1.0, 1.0, 1.0)),       # beyond the image in one axis
])
def test_label_opening_exact_balls_and_balls_beyond_the_image(shape, radius, spacing, rng):
    labels = blocky_labels(shape, rng, 2, 3, speckle=0.1)
    expected = ref.label_opening(labels, radius, list(spacing))
    assert_equal(ops.label_opening(cuda(labels), radius, spacing), expected, "opened")


def test_find_peaks_exact_and_clipped_windows_on_cuda(rng):
    votes = torch.from_numpy(rng.integers(0, 4, (9, 31)).astype(np.int32))
    for min_distance, spacing, smooth in [(0.3, (0.1, 0.1), 0), (1e30, None, 1), (1.0, None, 2**40)]:
        expected = ref.find_peaks(votes, min_distance, 1, spacing_list(spacing, 2), smooth)
        assert_equal(ops.find_peaks(cuda(votes), min_distance, 1, spacing, smooth), expected, f"{min_distance}")


@geometries
@pytest.mark.parametrize("params", [(2.0, 1, 0, None, None), (3.0, 2, 1, 4.0, 1.0), (1.0, 0, 0, 2.5, 1.5)])
def test_embeddings_to_labels_random(shape, spacing, params, rng):
    emb, mask = random_embeddings(shape, spacing, rng), random_mask(shape, rng, 0.8)
    md, mv, sr, maxd, opening = params
    expected = ref.embeddings_to_labels(emb, mask, md, spacing_list(spacing, len(shape)), mv, sr, maxd, opening)
    got = ops.embeddings_to_labels(cuda(emb), cuda(mask), md, spacing, mv, sr, maxd, opening)
    assert_equal(got, expected, "labels")


@pytest.mark.parametrize("case", [
    Case((256, 320), 150, noise=1.0, outliers=0.05, nonfinite=0.01, seed=60),
    Case((24, 128, 112), 120, ANISO_3D, noise=0.8, outliers=0.05, nonfinite=0.01, seed=61),
], ids=["2d-large", "3d-large"])
def test_larger_images_equal_cpu(case):
    # Bigger than the CPU tests (more blocks, more candidates per cell); the CPU path is itself
    # checked against the reference, which is too slow here for every op.
    f = case.make()
    got = _run_all(f, "cuda")
    want = _run_all(f, "cpu")
    for name in OP_NAMES:
        assert_equal(got[name], want[name], name)
    assert_equal(got["embeddings_to_labels"],
                 ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, f.spacing, 1, 1, 3.0, 1.5), "vs reference")


# ---- edge cases on the GPU ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 5), (3, 0, 4), (1, 1), (1, 1, 1)])
def test_tiny_and_empty_images(shape):
    ndim = len(shape)
    e = torch.zeros((ndim, *shape), device="cuda")
    m = torch.ones(shape, dtype=torch.bool, device="cuda")
    votes = ops.hough_votes(e, m)
    assert votes.device.type == "cuda" and votes.shape == shape and int(votes.sum()) == m.numel()
    peaks = ops.find_peaks(votes, 1.0, 0)
    assert peaks.device.type == "cuda" and peaks.shape == (min(1, m.numel()), ndim)
    labels = ops.embeddings_to_labels(e, m, 1.0, opening_radius=1.0)
    assert labels.device.type == "cuda" and labels.shape == shape and bool((labels == 1).all())
    none = ops.assign_to_centres(e, m, torch.zeros((0, ndim), dtype=torch.int64, device="cuda"))
    assert none.device.type == "cuda" and not none.any()


def test_assignment_ties_go_to_lowest_index():
    shape = (3, 9)
    m = torch.ones(shape, dtype=torch.bool, device="cuda")
    e = torch.tensor([0.0, 2.0], device="cuda").reshape(2, 1, 1).expand(2, *shape).contiguous()
    for centres, expected in [([[2, 8], [0, 0], [0, 4]], 2), ([[2, 8], [0, 4], [0, 0]], 2), ([[2, 2], [1, 2], [1, 2]], 2)]:
        got = ops.assign_to_centres(e, m, torch.tensor(centres, device="cuda"))
        assert got.unique().tolist() == [expected], centres


def test_centres_out_of_range_raise_on_cuda():
    e = torch.zeros((2, 5, 6), device="cuda")
    m = torch.ones((5, 6), dtype=torch.bool, device="cuda")
    for bad in ([[0, 6]], [[-1, 0]], [[5, 0]]):
        with pytest.raises(ValueError, match="centres"):
            ops.assign_to_centres(e, m, torch.tensor(bad, device="cuda"))


def test_non_contiguous_cuda_inputs():
    f = Case((21, 18), 5, (1.0, 0.5), outliers=0.1, nonfinite=0.05, seed=62).make()
    e = f.embeddings.cuda().permute(0, 2, 1).contiguous().permute(0, 2, 1)
    m = f.mask.cuda().T.contiguous().T
    l = f.labels.cuda().T.contiguous().T
    assert not (e.is_contiguous() or m.is_contiguous() or l.is_contiguous())
    assert_equal(ops.hough_votes(e, m, f.spacing), ref.hough_votes(f.embeddings, f.mask, f.spacing), "votes")
    assert_equal(ops.label_opening(l, 1.5, f.spacing), ref.label_opening(f.labels, 1.5, f.spacing), "opened")
    assert_equal(ops.embeddings_to_labels(e, m, 2.0, f.spacing),
                 ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, f.spacing), "labels")


# ---- devices and streams -------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_outputs_on_the_inputs_device_not_the_current_one():
    f = Case((30, 28), 6, seed=63).make()
    expected = _expected_all(f)
    with torch.cuda.device(0):
        got = _run_all(f, "cuda:1")
    for name in OP_NAMES:
        assert got[name].device == torch.device("cuda:1"), name
        assert_equal(got[name], expected[name], name)


def test_outputs_on_the_inputs_device():
    f = Case((30, 28), 6, seed=64).make()
    device = torch.device("cuda", torch.cuda.current_device())
    for name, out in _run_all(f, device).items():
        assert isinstance(out, torch.Tensor) and out.device == device, name


def test_kernels_run_on_the_current_stream(monkeypatch):
    f = Case((40, 36), 8, (1.0, 0.5), outliers=0.1, seed=65).make()
    expected = _expected_all(f)
    seen = []
    real_cuda = _launch._cuda

    def spy(t):
        device, stream = real_cuda(t)
        seen.append(stream)
        return device, stream

    monkeypatch.setattr(_launch, "_cuda", spy)
    side = torch.cuda.Stream()
    # Inputs made on the side stream, ops run there, results used only after synchronising it.
    with torch.cuda.stream(side):
        got = _run_all(f, "cuda")
    side.synchronize()
    assert seen and all(s == side.cuda_stream for s in seen), (seen, side.cuda_stream)
    assert side.cuda_stream != torch.cuda.default_stream().cuda_stream
    for name in OP_NAMES:
        assert_equal(got[name], expected[name], name)


def test_back_to_back_on_a_busy_stream():
    # A long queue of work on the stream before the ops: they must wait for it, not race it.
    f = Case((64, 64), 10, seed=66).make()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        big = torch.full((2048, 2048), 1.0 / 2048, device="cuda")
        for _ in range(20):
            big = big @ big  # stays exactly 1/2048 everywhere
        e = f.embeddings.cuda() + 0.0 * big[0, 0]  # ready only after the matmuls
        labels = ops.embeddings_to_labels(e, f.mask.cuda(), 2.0, opening_radius=1.0)
    side.synchronize()
    want = ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, opening_radius=1.0)
    assert_equal(labels, want, "labels")


MIXED = [
    ("hough-mask-cpu", lambda e, m, c, l: ops.hough_votes(e, m.cpu()), "mask"),
    ("hough-emb-cpu", lambda e, m, c, l: ops.hough_votes(e.cpu(), m), "mask"),
    ("assign-centres-cpu", lambda e, m, c, l: ops.assign_to_centres(e, m, c.cpu()), "centres"),
    ("assign-mask-cpu", lambda e, m, c, l: ops.assign_to_centres(e, m.cpu(), c), "mask"),
    ("assign-centres-numpy", lambda e, m, c, l: ops.assign_to_centres(e, m, c.cpu().numpy()), "centres"),
    ("pipeline-mask-cpu", lambda e, m, c, l: ops.embeddings_to_labels(e, m.cpu(), 1.0), "mask"),
    ("pipeline-mask-numpy", lambda e, m, c, l: ops.embeddings_to_labels(e, m.cpu().numpy(), 1.0), "mask"),
]


@pytest.mark.parametrize("call,argname", [x[1:] for x in MIXED], ids=[x[0] for x in MIXED])
def test_mixed_devices_raise(call, argname):
    e = torch.zeros((2, 6, 7), device="cuda")
    m = torch.ones((6, 7), dtype=torch.bool, device="cuda")
    c = torch.tensor([[1, 1]], device="cuda")
    l = torch.zeros((6, 7), dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match=argname):
        call(e, m, c, l)


# ---- torch.library / torch.compile on CUDA --------------------------------------------------------


def test_opcheck_on_cuda():
    f = Case((11, 12), 3, (1.0, 0.5), outliers=0.1, nonfinite=0.05, seed=67).make()
    sp = list(f.spacing)
    e, m, l, c = f.embeddings.cuda(), f.mask.cuda(), f.labels.cuda(), f.centres.cuda()
    votes = ops.hough_votes(e, m, sp)
    samples = [
        ("hough_votes", (e, m, sp)),
        ("find_peaks", (votes, 2.0, 1, sp, 1)),
        ("assign_to_centres", (e, m, c, sp, 3.0)),
        ("label_opening", (l, 1.5, sp)),
        ("embeddings_to_labels", (e, m, 2.0, sp, 1, 1, 3.0, 1.5)),
    ]
    for name, args in samples:
        result = torch.library.opcheck(getattr(torch.ops.rdcnet_ext, name), args, raise_exception=False)
        failures = {k: v for k, v in result.items() if v != "SUCCESS"}
        assert not failures, (name, failures)


def test_compile_fullgraph_on_cuda():
    torch._dynamo.reset()
    f = Case((20, 23), 4, (1.0, 0.5), outliers=0.1, seed=68).make()
    sp = tuple(f.spacing)

    def fn(e, m):
        votes = ops.hough_votes(e, m, sp)
        centres = ops.find_peaks(votes, 2.0, 1, sp, 1)
        labels = ops.assign_to_centres(e, m, centres, sp, 3.0)
        return votes, centres, ops.label_opening(labels, 1.5, sp), ops.embeddings_to_labels(e, m, 2.0, sp)

    e, m = f.embeddings.cuda(), f.mask.cuda()
    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(e, m)
    for g, x in zip(got, fn(e, m)):
        assert g.device.type == "cuda"
        assert_equal(g, x, "compiled")
    torch._dynamo.reset()


def test_numpy_path_is_cpu_even_with_cuda_available():
    f = Case((12, 13), 3, seed=69).make()
    out = ops.embeddings_to_labels(f.embeddings.numpy(), f.mask.numpy(), 2.0)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, ref.embeddings_to_labels(f.embeddings, f.mask, 2.0).numpy())


# ---- sSDC: the two CUDA kernels (simt, tensorcore) against a float64 reference ---------------------

# (batch, groups, channels per group, spatial shape, dilations): odd sizes, 3D, dilations beyond
# the image, G in {1, 2, 8}, C in {16, 32, 64}, batch 1 and 3.
TC_CASES = [
    (1, 1, 16, (17, 23), (1, 2, 4, 8)),
    (3, 2, 32, (9, 31), (1, 2, 4, 8)),
    (1, 8, 64, (37, 41), (1, 2, 4, 8)),
    (1, 2, 32, (3, 70), (1, 5, 40)),
    (3, 2, 16, (5, 7, 9), (1, 2, 4, 8)),
    (1, 1, 64, (6, 9, 11), (1, 3)),
]
TC_IDS = [f"b{b}g{g}c{c}-{'x'.join(map(str, s))}-d{'_'.join(map(str, d))}" for b, g, c, s, d in TC_CASES]
TC_DTYPES = [(torch.bfloat16, 1e-2), (torch.float16, 5e-3), (torch.float32, 3e-3)]  # float32 = TF32


def _ssdc_vs_float64(case, dtype, seed=0):
    """Relative errors of y and the five gradients of ops.ssdc on CUDA against the reference
    evaluated in float64 on the CPU from the same (rounded) inputs and output gradient."""
    b, g, c, shape, dil = case
    inputs = make(b, g, c, shape, dil, dtype, device="cuda", seed=seed)
    y, grads, gy = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3)
    ref_inputs = [t.double().cpu() for t in inputs]
    y_ref, grads_ref, _ = forward_and_grads(ref.ssdc, ref_inputs, dil, g, 0.3, gy.double().cpu())
    for got in (y, *grads):
        assert got.dtype == dtype and got.device.type == "cuda"
    return {name: rel_err(got.cpu(), want) for name, got, want in zip(SSDC_NAMES, (y, *grads), (y_ref, *grads_ref))}


@pytest.fixture
def tensorcore(monkeypatch):
    """RDCNET_EXT_SSDC_CUDA_KERNEL=tensorcore, TF32 allowed, and a record of the native calls made."""
    monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, "tensorcore")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    calls = []
    for name in ("ssdc_tc_forward_cuda", "ssdc_tc_backward_cuda", "ssdc_forward_cuda", "ssdc_backward_cuda"):
        real = getattr(_launch._C, name)

        def spy(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(_launch._C, name, spy)
    return calls


@pytest.mark.parametrize("case", TC_CASES, ids=TC_IDS)
@pytest.mark.parametrize("dtype,tol", TC_DTYPES, ids=["bf16", "f16", "tf32"])
def test_ssdc_tensorcore_matches_float64_reference(case, dtype, tol, tensorcore):
    errors = _ssdc_vs_float64(case, dtype)
    assert tensorcore == ["ssdc_tc_forward_cuda", "ssdc_tc_backward_cuda"], tensorcore
    bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= tol}
    assert not bad, bad


@pytest.mark.parametrize("dtype,channels", [(torch.float64, 16), (torch.bfloat16, 8), (torch.float16, 24)],
                         ids=["f64", "c8", "c24"])
def test_ssdc_tensorcore_falls_back_to_simt(dtype, channels, tensorcore):
    errors = _ssdc_vs_float64((2, 2, channels, (9, 10), (1, 2)), dtype)
    assert tensorcore == ["ssdc_forward_cuda", "ssdc_backward_cuda"], tensorcore
    tol = {torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]  # simt's tolerances
    assert max(errors.values()) <= tol, errors


def test_ssdc_float32_without_tf32_runs_simt(tensorcore, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    errors = _ssdc_vs_float64((1, 2, 16, (9, 10), (1, 2)), torch.float32)
    assert tensorcore == ["ssdc_forward_cuda", "ssdc_backward_cuda"], tensorcore
    assert max(errors.values()) <= 1e-5, errors


def test_ssdc_tensorcore_parameter_gradients_are_deterministic(tensorcore):
    case = (2, 2, 32, (19, 21), (1, 2, 4))
    b, g, c, shape, dil = case
    inputs = make(b, g, c, shape, dil, torch.bfloat16, device="cuda")
    _, first, gy = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3)
    _, second, _ = forward_and_grads(ops.ssdc, inputs, dil, g, 0.3, gy)
    for name, a, b_ in zip(SSDC_NAMES[2:], first[1:], second[1:]):  # grad x uses atomics
        assert torch.equal(a, b_), name


@pytest.mark.parametrize("case", [(2, 4, 32, (37, 41), (1, 2, 4, 8)), (1, 8, 64, (33, 40), (1, 2, 4, 8))],
                         ids=["g4c32-37x41", "g8c64-33x40"])
def test_ssdc_simt_float32_gradients_within_1e5(case, monkeypatch):
    """Issue 8 item 5: float32 parameter gradients of the simt kernel within 1e-5 of float64."""
    monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, "simt")
    errors = _ssdc_vs_float64(case, torch.float32)
    assert max(errors.values()) <= 1e-5, {k: f"{v:.2e}" for k, v in errors.items()}


def test_ssdc_bad_kernel_variable_raises(monkeypatch):
    monkeypatch.setenv(_launch.SSDC_KERNEL_ENV, "cutlass")
    inputs = make(1, 1, 16, (5, 6), (1,), torch.float32, device="cuda")
    with pytest.raises(ValueError, match="RDCNET_EXT_SSDC_CUDA_KERNEL"):
        ops.ssdc(*inputs, (1,), 1)
