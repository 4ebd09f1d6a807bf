"""Synthetic instance-segmentation data, hard enough that a weak model fails.

Three generators, each returning a list of ``(image, labels)`` pairs with ``labels`` ``int32``
(0 background, 1..K instances, sequential, each instance one face-connected component):

* :func:`nuclei_2d`: fluorescence-like nuclei, ``image`` float32 ``(Y, X)``.
* :func:`leaves_2d`: a plant rosette seen from above, ``image`` float32 ``(Y, X, 3)`` in [0, 1].
* :func:`nuclei_3d`: anisotropic stacks of nuclei, ``image`` float32 ``(Z, Y, X)``.

What makes them hard: nuclei of varied size, shape, orientation and brightness (some barely
above the background) packed into dense clusters where neighbours *share borders* (overlaps are
resolved by the smaller normalised ellipse distance, so the split follows a smooth curve and
each object stays contiguous); only a subtle dimming marks the contact line, then the optics
blur it away, so splitting touching objects needs the instance embeddings rather than a
foreground/background threshold. Add a smooth uneven illumination, internal texture, a PSF blur
and Poisson (shot) plus Gaussian (read) noise. Leaves overlap and occlude each other.

Every image is drawn from its own generator seeded with ``(seed, index)``, so image ``i`` is the
same whatever ``n_images`` is, and runs are reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_SPACING_3D",
    "SYNTHETIC_KINDS",
    "leaves_2d",
    "nuclei_2d",
    "nuclei_3d",
    "write_synthetic_folder",
]

#: default voxel spacing (z, y, x) of :func:`nuclei_3d`, in micrometres (3D-ORG at 1/4 in XY)
DEFAULT_SPACING_3D = (2.0, 1.04, 1.04)

SYNTHETIC_KINDS = ("nuclei_2d", "leaves_2d", "nuclei_3d")


# --------------------------------------------------------------------------------------------
# shared helpers


def _image_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(salt)])


def _as_range(value, name: str) -> tuple[float, float]:
    if np.ndim(value) == 0:
        return float(value), float(value)
    lo, hi = (float(v) for v in value)
    if hi < lo:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {value!r}")
    return lo, hi


def _check_shape(shape, ndim: int, name: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or min(shape) < 1:
        raise ValueError(f"{name}: shape must be {ndim} positive ints, got {shape!r}")
    return shape


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix whose columns are the object's principal axes."""
    if ndim == 2:
        a = rng.uniform(0.0, 2.0 * math.pi)
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _place_centres(
    rng: np.random.Generator,
    extent: np.ndarray,
    n: int,
    size_range: tuple[float, float],
    touching: float,
    min_sep: float = 0.72,
) -> tuple[np.ndarray, np.ndarray]:
    """Object centres (physical units) and sizes (mean radius). With probability ``touching`` a
    new object is put against an existing one, at a distance a bit less than the sum of their
    sizes, so that they overlap and, once split, share a border; that grows dense clusters."""
    ndim = extent.size
    centres = np.empty((0, ndim))
    sizes = np.empty(0)
    lo, hi = np.log(size_range[0]), np.log(size_range[1])
    attempts = 0
    while len(sizes) < n and attempts < 40 * n + 40:
        attempts += 1
        s = float(np.exp(rng.uniform(lo, hi)))
        if len(sizes) and rng.random() < touching:
            j = int(rng.integers(len(sizes)))
            u = rng.normal(size=ndim)
            u /= np.linalg.norm(u) + 1e-12
            c = centres[j] + u * (sizes[j] + s) * rng.uniform(0.72, 0.92)
        else:
            c = rng.uniform(0.0, 1.0, size=ndim) * extent
        if np.any(c < 0) or np.any(c >= extent):
            continue
        if len(sizes):
            d = np.linalg.norm(centres - c, axis=1)
            if np.any(d < min_sep * (sizes + s)):
                continue
        centres = np.vstack([centres, c])
        sizes = np.append(sizes, s)
    return centres, sizes


def _rasterize(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    centres: np.ndarray,
    sizes: np.ndarray,
    aspect: tuple[float, float],
    wobble: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint randomly oriented, slightly irregular ellipsoids. A pixel covered by several goes
    to the one with the smallest normalised distance. Returns (labels, normalised distance)."""
    ndim = len(shape)
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    shape_arr = np.array(shape)
    for k in range(len(sizes)):
        c, s = centres[k], sizes[k]
        # semi-axes: geometric mean s, elongation drawn from `aspect`
        elong = rng.uniform(*aspect)
        radii = np.full(ndim, s)
        radii[0] *= math.sqrt(elong)
        radii[1] /= math.sqrt(elong)
        rot = _random_rotation(rng, ndim)
        n_terms = 2
        dirs = rng.normal(size=(n_terms, ndim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = rng.uniform(2.0, 4.0, size=n_terms)
        phases = rng.uniform(0.0, 2.0 * math.pi, size=n_terms)
        amps = rng.uniform(0.0, wobble, size=n_terms)

        reach = radii.max() * (1.0 + amps.sum())
        lo = np.clip(np.floor((c - reach) / spacing).astype(int), 0, shape_arr)
        hi = np.clip(np.ceil((c + reach) / spacing).astype(int) + 1, 0, shape_arr)
        if np.any(hi <= lo):
            continue
        slc = tuple(slice(a, b) for a, b in zip(lo, hi))
        # physical offsets from the centre, broadcastable per axis
        x = [
            (np.arange(lo[a], hi[a]) * spacing[a] - c[a]).reshape(
                [-1 if b == a else 1 for b in range(ndim)]
            )
            for a in range(ndim)
        ]
        q = [sum(rot[j, i] * x[j] for j in range(ndim)) / radii[i] for i in range(ndim)]
        d = np.sqrt(sum(qi * qi for qi in q)) + 1e-9
        f = 1.0
        for t in range(n_terms):
            proj = sum(q[i] * dirs[t, i] for i in range(ndim)) / d
            f = f + amps[t] * np.cos(freqs[t] * proj + phases[t])
        deff = (d / f).astype(np.float32)
        sub_best = best[slc]
        m = (deff < 1.0) & (deff < sub_best)
        sub_best[m] = deff[m]
        labels[slc][m] = k + 1
    return labels, best


def _clean_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Keep the largest face-connected piece of each label, drop tiny objects, relabel 1..K."""
    out = np.zeros_like(labels)
    next_id = 1
    for k, slc in enumerate(ndimage.find_objects(labels), start=1):
        if slc is None:
            continue
        m = labels[slc] == k
        cc, n = ndimage.label(m)
        if n > 1:
            counts = np.bincount(cc.ravel())
            counts[0] = 0
            m = cc == int(np.argmax(counts))
        if int(m.sum()) < min_size:
            continue
        out[slc][m] = next_id
        next_id += 1
    return out


def _contact_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels face-adjacent to a pixel of a different instance (background excluded)."""
    touch = np.zeros(labels.shape, bool)
    for ax in range(labels.ndim):
        a = np.moveaxis(labels, ax, 0)
        t = np.moveaxis(touch, ax, 0)
        m = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        t[:-1] |= m
        t[1:] |= m
    return touch


def _smooth_field(rng: np.random.Generator, shape, n_waves: int = 3, max_cycles: float = 1.2):
    """A smooth random field in about [-1, 1]: a tilted plane plus a few long cosine waves."""
    ndim = len(shape)
    grids = [
        (np.arange(n) / max(n - 1, 1)).reshape([-1 if b == a else 1 for b in range(ndim)])
        for a, n in enumerate(shape)
    ]
    g = rng.normal(size=ndim)
    g /= np.linalg.norm(g) + 1e-12
    field = sum(g[a] * (grids[a] - 0.5) for a in range(ndim)) * 2.0
    for _ in range(n_waves):
        k = rng.uniform(-max_cycles, max_cycles, size=ndim) * 2.0 * math.pi
        ph = rng.uniform(0, 2 * math.pi)
        field = field + 0.5 * np.cos(sum(k[a] * grids[a] for a in range(ndim)) + ph)
    field = np.broadcast_to(field, shape)
    return field / (np.abs(field).max() + 1e-12)


def _texture(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return t / (t.std() + 1e-12)


def _camera(rng, clean: np.ndarray, photons, read_noise) -> np.ndarray:
    """Shot noise (Poisson with ``photons`` counts per unit intensity) plus read noise."""
    p = rng.uniform(*photons)
    img = rng.poisson(np.clip(clean, 0, None) * p) / p
    img = img + rng.normal(0.0, rng.uniform(*read_noise), size=clean.shape)
    return img.astype(np.float32)


def _nuclei(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    n_nuclei,
    radius,
    aspect,
    touching: float,
    boundary_dim,
    blur_sigma_vox: np.ndarray,
    photons,
    read_noise,
    min_size: int,
    z_attenuation: float = 0.0,
):
    ndim = len(shape)
    extent = np.array(shape) * spacing
    r_lo, r_hi = radius
    if n_nuclei is None:
        # enough nuclei to cover ~25-45 % of the field
        mean_r2 = (r_hi**2 - r_lo**2) / (2 * math.log(r_hi / r_lo)) if r_hi > r_lo else r_lo**2
        if ndim == 2:
            unit = math.pi * mean_r2
        else:
            unit = 4.0 / 3.0 * math.pi * mean_r2**1.5
        n = int(round(np.prod(extent) * rng.uniform(0.25, 0.45) / unit))
    else:
        lo, hi = (n_nuclei, n_nuclei) if np.ndim(n_nuclei) == 0 else n_nuclei
        n = int(rng.integers(int(lo), int(hi) + 1))
    n = max(n, 1)
    centres, sizes = _place_centres(rng, extent, n, (r_lo, r_hi), touching)
    labels, dist = _rasterize(rng, shape, spacing, centres, sizes, aspect, wobble=0.06)
    labels = _clean_labels(labels, min_size)
    k = int(labels.max())

    # per-nucleus brightness: log-normal, some dim (close to the background), some bright
    bright = np.concatenate([[0.0], np.clip(rng.lognormal(0.0, 0.45, size=k), 0.25, 2.5)])
    fg = bright[labels].astype(np.float32) * 0.5
    inside = labels > 0
    d = np.where(inside, dist, 1.0).astype(np.float32)
    fg *= 0.8 + 0.2 * (1.0 - d * d)  # slightly brighter towards the middle
    tex_sigma = np.maximum(0.8 / (spacing / spacing.min()), 0.3)
    fg *= 1.0 + rng.uniform(0.12, 0.25) * _texture(rng, shape, tex_sigma)
    fg *= np.where(_contact_mask(labels), 1.0 - rng.uniform(*boundary_dim), 1.0).astype(np.float32)

    bg_level = rng.uniform(0.05, 0.15)
    bg = bg_level + rng.uniform(0.04, 0.15) * (_smooth_field(rng, shape) + 1.0)
    illum = 1.0 + rng.uniform(0.0, 0.35) * _smooth_field(rng, shape)
    clean = (bg + fg * illum).astype(np.float32)
    if z_attenuation > 0 and ndim == 3:
        att = np.exp(-rng.uniform(0, z_attenuation) * np.arange(shape[0]) / max(shape[0] - 1, 1))
        clean *= att[:, None, None].astype(np.float32)
    clean = ndimage.gaussian_filter(clean, blur_sigma_vox)
    return _camera(rng, clean, photons, read_noise), labels


# --------------------------------------------------------------------------------------------
# public generators


def nuclei_2d(
    n_images: int,
    shape: Sequence[int] = (128, 128),
    seed: int = 0,
    *,
    n_nuclei=None,
    radius=(4.0, 11.0),
    aspect=(1.0, 1.8),
    touching: float = 0.7,
    boundary_dim=(0.05, 0.2),
    blur_sigma=(0.8, 1.4),
    photons=(40.0, 300.0),
    read_noise=(0.005, 0.02),
    min_size: int = 12,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fluorescence-like 2D nuclei: list of ``(image float32 (Y, X), labels int32 (Y, X))``.

    ``n_nuclei``: an int, an inclusive ``(low, high)`` range, or ``None`` for a count that covers
    about 25-45 % of the image. ``radius``: range of the mean semi-axis in pixels (drawn
    log-uniformly); ``aspect``: range of the long/short axis ratio; ``touching``: probability
    that a nucleus is placed against an existing one (dense clusters); ``boundary_dim``: range of
    the relative dimming of the contact pixels between touching nuclei (subtle, then blurred);
    ``blur_sigma``: PSF sigma range in pixels; ``photons``: shot-noise counts per unit
    intensity; ``read_noise``: Gaussian noise sigma range. Intensities are in arbitrary units
    (background about 0.05-0.45, nuclei about 0.1-1.5), i.e. not normalised.
    """
    shape = _check_shape(shape, 2, "nuclei_2d")
    radius, aspect = _as_range(radius, "radius"), _as_range(aspect, "aspect")
    out = []
    for i in range(int(n_images)):
        rng = _image_rng(seed, i, 1)
        sigma = rng.uniform(*_as_range(blur_sigma, "blur_sigma"))
        out.append(
            _nuclei(
                rng,
                shape,
                np.ones(2),
                n_nuclei,
                radius,
                aspect,
                touching,
                _as_range(boundary_dim, "boundary_dim"),
                np.array([sigma, sigma]),
                _as_range(photons, "photons"),
                _as_range(read_noise, "read_noise"),
                min_size,
            )
        )
    return out


def nuclei_3d(
    n_images: int,
    shape: Sequence[int] = (16, 64, 64),
    spacing: Sequence[float] = DEFAULT_SPACING_3D,
    seed: int = 0,
    *,
    n_nuclei=None,
    radius=(3.5, 6.5),
    aspect=(1.0, 1.5),
    touching: float = 0.7,
    boundary_dim=(0.05, 0.2),
    psf_sigma=(1.2, 0.9),
    photons=(40.0, 300.0),
    read_noise=(0.005, 0.02),
    z_attenuation: float = 0.6,
    min_size: int = 10,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Anisotropic 3D nuclei: list of ``(image float32 (Z, Y, X), labels int32 (Z, Y, X))``.

    Nuclei are ellipsoids in *physical* space (``spacing`` = voxel size (z, y, x), default
    :data:`DEFAULT_SPACING_3D` micrometres), so with a coarse z spacing an object spans fewer
    slices than pixels in y/x. ``radius`` (mean semi-axis range) and ``psf_sigma`` ((z, xy)
    Gaussian PSF sigma) are in the units of ``spacing``. Intensity decays with depth by up to
    ``exp(-z_attenuation)`` (scattering). Other arguments as in :func:`nuclei_2d`.
    """
    shape = _check_shape(shape, 3, "nuclei_3d")
    spacing = np.asarray(spacing, float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"nuclei_3d: spacing must be 3 positive floats, got {spacing!r}")
    radius, aspect = _as_range(radius, "radius"), _as_range(aspect, "aspect")
    psf = np.array([psf_sigma[0], psf_sigma[1], psf_sigma[1]], float) / spacing
    out = []
    for i in range(int(n_images)):
        rng = _image_rng(seed, i, 3)
        out.append(
            _nuclei(
                rng,
                shape,
                spacing,
                n_nuclei,
                radius,
                aspect,
                touching,
                _as_range(boundary_dim, "boundary_dim"),
                psf * rng.uniform(0.85, 1.15),
                _as_range(photons, "photons"),
                _as_range(read_noise, "read_noise"),
                min_size,
                z_attenuation=z_attenuation,
            )
        )
    return out


def _one_rosette(rng: np.random.Generator, shape: tuple[int, int], n_leaves):
    h, w = shape
    size = min(h, w)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    cy = h / 2 + rng.normal(0, 0.04) * size
    cx = w / 2 + rng.normal(0, 0.04) * size
    lo, hi = (n_leaves, n_leaves) if np.ndim(n_leaves) == 0 else n_leaves
    n = int(rng.integers(int(lo), int(hi) + 1))
    phase = rng.uniform(0, 2 * math.pi)
    golden = math.radians(137.508)
    reach = 0.46 * size * rng.uniform(0.85, 1.05)

    labels = np.zeros(shape, np.int32)
    shade = np.ones(shape, np.float32)
    stalk_w = max(1.2, 0.018 * size)
    for k in range(n):  # oldest (largest, lowest) first; younger leaves occlude older ones
        age = 1.0 - k / max(n, 1)
        ang = phase + k * golden + rng.normal(0, 0.12)
        length = reach * (0.35 + 0.65 * age) * rng.uniform(0.85, 1.1)
        petiole = length * rng.uniform(0.12, 0.3)
        blade = length - petiole
        half_w = 0.5 * blade * rng.uniform(0.5, 0.8)
        ca, sa = math.cos(ang), math.sin(ang)
        u = (xx - cx) * ca + (yy - cy) * sa
        v = -(xx - cx) * sa + (yy - cy) * ca
        v = v - rng.uniform(-0.08, 0.08) * (u - petiole) ** 2 / max(blade, 1.0)  # slight curl
        t = (u - petiole - blade / 2) / (blade / 2)
        hw = half_w * np.sqrt(np.clip(1 - t * t, 0, None)) * (1 + 0.25 * t)
        in_blade = (np.abs(t) < 1) & (np.abs(v) < hw)
        in_stalk = (u >= 0) & (u <= petiole + 0.2 * blade) & (np.abs(v) < stalk_w / 2)
        m = in_blade | in_stalk
        labels[m] = k + 1
        rel = np.where(in_blade, np.abs(v) / np.maximum(hw, 1e-3), 0.0)
        leaf_shade = 0.72 + 0.28 * np.sqrt(np.clip(1 - rel * rel, 0, 1))
        vein = 0.12 * np.exp(-((v / max(0.07 * half_w, 0.6)) ** 2)) * in_blade
        shade[m] = (leaf_shade + vein)[m]
    labels = _clean_labels(labels, min_size=8)
    return labels, shade


def leaves_2d(
    n_images: int,
    shape: Sequence[int] = (128, 128),
    seed: int = 0,
    *,
    n_leaves=(5, 14),
    noise: float = 0.03,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Plant rosettes (CVPPP-like): list of ``(image float32 (Y, X, 3) in [0, 1], labels)``.

    Elongated leaves (petiole + obovate blade) radiate from a centre along a golden-angle
    spiral; older leaves are longer and lie underneath younger ones, which occlude them (each
    label keeps its largest visible piece). Green leaves with shading and a midrib on a textured
    brown soil background, a thin shadow where leaves overlap, slight blur and noise.
    ``n_leaves``: an int or an inclusive ``(low, high)`` range.
    """
    shape = _check_shape(shape, 2, "leaves_2d")
    out = []
    for i in range(int(n_images)):
        rng = _image_rng(seed, i, 2)
        labels, shade = _one_rosette(rng, shape, n_leaves)
        soil = np.array([0.36, 0.27, 0.18], np.float32) * rng.uniform(0.8, 1.15)
        tex = _texture(rng, shape, 1.5)
        grain = _texture(rng, shape, 0.5)
        img = soil[None, None, :] * (1 + 0.12 * tex + 0.06 * grain)[..., None]
        leaf = labels > 0
        colours = _leaf_colours(rng, labels)
        img = np.where(leaf[..., None], colours * shade[..., None], img)
        img *= np.where(_contact_mask(labels), 0.82, 1.0)[..., None]
        img *= (1.0 + 0.15 * _smooth_field(rng, shape))[..., None]
        img = ndimage.gaussian_filter(img, (0.7, 0.7, 0))
        img = img + rng.normal(0, noise, size=img.shape)
        out.append((np.clip(img, 0, 1).astype(np.float32), labels))
    return out


def _leaf_colours(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    k = int(labels.max())
    base = np.stack(
        [rng.uniform(0.15, 0.3, k + 1), rng.uniform(0.42, 0.62, k + 1), rng.uniform(0.06, 0.18, k + 1)],
        axis=1,
    ) * rng.uniform(0.75, 1.2, size=(k + 1, 1))
    return base[labels].astype(np.float32)


# --------------------------------------------------------------------------------------------
# folders


def write_synthetic_folder(
    folder, kind: str = "nuclei_2d", n: int = 4, seed: int = 0, **kwargs
) -> list[tuple[Path, Path]]:
    """Write ``n`` synthetic pairs as TIFFs ``folder/images/<kind>_<i>.tif`` and
    ``folder/labels/<kind>_<i>.tif`` (same file names); returns the (image, labels) paths.

    ``kind`` is one of :data:`SYNTHETIC_KINDS`; ``kwargs`` go to the generator (e.g. ``shape``).
    Images are stored as float32 (RGB for leaves), labels as uint16, so reading them back gives
    exactly the generated arrays.
    """
    from .io import write_image, write_labels

    generators = {"nuclei_2d": nuclei_2d, "leaves_2d": leaves_2d, "nuclei_3d": nuclei_3d}
    if kind not in generators:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose one of {SYNTHETIC_KINDS}")
    folder = Path(folder)
    pairs = []
    for i, (image, labels) in enumerate(generators[kind](n, seed=seed, **kwargs)):
        name = f"{kind}_{i:03d}.tif"
        ip = write_image(folder / "images" / name, image, rgb=(kind == "leaves_2d"))
        lp = write_labels(folder / "labels" / name, labels)
        pairs.append((ip, lp))
    return pairs
