"""Where do the strict-IoU errors come from? (issue 17, item 4)

Trains small RDCNets on the project's synthetic nuclei (the demo's data and model width) and splits
what keeps matched objects below IoU 0.9 into its sources, by swapping in the truth one part of the
decoding at a time:

- ``predicted``: the labels as decoded (decoding tuned on validation, as training does);
- ``true foreground``: the network's embeddings and decoding, on the true foreground mask (so only
  the assignment of foreground pixels to instances, and the centres, can be wrong);
- ``true assignment``: the predicted foreground mask, each foreground pixel given the label of the
  true object it lies in (the nearest one when outside every object): only the foreground mask
  can be wrong;
- ``no opening`` / ``argmax foreground``: the tuned opening or threshold undone.

For every matched pair (IoU ≥ 0.5) the missing IoU is also split by pixel: *mask* pixels (the
object's pixel is background in the prediction, or a predicted pixel is background in the truth)
against *assignment* pixels (foreground in both, given to another instance), and by distance from
the true boundary. Variants compare the down-sampling factor (the head up-samples by a transposed
convolution from the coarse map: the paper's architecture) at the same number of steps.

    python benchmarks/boundaries.py --steps 1200 --out benchmarks/boundaries.md

The training steps are fixed (not the time): this separates causes; the time-budget comparison is
``benchmarks/self_config.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import THRESHOLDS, f1_curve, finish  # noqa: E402


def true_assignment(truth: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """The predicted foreground ``fg`` labelled with the truth (nearest true object outside all)."""
    if truth.max() == 0:
        return np.zeros_like(truth)
    idx = ndi.distance_transform_edt(truth == 0, return_distances=False, return_indices=True)
    return np.where(fg, truth[tuple(idx)], 0).astype(np.int32)


def pixel_split(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Over the pairs matched at IoU ≥ 0.5 (IoU > 0.5 is one-to-one): their error pixels split into
    mask errors (foreground in one, background in the other) and assignment errors (foreground
    in both), and by distance to the true object's boundary (≤ 1 px, 2-3 px, farther)."""
    from rdcnet.metrics import iou_matrix

    iou, t_ids, p_ids = iou_matrix(truth, pred)
    out = dict(mask=0, assignment=0, near1=0, near3=0, far=0, pairs=0, below09=0)
    if iou.size == 0:
        return out
    pairs = np.argwhere(iou > 0.5)
    for ti, pi in pairs:
        t, p = truth == t_ids[ti], pred == p_ids[pi]
        err = t ^ p
        fg_both = (truth > 0) & (pred > 0)
        out["mask"] += int((err & ~fg_both).sum())
        out["assignment"] += int((err & fg_both).sum())
        # distance of each error pixel to the true object's boundary (inside and outside)
        dist = np.where(t, ndi.distance_transform_edt(t), ndi.distance_transform_edt(~t))
        d = dist[err]
        out["near1"] += int((d <= 1.5).sum())
        out["near3"] += int(((d > 1.5) & (d <= 3.5)).sum())
        out["far"] += int((d > 3.5).sum())
        out["pairs"] += 1
        out["below09"] += int(iou[ti, pi] < 0.9)
    return out


def train_variant(name: str, model_kwargs: dict, data: dict, steps: int, out: Path, seed: int = 0):
    from rdcnet.checkpoint import load_checkpoint
    from rdcnet.demo import DEMO_BATCH, DEMO_CROP, DEMO_LR, DEMO_MARGIN
    from rdcnet.machine import resolve_precision
    from rdcnet.model import RDCNet
    from rdcnet.postprocess import PostprocessConfig
    from rdcnet.train import TrainConfig, train

    torch.manual_seed(seed)
    model = RDCNet(**model_kwargs)
    epochs = 10
    amp = "bf16" if resolve_precision("auto", torch.device("cpu")) is not None else None
    cfg = TrainConfig(out_dir=str(out / name), margin=DEMO_MARGIN, crop=DEMO_CROP, epochs=epochs,
                      steps_per_epoch=max(1, steps // epochs), batch_size=DEMO_BATCH, lr=DEMO_LR, augment="grey",
                      seed=seed, device="cpu", postprocess=PostprocessConfig(margin=DEMO_MARGIN, min_votes=5),
                      amp=amp)
    t0 = time.perf_counter()
    result = train(model, data["train"], data["val"], cfg, resume=False, progress=False)
    model, post, _ = load_checkpoint(result.best_checkpoint)
    return model, post, time.perf_counter() - t0


def analyse(model, post, test) -> dict:
    from rdcnet.postprocess import foreground, labels_from_output
    from rdcnet.predict import predict_output, prepare_image

    spacing = model.config.spacing
    rows = {k: [] for k in ("predicted", "true foreground", "true assignment", "argmax foreground", "no opening")}
    truths, split = [], dict(mask=0, assignment=0, near1=0, near3=0, far=0, pairs=0, below09=0)
    for image, truth in test:
        out = predict_output(model, prepare_image(image, model), precision="fp32")
        emb, prob = out.embeddings, out.probabilities  # (ndim, *S), (n_classes, *S)
        pred = labels_from_output(emb, prob, spacing, post).numpy()
        one_hot = torch.zeros_like(prob)
        one_hot[0] = torch.from_numpy(truth == 0).float()
        one_hot[1] = torch.from_numpy(truth > 0).float()
        rows["predicted"].append(pred)
        rows["true foreground"].append(labels_from_output(emb, one_hot, spacing, post).numpy())
        rows["true assignment"].append(true_assignment(truth, foreground(prob, post.foreground_threshold).numpy()))
        rows["argmax foreground"].append(labels_from_output(
            emb, prob, spacing, dataclasses.replace(post, foreground_threshold=None)).numpy())
        rows["no opening"].append(labels_from_output(
            emb, prob, spacing, dataclasses.replace(post, opening_radius=None)).numpy())
        truths.append(truth)
        for k, v in pixel_split(truth, pred).items():
            split[k] += v
    return {"f1": {k: f1_curve(truths, v) for k, v in rows.items()}, "split": split}


def main(argv=None) -> int:
    from rdcnet.data import nuclei_2d
    from rdcnet.demo import DEMO_MODEL, DEMO_SHAPE

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1200, help="training steps per variant (batch 4)")
    p.add_argument("--factors", default="4,2", help="down-sampling factors to compare (default: %(default)s)")
    p.add_argument("--out", help="Markdown file for the tables")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    data = {split: nuclei_2d(n, shape=DEMO_SHAPE, seed=1000 * i + 7)
            for i, (split, n) in enumerate((("train", 48), ("val", 8), ("test", 16)))}
    n_obj = sum(int(t.max()) for _, t in data["test"])
    lines = [f"Synthetic 2D nuclei (the demo's generator: {DEMO_SHAPE[0]}² px, radius 4-11 px), 48 training, "
             f"8 validation, 16 test images ({n_obj} test objects); the demo's model width, {args.steps} steps of "
             "batch 4 per variant; decoding tuned on validation.", ""]
    work = Path(tempfile.mkdtemp(prefix="rdcnet-boundaries-"))
    results = {}
    for f in (int(v) for v in args.factors.split(",")):
        model, post, seconds = train_variant(f"factor{f}", dict(DEMO_MODEL, factor=f), data, args.steps, work)
        results[f] = analyse(model, post, data["test"]), post, seconds
        print(f"factor {f}: trained in {seconds:.0f} s; {post}", file=sys.stderr)
    lines += ["| factor | labels | " + " | ".join(f"F1@{t}" for t in THRESHOLDS) + " | mean F1 0.5-0.9 |",
              "|---|---|" + "---:|" * (len(THRESHOLDS) + 1)]
    for f, (res, post, seconds) in results.items():
        for name, curve in res["f1"].items():
            lines.append(f"| {f} | {name} | " + " | ".join(f"{v:.3f}" for v in curve) + f" | {curve.mean():.3f} |")
    lines += ["", "Error pixels of the pairs matched at IoU > 0.5 (all test images):", "",
              "| factor | pairs | of them IoU < 0.9 | mask errors | assignment errors | ≤ 1 px from the true "
              "boundary | 2-3 px | farther |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f, (res, post, seconds) in results.items():
        s = res["split"]
        total = max(s["mask"] + s["assignment"], 1)
        lines.append(f"| {f} | {s['pairs']} | {s['below09']} | {s['mask'] / total:.0%} | {s['assignment'] / total:.0%} "
                     f"| {s['near1'] / total:.0%} | {s['near3'] / total:.0%} | {s['far'] / total:.0%} |")
    lines += ["", "Tuned decoding: " + "; ".join(f"factor {f}: {post}" for f, (_, post, _) in results.items()),
              "", "Training times: " + ", ".join(f"factor {f} {s:.0f} s" for f, (_, _, s) in results.items()) + "."]
    return finish(lines, args.out, "boundaries.py", argv)


if __name__ == "__main__":
    sys.exit(main())
