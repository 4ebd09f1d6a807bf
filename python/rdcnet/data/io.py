"""Reading and writing images and label images (TIFF, PNG, JPEG).

Conventions
-----------
* Images come back as NumPy arrays in their stored dtype: grey ``(Y, X)``, colour ``(Y, X, 3)``
  (an alpha channel is dropped), stacks ``(Z, Y, X)``. Leading singleton axes are squeezed.
* Label images come back as ``int32``: 0 is background, positive values are instance ids and
  ``-1`` marks *undefined* pixels (ignored by the loss), see ``read_labels(undefined=...)``.
* Writers create the parent folder if needed and are atomic: the file is written to a temporary
  file in the destination folder and moved into place with :func:`os.replace`, so a reader never
  sees a half-written file and an interrupted write leaves the old file untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .._files import atomic_write

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES",
    "read_image",
    "read_labels",
    "write_image",
    "write_labels",
]


# --------------------------------------------------------------------------------------------
# helpers


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _check_readable(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    if _suffix(path) not in IMAGE_SUFFIXES:
        raise ValueError(
            f"unsupported file type {path.suffix!r} for {path}; "
            f"supported: {', '.join(IMAGE_SUFFIXES)}"
        )
    return path


def _squeeze_leading(a: np.ndarray, keep: int) -> np.ndarray:
    """Drop leading singleton axes while more than ``keep`` axes remain."""
    while a.ndim > keep and a.shape[0] == 1:
        a = a[0]
    return a


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """Returns (array, is_colour). Colour arrays are (..., Y, X, 3) with alpha dropped."""
    import logging

    import tifffile

    # tifffile logs what it finds wrong in a damaged file; keep it for our one-line error.
    problems = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: problems.append(record.getMessage())
    logger = logging.getLogger("tifffile")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                detail = f" ({' '.join(problems[0].split())})" if problems else ""
                raise ValueError(f"no image data{detail}")
            series = tif.series[0]
            axes = series.axes
            data = series.asarray()
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    colour = axes.endswith("S") and data.shape[-1] in (3, 4) and data.ndim >= 3
    if colour:
        data = data[..., :3]
        data = _squeeze_leading(data, 3)
    else:
        if axes.endswith("S") and data.shape[-1] == 1:
            data = data[..., 0]
        data = _squeeze_leading(data, 2)
    return np.ascontiguousarray(data), bool(colour)


def _read_pil(path: Path, for_labels: bool):
    """Returns (array, kind) with kind in {'grey', 'rgb', 'palette'}."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            if for_labels:
                return np.array(im), "palette"
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            mode = im.mode
        if mode in ("RGBA", "RGBa", "RGBX"):
            return np.array(im)[..., :3], "rgb"
        if mode == "RGB":
            return np.array(im), "rgb"
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            return np.array(im.convert("RGB")), "rgb"
        if mode in ("LA", "La", "PA"):
            return np.array(im)[..., 0], "grey"
        if mode == "1":
            return np.array(im).astype(np.uint8), "grey"
        arr = np.array(im)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            return arr[..., :3], "rgb"
        if arr.ndim != 2:
            raise ValueError(f"unexpected image mode {mode!r} with shape {arr.shape}")
        return arr, "grey"


def _read_any(path, for_labels: bool) -> tuple[np.ndarray, str]:
    path = _check_readable(path)
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            data, colour = _read_tiff(path)
            kind = "rgb" if colour else "grey"
        else:
            data, kind = _read_pil(path, for_labels)
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:  # tifffile / Pillow raise many different types
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    if data.size == 0:
        raise ValueError(f"image file {path} contains no pixels (shape {data.shape})")
    return data, kind


def _check_writable_suffix(path: Path, allowed: Sequence[str]) -> str:
    suffix = _suffix(path)
    if suffix not in allowed:
        raise ValueError(
            f"unsupported file type {path.suffix!r} for {path}; supported: {', '.join(allowed)}"
        )
    return suffix


# --------------------------------------------------------------------------------------------
# images


def read_image(path) -> np.ndarray:
    """Read an image file into a NumPy array in its stored dtype.

    TIFF files are read with tifffile, PNG/JPEG/BMP with Pillow. Returns ``(Y, X)`` for grey
    images, ``(Y, X, 3)`` for colour images (alpha dropped, palettes expanded to RGB) and
    ``(Z, Y, X)`` for stacks; leading singleton axes are squeezed.

    Raises ``FileNotFoundError`` naming the path if it does not exist and ``ValueError`` naming
    the file if it is not a supported or readable image.
    """
    data, _ = _read_any(path, for_labels=False)
    return data


def write_image(path, image, *, rgb: bool | None = None) -> Path:
    """Write an image atomically; returns the path.

    TIFF (zlib-compressed) keeps any numeric dtype; ``(Y, X, 3)`` arrays are written as RGB,
    ``(Z, Y, X)`` as a stack. PNG/JPEG take ``uint8`` (or ``uint16`` grey PNG) 2D grey or RGB
    images; other dtypes raise ``ValueError`` (convert first, or use TIFF). ``rgb=None`` treats
    a 3D array whose last axis has length 3 as colour; pass ``rgb=False`` for such a stack.
    """
    path = Path(path)
    suffix = _check_writable_suffix(path, IMAGE_SUFFIXES)
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image.dtype.kind not in "uif":
        raise ValueError(f"cannot write image of dtype {image.dtype} to {path}")
    if image.size == 0:
        raise ValueError(f"cannot write an empty image (shape {image.shape}) to {path}")
    if rgb is None:
        rgb = image.ndim == 3 and image.shape[-1] == 3
    if rgb and (image.ndim < 3 or image.shape[-1] != 3):
        raise ValueError(f"rgb=True needs an array (..., Y, X, 3), got shape {image.shape}")
    image = np.ascontiguousarray(image)

    if suffix in TIFF_SUFFIXES:
        import tifffile

        def writer(tmp):
            tifffile.imwrite(
                tmp,
                image,
                photometric="rgb" if rgb else "minisblack",
                compression="zlib",
            )

        return atomic_write(path, writer)

    from PIL import Image

    if image.ndim != (3 if rgb else 2):
        raise ValueError(
            f"{suffix} files hold 2D grey or RGB images; got shape {image.shape} for {path} "
            "(use TIFF for stacks)"
        )
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16 and suffix == ".png" and not rgb:
        pass
    else:
        raise ValueError(
            f"{suffix} cannot store dtype {image.dtype} for {path}; use uint8 "
            "(or uint16 grey PNG), or write a TIFF"
        )
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[suffix]

    def writer(tmp):
        Image.fromarray(image).save(tmp, format=fmt)

    return atomic_write(path, writer)


# --------------------------------------------------------------------------------------------
# labels


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_colours(rgb: np.ndarray, undefined) -> np.ndarray:
    """Map each colour to an id: black -> 0, other colours -> 1..n in order of first
    appearance (raster order); the ``undefined`` colour -> -1."""
    if rgb.dtype.kind not in "ui" or rgb.max(initial=0) > 255:
        raise ValueError(f"colour-coded labels must be 8-bit RGB, got dtype {rgb.dtype}")
    packed = _pack_rgb(rgb)
    colours, first, inverse = np.unique(packed.ravel(), return_index=True, return_inverse=True)
    undefined_packed = None
    if undefined is not None:
        if np.ndim(undefined) == 0:
            undefined_packed = int(undefined)
        else:
            u = np.asarray(undefined).ravel()
            if u.size != 3:
                raise ValueError(f"undefined colour must be (r, g, b), got {undefined!r}")
            undefined_packed = int(_pack_rgb(u.reshape(1, 3))[0])
    ids = np.zeros(colours.size, np.int32)
    real = (colours != 0) & (colours != (undefined_packed if undefined_packed is not None else -1))
    order = np.argsort(first[real], kind="stable")
    real_idx = np.flatnonzero(real)[order]
    ids[real_idx] = np.arange(1, real_idx.size + 1, dtype=np.int32)
    if undefined_packed is not None:
        ids[colours == undefined_packed] = -1
    return ids[inverse.ravel()].reshape(packed.shape)


def _to_int32_labels(data: np.ndarray, path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.int32)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise ValueError(f"label image {path} holds non-integer values (dtype {data.dtype})")
    elif data.dtype.kind not in "ui":
        raise ValueError(f"label image {path} has unsupported dtype {data.dtype}")
    if data.size:
        lo, hi = data.min(), data.max()
        info = np.iinfo(np.int32)
        if hi > info.max or lo < info.min:
            raise ValueError(
                f"label image {path} holds values in [{lo}, {hi}], outside the int32 range"
            )
    return data.astype(np.int32)


def read_labels(path, undefined=None) -> np.ndarray:
    """Read a label image as ``int32`` (0 background, > 0 instance ids, -1 undefined).

    * Integer grey images (TIFF of any integer dtype, 8/16-bit PNG) are taken as ids.
    * Palette ("P" mode) PNGs, as CVPPP stores them: the palette *indices* are the ids.
    * RGB-coded images: each distinct colour becomes one id; black is background (0), other
      colours get ids 1..n in order of first appearance in raster order.

    ``undefined``: a stored value (or, for RGB-coded images, an ``(r, g, b)`` colour or a packed
    ``0xRRGGBB`` int) whose pixels become ``-1`` ("undefined", ignored by the loss).

    Raises ``FileNotFoundError`` naming the path if it does not exist and ``ValueError`` naming
    the file if it cannot be read as labels.
    """
    data, kind = _read_any(path, for_labels=True)
    if kind == "rgb":
        return _decode_colours(data, undefined)
    if undefined is not None and np.ndim(undefined) != 0:
        raise ValueError(
            f"undefined={undefined!r} is a colour but {path} is not an RGB-coded label image"
        )
    undefined_mask = None
    if undefined is not None:
        undefined_mask = data == undefined
    labels = _to_int32_labels(data, path)
    if undefined_mask is not None:
        labels[undefined_mask] = -1
    return labels


def write_labels(path, labels) -> Path:
    """Write a label image atomically; returns the path.

    TIFF (``.tif``/``.tiff``, zlib-compressed): ``uint16`` if all values lie in [0, 65535],
    else ``uint32`` if non-negative, else ``int32`` (so -1 "undefined" survives). 2D or 3D.
    PNG: 2D only, stored as 16-bit grey; values must lie in [0, 65535].
    Reading back with :func:`read_labels` gives the same ``int32`` array.
    """
    path = Path(path)
    suffix = _check_writable_suffix(path, TIFF_SUFFIXES + (".png",))
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"cannot write empty labels (shape {labels.shape}) to {path}")
    if labels.dtype.kind == "u":
        if int(labels.max()) > np.iinfo(np.uint32).max:
            raise ValueError(f"label values exceed the uint32 range for {path}")
    else:
        labels = _to_int32_labels(labels, path)
    lo, hi = int(labels.min()), int(labels.max())
    if suffix == ".png":
        if labels.ndim != 2:
            raise ValueError(f"PNG holds 2D labels; got shape {labels.shape} for {path}")
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"PNG labels must lie in [0, 65535], got [{lo}, {hi}] for {path}; use TIFF"
            )
        from PIL import Image

        out = np.ascontiguousarray(labels.astype(np.uint16))

        def writer(tmp):
            Image.fromarray(out).save(tmp, format="PNG")

        return atomic_write(path, writer)

    import tifffile

    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape} for {path}")
    if lo >= 0 and hi <= 65535:
        dtype = np.uint16
    elif lo >= 0 and hi <= np.iinfo(np.uint32).max:
        dtype = np.uint32
    else:
        dtype = np.int32
    out = np.ascontiguousarray(labels.astype(dtype))

    def writer(tmp):
        tifffile.imwrite(tmp, out, photometric="minisblack", compression="zlib")

    return atomic_write(path, writer)
