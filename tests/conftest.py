"""Fixtures shared by the rdcnet_ext tests. Data helpers live in helpers.py."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import helpers` whatever the import mode

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
