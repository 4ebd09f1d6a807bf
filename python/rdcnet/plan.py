"""Self-configuring training: a fingerprint of the annotated data, and a plan of every training
setting from the fingerprint, the machine and a time budget.

The fingerprint (:func:`fingerprint`) measures what the settings depend on: the objects' size in
physical units per axis, how many there are per image and how many touch another, the image sizes,
the intensities and the spacing. The plan (:func:`plan_training`) turns it into the settings a user
would otherwise have to choose (margin, down-sampling factor, crop, dilations, model width, batch,
steps for the time budget, decoding starting values); every value records where it came from:

- ``"data"``: a rule on the fingerprint (the rules and their reasons are in :func:`plan_training`);
- ``"machine"``: the device and the step time measured on it (:func:`measure_step_time`);
- ``"option"``: given explicitly (an option always wins over the rule);
- ``"default"``: the paper's value, where neither data nor machine says more.

A run folder keeps its plan as ``plan.json``; a resumed run reads it instead of planning again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Fingerprint", "Plan", "fingerprint", "plan_training", "measure_step_time", "crop_sampler",
           "parse_duration", "format_duration", "schedule", "PLAN_FILE", "DEFAULT_TIME", "PLANNED"]

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
SOURCES = ("data", "machine", "option", "default")
#: Default time budget per device type, seconds: a few minutes on a CPU, longer on a GPU.
DEFAULT_TIME = {"cpu": 300.0, "cuda": 1200.0}
#: The settings a plan holds (TrainConfig / RDCNet / PostprocessConfig names).
PLANNED = ("margin", "factor", "crop", "dilations", "groups", "channels_per_group", "downsampling_channels",
           "iterations", "batch_size", "precision", "augment", "time", "epochs", "steps_per_epoch", "lr",
           "min_distance", "min_votes", "opening_radius", "foreground_threshold")

# ---- the rules' constants (reasons in plan_training's docstring) ----------------------------------
#: coarse pixels across a median object the factor aims for: 4 (2D, 75 s on 2 cores: factor 2 beat
#: 4 at 12 px, 4 beat 8 at 24 px, 8 beat 4 at 48 px; benchmarks/README.md, "Self-configuration") ...
COARSE_WIDTH = 4
#: ... but the factor is at least 2 where that leaves this many (6 px: 2 beat 1), and a budget of
#: fewer than STARVED_STEPS steps takes the factor of this width if it gets more steps (3D, 5 min:
#: 1x4x4 beat 1x2x2 at 12 px, 2x8x8 beat 2x4x4 at 24 px; the 2D runs above had 1100 steps or more).
MIN_COARSE_WIDTH = 2
STARVED_STEPS = 750
MIN_MARGIN_PX = 2.0       # the margin spans at least this many of the finest pixels
MAX_FACTOR = 8
CROP_OBJECTS = 6          # median objects across a crop, per axis
MIN_COARSE_CROP = 16      # coarse pixels per crop axis, at least (room for the dilations)
OBJECTS_PER_STEP = 16     # objects a training step should see; the batch grows to reach it
MAX_BATCH = 8
MIN_STEPS = 1500          # total steps below which a narrower model is tried
NARROWER_GAIN = 0.75      # ... and kept only if its step takes at most this share of the wider one's
TARGET_EPOCHS = 20        # validation points for choosing best.pt
MIN_STEPS_PER_EPOCH = 25
VALIDATION_SHARE = 0.1    # of the budget, at most, spent validating
DECODE_SECONDS_PER_PIXEL = 3e-7  # one decoding + F1 per validation pixel (2-core Xeon, 2026-12)
TUNING_DECODINGS = 64     # decodings per mode, in equivalent full ones (stages shared): the demo tuned 8 × 128² in 5.0 s
#: (groups, channels per group, down-sampling channels): the paper's width first, narrower after.
WIDTHS = ((8, 64, 32), (8, 32, 32), (8, 16, 16), (4, 16, 16), (4, 8, 8))
WIDEST = {"cuda": 0, "cpu": 2}  # where each device starts (the CPU at the demo's 8 × 16)


# ---- durations ---------------------------------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text, name: str = "time") -> float:
    """Seconds of a duration: ``"90s"``, ``"3m"``, ``"1.5h"``, ``"1h30m"``, or a number of seconds
    (int/float, not a string: a bare number is ambiguous on the command line)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        parts = re.fullmatch(r"\s*((?:\d+(?:\.\d*)?|\.\d+)\s*[smh]\s*)+", text.lower())
        if not parts:
            raise ValueError(f"{name}: expected a duration such as 90s, 3m, 1.5h or 1h30m, got {text!r}")
        seconds = sum(float(v) * _UNITS[u] for v, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])", text.lower()))
    else:
        raise TypeError(f"{name}: expected a duration such as '3m' or seconds, got {type(text).__name__}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name}: expected a positive duration, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


# ---- the fingerprint ---------------------------------------------------------------------------


def _quantiles(values, qs=(10, 25, 50, 75, 90)) -> Optional[dict]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return None
    keys = {10: "p10", 25: "p25", 50: "median", 75: "p75", 90: "p90"}
    return {keys[q]: float(v) for q, v in zip(qs, np.percentile(values, qs, axis=0))} if values.ndim == 1 else \
        {keys[q]: [float(x) for x in v] for q, v in zip(qs, np.percentile(values, qs, axis=0))}


def _spatial_of(image: np.ndarray, labels: np.ndarray, where: str):
    """(image as (C, *S) view, channel count) for an image whose spatial shape is ``labels.shape``."""
    if image.shape == labels.shape:
        return image[None], 1
    if image.ndim == labels.ndim + 1:
        if image.shape[:-1] == labels.shape:
            return np.moveaxis(image, -1, 0), image.shape[-1]
        if image.shape[1:] == labels.shape:
            return image, image.shape[0]
    raise ValueError(f"{where}: image shape {image.shape} does not match the labels' {labels.shape}")


def _objects(labels: np.ndarray):
    """Per object (label > 0) of one label image: pixel counts (K,), bounding-box extents in
    pixels (K, ndim), whether it shares a face with another object (K,), whether it touches the
    image border (K,). Vectorised: one pass per axis, one bounding box per object."""
    from scipy import ndimage

    from .metrics import _compact

    ndim = labels.ndim
    positive = np.where(labels > 0, labels, 0)
    if not positive.any():
        return np.zeros(0, np.int64), np.zeros((0, ndim), np.int64), np.zeros(0, bool), np.zeros(0, bool)
    ids, counts, index = _compact(positive.reshape(-1))
    compact = index.reshape(labels.shape).astype(np.int32) + (0 if ids[0] == 0 else 1)
    if ids[0] == 0:
        counts = counts[1:]
    boxes = ndimage.find_objects(compact)
    extents = np.array([[s.stop - s.start for s in box] for box in boxes], np.int64)
    border = np.array([any(s.start == 0 or s.stop == n for s, n in zip(box, labels.shape)) for box in boxes])
    touching = np.zeros(len(boxes) + 1, bool)
    for axis in range(ndim):
        lo = compact[(slice(None),) * axis + (slice(None, -1),)]
        hi = compact[(slice(None),) * axis + (slice(1, None),)]
        contact = (lo != hi) & (lo > 0) & (hi > 0)
        touching[lo[contact]] = True
        touching[hi[contact]] = True
    return counts.astype(np.int64), extents, touching[1:], border


@dataclass
class Fingerprint:
    """What the plan depends on, measured on the annotated images (see :func:`fingerprint`).
    Distances are physical (``spacing`` units); ``*_px`` in pixels. Statistics over objects are
    ``None`` when no image holds an object."""

    ndim: int
    channels: int
    spacing: List[float]
    n_images: int
    empty_images: int
    image_shape: Dict[str, List[int]]
    n_objects: int
    objects_per_image: Dict[str, float]
    diameter: Optional[Dict[str, float]]
    extent: Optional[Dict[str, List[float]]]
    volume_px: Optional[Dict[str, float]]
    touching_fraction: Optional[float]
    border_fraction: Optional[float]
    foreground_fraction: float
    undefined_fraction: float
    intensity: Optional[List[Dict[str, float]]] = None

    @property
    def anisotropy(self) -> float:
        """Largest over smallest pixel size."""
        return max(self.spacing) / min(self.spacing)

    def extent_px(self, which: str = "median") -> Optional[List[float]]:
        """Per axis, the ``which`` quantile of the objects' bounding-box extent, in pixels."""
        if self.extent is None:
            return None
        return [e / s for e, s in zip(self.extent[which], self.spacing)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def table(self) -> str:
        """A few lines for the terminal."""
        x = " × "
        rows = [("images", f"{self.n_images} ({self.ndim}D, {self.channels} channel(s)), median "
                           f"{x.join(map(str, self.image_shape['median']))} px, spacing "
                           f"{x.join(f'{s:g}' for s in self.spacing)}")]
        if self.n_objects:
            rows += [("objects", f"{self.n_objects} (per image {self.objects_per_image['min']:g}–"
                                 f"{self.objects_per_image['max']:g}, median {self.objects_per_image['median']:g}); "
                                 f"{self.empty_images} image(s) without objects"),
                     ("diameter", f"median {self.diameter['median']:.3g} (p10 {self.diameter['p10']:.3g}, "
                                  f"p90 {self.diameter['p90']:.3g}) physical units"),
                     ("extent", f"median {x.join(f'{e:.3g}' for e in self.extent['median'])} = "
                                f"{x.join(f'{e:.3g}' for e in self.extent_px())} px per axis"),
                     ("touching", f"{100 * self.touching_fraction:.0f}% of the objects share a border with another"
                                  f"; {100 * self.border_fraction:.0f}% touch the image border")]
        else:
            rows.append(("objects", "none in any image: the data-derived settings fall back to defaults"))
        rows.append(("pixels", f"{100 * self.foreground_fraction:.0f}% object, "
                               f"{100 * self.undefined_fraction:.1f}% undefined"))
        for c, s in enumerate(self.intensity or []):
            rows.append((f"intensity{'' if self.channels == 1 else f' c{c}'}",
                         f"p1 {s['p1']:.4g}, median {s['median']:.4g}, p99.8 {s['p99.8']:.4g}; "
                         f"objects {s['objects']:.4g}, background {s['background']:.4g}"))
        width = max(len(k) for k, _ in rows)
        return "data fingerprint\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def fingerprint(pairs: Sequence, spacing: Optional[Sequence[float]] = None, *,
                max_samples: int = 1 << 20) -> Fingerprint:
    """The :class:`Fingerprint` of ``pairs`` of (image, labels) NumPy arrays (image may be None:
    no intensity statistics). Labels: 0 background, > 0 objects (any ids), < 0 undefined (left out
    of every statistic). ``spacing``: physical pixel size per axis (default 1). Objects are
    measured with one bounding box and one pixel count each (``scipy.ndimage.find_objects``,
    ``bincount``) and touching is found with one shifted comparison per axis, so it runs in a few
    passes over the pixels; intensities are read from at most ``max_samples`` pixels per image."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__"):
        raise TypeError(f"pairs: expected a sequence of (image, labels) pairs, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs: expected at least one (image, labels) pair, got none")
    counts, extents, touching, border, shapes, per_image = [], [], [], [], [], []
    samples, channels, ndim = [], None, None
    defined = foreground = total = 0
    for i, pair in enumerate(pairs):
        try:
            image, labels = pair
        except (TypeError, ValueError):
            raise TypeError(f"pairs[{i}]: expected an (image, labels) pair, got {type(pair).__name__}") from None
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"pairs[{i}]: expected integer labels, got dtype {labels.dtype}")
        if labels.ndim not in (2, 3):
            raise ValueError(f"pairs[{i}]: expected 2D or 3D labels, got shape {labels.shape}")
        if ndim is None:
            ndim = labels.ndim
        elif labels.ndim != ndim:
            raise ValueError(f"pairs[{i}]: labels are {labels.ndim}D but pairs[0]'s are {ndim}D; "
                             "one plan covers one kind of image")
        c, e, t, b = _objects(labels)
        counts.append(c)
        extents.append(e)
        touching.append(t)
        border.append(b)
        per_image.append(len(c))
        shapes.append(labels.shape)
        valid = labels >= 0
        defined += int(valid.sum())
        foreground += int((labels > 0).sum())
        total += labels.size
        if image is not None:
            x, n_channels = _spatial_of(np.asarray(image), labels, f"pairs[{i}]")
            if channels is None:
                channels = n_channels
            elif n_channels != channels:
                raise ValueError(f"pairs[{i}]: {n_channels} channel(s) but pairs[0] has {channels}")
            step = max(1, math.ceil((labels.size / max_samples) ** (1 / ndim)))
            sub = (slice(None),) + (slice(None, None, step),) * ndim
            samples.append((x[sub].reshape(n_channels, -1).astype(np.float64), labels[sub[1:]].reshape(-1)))
    spacing = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing: expected {ndim} positive pixel sizes, got {spacing}")
    counts, extents = np.concatenate(counts), np.concatenate(extents).reshape(-1, ndim)
    touching, border = np.concatenate(touching), np.concatenate(border)
    pixel_volume = float(np.prod(spacing))
    volume = counts * pixel_volume
    diameter = 2 * np.sqrt(volume / math.pi) if ndim == 2 else 2 * np.cbrt(3 * volume / (4 * math.pi))
    extent_q = _quantiles(extents * np.asarray(spacing), (25, 50))
    shape_arr = np.asarray(shapes)
    return Fingerprint(
        ndim=ndim, channels=channels or 1, spacing=spacing, n_images=len(shapes),
        empty_images=int(sum(n == 0 for n in per_image)),
        image_shape={"min": shape_arr.min(0).tolist(), "median": [int(v) for v in np.median(shape_arr, 0)],
                     "max": shape_arr.max(0).tolist()},
        n_objects=int(counts.size),
        objects_per_image={"min": float(min(per_image)), "median": float(np.median(per_image)),
                           "max": float(max(per_image))},
        diameter=_quantiles(diameter), extent=extent_q, volume_px=_quantiles(counts, (10, 50)),
        touching_fraction=float(touching.mean()) if counts.size else None,
        border_fraction=float(border.mean()) if counts.size else None,
        foreground_fraction=foreground / max(defined, 1), undefined_fraction=(total - defined) / max(total, 1),
        intensity=_intensity(samples) if samples else None)


def _intensity(samples) -> List[Dict[str, float]]:
    """Per channel: percentiles 1, 50, 99.8 (the normalisation's), mean, std, and the medians inside
    objects and in the background, over the finite sampled pixels of every image."""
    values = np.concatenate([x for x, _ in samples], 1)
    labels = np.concatenate([y for _, y in samples])
    out = []
    for channel in values:
        finite = np.isfinite(channel)
        v, lab = channel[finite], labels[finite]
        if v.size == 0:
            out.append({k: float("nan") for k in ("p1", "median", "p99.8", "mean", "std", "objects", "background")})
            continue
        p1, p50, p998 = np.percentile(v, (1, 50, 99.8))
        inside, outside = v[lab > 0], v[lab == 0]
        out.append({"p1": float(p1), "median": float(p50), "p99.8": float(p998), "mean": float(v.mean()),
                    "std": float(v.std()), "objects": float(np.median(inside)) if inside.size else float("nan"),
                    "background": float(np.median(outside)) if outside.size else float("nan")})
    return out


# ---- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """Planned training settings: ``values`` (names of :data:`PLANNED`), where each came from
    (``sources``: "data", "machine", "option" or "default") and why (``reasons``), the
    ``fingerprint`` they were derived from and the ``machine`` measurements (device, seconds per
    training step, forward seconds per pixel, budget)."""

    values: Dict[str, Any]
    sources: Dict[str, str]
    reasons: Dict[str, str]
    fingerprint: Fingerprint
    machine: Dict[str, Any] = field(default_factory=dict)

    def model_kwargs(self) -> dict:
        """The RDCNet keyword arguments the plan fixes (add ndim, in_channels, spacing)."""
        v = self.values
        return dict(factor=tuple(v["factor"]), groups=v["groups"], channels_per_group=v["channels_per_group"],
                    downsampling_channels=v["downsampling_channels"], dilations=tuple(v["dilations"]),
                    iterations=v["iterations"])

    def postprocess(self):
        from .postprocess import PostprocessConfig

        v = self.values
        return PostprocessConfig(margin=v["margin"], min_distance=v["min_distance"], min_votes=v["min_votes"],
                                 opening_radius=v["opening_radius"], foreground_threshold=v["foreground_threshold"])

    def amp(self) -> Optional[str]:
        """``TrainConfig.amp`` of the planned precision (None: float32)."""
        precision = self.values["precision"]
        return None if precision in ("auto", "fp32", None) else precision

    def train_config(self, out_dir, **settings):
        """A :class:`rdcnet.train.TrainConfig` with the planned values (``settings`` add the rest:
        seed, device, mask_nonfinite, ...)."""
        from .train import TrainConfig

        v = self.values
        return TrainConfig(out_dir=str(out_dir), margin=v["margin"], crop=tuple(v["crop"]), epochs=v["epochs"],
                           steps_per_epoch=v["steps_per_epoch"], batch_size=v["batch_size"], lr=v["lr"],
                           augment=v["augment"], amp=self.amp(), postprocess=self.postprocess(),
                           time_limit=self.time_limit(), **settings)

    def time_limit(self) -> Optional[float]:
        """Seconds the epochs and the decoding tuning may take (:attr:`rdcnet.train.TrainConfig.
        time_limit`: the run then counts its epochs at its own pace, the tuning estimated from its
        validations): the budget less the planning; None when the epochs were given rather than
        planned for a budget."""
        if self.sources.get("epochs") != "machine":  # (planned epochs: a budget was measured)
            return None
        return max(self.values["time"] - self.machine.get("planning_seconds", 0.0), 1e-3)

    def to_dict(self) -> dict:
        from .train import _plain

        return {"version": PLAN_VERSION, "values": _plain(self.values), "sources": dict(self.sources),
                "reasons": dict(self.reasons), "fingerprint": self.fingerprint.to_dict(),
                "machine": dict(self.machine)}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if not isinstance(d, dict) or "values" not in d or "fingerprint" not in d:
            raise ValueError("plan: not an rdcnet plan (no values/fingerprint)")
        missing = [k for k in PLANNED if k not in d["values"]]
        if missing:
            raise ValueError(f"plan: not an rdcnet plan of this version (missing {', '.join(missing)})")
        return cls(dict(d["values"]), dict(d.get("sources", {})), dict(d.get("reasons", {})),
                   Fingerprint.from_dict(d["fingerprint"]), dict(d.get("machine", {})))

    def save(self, path) -> Path:
        from ._files import atomic_write

        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path) -> "Plan":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"plan: no such file: {path}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"plan: {path} is not a readable plan ({exc})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"plan: {path}: {str(exc).split(': ', 1)[-1]}") from None

    def with_options(self, overrides: Optional[dict]) -> "Plan":
        """This plan with explicit options in place of planned values (sources "option"); a new
        ``time`` re-plans the epochs from the stored step time (the rest of the plan is kept)."""
        from .train import _plain

        overrides = _check_overrides(overrides)
        plan = Plan(dict(self.values), dict(self.sources), dict(self.reasons), self.fingerprint, dict(self.machine))
        for key, value in overrides.items():
            if _plain(plan.values.get(key)) != _plain(value):
                plan.values[key] = value
                plan.sources[key] = "option"
                plan.reasons[key] = "given"
        if "time" in overrides and "step_seconds" in self.machine and "epochs" not in overrides:
            plan.values["epochs"], _ = schedule(
                _available(overrides["time"], plan.machine), plan.machine["step_seconds"],
                plan.machine.get("validation_seconds", 0.0), steps=plan.values["steps_per_epoch"])
            plan.sources["epochs"] = "machine"
            plan.reasons["epochs"] = f"re-planned for --time {format_duration(overrides['time'])}"
        return plan

    def table(self) -> str:
        """The plan as a short table: setting, value, source, reason."""
        rows = []
        for key in PLANNED:
            value = self.values.get(key)
            if isinstance(value, (list, tuple)):
                text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
            elif key == "time" and value is not None:
                text = format_duration(value)
            elif isinstance(value, float):
                text = f"{value:.4g}"
            else:
                text = "-" if value is None else str(value)
            rows.append((key, text, self.sources.get(key, ""), self.reasons.get(key, "")))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        head = "training plan (values from the data, the machine, your options or the paper's defaults)"
        lines = [f"  {k:<{w[0]}}  {v:<{w[1]}}  {s:<{w[2]}}  {r}".rstrip() for k, v, s, r in rows]
        m = self.machine
        if m.get("step_seconds"):
            lines.append(f"  (measured on {m.get('device')}: {m['step_seconds']:.3g} s per step; "
                         f"{m.get('planned_seconds', 0):.0f} s of training and validation planned)")
        return head + "\n" + "\n".join(lines)


def _check_overrides(overrides) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides: expected a dict of settings, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(PLANNED))
    if unknown:
        raise TypeError(f"overrides: unknown setting(s) {', '.join(unknown)}; expected some of {', '.join(PLANNED)}")
    out = {k: v for k, v in overrides.items() if v is not None}
    if "time" in out:
        out["time"] = parse_duration(out["time"])
    for key in ("factor", "crop", "dilations"):
        if key in out:
            out[key] = [int(v) for v in (out[key] if isinstance(out[key], (list, tuple)) else [out[key]])]
    return out


def _pow2_at_most(x: float, top: int) -> int:
    """The largest power of two <= x, within [1, top]."""
    return int(min(top, 2 ** max(0, math.floor(math.log2(max(x, 1.0))))))


def _round_up(x: float, step: int) -> int:
    return int(math.ceil(x / step) * step)


def _nice(x: float) -> float:
    """Two significant digits."""
    return float(f"{x:.2g}")


class _Planner:
    """Fills ``values``/``sources``/``reasons`` one setting at a time; an option always wins."""

    def __init__(self, options: dict):
        self.options, self.values, self.sources, self.reasons = options, {}, {}, {}

    def set(self, key: str, rule: Callable[[], tuple]) -> Any:
        if key in self.options:
            self.values[key], self.sources[key], self.reasons[key] = self.options[key], "option", "given"
        else:
            self.values[key], self.sources[key], self.reasons[key] = rule()
        return self.values[key]


def memory_limit(device) -> float:
    """Bytes a training step may use: 60% of the GPU's memory, 40% of the machine's RAM on a CPU."""
    import torch

    if device.type == "cuda":
        return 0.6 * torch.cuda.get_device_properties(device).total_memory
    try:
        return 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4e9


def training_bytes(values: dict, ndim: int, in_channels: int = 1) -> float:
    """A rough upper estimate of a training step's memory (float32 activations kept for the
    backward pass by the "chain" sSDC path, the heads and the loss), in bytes."""
    crop, factor = values["crop"], values["factor"]
    pixels = float(np.prod(crop))
    coarse = float(np.prod([math.ceil(c / f) for c, f in zip(crop, factor)]))
    width = values["groups"] * values["channels_per_group"]
    per_iteration = (2 * len(values.get("dilations") or (1, 2, 4, 8)) + 4) * width + 2 * values["downsampling_channels"]
    per_sample = coarse * values["iterations"] * per_iteration + pixels * (in_channels + 8 * (ndim + 2))
    return 4.0 * values["batch_size"] * per_sample + 2.5e8  # + the ESJ loss's chunks (at most 2**24 floats)


def schedule(available: float, step_seconds: float, validation_seconds: float, epochs: Optional[int] = None,
             steps: Optional[int] = None):
    """(epochs, steps per epoch) filling ``available`` seconds with steps of ``step_seconds`` and a
    validation of ``validation_seconds`` per epoch: about :data:`TARGET_EPOCHS` validations, at most
    :data:`VALIDATION_SHARE` of the time validating, at least :data:`MIN_STEPS_PER_EPOCH` steps per
    epoch where the time allows. Either may be fixed; neither is ever zero."""
    step_seconds = max(float(step_seconds), 1e-6)
    available = max(float(available), 0.0)
    if epochs is None and steps is None:
        epochs = TARGET_EPOCHS
        if validation_seconds > 0:
            epochs = int(min(TARGET_EPOCHS, VALIDATION_SHARE * available / validation_seconds))
        epochs = max(1, epochs)
        steps = int((available - epochs * validation_seconds) / (epochs * step_seconds))
        if steps < MIN_STEPS_PER_EPOCH:
            epochs = max(1, int(available / (MIN_STEPS_PER_EPOCH * step_seconds + validation_seconds)))
            steps = int((available - epochs * validation_seconds) / (epochs * step_seconds))
    elif steps is None:
        steps = int((available - epochs * validation_seconds) / (epochs * step_seconds))
    elif epochs is None:
        epochs = int(available / (steps * step_seconds + validation_seconds))
    return max(1, int(epochs)), max(1, int(steps))


def _schedule_for(budget: float, machine: dict, options: dict):
    """(epochs, steps per epoch) for ``budget`` on a measured ``machine``; given options fixed."""
    return schedule(_available(budget, machine), machine["step_seconds"], machine["validation_seconds"],
                    options.get("epochs"), options.get("steps_per_epoch"))


def _planned_seconds(epochs: int, steps: int, machine: dict) -> float:
    return epochs * (steps * machine["step_seconds"] + machine["validation_seconds"])


def _width_factor(extent, median_image, width: float) -> list:
    """Per axis, the largest power of two (at most :data:`MAX_FACTOR`) leaving ``width`` coarse
    pixels across the median object and :data:`MIN_COARSE_CROP` across the median image."""
    return [min(_pow2_at_most(e / width, MAX_FACTOR), _pow2_at_most(n / MIN_COARSE_CROP, MAX_FACTOR))
            for e, n in zip(extent, median_image)]


def _available(budget: float, machine: dict) -> float:
    """Seconds of the budget left for training and validation: minus the planning itself and the
    decoding tuning at the end."""
    return budget - machine.get("planning_seconds", 0.0) - machine.get("tuning_seconds", 0.0)


def plan_training(fp: Fingerprint, overrides: Optional[dict] = None, *, device="auto", val_pixels: int = 0,
                  sample: Optional[Callable] = None, measure: Optional[Callable] = None,
                  clock: Callable[[], float] = time.perf_counter, _started: Optional[float] = None) -> Plan:
    """Plan the training of an RDCNet on data with fingerprint ``fp``.

    ``overrides``: explicit settings (names of :data:`PLANNED`, None = plan it); ``time`` is the
    budget ("3m" or seconds; default :data:`DEFAULT_TIME` of the device); ``device``: where it
    will train; ``val_pixels``: pixels of the validation images (their per-epoch cost counts
    against the budget). The step time is measured by ``measure(values, device)`` (default
    :func:`measure_step_time` on crops from ``sample``, timed with ``clock``); it is needed only
    when the epochs or steps per epoch are planned.

    The rules (d = median object diameter, e = median bounding-box extent per axis in pixels):

    - factor per axis: the largest power of two (at most 8) keeping ``e / factor >= 4`` coarse
      pixels: the network decides at the coarse scale, and fewer coarse pixels across an object
      blur its centre and border; but at least 2 where that keeps 2 coarse pixels (full
      resolution costs steps). Axes sampled coarsely (z of a light-sheet stack) get 1. Measured
      in 2D, 75 s on 2 cores (benchmarks/README.md, "Self-configuration"): the factor leaving
      3 coarse px lost to the one leaving 6 at 12, 24 and 48 px, but at 6 px factor 2 (3 coarse
      px) beat 1. When the budget allows fewer than 750 steps, the factor keeping 2 coarse pixels
      is measured too and taken if it gets more steps (:func:`_coarser_if_starved`): early in
      training the steps count for more than the borders (3D, 5 minutes: 1×4×4 beat 1×2×2 at 12
      px, 2×8×8 beat 2×4×4 at 24 px).
    - margin = d / 3, at least the largest pixel size (so the peak window, whose half-size is the
      margin, spans a pixel on every axis) and two of the finest pixels, and at most 0.45 d: two
      touching objects have centres about d apart, and with a perfect loss centres are at least
      2 × margin apart. Measured (benchmarks/self_config.py, 2D, equal time): d/3 beat d/4 by
      0.03 in mean F1 at d = 24 px and tied at 12 and 48; on fresh images it won by 0.016-0.044 at every size.
    - crop per axis: 6 median objects across (several objects and their contacts in every crop),
      at least 16 coarse pixels, rounded to the factor (and to 8 pixels), at most the median image
      size; shrunk until a step fits in memory (60% of the GPU, 40% of the RAM on a CPU).
    - dilations 1, 2, 4, … up to a quarter of the smallest coarse crop axis (at most 8): the
      paper's widest that still fits the patch (Fig. 4: dilation 8 hurt its 20-slice 3D crops).
    - batch: 2 (paper), more (up to 8) when a crop holds fewer than 16 objects on average.
    - width: the paper's 8 × 64 on a GPU, 8 × 16 on a CPU, narrower while the budget would allow
      fewer than 1500 steps; iterations 5 (the paper's plateau).
    - epochs × steps: what fits the time budget after the planning itself, one validation per
      epoch (at most 10% of the time, about 20 of them) and the decoding tuning at the end; the
      cosine learning rate (1e-3 → 1e-5) is laid over exactly those steps. The step time is
      measured over a few steps and the machine's pace drifts (±15% between measurements a
      minute apart on the 2-core VM), so the run gets the budget less the planning as its
      ``time_limit`` (:meth:`Plan.time_limit`): after each epoch it counts the steps that still
      fit at its own pace, its decoding tuning included, and re-plans the cosine when that
      changes.
    - decoding starting values: peak window = margin; min_votes = 5% of the pixels of a small
      (10th percentile) object, within 2 … 100; opening radius in 3D twice the finest pixel (the
      paper's 0.5 µm at 0.26 µm), none in 2D; foreground by argmax. Training then tunes them.
    """
    import torch

    from ._checks import resolve_device

    started = clock() if _started is None else _started
    options = _check_overrides(overrides)
    dev = resolve_device(device, "device")
    kind = "cuda" if dev.type == "cuda" else "cpu"
    ndim, spacing = fp.ndim, list(fp.spacing)
    has_objects = fp.n_objects > 0 and fp.diameter is not None
    if not has_objects:
        warnings.warn("the labels hold no objects: the data-derived settings fall back to the paper's defaults",
                      stacklevel=2)
    median_image = fp.image_shape["median"]
    p = _Planner(options)
    extent = fp.extent_px() if has_objects else None

    def factor_rule():
        if not has_objects:
            return ([1, 4, 4] if ndim == 3 else [4, 4]), "default", "paper (no objects to measure)"
        aimed = _width_factor(extent, median_image, COARSE_WIDTH)
        floor = [min(2, f) for f in _width_factor(extent, median_image, MIN_COARSE_WIDTH)]
        f = [max(a, b) for a, b in zip(aimed, floor)]
        why = f"median object {'×'.join(f'{e:.0f}' for e in extent)} px: >= {COARSE_WIDTH} coarse px across"
        if f != aimed:
            why += f", but factor 2 where that leaves >= {MIN_COARSE_WIDTH}"
        return f, "data", why

    factor = p.set("factor", factor_rule)
    if len(factor) != ndim:
        raise ValueError(f"factor: expected {ndim} values for {ndim}D data, got {len(factor)}")

    def margin_rule():
        if not has_objects:
            return 5.0, "default", "paper (MoNuSeg)"
        d = fp.diameter["median"]
        m = min(max(d / 3, max(spacing), MIN_MARGIN_PX * min(spacing)), 0.45 * d)
        return _nice(m), "data", f"1/3 of the median diameter {d:.3g}, at least {MIN_MARGIN_PX:g} pixels"

    margin = p.set("margin", margin_rule)

    def crop_rule():
        crop = []
        for a in range(ndim):
            f = factor[a]
            want = CROP_OBJECTS * extent[a] if has_objects else (16 if ndim == 3 and a == 0 else 256)
            c = max(want, MIN_COARSE_CROP * f)
            c = _round_up(c, f * 8 // math.gcd(f, 8) if c >= 32 else f)
            crop.append(max(f, min(c, median_image[a] // f * f)))
        why = (f"{CROP_OBJECTS} median objects across" if has_objects else "paper") + ", within the images"
        return crop, ("data" if has_objects else "default"), why

    crop = p.set("crop", crop_rule)
    if len(crop) != ndim:
        raise ValueError(f"crop: expected {ndim} values for {ndim}D data, got {len(crop)}")

    p.set("iterations", lambda: (5, "default", "paper: F1 plateaus at 5"))
    p.set("lr", lambda: (1e-3, "default", "paper: cosine 1e-3 -> 1e-5 over the planned steps"))
    def precision_rule():
        from .machine import resolve_precision

        if resolve_precision("auto", dev) is not None:
            return "bf16", "machine", f"{kind.upper()} computes bfloat16 natively (autocast; about 1.5-2x the steps)"
        return "fp32", "machine", f"no native bfloat16 on this {kind.upper()}"

    p.set("precision", precision_rule)
    p.set("augment", lambda: (("rgb" if fp.channels == 3 else "grey"), "data", f"{fp.channels} channel(s)"))

    def batch_rule():
        if not has_objects:
            return 2, "default", "paper"
        density = fp.objects_per_image["median"] / float(np.prod(median_image))
        per_crop = density * float(np.prod(crop))
        b = int(min(MAX_BATCH, max(2, math.ceil(OBJECTS_PER_STEP / max(per_crop, 1e-9)))))
        return b, ("default" if b == 2 else "data"), f"about {per_crop:.3g} objects per crop"

    p.set("batch_size", batch_rule)

    def votes_rule():
        if not has_objects:
            return 5, "default", "no objects to measure"
        v = int(round(min(100, max(2, 0.05 * fp.volume_px["p10"]))))
        return v, "data", f"5% of a small object ({fp.volume_px['p10']:.0f} px)"

    p.set("min_votes", votes_rule)
    p.set("min_distance", lambda: (None, "data", "the margin"))

    def opening_rule():
        r = 2 * min(spacing)
        if ndim == 3 and has_objects and r < 0.25 * fp.diameter["p10"]:
            return _nice(r), "data", "3D: twice the finest pixel (paper 0.5 µm at 0.26 µm)"
        return None, "default", "none in 2D" if ndim == 2 else "objects too small"

    p.set("opening_radius", opening_rule)
    p.set("foreground_threshold", lambda: (None, "default", "argmax; tuned on validation"))

    # Width, memory, dilations and the schedule depend on the machine.
    budget_needed = not ("epochs" in options and "steps_per_epoch" in options)
    if "time" in options and not budget_needed:
        raise ValueError("time: a time budget plans the epochs and steps per epoch; give the budget or both "
                         "epochs and steps per epoch, not all three")
    width_keys = ("groups", "channels_per_group", "downsampling_channels")
    candidates = [dict(zip(width_keys, w)) for w in WIDTHS[min(WIDEST[kind], len(WIDTHS) - 1):]]
    if all(k in options for k in width_keys):
        candidates = candidates[:1]
    limit = memory_limit(dev)
    machine = {"device": str(dev)}
    if budget_needed:
        p.set("time", lambda: (DEFAULT_TIME[kind], "machine", f"default on a {kind.upper()}"))
    else:
        p.values["time"], p.sources["time"], p.reasons["time"] = None, "option", "epochs and steps given"
    if measure is None and budget_needed:
        if sample is None:
            raise ValueError("sample: needed to measure the step time (or give epochs and steps_per_epoch)")

        def measure(values, device):
            return measure_step_time(values, ndim, fp.channels, sample, device, clock=clock)

    previous = snapshot = None
    for i, width in enumerate(candidates):
        for key, value in width.items():
            p.set(key, lambda value=value: (value, "machine", f"{kind.upper()}"
                                            + (" budget" if budget_needed and i else "")))
        values = p.values
        while training_bytes(values, ndim, fp.channels) > limit and "crop" not in options and max(crop) > 16:
            crop = [max(f, int(c * 0.8) // f * f) for c, f in zip(crop, factor)]
            values["crop"], p.sources["crop"], p.reasons["crop"] = crop, "machine", "shrunk to fit in memory"

        def dilation_rule():
            coarse = min(c // f for c, f in zip(crop, factor))
            top = _pow2_at_most(coarse / 4, 8)
            return [2 ** k for k in range(int(math.log2(top)) + 1)], "data", f"fit the coarse crop ({coarse} px)"

        p.set("dilations", dilation_rule)
        if not budget_needed:
            break
        measured = measure(dict(values), dev)
        while measured is None and values["batch_size"] > 1 and "batch_size" not in options:  # out of memory
            values["batch_size"] = max(1, values["batch_size"] // 2)
            p.sources["batch_size"], p.reasons["batch_size"] = "machine", "halved to fit in memory"
            measured = measure(dict(values), dev)
        if measured is None:
            raise ValueError(f"crop: a training step of batch {values['batch_size']} × {crop} does not fit in the "
                             f"memory of {dev}; give a smaller --crop")
        machine.update(step_seconds=float(measured["step_seconds"]),
                       forward_seconds_per_pixel=float(measured["forward_seconds_per_pixel"]))
        fwd = machine["forward_seconds_per_pixel"]
        machine["validation_seconds"] = val_pixels * (1.3 * fwd + DECODE_SECONDS_PER_PIXEL)
        machine["tuning_seconds"] = val_pixels * (9 * fwd + 2 * TUNING_DECODINGS * DECODE_SECONDS_PER_PIXEL)
        machine["planning_seconds"] = clock() - started
        epochs, steps = _schedule_for(p.values["time"], machine, options)
        snapshot = (dict(p.values), dict(p.sources), dict(p.reasons), dict(machine), epochs, steps)
        if previous is not None and machine["step_seconds"] > NARROWER_GAIN * previous[3]["step_seconds"]:
            snapshot = previous  # narrower but hardly faster (per-step overheads): keep the wider model
            break
        if epochs * steps >= MIN_STEPS:
            break
        previous = snapshot
    if budget_needed:
        values, sources, reasons, machine, _, _ = snapshot
        p.values.update(values)
        p.sources.update(sources)
        p.reasons.update(reasons)
        machine["planning_seconds"] = clock() - started  # every measurement, the discarded ones too
        epochs, steps = _schedule_for(p.values["time"], machine, options)
        why = f"fill {format_duration(p.values['time'])} at {machine['step_seconds']:.3g} s per step"
        p.set("epochs", lambda: (epochs, "machine", why))
        p.set("steps_per_epoch", lambda: (steps, "machine", why))
        machine["planned_seconds"] = _planned_seconds(p.values["epochs"], p.values["steps_per_epoch"], machine)
        if _available(p.values["time"], machine) < machine["step_seconds"] + machine["validation_seconds"]:
            warnings.warn(f"time: {format_duration(p.values['time'])} is too short for this data on {dev} "
                          f"(a step takes {machine['step_seconds']:.2g} s); training 1 epoch of 1 step", stacklevel=2)
    else:
        p.set("epochs", lambda: (None, "option", ""))
        p.set("steps_per_epoch", lambda: (None, "option", ""))
    plan = Plan(p.values, p.sources, p.reasons, fp, machine)
    if budget_needed and has_objects and "factor" not in options and _started is None:
        coarser = _width_factor(extent, median_image, MIN_COARSE_WIDTH)
        if coarser != factor and plan.values["epochs"] * plan.values["steps_per_epoch"] < STARVED_STEPS:
            plan = _coarser_if_starved(plan, coarser, fp, options, device=device, val_pixels=val_pixels,
                                       sample=sample, measure=measure, clock=clock, started=started)
    return plan


def _coarser_if_starved(plan: Plan, coarser, fp, options: dict, *, started, **kwargs) -> Plan:
    """The plan at the ``coarser`` factor (the one keeping :data:`MIN_COARSE_WIDTH` coarse pixels
    across the median object) where the budget allows fewer than :data:`STARVED_STEPS` steps at
    the planned one: with so few steps, the steps a coarser map buys count for more than its
    borders (3D, 24 px nuclei, 5 minutes on 2 cores: 2×8×8 scored 0.31 in mean F1 at 130 steps,
    2×4×4 0.10 at 108; at 12 px 1×4×4 0.45 at 1020 steps, 1×2×2 0.38 at 468; benchmarks/README.md,
    "Self-configuration"). Kept only if it does get more steps."""
    wide = plan_training(fp, dict(options, factor=coarser), _started=started, **kwargs)
    n_plan = plan.values["epochs"] * plan.values["steps_per_epoch"]
    n_wide = wide.values["epochs"] * wide.values["steps_per_epoch"]
    plan_text, wide_text = ("×".join(map(str, v)) for v in (plan.values["factor"], coarser))
    if n_wide > n_plan:
        wide.sources["factor"] = "machine"
        wide.reasons["factor"] = (f"{plan.reasons['factor']}; but {plan_text} would fit only {n_plan} steps in the "
                                  f"budget, {wide_text} {n_wide}")
        wide.machine["finer_factor"] = {"factor": plan.values["factor"], "steps": n_plan}
        return wide
    # Measuring the coarser factor took time from the budget too: re-plan the schedule.
    m = plan.machine
    m["planning_seconds"] = kwargs["clock"]() - started
    m["coarser_factor"] = {"factor": list(coarser), "steps": n_wide}
    epochs, steps = _schedule_for(plan.values["time"], m, options)
    plan.values["epochs"], plan.values["steps_per_epoch"] = epochs, steps
    m["planned_seconds"] = _planned_seconds(epochs, steps, m)
    return plan


# ---- measuring the step time -------------------------------------------------------------------


def crop_sampler(pairs: Sequence, seed: int = 0) -> Callable:
    """``sample(batch_size, crop, augment=None)`` → (x (B, C, *crop) float32, y (B, *crop) int64)
    tensors: random crops of (raw image, labels) ``pairs``, normalised and augmented (``augment``:
    a TrainConfig preset) as in training (only the images drawn are normalised), to time training
    steps on."""
    import torch

    from .data import normalize_image, random_crop
    from .train import make_augmenter

    rng = np.random.default_rng(seed)
    normalised = {}

    def sample(batch_size: int, crop, augment=None):
        augmenter = make_augmenter(augment, len(crop)) if augment else None
        xs, ys = [], []
        for _ in range(batch_size):
            i = int(rng.integers(len(pairs)))
            image, labels = pairs[i]
            labels = np.asarray(labels)
            if i not in normalised:
                x, _ = _spatial_of(np.asarray(image), labels, f"pairs[{i}]")
                normalised[i] = np.nan_to_num(normalize_image(x, channel_axis=0))
            x, y = random_crop(normalised[i], labels, tuple(crop), rng)
            if augmenter is not None:
                x, y = augmenter(x, y, rng)
            xs.append(np.ascontiguousarray(x, dtype=np.float32))
            ys.append(np.ascontiguousarray(y, dtype=np.int64))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    return sample


def measure_step_time(values: dict, ndim: int, in_channels: int, sample: Callable, device, *,
                      clock: Callable[[], float] = time.perf_counter, warmup: int = 1,
                      steps: int = 3) -> Optional[dict]:
    """Time training steps of the model ``values`` describe (a throwaway copy, Adam, the RDCNet
    loss, batches from ``sample``) on ``device``: ``warmup`` untimed steps, then the median of
    ``steps`` timed ones, and one forward pass without gradients. Returns ``{"step_seconds",
    "forward_seconds_per_pixel"}``, or None when a step does not fit in the GPU's memory."""
    import torch

    from ._checks import resolve_device
    from .losses import RDCNetLoss
    from .model import RDCNet

    device = resolve_device(device, "device")
    rng_state = torch.get_rng_state()  # the throwaway model must not change the run's random numbers
    model = RDCNet(ndim, in_channels, factor=tuple(values["factor"]), groups=values["groups"],
                   channels_per_group=values["channels_per_group"],
                   downsampling_channels=values["downsampling_channels"], dilations=tuple(values["dilations"]),
                   iterations=values["iterations"]).to(device)
    loss_fn = RDCNetLoss(values["margin"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    try:
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(values.get("precision"))
        for i in range(warmup + steps):
            sync()
            t0 = clock()
            # A step as training runs it, drawing and augmenting its batch too.
            x, y = sample(values["batch_size"], values["crop"], values.get("augment"))
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                output = model(x)
            loss, _ = loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()
            if i >= warmup:
                times.append(clock() - t0)
        model.eval()
        with torch.no_grad():
            sync()
            t0 = clock()
            model(x)
            sync()
            forward = clock() - t0
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch.set_rng_state(rng_state)
    pixels = values["batch_size"] * float(np.prod(values["crop"]))
    return {"step_seconds": float(np.median(times)), "forward_seconds_per_pixel": max(forward, 0.0) / pixels}
