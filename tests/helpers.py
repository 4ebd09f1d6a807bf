"""Shared test data: seeded cases, random inputs and small utilities (imported by the test modules).

Nothing here calls the fast ops; the references in :mod:`rdcnet_ext.reference` are the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rdcnet_ext.testing import synthetic_embeddings

ANISO_3D = (2.0, 0.26, 0.26)


def spacing_list(spacing, ndim: int) -> list[float]:
    """The per-axis spacing the ops derive from ``spacing`` (None, a number or ndim numbers)."""
    if spacing is None:
        return [1.0] * ndim
    if isinstance(spacing, (int, float)):
        return [float(spacing)] * ndim
    return [float(s) for s in spacing]


@dataclass
class Case:
    """A synthetic instance field (see rdcnet_ext.testing.synthetic_embeddings)."""

    shape: tuple
    count: int
    spacing: Optional[tuple] = None
    noise: float = 0.7
    outliers: float = 0.0
    nonfinite: float = 0.0
    seed: int = 0

    @property
    def id(self) -> str:
        sp = "iso" if self.spacing is None else "x".join(f"{s:g}" for s in self.spacing)
        return (f"{'x'.join(map(str, self.shape))}-n{self.count}-sp{sp}-noise{self.noise:g}"
                f"-out{self.outliers:g}-nf{self.nonfinite:g}-s{self.seed}")

    def make(self):
        f = synthetic_embeddings(self.shape, self.count, self.spacing, noise=self.noise,
                                 outliers=self.outliers, nonfinite=self.nonfinite, seed=self.seed)
        return Field(
            embeddings=torch.from_numpy(f.embeddings),
            mask=torch.from_numpy(f.mask),
            labels=torch.from_numpy(f.labels),
            centres=torch.from_numpy(f.centres),
            spacing=list(f.spacing),
        )


@dataclass
class Field:
    embeddings: torch.Tensor  # float32 (ndim, *spatial)
    mask: torch.Tensor        # bool (*spatial)
    labels: torch.Tensor      # int32 (*spatial), true instances
    centres: torch.Tensor     # int64 (K, ndim)
    spacing: list

    @property
    def ndim(self) -> int:
        return self.mask.dim()


# Seeded synthetic fields: 2D and 3D, isotropic and anisotropic, clean and defective, odd sizes,
# thin images (axes of length 1). Kept small enough for the pure-PyTorch references.
CASES = [
    Case((64, 64), 12),
    Case((37, 53), 8, (1.0, 0.5), noise=1.0, outliers=0.1, seed=1),
    Case((96, 80), 30, noise=0.4, outliers=0.05, nonfinite=0.02, seed=2),
    Case((48, 40), 6, (0.26, 0.26), noise=1.5, outliers=0.3, nonfinite=0.05, seed=3),
    Case((1, 41), 4, seed=4),
    Case((5, 5), 1, noise=0.2, seed=5),
    Case((16, 48, 48), 20, ANISO_3D, noise=0.7, outliers=0.05, nonfinite=0.01, seed=6),
    Case((12, 24, 20), 10, noise=1.0, seed=7),
    Case((9, 17, 13), 6, (1.0, 2.0, 0.5), noise=0.3, outliers=0.2, nonfinite=0.1, seed=8),
    Case((2, 1, 19), 3, seed=9),
    Case((20, 20, 20), 27, (0.5, 0.5, 0.5), noise=2.0, outliers=0.5, seed=10),
]
CASE_IDS = [c.id for c in CASES]


# (shape, spacing as given to the op: None, one number, or one per axis)
RANDOM_GEOMETRIES = [
    ((31, 29), None),
    ((40, 17), (1.0, 0.5)),
    ((8, 64), 0.26),
    ((1, 1), None),
    ((1, 12), (2.0, 0.7)),
    ((3, 1), None),
    ((2, 2), (0.3, 3.0)),
    ((10, 20, 15), ANISO_3D),
    ((7, 9, 11), None),
    ((1, 1, 1), None),
    ((4, 1, 16), (0.5, 1.0, 3.0)),
    ((6, 6, 6), 2.0),
]
GEOMETRY_IDS = ["x".join(map(str, s)) + f"-{sp}" for s, sp in RANDOM_GEOMETRIES]


def random_embeddings(shape: Sequence[int], spacing, rng: np.random.Generator,
                      nonfinite: float = 0.03) -> torch.Tensor:
    """Float32 embeddings ``(ndim, *shape)`` with no structure: uniform over and beyond the image
    (a fifth of its extent each side), and many exactly on integer bins and on .5 rounding
    boundaries (round half to even), inside, on and beyond the border; a few NaN/+-inf."""
    ndim = len(shape)
    s = np.asarray(spacing_list(spacing, ndim))[:, None]
    n = int(np.prod(shape))
    extent = np.asarray(shape, dtype=np.float64)[:, None] * s
    e = rng.uniform(-0.2, 1.2, (ndim, n)) * extent
    top = max(shape) + 2
    half = rng.random(n) < 0.3
    e[:, half] = (rng.integers(-2, top, (ndim, int(half.sum()))) + 0.5) * s
    whole = rng.random(n) < 0.2
    e[:, whole] = rng.integers(-1, top, (ndim, int(whole.sum()))) * s
    bad = rng.random(n) < nonfinite
    e[rng.integers(0, ndim, int(bad.sum())), np.flatnonzero(bad)] = rng.choice(
        np.array([np.nan, np.inf, -np.inf]), int(bad.sum()))
    return torch.from_numpy(e.astype(np.float32).reshape((ndim, *shape)))


def random_mask(shape, rng: np.random.Generator, fraction: float) -> torch.Tensor:
    return torch.from_numpy(rng.random(tuple(shape)) < fraction)


def random_centres(shape, k: int, rng: np.random.Generator, duplicates: bool = False) -> torch.Tensor:
    """``k`` random in-image pixel indices, int64 ``(k, ndim)``, optionally with repeats."""
    c = np.stack([rng.integers(0, n, k) for n in shape], 1).astype(np.int64).reshape(k, len(shape))
    if duplicates and k >= 3:
        c[rng.integers(0, k, k // 3)] = c[rng.integers(0, k, k // 3)]
    return torch.from_numpy(c)


def blocky_labels(shape, rng: np.random.Generator, block: int, n_labels: int, negative: bool = False,
                  speckle: float = 0.0) -> torch.Tensor:
    """int64 label image of ``block``-sized cubes of random labels (0 = background), optionally
    with negative labels and single-pixel speckle."""
    small = rng.integers(-1 if negative else 0, n_labels + 1, tuple(-(-n // block) for n in shape))
    lab = small
    for a in range(len(shape)):
        lab = np.repeat(lab, block, a)
    lab = lab[tuple(slice(0, n) for n in shape)]
    if speckle:
        lab = np.where(rng.random(tuple(shape)) < speckle, rng.integers(0, n_labels + 1, tuple(shape)), lab)
    return torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))


def assert_equal(actual, expected, what: str = "") -> None:
    """Exact equality of two tensors (or arrays) including dtype and shape, with a useful message."""
    actual = torch.as_tensor(actual) if isinstance(actual, np.ndarray) else actual
    expected = torch.as_tensor(expected) if isinstance(expected, np.ndarray) else expected
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.cpu(), expected.cpu()
    if not torch.equal(a, e):
        if a.dim() >= 1 and a.shape == e.shape and a.numel():
            diff = (a != e)
            where = torch.nonzero(diff)[:5].tolist()
            raise AssertionError(
                f"{what}: {int(diff.sum())} of {a.numel()} elements differ, first at {where}: "
                f"got {[a[tuple(w)].item() for w in where]}, expected {[e[tuple(w)].item() for w in where]}")
        raise AssertionError(f"{what}: {a} != {e}")


__all__ = [
    "ANISO_3D", "CASES", "CASE_IDS", "GEOMETRY_IDS", "RANDOM_GEOMETRIES", "Case", "Field", "assert_equal",
    "blocky_labels", "random_centres", "random_embeddings", "random_mask", "spacing_list",
]


# A tiny RDCNet for the export and napari tests (seconds on a CPU).
TINY_MODEL = dict(ndim=2, in_channels=1, factor=4, downsampling_channels=8, groups=2, channels_per_group=8,
                  dilations=(1, 2, 4), iterations=3, dropout=0.0)


def tiny_model(offset_std: float = 1.0, **overrides):
    """A fixed-seed tiny RDCNet in eval mode whose offsets are large enough (``offset_std`` of the
    output conv's weights) for a non-trivial decoding: untrained, it finds objects all the same."""
    from rdcnet.model import RDCNet

    torch.manual_seed(0)
    model = RDCNet(**{**TINY_MODEL, **overrides}).eval()
    with torch.no_grad():
        model.up.weight.normal_(std=offset_std)
    return model


class _CreatesFile:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating ``marker``. A loader
    that executes code from a model file thus leaves the marker behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_code_carrying_checkpoint(path, marker) -> None:
    """A file shaped like an rdcnet checkpoint (last.pt keys included) whose unpickling would create
    ``marker``: what an attacker would send as a model file."""
    payload = _CreatesFile(marker)
    torch.save({"version": 1, "model_config": {"ndim": 2}, "train_config": None, "postprocess": {},
                "state_dict": {"w": payload}, "optimizer": payload, "scheduler": {}, "numpy_rng": {},
                "torch_rng": torch.zeros(1), "history": [], "best_f1": 0.0, "epoch": 0}, path)
