"""Benchmark cases and their cached inputs, shared by conftest.py and the benchmark modules.

Environment variables:

- ``RDCNET_BENCH_SMALL=1``: shrink every case (a smoke run; the numbers mean little).
- ``RDCNET_BENCH_BUDGET``: seconds of timed calls aimed at per benchmark (default 3).
- ``RDCNET_BENCH_SLOW_LIMIT``: skip a scipy/skimage alternative projected to take longer than
  this many seconds per call (default 20).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
import numpy as np
import torch
from scipy import ndimage as ndi

import rdcnet_ext
from rdcnet_ext import ops
from rdcnet_ext.testing import SyntheticField, synthetic_embeddings

SMALL = os.environ.get("RDCNET_BENCH_SMALL", "") not in ("", "0")
BUDGET_S = float(os.environ.get("RDCNET_BENCH_BUDGET", "3"))
CUDA_OK = torch.cuda.is_available() and bool(rdcnet_ext.has_cuda)
CUDA_SKIP_REASON = (
    f"CUDA variant skipped: torch.cuda.is_available()={torch.cuda.is_available()}, "
    f"rdcnet_ext.has_cuda={rdcnet_ext.has_cuda}"
)
GENERATION_WARN_S = 30.0
# A scipy/skimage alternative projected to take longer than this per call is skipped (with the
# projection as the reason) instead of timed; see Prepared.opening_time.
SLOW_LIMIT_S = float(os.environ.get("RDCNET_BENCH_SLOW_LIMIT", "20"))
PROJECTION_LABELS = 16


@dataclass(frozen=True)
class Case:
    """One benchmark input and the post-processing parameters used on it."""

    name: str
    shape: tuple
    count: int  # `count` argument of synthetic_embeddings (instances come out near it)
    spacing: tuple
    min_distance: float  # physical units
    min_votes: int
    opening_radius: float  # physical units
    crop: tuple  # sub-image (slices) on which the CPU reference of assign and pipeline runs
    noise: float = 0.7
    outliers: float = 0.01
    seed: int = 0

    def describe(self) -> str:
        crop = "x".join(str(s.stop - s.start) for s in self.crop)
        return (
            f"{self.name}: shape {'x'.join(map(str, self.shape))}, spacing {self.spacing}, "
            f"count {self.count}, noise {self.noise} px, outliers {self.outliers}, "
            f"min_distance {self.min_distance}, min_votes {self.min_votes}, "
            f"opening_radius {self.opening_radius}, reference crop {crop}"
        )


def _crop(*sizes: int) -> tuple:
    return tuple(slice(0, n) for n in sizes)


if SMALL:
    CASES = {
        "2d": Case("2d", (512, 512), 125, (1.0, 1.0), 10.0, 10, 2.0, _crop(256, 256)),
        "3d": Case("3d", (16, 128, 128), 64, (2.0, 0.26, 0.26), 3.0, 10, 0.5, _crop(8, 64, 64)),
    }
else:
    CASES = {
        # 2D: ~2000 touching objects of ~1500 px (H&E-nuclei-like density), window 21x21 px.
        "2d": Case("2d", (2048, 2048), 2000, (1.0, 1.0), 10.0, 10, 2.0, _crop(1024, 1024)),
        # 3D: light-sheet organoid stack as in the paper (0.26 x 0.26 x 2 um voxels), opening
        # 0.5 um (a 1x3x3 footprint), peak window 3 um = 1 x 11 x 11 voxels half-size.
        "3d": Case("3d", (64, 512, 512), 1000, (2.0, 0.26, 0.26), 3.0, 10, 0.5, _crop(32, 256, 256)),
    }


@dataclass
class Inputs:
    """Pipeline inputs on one device, plus the intermediate results rdcnet_ext computes from them
    (the inputs of the later ops, and what the other implementations are compared with)."""

    embeddings: torch.Tensor
    mask: torch.Tensor
    votes: torch.Tensor
    centres: torch.Tensor
    labels: torch.Tensor  # assign_to_centres output (the input of label_opening)
    opened: torch.Tensor  # label_opening output
    pipeline: torch.Tensor  # embeddings_to_labels output

    def to(self, device: str) -> "Inputs":
        return Inputs(**{k: v.to(device) for k, v in self.__dict__.items()})

    def numpy(self, name: str) -> np.ndarray:
        return getattr(self, name).cpu().numpy()


@dataclass
class Prepared:
    case: Case
    field: SyntheticField
    generation_s: float
    full: Inputs
    crop: Inputs
    _on_device: dict = field(default_factory=dict)
    opening_times: dict = field(default_factory=dict)  # name -> (seconds, how); see opening_time

    def inputs(self, device: str, region: str = "full") -> Inputs:
        base = self.full if region == "full" else self.crop
        if device == "cpu":
            return base
        key = (device, region)
        if key not in self._on_device:
            self._on_device[key] = base.to(device)
        return self._on_device[key]

    def info(self, region: str = "full") -> dict:
        """extra_info shared by every benchmark of this case."""
        inputs = self.inputs("cpu", region)
        return {
            "case": self.case.name if region == "full" else f"{self.case.name}-crop",
            "region": region,
            "shape": list(inputs.mask.shape),
            "spacing": list(self.case.spacing),
            "instances_true": int(len(self.field.centres)) if region == "full" else None,
            "masked_pixels": int(inputs.mask.sum()),
            "centres_rdcnet_ext": int(inputs.centres.shape[0]),
            "min_distance": self.case.min_distance,
            "min_votes": self.case.min_votes,
            "opening_radius": self.case.opening_radius,
            "generation_s": round(self.generation_s, 2),
            "small": SMALL,
        }

    def opening_time(self, name: str) -> tuple[float, str]:
        """(seconds, how) for one scipy/skimage label opening on this case's labels: the median
        of its benchmark if that ran, else a projection for the per-label variants (from the
        first ``PROJECTION_LABELS`` labels) when it exceeds ``SLOW_LIMIT_S``, else one timed call."""
        if name in self.opening_times:
            return self.opening_times[name]
        from alternatives import OPENINGS, PER_LABEL

        labels, c = self.full.numpy("labels"), self.case
        fn = OPENINGS[name]
        result = None
        if name in PER_LABEL:
            present = sum(box is not None for box in ndi.find_objects(labels))
            n = min(PROJECTION_LABELS, present)
            fn(labels, c.opening_radius, c.spacing, max_labels=1)  # warm-up
            t0 = time.perf_counter()
            fn(labels, c.opening_radius, c.spacing, max_labels=n)
            projected = (time.perf_counter() - t0) * present / max(n, 1)
            if projected > SLOW_LIMIT_S:
                result = (projected, f"projected from {n} of {present} labels")
        if result is None:
            t0 = time.perf_counter()
            fn(labels, c.opening_radius, c.spacing)
            result = (time.perf_counter() - t0, "one call")
        self.opening_times[name] = result
        return result

    def opening_choice(self) -> tuple:
        """(name, function, {name: (seconds, how)}): the fastest scipy/skimage label opening on
        this case, for the pipeline alternative (see :meth:`opening_time`)."""
        from alternatives import OPENINGS

        times = {name: self.opening_time(name) for name in OPENINGS}
        best = min(times, key=lambda k: times[k][0])
        return best, OPENINGS[best], times


def _compute(case: Case, embeddings: np.ndarray, mask: np.ndarray) -> Inputs:
    emb = torch.from_numpy(np.ascontiguousarray(embeddings))
    msk = torch.from_numpy(np.ascontiguousarray(mask))
    votes = ops.hough_votes(emb, msk, case.spacing)
    centres = ops.find_peaks(votes, case.min_distance, case.min_votes, case.spacing)
    labels = ops.assign_to_centres(emb, msk, centres, case.spacing)
    opened = ops.label_opening(labels, case.opening_radius, case.spacing)
    pipeline = ops.embeddings_to_labels(
        emb, msk, case.min_distance, case.spacing, case.min_votes, opening_radius=case.opening_radius
    )
    return Inputs(emb, msk, votes, centres, labels, opened, pipeline)


_CACHE: dict[str, Prepared] = {}


def _warm_up_references() -> None:
    """Run every reference once on tiny inputs, so that torch's one-time costs (lazy kernel and
    thread-pool initialisation) stay out of the single timed call of the CPU references."""
    from rdcnet_ext import reference

    for shape in ((16, 16), (4, 8, 8)):
        fld = synthetic_embeddings(shape, 2, seed=1)
        emb, mask = torch.from_numpy(fld.embeddings), torch.from_numpy(fld.mask)
        reference.embeddings_to_labels(emb, mask, 2.0, None, 1, 1, None, 1.0)


def prepare(name: str) -> Prepared:
    """Generate (once per session) the synthetic field of a case and rdcnet_ext's results on it."""
    if name not in _CACHE:
        if not _CACHE:
            _warm_up_references()
        case = CASES[name]
        t0 = time.perf_counter()
        fld = synthetic_embeddings(
            case.shape, case.count, case.spacing, noise=case.noise, outliers=case.outliers, seed=case.seed
        )
        generation_s = time.perf_counter() - t0
        if generation_s > GENERATION_WARN_S:
            warnings.warn(
                f"synthetic_embeddings took {generation_s:.0f} s for case {name} "
                f"(more than {GENERATION_WARN_S:.0f} s)",
                stacklevel=1,
            )
        full = _compute(case, fld.embeddings, fld.mask)
        crop = _compute(case, fld.embeddings[(slice(None), *case.crop)], fld.mask[case.crop])
        _CACHE[name] = Prepared(case, fld, generation_s, full, crop)
    return _CACHE[name]


