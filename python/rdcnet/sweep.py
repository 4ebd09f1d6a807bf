"""The hyperparameter analysis of the paper's Fig. 4 (scoring: :mod:`rdcnet.evaluation`).

* :func:`run_sweep` — train one model per setting (sets of dilation rates; iteration counts),
  evaluate each on the test split, write ``sweep.csv``, ``sweep.md`` and the two Fig. 4 panels
  ``fig4_dilations.png`` / ``fig4_iterations.png``. Every setting trains in its own run folder
  through :func:`rdcnet.train.train`, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._files import atomic_write
from .evaluation import evaluate_iterations, evaluate_model, metric_at, plot_f1_curves, table1

__all__ = ["evaluate_model", "evaluate_iterations", "run_sweep", "SweepResult", "table1", "plot_f1_curves",
           "setting_name"]  # (the evaluation functions live in rdcnet.evaluation; re-exported here)


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

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)  # (an interrupted sweep leaves the previous sweep.csv whole)


def _row(panel: str, label: str, dilations, iterations: int, trained_iterations: int, run_dir: Path,
         split: str, summary) -> dict:
    m = summary.mean
    row = {"panel": panel, "setting": label, "dilations": "-".join(str(int(d)) for d in dilations),
           "iterations": int(iterations), "trained_iterations": int(trained_iterations), "run_dir": str(run_dir),
           "split": split, "n_images": len(summary.per_image),
           "precision@0.5": metric_at(m, "precision", 0.5), "recall@0.5": metric_at(m, "recall", 0.5),
           "f1@0.5": metric_at(m, "f1", 0.5), "sbd": float(m["sbd"]), "aji": float(m["aji"])}
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
    from .checkpoint import load_checkpoint

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
