"""Fixtures and settings of the rdcnet_ext benchmarks (pytest-benchmark).

Run from the repository root with the package installed::

    pytest benchmarks/ --benchmark-json=bench.json
    python benchmarks/render.py bench.json benchmarks/README.md

Environment variables:

- ``RDCNET_BENCH_SMALL=1``: shrink every case (a smoke run of a minute or so; the numbers mean
  little). The flag is recorded in the JSON and shown by render.py.
- ``RDCNET_BENCH_BUDGET``: seconds of timed calls aimed at per benchmark (default 3); fast
  functions get more rounds (at most 50, at least 3), slow ones fewer. The pure-PyTorch references
  on the CPU always run once.
- ``RDCNET_BENCH_FULL_REFERENCE=1``: also run the CPU reference of assign and of the pipeline at
  full size (minutes each); by default they run on a crop of each case.

Cases and cached inputs are in bench_setup.py, the scipy/skimage equivalents in alternatives.py.

The benchmarks are kept out of the normal test run (pyproject's ``testpaths = ["tests"]``).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import pytest

# `python -m pytest` puts the working directory first on sys.path; from the repository root that
# shadows the installed package with the source tree, which has no compiled `_C`. Prefer the
# installed package then (an editable install is found either way).
_REPO = Path(__file__).resolve().parent.parent
if not any((_REPO / "rdcnet_ext").glob("_C*")):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO]
# alternatives.py lives beside this file (needed under --import-mode=importlib too).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rdcnet_ext  # noqa: E402
from render import cpu_model  # noqa: E402
from bench_setup import BUDGET_S, CASES, CUDA_OK, CUDA_SKIP_REASON, SMALL, prepare  # noqa: E402


@pytest.fixture(scope="session")
def prepared():
    """``prepared(case_name) -> Prepared``, generated lazily and cached for the session."""
    return prepare


def pytest_report_header(config):
    lines = [f"rdcnet_ext benchmarks{' (RDCNET_BENCH_SMALL: reduced sizes)' if SMALL else ''}:"]
    lines += [f"  {case.describe()}" for case in CASES.values()]
    cuda = f"CUDA: {torch.cuda.get_device_name()}" if CUDA_OK else CUDA_SKIP_REASON
    lines.append(f"  torch {torch.__version__}, {torch.get_num_threads()} threads; {cuda}")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    import scipy
    import skimage

    machine_info["rdcnet"] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_benchmarked": CUDA_OK,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "skimage": skimage.__version__,
        "rdcnet_ext": rdcnet_ext.__version__,
        "rdcnet_ext_has_cuda": bool(rdcnet_ext.has_cuda),
        "python": platform.python_version(),
        "small": SMALL,
        "budget_s": BUDGET_S,
        "command": " ".join(
            [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("RDCNET_BENCH_")]
            + ["pytest"]
            + [shlex.quote(a) for a in config.invocation_params.args]
        ),
        "cases": {name: case.describe() for name, case in CASES.items()},
    }
