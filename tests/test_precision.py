"""Precision selection: "auto" is bfloat16 where the hardware computes it natively (CPU flags and
CUDA capability mocked here), the network then runs under autocast while its outputs stay float32,
and the labels of a trained model agree between bfloat16 and float32."""

import numpy as np
import pytest
import torch

import rdcnet
from rdcnet import machine
from rdcnet.data import nuclei_2d, nuclei_3d
from rdcnet.metrics import evaluate_image

from conftest import EASY_NUCLEI


@pytest.fixture
def detect(monkeypatch):
    """Real detection (conftest pins it off) over mocked CPU flags."""
    monkeypatch.delenv("RDCNET_CPU_BF16", raising=False)

    def set_flags(*flags):
        monkeypatch.setattr(machine, "cpu_description", lambda: {"model": "test CPU", "flags": sorted(flags)})
    return set_flags


@pytest.mark.parametrize("flags,expected", [
    (("avx2", "avx512f", "avx512_bf16"), torch.bfloat16),   # AMD Zen 4, Intel Cooper Lake
    (("avx2", "amx_tile", "amx_bf16"), torch.bfloat16),     # Intel Sapphire Rapids
    (("avx2", "avx512f"), None),                            # AVX-512 without bfloat16
    (("avx2", "fma"), None),
    ((), None),                                             # flags unknown (macOS, Windows)
])
def test_auto_is_bf16_on_cpus_that_compute_it_natively(detect, flags, expected):
    detect(*flags)
    assert machine.resolve_precision("auto", "cpu") == expected
    assert machine.resolve_precision("fp32", "cpu") is None
    assert machine.resolve_precision("bf16", "cpu") == torch.bfloat16  # asked for: emulated if need be


@pytest.mark.parametrize("capability,expected", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                                 ((7, 5), None)])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert machine.resolve_precision("auto", torch.device("cuda")) == expected


def test_environment_overrides_the_detection(detect, monkeypatch):
    detect("avx512_bf16")
    monkeypatch.setenv("RDCNET_CPU_BF16", "0")
    assert machine.resolve_precision("auto", "cpu") is None
    detect()
    monkeypatch.setenv("RDCNET_CPU_BF16", "1")
    assert machine.resolve_precision("auto", "cpu") == torch.bfloat16


@pytest.mark.parametrize("bad", ["fp16", "half", None, 16])
def test_bad_precision_names_the_argument(bad):
    model = rdcnet.RDCNet(ndim=2, in_channels=1, groups=1, channels_per_group=2, downsampling_channels=2)
    with pytest.raises((ValueError, TypeError), match="precision"):
        rdcnet.predict(model, np.zeros((16, 16), np.float32), precision=bad)


def test_bf16_runs_the_network_under_autocast_and_outputs_float32(detect, monkeypatch):
    detect("avx512_bf16")
    torch.manual_seed(0)
    model = rdcnet.RDCNet(ndim=2, in_channels=1, groups=2, channels_per_group=4, downsampling_channels=4,
                          dilations=(1, 2), iterations=2).eval()
    seen = []
    monkeypatch.setattr(model.block.ssdc, "path_for", lambda x, original=model.block.ssdc.path_for: (
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype),
        original(x))[1])
    image = nuclei_2d(1, (48, 40), seed=0)[0][0]
    for precision, dtype in (("auto", torch.bfloat16), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        labels, out = rdcnet.predict(model, image, precision=precision, return_output=True)
        assert seen[-1] == dtype
        assert out.embeddings.dtype == out.probabilities.dtype == torch.float32 and labels.dtype == np.int32


def _agreement(model, post, pairs) -> float:
    return float(np.mean([evaluate_image(rdcnet.predict(model, image, post, precision="fp32"),
                                         rdcnet.predict(model, image, post, precision="bf16"))["f1@0.5"]
                          for image, _ in pairs]))


@pytest.mark.slow
def test_bf16_labels_agree_with_float32_labels_2d(trained_2d):
    model, post, _ = trained_2d
    assert _agreement(model, post, nuclei_2d(3, (192, 192), seed=7, **EASY_NUCLEI)) >= 0.99


@pytest.mark.slow
def test_bf16_labels_agree_with_float32_labels_3d(trained_3d):
    model, post, _ = trained_3d
    assert _agreement(model, post, nuclei_3d(2, (16, 96, 96), seed=7, **EASY_NUCLEI)) >= 0.99
