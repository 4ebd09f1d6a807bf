"""Small helpers the benchmark scripts share: F1 over a set of images, and writing the report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def f1_curve(truths, preds, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """F1 at each IoU threshold from the matching counts summed over the images (an object-level
    F1 of the whole set, not a mean of per-image F1s)."""
    from rdcnet.metrics import match

    counts = np.zeros((3, len(thresholds)))
    for t, p in zip(truths, preds):
        for i, th in enumerate(thresholds):
            counts[:, i] += match(t, p, th)
    tp, fp, fn = counts
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def finish(lines: list, out: Optional[str], script: str, argv, prefix: str = "") -> int:
    """Append the command line and date, print the report and write it to ``out`` (Markdown)."""
    lines = lines + ["", f"{prefix}Command: `python benchmarks/{script} {' '.join(argv or sys.argv[1:])}`, "
                         f"{time.strftime('%Y-%m-%d')}."]
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0
