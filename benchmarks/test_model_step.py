"""Whole-model benchmarks at the paper's configuration, per sSDC path (fused, recompute, unfused chain):

- ``model-2d-256-train``: one training step (forward, soft Jaccard + ESJ loss, backward, Adam) of
  RDCNet(8 groups × 64 channels, dilations 1-2-4-8, 5 iterations, factor 4) on two 256² crops
  (the MoNuSeg crop size).
- ``model-3d-predict``: inference on one 32×256×256 patch with factor (1, 8, 8) (3D-ORG);
  CUDA also records the peak memory (target: under 1 GB).

Rendered by ``render.py`` in the sSDC table (``pass`` = fwdbwd for the training step, fwd for
inference). ``RDCNET_BENCH_SSDC_ROUNDS`` sets the rounds (default 2).
"""

import os

import numpy as np
import pytest
import torch

ROUNDS = int(os.environ.get("RDCNET_BENCH_SSDC_ROUNDS", "2"))
PAPER = dict(downsampling_channels=32, groups=8, channels_per_group=64, dilations=(1, 2, 4, 8), iterations=5)
CASES = {
    "model-2d-256-train": dict(ndim=2, factor=4, shape=(256, 256), batch=2, passes="fwdbwd"),
    "model-3d-predict": dict(ndim=3, factor=(1, 8, 8), shape=(32, 256, 256), batch=1, passes="fwd"),
}
if os.environ.get("RDCNET_BENCH_SMALL"):
    CASES["model-2d-256-train"]["shape"] = (64, 64)
    CASES["model-3d-predict"]["shape"] = (8, 64, 64)


def _devices():
    import rdcnet_ext

    out = ["cpu"]
    if torch.cuda.is_available() and rdcnet_ext.has_cuda:
        out.append("cuda")
    return out


def _labels(shape, batch):
    from rdcnet_ext.testing import synthetic_labels

    return torch.from_numpy(np.stack([synthetic_labels(shape, 40 if len(shape) == 2 else 60, seed=i)
                                      for i in range(batch)])).long()


@pytest.mark.parametrize("impl", ["fused", "unfused", "recompute"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("case", list(CASES))
def test_model(benchmark, case, device, impl):
    from rdcnet import RDCNet, RDCNetLoss

    if device not in _devices():
        pytest.skip("no CUDA device or no CUDA build")
    c = CASES[case]
    torch.manual_seed(0)
    path = {"fused": "fused", "unfused": "chain", "recompute": "recompute"}[impl]
    model = RDCNet(c["ndim"], 1, factor=c["factor"], ssdc_path=path, **PAPER).to(device)
    x = torch.randn(c["batch"], 1, *c["shape"], device=device)
    benchmark.group = f"model/{case}/{device}"
    benchmark.extra_info.update(suite="ssdc", ssdc_case=case, passes=c["passes"], impl=impl, device=device,
                                flops=0, threads=torch.get_num_threads())
    if c["passes"] == "fwdbwd":
        labels = _labels(c["shape"], c["batch"]).to(device)
        loss_fn = RDCNetLoss(5.0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()

        def run():
            loss, _ = loss_fn(model(x), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
    else:
        model.eval()

        def run():
            with torch.no_grad():
                out = model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

    run()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        benchmark.extra_info["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
