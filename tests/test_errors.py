"""Bad input raises TypeError/ValueError whose message names the offending argument."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rdcnet_ext
from rdcnet_ext import _launch, ops

NAN = float("nan")


def emb(shape=(8, 9), dtype=torch.float32):
    return torch.zeros((len(shape), *shape), dtype=dtype)


def mask(shape=(8, 9), dtype=torch.bool):
    return torch.ones(shape, dtype=dtype)


def votes(shape=(8, 9), dtype=torch.int32):
    return torch.zeros(shape, dtype=dtype)


def centres(rows=((1, 2), (3, 4)), dtype=torch.int64):
    return torch.tensor(rows, dtype=dtype)


def labels(shape=(8, 9), dtype=torch.int32):
    return torch.zeros(shape, dtype=dtype)


# (id, callable, exception type, argument name the message must mention)
BAD_CALLS = [
    # --- embeddings / mask (shared by hough_votes, assign_to_centres, embeddings_to_labels)
    ("emb-int", lambda: ops.hough_votes(emb(dtype=torch.int32), mask()), TypeError, "embeddings"),
    ("emb-bool", lambda: ops.hough_votes(emb().bool(), mask()), TypeError, "embeddings"),
    ("emb-numpy-int", lambda: ops.hough_votes(np.zeros((2, 8, 9), np.int64), mask().numpy()), TypeError, "embeddings"),
    ("emb-list", lambda: ops.hough_votes(emb().tolist(), mask()), TypeError, "embeddings"),
    ("emb-2d", lambda: ops.hough_votes(emb()[0], mask()), ValueError, "embeddings"),
    ("emb-1d", lambda: ops.hough_votes(torch.zeros(8), mask()), ValueError, "embeddings"),
    ("emb-5d", lambda: ops.hough_votes(torch.zeros((4, 2, 3, 4, 5)), mask()), ValueError, "embeddings"),
    ("emb-batch", lambda: ops.hough_votes(emb()[None], mask()), ValueError, "embeddings"),
    ("emb-3ch-2d", lambda: ops.hough_votes(torch.zeros((3, 8, 9)), mask()), ValueError, "embeddings"),
    ("emb-2ch-3d", lambda: ops.hough_votes(torch.zeros((2, 4, 8, 9)), mask((4, 8, 9))), ValueError, "embeddings"),
    ("mask-float", lambda: ops.hough_votes(emb(), mask(dtype=torch.float32)), TypeError, "mask"),
    ("mask-numpy-float", lambda: ops.hough_votes(emb().numpy(), np.ones((8, 9))), TypeError, "mask"),
    ("mask-list", lambda: ops.hough_votes(emb(), mask().tolist()), TypeError, "mask"),
    ("mask-shape", lambda: ops.hough_votes(emb(), mask((8, 8))), ValueError, "mask"),
    ("mask-transposed", lambda: ops.hough_votes(emb(), mask().T), ValueError, "mask"),
    ("mask-ndim", lambda: ops.hough_votes(emb(), mask((1, 8, 9))), ValueError, "mask"),
    ("assign-mask-float", lambda: ops.assign_to_centres(emb(), mask(dtype=torch.float64), centres()), TypeError, "mask"),
    ("assign-emb-int", lambda: ops.assign_to_centres(emb(dtype=torch.int64), mask(), centres()), TypeError, "embeddings"),
    ("pipeline-mask-shape", lambda: ops.embeddings_to_labels(emb(), mask((9, 8)), 1.0), ValueError, "mask"),
    ("pipeline-emb-int", lambda: ops.embeddings_to_labels(emb(dtype=torch.int32), mask(), 1.0), TypeError, "embeddings"),
    # --- spacing (every op)
    ("spacing-zero", lambda: ops.hough_votes(emb(), mask(), 0.0), ValueError, "spacing"),
    ("spacing-negative", lambda: ops.hough_votes(emb(), mask(), (1.0, -0.5)), ValueError, "spacing"),
    ("spacing-nan", lambda: ops.hough_votes(emb(), mask(), (NAN, 1.0)), ValueError, "spacing"),
    ("spacing-inf", lambda: ops.hough_votes(emb(), mask(), (1.0, math.inf)), ValueError, "spacing"),
    ("spacing-too-long", lambda: ops.hough_votes(emb(), mask(), (1.0, 1.0, 1.0)), ValueError, "spacing"),
    ("spacing-too-short", lambda: ops.hough_votes(emb((3, 4, 5)), mask((3, 4, 5)), (1.0, 1.0)), ValueError, "spacing"),
    ("spacing-str", lambda: ops.hough_votes(emb(), mask(), "xy"), TypeError, "spacing"),
    ("spacing-bool", lambda: ops.hough_votes(emb(), mask(), True), TypeError, "spacing"),
    ("peaks-spacing-zero", lambda: ops.find_peaks(votes(), 1.0, spacing=(1.0, 0.0)), ValueError, "spacing"),
    ("peaks-spacing-len", lambda: ops.find_peaks(votes(), 1.0, spacing=(1.0,)), ValueError, "spacing"),
    ("assign-spacing-nan", lambda: ops.assign_to_centres(emb(), mask(), centres(), NAN), ValueError, "spacing"),
    ("opening-spacing-neg", lambda: ops.label_opening(labels(), 1.0, (-1.0, 1.0)), ValueError, "spacing"),
    ("opening-spacing-len", lambda: ops.label_opening(labels(), 1.0, (1.0, 1.0, 1.0)), ValueError, "spacing"),
    ("pipeline-spacing-len", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, (1.0,)), ValueError, "spacing"),
    # --- find_peaks
    ("votes-float", lambda: ops.find_peaks(votes(dtype=torch.float32), 1.0), TypeError, "votes"),
    ("votes-bool", lambda: ops.find_peaks(votes(dtype=torch.bool), 1.0), TypeError, "votes"),
    ("votes-numpy-float", lambda: ops.find_peaks(np.zeros((4, 4)), 1.0), TypeError, "votes"),
    ("votes-list", lambda: ops.find_peaks([[0, 1]], 1.0), TypeError, "votes"),
    ("votes-1d", lambda: ops.find_peaks(votes((8,)), 1.0), ValueError, "votes"),
    ("votes-4d", lambda: ops.find_peaks(votes((1, 2, 3, 4)), 1.0), ValueError, "votes"),
    ("min_distance-negative", lambda: ops.find_peaks(votes(), -1.0), ValueError, "min_distance"),
    ("min_distance-nan", lambda: ops.find_peaks(votes(), NAN), ValueError, "min_distance"),
    ("min_distance-inf", lambda: ops.find_peaks(votes(), math.inf), ValueError, "min_distance"),
    ("min_distance-str", lambda: ops.find_peaks(votes(), "2"), TypeError, "min_distance"),
    ("min_distance-none", lambda: ops.find_peaks(votes(), None), TypeError, "min_distance"),
    ("min_votes-negative", lambda: ops.find_peaks(votes(), 1.0, -1), ValueError, "min_votes"),
    ("min_votes-float", lambda: ops.find_peaks(votes(), 1.0, 1.5), TypeError, "min_votes"),
    ("min_votes-bool", lambda: ops.find_peaks(votes(), 1.0, True), TypeError, "min_votes"),
    ("smooth_radius-negative", lambda: ops.find_peaks(votes(), 1.0, 1, None, -1), ValueError, "smooth_radius"),
    ("smooth_radius-float", lambda: ops.find_peaks(votes(), 1.0, 1, None, 1.0), TypeError, "smooth_radius"),
    # --- assign_to_centres
    ("centres-float", lambda: ops.assign_to_centres(emb(), mask(), centres(dtype=torch.float32)), TypeError, "centres"),
    ("centres-list", lambda: ops.assign_to_centres(emb(), mask(), [[1, 2]]), TypeError, "centres"),
    ("centres-1d", lambda: ops.assign_to_centres(emb(), mask(), torch.tensor([1, 2])), ValueError, "centres"),
    ("centres-3d", lambda: ops.assign_to_centres(emb(), mask(), torch.zeros((1, 1, 2), dtype=torch.int64)), ValueError, "centres"),
    ("centres-wrong-ndim", lambda: ops.assign_to_centres(emb(), mask(), centres(((1, 2, 3),))), ValueError, "centres"),
    ("centres-transposed", lambda: ops.assign_to_centres(emb((4, 5, 6)), mask((4, 5, 6)), centres(((1, 2, 3), (0, 1, 2))).T), ValueError, "centres"),
    ("centres-negative", lambda: ops.assign_to_centres(emb(), mask(), centres(((1, 2), (-1, 0)))), ValueError, "centres"),
    ("centres-negative-last", lambda: ops.assign_to_centres(emb(), mask(), centres(((0, -1),))), ValueError, "centres"),
    ("centres-too-big-0", lambda: ops.assign_to_centres(emb(), mask(), centres(((8, 0),))), ValueError, "centres"),
    ("centres-too-big-1", lambda: ops.assign_to_centres(emb(), mask(), centres(((0, 9),))), ValueError, "centres"),
    ("centres-too-big-3d", lambda: ops.assign_to_centres(emb((3, 4, 5)), mask((3, 4, 5)), centres(((0, 0, 0), (2, 3, 5)))), ValueError, "centres"),
    ("centres-too-big-empty-mask", lambda: ops.assign_to_centres(emb(), mask().logical_not(), centres(((99, 0),))), ValueError, "centres"),
    ("max_distance-negative", lambda: ops.assign_to_centres(emb(), mask(), centres(), None, -1.0), ValueError, "max_distance"),
    ("max_distance-nan", lambda: ops.assign_to_centres(emb(), mask(), centres(), None, NAN), ValueError, "max_distance"),
    ("max_distance-str", lambda: ops.assign_to_centres(emb(), mask(), centres(), None, "3"), TypeError, "max_distance"),
    # --- label_opening
    ("labels-float", lambda: ops.label_opening(labels(dtype=torch.float32), 1.0), TypeError, "labels"),
    ("labels-bool", lambda: ops.label_opening(labels(dtype=torch.bool), 1.0), TypeError, "labels"),
    ("labels-numpy-float", lambda: ops.label_opening(np.zeros((4, 4), np.float64), 1.0), TypeError, "labels"),
    ("labels-list", lambda: ops.label_opening([[1, 2]], 1.0), TypeError, "labels"),
    ("labels-1d", lambda: ops.label_opening(labels((8,)), 1.0), ValueError, "labels"),
    ("labels-4d", lambda: ops.label_opening(labels((1, 2, 3, 4)), 1.0), ValueError, "labels"),
    ("labels-uint64-huge", lambda: ops.label_opening(np.full((3, 3), 2**64 - 1, np.uint64), 1.0), ValueError, "labels"),
    ("radius-zero", lambda: ops.label_opening(labels(), 0.0), ValueError, "radius"),
    ("radius-negative", lambda: ops.label_opening(labels(), -2.0), ValueError, "radius"),
    ("radius-nan", lambda: ops.label_opening(labels(), NAN), ValueError, "radius"),
    ("radius-inf", lambda: ops.label_opening(labels(), math.inf), ValueError, "radius"),
    ("radius-none", lambda: ops.label_opening(labels(), None), TypeError, "radius"),
    # --- embeddings_to_labels parameters
    ("pipeline-min_distance-negative", lambda: ops.embeddings_to_labels(emb(), mask(), -0.5), ValueError, "min_distance"),
    ("pipeline-min_distance-nan", lambda: ops.embeddings_to_labels(emb(), mask(), NAN), ValueError, "min_distance"),
    ("pipeline-min_votes-negative", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, min_votes=-1), ValueError, "min_votes"),
    ("pipeline-smooth_radius-negative", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, smooth_radius=-2), ValueError, "smooth_radius"),
    ("pipeline-max_distance-negative", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, max_distance=-1.0), ValueError, "max_distance"),
    ("pipeline-opening_radius-zero", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, opening_radius=0.0), ValueError, "opening_radius"),
    ("pipeline-opening_radius-nan", lambda: ops.embeddings_to_labels(emb(), mask(), 1.0, opening_radius=NAN), ValueError, "opening_radius"),
    # --- devices: a tensor on another device (meta stands in for a second device without CUDA)
    ("device-mask", lambda: ops.hough_votes(emb(), mask().to("meta")), ValueError, "mask"),
    ("device-embeddings-meta", lambda: ops.hough_votes(emb().to("meta"), mask().to("meta")), ValueError, "embeddings"),
    ("device-centres", lambda: ops.assign_to_centres(emb(), mask(), centres().to("meta")), ValueError, "centres"),
    ("device-votes-meta", lambda: ops.find_peaks(votes().to("meta"), 1.0), ValueError, "votes"),
    ("device-labels-meta", lambda: ops.label_opening(labels().to("meta"), 1.0), ValueError, "labels"),
    ("device-pipeline-mask", lambda: ops.embeddings_to_labels(emb(), mask().to("meta"), 1.0), ValueError, "mask"),
]


@pytest.mark.parametrize("call,exc,argname", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_naming_the_argument(call, exc, argname):
    with pytest.raises(exc, match=rf"\b{argname}\b") as info:
        call()
    # The message starts with the argument's name (the ops' convention: "name: expected ...").
    assert str(info.value).startswith(f"{argname}:"), str(info.value)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0, 3)])
def test_centres_out_of_range_for_zero_size_image(shape):
    with pytest.raises(ValueError, match="centres"):
        ops.assign_to_centres(emb(shape), mask(shape), torch.zeros((1, len(shape)), dtype=torch.int64))


def test_error_messages_say_what_was_given():
    with pytest.raises(ValueError) as info:
        ops.hough_votes(emb(), mask((8, 8)))
    assert "(8, 9)" in str(info.value) and "(8, 8)" in str(info.value)
    with pytest.raises(ValueError) as info:
        ops.assign_to_centres(emb(), mask(), centres(((1, 2), (7, 9))))
    assert "[7, 9]" in str(info.value)
    with pytest.raises(TypeError) as info:
        ops.find_peaks(votes(dtype=torch.float64), 1.0)
    assert "float64" in str(info.value)


def test_valid_boundary_values_are_accepted():
    # The limits of the checks above are inclusive where the docs say so.
    v = votes()
    v[3, 3] = 2
    assert ops.find_peaks(v, 0.0, 0).shape == (72, 2)  # min_distance 0, min_votes 0
    ops.assign_to_centres(emb(), mask(), centres(((7, 8), (0, 0))), None, 0.0)  # corners, max_distance 0
    ops.assign_to_centres(emb(), mask(), centres(), None, math.inf)
    ops.label_opening(labels(), 1e-9)
    ops.hough_votes(emb(), mask(), np.array([0.5, 2.0]))  # array spacing
    ops.hough_votes(emb(), mask(), torch.tensor([0.5, 2.0]))
    ops.find_peaks(v, np.float32(1.5), np.int64(1), None, np.int32(1))  # NumPy scalars


# ---- builds without CUDA -------------------------------------------------------------------------


def test_cuda_not_built_error_is_a_value_error():
    assert issubclass(ops.CudaNotBuiltError, ValueError)
    assert ops.CudaNotBuiltError is _launch.CudaNotBuiltError


def test_launching_on_cuda_without_cuda_kernels_raises(monkeypatch):
    monkeypatch.setattr(_launch, "HAS_CUDA", False)
    with pytest.raises(ops.CudaNotBuiltError, match="CUDA"):
        _launch._cuda(torch.zeros(1))  # stand-in: the check happens before the tensor is touched


def test_cpu_ops_do_not_need_cuda(monkeypatch):
    monkeypatch.setattr(_launch, "HAS_CUDA", False)
    e = torch.zeros((2, 4, 4))
    e[0], e[1] = 1.0, 2.0
    labels = ops.embeddings_to_labels(e, torch.ones((4, 4), dtype=torch.bool), 1.0, opening_radius=1.0)
    assert labels.unique().tolist() == [1]


def test_has_cuda_flag_is_a_bool():
    assert isinstance(rdcnet_ext.has_cuda, bool)
    assert rdcnet_ext.has_cuda == _launch.HAS_CUDA


def test_import_and_cpu_ops_with_no_visible_gpu(tmp_path):
    # A CUDA build must import and run its CPU paths where no GPU can be used.
    code = (
        "import torch, numpy as np, rdcnet_ext\n"
        "from rdcnet_ext import ops\n"
        "assert not torch.cuda.is_available()\n"
        "e = np.zeros((2, 5, 6), np.float32); e[0], e[1] = 2.0, 3.0\n"
        "labels = ops.embeddings_to_labels(e, np.ones((5, 6), bool), 1.0, opening_radius=1.0)\n"
        "assert labels.dtype == np.int32 and (labels == 1).all(), labels\n"
        "print('ok', rdcnet_ext.has_cuda)\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    # cwd outside the repository: `python -c` would otherwise import the unbuilt source tree.
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


# ---- every numeric argument of every op x awkward values: a clear error, never pybind11's --------


def _ssdc_call(**kw):
    args = dict(dilations=[1, 2], groups=2, negative_slope=0.3)
    args.update(kw)
    x = torch.zeros((1, 4, 5, 6))
    return ops.ssdc(x, torch.zeros((4, 2, 3, 3)), None, torch.zeros((4, 4, 1, 1)), None, **args)


# op -> (call with keyword overrides, {argument: kind})
NUMERIC_ARGS = {
    "hough_votes": (lambda **kw: ops.hough_votes(emb(), mask(), **kw), {"spacing": "spacing"}),
    "find_peaks": (lambda **kw: ops.find_peaks(votes(), **{"min_distance": 1.0, **kw}),
                   {"min_distance": "distance", "min_votes": "count", "spacing": "spacing", "smooth_radius": "count"}),
    "assign_to_centres": (lambda **kw: ops.assign_to_centres(emb(), mask(), centres(), **kw),
                          {"spacing": "spacing", "max_distance": "optional_distance"}),
    "label_opening": (lambda **kw: ops.label_opening(labels(), **{"radius": 1.0, **kw}),
                      {"radius": "radius", "spacing": "spacing"}),
    "embeddings_to_labels": (lambda **kw: ops.embeddings_to_labels(emb(), mask(), **{"min_distance": 1.0, **kw}),
                             {"min_distance": "distance", "spacing": "spacing", "min_votes": "count",
                              "smooth_radius": "count", "max_distance": "optional_distance",
                              "opening_radius": "optional_radius"}),
    "ssdc": (_ssdc_call, {"dilations": "dilations", "groups": "groups", "negative_slope": "slope"}),
}

_HUGE_INT = 10**400  # beyond float64's range: float() raises OverflowError
_COMMON_BAD = [  # for every kind: (label, value, exception)
    ("bool", True, TypeError), ("numpy-bool", np.bool_(True), TypeError), ("str", "1", TypeError),
    ("list-str", ["1"], TypeError), ("complex", 1j, TypeError), ("object", object(), TypeError),
]
BAD_VALUES = {
    "distance": [("nan", NAN, ValueError), ("inf", math.inf, ValueError), ("-inf", -math.inf, ValueError),
                 ("negative", -1.0, ValueError), ("huge-int", _HUGE_INT, ValueError),
                 ("numpy-nan", np.float32("nan"), ValueError), ("none", None, TypeError)],
    "optional_distance": [("nan", NAN, ValueError), ("negative", -1e-300, ValueError),
                          ("huge-int", _HUGE_INT, ValueError), ("numpy-negative", np.float64(-2.0), ValueError)],
    "radius": [("zero", 0.0, ValueError), ("nan", NAN, ValueError), ("inf", math.inf, ValueError),
               ("negative", -1.0, ValueError), ("huge-int", _HUGE_INT, ValueError), ("none", None, TypeError),
               ("far-beyond-image", 1e5, ValueError), ("beyond-image-huge", 1e300, ValueError)],
    "optional_radius": [("zero", 0, ValueError), ("nan", NAN, ValueError), ("huge-int", _HUGE_INT, ValueError),
                        ("far-beyond-image", 1e5, ValueError)],
    "count": [("negative", -1, ValueError), ("int64-overflow", 2**63, ValueError), ("huge", 2**70, ValueError),
              ("numpy-uint64-max", np.uint64(2**64 - 1), ValueError), ("numpy-negative", np.int8(-3), ValueError),
              ("float", 1.0, TypeError), ("numpy-float", np.float64(2.0), TypeError), ("none", None, TypeError)],
    "spacing": [("zero", 0.0, ValueError), ("negative", -1.0, ValueError), ("nan", NAN, ValueError),
                ("inf", math.inf, ValueError), ("tiny", 1e-300, ValueError), ("subnormal", 5e-324, ValueError),
                ("huge", 1e300, ValueError), ("huge-int", _HUGE_INT, ValueError),
                ("huge-int-in-list", [1.0, _HUGE_INT], ValueError), ("bool-in-list", [True, 1.0], TypeError),
                ("numpy-bool-array", np.array([True, True]), TypeError), ("nan-array", np.array([NAN, 1.0]), ValueError),
                ("none-in-list", [None, 1.0], TypeError)],
    "dilations": [("zero", [0], ValueError), ("negative", [1, -2], ValueError), ("int32-overflow", [2**31], ValueError),
                  ("huge", [2**70], ValueError), ("numpy-huge", np.array([2**40]), ValueError),
                  ("float", [1.5], TypeError), ("bool-list", [True], TypeError), ("none", None, TypeError)],
    "groups": [("zero", 0, ValueError), ("negative", -2, ValueError), ("huge", 2**70, ValueError),
               ("more-than-channels", 8, ValueError), ("float", 2.0, TypeError), ("none", None, TypeError)],
    "slope": [("nan", NAN, ValueError), ("inf", math.inf, ValueError), ("huge-int", _HUGE_INT, ValueError),
              ("none", None, TypeError)],
}
NUMERIC_CASES = [
    (f"{op}-{arg}-{label}", op, arg, value, exc)
    for op, (_, kinds) in NUMERIC_ARGS.items()
    for arg, kind in kinds.items()
    for label, value, exc in BAD_VALUES[kind] + [c for c in _COMMON_BAD if not (kind == "dilations" and c[0] == "list-str")]
]
NUMERIC_CASES += [  # a list of strings is a sequence of non-integers for dilations
    ("ssdc-dilations-list-str", "ssdc", "dilations", ["1"], TypeError),
]
NUMERIC_CASES = list({c[0]: c for c in NUMERIC_CASES}.values())


@pytest.mark.parametrize("op,arg,value,exc", [c[1:] for c in NUMERIC_CASES], ids=[c[0] for c in NUMERIC_CASES])
def test_bad_numeric_arguments_raise_a_clear_error(op, arg, value, exc):
    call, _ = NUMERIC_ARGS[op]
    with pytest.raises((TypeError, ValueError)) as info:
        call(**{arg: value})
    message = str(info.value)
    assert "incompatible function arguments" not in message, message
    assert type(info.value) is exc, f"{type(info.value).__name__}: {message}"
    # Named first ("name: expected ..."); a ball that is too big names the radius and the spacing.
    assert message.startswith(f"{arg}:") or (arg == "spacing" and "spacing" in message
                                              and message.startswith(("radius:", "opening_radius:"))), message


EXTREME_BUT_VALID = [  # (id, call): values at the edges of what is accepted run and equal the reference
    ("peaks-min_distance-1e30", lambda: (ops.find_peaks(votes(), 1e30, 0), torch.tensor([[0, 0]]))),
    ("peaks-spacing-1e-100", lambda: (ops.find_peaks(votes(), 1.0, 0, 1e-100), torch.tensor([[0, 0]]))),
    ("peaks-min_votes-int64-max", lambda: (ops.find_peaks(votes(), 1.0, 2**63 - 1), torch.zeros((0, 2), dtype=torch.int64))),
    ("peaks-smooth_radius-2**62", lambda: (ops.find_peaks(votes(), 1.0, 0, None, np.int64(2**62)), torch.tensor([[0, 0]]))),
    ("assign-max_distance-1e308", lambda: (ops.assign_to_centres(emb(), mask(), centres(), None, 1.7e308),
                                           torch.ones((8, 9), dtype=torch.int32))),
    ("assign-spacing-1e100", lambda: (ops.assign_to_centres(emb(), mask(), centres(), 1e100),
                                      torch.ones((8, 9), dtype=torch.int32))),
    ("assign-spacing-1e-100", lambda: (ops.assign_to_centres(emb(), mask(), centres(((1, 2), (0, 0))), 1e-100),
                                       torch.full((8, 9), 2, dtype=torch.int32))),
    ("opening-radius-1e-300", lambda: (ops.label_opening(labels() + 1, 1e-300), labels() + 1)),
    ("opening-spacing-1e100", lambda: (ops.label_opening(labels() + 1, 1.0, 1e100), labels() + 1)),
    ("ssdc-dilation-int32-max", lambda: (_ssdc_call(dilations=[1, 2**31 - 1]), torch.zeros((1, 4, 5, 6)))),
]


@pytest.mark.parametrize("call", [c[1] for c in EXTREME_BUT_VALID], ids=[c[0] for c in EXTREME_BUT_VALID])
def test_extreme_but_valid_numbers_are_accepted(call):
    got, expected = call()
    assert torch.equal(got, expected), (got, expected)
