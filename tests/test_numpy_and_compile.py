"""Array types in and out (NumPy in -> NumPy out, torch in -> torch out), torch.compile without
graph breaks, and torch.library.opcheck of the registered custom ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from rdcnet_ext import ops
from rdcnet_ext import reference as ref

from helpers import ANISO_3D, Case, assert_equal

OP_NAMES = ["hough_votes", "find_peaks", "assign_to_centres", "label_opening", "embeddings_to_labels"]


def _calls(f):
    """Each op called on field `f` with array arguments passed through a converter `c`."""
    sp = f.spacing
    votes = ref.hough_votes(f.embeddings, f.mask, sp)
    centres = ref.find_peaks(votes, 2.0, 1, sp, 1)
    return {
        "hough_votes": lambda c: ops.hough_votes(c(f.embeddings), c(f.mask), sp),
        "find_peaks": lambda c: ops.find_peaks(c(votes), 2.0, 1, sp, 1),
        "assign_to_centres": lambda c: ops.assign_to_centres(c(f.embeddings), c(f.mask), c(centres), sp, 3.0),
        "label_opening": lambda c: ops.label_opening(c(f.labels), 1.5, sp),
        "embeddings_to_labels": lambda c: ops.embeddings_to_labels(c(f.embeddings), c(f.mask), 2.0, sp, 1, 1, 3.0, 1.5),
    }


def as_numpy(t):
    return t.numpy()


def as_torch(t):
    return t


# ---- NumPy in, NumPy out -------------------------------------------------------------------------


@pytest.mark.parametrize("name", OP_NAMES)
def test_numpy_in_numpy_out_equals_torch_path(field, name):
    call = _calls(field)[name]
    t = call(as_torch)
    n = call(as_numpy)
    assert isinstance(t, torch.Tensor) and t.device.type == "cpu"
    assert isinstance(n, np.ndarray), type(n)
    assert n.dtype == t.numpy().dtype and n.shape == tuple(t.shape)
    np.testing.assert_array_equal(n, t.numpy())


def test_mixed_inputs_follow_the_main_input():
    f = Case((14, 15), 3, seed=30).make()
    e, m = f.embeddings, f.mask
    c = torch.tensor([[3, 3], [10, 12]])
    assert isinstance(ops.hough_votes(e.numpy(), m), np.ndarray)
    assert isinstance(ops.hough_votes(e, m.numpy()), torch.Tensor)
    assert isinstance(ops.assign_to_centres(e.numpy(), m, c), np.ndarray)
    assert isinstance(ops.assign_to_centres(e, m.numpy(), c.numpy()), torch.Tensor)
    assert isinstance(ops.embeddings_to_labels(e.numpy(), m, 2.0), np.ndarray)
    assert isinstance(ops.embeddings_to_labels(e, m.numpy(), 2.0), torch.Tensor)
    np.testing.assert_array_equal(ops.assign_to_centres(e.numpy(), m, c), ops.assign_to_centres(e, m.numpy(), c.numpy()))


@pytest.mark.parametrize("emb_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.uint16, np.int32])
def test_numpy_dtypes_of_embeddings_and_mask(emb_dtype, mask_dtype):
    f = Case((10, 12, 11), 4, ANISO_3D, outliers=0.2, nonfinite=0.05, seed=31).make()
    e = f.embeddings.numpy().astype(emb_dtype)
    m = f.mask.numpy().astype(mask_dtype) * (3 if mask_dtype != np.bool_ else 1)
    e32 = torch.from_numpy(e.astype(np.float32))
    votes = ops.hough_votes(e, m, f.spacing)
    assert isinstance(votes, np.ndarray) and votes.dtype == np.int32
    np.testing.assert_array_equal(votes, ref.hough_votes(e32, f.mask, f.spacing).numpy())
    labels = ops.embeddings_to_labels(e, m, 2.0, f.spacing, opening_radius=1.0)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref.embeddings_to_labels(e32, f.mask, 2.0, f.spacing, opening_radius=1.0))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_numpy_votes_dtypes(dtype):
    rng = np.random.default_rng(5)
    v = rng.integers(0, 4, (13, 17)).astype(dtype)
    peaks = ops.find_peaks(v, 1.5, 1, None, 1)
    assert isinstance(peaks, np.ndarray) and peaks.dtype == np.int64 and peaks.shape[1] == 2
    np.testing.assert_array_equal(peaks, ref.find_peaks(torch.from_numpy(v.astype(np.int64)), 1.5, 1, None, 1))


@pytest.mark.parametrize("which", ["embeddings", "labels"])
def test_numpy_big_endian_inputs(which):
    f = Case((9, 10), 2, seed=32).make()
    if which == "embeddings":
        got = ops.hough_votes(f.embeddings.numpy().astype(">f4"), f.mask.numpy())
        np.testing.assert_array_equal(got, ref.hough_votes(f.embeddings, f.mask).numpy())
    else:
        got = ops.label_opening(f.labels.numpy().astype(">i4"), 1.0)
        assert got.dtype == np.dtype(">i4")
        np.testing.assert_array_equal(got, ref.label_opening(f.labels, 1.0).numpy())


# torch.from_numpy warns (once per process) on read-only arrays; harmless since the ops never
# write to their inputs, but visible to users of e.g. memory-mapped images.
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_numpy_read_only_inputs():
    f = Case((9, 10), 2, seed=33).make()
    e, m, l = f.embeddings.numpy().copy(), f.mask.numpy().copy(), f.labels.numpy().copy()
    for a in (e, m, l):
        a.flags.writeable = False
    np.testing.assert_array_equal(ops.embeddings_to_labels(e, m, 2.0), ref.embeddings_to_labels(f.embeddings, f.mask, 2.0))
    np.testing.assert_array_equal(ops.label_opening(l, 1.0), ref.label_opening(f.labels, 1.0))


@pytest.mark.parametrize("name", OP_NAMES)
def test_torch_in_torch_out_fresh_tensor(name):
    f = Case((12, 13), 3, seed=34).make()
    out = _calls(f)[name](as_torch)
    assert isinstance(out, torch.Tensor) and out.device == f.mask.device and out.is_contiguous()
    assert not out.requires_grad


def test_embeddings_requiring_grad_are_accepted():
    f = Case((12, 13), 3, seed=35).make()
    e = f.embeddings.clone().requires_grad_()
    labels = ops.embeddings_to_labels(e, f.mask, 2.0, opening_radius=1.0)
    assert_equal(labels, ref.embeddings_to_labels(f.embeddings, f.mask, 2.0, opening_radius=1.0), "labels")
    assert_equal(ops.hough_votes(e, f.mask), ref.hough_votes(f.embeddings, f.mask), "votes")


# ---- torch.compile -------------------------------------------------------------------------------

SP2 = (1.0, 0.5)
SP3 = ANISO_3D


def _pipeline(e, m, spacing):
    votes = ops.hough_votes(e, m, spacing)
    centres = ops.find_peaks(votes, 2.0, 1, spacing, 1)
    labels = ops.assign_to_centres(e, m, centres, spacing, 3.0)
    opened = ops.label_opening(labels, 1.5, spacing)
    fused = ops.embeddings_to_labels(e, m, 2.0, spacing, 1, 1, 3.0, 1.5)
    return votes, centres, labels, opened, fused


COMPILE_FNS = {
    "hough_votes": lambda e, m, l, sp: ops.hough_votes(e, m, sp),
    "find_peaks": lambda e, m, l, sp: ops.find_peaks(ops.hough_votes(e, m, sp), 2.0, 1, sp, 1),
    "assign_to_centres": lambda e, m, l, sp: ops.assign_to_centres(
        e, m, torch.tensor([[0] * len(sp), [2] * len(sp)], device=e.device), sp, None),
    "label_opening": lambda e, m, l, sp: ops.label_opening(l, 1.5, sp),
    "embeddings_to_labels": lambda e, m, l, sp: ops.embeddings_to_labels(e, m, 2.0, sp, 1, 1, None, 1.5),
    "pipeline": lambda e, m, l, sp: _pipeline(e, m, sp),
}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile_inputs(ndim: int, seed: int, crop: int = 0):
    shape, sp = ((20, 23), SP2) if ndim == 2 else ((6, 14, 12), SP3)
    shape = tuple(n - crop for n in shape)
    f = Case(shape, 4, sp, outliers=0.1, nonfinite=0.02, seed=seed).make()
    return f.embeddings, f.mask, f.labels, tuple(sp)


def _check_compiled(name, fn, compiled, calls):
    for args in calls:
        got, expected = compiled(*args), fn(*args)
        got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
        for g, e in zip(got, expected):
            assert_equal(g, e, f"{name} compiled")


def _traced_ops(backend) -> set:
    return {str(n.target) for g in backend.graphs for n in g.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name", list(COMPILE_FNS))
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dynamic", [False, None], ids=["static", "automatic"])
@pytest.mark.parametrize("capture", [False, True], ids=["default", "capture_dynamic_output_shape_ops"])
def test_compile_fullgraph_equals_eager(name, ndim, dynamic, capture, fresh_dynamo):
    """fullgraph=True: any graph break raises. Three calls: other data (another peak count K),
    then two other image shapes (static: one graph per shape; automatic: the second compile
    makes the shapes dynamic and the third call reuses it)."""
    fn = COMPILE_FNS[name]
    backend = CompileCounterWithBackend("aot_eager")
    calls = [_compile_inputs(ndim, 40), _compile_inputs(ndim, 41, crop=1), _compile_inputs(ndim, 42, crop=2)]
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=capture):
        compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)
        _check_compiled(name, fn, compiled, calls)
    assert backend.frame_count == (3 if dynamic is False else 2)
    expected_ops = {"pipeline": OP_NAMES, "find_peaks": ["hough_votes", "find_peaks"]}.get(name, [name])
    traced = _traced_ops(backend)
    for op in expected_ops:
        assert any(f"rdcnet_ext.{op}" in t for t in traced), (op, traced)


@pytest.mark.parametrize("name", list(COMPILE_FNS))
def test_compile_fullgraph_dynamic_true(name, fresh_dynamo):
    fn = COMPILE_FNS[name]
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    _check_compiled(name, fn, compiled, [_compile_inputs(2, 40), _compile_inputs(2, 41, crop=3)])


@pytest.mark.parametrize("argument", ["spacing", "min_distance", "max_distance", "radius"])
def test_compile_fullgraph_float_argument_changes_between_calls(argument, fresh_dynamo):
    e, m, l, _ = _compile_inputs(2, 44)
    fns = {
        "spacing": lambda x: ops.hough_votes(e, m, (1.0, x)),
        "min_distance": lambda x: ops.find_peaks(ops.hough_votes(e, m), x, 1),
        "max_distance": lambda x: ops.assign_to_centres(e, m, torch.tensor([[2, 3], [9, 9]]), None, x),
        "radius": lambda x: ops.label_opening(l, x),
    }
    fn = fns[argument]
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    _check_compiled(argument, fn, compiled, [(1.0,), (1.5,), (2.0,)])


def test_compile_float_argument_changes_without_fullgraph_still_correct(fresh_dynamo):
    # Whatever the graph breaks, results stay right.
    e, m, l, _ = _compile_inputs(2, 45)

    def fn(x):
        return ops.embeddings_to_labels(e, m, x, (1.0, 0.5), 1, 1, x + 1.0, x)

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True)
    _check_compiled("pipeline", fn, compiled, [(1.0,), (1.5,), (2.5,)])


def test_compile_with_aot_eager_string_backend(fresh_dynamo):
    e, m, l, sp = _compile_inputs(3, 42)
    compiled = torch.compile(_pipeline, backend="aot_eager", fullgraph=True)
    for g, x in zip(compiled(e, m, sp), _pipeline(e, m, sp)):
        assert_equal(g, x, "pipeline")
    # And the compiled pipeline equals the references.
    votes, centres, labels, opened, fused = compiled(e, m, sp)
    assert_equal(fused, ref.embeddings_to_labels(e, m, 2.0, sp, 1, 1, 3.0, 1.5), "fused vs reference")
    assert_equal(centres, ref.find_peaks(ref.hough_votes(e, m, sp), 2.0, 1, sp, 1), "peaks vs reference")


def test_compile_with_downstream_use_of_peaks(fresh_dynamo):
    # The data-dependent peak count flows into further tensor code inside the graph.
    def fn(e, m):
        centres = ops.find_peaks(ops.hough_votes(e, m), 1.0, 1)
        return centres.shape[0] + torch.zeros(()), centres.sum(0)

    e, m, _, _ = _compile_inputs(2, 43)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        got = torch.compile(fn, backend="aot_eager", fullgraph=True)(e, m)
    exp = fn(e, m)
    assert_equal(got[0], exp[0], "count")
    assert_equal(got[1], exp[1], "sum")


# ---- torch.library.opcheck -----------------------------------------------------------------------


def _opcheck_samples():
    f2 = Case((11, 12), 3, (1.0, 0.5), outliers=0.1, nonfinite=0.05, seed=50).make()
    f3 = Case((5, 8, 7), 3, ANISO_3D, outliers=0.1, seed=51).make()
    samples = []
    for f in (f2, f3):
        sp = list(f.spacing)
        votes = ref.hough_votes(f.embeddings, f.mask, sp)
        nd = f.ndim
        samples += [
            ("hough_votes", (f.embeddings, f.mask, sp)),
            ("find_peaks", (votes, 2.0, 1, sp, 1)),
            ("find_peaks", (votes.to(torch.int64), 0.0, 0, sp, 0)),
            ("find_peaks", (torch.zeros_like(votes), 1.0, 1, sp, 0)),  # no peaks: K = 0
            ("assign_to_centres", (f.embeddings, f.mask, f.centres, sp, 3.0)),
            ("assign_to_centres", (f.embeddings, f.mask, f.centres, sp, None)),
            ("assign_to_centres", (f.embeddings, f.mask, torch.zeros((0, nd), dtype=torch.int64), sp, None)),
            ("label_opening", (f.labels, 1.5, sp)),
            ("label_opening", (f.labels.to(torch.int64), 1.0, sp)),
            ("embeddings_to_labels", (f.embeddings, f.mask, 2.0, sp, 1, 1, 3.0, 1.5)),
            ("embeddings_to_labels", (f.embeddings, f.mask, 1.0, sp, 0, 0, None, None)),
        ]
    return samples


OPCHECK_SAMPLES = _opcheck_samples()


@pytest.mark.parametrize("name,args", OPCHECK_SAMPLES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPCHECK_SAMPLES)])
def test_opcheck(name, args):
    op = getattr(torch.ops.rdcnet_ext, name)
    # All of opcheck's default tests apply, including test_aot_dispatch_dynamic for find_peaks
    # (its fake kernel allocates the data-dependent count with ctx.new_dynamic_size()).
    result = torch.library.opcheck(op, args, raise_exception=False)
    assert set(result) >= {"test_schema", "test_autograd_registration", "test_faketensor",
                           "test_aot_dispatch_dynamic"}
    failures = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not failures, failures
