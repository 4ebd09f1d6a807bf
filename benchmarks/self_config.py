"""Does the option-free plan segment as well as hand-tuned options in the same time? (issue 17, item 5)

Synthetic nuclei at several object sizes (2D: median diameters 6, 12, 24, 48 px; anisotropic 3D:
z spacing 4× the xy pixel, 12 and 24 px across in xy). For each data set, every run gets the same
time budget (``--time``; the planner fits epochs × steps to it on this machine, as
``rdcnet train`` does) and the test images are scored at IoU 0.5 … 0.9:

- ``plan``: no options (``rdcnet train --images I --labels L --out runs/x``);
- ``old defaults``: the data-dependent settings the CLI used before the planner (margin 5,
  factor 4 (1,4,4 in 3D), crop 256 (16,128,128), dilations 1,2,4,8; clipped to the images), with
  the width and schedule still planned for the budget (kinder to them than the old 50 × 100 steps);
- hand-tuned: the planned settings with the factor one step finer and one coarser (in 3D: in
  the image plane, and z one step finer where the plan coarsens z), and the
  margin at 1/4 or 1/3 of the median diameter (whichever the plan does not use: it plans d/3,
  at least 2 pixels; it planned d/4 until the run recorded in benchmarks/README.md).

    python benchmarks/self_config.py --time 75 --out benchmarks/self_config.md

One run per cell and data seed (``--seeds``): one 75 s run varies by up to ±0.05 in mean F1, and
the measured step time that sets a plan's steps by up to ±30 % between identical settings; each
run follows its own pace within the budget (``TrainConfig.time_limit``), and the table gives the
steps it trained. ``self_config_pool.py`` pools the 2D runs of several tables by factor.
Every variant is planned once untimed before the runs, so that no run pays the one-time sSDC path
tuning (a user's first run does, within its budget).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import THRESHOLDS, f1_curve, finish  # noqa: E402

SPACING_3D = (2.0, 0.5, 0.5)


def datasets(sizes_2d, sizes_3d, n_train: int, n_val: int, n_test: int):
    from rdcnet.data import nuclei_2d, nuclei_3d

    for d in sizes_2d:
        side = int(min(320, max(128, 10 * d)))
        r = (0.42 * d, 0.58 * d)  # mean semi-axis: the median equivalent diameter is about d
        make = lambda n, seed: nuclei_2d(n, shape=(side, side), seed=seed, radius=r, min_size=max(6, int(d * d / 8)),
                                         blur_sigma=(0.6, 0.6 + d / 24))
        yield f"2D d={d}", (1.0, 1.0), make
    for d in sizes_3d:  # d: diameter in xy pixels; z pixels are 4x coarser
        side = int(min(160, max(64, 6 * d)))
        depth = max(12, int(6 * d * SPACING_3D[1] / SPACING_3D[0]))
        r = (0.42 * d * SPACING_3D[1], 0.58 * d * SPACING_3D[1])
        make = lambda n, seed: nuclei_3d(n, shape=(depth, side, side), spacing=SPACING_3D, seed=seed, radius=r,
                                         min_size=max(6, int(d ** 3 / 40)), psf_sigma=(1.2, 0.3 + d * 0.5 / 24))
        yield f"3D d={d} (xy)", SPACING_3D, make


def make_plan(overrides, fp, data, budget):
    """What ``rdcnet train`` plans for these data (fingerprint ``fp``) and options (the step time
    measured now)."""
    from rdcnet.plan import crop_sampler, plan_training

    val_pixels = sum(int(np.prod(lab.shape)) for _, lab in data["val"])
    return plan_training(fp, dict(overrides, time=budget), device="cpu", val_pixels=val_pixels,
                         sample=crop_sampler(data["train"], seed=0))


def run_one(name, plan, fp, data, spacing, work: Path) -> dict:
    """Train with ``plan`` (made by :func:`make_plan`; its planning time counts in ``seconds``)
    and score the best checkpoint on the test images."""
    import rdcnet
    from rdcnet.checkpoint import load_checkpoint
    from rdcnet.train import train

    t0 = time.perf_counter()
    cfg = plan.train_config(work / name, seed=0, device="cpu")
    torch.manual_seed(0)
    model = rdcnet.RDCNet(fp.ndim, fp.channels, spacing=spacing, **plan.model_kwargs())
    result = train(model, data["train"], data["val"], cfg, resume=False, progress=False)
    seconds = time.perf_counter() - t0 + plan.machine.get("planning_seconds", 0.0)
    model, post, _ = load_checkpoint(result.best_checkpoint)
    truths = [lab for _, lab in data["test"]]
    preds = [rdcnet.predict(model, im, post) for im, _ in data["test"]]
    curve = f1_curve(truths, preds)
    v = plan.values
    # "epochs" is the plan's; a run with a time limit trains as many steps as fit at its own pace.
    trained = torch.load(result.last_checkpoint, weights_only=True, map_location="cpu")["pace"]["steps"]
    return {"name": name, "seconds": seconds, "f1": curve.tolist(), "mean": float(curve.mean()),
            "trained_epochs": len(result.history), "trained_steps": int(trained), "time_limit": cfg.time_limit,
            "settings": {k: v[k] for k in ("factor", "margin", "crop", "groups", "channels_per_group", "batch_size",
                                           "epochs", "steps_per_epoch")}}


def grid(plan_values: dict, fp, ndim: int, old: bool = True):
    """The hand-tuned variants around the plan (and the old defaults)."""
    factor = list(plan_values["factor"])
    d = fp.diameter["median"]
    variants = {}
    finer = [max(1, f // 2) if (ndim == 2 or a > 0) else f for a, f in enumerate(factor)]
    coarser = [min(8, f * 2) if (ndim == 2 or a > 0) else f for a, f in enumerate(factor)]
    if finer != factor and max(finer) >= (2 if ndim == 3 else 1):  # (3D at full resolution: too slow for a CPU)
        variants[f"factor {','.join(map(str, finer))}"] = {"factor": finer}
    if coarser != factor:
        variants[f"factor {','.join(map(str, coarser))}"] = {"factor": coarser}
    if ndim == 3 and factor[0] > 1:  # the coarsely sampled z axis one step finer too
        z_finer = [factor[0] // 2] + factor[1:]
        variants[f"factor {','.join(map(str, z_finer))}"] = {"factor": z_finer}
    for frac, label in ((1 / 4, "d/4"), (1 / 3, "d/3")):  # (d/6 lost at every size in a first run)
        margin = round(max(d * frac, max(fp.spacing)), 2)
        if abs(margin - plan_values["margin"]) > 0.05 * plan_values["margin"]:  # (not the plan's own again)
            variants[f"margin {label}"] = {"margin": margin}
    if old:
        shape = fp.image_shape["median"]
        crop = [16, 128, 128] if ndim == 3 else [256, 256]
        f_old = [1, 4, 4] if ndim == 3 else [4, 4]
        crop = [max(f, min(c, s) // f * f) for c, s, f in zip(crop, shape, f_old)]
        variants["old defaults"] = {"margin": 5.0, "factor": f_old, "crop": crop, "dilations": [1, 2, 4, 8]}
    return variants


def main(argv=None) -> int:
    from rdcnet.plan import fingerprint
    from rdcnet import machine

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time", type=float, default=75.0, help="time budget per run in seconds (default 75)")
    p.add_argument("--sizes-2d", default="6,12,24,48")
    p.add_argument("--sizes-3d", default="12,24")
    p.add_argument("--images", default="16,4,8", help="training, validation, test images per data set")
    p.add_argument("--seeds", default="0", help="comma-separated shifts of the data sets' seeds: one set of fresh "
                                                "images (and one run per variant) per value; the summary averages "
                                                "over them (default 0)")
    p.add_argument("--seed", type=int, help="one data seed shift (the same as --seeds N)")
    p.add_argument("--variants", help="run names to keep, separated by ';' (e.g. 'plan;factor 4,4'; default all)")
    p.add_argument("--out", help="Markdown file for the table (a .json beside it keeps every run)")
    args = p.parse_args(argv)
    n_train, n_val, n_test = (int(v) for v in args.images.split(","))
    sizes_2d = [int(v) for v in args.sizes_2d.split(",") if v]
    sizes_3d = [int(v) for v in args.sizes_3d.split(",") if v]
    seeds = [args.seed] if args.seed is not None else [int(v) for v in args.seeds.split(",") if v]
    keep = None if not args.variants else {v.strip() for v in args.variants.split(";") if v.strip()}
    work = Path(tempfile.mkdtemp(prefix="rdcnet-selfconfig-"))
    cpu = machine.cpu_description()
    lines = [f"Machine: {cpu['model']}, {torch.get_num_threads()} threads, torch {torch.__version__}; time budget "
             f"{args.time:g} s per run; {n_train} training, {n_val} validation, {n_test} test images per data set; "
             f"data seed shift(s) {', '.join(map(str, seeds))}.",
             "", "| data | seed | run | factor | margin | crop | width | steps trained | wall s | F1@0.5 | F1@0.9 | mean F1 0.5-0.9 |",
             "|---|---:|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    records = []
    for label, spacing, make in datasets(sizes_2d, sizes_3d, n_train, n_val, n_test):
        by_seed = {}
        for seed in seeds:
            data = {"train": make(n_train, 11 + seed), "val": make(n_val, 22 + seed), "test": make(n_test, 33 + seed)}
            fp = fingerprint(data["train"] + data["val"], spacing)
            # One plan per variant, each used by its run (planning twice would measure twice, and
            # the plan's own choices, e.g. the factor at 3D's few steps, could differ). The sSDC
            # path tuning of each new kind of call happens in an untimed first plan (cached on disk).
            make_plan({}, fp, data, args.time)
            first = make_plan({}, fp, data, args.time)
            variants = {"plan": {}, **grid(first.values, fp, fp.ndim)}
            if keep is not None:
                variants = {k: v for k, v in variants.items() if k in keep}
            for overrides in [v for k, v in variants.items() if k != "plan"]:
                make_plan(overrides, fp, data, args.time)
            plans = {name: first if name == "plan" else make_plan(overrides, fp, data, args.time)
                     for name, overrides in variants.items()}
            runs = [run_one(name, plans[name], fp, data, spacing, work / f"{label.replace(' ', '_')}_{seed}")
                    for name in variants]
            by_seed[seed] = {"median_diameter": fp.diameter["median"] if fp.diameter else None, "runs": runs}
            tuned = [r for r in runs if r["name"] != "old defaults"]
            best = max(tuned, key=lambda r: r["mean"])
            for r in runs:
                s = r["settings"]
                mark = " **best**" if r is best and len(tuned) > 1 else ""
                lines.append(f"| {label} | {seed} | {r['name']}{mark} | {','.join(map(str, s['factor']))} | "
                             f"{s['margin']:g} | {'×'.join(map(str, s['crop']))} | {s['groups']}×{s['channels_per_group']} | "
                             f"{r['trained_steps']}×{s['batch_size']} | {r['seconds']:.0f} | "
                             f"{r['f1'][0]:.3f} | {r['f1'][-1]:.3f} | {r['mean']:.3f} |")
            print("\n".join(lines[-len(runs):]), file=sys.stderr, flush=True)
        records.append(summarise(label, by_seed))
    lines += ["", "| data | median diameter (pixel units × spacing) | seeds | plan mean F1 | best hand-tuned (mean F1) | "
                  "plan − best (mean F1) | per seed | plan − old defaults (F1@0.9) |",
              "|---|---:|---:|---:|---|---:|---|---:|"]
    for rec in records:
        old = "" if rec["plan_f1_09_minus_old"] is None else f"{rec['plan_f1_09_minus_old']:+.3f}"
        best = "the plan" if rec["best"] == "plan" else f"{rec['best']} {rec['best_mean']:.3f}"
        lines.append(f"| {rec['data']} | {rec['median_diameter']:.1f} | {len(rec['seeds'])} | {rec['plan_mean']:.3f} | "
                     f"{best} | {rec['plan_minus_best']:+.3f} | "
                     f"{' '.join(f'{v:+.3f}' for v in rec['plan_minus_best_per_seed'])} | {old} |")
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    return finish(lines, args.out, "self_config.py", argv)


def summarise(label: str, by_seed: dict) -> dict:
    """Per variant, the mean over the data seeds; the plan against the best hand-tuned variant
    (by that mean) and the old defaults."""
    names = list(dict.fromkeys(r["name"] for s in by_seed.values() for r in s["runs"]))
    mean = {n: float(np.mean([r["mean"] for s in by_seed.values() for r in s["runs"] if r["name"] == n]))
            for n in names}
    f1_09 = {n: float(np.mean([r["f1"][-1] for s in by_seed.values() for r in s["runs"] if r["name"] == n]))
             for n in names}
    tuned = [n for n in names if n != "old defaults"]
    best = max(tuned, key=lambda n: mean[n])
    per_seed = []
    for s in by_seed.values():
        means = {r["name"]: r["mean"] for r in s["runs"]}
        per_seed.append(means.get("plan", float("nan")) - means.get(best, float("nan")))
    return {"data": label, "seeds": list(by_seed), "median_diameter": next(iter(by_seed.values()))["median_diameter"],
            "runs": {str(k): v["runs"] for k, v in by_seed.items()}, "mean_f1": mean, "f1_09": f1_09,
            "best": best, "best_mean": mean[best], "plan_mean": mean.get("plan", float("nan")),
            "plan_minus_best": mean.get("plan", float("nan")) - mean[best], "plan_minus_best_per_seed": per_seed,
            "plan_f1_09_minus_old": (f1_09["plan"] - f1_09["old defaults"]
                                     if "plan" in f1_09 and "old defaults" in f1_09 else None)}


if __name__ == "__main__":
    sys.exit(main())
