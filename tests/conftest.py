"""Fixtures shared by the rdcnet_ext tests. Data helpers live in helpers.py."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import helpers` whatever the import mode

# The same results on every machine: "auto" precision resolves to float32 (as on a CPU without
# native bfloat16) and the sSDC path is the prior, not a timing; the tests of precision selection
# and of tuning set these themselves. Nothing is written to the user's cache folder.
os.environ.setdefault("RDCNET_CPU_BF16", "0")
os.environ.setdefault("RDCNET_AUTOTUNE", "0")
import tempfile  # noqa: E402

os.environ.setdefault("RDCNET_CACHE_DIR", tempfile.mkdtemp(prefix="rdcnet-test-cache-"))

import rdcnet_ext  # noqa: E402
from helpers import CASE_IDS, CASES  # noqa: E402

CUDA_OK = torch.cuda.is_available() and rdcnet_ext.has_cuda


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of rdcnet_ext")
    for item in items:
        if "cuda" in item.keywords and not CUDA_OK:
            item.add_marker(skip)


@pytest.fixture(scope="session", params=CASES, ids=CASE_IDS)
def field(request):
    """A seeded synthetic instance field (embeddings, mask, true labels and centres, spacing)."""
    return request.param.make()


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's id, so every test draws its own fixed data."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


# Easy synthetic nuclei: a small model learns them in seconds, so tests can use a *trained* model.
EASY_NUCLEI = dict(touching=0.3, photons=(200.0, 600.0), boundary_dim=(0.2, 0.4))


def _train_small(tmp, ndim: int):
    from rdcnet import PostprocessConfig, RDCNet, TrainConfig, train
    from rdcnet.checkpoint import load_checkpoint
    from rdcnet.data import nuclei_2d, nuclei_3d

    torch.manual_seed(0)
    if ndim == 2:
        data, val = nuclei_2d(12, (96, 96), seed=0, **EASY_NUCLEI), nuclei_2d(2, (96, 96), seed=1, **EASY_NUCLEI)
        model = RDCNet(ndim=2, in_channels=1, factor=4, groups=4, channels_per_group=8, dilations=(1, 2, 4),
                       iterations=3, downsampling_channels=8, spacing=(0.5, 0.5))
        crop, margin, steps = (64, 64), 2.0, 300
    else:
        data, val = nuclei_3d(8, (16, 64, 64), seed=0, **EASY_NUCLEI), nuclei_3d(2, (16, 64, 64), seed=1, **EASY_NUCLEI)
        model = RDCNet(ndim=3, in_channels=1, factor=(1, 4, 4), groups=4, channels_per_group=8, dilations=(1, 2, 4),
                       iterations=3, downsampling_channels=8, spacing=(2.0, 0.5, 0.5))
        crop, margin, steps = (16, 48, 48), 2.0, 100
    config = TrainConfig(out_dir=str(tmp), margin=margin, crop=crop, epochs=4, steps_per_epoch=steps, device="cpu",
                         postprocess=PostprocessConfig(margin=margin, min_votes=3))
    result = train(model, data, val, config, resume=False, progress=False)
    model, post, _ = load_checkpoint(result.best_checkpoint)
    return model, post, result.best_checkpoint


@pytest.fixture(scope="session")
def trained_2d(tmp_path_factory):
    """(model, decoding, checkpoint path) of a small 2D model trained on easy synthetic nuclei (~15 s)."""
    return _train_small(tmp_path_factory.mktemp("trained2d"), 2)


@pytest.fixture(scope="session")
def trained_3d(tmp_path_factory):
    """The same in anisotropic 3D (~35 s)."""
    return _train_small(tmp_path_factory.mktemp("trained3d"), 3)
