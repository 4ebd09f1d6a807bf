"""benchmarks/gpu_check.py in its CPU smoke mode: every section runs (in its subprocess), every
planned row is reported, nothing FAILs, and the report file holds the same table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_small(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
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
