"""End-to-end speed of what users run, every variant side by side in one process.

For the paper's 2D configuration (8 groups x 64 channels, dilations 1-2-4-8, 5 iterations, factor
4) and the demo's (8 x 16): ``rdcnet.predict`` of a 512 x 512 image (network + decoding) and one
training step (forward, loss, backward, Adam), per precision (fp32, bf16 autocast) and sSDC path
(chain, fused, and "auto": timed at first use, its first-call cost reported separately). Variants
are interleaved round by round and the median is reported, so that load from other processes
shifts them alike; ratios are what count. With ``--port`` (the ``pytorch-rdc-net`` package
importable), its ``predict_instances`` on the same image with the same configuration is timed
beside. ``--memory`` also measures the peak resident memory of 3D inference (32 x 256 x 256,
``configs/organoid3d.toml``'s model) per path and precision, each in a fresh process.

    python benchmarks/end_to_end.py --rounds 5 --out benchmarks/end_to_end.md [--port] [--memory]

The table names the CPU (model, flags, threads) and the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER_2D = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=32, groups=8, channels_per_group=64,
                dilations=(1, 2, 4, 8), iterations=5)
ORGANOID_3D = dict(ndim=3, in_channels=1, factor=(1, 8, 8), downsampling_channels=32, groups=8,
                   channels_per_group=64, dilations=(1, 2, 4), iterations=5, spacing=(2.0, 0.26, 0.26))


def demo_config():
    from rdcnet.demo import DEMO_MODEL

    return dict(DEMO_MODEL)


def machine_line() -> str:
    from rdcnet import machine

    cpu = machine.cpu_description()
    flags = [f for f in cpu["flags"] if f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return (f"{cpu['model']} ({', '.join(flags) or 'flags unknown'}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def load() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_image(shape, seed=0):
    from rdcnet.data import nuclei_2d

    return nuclei_2d(1, shape, seed=seed)[0][0]


def predict_variant(model, image, precision, path):
    import rdcnet

    def run():
        model.ssdc_path = path  # at each call: the variants share one model
        return rdcnet.predict(model, image, precision=precision)
    return run


def train_variant(model, batch, crop, precision, path):
    from rdcnet.losses import RDCNetLoss

    model.ssdc_path = path
    model.train()
    x = torch.rand(batch, 1, *crop)
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 6, (batch, *crop)))
    loss_fn = RDCNetLoss(5.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss, _ = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def port_variant(image):
    """pytorch-rdc-net's RDCNet with the paper configuration, untrained (seeded), predict_instances."""
    from pytorch_rdc_net.generic_model import RDCNet as PortRDCNet

    torch.manual_seed(0)
    port = PortRDCNet(dim=2, in_channels=1, down_sampling_factor=(4, 4), down_sampling_channels=32,
                      channels_per_group=64, n_groups=8, dilation_rates=[1, 2, 4, 8], steps=5,
                      instance_size=(10.0, 10.0)).eval()
    x = torch.from_numpy(((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32))[None, None]

    def network():
        with torch.no_grad():
            port(x)
    return (lambda: port.predict_instances(x)), network


def run_rounds(variants: dict, rounds: int) -> dict:
    for fn in variants.values():  # warm-up: allocations, oneDNN primitives, "auto" tuning
        fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


MEMORY_SCRIPT = """
import json, resource, sys, torch
import rdcnet

def peak_kb():
    # VmHWM: this process's own peak (ru_maxrss can carry the parent's peak across fork + exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

cfg = json.loads(sys.argv[1]); path, precision = sys.argv[2], sys.argv[3]
torch.manual_seed(0)
model = rdcnet.RDCNet(**cfg, ssdc_path=path).eval()
image = torch.rand(32, 256, 256).numpy()
before = peak_kb()
rdcnet.predict(model, image, precision=precision)
print(json.dumps({"peak_kb": peak_kb(), "before_kb": before}))
"""


def memory_3d(paths, precisions) -> dict:
    out = {}
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in ORGANOID_3D.items()}
    for precision in precisions:
        for path in paths:
            res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, json.dumps(cfg), path, precision],
                                 capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                out[(path, precision)] = f"failed: {res.stderr.strip().splitlines()[-1][:120]}"
                continue
            out[(path, precision)] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    import rdcnet
    from rdcnet.ssdc import SSDC_TUNER

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="Markdown file for the tables")
    p.add_argument("--port", action="store_true", help="also time pytorch-rdc-net's predict_instances")
    p.add_argument("--memory", action="store_true", help="peak memory of 3D inference per path (fresh processes)")
    p.add_argument("--configs", default="paper,demo")
    p.add_argument("--size", type=int, default=512, help="predict image size (default 512)")
    args = p.parse_args(argv)

    os.environ["RDCNET_AUTOTUNE"] = "1"
    cache = tempfile.mkdtemp(prefix="rdcnet-bench-cache-")
    os.environ["RDCNET_CACHE_DIR"] = cache  # "auto" starts untuned: its first call is measured below
    lines = [f"Machine: {machine_line()}. Load before: {load()}.", ""]
    image = make_image((args.size, args.size))
    results = {}
    for config_name in args.configs.split(","):
        cfg = PAPER_2D if config_name == "paper" else demo_config()
        crop = (256, 256) if config_name == "paper" else (96, 96)
        torch.manual_seed(0)
        model = rdcnet.RDCNet(**cfg).eval()
        first_call = {}
        for precision in ("fp32", "bf16"):
            SSDC_TUNER.forget()
            model.ssdc_path = "auto"
            first_call[("predict", precision)] = timed(lambda: rdcnet.predict(model, image, precision=precision))
            tuned = SSDC_TUNER.last_tuning
            first_call[("predict", precision, "tuning")] = tuned["tuning_seconds"] if tuned else 0.0
            first_call[("predict", precision, "winner")] = tuned["winner"] if tuned else "?"
        variants = {}
        for precision in ("fp32", "bf16"):
            for path in ("chain", "fused", "auto"):
                variants[("predict", precision, path)] = predict_variant(model, image, precision, path)
        if args.port and config_name == "paper":
            whole, network = port_variant(image)
            variants[("predict", "port", "pytorch-rdc-net")] = whole
            variants[("predict", "port", "pytorch-rdc-net, network only")] = network
        for key, value in run_rounds(variants, args.rounds).items():
            results[(config_name,) + key] = value
        for precision in ("fp32", "bf16"):
            step_variants = {}
            for path in ("chain", "fused", "auto"):
                torch.manual_seed(0)
                m = rdcnet.RDCNet(**cfg)
                step_variants[("train", precision, path)] = train_variant(m, 2, crop, precision, path)
            for key, value in run_rounds(step_variants, max(2, args.rounds // 2)).items():
                results[(config_name,) + key] = value
        results[(config_name, "first_call")] = first_call

    lines += ["| config | task | precision | sSDC path | median time | vs fp32 chain |", "|---|---|---|---|---:|---:|"]
    for key, value in results.items():
        if key[1] == "first_call":
            continue
        config_name, task, precision, path = key
        base = results.get((config_name, task, "fp32", "chain"))
        what = f"predict {args.size}²" if task == "predict" else f"train step, batch 2, {'256²' if config_name == 'paper' else '96²'}"
        lines.append(f"| {config_name} | {what} | {precision} | {path} | {value * 1000:.0f} ms | "
                     f"{base / value:.2f}× |")
    lines.append("")
    for config_name in args.configs.split(","):
        fc = results[(config_name, "first_call")]
        for precision in ("fp32", "bf16"):
            steady = results[(config_name, "predict", precision, "auto")]
            lines.append(f"- {config_name}, {precision}: the first `predict` with `auto` took "
                         f"{fc[('predict', precision)]:.2f} s, of which {fc[('predict', precision, 'tuning')]:.2f} s "
                         f"tuning (winner: {fc[('predict', precision, 'winner')]}); later calls {steady:.2f} s.")
    from rdcnet.machine import resolve_precision

    default = "bf16" if resolve_precision("auto", torch.device("cpu")) is not None else "fp32"
    if "paper" in args.configs.split(","):
        d = results[("paper", "predict", default, "auto")]
        text = (f"- The default `rdcnet.predict` here (precision auto = {default}, sSDC auto), paper config, "
                f"{args.size}²: {results[('paper', 'predict', 'fp32', 'chain')] / d:.2f}× the float32 chain")
        if args.port:
            text += (f", {results[('paper', 'predict', 'port', 'pytorch-rdc-net')] / d:.2f}× pytorch-rdc-net's "
                     f"`predict_instances` (whose network pass alone takes "
                     f"{results[('paper', 'predict', 'port', 'pytorch-rdc-net, network only')] / d:.2f}× our whole "
                     "predict; both models untrained, seeded)")
        lines.append(text + ".")
    if args.memory:
        lines += ["", "3D inference, 32×256×256, organoid model, peak resident memory of a fresh process:", "",
                  "| sSDC path | precision | peak RSS |", "|---|---|---:|"]
        for (path, precision), value in memory_3d(("chain", "fused", "auto"), ("fp32", "bf16")).items():
            text = value if isinstance(value, str) else f"{value['peak_kb'] / 1024 ** 2:.2f} GB"
            lines.append(f"| {path} | {precision} | {text} |")
    from _report import finish

    return finish(lines, args.out, "end_to_end.py", argv, prefix=f"Load after: {load()}. ")


if __name__ == "__main__":
    sys.exit(main())
