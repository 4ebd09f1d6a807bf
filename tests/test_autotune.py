"""The autotuned sSDC path: candidates timed once per kind of call (a fake clock here: no timing
in tests), the winner kept in memory and in a per-user cache file that survives the process, a
corrupt or foreign cache file ignored, forcing by option or environment, tuning off, and a training
run that records its path and keeps it on resume."""

import json
import math

import numpy as np
import pytest
import torch

import rdcnet
from rdcnet import autotune, ssdc
from rdcnet.autotune import Autotuner
from rdcnet.data import nuclei_2d


class FakeClock:
    """perf_counter for the tuner: each candidate's call advances it by that candidate's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def runner(self, cost, calls, name):
        def run():
            calls.append(name)
            self.now += cost
        return run


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    monkeypatch.setenv("RDCNET_CACHE_DIR", str(tmp_path / "cache"))
    clock = FakeClock()
    monkeypatch.setattr(autotune.time, "perf_counter", clock)
    return clock


def test_the_fastest_wins_and_is_remembered_across_processes(tuning, tmp_path):
    calls = []
    candidates = {"slow": tuning.runner(0.3, calls, "slow"), "fast": tuning.runner(0.1, calls, "fast")}
    tuner = Autotuner("paths", budget_s=10.0, rounds=3)
    assert tuner.choose("k1", "machine A", candidates) == "fast"
    assert calls.count("slow") == calls.count("fast") == 3  # interleaved rounds
    assert tuner.last_tuning["winner"] == "fast" and tuner.last_tuning["tuning_seconds"] == pytest.approx(1.2)
    calls.clear()
    assert tuner.choose("k1", "machine A", candidates) == "fast" and calls == []  # from memory
    again = Autotuner("paths")  # another process: from the file
    assert again.choose("k1", "machine A", candidates) == "fast" and calls == []
    saved = json.loads((tmp_path / "cache" / "paths.json").read_text())
    assert saved["machine"] == "machine A" and saved["entries"]["k1"]["winner"] == "fast"


def test_the_budget_limits_the_rounds(tuning):
    calls = []
    tuner = Autotuner("paths", budget_s=0.5, rounds=5)
    tuner.choose("k", "m", {"a": tuning.runner(1.0, calls, "a"), "b": tuning.runner(2.0, calls, "b")})
    assert len(calls) == 4  # two rounds: the second one ran past the budget


@pytest.mark.parametrize("content", [b"\x00\xffnot json", b"[1, 2, 3]", b'{"format": 1, "machine": "m", "entries": 7}',
                                     b'{"format": 99, "machine": "m", "entries": {"k": {"winner": "slow"}}}',
                                     b'{"format": 1, "machine": "other", "entries": {"k": {"winner": "slow"}}}'])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(tuning, tmp_path, content):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "paths.json").write_bytes(content)
    calls = []
    tuner = Autotuner("paths")
    assert tuner.choose("k", "m", {"slow": tuning.runner(0.3, calls, "slow"),
                                   "fast": tuning.runner(0.1, calls, "fast")}) == "fast"
    assert calls  # measured, not read
    assert json.loads((tmp_path / "cache" / "paths.json").read_text())["entries"]["k"]["winner"] == "fast"


def test_tuning_off_returns_nothing_and_measures_nothing(tuning, monkeypatch):
    monkeypatch.setenv("RDCNET_AUTOTUNE", "0")
    calls = []
    assert Autotuner("paths").choose("k", "m", {"a": tuning.runner(1, calls, "a")}) is None and calls == []


SHAPE = dict(groups=2, channels=4, dilations=(1, 2), batch=1, spatial=(12, 10), needs_grad=False)


def test_the_model_uses_the_tuned_path_and_the_prior_when_tuning_is_off(tmp_path, monkeypatch):
    monkeypatch.setenv("RDCNET_CACHE_DIR", str(tmp_path / "cache"))
    ssdc.SSDC_TUNER.forget()
    monkeypatch.setattr(ssdc.SSDC_TUNER, "choose", lambda key, machine, candidates, synchronize=None: "fused")
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    assert ssdc.auto_ssdc_path("cpu", torch.float32, **SHAPE) == "fused"
    monkeypatch.setenv("RDCNET_AUTOTUNE", "0")
    assert ssdc.auto_ssdc_path("cpu", torch.float32, **SHAPE) == ssdc.MEASURED_FASTEST[("cpu", torch.float32)]
    monkeypatch.setenv("RDCNET_SSDC_PATH", "recompute")  # forced, whatever the tuning says
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    assert ssdc.auto_ssdc_path("cpu", torch.float32, **SHAPE) == "recompute"
    monkeypatch.setenv("RDCNET_SSDC_PATH", "fastest")
    with pytest.raises(ValueError, match="RDCNET_SSDC_PATH"):
        ssdc.auto_ssdc_path("cpu", torch.float32, **SHAPE)


def test_real_tuning_of_a_small_ssdc_writes_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    monkeypatch.setenv("RDCNET_CACHE_DIR", str(tmp_path / "cache"))
    ssdc.SSDC_TUNER.forget()
    state = torch.get_rng_state()
    path = ssdc.tune_ssdc_path("cpu", torch.float32, **{**SHAPE, "needs_grad": True})
    assert path in ("chain", "fused")
    assert torch.equal(torch.get_rng_state(), state)  # tuning draws nothing from the seeded generators
    entries = json.loads((tmp_path / "cache" / "ssdc-paths.json").read_text())["entries"]
    (key, entry), = entries.items()
    assert key == "cpu float32 2d g2 c4 d1,2 b1 s16x8 fwd+bwd" and entry["winner"] == path
    assert set(entry["seconds"]) == {"chain", "fused"} and all(math.isfinite(t) for t in entry["seconds"].values())
    ssdc.SSDC_TUNER.forget()


def test_an_explicit_path_is_never_tuned(monkeypatch):
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    monkeypatch.setattr(ssdc, "tune_ssdc_path", lambda *a, **k: pytest.fail("tuned an explicit path"))
    model = rdcnet.RDCNet(ndim=2, in_channels=1, groups=2, channels_per_group=4, downsampling_channels=4,
                          dilations=(1,), iterations=1, ssdc_path="chain").eval()
    model(torch.rand(1, 1, 16, 16))
    assert model.ssdc_path_for(1, (16, 16)) == "chain"


def test_training_records_its_path_and_keeps_it_on_resume(tmp_path, monkeypatch):
    """A run tuned to "fused" keeps "fused" when resumed, though the tuning now says "chain": the
    same seed then gives the same weights as an uninterrupted run."""
    from rdcnet.train import TrainConfig, train

    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    pairs = nuclei_2d(3, (48, 48), seed=0)
    small = dict(ndim=2, in_channels=1, factor=4, groups=2, channels_per_group=4, downsampling_channels=4,
                 dilations=(1, 2), iterations=1)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(update):
        if update["epoch"] == 2:
            raise Interrupt  # as if killed during the second epoch

    def run(out, winner, callback=None):
        monkeypatch.setattr(ssdc, "tune_ssdc_path", lambda *a, **k: winner)
        torch.manual_seed(0)
        model = rdcnet.RDCNet(**small)
        config = TrainConfig(out_dir=str(tmp_path / out), margin=3.0, crop=(32, 32), epochs=2, steps_per_epoch=2,
                             device="cpu", tune_postprocess=False)
        try:
            train(model, pairs[:2], pairs[2:], config, progress=False, callback=callback)
        except Interrupt:
            pass
        assert model.ssdc_path == "auto"  # the caller's model keeps its request
        return torch.load(tmp_path / out / "last.pt", weights_only=True)

    straight = run("straight", "fused")
    assert straight["ssdc_path"] == "fused" and straight["epoch"] == 1
    assert run("resumed", "fused", callback=stop_in_epoch_2)["epoch"] == 0
    resumed = run("resumed", "chain")  # a new tuning would now pick the chain
    assert resumed["ssdc_path"] == "fused" and resumed["epoch"] == 1
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


@pytest.mark.parametrize("spatial,expected", [
    ((16, 8), (16, 8)),                    # small maps are timed as they are
    ((128, 128), (128, 128)),              # the paper's 512² image: 1 << 14 coarse pixels
    ((256, 128), (128, 128)),
    ((32, 32, 32), (16, 32, 32)),          # the organoid model's 32×256² stack
    ((4, 512, 512), (4, 64, 64)),
    ((8, 8, 100000), (8, 8, 196)),
])
def test_large_maps_are_tuned_on_a_proxy_of_bounded_size(spatial, expected):
    proxy = ssdc._tuning_shape(spatial)
    assert proxy == expected
    assert math.prod(proxy) <= ssdc.TUNING_MAX_VOXELS or proxy == spatial


def test_tuning_a_large_map_runs_the_candidates_on_the_proxy(monkeypatch, tmp_path):
    monkeypatch.setenv("RDCNET_AUTOTUNE", "1")
    monkeypatch.setenv("RDCNET_CACHE_DIR", str(tmp_path / "cache"))
    ssdc.SSDC_TUNER.forget()
    shapes = []
    original = ssdc.apply_ssdc
    monkeypatch.setattr(ssdc, "apply_ssdc", lambda x, *a, **k: shapes.append(tuple(x.shape)) or original(x, *a, **k))
    ssdc.tune_ssdc_path("cpu", torch.float32, groups=1, channels=2, dilations=(1,), batch=1, spatial=(512, 64),
                        needs_grad=False)
    assert shapes and set(shapes) == {(1, 2, 256, 64)}
    key, = json.loads((tmp_path / "cache" / "ssdc-paths.json").read_text())["entries"]
    assert "s512x64" in key  # cached under the real size's bucket
    ssdc.SSDC_TUNER.forget()
