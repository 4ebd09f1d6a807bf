"""Large-image input and output: OME-Zarr (NGFF, zarr v3), TIFF read through a zarr store, and
label images written as NGFF labels with their physical scale.

Needs the ``large`` extra (zarr, dask, ome-zarr)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple


__all__ = ["open_image", "write_ome_zarr_labels", "is_zarr_path"]

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")


def is_zarr_path(path) -> bool:
    p = Path(path)
    return p.suffix.lower() in ZARR_SUFFIXES or (p.is_dir() and (p / "zarr.json").is_file())


def _ome(attrs: dict) -> dict:
    """NGFF metadata of a group: under "ome" in 0.5 (zarr v3), at the top level before."""
    return attrs.get("ome", attrs)


def open_image(path, chunks=None) -> Tuple["object", Optional[Tuple[float, ...]], Optional[Sequence[str]]]:
    """Open a large image lazily: ``(dask array, spacing or None, axis names or None)``.

    OME-Zarr: the full-resolution array of the first multiscale, with its scale; a plain zarr
    array is accepted too. TIFF: read through tifffile's zarr store (no full read), spacing from
    ImageJ/OME metadata when tifffile reports it."""
    import dask.array as da
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input: no such file or folder: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
        arr = node if isinstance(node, zarr.Array) else node[next(iter(sorted(node.array_keys())))]
        image = da.from_zarr(arr, chunks=chunks) if chunks else da.from_zarr(arr)
        return image, None, None
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # not a zarr store at all
        raise ValueError(f"input: {path} is not a zarr/OME-Zarr store or TIFF file ({exc})") from None
    if isinstance(node, zarr.Array):
        return da.from_zarr(node, chunks=chunks) if chunks else da.from_zarr(node), None, None
    meta = _ome(dict(node.attrs))
    multiscales = meta.get("multiscales")
    if not multiscales:
        raise ValueError(f"input: {path} is a zarr group without OME-Zarr 'multiscales' metadata")
    ms = multiscales[0]
    ds = ms["datasets"][0]
    arr = node[ds["path"]]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])] or None
    scale = None
    for t in ds.get("coordinateTransformations", []) + ms.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = tuple(float(s) for s in t["scale"]) if scale is None else tuple(
                a * float(b) for a, b in zip(scale, t["scale"]))
    image = da.from_zarr(arr, chunks=chunks) if chunks else da.from_zarr(arr)
    if axes is not None and len(axes) == image.ndim:
        # Keep the spatial axes (z, y, x) and at most one channel axis; drop singleton t/c axes.
        types = {a["name"]: a.get("type") for a in ms.get("axes", []) if isinstance(a, dict)}
        index = []
        for i, name in enumerate(axes):
            if types.get(name) == "time" or name == "t":
                if image.shape[i] != 1:
                    raise ValueError(f"input: {path} has {image.shape[i]} time points; give one time point")
                index.append(0)
            elif (types.get(name) == "channel" or name == "c") and image.shape[i] == 1:
                index.append(0)
            else:
                index.append(slice(None))
        keep = [i for i, ix in enumerate(index) if isinstance(ix, slice)]
        image = image[tuple(index)]
        axes = [axes[i] for i in keep]
        if scale is not None:
            scale = tuple(scale[i] for i in keep)
    spatial = None
    if scale is not None and axes is not None:
        spatial = tuple(s for s, a in zip(scale, axes) if a in ("z", "y", "x"))
    return image, spatial, axes


def write_ome_zarr_labels(path, labels, spacing: Sequence[float], name: str = "rdcnet", compute: bool = True):
    """Write ``labels`` (a dask or NumPy array, 2D or 3D) to an OME-Zarr at ``path`` (zarr v3,
    NGFF 0.5): a multiscale label image with one full-resolution level, physical scale
    ``spacing`` (micrometres) and NGFF ``image-label`` metadata. Returns the dask store task when
    ``compute`` is False."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscale_labels

    ndim = labels.ndim
    if ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D array, got shape {labels.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing: expected {ndim} positive numbers, got {spacing}")
    names = "zyx"[3 - ndim:]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    chunks = labels.chunksize if hasattr(labels, "chunksize") else None
    return write_multiscale_labels(
        [labels], root, name=name, fmt=FormatV05(), axes=[{"name": n, "type": "space"} for n in names],
        scale=dict(zip(names, spacing)), axes_units={n: "micrometer" for n in names},
        storage_options={"chunks": chunks} if chunks else None, compute=compute)
