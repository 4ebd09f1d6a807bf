"""Self-configuring training (issue 17): the data fingerprint, the plan and its rules, the time
budget, resuming with a plan, option-free training from the command line, and the decoding tuned
on validation (foreground threshold, opening, test-time augmentation)."""

import importlib
import json
import math
import warnings

import numpy as np
import pytest
import torch

from rdcnet import cli, plan as P
from rdcnet.data import nuclei_2d, write_image, write_labels
from rdcnet.model import RDCNet, RDCNetOutput
from rdcnet.plan import Plan, fingerprint, parse_duration, plan_training, schedule
from rdcnet.postprocess import PostprocessConfig, foreground, labels_from_output
from rdcnet.predict import predict, predict_output, prepare_image
from rdcnet.train import TrainConfig, load_checkpoint

TINY_WIDTH = {"groups": 2, "channels_per_group": 4, "downsampling_channels": 4, "iterations": 1}


def discs(shape, centres, radius, spacing=None):
    """Labels 1..K: balls of physical ``radius`` around physical ``centres``."""
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    labels = np.zeros(shape, np.int32)
    for k, c in enumerate(centres, start=1):
        labels[((grid - np.asarray(c, float)) ** 2).sum(-1) <= radius ** 2] = k
    return labels


def disc_grid(shape, radius, gap=4.0, spacing=None):
    """Balls of ``radius`` on a regular grid (``gap`` between neighbours), in physical units."""
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    step = 2 * radius + gap
    axes = [np.arange(radius + 1, n * s - radius - 1, step) if n * s > 2 * radius + 2 else [n * s / 2]
            for n, s in zip(shape, spacing)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    return discs(shape, centres, radius, spacing)


# ---- the fingerprint ------------------------------------------------------------------------------


def test_fingerprint_2d_sizes_touching_and_intensity():
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:15] = 7          # touches 9 (shares a face)
    labels[5:15, 15:25] = 9
    labels[25:35, 40:50] = 1000000  # alone; any ids
    image = np.where(labels > 0, 2.0, 0.5).astype(np.float32)
    fp = fingerprint([(image, labels)])
    assert (fp.ndim, fp.channels, fp.n_images, fp.n_objects, fp.empty_images) == (2, 1, 1, 3, 0)
    assert fp.touching_fraction == pytest.approx(2 / 3) and fp.border_fraction == 0.0
    assert fp.diameter["median"] == pytest.approx(2 * math.sqrt(100 / math.pi))
    assert fp.extent["median"] == [10.0, 10.0] and fp.extent_px() == [10.0, 10.0]
    assert fp.foreground_fraction == pytest.approx(300 / 2400) and fp.undefined_fraction == 0.0
    assert fp.intensity[0]["objects"] == 2.0 and fp.intensity[0]["background"] == 0.5
    assert "3 (per image" in fp.table() and "67% of the objects" in fp.table()


def test_fingerprint_3d_anisotropic_in_physical_units():
    labels = np.zeros((8, 30, 30), np.int32)
    labels[2:5, 5:15, 5:15] = 1  # 3 × 10 × 10 voxels of 2 × 0.5 × 0.5
    fp = fingerprint([(None, labels)], spacing=(2.0, 0.5, 0.5))
    assert fp.extent["median"] == [6.0, 5.0, 5.0] and fp.extent_px() == [3.0, 10.0, 10.0]
    assert fp.diameter["median"] == pytest.approx(2 * (3 * 150.0 / (4 * math.pi)) ** (1 / 3))
    assert fp.anisotropy == 4.0 and fp.intensity is None and fp.volume_px["median"] == 300


def test_fingerprint_empty_images_one_object_and_undefined_labels():
    empty = np.zeros((20, 20), np.int32)
    one = np.zeros((20, 20), np.int32)
    one[2:6, 2:6] = 3
    fp = fingerprint([(None, empty), (None, one)])
    assert (fp.n_objects, fp.empty_images, fp.touching_fraction) == (1, 1, 0.0)
    assert fp.objects_per_image == {"min": 0.0, "median": 0.5, "max": 1.0}
    nothing = fingerprint([(None, empty)])
    assert nothing.n_objects == 0 and nothing.diameter is None and nothing.extent_px() is None
    assert "none in any image" in nothing.table()
    # Undefined pixels (< 0) are no object, no background, and do not make neighbours touch.
    lab = np.zeros((10, 21), np.int32)
    lab[2:8, 2:10] = 1
    lab[:, 10] = -1
    lab[2:8, 11:19] = 2
    fp = fingerprint([(np.ones((10, 21)), lab)])
    assert fp.n_objects == 2 and fp.touching_fraction == 0.0
    assert fp.undefined_fraction == pytest.approx(10 / 210) and fp.foreground_fraction == pytest.approx(96 / 200)


def test_fingerprint_rgb_and_bad_input():
    lab = disc_grid((32, 32), 4)
    fp = fingerprint([(np.random.default_rng(0).random((32, 32, 3)), lab)])
    assert fp.channels == 3 and len(fp.intensity) == 3
    with pytest.raises(ValueError, match="pairs: expected at least one"):
        fingerprint([])
    with pytest.raises(TypeError, match=r"pairs\[0\]: expected integer labels"):
        fingerprint([(None, lab.astype(float))])
    with pytest.raises(ValueError, match=r"pairs\[1\]: labels are 3D"):
        fingerprint([(None, lab), (None, lab[None])])
    with pytest.raises(ValueError, match="spacing: expected 2 positive"):
        fingerprint([(None, lab)], spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"pairs\[0\]: image shape"):
        fingerprint([(np.zeros((5, 5)), lab)])
    with pytest.raises(TypeError, match="pairs: expected a sequence"):
        fingerprint("images/")


# ---- the planning rules ---------------------------------------------------------------------------

NO_TIME = {"epochs": 1, "steps_per_epoch": 1}  # no time budget: nothing measured


@pytest.mark.parametrize("name, shape, radius, spacing, factor, margin", [
    ("small 2D objects", (128, 128), 3.0, None, [2, 2], (1.9, 2.1)),   # 1 would keep 4 coarse px; margin >= 2 px
    ("nuclei 2D", (256, 256), 8.0, None, [4, 4], (5.0, 5.6)),    # 8 would leave 2 coarse px
    ("big 2D objects", (512, 512), 22.0, None, [8, 8], (14, 16)),
    ("anisotropic 3D", (24, 160, 160), 3.5, (2.0, 0.26, 0.26), [1, 4, 4], (2.2, 2.4)),
    ("big anisotropic 3D", (24, 256, 256), 6.0, (2.0, 0.26, 0.26), [1, 8, 8], (3.8, 4.2)),
    ("isotropic 3D", (64, 64, 64), 6.0, None, [2, 2, 2], (3.8, 4.2)),  # 13 px: 4 would leave 3 coarse px
])
def test_plan_rules_follow_object_size(name, shape, radius, spacing, factor, margin):
    fp = fingerprint([(None, disc_grid(shape, radius, spacing=spacing))], spacing=spacing)
    plan = plan_training(fp, NO_TIME, device="cpu")
    v, src = plan.values, plan.sources
    assert v["factor"] == factor, (name, fp.extent_px())
    assert margin[0] <= v["margin"] <= margin[1], (name, v["margin"])
    assert all(c % f == 0 and f <= c <= n for c, f, n in zip(v["crop"], v["factor"], shape)), v["crop"]
    assert all(c >= min(6 * e, n // f * f) - 8 for c, e, n, f in zip(v["crop"], fp.extent_px(), shape, factor))
    assert v["dilations"] == [2 ** k for k in range(len(v["dilations"]))] and max(v["dilations"]) <= 8
    assert min(c // f for c, f in zip(v["crop"], v["factor"])) >= 4 * max(v["dilations"])
    assert {src[k] for k in ("factor", "margin", "crop", "dilations", "min_votes")} == {"data"}
    assert src["epochs"] == "option" and v["time"] is None
    if len(shape) == 3 and spacing:
        assert v["opening_radius"] == pytest.approx(0.52)  # the paper's 0.5 µm in 3D
    elif len(shape) == 2:
        assert v["opening_radius"] is None


@pytest.mark.parametrize("native,precision,amp", [("1", "bf16", "bf16"), ("0", "fp32", None)])
def test_precision_is_planned_from_the_hardware(monkeypatch, native, precision, amp):
    monkeypatch.setenv("RDCNET_CPU_BF16", native)  # as on a CPU with / without AVX512-BF16
    plan = plan_training(fingerprint([(None, disc_grid((256, 256), 6))]), NO_TIME, device="cpu")
    assert plan.values["precision"] == precision and plan.sources["precision"] == "machine"
    assert plan.amp() == amp
    explicit = plan_training(fingerprint([(None, disc_grid((256, 256), 6))]), dict(NO_TIME, precision="fp32"),
                             device="cpu")
    assert explicit.amp() is None and explicit.sources["precision"] == "option"


def test_bigger_objects_get_bigger_settings():
    plans = [plan_training(fingerprint([(None, disc_grid((256, 256), r))]), NO_TIME, device="cpu") for r in (3, 9, 20)]
    for key in ("margin", "min_votes"):
        values = [p.values[key] for p in plans]
        assert values == sorted(values) and values[0] < values[-1], (key, values)
    assert [p.values["factor"][0] for p in plans] == [2, 4, 8]


def test_options_override_the_plan_and_are_recorded():
    fp = fingerprint([(None, disc_grid((256, 256), 8))])
    plan = plan_training(fp, dict(NO_TIME, margin=7.0, factor=(2, 2), min_votes=9, groups=3), device="cpu")
    v, src = plan.values, plan.sources
    assert (v["margin"], v["factor"], v["min_votes"], v["groups"]) == (7.0, [2, 2], 9, 3)
    assert all(src[k] == "option" for k in ("margin", "factor", "min_votes", "groups"))
    assert all(c % 2 == 0 for c in v["crop"]) and src["crop"] == "data"
    assert src["channels_per_group"] == "machine" and src["iterations"] == "default"
    assert plan.postprocess().margin == 7.0 and plan.train_config("o", device="cpu").postprocess.min_votes == 9
    with pytest.raises(TypeError, match="unknown setting"):
        plan_training(fp, {"margins": 3.0}, device="cpu")
    with pytest.raises(ValueError, match="factor: expected 2 values"):
        plan_training(fp, dict(NO_TIME, factor=(1, 2, 2)), device="cpu")
    with pytest.raises(ValueError, match="time: a time budget plans"):
        plan_training(fp, dict(NO_TIME, time="1m"), device="cpu")


def test_no_objects_fall_back_to_defaults():
    with pytest.warns(UserWarning, match="no objects"):
        plan = plan_training(fingerprint([(None, np.zeros((300, 300), np.int32))]), NO_TIME, device="cpu")
    assert plan.values["factor"] == [4, 4] and plan.values["margin"] == 5.0 and plan.values["crop"] == [256, 256]
    assert plan.sources["margin"] == "default"


# ---- the time budget --------------------------------------------------------------------------------


class FakeClock:
    """A clock that advances ``tick`` seconds per reading: every timed step lasts one tick."""

    def __init__(self, tick=0.1):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


@pytest.fixture(scope="module")
def small_pairs():
    return nuclei_2d(2, (48, 48), seed=4)


def test_time_budget_with_a_mocked_clock(small_pairs):
    fp = fingerprint(small_pairs)
    options = dict(TINY_WIDTH, dilations=[1], crop=[32, 32])
    # Real training steps, timed by the mocked clock: one tick per step.
    plan = plan_training(fp, dict(options, time="1m"), device="cpu", sample=P.crop_sampler(small_pairs),
                         clock=FakeClock(0.1))
    assert plan.machine["step_seconds"] == pytest.approx(0.1)
    assert plan.sources["epochs"] == plan.sources["steps_per_epoch"] == "machine"
    measured = {k: plan.machine[k] for k in ("step_seconds", "forward_seconds_per_pixel")}
    totals = {}
    for budget in ("1m", "10m", "100m"):
        plan = plan_training(fp, dict(options, time=budget), device="cpu", measure=lambda v, d: measured,
                             clock=FakeClock(0.1), val_pixels=2 * 48 * 48)
        totals[budget] = plan.values["epochs"] * plan.values["steps_per_epoch"]
        assert plan.machine["planned_seconds"] <= parse_duration(budget)
    assert 8 < totals["10m"] / totals["1m"] < 12 and 8 < totals["100m"] / totals["10m"] < 12, totals
    with pytest.warns(UserWarning, match="too short"):
        tiny = plan_training(fp, dict(options, time=0.01), device="cpu", measure=lambda v, d: measured,
                             clock=FakeClock(0.1))
    assert tiny.values["epochs"] == 1 and tiny.values["steps_per_epoch"] == 1  # never zero


def test_schedule_rules():
    assert schedule(0, 1.0, 0.0) == (1, 1)
    epochs, steps = schedule(1000, 0.1, 1.0)
    assert epochs == 20 and steps == int((1000 - 20) / 2)
    epochs, steps = schedule(1000, 0.1, 20.0)  # costly validation: at most 10% of the time
    assert epochs * 20.0 <= 100 and steps >= 25
    assert schedule(100, 0.1, 0.0, epochs=4) == (4, 250)
    assert schedule(100, 0.1, 0.0, steps=100) == (10, 100)


def test_narrower_models_for_a_short_budget(small_pairs):
    calls = []

    def measure(values, device):  # the narrower, the faster: 8×16 at 1 s, 4×16 at 0.5 s, 4×8 at 0.45 s
        calls.append((values["groups"], values["channels_per_group"]))
        seconds = {(8, 16): 1.0, (4, 16): 0.5, (4, 8): 0.45}[calls[-1]]
        return {"step_seconds": seconds, "forward_seconds_per_pixel": 1e-7}

    fp = fingerprint(small_pairs)
    plan = plan_training(fp, {"time": "10m"}, device="cpu", measure=measure)
    assert calls == [(8, 16), (4, 16), (4, 8)]
    assert (plan.values["groups"], plan.values["channels_per_group"]) == (4, 16)  # 4×8 is hardly faster
    assert plan.machine["step_seconds"] == 0.5 and plan.reasons["groups"] == "CPU budget"
    calls.clear()
    plan = plan_training(fp, {"time": "10h"}, device="cpu", measure=measure)
    assert calls == [(8, 16)] and plan.values["groups"] == 8


def test_factor_keeps_4_coarse_px_unless_the_budget_is_starved():
    """The factor keeps >= 4 coarse px across a median object (2D, 75 s: 2 beat 4 at 12 px, 4 beat
    8 at 24 px), at least 2 where that keeps 2 (6 px: 2 beat 1); but where the budget allows
    fewer than 750 steps, the factor keeping 2 coarse px if it gets more (3D, 5 minutes)."""
    fp = fingerprint([(None, disc_grid((256, 256), 12))])  # median extent 25 px: 8 would leave 3 coarse px
    plan = plan_training(fp, NO_TIME, device="cpu")
    assert plan.values["factor"] == [4, 4] and ">= 4 coarse px" in plan.reasons["factor"]
    twelve = plan_training(fingerprint([(None, disc_grid((256, 256), 6))]), NO_TIME, device="cpu")
    assert twelve.values["factor"] == [2, 2]  # 13 px
    small = plan_training(fingerprint([(None, disc_grid((128, 128), 2.5))]), NO_TIME, device="cpu")
    assert small.values["factor"] == [2, 2] and "factor 2 where that leaves >= 2" in small.reasons["factor"]
    tiny = plan_training(fingerprint([(None, disc_grid((128, 128), 1.0))]), NO_TIME, device="cpu")
    assert tiny.values["factor"] == [1, 1]  # 3 px: 2 would leave 1.5 coarse px
    big = plan_training(fingerprint([(None, disc_grid((256, 256), 22))]), NO_TIME, device="cpu")
    assert big.values["factor"] == [8, 8]

    def plan_with(seconds, budget, **options):
        factors = []

        def measure(values, device):
            factors.append(tuple(values["factor"]))
            return {"step_seconds": seconds[values["factor"][0]], "forward_seconds_per_pixel": 1e-8}

        return plan_training(fp, dict(options, time=budget), device="cpu", measure=measure), sorted(set(factors))

    plan, measured = plan_with({4: 0.1, 8: 0.05}, "10m")  # thousands of steps at 4: 8 is not tried
    assert measured == [(4, 4)] and plan.values["factor"] == [4, 4] and plan.sources["factor"] == "data"
    plan, measured = plan_with({4: 0.1, 8: 0.05}, "30s")  # under 750 at 4, twice as many at 8
    assert measured == [(4, 4), (8, 8)] and plan.values["factor"] == [8, 8]
    assert plan.sources["factor"] == "machine" and "would fit only" in plan.reasons["factor"]
    assert plan.machine["finer_factor"]["factor"] == [4, 4] and plan.machine["step_seconds"] == 0.05
    assert plan.values["epochs"] * plan.values["steps_per_epoch"] > plan.machine["finer_factor"]["steps"]
    plan, measured = plan_with({4: 0.1, 8: 0.2}, "30s")  # 8 no faster: 4 stays, re-planned for the time spent
    assert measured == [(4, 4), (8, 8)] and plan.values["factor"] == [4, 4] and plan.sources["factor"] == "data"
    assert plan.machine["coarser_factor"]["factor"] == [8, 8] and plan.machine["step_seconds"] == 0.1
    assert plan.machine["planned_seconds"] <= 30
    plan, measured = plan_with({4: 0.1, 8: 0.05}, "30s", factor=[4, 4])  # an explicit factor stays
    assert measured == [(4, 4)] and plan.sources["factor"] == "option"


def test_parse_duration():
    assert [parse_duration(t) for t in ("90s", "3m", "1.5h", "1h30m", " 2 m ")] == [90, 180, 5400, 5400, 120]
    assert parse_duration(12.5) == 12.5
    for bad in ("3", "m", "3 minutes", "-1m", "0s"):
        with pytest.raises(ValueError, match="time: expected a"):
            parse_duration(bad)
    with pytest.raises(TypeError, match="time"):
        parse_duration([3])


def test_the_epochs_that_fit_a_time_limit():
    from rdcnet.train import _Pace

    # (loop seconds, step seconds, steps, overhead per epoch, tuning reserve) → (epochs, last epoch's steps)
    assert _Pace(4.0, 4.0, 2).schedule(8.0, 1, 2, 4) == (2, 2)      # 4 s per epoch: one more fits
    assert _Pace(1.2, 1.2, 2).schedule(8.0, 1, 2, 4) == (7, 1)      # five more, and one step of a seventh
    assert _Pace(10.0, 10.0, 4).schedule(8.0, 2, 2, 4) == (2, 2)    # over the limit: no more
    assert _Pace(5.0, 4.0, 2, 1.0, 3.0).schedule(20.0, 1, 2, 10) == (3, 2)  # validation and tuning count
    # The overhead and reserve: none after the first epoch (an untrained model's validation), then the least seen.
    pace = _Pace().after_epoch(60.0, 5.0, 2, 55.0, 8000.0)
    assert (pace.overhead, pace.reserve, pace.epochs) == (0.0, 0.0, 1)
    assert pace.schedule(70.0, 1, 2, 4) == (3, 2)  # 5 s epochs; counting the first validation (55 s) would stop here
    pace = pace.after_epoch(9.0, 5.0, 2, 4.0, 30.0).after_epoch(12.0, 5.0, 2, 7.0, 20.0)
    assert (pace.overhead, pace.reserve, pace.epochs, pace.steps) == (4.0, 20.0, 3, 6)
    assert pace.loop_seconds == 81.0 and pace.step_seconds == 15.0
    assert _Pace(1.0, 1.0, 2).schedule(100.0, 1, 2, 4) == (8, 2)    # at most twice the planned epochs
    assert _Pace(0.0, 0.0, 2).schedule(8.0, 1, 2, 4) == (8, 2)      # (a clock that did not move)


def run_paced(tmp_path, name, step_seconds, monkeypatch, *, time_limit=8.0, stop_at=None, slower_after=None):
    """A tiny run of 4 planned epochs of 2 steps on a simulated clock that advances
    ``step_seconds`` per training step (validation takes no time; 5× that after ``slower_after``
    steps); ``stop_at``: interrupt at that step."""
    T = importlib.import_module("rdcnet.train")  # the module (rdcnet.train is also the function)
    clock = {"t": 0.0, "steps": 0, "updates": [], "logs": []}
    monkeypatch.setattr(T, "_clock", lambda: clock["t"])
    write_log = T._write_log

    def logging(out_dir, history, plot=True):
        clock["logs"].append((len(history), plot))
        write_log(out_dir, history, plot)

    monkeypatch.setattr(T, "_write_log", logging)

    def tick(update):
        slower = slower_after is not None and clock["steps"] >= slower_after
        clock["t"] += step_seconds * (5 if slower else 1)
        clock["steps"] += 1
        clock["updates"].append(update)
        if clock["steps"] == stop_at:
            raise KeyboardInterrupt

    pairs = nuclei_2d(2, (32, 32), seed=3)
    cfg = T.TrainConfig(out_dir=str(tmp_path / name), crop=(32, 32), epochs=4, steps_per_epoch=2, time_limit=time_limit,
                        tune_postprocess=False, device="cpu", augment="none")
    torch.manual_seed(0)
    model = RDCNet(2, 1, factor=4, **TINY_WIDTH)
    return T.train(model, pairs, pairs, cfg, progress=False, callback=tick), clock


def test_a_time_limited_run_follows_its_own_pace(tmp_path, monkeypatch):
    """With a time limit the epochs follow the run's pace (a mocked clock): a machine twice as
    slow as planned trains 2 epochs, a faster one 6 and one step of a 7th, each with the cosine
    ending at lr_min; an interrupted run resumes with the epochs it had counted and the seconds
    it had spent."""
    slow, clock = run_paced(tmp_path, "slow", 2.0, monkeypatch)  # 4 s per epoch: 2 fit in 8 s
    assert len(slow.history) == 2 and clock["t"] == 8.0
    assert slow.history[-1]["lr"] == pytest.approx(1e-5)
    assert clock["updates"][-1]["epochs"] == 2 and clock["updates"][-1]["steps"] == 4
    fast, clock = run_paced(tmp_path, "fast", 0.6, monkeypatch)  # 1.2 s per epoch: 6, then 1 step of a 7th
    assert len(fast.history) == 7 and clock["t"] == pytest.approx(7.8) and clock["steps"] == 13
    assert clock["updates"][-1]["steps"] == 13 and clock["updates"][-1]["epochs"] == 7
    assert fast.history[-1]["lr"] == pytest.approx(1e-5)
    assert fast.history[0]["lr"] > fast.history[1]["lr"] > fast.history[-1]["lr"]
    # A machine that slows down in epoch 3: the run stops after it, and training.png shows it.
    slowed, clock = run_paced(tmp_path, "slowed", 0.6, monkeypatch, slower_after=4)
    assert len(slowed.history) == 3 and clock["t"] == pytest.approx(8.4)
    assert clock["logs"][-1] == (3, True)
    untimed, _ = run_paced(tmp_path, "untimed", 2.0, monkeypatch, time_limit=None)
    assert len(untimed.history) == 4  # no limit: exactly the epochs asked for
    ckpt = torch.load(tmp_path / "fast" / "last.pt", weights_only=True)
    assert (ckpt["run_epochs"], ckpt["last_steps"]) == (7, 1) and ckpt["pace"]["loop_seconds"] == pytest.approx(7.8)
    assert ckpt["pace"]["steps"] == 13 and ckpt["pace"]["reserve"] == 0.0  # (no tuning in this run)
    assert ckpt["train_config"]["epochs"] == 4 and ckpt["train_config"]["time_limit"] == 8.0
    # Interrupted in its fourth epoch, resumed: the same epochs and the same weights.
    with pytest.raises(KeyboardInterrupt):
        run_paced(tmp_path, "resumed", 0.6, monkeypatch, stop_at=7)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 2
    resumed, _ = run_paced(tmp_path, "resumed", 0.6, monkeypatch)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6, 7]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in fast.history]
    with pytest.raises(ValueError, match="time_limit: expected a number > 0"):
        TrainConfig(time_limit=0)


def test_a_planned_run_gets_the_budget_as_its_time_limit():
    fp = fingerprint([(None, disc_grid((128, 128), 6))])
    speed = lambda v, d: {"step_seconds": 0.01, "forward_seconds_per_pixel": 0.0}  # noqa: E731
    plan = plan_training(fp, {"time": "1m"}, device="cpu", measure=speed)
    limit = plan.train_config("run").time_limit
    assert limit == pytest.approx(60 - plan.machine["planning_seconds"])  # the run estimates its tuning itself
    assert plan.machine["planned_seconds"] + plan.machine["tuning_seconds"] <= limit
    given = plan_training(fp, {"time": "1m", "epochs": 3}, device="cpu", measure=speed)
    assert given.train_config("run").time_limit is None  # explicit epochs are kept as given
    steps_given = plan_training(fp, {"time": "1m", "steps_per_epoch": 7}, device="cpu", measure=speed)
    assert steps_given.train_config("run").time_limit is not None
    assert plan_training(fp, NO_TIME, device="cpu").train_config("run").time_limit is None


def test_plan_json_round_trip_and_options(tmp_path):
    fp = fingerprint([(None, disc_grid((128, 128), 6))])
    plan = plan_training(fp, {"time": "1m"}, device="cpu",
                         measure=lambda v, d: {"step_seconds": 0.01, "forward_seconds_per_pixel": 0.0})
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again.to_dict() == json.loads(path.read_text()) == plan.to_dict()
    same = again.with_options({"margin": plan.values["margin"]})
    assert same.sources["margin"] == "data"  # an option equal to the plan changes nothing
    longer = again.with_options({"time": "2m", "margin": 9.0})
    assert longer.values["steps_per_epoch"] == plan.values["steps_per_epoch"]
    assert longer.values["epochs"] > plan.values["epochs"] and longer.sources["margin"] == "option"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an rdcnet plan"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="plan: no such file"):
        Plan.load(tmp_path / "none.json")


# ---- the command line ------------------------------------------------------------------------------


def write_folder(root, pairs):
    for split in ("images", "labels"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for i, (image, labels) in enumerate(pairs):
        write_image(root / "images" / f"n{i}.tif", image.astype(np.float32))
        write_labels(root / "labels" / f"n{i}.tif", labels)


def fixed_speed(monkeypatch, *seconds):
    """Mock the machine: the step time measurements return ``seconds`` in turn (the last repeats)."""
    calls = []

    def measure(values, ndim, in_channels, sample, device, **kw):
        calls.append(values)
        return {"step_seconds": seconds[min(len(calls), len(seconds)) - 1], "forward_seconds_per_pixel": 1e-7}

    monkeypatch.setattr(P, "measure_step_time", measure)
    return calls


def train_argv(tmp_path, *options, out="run"):
    return ["train", "--images", str(tmp_path / "data/images"), "--labels", str(tmp_path / "data/labels"),
            "--out", str(tmp_path / out), "--device", "cpu", *options]


def test_resume_keeps_the_plan(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "data", nuclei_2d(3, (40, 40), seed=5))
    calls = fixed_speed(monkeypatch, 0.4, 0.05)  # the second measurement would plan 8 times the steps
    argv = train_argv(tmp_path, "--time", "4s", "--groups", "2", "--channels", "4", "--downsampling-channels", "4",
                      "--iterations", "1", "--no-tune")
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "data fingerprint" in err and "training plan" in err and len(calls) == 1
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["sources"]["groups"] == "option" and saved["sources"]["margin"] == "data"
    assert saved["machine"]["step_seconds"] == 0.4
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["train_config"]["steps_per_epoch"] == saved["values"]["steps_per_epoch"]
    # The same command again: the saved plan, nothing measured, resumed.
    assert cli.main(argv) == 0
    assert "resuming from" in capsys.readouterr().err and len(calls) == 1
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["values"] == saved["values"]
    # A changed option is refused as before.
    assert cli.main(argv + ["--margin", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--margin was" in err and "9.0" in err
    # Another run reuses the plan explicitly: the same settings, nothing measured.
    other = train_argv(tmp_path, "--plan", str(tmp_path / "run" / "plan.json"), "--epochs", "1", "--steps", "1",
                       "--no-tune", out="other")
    assert cli.main(other) == 0 and len(calls) == 1
    reused = json.loads((tmp_path / "other" / "plan.json").read_text())
    assert reused["values"]["margin"] == saved["values"]["margin"] and reused["values"]["epochs"] == 1


def test_cli_trains_without_options(tmp_path, monkeypatch, capsys):
    """The option-free command (with the machine mocked, to keep the test short): every setting
    planned, the plan printed and saved, a usable model with tuned decoding."""
    write_folder(tmp_path / "data", nuclei_2d(3, (40, 40), seed=6))
    fixed_speed(monkeypatch, 0.5)
    monkeypatch.setattr(P, "WIDTHS", ((2, 4, 4), (2, 2, 2)))  # a machine this slow gets the narrowest models
    assert cli.main(train_argv(tmp_path, "--time", "3s")) == 0
    err = capsys.readouterr().err
    assert "training plan" in err and "validation F1@0.5" in err
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert set(saved["values"]) == set(P.PLANNED) and saved["sources"]["time"] == "option"
    assert saved["values"]["time"] == 3 and saved["sources"]["epochs"] == "machine"
    assert set(saved["sources"].values()) <= {"data", "machine", "option", "default"}
    model, post, ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert list(model.config.factor) == saved["values"]["factor"] and post.margin == saved["values"]["margin"]
    assert ckpt["train_config"]["epochs"] == saved["values"]["epochs"] and "postprocess_tuning" in ckpt


@pytest.mark.slow
def test_cli_trains_without_options_on_this_machine(tmp_path, capsys):
    """The same, measuring this machine (its speed decides the model width and the steps)."""
    write_folder(tmp_path / "data", nuclei_2d(4, (64, 64), seed=6))
    assert cli.main(train_argv(tmp_path, "--time", "10s")) == 0
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["machine"]["step_seconds"] > 0 and saved["values"]["epochs"] >= 1
    assert (tmp_path / "run" / "best.pt").is_file()


def test_cli_parser_defaults_are_planned():
    args = cli.build_parser().parse_args(["train", "--images", "a", "--labels", "b", "--out", "c"])
    for name in ("margin", "factor", "crop", "groups", "channels", "downsampling_channels", "dilations",
                 "iterations", "min_votes", "epochs", "steps", "time", "batch", "amp"):
        assert getattr(args, name) is None, name
    assert cli.build_parser().parse_args(["train", "--time", "1h30m"]).time == 5400


# ---- decoding: foreground threshold, tuning, test-time augmentation --------------------------------------


def test_foreground_threshold_decoding():
    p_fg = torch.tensor([[0.2, 0.45, 0.55, 0.65, 0.9]])
    prob = torch.cat([1 - p_fg, p_fg])[:, None, :].expand(2, 3, 5).contiguous()  # (2, 3, 5)
    assert torch.equal(foreground(prob), prob.argmax(0) != 0)
    assert foreground(prob, 0.6)[0].tolist() == [False, False, False, True, True]
    emb = torch.stack(torch.meshgrid(torch.zeros(3), torch.full((5,), 2.0), indexing="ij"))
    emb[0] += 1.0  # every pixel votes for (1, 2)
    argmax = labels_from_output(emb, prob, (1.0, 1.0), PostprocessConfig(min_votes=1, smooth_radius=0))
    strict = labels_from_output(emb, prob, (1.0, 1.0), PostprocessConfig(min_votes=1, smooth_radius=0,
                                                                         foreground_threshold=0.6))
    assert argmax[0].tolist() == [0, 0, 1, 1, 1] and strict[0].tolist() == [0, 0, 0, 1, 1]
    # Old checkpoints (no such key) decode as before; bad values name the setting.
    old = PostprocessConfig(**{k: v for k, v in PostprocessConfig().to_dict().items()
                               if k not in ("foreground_threshold", "tta")})
    assert old.foreground_threshold is None and old.tta is False
    with pytest.raises(ValueError, match="foreground_threshold: expected a probability"):
        PostprocessConfig(foreground_threshold=1.0)
    with pytest.raises(TypeError, match="foreground_threshold"):
        PostprocessConfig(foreground_threshold="0.5")
    with pytest.raises(TypeError, match="tta"):
        PostprocessConfig(tta=1)


class Oracle(torch.nn.Module):
    """A "model" whose embeddings are the true centroids and whose foreground probability is 0.9 in
    the objects and 0.65 in a 3-pixel ring around them: argmax decoding grows every object beyond
    IoU 0.5, a threshold above 0.65 does not."""

    def __init__(self, labels):
        super().__init__()
        from scipy import ndimage

        self.config = RDCNet(2, 1, factor=4, groups=1, channels_per_group=2, downsampling_channels=2).config
        lab = torch.from_numpy(labels).long()
        emb = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in labels.shape],
                                         indexing="ij"))
        grown = torch.from_numpy(ndimage.grey_dilation(labels, size=(7, 7)) * (labels == 0)).long()
        for k in lab.unique()[1:]:
            c = emb[:, lab == k].mean(1, keepdim=True).round()
            emb[:, lab == k] = c
            emb[:, grown == k] = c
        fg = torch.where(lab > 0, 0.9, torch.where(grown > 0, 0.65, 0.05))
        self.out = RDCNetOutput(emb[None], torch.stack([1 - fg, fg])[None], torch.stack([1 - fg, fg])[None].log())
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, origin=None, iterations=None):
        return self.out


def test_tuning_finds_the_foreground_threshold_and_equals_the_decoding():
    from rdcnet.metrics import precision_recall_f1
    from rdcnet.train import tune_postprocess

    labels = disc_grid((64, 64), 4.5, gap=8.0)
    model = Oracle(labels)
    start = PostprocessConfig(margin=3.0, min_votes=2, smooth_radius=1)
    details = {}
    best, f1, before = tune_postprocess(model, [np.zeros((1, 64, 64), np.float32)], [labels], start, tta=False,
                                        details=details)
    assert before < 0.5 and f1 == 1.0 and best.foreground_threshold == 0.7 and best.tta is False
    assert details["decodings"] == 5 * 4 * 4 * 3 and details["f1_with_tta"] is None
    out = model(None)
    decoded = labels_from_output(out.embeddings[0], out.probabilities[0], (1.0, 1.0), best)
    assert precision_recall_f1(labels, decoded.numpy(), [0.5]).f1[0] == f1  # the grid decodes as the pipeline


def zero_offset_model(spacing=(1.0, 1.0), factor=4):
    torch.manual_seed(0)
    model = RDCNet(len(spacing), 1, factor=factor, spacing=spacing, **TINY_WIDTH)
    torch.nn.init.zeros_(model.up.weight)
    torch.nn.init.zeros_(model.up.bias)
    return model.eval()


@pytest.mark.parametrize("spacing, factor, moves", [((1.0, 1.0), 4, 8), ((0.5, 0.26), 4, 4), ((1.0, 1.0), (2, 4), 4),
                                                    ((2.0, 0.5, 0.5), (1, 2, 2), 8)])
def test_tta_embeddings_equal_plain_ones_with_zero_offsets(spacing, factor, moves):
    from rdcnet import tta

    model = zero_offset_model(spacing, factor)
    assert len(tta.transforms(model.config.spacing, model.config.factor)) == moves
    x = torch.rand(1, 37, 50) if len(spacing) == 2 else torch.rand(1, 5, 13, 17)
    plain, augmented = predict_output(model, x), predict_output(model, x, tta=True)
    assert torch.equal(plain.embeddings, augmented.embeddings)
    torch.testing.assert_close(plain.probabilities, augmented.probabilities)


class Gradient(torch.nn.Module):
    """Offsets = the image gradient (a vector field that turns with the image): test-time
    augmentation must give the plain output back, which checks how offsets are mapped back."""

    def __init__(self, spacing):
        super().__init__()
        self.config = RDCNet(2, 1, factor=1, spacing=spacing, groups=1, channels_per_group=1,
                             downsampling_channels=1, dilations=(1,), iterations=1).config
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, origin=None, iterations=None):
        from rdcnet.model import pixel_coordinates

        gy, gx = torch.gradient(x[:, 0], dim=(1, 2))
        coords = pixel_coordinates(x.shape[2:], self.config.spacing, origin)
        p = torch.sigmoid(x[:, :1])
        return RDCNetOutput(3 * torch.stack([gy, gx], 1) + coords, torch.cat([1 - p, p], 1), x)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.26)])
def test_tta_maps_offsets_back_as_vectors(spacing):
    x = torch.rand(1, 23, 31)
    model = Gradient(spacing)
    plain, augmented = predict_output(model, x), predict_output(model, x, tta=True)
    torch.testing.assert_close(augmented.embeddings, plain.embeddings, atol=1e-5, rtol=0)
    torch.testing.assert_close(augmented.probabilities, plain.probabilities, atol=1e-6, rtol=0)


def test_tta_and_threshold_in_the_exported_pipeline_equal_predict():
    from rdcnet.export import build_pipeline
    from rdcnet.export.pipeline import script

    torch.manual_seed(1)
    model = RDCNet(2, 1, factor=4, **TINY_WIDTH).eval()
    torch.nn.init.normal_(model.up.weight, std=0.05)
    image = nuclei_2d(1, (45, 58), seed=2)[0][0]
    for post, compile in ((PostprocessConfig(margin=4.0, min_votes=2, tta=True, foreground_threshold=0.45), script),
                          (PostprocessConfig(margin=4.0, min_votes=2, foreground_threshold=0.3), lambda m: m)):
        labels, out = predict(model, image, post, return_output=True)
        pipeline = compile(build_pipeline(model, post))  # (scripted once: compiling takes seconds)
        emb, prob = pipeline.outputs(torch.from_numpy(image))
        assert torch.equal(emb, out.embeddings) and torch.equal(prob, out.probabilities)
        assert np.array_equal(pipeline(torch.from_numpy(image)).numpy(), labels)
    # predict follows the decoding's tta unless told otherwise.
    x = prepare_image(image, model)
    tta_out = predict_output(model, x, tta=True)
    _, out = predict(model, image, PostprocessConfig(tta=True), return_output=True)
    assert torch.equal(out.embeddings, tta_out.embeddings)
    _, out = predict(model, image, PostprocessConfig(tta=True), return_output=True, tta=False)
    assert torch.equal(out.embeddings, predict_output(model, x).embeddings)


def test_napari_request_values_override_the_plan(tmp_path):
    from rdcnet.napari import _core

    image, labels = nuclei_2d(1, (64, 64), seed=8)[0]
    request = _core.TrainRequest(out_dir=str(tmp_path / "run"), epochs=1, steps_per_epoch=1, margin=4.5,
                                 groups=2, channels_per_group=4, iterations=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _core.train_on_layer(image, labels, request)
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["values"]["margin"] == 4.5 and saved["sources"]["margin"] == "option"
    assert saved["sources"]["factor"] == "data" and saved["sources"]["crop"] == "data"
    model, post, _ = load_checkpoint(result.best_checkpoint)
    assert model.config.groups == 2 and list(model.config.factor) == saved["values"]["factor"]
