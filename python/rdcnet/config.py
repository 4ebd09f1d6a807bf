"""Experiment configuration files (TOML): data, model, training, post-processing, evaluation
and the hyperparameter sweep of one experiment in one file (``configs/*.toml``).

Layout (every section optional except ``[data]``; unknown keys are errors naming the key and
the file; relative paths are relative to the config file's folder)::

    name = "CVPPP2017"            # data set name in tables (paper Table 1 "Dataset" column)

    [data]
    kind = "cvppp"                # "cvppp" | "monuseg" | "stacks3d" | "folder" | "synthetic"
    path = "../data/A1"           # per kind, see DATA_KEYS below
    seed = 0                      # split seed, recorded in <run>/splits.json

    [model]                       # rdcnet.RDCNet keyword arguments (ndim, in_channels and
    factor = [4, 4]               # spacing default to the data's)

    [train]                       # rdcnet.TrainConfig fields (not postprocess)
    margin = 10.0
    crop = [480, 480]
    augment = "rgb"               # preset: "rgb" | "grey" | "none"

    [augment]                     # rdcnet.data.AugmentConfig fields overriding the preset

    [postprocess]                 # rdcnet.PostprocessConfig fields (margin defaults to train's)

    [evaluate]                    # thresholds, split, checkpoint, out, tile, device, method

    [sweep]                       # dilation_sets, iteration_counts, out, epochs, ...

:func:`load_config` reads a file into an :class:`ExperimentConfig`, whose methods load the data
(:meth:`~ExperimentConfig.load_data`), build the model (:meth:`~ExperimentConfig.build_model`),
the training settings (:meth:`~ExperimentConfig.train_config`), and run the training
(:meth:`~ExperimentConfig.run_training`) and the evaluation
(:meth:`~ExperimentConfig.run_evaluation`) — the ``rdcnet train/evaluate --config`` commands
are thin wrappers around these.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    try:
        import tomli as tomllib
    except ImportError:  # pragma: no cover
        tomllib = None

__all__ = ["ExperimentConfig", "EvaluationResult", "load_config", "DATA_KINDS", "DATA_KEYS"]

DATA_KINDS = ("cvppp", "monuseg", "stacks3d", "folder", "synthetic")

#: keys of ``[data]`` per kind (besides ``kind``); paths are relative to the config file.
DATA_KEYS: Dict[str, Dict[str, str]] = {
    "cvppp": {"path": "folder with plant*_rgb.png / plant*_label.png (CVPPP2017 LSC A1)",
              "split": "fractions train/val/test (default [0.6, 0.2, 0.2])", "seed": "split seed (default 0)",
              "pattern": "glob of the image files (default 'plant*_rgb.png')"},
    "monuseg": {"train": "MoNuSeg training folder (30 images)", "test": "MoNuSeg test folder (14 images)",
                "n_val": "validation images taken from train (default 7)", "seed": "split seed (default 0)"},
    "stacks3d": {"images": "folder of TIFF stacks (or with images/ and labels/ subfolders)",
                 "labels": "folder of label stacks (same names)", "spacing": "voxel size z, y, x in µm",
                 "undefined": "stored label value of undefined voxels (-> -1)",
                 "split": "counts or fractions train/val/test (default [32, 9, 8])", "seed": "split seed",
                 "suffixes": "[image suffix, label suffix] of the file stems", "pattern": "glob of the images"},
    "folder": {"train": "training folder", "val": "validation folder", "test": "test folder",
               "train_labels": "labels of train (default: train/labels)", "val_labels": "labels of val",
               "test_labels": "labels of test", "split": "split the train folder into train/val/test instead",
               "seed": "split seed", "spacing": "pixel size per axis", "undefined": "undefined label value",
               "suffixes": "[image suffix, label suffix]", "pattern": "glob of the images"},
    "synthetic": {"generator": "nuclei_2d | leaves_2d | nuclei_3d", "sizes": "[train, val, test] image counts",
                  "shape": "image shape in pixels", "seed": "generator seed", "spacing": "voxel size (3D)"},
}
_PATH_KEYS = {"path", "train", "val", "test", "images", "labels", "train_labels", "val_labels", "test_labels"}

_EVALUATE_KEYS = {
    "thresholds": "IoU thresholds of the F1 curve (default 0.1, 0.15, ..., 0.95)",
    "split": "split to evaluate (default 'test')",
    "checkpoint": "checkpoint to evaluate (default <train.out_dir>/best.pt)",
    "out": "output folder (default <train.out_dir>/evaluation)",
    "tile": "tile size for inference (default: rdcnet.predict's)",
    "device": "inference device (default: train.device)",
    "method": "method name in the Table 1 row (default 'RDCNet')",
    "save_predictions": "also write the predicted label TIFFs (default false)",
}
_SWEEP_KEYS = {
    "dilation_sets": "dilation rates per setting of the dilation panel, e.g. [[1], [1, 2], [1, 2, 4, 8]]",
    "iteration_counts": "iterations per setting of the iteration panel, e.g. [1, 2, 3, 5, 10]",
    "dilation_iterations": "iterations used for every dilation setting (paper: 10)",
    "out": "sweep folder (default <train.out_dir>/../<name>-sweep)",
    "epochs": "epochs per setting (default train.epochs)",
    "steps_per_epoch": "steps per epoch per setting (default train.steps_per_epoch)",
    "iterations_from_one_model": "evaluate the iteration panel on one model stopped early instead of "
                                 "training one model per count (default false)",
}

#: (ndim, in_channels) implied by the data kind when [model] does not say.
_KIND_SHAPES = {"cvppp": (2, 3), "monuseg": (2, 3), "stacks3d": (3, 1), "synthetic:nuclei_2d": (2, 1),
                "synthetic:leaves_2d": (2, 3), "synthetic:nuclei_3d": (3, 1)}


def _model_keys() -> set:
    from .model import RDCNet

    return set(inspect.signature(RDCNet.__init__).parameters) - {"self"}


def _train_keys() -> set:
    from .train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)} - {"postprocess"}


def _postprocess_keys() -> set:
    from .postprocess import PostprocessConfig

    return {f.name for f in dataclasses.fields(PostprocessConfig)}


def _augment_keys() -> set:
    from .data.augment import AugmentConfig

    return {f.name for f in dataclasses.fields(AugmentConfig)} - {"ndim"}


def _check_keys(section: str, values: dict, allowed, source: str, note: str = "") -> None:
    where = "at the top level" if section == "top level" else f"in [{section}]"
    if not isinstance(values, dict):
        raise ValueError(f"{source}: [{section}] must be a table, got {type(values).__name__}")
    for key in values:
        if key not in allowed:
            raise ValueError(f"{source}: unknown key {key!r} {where}{note}; known keys: {', '.join(sorted(allowed))}")


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class EvaluationResult:
    """What :meth:`ExperimentConfig.run_evaluation` computed and wrote."""

    summary: Any  # rdcnet.metrics.Summary
    table: str  # Markdown: per-image table
    table1: str  # Markdown: the Table 1 row
    files: Dict[str, Path]


@dataclass
class ExperimentConfig:
    """One experiment, as read by :func:`load_config` (sections are plain dicts, validated).

    ``base_dir``: the config file's folder (relative paths in the file are resolved against it
    when the config is loaded); ``source``: the file, for messages.
    """

    name: str = "experiment"
    data: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    train: Dict[str, Any] = field(default_factory=dict)
    augment: Dict[str, Any] = field(default_factory=dict)
    postprocess: Dict[str, Any] = field(default_factory=dict)
    evaluate: Dict[str, Any] = field(default_factory=dict)
    sweep: Dict[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    source: str = "<config>"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: dict, base_dir=".", source: str = "<config>") -> "ExperimentConfig":
        """Validate a parsed TOML document; relative paths are resolved against ``base_dir``."""
        raw = copy.deepcopy(raw)
        base = Path(base_dir)
        sections = ("data", "model", "train", "augment", "postprocess", "evaluate", "sweep")
        _check_keys("top level", raw, {"name", *sections}, source)
        if "data" not in raw:
            raise ValueError(f"{source}: missing [data] section (with kind = one of {', '.join(DATA_KINDS)})")
        data = raw["data"]
        if not isinstance(data, dict):
            raise ValueError(f"{source}: [data] must be a table, got {type(data).__name__}")
        kind = data.get("kind")
        if kind not in DATA_KINDS:
            raise ValueError(f"{source}: [data] kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
        _check_keys("data", data, {"kind", *DATA_KEYS[kind]}, source, f" for kind = {kind!r}")
        for key in _PATH_KEYS & set(data):
            data[key] = str(cls._resolve(base, data[key]))
        model = raw.get("model", {})
        _check_keys("model", model, _model_keys(), source)
        train = raw.get("train", {})
        _check_keys("train", train, _train_keys(), source)
        if "out_dir" in train:
            train["out_dir"] = str(cls._resolve(base, train["out_dir"]))
        augment = raw.get("augment", {})
        _check_keys("augment", augment, _augment_keys(), source)
        post = raw.get("postprocess", {})
        _check_keys("postprocess", post, _postprocess_keys(), source)
        evaluate = raw.get("evaluate", {})
        _check_keys("evaluate", evaluate, set(_EVALUATE_KEYS), source)
        for key in ("checkpoint", "out"):
            if key in evaluate:
                evaluate[key] = str(cls._resolve(base, evaluate[key]))
        sweep = raw.get("sweep", {})
        _check_keys("sweep", sweep, set(_SWEEP_KEYS), source)
        if "out" in sweep:
            sweep["out"] = str(cls._resolve(base, sweep["out"]))
        name = raw.get("name", Path(source).stem if source != "<config>" else "experiment")
        cfg = cls(str(name), data, model, train, augment, post, evaluate, sweep, base, source)
        cfg._check_values()
        return cfg

    @staticmethod
    def _resolve(base: Path, value) -> Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a path string, got {value!r}")
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else base / p))

    def _check_values(self) -> None:
        """Early, file-naming checks of values whose errors would otherwise surface late."""
        src = self.source
        if self.train.get("augment", "rgb") not in ("grey", "rgb", "none"):
            raise ValueError(f"{src}: [train] augment must be 'grey', 'rgb' or 'none', got {self.train['augment']!r}")
        try:
            self.postprocess_config()
            from .data.augment import Augmenter

            Augmenter(dict(self.augment))
        except TypeError as exc:
            raise ValueError(f"{src}: {exc}") from None
        th = self.evaluate.get("thresholds")
        if th is not None and (not isinstance(th, list) or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in th)):
            raise ValueError(f"{src}: [evaluate] thresholds must be a list of IoU values in (0, 1], got {th!r}")
        for key in ("dilation_sets",):
            v = self.sweep.get(key)
            if v is not None and (not isinstance(v, list) or not all(isinstance(d, list) and d for d in v)):
                raise ValueError(f"{src}: [sweep] {key} must be a list of lists of dilation rates, got {v!r}")

    # ------------------------------------------------------------------ data
    def load_data(self):
        """The splits (:class:`rdcnet.data.readers.Splits`) of ``[data]``; loaded once and cached."""
        cached = getattr(self, "_splits", None)
        if cached is not None:
            return cached
        from .data import readers

        d, kind = self.data, self.data["kind"]
        seed = int(d.get("seed", 0))

        def need(key):
            if key not in d:
                raise ValueError(f"{self.source}: [data] kind = {kind!r} needs {key!r} ({DATA_KEYS[kind][key]})")
            return d[key]

        if kind == "cvppp":
            splits = readers.read_cvppp(need("path"), seed=seed, fractions=d.get("split", (0.6, 0.2, 0.2)),
                                        pattern=d.get("pattern", "plant*_rgb.png"))
        elif kind == "monuseg":
            splits = readers.read_monuseg(need("train"), d.get("test"), n_val=int(d.get("n_val", 7)), seed=seed)
        elif kind == "stacks3d":
            splits = readers.read_stacks3d(need("images"), d.get("labels"),
                                           spacing=d.get("spacing", readers.DEFAULT_SPACING_ORGANOID),
                                           undefined=d.get("undefined"), split=d.get("split", (32, 9, 8)),
                                           seed=seed, suffixes=d.get("suffixes", ("", "")),
                                           pattern=d.get("pattern", "*"))
        elif kind == "folder":
            labels = {s: d[f"{s}_labels"] for s in ("train", "val", "test") if f"{s}_labels" in d}
            splits = readers.read_folder_splits(need("train"), d.get("val"), d.get("test"), labels=labels,
                                                split=d.get("split"), seed=seed, spacing=d.get("spacing"),
                                                undefined=d.get("undefined"), suffixes=d.get("suffixes", ("", "")),
                                                pattern=d.get("pattern", "*"))
        else:
            splits = readers.synthetic_splits(d.get("generator", "nuclei_2d"), d.get("sizes", (8, 2, 2)), seed=seed,
                                              shape=d.get("shape"), spacing=d.get("spacing"))
        splits.metadata["config"] = self.source
        self._splits = splits
        return splits

    # ------------------------------------------------------------------ model
    def model_kwargs(self, splits=None, **overrides) -> dict:
        """RDCNet keyword arguments: ``[model]``, then ``overrides``; ``ndim``/``in_channels``
        default to the data kind's (or the first training image's) and ``spacing`` to the data's."""
        kw = {k: _tuple(v) for k, v in self.model.items()}
        kw.update(overrides)
        kind = self.data["kind"]
        key = f"synthetic:{self.data.get('generator', 'nuclei_2d')}" if kind == "synthetic" else kind
        if "ndim" not in kw or "in_channels" not in kw:
            if key in _KIND_SHAPES:
                ndim, channels = _KIND_SHAPES[key]
            else:
                splits = splits if splits is not None else self.load_data()
                if not splits.train:
                    raise ValueError(f"{self.source}: no training images to infer [model] ndim/in_channels from")
                image, labels = splits.train[0]
                ndim = labels.ndim
                channels = image.shape[-1] if image.ndim == labels.ndim + 1 else 1
            kw.setdefault("ndim", ndim)
            kw.setdefault("in_channels", int(channels))
        if "spacing" not in kw:
            spacing = self.data.get("spacing")
            if spacing is None and kind == "stacks3d":
                from .data.readers import DEFAULT_SPACING_ORGANOID

                spacing = DEFAULT_SPACING_ORGANOID
            if spacing is None and kind == "synthetic" and key == "synthetic:nuclei_3d":
                from .data.synthetic import DEFAULT_SPACING_3D

                spacing = DEFAULT_SPACING_3D
            if spacing is not None:
                kw["spacing"] = tuple(float(s) for s in spacing)
        return kw

    def build_model(self, splits=None, **overrides):
        """A freshly initialised :class:`rdcnet.RDCNet` (initialisation seeded by ``train.seed``)."""
        import torch

        from .model import RDCNet

        kw = self.model_kwargs(splits, **overrides)
        torch.manual_seed(int(self.train.get("seed", 0)))
        try:
            return RDCNet(**kw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.source}: [model]: {exc}") from None

    # ------------------------------------------------------------------ training settings
    def postprocess_config(self):
        """:class:`rdcnet.PostprocessConfig` from ``[postprocess]`` (margin: ``train.margin``)."""
        from .postprocess import PostprocessConfig

        kw = dict(self.postprocess)
        if "margin" not in kw and "margin" in self.train:
            kw["margin"] = self.train["margin"]
        return PostprocessConfig(**kw)

    def augmenter(self, ndim: Optional[int] = None):
        """The :class:`rdcnet.data.Augmenter` of the preset ``train.augment`` with ``[augment]``
        overrides (``None`` for preset "none" without overrides)."""
        from .train import make_augmenter

        ndim = ndim if ndim is not None else self.model_kwargs().get("ndim", 2)
        return make_augmenter(self._augment_spec(ndim), ndim)

    def _augment_spec(self, ndim: int):
        """What goes into ``TrainConfig.augment``: the preset name, or ``{"preset": name,
        **overrides}`` when ``[augment]`` has overrides."""
        preset = self.train.get("augment", "grey")
        if not self.augment:
            return preset
        return {"preset": preset, **{k: _tuple(v) for k, v in self.augment.items()}}

    def default_out_dir(self) -> Path:
        return Path(self.train.get("out_dir", Path("runs") / Path(self.source).stem))

    def train_config(self, out_dir=None, ndim: Optional[int] = None, **overrides):
        """:class:`rdcnet.TrainConfig` from ``[train]`` (+ ``[postprocess]``), with ``out_dir``
        (e.g. a CLI ``--out``) and keyword ``overrides`` (e.g. ``epochs=1``) taking precedence.
        ``crop`` may be one int in the file (same size on every axis)."""
        from .train import TrainConfig

        ndim = ndim if ndim is not None else self.model_kwargs().get("ndim", 2)
        kw = {k: _tuple(v) for k, v in self.train.items()}
        kw.update(overrides)
        kw["out_dir"] = str(out_dir if out_dir is not None else self.default_out_dir())
        if "crop" in kw:
            crop = kw["crop"]
            kw["crop"] = (int(crop),) * ndim if isinstance(crop, (int, float)) else tuple(int(c) for c in crop)
            if len(kw["crop"]) != ndim:
                raise ValueError(f"{self.source}: [train] crop: expected 1 or {ndim} sizes, got {list(kw['crop'])}")
        if "augment" not in overrides:
            kw["augment"] = self._augment_spec(ndim)
        kw["postprocess"] = self.postprocess_config()
        return TrainConfig(**kw)

    # ------------------------------------------------------------------ running
    def resolved(self) -> dict:
        """The configuration as a JSON-able dict (paths resolved), for run folders."""
        return {"name": self.name, "source": self.source, "data": self.data, "model": self.model,
                "train": self.train, "augment": self.augment, "postprocess": self.postprocess,
                "evaluate": self.evaluate, "sweep": self.sweep}

    def run_training(self, out_dir=None, resume: bool = True, progress: bool = True, splits=None,
                     model_overrides: Optional[dict] = None, **train_overrides):
        """Train on the ``train`` split, validating on ``val`` (the ``train`` split when empty).

        Writes into the run folder (``out_dir`` or ``train.out_dir``): what
        :func:`rdcnet.train.train` writes (``last.pt``, ``best.pt``, ``log.csv``,
        ``training.png``), plus ``splits.json`` (seed and file names per split) and
        ``config.json`` (this configuration, resolved). Resumes an interrupted run.
        Returns the :class:`rdcnet.train.TrainResult`.
        """
        from ._files import OutputLock, atomic_write
        from .train import RUN_LOCK, resume_state, train

        splits = splits if splits is not None else self.load_data()
        if not splits.train:
            raise ValueError(f"{self.source}: the training split is empty")
        model = self.build_model(splits, **(model_overrides or {}))
        tc = self.train_config(out_dir, ndim=model.config.ndim, **train_overrides)
        if resume:
            resume_state(tc, model)  # a run that cannot be resumed fails before its files are touched
        run = Path(tc.out_dir)
        run.mkdir(parents=True, exist_ok=True)
        with OutputLock(run / RUN_LOCK, f"run folder {run}"):  # train() takes the same lock (re-entrant)
            splits.write_json(run / "splits.json")
            atomic_write(run / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(
                {**self.resolved(), "model_resolved": model.config.to_dict(), "train_resolved": tc.to_dict()},
                indent=1, default=str) + "\n"))
            val = splits.val if splits.val else splits.train
            return train(model, splits.train, val, tc, resume=resume, progress=progress)

    def default_checkpoint(self, out_dir=None) -> Path:
        if "checkpoint" in self.evaluate and out_dir is None:
            return Path(self.evaluate["checkpoint"])
        return Path(out_dir if out_dir is not None else self.default_out_dir()) / "best.pt"

    def thresholds(self) -> np.ndarray:
        from .metrics import DEFAULT_THRESHOLDS

        th = self.evaluate.get("thresholds")
        return DEFAULT_THRESHOLDS.copy() if th is None else np.asarray(th, float)

    def run_evaluation(self, checkpoint=None, out=None, split: Optional[str] = None, splits=None,
                       device=None, progress: bool = True, iterations: Optional[int] = None) -> EvaluationResult:
        """Segment a split (default ``evaluate.split`` or "test") with a checkpoint (default
        ``evaluate.checkpoint`` or ``<train.out_dir>/best.pt``) and score it.

        The post-processing is the checkpoint's, with the file's ``[postprocess]`` keys applied
        on top. Writes into ``out`` (default ``evaluate.out`` or ``<train.out_dir>/evaluation``):
        ``metrics.md`` (per-image table and mean), ``metrics.csv``, ``table1.md`` (the paper's
        Table 1 row, in %), ``f1_vs_iou.png`` and, with ``evaluate.save_predictions``,
        ``predictions/<name>.tif``.
        """
        from . import metrics
        from .evaluation import evaluate_model, table1
        from .checkpoint import load_checkpoint

        ckpt = Path(checkpoint) if checkpoint is not None else self.default_checkpoint()
        dev = device or self.evaluate.get("device") or self.train.get("device", "auto")
        if dev == "auto":
            import torch

            dev = "cuda" if torch.cuda.is_available() else "cpu"
        model, post, _ = load_checkpoint(ckpt, device=dev)
        post = dataclasses.replace(post, **self.postprocess)
        splits = splits if splits is not None else self.load_data()
        split = split or self.evaluate.get("split", "test")
        pairs = splits[split]
        if not pairs:
            raise ValueError(f"{self.source}: the {split!r} split is empty (sizes: "
                             f"{ {k: len(v) for k, v in splits.items()} })")
        out = Path(out if out is not None else self.evaluate.get("out", ckpt.parent / "evaluation"))
        out.mkdir(parents=True, exist_ok=True)
        tile = self.evaluate.get("tile")
        pred_dir = out / "predictions" if self.evaluate.get("save_predictions", False) else None
        summary = evaluate_model(model, pairs, post, thresholds=self.thresholds(), names=splits.names[split],
                                 device=dev, tile_shape=tile, iterations=iterations, progress=progress,
                                 save_dir=pred_dir)
        table = metrics.summary_table_markdown(summary)
        row = table1([(self.name, self.evaluate.get("method", "RDCNet"), summary)])
        files = {"metrics.md": out / "metrics.md", "metrics.csv": out / "metrics.csv",
                 "table1.md": out / "table1.md", "f1_vs_iou.png": out / "f1_vs_iou.png"}
        files["metrics.md"].write_text(f"# {self.name}: {split} split, {ckpt}\n\n{table}\n")
        metrics.to_csv(summary, files["metrics.csv"])
        files["table1.md"].write_text(row + "\n")
        metrics.plot_f1_vs_iou({f"{self.name} ({split})": (summary.thresholds, summary.mean["f1"])},
                               files["f1_vs_iou.png"], title=f"{self.name}: F1 vs IoU threshold")
        if pred_dir is not None:
            files["predictions"] = pred_dir
        return EvaluationResult(summary, table, row, files)


def load_config(path) -> ExperimentConfig:
    """Read an experiment configuration (TOML) into an :class:`ExperimentConfig`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
    invalid TOML, unknown sections or keys, and bad values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file: {path}")
    if tomllib is None:  # pragma: no cover
        raise ImportError("reading TOML configs needs Python >= 3.11 or the 'tomli' package (pip install tomli)")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config: {path} is not valid TOML ({exc})") from None
    return ExperimentConfig.from_dict(raw, base_dir=path.resolve().parent, source=str(path))
