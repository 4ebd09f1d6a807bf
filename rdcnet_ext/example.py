"""Runnable example: ``python -m rdcnet_ext.example [--size 1024] [--instances 500] [--device cpu]``.

Makes a synthetic image of touching objects and the embeddings a good model would predict for it
(with noisy and outlier pixels), turns them into instance labels with the fast pipeline, checks
the result against the pure-PyTorch reference, and reports how many objects were recovered and
how long each implementation took.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from . import has_cuda, ops, reference
from .testing import synthetic_embeddings


def matched_fraction(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of true objects overlapped by one predicted object with IoU > threshold (such a
    match is unique, so no assignment problem arises)."""
    t, p = true.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    nt, npred = int(t.max()) + 1, int(p.max()) + 1
    inter = np.bincount(t * npred + p, minlength=nt * npred).reshape(nt, npred)[1:, 1:]
    area_t, area_p = np.bincount(t, minlength=nt)[1:], np.bincount(p, minlength=npred)[1:]
    iou = inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)
    return float((iou > threshold).any(axis=1).mean()) if len(area_t) else 1.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--instances", type=int, default=500, help="approximate number of objects")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() and has_cuda else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"Synthetic {args.size}x{args.size} image with ~{args.instances} touching objects ...")
    field = synthetic_embeddings((args.size, args.size), args.instances, noise=0.7, outliers=0.01,
                                 nonfinite=0.001, seed=args.seed)
    emb = torch.from_numpy(field.embeddings).to(args.device)
    mask = torch.from_numpy(field.mask).to(args.device)
    params = dict(min_distance=6.0, min_votes=5, smooth_radius=1)

    def timed(fn):
        fn()  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    fast, t_fast = timed(lambda: ops.embeddings_to_labels(emb, mask, **params))
    slow, t_slow = timed(lambda: reference.embeddings_to_labels(emb, mask, **params))
    same = torch.equal(fast, slow)
    found = int(fast.max())
    recovered = matched_fraction(field.labels, fast.cpu().numpy())
    print(f"objects: {field.centres.shape[0]} true, {found} found; "
          f"{100 * recovered:.1f}% of true objects recovered at IoU > 0.5")
    print(f"rdcnet_ext.ops on {args.device}: {1e3 * t_fast:.1f} ms; pure-PyTorch reference: "
          f"{1e3 * t_slow:.1f} ms ({t_slow / t_fast:.0f}x slower); identical labels: {same}")
    if not same:
        raise SystemExit("fast pipeline and reference disagree")


if __name__ == "__main__":
    main()
