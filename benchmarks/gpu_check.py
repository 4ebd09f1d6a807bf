"""One-command GPU check (issue 8): correctness of every CUDA op and of both CUDA sSDC kernels,
then one table of speed and memory for every way of computing the sSDC.

    pip install --no-build-isolation --no-deps . && python benchmarks/gpu_check.py --out gpu_check.md

(a) correctness, PASS/FAIL per line with the measured error: hough_votes, find_peaks,
    assign_to_centres, label_opening, embeddings_to_labels and the block ops (hough_votes_block,
    assign_to_centres over a CentreIndex) on the device against
    ``rdcnet_ext.reference`` on the CPU (exact equality; 2D and anisotropic 3D synthetic fields),
    and the sSDC forward and its five gradients for float64/float32/bfloat16/float16 with each
    CUDA kernel (``RDCNET_EXT_SSDC_CUDA_KERNEL`` = simt, tensorcore; float32 on tensor cores is
    TF32) against ``rdcnet_ext.reference.ssdc`` in float64. The kernel that actually ran is shown
    (tensorcore falls back to simt for float64).
(b) speed and memory: median time of CUDA-event-timed repeats after a warm-up, useful TFLOP/s
    (forward F = 2·B·G·C²·taps·D·|S| + 2·B·G·C·D·C·|S|; forward+backward counted as 3F), peak
    memory above the inputs (``torch.cuda.max_memory_allocated``) and the ratios to the chain, for
    the paper block (8 groups × 64 channels, dilations 1, 2, 4, 8) B8 × 128² float32 and bfloat16,
    B8 × 128² with 16 channels per group (bfloat16) and 3D B1 × 32×64×64 (bfloat16), forward and
    forward+backward, for each sSDC path: ``chain`` (framework convs, cudnn.benchmark,
    channels_last), ``recompute``, ``fused-simt``, ``fused-tensorcore``; and per path a
    paper-config training step (2D, B8 × 256² input, RDCNet defaults, bfloat16 autocast, AdamW)
    and a 3D 32×256×256 inference (factor (1, 8, 8), bfloat16 autocast).

Each group of cases runs in its own subprocess with a time limit (a crash or a hang, e.g. in an
unverified kernel, loses only that group; its missing rows say so), and each case has its own
time limit inside it. Exit status 1 if any line FAILed. ``--device cpu --small`` runs the same
logic on tiny inputs on the CPU (paths chain, recompute, fused), which is what the test suite does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

KERNEL_ENV = "RDCNET_EXT_SSDC_CUDA_KERNEL"
GROUPS, CHANNELS, DILATIONS, SLOPE = 8, 64, (1, 2, 4, 8), 0.3


# ---- plan: which groups of cases run, each in a subprocess ------------------------------------------


def paths(device: str) -> list[str]:
    return ["chain", "recompute", "fused-simt", "fused-tensorcore"] if device == "cuda" else ["chain", "recompute", "fused"]


def sections(device: str) -> list[tuple[str, str]]:
    """(section, value of RDCNET_EXT_SSDC_CUDA_KERNEL for its process); a section is one or more
    parts joined by "+", run in one subprocess. On CUDA every part gets its own process (an
    unverified kernel that corrupts the CUDA context loses only its part); on the CPU two
    processes suffice."""
    if device == "cuda":
        out = [("ops", "simt"), ("ssdc-simt", "simt"), ("ssdc-tensorcore", "tensorcore")]
        return out + [(f"bench-{p}", "tensorcore" if p == "fused-tensorcore" else "simt") for p in paths(device)]
    return [("ops+ssdc-cpu", "simt"), ("+".join(f"bench-{p}" for p in paths(device)), "simt")]


def op_cases(small: bool):
    """(name, shape, count, spacing) of the synthetic fields for the post-processing checks."""
    if small:
        return [("2d", (40, 44), 6, (1.0, 1.0)), ("3d-aniso", (6, 20, 18), 4, (2.0, 0.5, 0.5))]
    return [("2d", (160, 176), 50, (1.0, 1.0)), ("2d-spacing", (120, 110), 30, (0.5, 1.25)),
            ("3d-aniso", (16, 64, 56), 30, (2.0, 0.5, 0.5))]


OP_NAMES = ["hough_votes", "find_peaks", "assign_to_centres", "label_opening", "embeddings_to_labels",
            "hough_votes_block", "assign_centre_index"]


def ssdc_check_cases(small: bool):
    """(name, batch, groups, channels, shape, dilations) for the sSDC correctness lines."""
    if small:
        return [("b2g2c16-9x11", 2, 2, 16, (9, 11), (1, 2)), ("3d-b1g1c16-4x5x6", 1, 1, 16, (4, 5, 6), (1, 2, 4, 8))]
    return [("b1g8c64-37x41", 1, 8, 64, (37, 41), DILATIONS), ("b3g2c32-19x23", 3, 2, 32, (19, 23), DILATIONS),
            ("b2g4c32-37x41", 2, 4, 32, (37, 41), DILATIONS), ("3d-b1g2c16-7x9x11", 1, 2, 16, (7, 9, 11), DILATIONS)]


# tolerance on the relative error (norm) of y and of each gradient vs float64
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "tf32": 3e-3, "bfloat16-simt": 3e-2, "bfloat16": 1e-2, "float16": 5e-3}


def op_bench_cases(small: bool):
    """(name, batch, shape, channels per group, dtype name, passes)."""
    if small:
        base = [("B1x16² f32", 1, (16, 16), 8, "float32"), ("3D B1x4x8x8 f32", 1, (4, 8, 8), 8, "float32")]
    else:
        base = [("B8x128² f32", 8, (128, 128), 64, "float32"), ("B8x128² bf16", 8, (128, 128), 64, "bfloat16"),
                ("B8x128² 16ch bf16", 8, (128, 128), 16, "bfloat16"),
                ("3D B1x32x64x64 bf16", 1, (32, 64, 64), 64, "bfloat16")]
    return [(f"{name} {passes}", b, s, c, dt, passes) for name, b, s, c, dt in base for passes in ("fwd", "fwd+bwd")]


def model_cases(small: bool):
    """(name, kind, ndim, input shape (B, 1, *S), factor)."""
    if small:
        return [("train 2D B1x32² (small config)", "train", 2, (1, 1, 32, 32), (4, 4)),
                ("infer 3D 4x32x32 (small config)", "infer", 3, (1, 1, 4, 32, 32), (1, 8, 8))]
    return [("train 2D B8x256² bf16 autocast", "train", 2, (8, 1, 256, 256), (4, 4)),
            ("infer 3D 32x256x256 bf16 autocast", "infer", 3, (1, 1, 32, 256, 256), (1, 8, 8))]


def planned_rows(section: str, small: bool) -> list[str]:
    """Names of the rows a section reports (so that rows lost to a crash are listed)."""
    rows = []
    for part in section.split("+"):
        if part == "ops":
            rows += [f"{op} {name}" for name, *_ in op_cases(small) for op in OP_NAMES]
        elif part.startswith("ssdc-"):
            kernel = part[len("ssdc-"):]
            dtypes = ["float64", "float32"] if kernel == "cpu" else ["float64", "float32", "bfloat16", "float16"]
            rows += [f"ssdc {kernel} {dt} {name}" for name, *_ in ssdc_check_cases(small) for dt in dtypes]
        else:
            path = part[len("bench-"):]
            rows += [f"{c[0]} | {path}" for c in op_bench_cases(small) + model_cases(small)]
    return rows


# ---- the section processes ------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raises CaseTimeout in the main thread after `seconds` (not inside a blocking native call:
    those are caught by the parent's per-section limit)."""
    def handler(signum, frame):
        raise CaseTimeout(f"over the per-case limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


def rel_err(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Native:
    """Records which native sSDC entry points a section calls (the kernel that really ran)."""

    NAMES = ("ssdc_tc_forward_cuda", "ssdc_tc_backward_cuda", "ssdc_forward_cuda", "ssdc_backward_cuda")

    def __init__(self):
        from rdcnet_ext import _launch

        self.calls: list[str] = []
        for name in self.NAMES:
            real = getattr(_launch._C, name, None)
            if real is None:
                continue

            def spy(*args, _real=real, _name=name):
                self.calls.append(_name)
                return _real(*args)

            setattr(_launch._C, name, spy)

    def kernel(self) -> str:
        seen = {"tensorcore" if c.startswith("ssdc_tc") else "simt" for c in self.calls}
        return "+".join(sorted(seen)) or "cpu"


def run_ops(device: str, small: bool, case_timeout: float) -> None:
    import torch

    from rdcnet_ext import ops
    from rdcnet_ext import reference as ref
    from rdcnet_ext.testing import synthetic_embeddings

    for name, shape, count, spacing in op_cases(small):
        f = synthetic_embeddings(shape, count, spacing, noise=0.8, outliers=0.05, nonfinite=0.01, seed=7)
        e, m = torch.from_numpy(f.embeddings), torch.from_numpy(f.mask)
        labels = torch.from_numpy(f.labels)
        sp = list(spacing)
        votes = ref.hough_votes(e, m, sp)
        centres = ref.find_peaks(votes, 2.0, 1, sp, 1)
        expected = {
            "hough_votes": lambda: votes,
            "find_peaks": lambda: centres,
            "assign_to_centres": lambda: ref.assign_to_centres(e, m, centres, sp, 3.0),
            "label_opening": lambda: ref.label_opening(labels, 1.5, sp),
            "embeddings_to_labels": lambda: ref.embeddings_to_labels(e, m, 2.0, sp, 1, 1, 3.0, 1.5),
        }
        # The block ops on the block of the image's second half along each axis.
        region = tuple(slice(n // 2, n) for n in shape)
        eb, mb = e[(slice(None),) + region].contiguous(), m[region].contiguous()
        origin = [r.start for r in region]

        def flat_block_votes(result):
            return torch.cat([t.reshape(-1).to(torch.int64).cpu() for t in result])

        expected.update({
            "hough_votes_block": lambda: flat_block_votes(ref.hough_votes_block(eb, mb, sp, shape, origin)),
            "assign_centre_index": lambda: ref.assign_to_centres(e, m, centres, sp, 3.0)[region],
        })
        ed, md, ld = e.to(device), m.to(device), labels.to(device)
        ebd, mbd = eb.to(device), mb.to(device)
        got = {
            "hough_votes": lambda: ops.hough_votes(ed, md, sp),
            "find_peaks": lambda: ops.find_peaks(votes.to(device), 2.0, 1, sp, 1),
            "assign_to_centres": lambda: ops.assign_to_centres(ed, md, centres.to(device), sp, 3.0),
            "label_opening": lambda: ops.label_opening(ld, 1.5, sp),
            "embeddings_to_labels": lambda: ops.embeddings_to_labels(ed, md, 2.0, sp, 1, 1, 3.0, 1.5),
            "hough_votes_block": lambda: flat_block_votes(ops.hough_votes_block(ebd, mbd, sp, shape, origin)).to(device),
            "assign_centre_index": lambda: ops.assign_to_centres(
                ebd, mbd, ops.CentreIndex(centres.to(device), shape, sp), max_distance=3.0, origin=origin),
        }
        for op in OP_NAMES:
            row = {"kind": "check", "name": f"{op} {name}", "tolerance": "exact"}
            try:
                with time_limit(case_timeout):
                    g, w = got[op](), expected[op]()
                    ok = g.device.type == device and g.shape == w.shape and torch.equal(g.cpu().to(w.dtype), w)
                    differ = int((g.cpu().to(w.dtype) != w).sum()) if g.shape == w.shape else -1
                row.update(status="PASS" if ok else "FAIL", error=f"{differ} entries differ" if differ else "equal")
            except Exception as err:  # noqa: BLE001 - one line per failure, the rest goes on
                row.update(status="FAIL", error=f"{type(err).__name__}: {err}"[:200])
            emit(row)


def make_ssdc_inputs(batch, groups, channels, shape, dilations, dtype, device, seed=0, requires_grad=False):
    import torch

    gen = torch.Generator().manual_seed(seed)
    nd, gc, d = len(shape), groups * channels, len(dilations)

    def randn(*size, scale=1.0):
        t = (torch.randn(*size, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    return [randn(batch, gc, *shape), randn(gc, channels, *(3,) * nd, scale=(channels * 3**nd) ** -0.5),
            randn(gc, scale=0.5), randn(gc, d * channels, *(1,) * nd, scale=(d * channels) ** -0.5),
            randn(gc, scale=0.5)]


def run_ssdc_checks(kernel: str, device: str, small: bool, case_timeout: float) -> None:
    import torch

    from rdcnet_ext import ops
    from rdcnet_ext import reference as ref

    torch.backends.cudnn.allow_tf32 = True  # float32 on the tensor-core kernel means TF32
    names = ["y", "grad x", "grad weight", "grad bias", "grad reduce_weight", "grad reduce_bias"]
    dtypes = ["float64", "float32"] if device == "cpu" else ["float64", "float32", "bfloat16", "float16"]
    native = Native()
    for name, b, g, c, shape, dil in ssdc_check_cases(small):
        for dt in dtypes:
            row = {"kind": "check", "name": f"ssdc {kernel} {dt} {name}"}
            try:
                with time_limit(case_timeout):
                    dtype = getattr(torch, dt)
                    inputs = make_ssdc_inputs(b, g, c, shape, dil, dtype, device, requires_grad=True)
                    native.calls.clear()
                    y = ops.ssdc(*inputs, dil, g, SLOPE)
                    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                    grads = torch.autograd.grad(y, inputs, gy.to(dtype=dtype, device=device))
                    ran = native.kernel()
                    leaves = [t.detach().double().cpu().requires_grad_() for t in inputs]
                    y_ref = ref.ssdc(*leaves, dil, g, SLOPE)
                    grads_ref = torch.autograd.grad(y_ref, leaves, gy.to(y.dtype).double())
                    errors = {n: rel_err(a, w) for n, a, w in zip(names, (y, *grads), (y_ref, *grads_ref))}
                key = "tf32" if dt == "float32" and ran == "tensorcore" else dt
                key = "bfloat16-simt" if dt == "bfloat16" and ran == "simt" else key
                tol = TOLERANCE[key]
                worst = max(errors, key=errors.get)
                ok = all(v <= tol for v in errors.values()) and all(t.dtype == dtype for t in (y, *grads))
                row.update(status="PASS" if ok else "FAIL", tolerance=f"{tol:g}", kernel=ran,
                           error=f"max {errors[worst]:.2e} ({worst})")
            except Exception as err:  # noqa: BLE001
                row.update(status="FAIL", error=f"{type(err).__name__}: {err}"[:200])
            emit(row)


def ssdc_flops(batch, shape, channels, passes) -> float:
    n = math.prod(shape)
    taps, d = 3 ** len(shape), len(DILATIONS)
    fwd = 2 * batch * GROUPS * channels * channels * taps * d * n + 2 * batch * GROUPS * channels * d * channels * n
    return fwd * (3 if passes == "fwd+bwd" else 1)


class Timer:
    """Median time of repeats after a warm-up (CUDA events on CUDA, perf_counter on the CPU),
    repeated until `budget_s` has passed (at least once), and the peak memory of the first timed
    repeat above what was allocated before it (CUDA only; None on the CPU)."""

    def __init__(self, device: str):
        self.device = device

    def __call__(self, fn, budget_s: float = 1.0, max_repeats: int = 20) -> tuple[float, float | None]:
        import torch

        cuda = self.device == "cuda"
        fn()  # warm-up: cuDNN autotuning, allocator, first-call costs
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times, peak = [], None
        start_all = time.perf_counter()
        while len(times) < max_repeats and (not times or time.perf_counter() - start_all < budget_s):
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                out = fn()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e))
                del out
                if peak is None:
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), peak


def run_bench(path: str, device: str, small: bool, case_timeout: float) -> None:
    import torch

    from rdcnet.ssdc import apply_ssdc

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True  # the framework default; float32 on tensor cores is TF32
    torch.backends.cuda.matmul.allow_tf32 = True
    way = "fused" if path.startswith("fused") else path
    timer = Timer(device)
    budget = (0.05, 3) if small else (1.0, 20)  # seconds of repeats, most repeats
    native = Native()
    for name, batch, shape, channels, dt, passes in op_bench_cases(small):
        row = {"kind": "bench", "case": name, "path": path, "group": "op"}
        try:
            with time_limit(case_timeout):
                dtype = getattr(torch, dt)
                inputs = make_ssdc_inputs(batch, GROUPS, channels, shape, DILATIONS, dtype, device,
                                          requires_grad=passes == "fwd+bwd")
                if path == "chain":
                    fmt = torch.channels_last if len(shape) == 2 else torch.channels_last_3d
                    inputs[0] = inputs[0].detach().to(memory_format=fmt).requires_grad_(passes == "fwd+bwd")

                def step():
                    if passes == "fwd":
                        with torch.no_grad():
                            return apply_ssdc(*inputs, DILATIONS, GROUPS, SLOPE, path=way)
                    y = apply_ssdc(*inputs, DILATIONS, GROUPS, SLOPE, path=way)
                    return torch.autograd.grad(y, inputs, torch.ones_like(y))

                native.calls.clear()
                ms, mem = timer(step, *budget)
            row.update(status="ok", ms=ms, tflops=ssdc_flops(batch, shape, channels, passes) / (ms * 1e-3) / 1e12,
                       peak_mb=mem, kernel=native.kernel() if way == "fused" else "–")
        except Exception as err:  # noqa: BLE001
            row.update(status="error", error=f"{type(err).__name__}: {err}"[:200])
        emit(row)
    from rdcnet import RDCNet

    for name, kind, ndim, in_shape, factor in model_cases(small):
        row = {"kind": "bench", "case": name, "path": path, "group": "model"}
        try:
            with time_limit(case_timeout):
                cfg = dict(groups=2, channels_per_group=16, iterations=2) if small else {}
                torch.manual_seed(0)
                model = RDCNet(ndim=ndim, factor=factor, ssdc_path=way, **cfg).to(device)
                x = torch.randn(in_shape, device=device)
                autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
                if kind == "train":
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

                    def step():
                        opt.zero_grad(set_to_none=True)
                        with autocast:
                            out = model(x)
                            loss = out.embeddings.float().square().mean() + out.logits.float().square().mean()
                        loss.backward()
                        opt.step()
                        return loss.detach()
                else:
                    model.eval()

                    def step():
                        with torch.no_grad(), autocast:
                            return model(x).embeddings

                native.calls.clear()
                ms, mem = timer(step, *((0.05, 2) if small else (2.0, 5)))
            row.update(status="ok", ms=ms, peak_mb=mem, kernel=native.kernel() if way == "fused" else "–")
        except Exception as err:  # noqa: BLE001
            row.update(status="error", error=f"{type(err).__name__}: {err}"[:200])
        emit(row)


def run_section(section: str, device: str, small: bool, case_timeout: float) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
    for part in section.split("+"):
        if part == "ops":
            run_ops(device, small, case_timeout)
        elif part.startswith("ssdc-"):
            run_ssdc_checks(part[len("ssdc-"):], device, small, case_timeout)
        else:
            run_bench(part[len("bench-"):], device, small, case_timeout)


# ---- the parent: run the sections, render one Markdown report -------------------------------------


def collect(section: str, kernel: str, args) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--section", section, "--device", args.device,
           "--case-timeout", str(args.case_timeout)] + (["--small"] if args.small else [])
    env = dict(os.environ, **{KERNEL_ENV: kernel})
    note = None
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.section_timeout)
        out, err, rc = res.stdout, res.stderr, res.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, rc = "", None
        note = f"section timed out after {args.section_timeout:g} s"
    rows = [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
    if rc not in (0, None):
        tail = [line for line in err.strip().splitlines() if line.strip()][-1:] or [f"exit status {rc}"]
        note = f"section crashed: {tail[0][:200]}"
    seen = {r.get("name") or f"{r['case']} | {r['path']}" for r in rows}
    for missing in planned_rows(section, args.small):
        if missing not in seen:
            if " | " in missing:
                case, path = missing.split(" | ")
                rows.append({"kind": "bench", "case": case, "path": path, "status": "error",
                             "error": f"not run ({note or 'no result'})"})
            else:
                rows.append({"kind": "check", "name": missing, "status": "FAIL", "error": f"not run ({note or 'no result'})"})
    return rows


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def render(rows: list[dict], args, elapsed: float) -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else platform.processor() or "CPU"
    lines = [f"# gpu_check ({args.device}{', small' if args.small else ''})", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {gpu}, torch {torch.__version__}, "
             f"{elapsed:.0f} s. Command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`", "",
             "## Correctness", "", "| check | result | kernel | error | tolerance |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "check":
            lines.append(f"| {r['name']} | {r['status']} | {r.get('kernel', '–')} | {r.get('error', '')} | "
                         f"{r.get('tolerance', '–')} |")
    lines += ["", "## Speed and memory", "",
              "Median of timed repeats after a warm-up; TFLOP/s counts useful FLOPs (forward+backward = 3× forward); "
              "peak memory above the inputs; `vs chain` = chain time / this time and this peak / chain peak.", "",
              "| case | path | kernel | time (ms) | TFLOP/s | peak (MB) | speed vs chain | memory vs chain |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    chain = {r["case"]: r for r in rows if r["kind"] == "bench" and r["path"] == "chain" and r["status"] == "ok"}
    for r in rows:
        if r["kind"] != "bench":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['path']} | – | error: {r.get('error', '')} | | | | |")
            continue
        c = chain.get(r["case"])
        speed = c["ms"] / r["ms"] if c else None
        mem = r["peak_mb"] / c["peak_mb"] if c and r.get("peak_mb") is not None and c.get("peak_mb") else None
        lines.append(f"| {r['case']} | {r['path']} | {r.get('kernel', '–')} | {r['ms']:.2f} | {_fmt(r.get('tflops'), '.3g')} | "
                     f"{_fmt(r.get('peak_mb'), '.0f')} | {_fmt(speed, '.2f')}{'×' if speed else ''} | "
                     f"{_fmt(mem, '.2f')}{'×' if mem else ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny inputs (CI smoke run of the logic)")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--case-timeout", type=float, default=40.0, help="seconds per case (default 40)")
    parser.add_argument("--section-timeout", type=float, default=150.0, help="seconds per subprocess (default 150)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section, print RESULT lines
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.device, args.small, args.case_timeout)
        return 0
    start = time.perf_counter()
    rows = []
    for section, kernel in sections(args.device):
        print(f"[gpu_check] {section} ...", file=sys.stderr, flush=True)
        rows += collect(section, kernel, args)
    report = render(rows, args, time.perf_counter() - start)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
