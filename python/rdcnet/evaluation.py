"""Scoring a model on (image, labels) pairs and the paper's Table 1 / Fig. 4 layouts.

* :func:`evaluate_model` — segment (image, labels) pairs with a model and score them
  (:func:`rdcnet.metrics.evaluate`: per-image metrics averaged over images).
* :func:`evaluate_iterations` — one trained model, the recurrence stopped after 1, 2, ... steps
  (``predict(..., iterations=i)``): F1 vs IoU threshold per iteration count.
* :func:`table1` — Markdown rows ``Dataset | Method | Precision | Recall | F1 | SBD | AJI`` in %.
* :func:`plot_f1_curves` — F1 against the IoU threshold (the panels of Fig. 4).

Used by experiment files (:mod:`rdcnet.config`) and the sweep (:mod:`rdcnet.sweep`); depends on
neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["evaluate_model", "evaluate_iterations", "table1", "plot_f1_curves", "metric_at"]


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(model, pairs: Sequence, postprocess=None, thresholds=None, names: Optional[Sequence[str]] = None,
                   iterations: Optional[int] = None, device=None, tile_shape=None, progress: bool = False,
                   save_dir=None):
    """Segment every ``(image, labels)`` pair with ``model`` (:func:`rdcnet.predict`) and score
    the predictions against the labels: a :class:`rdcnet.metrics.Summary` (per-image metrics and
    their mean over images). ``iterations`` stops the recurrence early; ``save_dir`` also writes
    the predicted labels as ``<save_dir>/<name>.tif``."""
    from . import metrics
    from .predict import predict

    if thresholds is None:
        thresholds = metrics.DEFAULT_THRESHOLDS
    pairs = list(pairs)
    if not pairs:
        raise ValueError("evaluate_model: no (image, labels) pairs to evaluate")
    names = [str(i) for i in range(len(pairs))] if names is None else [str(n) for n in names]
    if len(names) != len(pairs):
        raise ValueError(f"evaluate_model: {len(names)} names for {len(pairs)} pairs")
    truths, preds = [], []
    iterator = zip(names, pairs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(pairs), desc="evaluating", unit="image", leave=False)
    for name, (image, labels) in iterator:
        pred = predict(model, image, postprocess, tile_shape=tile_shape, device=device, iterations=iterations)
        truths.append(np.asarray(labels))
        preds.append(pred)
        if save_dir is not None:
            from .data import write_labels

            write_labels(Path(save_dir) / f"{name}.tif", pred)
    return metrics.evaluate(truths, preds, thresholds=thresholds, names=names)


def evaluate_iterations(model, pairs: Sequence, postprocess=None, iterations: Iterable[int] = range(1, 11),
                        thresholds=None, device=None, tile_shape=None, return_summaries: bool = False):
    """Evaluate one trained model with its recurrence stopped after each of ``iterations`` steps
    (counts above the trained number run the shared block further).

    Returns ``{i: (thresholds, mean F1 per threshold)}`` (NumPy arrays; F1 averaged over
    images), or ``{i: Summary}`` with ``return_summaries``.
    """
    out = {}
    for i in iterations:
        i = int(i)
        s = evaluate_model(model, pairs, postprocess, thresholds=thresholds, iterations=i, device=device,
                           tile_shape=tile_shape)
        out[i] = s if return_summaries else (np.asarray(s.thresholds, float), np.asarray(s.mean["f1"], float))
    return out


# --------------------------------------------------------------------------------------------
# Table 1


def metric_at(row: Mapping[str, Any], metric: str, threshold: float) -> float:
    key = f"{metric}@{threshold:g}"
    if key in row:
        return float(row[key])
    th = row.get("thresholds")
    if th is not None and metric in row:
        th = np.asarray(th, float)
        i = int(np.argmin(np.abs(th - threshold)))
        if abs(th[i] - threshold) < 1e-9:
            return float(np.asarray(row[metric])[i])
    raise ValueError(f"table1: no {metric} at IoU {threshold:g} in the summary (evaluate that threshold)")


def table1(summary, dataset: str = "", method: str = "RDCNet", threshold: float = 0.5, digits: int = 1) -> str:
    """Markdown table in the layout of the paper's Table 1: ``Dataset | Method | Precision |
    Recall | F1 | SBD | AJI`` in %, precision/recall/F1 at IoU ``threshold`` (0.5), each the
    mean over images.

    ``summary``: a :class:`rdcnet.metrics.Summary` (one row named ``dataset``/``method``), or a
    sequence of ``(dataset, method, Summary)`` rows; a Summary may also be given as its
    ``mean`` dict. As in the paper, the dataset name is written only where it changes.
    """
    rows = [(dataset, method, summary)] if not isinstance(summary, (list, tuple)) else list(summary)
    lines = ["| Dataset | Method | Precision | Recall | F1 | SBD | AJI |",
             "|---|---|---:|---:|---:|---:|---:|"]
    previous = None
    for row in rows:
        try:
            ds, meth, s = row
        except (TypeError, ValueError):
            raise ValueError(f"table1: expected (dataset, method, summary) rows, got {row!r}") from None
        mean = s.mean if hasattr(s, "mean") and isinstance(getattr(s, "mean"), Mapping) else s
        values = [metric_at(mean, m, threshold) for m in ("precision", "recall", "f1")]
        values += [float(mean["sbd"]), float(mean["aji"])]
        cells = [f"{100 * v:.{digits}f}" for v in values]
        lines.append(f"| {ds if ds != previous else ''} | {meth} | " + " | ".join(cells) + " |")
        previous = ds
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# figures


def plot_f1_curves(curves: Mapping[str, Tuple[Sequence[float], Sequence[float]]], path, title: str = "",
                   legend_title: str = "") -> Path:
    """F1 against the IoU threshold, one line per entry of ``curves`` (``label -> (thresholds,
    f1)``), coloured in order along viridis as in Fig. 4; PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(len(curves), 1)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for k, (label, (th, f1)) in enumerate(curves.items()):
        ax.plot(np.asarray(th, float), np.asarray(f1, float), marker="o", ms=3, lw=1.5,
                color=cmap(0.9 * k / max(n - 1, 1)), label=str(label))
    ax.set(xlabel="IoU threshold", ylabel="F1 (mean over images)", xlim=(0.0, 1.0), ylim=(0.0, 1.02))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower left", fontsize="small", title=legend_title or None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
