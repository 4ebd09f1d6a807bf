"""Evaluation over a split, the hyperparameter analysis of the paper's Fig. 4 and the layout of
its Table 1.

* :func:`evaluate_model` — segment (image, labels) pairs with a model and score them
  (:func:`rdcnet.metrics.evaluate`: per-image metrics averaged over images).
* :func:`evaluate_iterations` — one trained model, the recurrence stopped after 1, 2, ... steps
  (``predict(..., iterations=i)``): F1 vs IoU threshold per iteration count.
* :func:`run_sweep` — train one model per setting (sets of dilation rates; iteration counts),
  evaluate each on the test split, write ``sweep.csv``, ``sweep.md`` and the two Fig. 4 panels
  ``fig4_dilations.png`` / ``fig4_iterations.png``. Every setting trains in its own run folder
  through :func:`rdcnet.train.train`, so an interrupted sweep resumes where it stopped.
* :func:`table1` — Markdown rows ``Dataset | Method | Precision | Recall | F1 | SBD | AJI`` in %.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["evaluate_model", "evaluate_iterations", "run_sweep", "SweepResult", "table1", "plot_f1_curves",
           "setting_name"]


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


def _metric_at(row: Mapping[str, Any], metric: str, threshold: float) -> float:
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
        values = [_metric_at(mean, m, threshold) for m in ("precision", "recall", "f1")]
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


# --------------------------------------------------------------------------------------------
# the sweep


def setting_name(dilations: Sequence[int], iterations: int) -> str:
    """Run-folder name of a setting, e.g. ``d1-2-4-8_i5``."""
    return f"d{'-'.join(str(int(d)) for d in dilations)}_i{int(iterations)}"


@dataclass
class SweepResult:
    """Rows of ``sweep.csv`` (one per panel entry) and the files written."""

    rows: List[dict]
    files: Dict[str, Path]
    curves: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def _write_csv(path: Path, rows: List[dict]) -> None:
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _row(panel: str, label: str, dilations, iterations: int, trained_iterations: int, run_dir: Path,
         split: str, summary) -> dict:
    m = summary.mean
    row = {"panel": panel, "setting": label, "dilations": "-".join(str(int(d)) for d in dilations),
           "iterations": int(iterations), "trained_iterations": int(trained_iterations), "run_dir": str(run_dir),
           "split": split, "n_images": len(summary.per_image),
           "precision@0.5": _metric_at(m, "precision", 0.5), "recall@0.5": _metric_at(m, "recall", 0.5),
           "f1@0.5": _metric_at(m, "f1", 0.5), "sbd": float(m["sbd"]), "aji": float(m["aji"])}
    for t, f in zip(summary.thresholds, m["f1"]):
        row[f"f1@{float(t):g}"] = float(f)
    return row


def run_sweep(experiment_config, dilation_sets: Optional[Sequence[Sequence[int]]] = None,
              iteration_counts: Optional[Sequence[int]] = None, out_dir=None, *,
              dilation_iterations: Optional[int] = None, epochs: Optional[int] = None,
              steps_per_epoch: Optional[int] = None, iterations_from_one_model: Optional[bool] = None,
              split: Optional[str] = None, device=None, resume: bool = True, progress: bool = True,
              model_overrides: Optional[dict] = None, train_overrides: Optional[dict] = None) -> SweepResult:
    """Hyperparameter analysis of the paper's Fig. 4 for one experiment.

    Args:
        experiment_config: an :class:`rdcnet.config.ExperimentConfig` (or a path to its TOML).
        dilation_sets: dilation rates per setting of the top panel (default ``[sweep]
            dilation_sets``, else ``[[1], [1, 2], [1, 2, 4], [1, 2, 4, 8]]``); each trains with
            ``dilation_iterations`` steps (default ``[sweep] dilation_iterations``, else the
            model's configured iterations; the paper uses 10).
        iteration_counts: iterations per setting of the bottom panel (default ``[sweep]
            iteration_counts``, else ``[1, 2, 3, 5, 10]``), trained with the configured
            dilations. With ``iterations_from_one_model`` a single model trained with
            ``max(iteration_counts)`` steps is evaluated with its recurrence stopped early.
        out_dir: sweep folder (default ``[sweep] out`` else ``<train.out_dir>-sweep``); one run
            folder per setting (``setting_name``) inside, shared when both panels hold the same
            setting. Finished runs are not retrained (``resume``).
        epochs, steps_per_epoch: schedule per setting (default ``[sweep]``, else ``[train]``).
        split: evaluation split (default ``evaluate.split`` or "test"; "val" if test is empty).
        model_overrides / train_overrides: extra RDCNet / TrainConfig keywords for every run.

    Writes ``sweep.csv`` (updated after every setting: panel, setting, dilations, iterations,
    run_dir, precision/recall/F1@0.5, SBD, AJI, F1 at every IoU threshold), ``sweep.md``
    (Table 1 layout, one row per setting), ``fig4_dilations.png`` and ``fig4_iterations.png``
    (F1 vs IoU threshold per setting; a panel without settings is not drawn). Returns a
    :class:`SweepResult` whose ``files`` lists what was written.
    """
    from .config import ExperimentConfig, load_config
    from .train import load_checkpoint

    cfg = experiment_config if isinstance(experiment_config, ExperimentConfig) else load_config(experiment_config)
    sw = cfg.sweep
    dilation_sets = [list(map(int, d)) for d in (dilation_sets if dilation_sets is not None
                                                  else sw.get("dilation_sets", [[1], [1, 2], [1, 2, 4], [1, 2, 4, 8]]))]
    iteration_counts = [int(i) for i in (iteration_counts if iteration_counts is not None
                                         else sw.get("iteration_counts", [1, 2, 3, 5, 10]))]
    model_overrides = dict(model_overrides or {})
    base_kw = cfg.model_kwargs(**model_overrides)
    base_dilations = list(base_kw.get("dilations", (1, 2, 4, 8)))
    base_iterations = int(base_kw.get("iterations", 5))
    dil_iter = int(dilation_iterations if dilation_iterations is not None
                   else sw.get("dilation_iterations", base_iterations))
    one_model = bool(iterations_from_one_model if iterations_from_one_model is not None
                     else sw.get("iterations_from_one_model", False))
    train_overrides = dict(train_overrides or {})
    for key, value in (("epochs", epochs if epochs is not None else sw.get("epochs")),
                       ("steps_per_epoch", steps_per_epoch if steps_per_epoch is not None
                        else sw.get("steps_per_epoch"))):
        if value is not None:
            train_overrides[key] = int(value)
    if device is not None:
        train_overrides["device"] = device
    out = Path(out_dir if out_dir is not None else sw.get("out", str(cfg.default_out_dir()) + "-sweep"))
    out.mkdir(parents=True, exist_ok=True)

    splits = cfg.load_data()
    split = split or cfg.evaluate.get("split", "test")
    if not splits[split]:
        if split == "test" and splits.val:
            print("sweep: the test split is empty, evaluating on the validation split", file=sys.stderr)
            split = "val"
        else:
            raise ValueError(f"sweep: the {split!r} split is empty")
    pairs, names = splits[split], splits.names[split]
    thresholds = cfg.thresholds()

    trained: Dict[str, Path] = {}

    def train_setting(dilations, iterations) -> Path:
        name = setting_name(dilations, iterations)
        if name not in trained:
            if progress:
                print(f"sweep: training {name}", file=sys.stderr)
            result = cfg.run_training(out / name, resume=resume, progress=progress, splits=splits,
                                      model_overrides={**model_overrides, "dilations": tuple(dilations),
                                                       "iterations": int(iterations)},
                                      **train_overrides)
            trained[name] = Path(result.best_checkpoint)
        return trained[name]

    def evaluate_checkpoint(ckpt: Path, iterations=None):
        dev = train_overrides.get("device", cfg.train.get("device", "auto"))
        if dev == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        model, post, _ = load_checkpoint(ckpt, device=dev)
        import dataclasses

        post = dataclasses.replace(post, **cfg.postprocess)
        return evaluate_model(model, pairs, post, thresholds=thresholds, names=names, iterations=iterations,
                              device=dev, tile_shape=cfg.evaluate.get("tile"))

    rows: List[dict] = []
    curves: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]] = {"dilations": {}, "iterations": {}}
    files = {"sweep.csv": out / "sweep.csv", "sweep.md": out / "sweep.md",
             "fig4_dilations.png": out / "fig4_dilations.png", "fig4_iterations.png": out / "fig4_iterations.png"}
    summaries: List[Tuple[str, str, Any]] = []

    def record(panel, label, dilations, iterations, trained_iterations, ckpt, summary):
        rows.append(_row(panel, label, dilations, iterations, trained_iterations, ckpt.parent, split, summary))
        curves[panel][label] = (np.asarray(summary.thresholds, float), np.asarray(summary.mean["f1"], float))
        summaries.append((cfg.name, f"RDCNet {panel}: {label}", summary))
        _write_csv(files["sweep.csv"], rows)

    for dilations in dilation_sets:
        ckpt = train_setting(dilations, dil_iter)
        label = f"dilations {','.join(map(str, dilations))}"
        record("dilations", label, dilations, dil_iter, dil_iter, ckpt, evaluate_checkpoint(ckpt))
    if one_model and iteration_counts:
        n_max = max(iteration_counts)
        ckpt = train_setting(base_dilations, n_max)
        for n in iteration_counts:
            record("iterations", f"{n} iteration{'s' if n != 1 else ''}", base_dilations, n, n_max, ckpt,
                   evaluate_checkpoint(ckpt, iterations=n))
    else:
        for n in iteration_counts:
            ckpt = train_setting(base_dilations, n)
            record("iterations", f"{n} iteration{'s' if n != 1 else ''}", base_dilations, n, n, ckpt,
                   evaluate_checkpoint(ckpt))

    files["sweep.md"].write_text(f"# {cfg.name}: hyperparameter sweep ({split} split)\n\n"
                                 + table1(summaries) + "\n")
    titles = {"dilations": f"{cfg.name}: dilation rates ({dil_iter} iterations)",
              "iterations": f"{cfg.name}: iterations (dilations {','.join(map(str, base_dilations))})"
                            + (", one model stopped early" if one_model else "")}
    for panel, title in titles.items():
        if curves[panel]:
            plot_f1_curves(curves[panel], files[f"fig4_{panel}.png"], title=title)
        else:  # an empty panel is not drawn (a figure from an earlier call is left alone)
            del files[f"fig4_{panel}.png"]
    return SweepResult(rows, files, curves)
