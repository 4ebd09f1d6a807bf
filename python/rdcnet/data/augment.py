"""Online data augmentation (the paper's supplementary Table 1), reproducible and label-safe.

Every function takes the image channel-first ``(C, *spatial)`` (as :func:`normalize_image`
returns it) and, for geometric transforms, the labels ``(*spatial)``; all randomness comes from
the ``numpy.random.Generator`` passed in, so the same generator state gives the same result.
Labels are only ever *resampled* (flips, rotations, nearest-neighbour lookups), never
interpolated: every output label value is one of the input values (plus -1 where a constant
``mode`` fills pixels from outside the image). ``labels`` may be ``None`` everywhere.
Images come back float32, labels in their input dtype; outputs never alias the inputs.

Functions: :func:`flip`, :func:`affine`, :func:`elastic` (geometric, image + labels);
:func:`intensity_offset`, :func:`gaussian_noise`, :func:`gaussian_blur`, :func:`hsv_shift`,
:func:`intensity_clip` (image only). :class:`Augmenter` chains them from an
:class:`AugmentConfig`, with presets :meth:`Augmenter.for_grey` and :meth:`Augmenter.for_rgb`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "affine",
    "elastic",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "hsv_shift",
    "intensity_clip",
    "intensity_offset",
]

OUTSIDE_LABEL = -1  # label of pixels brought in from outside the image with a constant mode


def _image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"image must be (C, *spatial), got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _check_labels(image: np.ndarray, labels):
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        raise ValueError(
            f"labels shape {labels.shape} does not match image spatial shape {image.shape[1:]}"
        )
    return labels


def _out(image, labels):
    image = np.array(image, dtype=np.float32, order="C", copy=True)
    if labels is not None:
        labels = np.array(labels, order="C", copy=True)
    return image, labels


def _spatial_axes(nsp: int, axes) -> list[int]:
    if axes is None:
        return list(range(nsp))
    out = []
    for a in axes:
        a = int(a)
        if not -nsp <= a < nsp:
            raise ValueError(f"spatial axis {a} out of range for {nsp} spatial dims")
        out.append(a % nsp)
    return sorted(set(out))


# --------------------------------------------------------------------------------------------
# geometric


def flip(
    image,
    labels,
    rng: np.random.Generator,
    axes: Sequence[int] | None = None,
    *,
    p: float = 0.5,
    rotate90: bool = True,
):
    """Flip each spatial axis in ``axes`` (indices into the spatial dims, default all) with
    probability ``p``. With ``rotate90`` and the last two spatial axes both in ``axes`` and of
    equal length (square in-plane), also rotate the plane by a random multiple of 90 degrees.
    Returns ``(image, labels)``. With ``rotate90=False`` a second call with an identically
    seeded generator undoes the first."""
    image = _image(image)
    labels = _check_labels(image, labels)
    nsp = image.ndim - 1
    axes = _spatial_axes(nsp, axes)
    for a in axes:
        if rng.random() < p:
            image = np.flip(image, 1 + a)
            if labels is not None:
                labels = np.flip(labels, a)
    if (
        rotate90
        and nsp >= 2
        and nsp - 2 in axes
        and nsp - 1 in axes
        and image.shape[-1] == image.shape[-2]
    ):
        k = int(rng.integers(4))
        if k:
            image = np.rot90(image, k, axes=(-2, -1))
            if labels is not None:
                labels = np.rot90(labels, k, axes=(-2, -1))
    return _out(image, labels)


def _resample(image, labels, coords_fn, mode: str):
    """Apply the same geometric resampling to every channel (order 1) and the labels (order 0)."""
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        out[c] = coords_fn(image[c], 1, np.float32, 0.0)
    lab = None
    if labels is not None:
        cval = OUTSIDE_LABEL if labels.dtype.kind == "i" else 0
        lab = coords_fn(labels, 0, labels.dtype, cval)
    return out, lab


def affine(
    image,
    labels,
    rng: np.random.Generator,
    zoom: tuple[float, float] = (0.9, 1.1),
    shear_deg: float = 5.0,
    rotation_deg: float = 10.0,
    *,
    mode: str = "reflect",
):
    """Random in-plane affine transform about the centre: isotropic zoom drawn from ``zoom``,
    shear in ``±shear_deg``, rotation in ``±rotation_deg`` (degrees), acting on the last two
    spatial axes (each z slice alike in 3D). Image: linear interpolation (order 1); labels:
    nearest neighbour (order 0). ``mode`` is the scipy boundary mode for both; with
    ``"constant"`` the image is filled with 0 and the labels with -1 (undefined)."""
    image = _image(image)
    labels = _check_labels(image, labels)
    nsp = image.ndim - 1
    if nsp < 2:
        raise ValueError("affine needs at least 2 spatial dims")
    z = rng.uniform(*zoom)
    sh = math.radians(rng.uniform(-shear_deg, shear_deg))
    th = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shear = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    forward = rot @ shear @ np.diag([z, z])
    matrix = np.eye(nsp)
    matrix[-2:, -2:] = np.linalg.inv(forward)  # output coords -> input coords
    centre = (np.array(image.shape[1:], float) - 1) / 2
    offset = centre - matrix @ centre

    def coords_fn(a, order, dtype, cval):
        return ndimage.affine_transform(
            a, matrix, offset=offset, order=order, mode=mode, cval=cval, output=dtype,
            prefilter=False,
        )

    return _out(*_resample(image, labels, coords_fn, mode))


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma`` pixels, rescaled to a max
    magnitude of 1. Large sigmas are computed on a coarse grid and interpolated (same field
    statistics, far cheaper)."""
    step = max(1, int(sigma // 4))
    coarse_shape = tuple(-(-n // step) + 1 for n in shape)
    noise = rng.uniform(-1.0, 1.0, size=coarse_shape)
    field = ndimage.gaussian_filter(noise, sigma / step, mode="reflect")
    if step > 1:
        grid = np.meshgrid(*[np.arange(n) / step for n in shape], indexing="ij")
        field = ndimage.map_coordinates(field, grid, order=1, mode="nearest")
    else:
        field = field[tuple(slice(0, n) for n in shape)]
    return field / (np.abs(field).max() + 1e-12)


def elastic(
    image,
    labels,
    rng: np.random.Generator,
    amplitude: float | Sequence[float] = 10.0,
    sigma: float | None = None,
    *,
    mode: str = "reflect",
):
    """Random smooth warp: per spatial axis, uniform noise smoothed by a Gaussian of ``sigma``
    pixels (default ``2 * amplitude``) and scaled so that the largest displacement is
    ``amplitude`` pixels (one value, or one per spatial axis; 0 leaves that axis alone).
    Image: linear interpolation; labels: nearest neighbour. ``mode`` as in :func:`affine`."""
    image = _image(image)
    labels = _check_labels(image, labels)
    spatial = image.shape[1:]
    nsp = len(spatial)
    amps = np.broadcast_to(np.asarray(amplitude, float), (nsp,))
    if np.any(amps < 0):
        raise ValueError(f"amplitude must be >= 0, got {amplitude!r}")
    if sigma is None:
        sigma = 2.0 * float(amps.max())
    sigma = max(float(sigma), 1e-3)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in spatial], indexing="ij")
    coords = np.stack(grid)
    for a in range(nsp):
        if amps[a] > 0:
            coords[a] += (amps[a] * _smooth_noise(rng, spatial, sigma)).astype(np.float32)

    def coords_fn(a, order, dtype, cval):
        return ndimage.map_coordinates(
            a, coords, order=order, mode=mode, cval=cval, output=dtype, prefilter=False
        )

    return _out(*_resample(image, labels, coords_fn, mode))


# --------------------------------------------------------------------------------------------
# intensity (image only)


def intensity_offset(image, rng: np.random.Generator, sigma: float = 0.2) -> np.ndarray:
    """Add one offset ~ N(0, ``sigma``) to the whole patch (all channels alike)."""
    image = _image(image)
    return (image + np.float32(rng.normal(0.0, sigma))).astype(np.float32)


def gaussian_noise(
    image, rng: np.random.Generator, max_sigma: float = 0.1, *, min_sigma: float = 0.0
) -> np.ndarray:
    """Add IID per-pixel Gaussian noise whose sigma is drawn per patch in
    ``[min_sigma, max_sigma]``."""
    image = _image(image)
    s = rng.uniform(min_sigma, max_sigma)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(s)
    return image + noise


def gaussian_blur(
    image,
    rng: np.random.Generator,
    max_sigma: float = 2.0,
    *,
    min_sigma: float = 0.5,
    p: float = 0.5,
) -> np.ndarray:
    """With probability ``p``, blur every channel (spatial axes only) with a Gaussian whose
    sigma is drawn in ``[min_sigma, max_sigma]`` pixels; else return a copy."""
    image = _image(image)
    if rng.random() >= p:
        return image.copy()
    s = rng.uniform(min_sigma, max_sigma)
    return ndimage.gaussian_filter(image, [0.0] + [s] * (image.ndim - 1), mode="reflect")


def hsv_shift(
    image,
    rng: np.random.Generator,
    max_hue: float = 0.3,
    max_sat: float = 0.2,
    max_val: float = 0.2,
) -> np.ndarray:
    """Random colour shift of an RGB image ``(3, *spatial)``: hue += U(±max_hue) (hue in
    turns, wrapping), saturation *= U(1 ± max_sat) (clipped to [0, 1]), value *=
    U(1 ± max_val). Normalised images may leave [0, 1]: the patch is mapped affinely to [0, 1]
    for the HSV round trip and back, so its intensity range is kept."""
    from skimage.color import hsv2rgb, rgb2hsv

    image = _image(image)
    if image.shape[0] != 3:
        raise ValueError(f"hsv_shift needs 3 channels (RGB) first, got shape {image.shape}")
    dh = rng.uniform(-max_hue, max_hue)
    fs = rng.uniform(1 - max_sat, 1 + max_sat)
    fv = rng.uniform(1 - max_val, 1 + max_val)
    lo, hi = float(image.min()), float(image.max())
    scale = hi - lo if hi > lo else 1.0
    rgb = np.moveaxis((image - lo) / scale, 0, -1)
    hsv = rgb2hsv(rgb)
    hsv[..., 0] = (hsv[..., 0] + dh) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * fs, 0.0, 1.0)
    hsv[..., 2] = hsv[..., 2] * fv
    out = np.moveaxis(hsv2rgb(hsv), -1, 0) * scale + lo
    return np.ascontiguousarray(out, dtype=np.float32)


def intensity_clip(
    image,
    rng: np.random.Generator,
    low: float = -1.0,
    high: float = 1.0,
    sigma: float = 0.3,
) -> np.ndarray:
    """Clip the patch to ``[a, b]`` with ``a ~ N(low, sigma)``, ``b ~ N(high, sigma)``
    (swapped if needed) — the paper's "random clipping"."""
    image = _image(image)
    a, b = rng.normal(low, sigma), rng.normal(high, sigma)
    a, b = min(a, b), max(a, b)
    return np.clip(image, np.float32(a), np.float32(b))


# --------------------------------------------------------------------------------------------
# chain


@dataclass
class AugmentConfig:
    """Which augmentations :class:`Augmenter` applies, in this order: flip, affine, elastic,
    hsv, blur, offset, noise, clip. A probability of 0 (or sigma 0) disables a step."""

    flip_p: float = 0.5
    flip_axes: tuple[int, ...] | None = None  # spatial axes; None = all
    rotate90: bool = True
    affine_p: float = 0.0
    zoom: tuple[float, float] = (0.9, 1.1)
    shear_deg: float = 5.0
    rotation_deg: float = 10.0
    elastic_p: float = 0.0
    elastic_amplitude: float = 10.0
    elastic_sigma: float | None = None  # None = 2 * amplitude
    hsv_p: float = 0.0
    max_hue: float = 0.3
    max_sat: float = 0.2
    max_val: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    offset_sigma: float = 0.0
    noise_max_sigma: float = 0.0
    clip_p: float = 0.0
    clip_mean: tuple[float, float] = (-1.0, 1.0)
    clip_sigma: float = 0.3
    mode: str = "reflect"  # boundary mode of affine/elastic
    ndim: int | None = None  # expected number of spatial dims (checked if set)


class Augmenter:
    """Apply a chain of augmentations: ``image, labels = augmenter(image, labels, rng)``.

    ``Augmenter(config=None, **overrides)``: ``config`` is an :class:`AugmentConfig`, a dict of
    its fields, or ``None`` (defaults: flips only); keyword overrides replace fields.
    Presets: :meth:`for_grey` and :meth:`for_rgb`.
    """

    def __init__(self, config: AugmentConfig | dict | None = None, **overrides):
        if config is None:
            config = AugmentConfig()
        elif isinstance(config, dict):
            config = self._from_dict(config)
        elif not isinstance(config, AugmentConfig):
            raise TypeError(f"config must be an AugmentConfig or a dict, got {type(config)}")
        if overrides:
            self._from_dict(overrides)  # validates the names
            config = dataclasses.replace(config, **overrides)
        self.config = config

    @staticmethod
    def _from_dict(d: dict) -> AugmentConfig:
        names = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown augmentation option(s) {unknown}; known: {sorted(names)}"
            )
        return AugmentConfig(**d)

    @classmethod
    def for_grey(cls, ndim: int = 2, **overrides) -> "Augmenter":
        """Grey images (2D or 3D): random flips on every axis (+ in-plane 90° rotations when
        square), one intensity offset ~ N(0, 0.2) per patch, Gaussian noise (sigma <= 0.1)."""
        cfg = dict(ndim=ndim, flip_p=0.5, rotate90=True, offset_sigma=0.2, noise_max_sigma=0.1)
        cfg.update(overrides)
        return cls(cfg)

    @classmethod
    def for_rgb(cls, **overrides) -> "Augmenter":
        """RGB 2D images (CVPPP/MoNuSeg settings of the paper): flips (+ 90° rotations), affine
        (zoom 0.9-1.1, shear ±5°, rotation ±10°), elastic warp (amplitude 10 px, sigma 20 px),
        HSV shift (hue ±0.3, saturation and value ×[0.8, 1.2]), blur (p 0.5, sigma 0.5-2),
        offset ~ N(0, 0.2), Gaussian noise (sigma <= 0.05)."""
        cfg = dict(
            ndim=2,
            flip_p=0.5,
            rotate90=True,
            affine_p=1.0,
            elastic_p=1.0,
            elastic_amplitude=10.0,
            hsv_p=1.0,
            blur_p=0.5,
            blur_sigma=(0.5, 2.0),
            offset_sigma=0.2,
            noise_max_sigma=0.05,
        )
        cfg.update(overrides)
        return cls(cfg)

    def __call__(self, image, labels, rng: np.random.Generator):
        c = self.config
        image = _image(image)
        labels = _check_labels(image, labels)
        if c.ndim is not None and image.ndim - 1 != c.ndim:
            raise ValueError(
                f"augmenter set up for {c.ndim}D images, got image shape {image.shape} "
                "(expected (C, *spatial))"
            )
        if c.flip_p > 0 or c.rotate90:
            image, labels = flip(
                image, labels, rng, c.flip_axes, p=c.flip_p, rotate90=c.rotate90
            )
        if c.affine_p > 0 and rng.random() < c.affine_p:
            image, labels = affine(
                image, labels, rng, c.zoom, c.shear_deg, c.rotation_deg, mode=c.mode
            )
        if c.elastic_p > 0 and c.elastic_amplitude > 0 and rng.random() < c.elastic_p:
            image, labels = elastic(
                image, labels, rng, c.elastic_amplitude, c.elastic_sigma, mode=c.mode
            )
        if c.hsv_p > 0 and rng.random() < c.hsv_p:
            image = hsv_shift(image, rng, c.max_hue, c.max_sat, c.max_val)
        if c.blur_p > 0:
            image = gaussian_blur(
                image, rng, c.blur_sigma[1], min_sigma=c.blur_sigma[0], p=c.blur_p
            )
        if c.offset_sigma > 0:
            image = intensity_offset(image, rng, c.offset_sigma)
        if c.noise_max_sigma > 0:
            image = gaussian_noise(image, rng, c.noise_max_sigma)
        if c.clip_p > 0 and rng.random() < c.clip_p:
            image = intensity_clip(image, rng, c.clip_mean[0], c.clip_mean[1], c.clip_sigma)
        return _out(image, labels)

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"
