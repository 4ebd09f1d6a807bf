"""The Python API checks its arguments like the command line does (one set of rules, rdcnet._checks):
every public constructor and function raises ValueError/TypeError naming the argument for a bad
value, never another exception type, and never accepts a bad value silently.

Constructors are fuzzed with hypothesis against an independent statement of what each argument
accepts (the validity predicates below); functions that do real work (predict, train,
predict_large, load_checkpoint) get a table of bad values and must refuse each before any work."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdcnet
from rdcnet import PostprocessConfig, RDCNet, TrainConfig
from rdcnet.data import nuclei_2d

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT32_MAX = 2**31 - 1

# Anything a user might pass by mistake, and the values in between.
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.lists(st.integers(-2, 50), max_size=4),
    st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True)),
    st.just(object()), st.just({"a": 1}), st.just(np.float32(2.0)), st.just(np.int64(3)))


def is_int(v, low, high=INT32_MAX) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    if isinstance(v, numbers.Integral):
        return low <= int(v) <= high
    return math.isfinite(float(v)) and float(v).is_integer() and low <= float(v) <= high


def is_number(v, low=-math.inf, high=math.inf, low_open=False, high_open=False) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        return False
    v = float(v)
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)


def per_axis(v, ndim, one) -> bool:
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return one(v)
    if isinstance(v, (list, tuple)):
        return len(v) in (1, ndim) and all(one(x) for x in v)
    return False


def is_spacing(v) -> bool:
    return is_number(v, 1e-100, 1e100)


# argument -> predicate of the values RDCNet(ndim=2, ...) must accept (all others refused)
RDCNET_RULES = {
    "in_channels": lambda v: is_int(v, 1),
    "n_classes": lambda v: is_int(v, 2),
    "factor": lambda v: per_axis(v, 2, lambda x: is_int(x, 1, 4096)),
    "downsampling_channels": lambda v: is_int(v, 1),
    "groups": lambda v: is_int(v, 1),
    "channels_per_group": lambda v: is_int(v, 1),
    "dilations": lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(is_int(x, 1) for x in v),
    "iterations": lambda v: is_int(v, 1),
    "dropout": lambda v: is_number(v, 0.0, 1.0, high_open=True),
    "negative_slope": lambda v: is_number(v, 0.0, 1.0),
    "spacing": lambda v: v is None or per_axis(v, 2, is_spacing),
}
SMALL = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=2, groups=1, channels_per_group=2,
             dilations=(1,), iterations=1)
# Values that are valid but would build a huge network: capped for the test (the rule is the same).
BIG = {"in_channels", "n_classes", "downsampling_channels", "groups", "channels_per_group", "iterations"}

TRAIN_RULES = {
    "margin": lambda v: is_number(v, 0.0, low_open=True),
    "crop": lambda v: per_axis(v, 3, lambda x: is_int(x, 1)) or (isinstance(v, (list, tuple)) and len(v) == 2
                                                                  and all(is_int(x, 1) for x in v)),
    "epochs": lambda v: is_int(v, 0),
    "steps_per_epoch": lambda v: is_int(v, 1),
    "batch_size": lambda v: is_int(v, 1),
    "lr": lambda v: is_number(v, 0.0, low_open=True) and float(v) >= 1e-5,  # >= lr_min (1e-5 by default)
    "seed": lambda v: is_int(v, 0, 2**63 - 1),
    "tune_postprocess": lambda v: isinstance(v, (bool, np.bool_)),
    "mask_nonfinite": lambda v: isinstance(v, (bool, np.bool_)),
}
POST_RULES = {
    "margin": lambda v: is_number(v, 0.0, low_open=True),
    "min_distance": lambda v: v is None or is_number(v, 0.0, low_open=True),
    "min_votes": lambda v: is_int(v, 0),
    "smooth_radius": lambda v: is_int(v, 0),
    "max_distance": lambda v: v is None or is_number(v, 0.0, low_open=True),
    "opening_radius": lambda v: v is None or is_number(v, 0.0),
}


def check_against_rule(build, name, value, valid: bool):
    """``build()`` succeeds iff ``valid``; otherwise a ValueError/TypeError that names ``name``."""
    if valid:
        build()
        return
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert name in str(info.value), (name, value, str(info.value))


@pytest.mark.parametrize("name", sorted(RDCNET_RULES))
@SETTINGS
@given(value=ANYTHING)
def test_rdcnet_constructor(name, value):
    valid = RDCNET_RULES[name](value)
    if valid and (name in BIG and is_int(value, 9) or name == "factor" and per_axis(value, 2, lambda x: x > 16)):
        return  # valid, but too big to build here
    check_against_rule(lambda: RDCNet(**{**SMALL, name: value}), name, value, valid)


@pytest.mark.parametrize("name", sorted(TRAIN_RULES))
@SETTINGS
@given(value=ANYTHING)
def test_train_config(name, value):
    check_against_rule(lambda: TrainConfig(**{name: value}), name, value, TRAIN_RULES[name](value))


@pytest.mark.parametrize("name", sorted(POST_RULES))
@SETTINGS
@given(value=ANYTHING)
def test_postprocess_config(name, value):
    check_against_rule(lambda: PostprocessConfig(**{name: value}), name, value, POST_RULES[name](value))


@pytest.mark.parametrize("name,value", [
    ("ndim", 1), ("ndim", 2.5), ("ndim", "2"), ("ssdc_path", "fast"), ("ssdc_path", 3), ("fused", "yes"),
])
def test_rdcnet_constructor_table(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        RDCNet(**{**SMALL, name: value})


@pytest.mark.parametrize("name,value", [
    ("augment", "colour"), ("augment", 3), ("amp", "fp8"), ("device", 3), ("out_dir", None), ("out_dir", 3),
    ("postprocess", "default"), ("lr_min", -1.0), ("lr_min", float("nan")),
])
def test_train_config_table(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        TrainConfig(**{name: value})


# ---- functions that do work: a table of bad values, each refused before any work ---------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RDCNet(**SMALL).eval()


IMAGE = np.random.default_rng(0).random((24, 24)).astype(np.float32)
PREDICT_BAD = [
    ("model", {"model": "best.pt"}), ("model", {"model": torch.nn.Conv2d(1, 1, 1)}),
    ("image", {"image": None}), ("image", {"image": "image.tif"}), ("image", {"image": np.zeros((0, 24))}),
    ("image", {"image": np.zeros((24, 24), complex)}), ("image", {"image": np.zeros((2, 2, 2, 2, 2))}),
    ("image", {"image": np.array([["a", "b"]])}),
    ("postprocess", {"postprocess": "strict"}), ("postprocess", {"postprocess": {"min_votes": -1}}),
    ("postprocess", {"postprocess": {"window": 3}}),
    ("tile_shape", {"tile_shape": 0}), ("tile_shape", {"tile_shape": (float("nan"), 64)}),
    ("tile_shape", {"tile_shape": (64, 64, 64)}), ("tile_shape", {"tile_shape": "big"}),
    ("device", {"device": "gpu"}), ("device", {"device": 0.5}),
    ("iterations", {"iterations": 0}), ("iterations", {"iterations": float("inf")}), ("iterations", {"iterations": "2"}),
    ("return_output", {"return_output": "yes"}), ("progress", {"progress": None}),
]


@pytest.mark.parametrize("name,kwargs", PREDICT_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PREDICT_BAD)])
def test_predict_refuses(model, name, kwargs):
    args = {"model": model, "image": IMAGE, **kwargs}
    with pytest.raises((ValueError, TypeError)) as info:
        rdcnet.predict(**args)
    assert name in str(info.value), str(info.value)


def test_predict_accepts_what_the_rules_accept(model):
    for kwargs in ({}, {"postprocess": {"min_votes": 2}}, {"iterations": 2}, {"device": "cpu"},
                   {"tile_shape": 64}, {"image": torch.from_numpy(IMAGE).to(torch.bfloat16)},
                   {"image": (IMAGE * 1000).astype(np.uint16)}):
        labels = rdcnet.predict(**{"model": model, "image": IMAGE, **kwargs})
        assert labels.shape == IMAGE.shape and labels.dtype == np.int32


PAIRS = nuclei_2d(2, (32, 32), seed=0)
TRAIN_BAD = [
    ("model", {"model": "rdcnet"}),
    ("train_data", {"train_data": np.zeros((2, 32, 32))}), ("train_data", {"train_data": [PAIRS[0][0]]}),
    ("train_data", {"train_data": [(PAIRS[0][0],)]}), ("train_data", {"train_data": []}),
    ("train_data", {"train_data": [(PAIRS[0][0], PAIRS[0][1] + 0.5)]}),
    ("train_data", {"train_data": [(PAIRS[0][0], np.full((32, 32), np.nan))]}),
    ("train_data", {"train_data": [(PAIRS[0][0], PAIRS[0][1][:16])]}),
    ("train_data", {"train_data": [(None, PAIRS[0][1])]}),
    ("val_data", {"val_data": 5}),
    ("config", {"config": {"epochs": 1}}), ("resume", {"resume": "no"}),
    ("crop", {"config": TrainConfig(crop=(64, 64), epochs=1, steps_per_epoch=1, device="cpu")}),
    ("crop", {"config": TrainConfig(crop=(32, 32, 32), epochs=1, steps_per_epoch=1, device="cpu")}),
]


@pytest.mark.parametrize("name,kwargs", TRAIN_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TRAIN_BAD)])
def test_train_refuses_before_writing(tmp_path, model, name, kwargs):
    config = kwargs.pop("config", TrainConfig(crop=(32, 32), epochs=1, steps_per_epoch=1, device="cpu"))
    if isinstance(config, TrainConfig):
        config.out_dir = str(tmp_path / "run")
    args = {"model": RDCNet(**SMALL), "train_data": PAIRS[:1], "val_data": PAIRS[1:], "config": config,
            "progress": False, **kwargs}
    with pytest.raises((ValueError, TypeError)) as info:
        rdcnet.train(**args)
    assert name in str(info.value), str(info.value)
    assert not (tmp_path / "run").exists()


LARGE_BAD = [
    ("model", {"model": None}), ("image", {"image": 3}), ("out", {"out": "labels.png"}), ("out", {"out": 5}),
    ("postprocess", {"postprocess": 1}), ("chunks", {"chunks": (0, 32)}), ("chunks", {"chunks": "auto"}),
    ("chunks", {"chunks": (32, 32, 32)}), ("overlap", {"overlap": -1}), ("device", {"device": "tpu"}),
    ("iterations", {"iterations": -3}), ("spacing", {"spacing": (0.0, 1.0)}), ("spacing", {"spacing": float("nan")}),
    ("workdir", {"workdir": 7}), ("resume", {"resume": 1}), ("keep_workdir", {"keep_workdir": "no"}),
]


@pytest.mark.parametrize("name,kwargs", LARGE_BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LARGE_BAD)])
def test_predict_large_refuses_before_writing(tmp_path, model, name, kwargs, monkeypatch):
    pytest.importorskip("dask")
    from rdcnet import large

    monkeypatch.chdir(tmp_path)
    args = {"model": model, "image": IMAGE, "out": str(tmp_path / "labels.ome.zarr"), "progress": False, **kwargs}
    with pytest.raises((ValueError, TypeError)) as info:
        large.predict_large(**args)
    assert name in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,name", [({"path": 3}, "path"), ({"device": "gpu"}, "device"),
                                         ({"ssdc_path": "fastest"}, "ssdc_path")])
def test_load_checkpoint_refuses(tmp_path, model, kwargs, name):
    from rdcnet.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", model)
    args = {"path": tmp_path / "m.pt", **kwargs}
    with pytest.raises((ValueError, TypeError)) as info:
        rdcnet.load_checkpoint(**args)
    assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("margin", [0, -1.0, float("nan"), float("inf"), "5", None])
def test_loss_margin(margin):
    with pytest.raises((ValueError, TypeError), match="margin"):
        rdcnet.RDCNetLoss(margin)
