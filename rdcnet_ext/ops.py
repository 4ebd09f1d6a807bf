"""Fast ops for RDCNet: post-processing of its outputs, on torch tensors (CPU or CUDA) or NumPy
arrays, and the fused shared stacked dilated convolution :func:`ssdc` (torch tensors, differentiable).

Every op validates its arguments (bad input raises ``TypeError``/``ValueError`` naming the
argument, what was expected and what was given), runs the native kernel on the input's device
(CUDA work on torch's current stream) and returns a tensor on that device, or a NumPy array when
the main input was a NumPy array. Semantics are defined by the references in
:mod:`rdcnet_ext.reference`; each op equals its reference exactly.

Images have ``ndim`` = 2 or 3 spatial axes. Embeddings are ``(ndim, *spatial)`` in physical
units (floating point; computed in float32), ``spacing`` is the physical pixel size per axis (a
number or ``ndim`` numbers from 1e-100 to 1e100; default 1). Spacings, distances and radii are
taken as the decimals they are written as (``0.1`` is 1/10) wherever a window or ball is derived
from them (:mod:`rdcnet_ext._geometry`).

Example::

    >>> import numpy as np
    >>> from rdcnet_ext import ops
    >>> emb = np.zeros((2, 64, 64), np.float32)
    >>> emb[0] = 32.0                                  # every pixel points at row 32,
    >>> emb[1, :, :32], emb[1, :, 32:] = 16.0, 48.0    # column 16 (left half) or 48 (right)
    >>> labels = ops.embeddings_to_labels(emb, np.ones((64, 64), bool), min_distance=5)
    >>> np.unique(labels).tolist()
    [1, 2]
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from . import _launch, _library
from ._launch import CudaNotBuiltError

__all__ = [
    "hough_votes",
    "hough_votes_block",
    "BlockVotes",
    "find_peaks",
    "assign_to_centres",
    "CentreIndex",
    "label_opening",
    "embeddings_to_labels",
    "ssdc",
    "CudaNotBuiltError",
]

Array = Union[torch.Tensor, np.ndarray]

_INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32)
_KERNEL_LABEL_DTYPES = (torch.int32, torch.int64)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}, on {x.device}"
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape}, dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def _as_tensor(x, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy). NumPy arrays become CPU tensors (a copy only if not contiguous)."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:  # e.g. big-endian '>f4' from some TIFF readers
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype.kind == "u" and x.dtype.itemsize > 1:  # torch lacks most ops on uint16/32/64
            if x.size and int(x.max()) > np.iinfo(np.int64).max:
                raise ValueError(f"{name}: values must fit in int64, got a maximum of {x.max()}")
            x = x.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(x)), True
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {_describe(x)}")


def _same_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on the same device as {first_name} ({first.device}), got {t.device}"
            )
    if first.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{first_name}: expected a CPU or CUDA tensor, got a tensor on {first.device}")


def _check_embeddings(embeddings: torch.Tensor) -> int:
    if not (embeddings.is_floating_point()):
        raise TypeError(f"embeddings: expected a floating-point tensor, got {_describe(embeddings)}")
    if embeddings.dim() not in (3, 4) or embeddings.shape[0] != embeddings.dim() - 1:
        raise ValueError(
            "embeddings: expected shape (ndim, *spatial) with ndim = 2 or 3 spatial axes, i.e. "
            f"(2, H, W) or (3, D, H, W), got {_describe(embeddings)}"
        )
    if any(n >= 2**31 for n in embeddings.shape[1:]):
        raise ValueError(f"embeddings: every spatial axis must be shorter than 2**31, got {_describe(embeddings)}")
    return embeddings.dim() - 1


def _check_mask(mask: torch.Tensor, shape, name: str = "mask") -> torch.Tensor:
    if mask.dtype != torch.bool and mask.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name}: expected a bool (or integer, nonzero = true) tensor, got {_describe(mask)}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected the image shape {tuple(shape)}, got {_describe(mask)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_spacing(spacing, ndim: int) -> list[float]:
    if spacing is None:
        return [1.0] * ndim
    if isinstance(spacing, (numbers.Real, torch.SymFloat)) and not isinstance(spacing, (bool, np.bool_)):
        values = [_to_float(spacing, "spacing", "positive values")] * ndim
    else:
        if isinstance(spacing, (torch.Tensor, np.ndarray)):
            spacing = spacing.tolist()
        if isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__iter__"):
            raise TypeError(f"spacing: expected a number or {ndim} numbers, got {_describe(spacing)}")
        items = list(spacing)
        if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (numbers.Real, torch.SymFloat, torch.SymInt))
               for s in items):
            raise TypeError(f"spacing: expected a number or {ndim} numbers, got {spacing!r}")
        values = [_to_float(s, "spacing", "positive values") for s in items]
        if len(values) != ndim:
            raise ValueError(f"spacing: expected {ndim} values (one per spatial axis), got {len(values)}: {spacing!r}")
    if not all(not _is_bad_float(s) and _MIN_SPACING <= s <= _MAX_SPACING for s in values):
        raise ValueError(f"spacing: expected positive values from 1e-100 to 1e100 (physical pixel sizes), got {values}")
    return values


# Any unit system's pixel sizes lie far inside this range; beyond it, squared physical distances
# (float64) would overflow or lose precision to underflow.
_MIN_SPACING, _MAX_SPACING = 1e-100, 1e100


def _is_bad_float(v, allow_inf: bool = False) -> bool:
    # Plain comparisons rather than math.isnan/isfinite: torch.compile traces them on symbolic
    # floats too (math.* on a SymFloat is a graph break).
    return v != v or (not allow_inf and (v == math.inf or v == -math.inf))


def _to_float(value, name: str, what: str):
    """float(value), or the symbolic value itself while tracing; a clear error for ints beyond
    float's range (float() raises OverflowError there)."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: expected {what}, got an integer beyond the floating-point range") from None


def _check_number(value, name: str, *, minimum: float, strict: bool, allow_inf: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"{name}: expected a number, got {_describe(value)}")
    v = _to_float(value, name, "a finite number")
    if _is_bad_float(v, allow_inf) or v < minimum or (strict and v == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return v


_INT64_MAX = 2**63 - 1


def _check_int(value, name: str) -> int:
    """A non-negative integer that fits the kernels' int64 (values that large are meaningless
    for every integer argument of the ops, so beyond it is an error rather than a clip)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_describe(value)}")
    value = int(value)
    if value < 0 or value > _INT64_MAX:
        raise ValueError(f"{name}: expected an integer from 0 to 2**63 - 1, got {value}")
    return value


def _embeddings_and_mask(embeddings, mask):
    emb, was_numpy = _as_tensor(embeddings, "embeddings")
    mask, _ = _as_tensor(mask, "mask")
    ndim = _check_embeddings(emb)
    mask = _check_mask(mask, emb.shape[1:])
    _same_device(embeddings=emb, mask=mask)
    return emb.to(torch.float32).contiguous(), mask.contiguous(), ndim, was_numpy


def _out(t: torch.Tensor, as_numpy: bool):
    return t.numpy() if as_numpy else t


def hough_votes(embeddings: Array, mask: Array, spacing: Optional[Sequence[float]] = None) -> Array:
    """Hough vote histogram (int32, the image's shape).

    Each pixel with ``mask`` true votes for the pixel ``round(e_a / spacing_a)`` (round half to
    even) its embedding points at; votes outside the image and non-finite embeddings are dropped.
    """
    emb, mask, ndim, was_numpy = _embeddings_and_mask(embeddings, mask)
    spacing = _check_spacing(spacing, ndim)
    return _out(_library.call("hough_votes", emb, mask, spacing), was_numpy)


class BlockVotes(NamedTuple):
    """Result of :func:`hough_votes_block`."""

    votes: Optional[Array]
    """int32, the box's shape: the votes landing in the box (None with ``dense=False``)."""
    outside_bins: Array
    """int64 ``(M,)``: row-major flat indices into the larger image of the other bins voted for, ascending."""
    outside_counts: Array
    """int64 ``(M,)``: the votes each of those bins received."""


def hough_votes_block(embeddings: Array, mask: Array, spacing: Optional[Sequence[float]] = None,
                      shape: Optional[Sequence[int]] = None, origin: Optional[Sequence[int]] = None,
                      box_shape: Optional[Sequence[int]] = None, dense: bool = True) -> BlockVotes:
    """:func:`hough_votes` of one block of a larger image, for chunked processing.

    ``embeddings`` and ``mask`` are the pixels of any block of an image of ``shape`` (their
    embeddings are absolute, so where the block lies does not matter). Pixels vote exactly as in
    :func:`hough_votes` on the whole image, for bins of the whole image: the votes landing in the
    box of ``box_shape`` (default: the block's shape) whose first pixel is ``origin`` (default 0)
    come back as a dense histogram of the box, the others as sparse ``(outside_bins,
    outside_counts)``. With the box where the block lies, summing every block's votes, each
    routed to its place, gives :func:`hough_votes` of the whole image. ``shape`` defaults to
    ``origin + box_shape``; the box must lie in the image (it may be empty). ``dense=False``
    skips the box's histogram (``votes`` is None): only the votes leaving the box are returned,
    as a routing pass needs. On CUDA tensors this runs as torch operations (same float64
    rounding), not a kernel.
    """
    emb, mask, ndim, was_numpy = _embeddings_and_mask(embeddings, mask)
    spacing = _check_spacing(spacing, ndim)
    origin = [0] * ndim if origin is None else _check_origin(origin, ndim)
    box_shape = list(mask.shape) if box_shape is None else _check_ints(box_shape, ndim, "box_shape", positive=False)
    if shape is None:
        shape = [o + b for o, b in zip(origin, box_shape)]
        if not all(shape):
            raise ValueError(f"shape: needed when the box is empty at its origin, got box_shape {tuple(box_shape)}")
    else:
        shape = _check_ints(shape, ndim)
        if any(o + b > n for o, b, n in zip(origin, box_shape, shape)):
            raise ValueError(f"origin: the box of shape {tuple(box_shape)} at {tuple(origin)} does not fit in the "
                             f"image of shape {tuple(shape)}")
    if any(n >= 2**31 for n in shape):
        raise ValueError(f"shape: expected axes shorter than 2**31 pixels, got {tuple(shape)}")
    if not isinstance(dense, (bool, np.bool_)):
        raise TypeError(f"dense: expected True or False, got {_describe(dense)}")
    votes, bins, counts = _launch.hough_votes_block(emb, mask, spacing, shape, origin, box_shape, bool(dense))
    return BlockVotes(None if votes is None else _out(votes, was_numpy), _out(bins, was_numpy),
                      _out(counts, was_numpy))


def _check_ints(values, ndim: int, name: str = "shape", positive: bool = True) -> list:
    """``values``: ``ndim`` positive (or non-negative) Python ints, from a sequence or a 1-D
    integer array."""
    what = f"{ndim} {'positive' if positive else 'non-negative'} ints"
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim != 1:
            raise ValueError(f"{name}: expected {what}, got {_describe(values)}")
        values = values.tolist()
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of {what}, got {_describe(values)}") from None
    if len(items) != ndim or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                     and (v > 0 if positive else v >= 0) for v in items):
        raise ValueError(f"{name}: expected {what}, got {values!r}")
    return [int(v) for v in items]


def _check_votes(votes) -> tuple[torch.Tensor, bool]:
    votes, was_numpy = _as_tensor(votes, "votes")
    if votes.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"votes: expected an integer tensor (e.g. from hough_votes), got {_describe(votes)}")
    if votes.dim() not in (2, 3):
        raise ValueError(f"votes: expected a 2D or 3D image, got {_describe(votes)}")
    _same_device(votes=votes)
    if votes.dtype not in (torch.int32, torch.int64):
        votes = votes.to(torch.int32)
    return votes.contiguous(), was_numpy


def find_peaks(
    votes: Array,
    min_distance: float,
    min_votes: int = 1,
    spacing: Optional[Sequence[float]] = None,
    smooth_radius: int = 0,
) -> Array:
    """Centres of a vote histogram: int64 ``(K, ndim)`` pixel indices in row-major order.

    A pixel is a centre if its score (votes summed over a box of ``+-smooth_radius`` pixels) is at
    least ``min_votes`` and strictly the highest within ``floor(min_distance / spacing_a)``
    pixels per axis (equal scores: the first in row-major order wins). Centres are therefore more
    than one window apart. The window is computed exactly on the decimal values (0.3 / 0.1 is 3);
    windows and boxes wider than the image are clipped to it, which changes nothing.
    ``min_votes`` and ``smooth_radius`` must fit in int64.
    """
    votes, was_numpy = _check_votes(votes)
    min_distance = _check_number(min_distance, "min_distance", minimum=0.0, strict=False)
    min_votes = _check_int(min_votes, "min_votes")
    smooth_radius = _check_int(smooth_radius, "smooth_radius")
    spacing = _check_spacing(spacing, votes.dim())
    return _out(_library.call("find_peaks", votes, min_distance, min_votes, spacing, smooth_radius), was_numpy)


def _check_centres(centres, ndim: int, device) -> torch.Tensor:
    centres, _ = _as_tensor(centres, "centres")
    if centres.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"centres: expected integer pixel indices, got {_describe(centres)}")
    if centres.dim() != 2 or centres.shape[1] != ndim:
        raise ValueError(f"centres: expected shape (K, {ndim}), got {_describe(centres)}")
    if centres.device != device:
        raise ValueError(f"centres: expected a tensor on the same device as embeddings ({device}), got {centres.device}")
    return centres.to(torch.int64).contiguous()


def _check_max_distance(max_distance) -> Optional[float]:
    if max_distance is None:
        return None
    return _check_number(max_distance, "max_distance", minimum=0.0, strict=False, allow_inf=True)


class CentreIndex:
    """Centres of one image prepared once for :func:`assign_to_centres` on many blocks of it.

    ``centres`` are int ``(K, ndim)`` pixel indices inside an image of ``shape`` with pixel size
    ``spacing``. Building the index does the per-call set-up of :func:`assign_to_centres` (the
    centre grid over the image and each cell's candidate centres) once; passing the index as
    ``centres`` then labels any block of the image (``embeddings`` in the image's physical frame)
    exactly as the whole-image call labels those pixels, with the same ``k + 1`` labels. The
    index lives on the centres' device; :meth:`to` moves it.

    Example::

        >>> import numpy as np
        >>> from rdcnet_ext import ops
        >>> index = ops.CentreIndex(np.array([[10, 10], [10, 50]]), shape=(64, 64))
        >>> emb = np.full((2, 8, 8), 10.0, np.float32); emb[1] = 45.0   # a block pointing near (10, 45)
        >>> np.unique(ops.assign_to_centres(emb, np.ones((8, 8), bool), index)).tolist()
        [2]
    """

    def __init__(self, centres: Array, shape: Sequence[int], spacing: Optional[Sequence[float]] = None):
        t, _ = _as_tensor(centres, "centres")
        if t.dim() != 2 or t.shape[1] not in (2, 3):
            raise ValueError(f"centres: expected shape (K, 2) or (K, 3), got {_describe(t)}")
        ndim = int(t.shape[1])
        self.shape = tuple(_check_ints(shape, ndim))
        t = _check_centres(t, ndim, t.device)
        self.spacing = tuple(_check_spacing(spacing, ndim))
        _launch._check_centre_count(t)
        if t.shape[0]:
            _launch._check_centres_inside(t, self.shape)
        self.centres = t
        self._prepared = _launch.prepare_centres(t, self.shape, self.spacing) if t.shape[0] else None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def device(self) -> torch.device:
        return self.centres.device

    def __len__(self) -> int:
        return int(self.centres.shape[0])

    def __repr__(self) -> str:
        return f"CentreIndex({len(self)} centres, shape={self.shape}, spacing={self.spacing}, device={self.device})"

    def to(self, device) -> "CentreIndex":
        """The same index on ``device``."""
        out = CentreIndex.__new__(CentreIndex)
        out.shape, out.spacing, out.centres = self.shape, self.spacing, self.centres.to(device)
        out._prepared = None if self._prepared is None else self._prepared.to(device)
        return out


def _assign_with_index(emb, mask, index: CentreIndex, spacing, max_distance, origin):
    ndim = emb.shape[0]
    if index.ndim != ndim:
        raise ValueError(f"centres: a CentreIndex of a {index.ndim}D image, but the embeddings are {ndim}D")
    if spacing is not None and tuple(_check_spacing(spacing, ndim)) != index.spacing:
        raise ValueError(f"spacing: the CentreIndex was built with spacing {index.spacing}, got {spacing!r} "
                         "(leave spacing out to use the index's)")
    if index.device != emb.device:
        raise ValueError(f"centres: the CentreIndex is on {index.device} but the embeddings are on {emb.device} "
                         "(move it with index.to(device))")
    if origin is not None:
        origin = _check_origin(origin, ndim)
        if any(o + n > m for o, n, m in zip(origin, mask.shape, index.shape)):
            raise ValueError(f"origin: the block of shape {tuple(mask.shape)} at {tuple(origin)} does not fit in the "
                             f"CentreIndex's image of shape {index.shape}")
    if index._prepared is None:
        return torch.zeros(mask.shape, dtype=torch.int32, device=mask.device)
    return _launch.assign_prepared(emb, mask, index._prepared, max_distance)


def assign_to_centres(
    embeddings: Array,
    mask: Array,
    centres: Union[Array, CentreIndex],
    spacing: Optional[Sequence[float]] = None,
    max_distance: Optional[float] = None,
    origin: Optional[Sequence[int]] = None,
) -> Array:
    """Instance labels (int32, the image's shape): each masked pixel gets ``k + 1`` for the centre
    ``k`` nearest to its embedding (physical position ``centres[k] * spacing``, Euclidean, ties to
    the lowest ``k``); 0 for background, non-finite embeddings, no centres, or a nearest centre
    farther than ``max_distance``.

    Without ``origin`` the centres must lie inside the image. With ``origin`` (``ndim``
    non-negative ints) the arrays are the block of a larger image whose first pixel is the larger
    image's pixel ``origin``, and ``centres`` are pixel indices (>= 0) of the larger image, inside
    the block or not; the result is the whole-image result restricted to the block. (A pixel's
    label depends only on its own embedding, which is in the larger image's physical frame: the
    origin only places the kernel's search grid, and lifts the inside-the-image requirement.)

    ``centres`` may also be a :class:`CentreIndex` of the larger image, built once for all its
    blocks (then ``spacing`` defaults to the index's, and ``origin`` is optional and only checked).
    """
    emb, mask, ndim, was_numpy = _embeddings_and_mask(embeddings, mask)
    max_distance = _check_max_distance(max_distance)
    if isinstance(centres, CentreIndex):
        return _out(_assign_with_index(emb, mask, centres, spacing, max_distance, origin), was_numpy)
    centres = _check_centres(centres, ndim, emb.device)
    spacing = _check_spacing(spacing, ndim)
    if origin is None:
        return _out(_library.call("assign_to_centres", emb, mask, centres, spacing, max_distance), was_numpy)
    origin = _check_origin(origin, ndim)
    return _out(_library.call("assign_to_centres", emb, mask, centres, spacing, max_distance, origin), was_numpy)


def _check_origin(origin, ndim: int) -> list:
    """``origin``: ``ndim`` non-negative Python ints (a sequence or a 1-D integer array)."""
    return _check_ints(origin, ndim, "origin", positive=False)


def label_opening(labels: Array, radius: float, spacing: Optional[Sequence[float]] = None) -> Array:
    """Label-wise morphological opening by the ball of physical ``radius`` (same dtype out).

    A pixel keeps its label iff it lies in the opening of its label's set; pixels outside the
    image count as the same label, so objects touching the border are not shaved. Labels are
    never merged, grown or moved; removed pixels become 0. The ball holds the offsets ``o`` with
    ``sum_a (o_a * spacing_a)**2 <= radius**2``, decided exactly on the decimal values (surface
    points included). A ball reaching beyond the image gives the exact result too, but one that
    would cost more than a ball filling the image (or 2**30 pixel operations) raises
    ``ValueError``: it cannot be clipped to the image without changing the result.
    """
    was_numpy = isinstance(labels, np.ndarray)
    numpy_dtype = labels.dtype if was_numpy else None
    labels, _ = _as_tensor(labels, "labels")
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"labels: expected an integer label image, got {_describe(labels)}")
    if labels.dim() not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D image, got {_describe(labels)}")
    _same_device(labels=labels)
    radius = _check_number(radius, "radius", minimum=0.0, strict=True)
    spacing = _check_spacing(spacing, labels.dim())
    dtype = labels.dtype
    work = labels if dtype in _KERNEL_LABEL_DTYPES else labels.to(torch.int64)
    out = _library.call("label_opening", work.contiguous(), radius, spacing)
    if was_numpy:
        return out.numpy().astype(numpy_dtype, copy=False)
    return out.to(dtype)


def embeddings_to_labels(
    embeddings: Array,
    mask: Array,
    min_distance: float,
    spacing: Optional[Sequence[float]] = None,
    min_votes: int = 1,
    smooth_radius: int = 0,
    max_distance: Optional[float] = None,
    opening_radius: Optional[float] = None,
) -> Array:
    """Embeddings to instance labels (int32) in one call: :func:`hough_votes`, :func:`find_peaks`
    (window ``min_distance``, physical units), :func:`assign_to_centres` and, if
    ``opening_radius`` is given, :func:`label_opening`.
    """
    emb, mask, ndim, was_numpy = _embeddings_and_mask(embeddings, mask)
    spacing = _check_spacing(spacing, ndim)
    min_distance = _check_number(min_distance, "min_distance", minimum=0.0, strict=False)
    min_votes = _check_int(min_votes, "min_votes")
    smooth_radius = _check_int(smooth_radius, "smooth_radius")
    max_distance = _check_max_distance(max_distance)
    if opening_radius is not None:
        opening_radius = _check_number(opening_radius, "opening_radius", minimum=0.0, strict=True)
    labels = _library.call("embeddings_to_labels", 
        emb, mask, min_distance, spacing, min_votes, smooth_radius, max_distance, opening_radius
    )
    return _out(labels, was_numpy)



# ---- sSDC ------------------------------------------------------------------------------------------

_SSDC_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_SSDC_MAX_DILATIONS = 16
_MAX_DILATION = 2**31 - 1  # beyond any image axis (the kernels read zeros past the border)


def _check_dilations(dilations) -> list[int]:
    if isinstance(dilations, numbers.Integral) and not isinstance(dilations, bool):
        dilations = [dilations]
    elif isinstance(dilations, (torch.Tensor, np.ndarray)):
        dilations = dilations.tolist()
    if isinstance(dilations, (str, bytes)) or not hasattr(dilations, "__iter__"):
        raise TypeError(f"dilations: expected a positive integer or a sequence of them, got {_describe(dilations)}")
    values = list(dilations)
    if not values:
        raise ValueError("dilations: expected at least one dilation, got an empty sequence")
    if len(values) > _SSDC_MAX_DILATIONS:
        raise ValueError(f"dilations: expected at most {_SSDC_MAX_DILATIONS} dilations, got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"dilations: expected integers, got {values!r}")
        if not 1 <= v <= _MAX_DILATION:
            raise ValueError(f"dilations: expected integers from 1 to 2**31 - 1, got {values!r}")
    return [v if isinstance(v, torch.SymInt) else int(v) for v in values]


def _check_ssdc_tensor(t, name: str, shape: tuple, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(t)}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {_describe(t)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {_describe(t)}")
    if t.device != x.device:
        raise ValueError(f"{name}: expected a tensor on the same device as x ({x.device}), got {t.device}")
    return t.contiguous()


def ssdc(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    reduce_weight: torch.Tensor,
    reduce_bias: Optional[torch.Tensor],
    dilations: Union[int, Sequence[int]],
    groups: int,
    negative_slope: float = 0.3,
) -> torch.Tensor:
    """Fused shared stacked dilated convolution (RDCNet's sSDC), differentiable in every tensor.

    For each of the ``groups`` groups of ``C`` channels::

        y = reduce_bias + sum_d P_d @ LeakyReLU(conv3x3(x; weight, bias, dilation=d, padding=d))

    with one 3x3 (3D: 3x3x3) kernel shared by all dilations and ``P_d`` the slice of the grouped
    1x1 reduction acting on dilation ``d``'s outputs. Layouts are those of torch's grouped convs:
    ``x (B, G*C, *S)`` with 2 or 3 spatial axes, ``weight (G*C, C, 3, 3[, 3])``, ``bias (G*C)``,
    ``reduce_weight (G*C, D*C, 1, 1[, 1])`` whose input channels per group are ordered
    dilation-major, ``reduce_bias (G*C)`` (``None`` biases are zero). The output has ``x``'s shape.
    Equals :func:`rdcnet_ext.reference.ssdc` (the unfused chain) to rounding, but never stores the
    ``D`` per-dilation activations, in forward or backward (they are recomputed).

    CUDA kernels: the environment variable ``RDCNET_EXT_SSDC_CUDA_KERNEL`` (read on every call,
    forward and backward) picks ``"simt"`` (the default: CUDA cores, every dtype, exact float32)
    or ``"tensorcore"`` (opt-in, not yet verified on a GPU: implicit GEMM on tensor cores with
    float32 accumulation, for float16/bfloat16, and for float32 as TF32 only while
    ``torch.backends.cudnn.allow_tf32`` is true; channels per group a multiple of 16, at most 256,
    on compute capability 8.0+). A case the tensor-core kernel does not support (float64, float32
    without TF32, other channel counts, older GPUs, too little shared memory) silently runs the
    simt kernel; any other value of the variable raises ``ValueError``. Parameter gradients are
    summed in float64 by both kernels.

    dtypes: kernels for float32 and float64 on CPU, and bfloat16 on CPUs with AVX512-BF16
    (``vdpbf16ps``: bfloat16 operands, float32 accumulation; the per-dilation activations are rounded
    to bfloat16 before the 1x1 reduction, as a bfloat16 chain stores them); float32, float64,
    float16, bfloat16 on CUDA (float32 accumulation). float16, and bfloat16 on other CPUs, are
    computed in float32 and returned in the input dtype. Under ``torch.autocast`` every tensor is first cast to the autocast dtype of the
    input's device (float64 inputs are left alone, as autocast does), and the result has that dtype.
    Registered as ``torch.ops.rdcnet_ext.ssdc`` with autograd and a fake kernel, so it trains and
    compiles (``torch.compile(fullgraph=True)``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {_describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {_describe(x)}")
    if x.dtype != torch.float64 and x.device.type in _SSDC_DTYPES and torch.is_autocast_enabled(x.device.type):
        # Autocast does not reach inside a custom op: cast here (differentiably) so it sees one dtype.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias, reduce_weight, reduce_bias = (
            t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for t in (x, weight, bias, reduce_weight, reduce_bias))
    if x.dim() not in (4, 5):
        raise ValueError(f"x: expected shape (B, G*C, H, W) or (B, G*C, D, H, W), got {_describe(x)}")
    ndim = x.dim() - 2
    if isinstance(groups, bool) or not isinstance(groups, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"groups: expected an integer, got {_describe(groups)}")
    if groups < 1:
        raise ValueError(f"groups: expected an integer >= 1, got {groups}")
    if groups > max(x.shape[1], 1):
        raise ValueError(f"groups: expected at most the number of channels of x ({x.shape[1]}), got {groups}")
    if x.shape[1] == 0 or x.shape[1] % groups != 0:
        raise ValueError(f"x: expected a positive number of channels divisible by groups ({groups}), got {_describe(x)}")
    if any(n >= 2**31 for n in x.shape[2:]):
        raise ValueError(f"x: every spatial axis must be shorter than 2**31, got {_describe(x)}")
    channels = x.shape[1] // groups
    dilations = _check_dilations(dilations)
    negative_slope = _check_slope(negative_slope)
    if x.device.type not in _SSDC_DTYPES:
        raise ValueError(f"x: expected a CPU or CUDA tensor, got a tensor on {x.device}")
    native = _SSDC_DTYPES[x.device.type]
    if x.device.type == "cpu" and _launch.SSDC_CPU_BF16:
        native = native + (torch.bfloat16,)  # AVX512-BF16: a bfloat16 kernel (float32 accumulation)
    if x.dtype not in native and x.dtype not in (torch.float16, torch.bfloat16):
        allowed = ", ".join(str(d) for d in _SSDC_DTYPES[x.device.type])
        raise TypeError(f"x: expected one of {allowed} (or float16/bfloat16, computed in float32) on "
                        f"{x.device.type}, got {_describe(x)}")
    gc = x.shape[1]
    weight = _check_ssdc_tensor(weight, "weight", (gc, channels) + (3,) * ndim, x)
    reduce_weight = _check_ssdc_tensor(
        reduce_weight, "reduce_weight", (gc, len(dilations) * channels) + (1,) * ndim, x
    )
    bias = x.new_zeros(gc) if bias is None else _check_ssdc_tensor(bias, "bias", (gc,), x)
    reduce_bias = x.new_zeros(gc) if reduce_bias is None else _check_ssdc_tensor(reduce_bias, "reduce_bias", (gc,), x)
    if x.dtype not in native:
        # No kernel for this half precision on this device: compute in float32, answer in its dtype.
        y = _library.ssdc(x.float().contiguous(), weight.float(), bias.float(), reduce_weight.float(),
                          reduce_bias.float(), dilations, int(groups), negative_slope)
        return y.to(x.dtype)
    return _library.ssdc(
        x.contiguous(), weight, bias, reduce_weight, reduce_bias, dilations, int(groups), negative_slope
    )


def _check_slope(value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"negative_slope: expected a number, got {_describe(value)}")
    v = _to_float(value, "negative_slope", "a finite number")
    if _is_bad_float(v):
        raise ValueError(f"negative_slope: expected a finite number, got {value!r}")
    return v
