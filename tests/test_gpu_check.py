"""benchmarks/gpu_check.py in its CPU smoke mode: every section runs (in its subprocess), every
planned row is reported, nothing FAILs, and the report file holds the same table."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a smoke run of the whole benchmark script (~10 s): CI runs it
def test_gpu_check_cpu_small(tmp_path):
    gpu_check = _load()
    out = tmp_path / "report.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = out.read_text()
    assert report.strip() == res.stdout.strip()
    lines = report.splitlines()
    assert "| check | result | kernel | error | tolerance |" in lines
    assert not [line for line in lines if "FAIL" in line or "error:" in line or "not run" in line]
    for section, _ in gpu_check.sections("cpu"):
        for row in gpu_check.planned_rows(section, small=True):
            if section.startswith("bench-"):
                case, path = row.split(" | ")
                assert any(line.startswith(f"| {case} | {path} | ") for line in lines), row
            else:
                assert any(line.startswith(f"| {row} | PASS |") for line in lines), row
    assert {"chain", "recompute", "fused"} == set(gpu_check.paths("cpu"))


def test_gpu_check_cuda_plan():
    """The full CUDA run covers both kernels in every dtype and the issue's cases for every path."""
    gpu_check = _load()
    plan = dict(gpu_check.sections("cuda"))
    assert plan["ssdc-tensorcore"] == "tensorcore" and plan["bench-fused-tensorcore"] == "tensorcore"
    assert plan["ssdc-simt"] == "simt" and plan["bench-fused-simt"] == "simt"
    rows = [r for section in plan for r in gpu_check.planned_rows(section, small=False)]
    for kernel in ("simt", "tensorcore"):
        for dtype in ("float64", "float32", "bfloat16", "float16"):
            assert any(r.startswith(f"ssdc {kernel} {dtype} ") for r in rows), (kernel, dtype)
    for path in ("chain", "recompute", "fused-simt", "fused-tensorcore"):
        for case in ("B8x128² f32 fwd", "B8x128² bf16 fwd+bwd", "B8x128² 16ch bf16 fwd", "3D B1x32x64x64 bf16 fwd+bwd",
                     "train 2D B8x256² bf16 autocast", "infer 3D 32x256x256 bf16 autocast"):
            assert f"{case} | {path}" in rows, (case, path)
    assert any(r == "label_opening 3d-aniso" for r in rows)
