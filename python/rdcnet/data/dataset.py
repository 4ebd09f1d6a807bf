"""Image/label pairs from folders, the one image normalisation, and random crops.

Array layout used by the data layer, the model and the trainer: images are channel-first
``(C, *spatial)`` float32 after :func:`normalize_image`; labels are ``int32 (*spatial)`` with
0 = background, > 0 = instance ids and < 0 (-1) = *undefined* (ignored by the loss).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import IMAGE_SUFFIXES, read_image, read_labels

__all__ = [
    "FolderDataset",
    "PAD_LABEL",
    "count_nonfinite",
    "nonfinite_pixels",
    "normalize_image",
    "random_crop",
    "to_channels_first",
]

#: label value of padded pixels (outside the image): undefined, so the loss ignores them
PAD_LABEL = -1


# --------------------------------------------------------------------------------------------
# normalisation


def to_channels_first(image, channel_axis=None) -> np.ndarray:
    """``(*spatial)`` -> ``(1, *spatial)``; with ``channel_axis`` given, move it to axis 0."""
    image = np.asarray(image)
    if channel_axis is None:
        return image[None]
    return np.moveaxis(image, channel_axis, 0)


def normalize_image(
    image,
    channel_axis: int | None = None,
    *,
    low: float = 1.0,
    high: float = 99.8,
) -> np.ndarray:
    """THE image normalisation of rdcnet, used identically for training and inference.

    Returns a new float32 array ``(C, *spatial)``: a grey image ``(*spatial)`` becomes one
    channel; with ``channel_axis`` (e.g. ``-1`` for RGB ``(Y, X, 3)``) that axis is moved first.
    Each channel is mapped affinely so that its ``low``-th percentile (default 1) goes to 0 and
    its ``high``-th percentile (default 99.8) goes to 1, over its finite pixels. Values are *not*
    clipped: brighter/darker pixels land above 1/below 0. Non-finite pixels (NaN, ±Inf) take no
    part in the percentiles and come out as NaN, so one bad patch does not blank the image;
    callers decide what they mean (:func:`nonfinite_pixels`).

    If the two percentiles coincide the range falls back to ``max - min`` and, for a constant
    channel, to 1 (the channel becomes all zeros); no division by zero, no NaNs from it.
    """
    x = to_channels_first(image, channel_axis)
    if x.size == 0:
        raise ValueError(f"cannot normalise an empty image of shape {np.shape(image)}")
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    ranges = normalization_ranges(x, low=low, high=high)
    x[~np.isfinite(x)] = np.nan  # every non-finite pixel comes out as NaN (see above)
    apply_normalization(x, ranges)
    return x


def normalization_ranges(x: np.ndarray, *, low: float = 1.0, high: float = 99.8) -> list:
    """Per channel of a float32 ``(C, *spatial)`` array, the ``(offset, scale)`` that
    :func:`normalize_image` uses (``None`` for a channel without finite values). Large images
    compute them once on a sample and normalise chunk by chunk with :func:`apply_normalization`."""
    flat = x.reshape(x.shape[0], -1)
    finite = np.isfinite(flat)
    all_finite = bool(finite.all())
    ranges = []
    for c in range(flat.shape[0]):
        values = flat[c] if all_finite else flat[c][finite[c]]
        if values.size == 0:
            ranges.append(None)
            continue
        lo, hi = (float(v) for v in np.percentile(values, [low, high]))
        scale = hi - lo
        if not scale > 0:
            mn, mx = float(values.min()), float(values.max())
            scale = mx - mn if mx > mn else 1.0
        ranges.append((lo, scale))
    return ranges


def apply_normalization(x: np.ndarray, ranges: list) -> np.ndarray:
    """Normalise a float32 ``(C, *spatial)`` array in place with :func:`normalization_ranges`."""
    for ch, r in zip(x, ranges):
        if r is not None:
            ch -= r[0]
            ch *= np.float32(1.0 / r[1])
    return x


def count_nonfinite(image) -> int:
    """How many values of ``image`` are NaN or ±Inf (0 for integer images)."""
    image = np.asarray(image)
    if image.dtype.kind not in "fc":
        return 0
    return int(image.size - np.count_nonzero(np.isfinite(image)))


def nonfinite_pixels(x: np.ndarray):
    """Spatial mask of the pixels of ``x`` ``(C, *spatial)`` that are non-finite in any channel,
    or ``None`` when every value is finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    return bad.any(axis=0)


# --------------------------------------------------------------------------------------------
# crops


def _crop_size(size, spatial: tuple[int, ...]) -> tuple[int, ...]:
    if np.ndim(size) == 0:
        size = (int(size),) * len(spatial)
    size = tuple(spatial[a] if s is None else int(s) for a, s in enumerate(size))
    if len(size) != len(spatial) or min(size) < 1:
        raise ValueError(f"crop size {size!r} does not fit spatial shape {spatial!r}")
    return size


def random_crop(
    image,
    labels,
    size,
    rng: np.random.Generator,
    *,
    pad_label: int = PAD_LABEL,
    pad_mode: str = "reflect",
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of ``size`` (int or one per spatial axis, ``None`` = whole axis) from
    ``image (C, *spatial)`` and ``labels (*spatial)``, at the same place in both.

    Where the image is smaller than the crop along an axis it is padded at a random position:
    the image with ``pad_mode`` (reflect, so the statistics stay natural) and the labels with
    ``pad_label`` (default -1 = undefined, so the loss ignores the padded area instead of
    learning that mirrored objects are background). Returns contiguous copies.
    ``labels`` may be ``None`` (returned as ``None``).
    """
    image = np.asarray(image)
    spatial = image.shape[1:]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != spatial:
            raise ValueError(
                f"labels shape {labels.shape} does not match image spatial shape {spatial}"
            )
    size = _crop_size(size, spatial)
    pads, starts = [], []
    for n, s in zip(spatial, size):
        if n < s:
            before = int(rng.integers(0, s - n + 1))
            pads.append((before, s - n - before))
            starts.append(0)
        else:
            pads.append((0, 0))
            starts.append(int(rng.integers(0, n - s + 1)))
    slc = tuple(slice(a, a + s) for a, s in zip(starts, size))
    img = image[(slice(None),) + slc]
    lab = labels[slc] if labels is not None else None
    if any(p != (0, 0) for p in pads):
        mode = pad_mode
        if mode == "reflect" and any(n == 1 and p != (0, 0) for n, p in zip(spatial, pads)):
            mode = "symmetric"  # reflect is undefined on a single pixel
        img = np.pad(img, [(0, 0)] + pads, mode=mode)
        if lab is not None:
            lab = np.pad(lab, pads, mode="constant", constant_values=pad_label)
    img = np.ascontiguousarray(img)
    lab = np.ascontiguousarray(lab) if lab is not None else None
    return img, lab


# --------------------------------------------------------------------------------------------
# folders


def _list_images(folder: Path, pattern: str) -> list[Path]:
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


class FolderDataset:
    """Pairs of image and label files found in folders (or given explicitly).

    ``FolderDataset(images, label_dir=None, *, pattern="*", suffixes=("", ""), spacing=None,
    undefined=None, normalize=False, cache=False)``

    * ``images`` a folder, or a sequence of ``(image_path, label_path)`` pairs.
    * If ``images`` is a folder holding ``images/`` and ``labels/`` subfolders (and no
      ``label_dir`` is given), those are used. Otherwise labels are looked up in ``label_dir``,
      which defaults to the image folder itself (then the suffixes must differ).
    * Pairing by file stem: an image ``<key><image_suffix>.<ext>`` (only files whose stem ends in
      ``image_suffix`` are images) pairs with ``<key><label_suffix>.<any supported ext>``, where
      ``suffixes = (image_suffix, label_suffix)``. Same names in ``images/`` and ``labels/`` is
      ``("", "")``; CVPPP's ``plant001_rgb.png`` / ``plant001_label.png`` is ``("_rgb",
      "_label")``. ``pattern`` is a glob filtering the image files.
    * Images without a label file raise ``FileNotFoundError`` naming them and the names looked
      for; label files without an image only warn.

    ``ds[i]`` returns ``(image, labels)`` NumPy arrays: the raw image as :func:`read_image`
    gives it, or with ``normalize=True`` the :func:`normalize_image` result ``(C, *spatial)``
    float32 (a trailing axis of length 3 is taken as RGB when the image has one more axis
    than the labels); labels are int32 from :func:`read_labels` with ``undefined`` -> -1.
    ``spacing`` (physical pixel size per spatial axis) is stored for the trainer/predictor.
    Attributes: ``pairs`` (list of ``(Path, Path)``), ``names`` (pairing keys), ``spacing``.
    """

    def __init__(
        self,
        images,
        label_dir=None,
        *,
        pattern: str = "*",
        suffixes: tuple[str, str] = ("", ""),
        spacing: Sequence[float] | None = None,
        undefined=None,
        normalize: bool = False,
        cache: bool = False,
    ):
        self.undefined = undefined
        self.normalize = bool(normalize)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        if self.spacing is not None and any(not s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {spacing!r}")
        self._cache = {} if cache else None

        if isinstance(images, (str, Path)):
            self.pairs, self.names = self._pair_folder(Path(images), label_dir, pattern, suffixes)
        else:
            if label_dir is not None:
                raise ValueError("label_dir is only used when images is a folder")
            self.pairs, self.names = [], []
            for item in images:
                try:
                    ip, lp = item
                except (TypeError, ValueError):
                    raise ValueError(
                        f"expected (image_path, label_path) pairs, got {item!r}"
                    ) from None
                ip, lp = Path(ip), Path(lp)
                for p in (ip, lp):
                    if not p.is_file():
                        raise FileNotFoundError(f"file not found: {p}")
                self.pairs.append((ip, lp))
                self.names.append(ip.stem)
            if not self.pairs:
                raise ValueError("no (image, label) pairs given")

    # ---------------------------------------------------------------- pairing
    @staticmethod
    def _pair_folder(folder: Path, label_dir, pattern: str, suffixes):
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        image_suffix, label_suffix = suffixes
        if label_dir is None:
            if (folder / "images").is_dir() and (folder / "labels").is_dir():
                image_dir, label_dir = folder / "images", folder / "labels"
            else:
                image_dir, label_dir = folder, folder
        else:
            image_dir, label_dir = folder, Path(label_dir)
            if not label_dir.is_dir():
                raise FileNotFoundError(f"label folder not found: {label_dir}")
        if image_dir.resolve() == label_dir.resolve() and image_suffix == label_suffix:
            raise ValueError(
                f"images and labels both in {image_dir}: give label_dir, or suffixes that "
                f"tell them apart (e.g. suffixes=('_rgb', '_label')), got {suffixes!r}"
            )

        label_files: dict[str, list[Path]] = {}
        for p in _list_images(label_dir, "*"):
            if p.stem.endswith(label_suffix):
                key = p.stem[: len(p.stem) - len(label_suffix)] if label_suffix else p.stem
                label_files.setdefault(key, []).append(p)

        pairs, names, missing, used = [], [], [], set()
        for ip in _list_images(image_dir, pattern):
            if image_suffix and not ip.stem.endswith(image_suffix):
                continue
            if label_suffix and ip.stem.endswith(label_suffix) and image_dir == label_dir:
                continue
            key = ip.stem[: len(ip.stem) - len(image_suffix)] if image_suffix else ip.stem
            cands = label_files.get(key, [])
            if not cands:
                missing.append(
                    f"{ip} (looked for {label_dir / (key + label_suffix)}"
                    f".{{{','.join(s[1:] for s in IMAGE_SUFFIXES)}}})"
                )
                continue
            if len(cands) > 1:
                raise ValueError(
                    f"ambiguous labels for {ip}: {', '.join(str(c) for c in cands)}"
                )
            pairs.append((ip, cands[0]))
            names.append(key)
            used.add(key)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) without a label file:\n  " + "\n  ".join(missing)
            )
        if not pairs:
            raise ValueError(
                f"no images matching {pattern!r} with suffix {image_suffix!r} in {image_dir}"
            )
        orphans = sorted(k for k in label_files if k not in used)
        if orphans and image_dir != label_dir and pattern == "*":
            warnings.warn(
                f"{len(orphans)} label file(s) in {label_dir} without an image, e.g. "
                f"{label_files[orphans[0]][0].name}",
                stacklevel=3,
            )
        return pairs, names

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(image, labels)`` of pair ``index`` (cached if ``cache=True``)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        ip, lp = self.pairs[index]
        image = read_image(ip)
        labels = read_labels(lp, undefined=self.undefined)
        spatial = image.shape[:-1] if image.ndim == labels.ndim + 1 else image.shape
        if spatial != labels.shape:
            raise ValueError(
                f"image {ip} (shape {image.shape}) and labels {lp} (shape {labels.shape}) "
                "do not have the same spatial shape"
            )
        if self.spacing is not None and len(self.spacing) != labels.ndim:
            raise ValueError(
                f"spacing {self.spacing} has {len(self.spacing)} values but {lp} is "
                f"{labels.ndim}D"
            )
        if self._cache is not None:
            self._cache[index] = (image, labels)
        return image, labels

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index = index % len(self)
        image, labels = self.load(index)
        if self.normalize:
            channel_axis = -1 if image.ndim == labels.ndim + 1 else None
            image = normalize_image(image, channel_axis)
        return image, labels

    def __repr__(self) -> str:
        first = self.pairs[0][0].parent if self.pairs else None
        return f"FolderDataset({len(self)} pairs from {first}, spacing={self.spacing})"
