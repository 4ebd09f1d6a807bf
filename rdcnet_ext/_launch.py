"""Kernel launchers: allocate outputs with torch and hand raw pointers to ``rdcnet_ext._C``.

Inputs reaching this module are validated, contiguous torch tensors of the kernels' dtypes
(``rdcnet_ext.ops`` sees to that); this module is the only caller of the native module. CPU kernels
use ``torch.get_num_threads()`` threads; CUDA kernels run on torch's current stream of the input's
device and never synchronise, except where a size must be known on the host (peak count,
candidate-list length) or a value must be checked (centres in range).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional, Sequence

import torch

try:
    from . import _C
except ImportError as err:  # pragma: no cover - depends on how Python was started
    import os as _os

    raise ImportError(
        f"rdcnet_ext's compiled module _C was not found next to {_os.path.dirname(__file__)}. "
        "Install the package (`pip install .`); if it is installed, this is the source tree "
        "shadowing it (e.g. `python -m pytest` run from the repository root puts the root on "
        "sys.path): run `pytest` instead, or from another directory."
    ) from err
from ._geometry import box_radius, check_ball_size, ellipsoid_offsets, peak_window

HAS_CUDA: bool = bool(_C.has_cuda)


class CudaNotBuiltError(ValueError):
    """A CUDA tensor reached an extension that was built without CUDA kernels."""


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _cuda(t: torch.Tensor) -> tuple[int, int]:
    """(device index, current stream handle) for a CUDA tensor."""
    if not HAS_CUDA:
        raise CudaNotBuiltError(
            "rdcnet_ext was built without CUDA kernels but was given a CUDA tensor; reinstall on a "
            "machine with nvcc (and without RDCNET_EXT_CUDA=0), or move the input to the CPU"
        )
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _threads() -> int:
    return max(1, torch.get_num_threads())


def hough_votes(embeddings: torch.Tensor, mask: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    shape = list(mask.shape)
    votes = torch.zeros(shape, dtype=torch.int32, device=mask.device)
    args = (shape, list(spacing), _ptr(embeddings), _ptr(mask), _ptr(votes))
    if mask.device.type == "cuda":
        _C.hough_votes_cuda(*args, *_cuda(mask))
    else:
        _C.hough_votes_cpu(*args, _threads())
    return votes


def hough_votes_block(embeddings: torch.Tensor, mask: torch.Tensor, spacing: Sequence[float],
                      shape: Sequence[int], origin: Sequence[int], box_shape: Sequence[int], dense: bool = True):
    """(votes in the box (int32; None unless ``dense``), outside bins (int64), their counts (int64))."""
    votes = torch.zeros(list(box_shape) if dense else [0] * len(box_shape), dtype=torch.int32, device=mask.device)
    if mask.device.type == "cuda":
        bins, counts = _hough_votes_block_torch(embeddings, mask, spacing, shape, origin, votes, list(box_shape))
    else:
        bins, counts = _C.hough_votes_block_cpu(list(shape), mask.numel(), list(box_shape), list(origin),
                                                list(spacing), _ptr(embeddings), _ptr(mask),
                                                _ptr(votes) if dense else 0, _threads())
        bins, counts = torch.from_numpy(bins), torch.from_numpy(counts)
    return (votes if dense else None), bins, counts


def _hough_votes_block_torch(embeddings, mask, spacing, shape, origin, votes, box_shape=None):
    """The block votes in torch operations (CUDA tensors): the same float64 quotient, rounded half
    to even, as the CPU kernel; adds to ``votes`` the votes in the box at ``origin`` (of
    ``box_shape``, default the shape of ``votes``; an empty ``votes``: dropped) and returns the rest."""
    box_shape = list(votes.shape) if box_shape is None else list(box_shape)
    ndim = len(shape)
    dev = embeddings.device
    e = embeddings.reshape(ndim, -1).to(torch.float64)
    usable = mask.reshape(-1).bool() & torch.isfinite(e).all(dim=0)
    q = torch.round(e[:, usable] / torch.tensor(list(spacing), dtype=torch.float64, device=dev)[:, None])
    size = torch.tensor(list(shape), dtype=torch.float64, device=dev)[:, None]
    q = q[:, ((q >= 0) & (q <= size - 1)).all(dim=0)].to(torch.int64)
    local = q - torch.tensor(list(origin), dtype=torch.int64, device=dev)[:, None]
    block = torch.tensor(box_shape, dtype=torch.int64, device=dev)[:, None]
    inside = ((local >= 0) & (local < block)).all(dim=0)
    flat_local = sum(local[a, inside] * st for a, st in enumerate(_strides(box_shape).tolist()))
    if votes.numel():
        votes.view(-1).add_(torch.bincount(flat_local.reshape(-1), minlength=votes.numel()).to(torch.int32))
    flat = sum(q[a, ~inside] * st for a, st in enumerate(_strides(shape).tolist()))
    bins, counts = torch.unique(flat.reshape(-1), sorted=True, return_counts=True)
    return bins, counts


def _score(votes: torch.Tensor, smooth_radius: int) -> torch.Tensor:
    """Box-smoothed votes (int64), or the votes themselves when there is no smoothing."""
    if smooth_radius == 0:
        return votes
    out = torch.empty(votes.shape, dtype=torch.int64, device=votes.device)
    tmp = torch.empty_like(out)
    args = (list(votes.shape), smooth_radius, _ptr(votes), votes.dtype == torch.int64, _ptr(out), _ptr(tmp))
    if votes.device.type == "cuda":
        _C.box_sum_cuda(*args, *_cuda(votes))
    else:
        _C.box_sum_cpu(*args, _threads())
    return out


def find_peaks(
    votes: torch.Tensor, min_distance: float, min_votes: int, spacing: Sequence[float], smooth_radius: int
) -> torch.Tensor:
    shape = list(votes.shape)
    ndim = len(shape)
    if votes.numel() == 0:
        return torch.empty((0, ndim), dtype=torch.int64, device=votes.device)
    score = _score(votes, box_radius(smooth_radius, shape))
    args = (shape, peak_window(min_distance, spacing, shape), int(min_votes), _ptr(score), score.dtype == torch.int64)
    if votes.device.type == "cuda":
        flags = torch.empty(shape, dtype=torch.uint8, device=votes.device)
        _C.find_peaks_cuda(*args, _ptr(flags), *_cuda(votes))
        flat = torch.nonzero(flags.reshape(-1)).reshape(-1)
    else:
        flat = torch.from_numpy(_C.find_peaks_cpu(*args, _threads()))
    return unravel(flat, shape)


def unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Row-major flat indices -> (K, ndim) int64 coordinates."""
    coords = []
    for n in reversed(shape):
        coords.append(flat % n)
        flat = flat // n
    return torch.stack(coords[::-1], dim=1) if coords else flat.reshape(-1, 0)


CELLS_PER_CENTRE = 8


def _centre_grid(centres: torch.Tensor, shape: Sequence[int], spacing: Sequence[float],
                 origin: Optional[Sequence[int]] = None):
    """Uniform grid over a physical box holding every centre, with the centres bucketed per cell
    (CSR): the image's box, or for a block at ``origin`` of a larger image the bounding box of the
    block and the centres (pixels pointing elsewhere take the kernel's exact ring search).

    About eight cells per centre, cubic in physical units: most cells then lie inside one centre's
    Voronoi region and have a single candidate.
    """
    ndim = len(shape)
    k = centres.shape[0]
    first, last = [0] * ndim, [n - 1 for n in shape]  # the grid's pixel range per axis
    if origin is not None:
        low, high = centres.amin(dim=0).tolist(), centres.amax(dim=0).tolist()
        first = [min(o, c) for o, c in zip(origin, low)]
        last = [max(o + n - 1, c) for o, n, c in zip(origin, shape, high)]
    pixels = [b - a + 1 for a, b in zip(first, last)]
    lo = [a * s for a, s in zip(first, spacing)]
    extent = [(n - 1) * s for n, s in zip(pixels, spacing)]
    spread = [a for a in range(ndim) if extent[a] > 0]
    cells, cell = [1] * ndim, [1.0] * ndim
    if spread:
        target = min(max(CELLS_PER_CENTRE * k, 1), 1 << 22)
        # (volume / target) ** (1 / k) in logs: the volume itself can overflow or underflow.
        log_side = (sum(math.log(extent[a]) for a in spread) - math.log(target)) / len(spread)
        for a in spread:
            ratio = math.exp(min(math.log(extent[a]) - log_side, 700.0))
            cells[a] = int(min(max(math.ceil(ratio), 1), pixels[a]))
            cell[a] = extent[a] / cells[a]
    device = centres.device
    s = torch.tensor(list(spacing), dtype=torch.float64, device=device)
    # Shifted in integers first, so that a whole image (first == 0) buckets exactly as before.
    shifted = centres - torch.tensor(first, dtype=torch.int64, device=device)
    bucket = torch.floor(shifted.to(torch.float64) * s / torch.tensor(cell, dtype=torch.float64, device=device))
    bucket = torch.minimum(bucket.clamp_min(0), torch.tensor(cells, dtype=torch.float64, device=device) - 1).long()
    flat = torch.zeros(k, dtype=torch.int64, device=device)
    for a in range(ndim):
        flat = flat * cells[a] + bucket[:, a]
    n_cells = math.prod(cells)
    cell_start = torch.zeros(n_cells + 1, dtype=torch.int32, device=device)
    cell_start[1:] = torch.cumsum(torch.bincount(flat, minlength=n_cells), 0).to(torch.int32)
    cell_items = torch.argsort(flat, stable=True).to(torch.int32)
    tol = 1e-6 * max(cell)
    return cells, cell, lo, cell_start, cell_items, tol


def assign_to_centres(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    centres: torch.Tensor,
    spacing: Sequence[float],
    max_distance: Optional[float],
    origin: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    shape = list(mask.shape)
    _check_centre_count(centres)
    if centres.shape[0] and origin is not None:
        negative = (centres < 0).any(dim=1)
        if bool(negative.any()):
            bad = centres[negative][0].tolist()
            raise ValueError(f"centres: with an origin, centres are pixel indices of the larger image (>= 0), got {bad}")
    elif centres.shape[0]:
        _check_centres_inside(centres, shape)
    if centres.shape[0] == 0 or mask.numel() == 0:
        return torch.zeros(shape, dtype=torch.int32, device=mask.device)
    return assign_prepared(embeddings, mask, prepare_centres(centres, shape, spacing, origin), max_distance)


def _check_centre_count(centres: torch.Tensor) -> None:
    if centres.shape[0] >= 2**31 - 1:
        raise ValueError(f"centres: at most {2**31 - 2} centres are supported, got {centres.shape[0]}")


def _check_centres_inside(centres: torch.Tensor, shape: Sequence[int]) -> None:
    upper = torch.tensor(list(shape), device=centres.device)
    outside = ((centres < 0) | (centres >= upper)).any(dim=1)
    if bool(outside.any()):
        bad = centres[outside][0].tolist()
        raise ValueError(f"centres: every centre must lie inside the image of shape {tuple(shape)}, got {bad}")


class PreparedCentres:
    """The centre grid and per-cell candidate lists of :func:`assign_to_centres` (CSR int32
    tensors on the centres' device), built once and usable for any block whose embeddings are in
    the same physical frame: the kernel only looks up positions, never the pixel grid."""

    def __init__(self, centres, spacing, cells, cell, lo, cell_start, cell_items, tol, cand_start, cand_items):
        self.centres, self.spacing = centres, list(spacing)
        self.cells, self.cell, self.lo, self.tol = cells, cell, lo, tol
        self.cell_start, self.cell_items = cell_start, cell_items
        self.cand_start, self.cand_items = cand_start, cand_items

    def to(self, device) -> "PreparedCentres":
        t = {k: getattr(self, k).to(device) for k in ("centres", "cell_start", "cell_items", "cand_start", "cand_items")}
        return PreparedCentres(t["centres"], self.spacing, self.cells, self.cell, self.lo, t["cell_start"],
                               t["cell_items"], self.tol, t["cand_start"], t["cand_items"])


def prepare_centres(centres: torch.Tensor, shape: Sequence[int], spacing: Sequence[float],
                    origin: Optional[Sequence[int]] = None) -> PreparedCentres:
    """Grid and candidate lists for ``centres`` (at least one) of an image of ``shape`` (or, with
    ``origin``, of the block at ``origin`` of a larger image)."""
    cells, cell, lo, cell_start, cell_items, tol = _centre_grid(centres, shape, spacing, origin)
    grid = (list(shape), list(spacing), _ptr(centres), _ptr(cell_start), _ptr(cell_items), cells, cell, lo, tol)
    device = centres.device
    n_cells = math.prod(cells)
    counts = torch.empty(n_cells, dtype=torch.int32, device=device)
    cand_start = torch.zeros(n_cells + 1, dtype=torch.int32, device=device)
    on_cuda = device.type == "cuda"
    launch = _cuda(centres) if on_cuda else (_threads(),)
    build = _C.cell_candidates_cuda if on_cuda else _C.cell_candidates_cpu
    build(*grid, _ptr(counts), 0, 0, *launch)
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    total = int(ends[-1])
    if total >= 2**31:
        raise ValueError(f"centres: too many nearest-centre candidates ({total}) for int32 indexing")
    cand_start[1:] = ends
    cand_items = torch.empty(max(total, 1), dtype=torch.int32, device=device)
    build(*grid, 0, _ptr(cand_start), _ptr(cand_items), *launch)
    return PreparedCentres(centres, spacing, cells, cell, lo, cell_start, cell_items, tol, cand_start, cand_items)


def assign_prepared(embeddings: torch.Tensor, mask: torch.Tensor, prepared: PreparedCentres,
                    max_distance: Optional[float]) -> torch.Tensor:
    """Nearest-centre labels of ``embeddings`` (any block) over prepared centres."""
    shape = list(mask.shape)
    labels = torch.empty(shape, dtype=torch.int32, device=mask.device)  # the kernel writes every pixel
    if mask.numel() == 0:
        return labels
    p = prepared
    grid = (shape, p.spacing, _ptr(p.centres), _ptr(p.cell_start), _ptr(p.cell_items), p.cells, p.cell, p.lo, p.tol)
    max_d2 = math.inf if max_distance is None else float(max_distance) * float(max_distance)  # inf, not OverflowError
    on_cuda = mask.device.type == "cuda"
    launch = _cuda(mask) if on_cuda else (_threads(),)
    assign = _C.assign_cuda if on_cuda else _C.assign_cpu
    assign(*grid, _ptr(embeddings), _ptr(mask), _ptr(p.cand_start), _ptr(p.cand_items), max_d2, _ptr(labels), *launch)
    return labels


def _strides(shape: Sequence[int]) -> torch.Tensor:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return torch.tensor(strides[::-1], dtype=torch.int64)


def label_opening(labels: torch.Tensor, radius: float, spacing: Sequence[float], name: str = "radius") -> torch.Tensor:
    shape = list(labels.shape)
    check_ball_size(radius, spacing, shape, name)
    offsets = ellipsoid_offsets(radius, spacing)
    # Nearest offsets first (origin first): early exits in the kernel's dilation test.
    order = torch.argsort((offsets.to(torch.int64) ** 2).sum(dim=1), stable=True)
    offsets = offsets[order].contiguous()
    halo = offsets.abs().amax(dim=0).tolist()
    padded = [n + 2 * h for n, h in zip(shape, halo)]
    image_deltas = (offsets.to(torch.int64) * _strides(shape)).sum(dim=1)
    padded_deltas = (offsets.to(torch.int64) * _strides(padded)).sum(dim=1)
    eroded = torch.empty(padded, dtype=labels.dtype, device=labels.device)
    out = torch.empty_like(labels)
    offsets, image_deltas, padded_deltas = (t.to(labels.device) for t in (offsets, image_deltas, padded_deltas))
    args = (shape, _ptr(offsets), _ptr(image_deltas), _ptr(padded_deltas), offsets.shape[0], halo,
            _ptr(labels), labels.dtype == torch.int64, _ptr(eroded), _ptr(out))
    if labels.device.type == "cuda":
        _C.label_opening_cuda(*args, *_cuda(labels))
    else:
        _C.label_opening_cpu(*args, _threads())
    return out


def embeddings_to_labels(
    embeddings: torch.Tensor,
    mask: torch.Tensor,
    min_distance: float,
    spacing: Sequence[float],
    min_votes: int,
    smooth_radius: int,
    max_distance: Optional[float],
    opening_radius: Optional[float],
) -> torch.Tensor:
    if opening_radius:
        check_ball_size(opening_radius, spacing, list(mask.shape), "opening_radius")  # before any work
    votes = hough_votes(embeddings, mask, spacing)
    centres = find_peaks(votes, min_distance, min_votes, spacing, smooth_radius)
    labels = assign_to_centres(embeddings, mask, centres, spacing, max_distance)
    if opening_radius:
        labels = label_opening(labels, opening_radius, spacing)
    return labels


# ---- sSDC ------------------------------------------------------------------------------------------

_SSDC_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

#: The bfloat16 CPU sSDC kernel of this machine ("avx512_bf16"), or "" where there is none (bfloat16
#: CPU tensors are then computed in float32 by the float32 kernel). Read once, at import: a constant
#: that torch.compile can trace through.
SSDC_CPU_BF16 = str(_C.ssdc_cpu_bf16_kind())


SSDC_KERNEL_ENV = "RDCNET_EXT_SSDC_CUDA_KERNEL"
SSDC_KERNELS = ("simt", "tensorcore")


def ssdc_kernel_request() -> str:
    """The CUDA sSDC kernel asked for by ``RDCNET_EXT_SSDC_CUDA_KERNEL`` (read on every call):
    ``"simt"`` (default, also when unset or empty) or ``"tensorcore"``; anything else raises."""
    raw = os.environ.get(SSDC_KERNEL_ENV, "")
    value = raw.strip().lower() or "simt"
    if value not in SSDC_KERNELS:
        raise ValueError(f"{SSDC_KERNEL_ENV}: expected one of {', '.join(SSDC_KERNELS)} (or unset), got {raw!r}")
    return value


def ssdc_tensorcore_dtype_ok(dtype: torch.dtype, allow_tf32: bool) -> bool:
    """The tensor-core kernel's dtype policy: float16/bfloat16 always, float32 only as TF32 when
    the caller allows TF32 (``torch.backends.cudnn.allow_tf32``), float64 never."""
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and bool(allow_tf32))


@functools.lru_cache(maxsize=None)
def _tensorcore_runs(channels: int, dtype_code: int, device: int) -> bool:
    # Channels a multiple of 16 (at most 256), compute capability >= 8.0, enough shared memory.
    return bool(_C.ssdc_tc_supported(channels, dtype_code, device))


def ssdc_cuda_kernel(x: torch.Tensor, channels: int) -> str:
    """The CUDA sSDC kernel a call with input ``x`` runs: ``"tensorcore"`` if it was asked for and
    supports the case (dtype policy above; the native module checks channels, GPU and shared
    memory), else ``"simt"`` silently."""
    if ssdc_kernel_request() != "tensorcore" or not ssdc_tensorcore_dtype_ok(x.dtype, torch.backends.cudnn.allow_tf32):
        return "simt"
    if not HAS_CUDA or x.device.type != "cuda":
        return "simt"
    return "tensorcore" if _tensorcore_runs(int(channels), _SSDC_DTYPES[x.dtype], x.device.index) else "simt"


def _ssdc_geometry(x: torch.Tensor, weight: torch.Tensor, dilations: Sequence[int], groups: int, slope: float):
    channels = weight.shape[1]
    return (x.shape[0], groups, channels, list(x.shape[2:]), [int(d) for d in dilations], float(slope),
            _SSDC_DTYPES[x.dtype])


def ssdc_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    reduce_weight: torch.Tensor,
    reduce_bias: torch.Tensor,
    dilations: Sequence[int],
    groups: int,
    negative_slope: float,
) -> torch.Tensor:
    """Fused sSDC forward; inputs contiguous, same dtype and device (``rdcnet_ext.ops.ssdc`` checks)."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    args = (*_ssdc_geometry(x, weight, dilations, groups, negative_slope),
            _ptr(x), _ptr(weight), _ptr(bias), _ptr(reduce_weight), _ptr(reduce_bias), _ptr(y))
    if x.device.type == "cuda":
        device_stream = _cuda(x)
        if ssdc_cuda_kernel(x, weight.shape[1]) == "tensorcore":
            _C.ssdc_tc_forward_cuda(*args, *device_stream)
        else:
            _C.ssdc_forward_cuda(*args, *device_stream)
    else:
        _C.ssdc_forward_cpu(*args, _threads())
    return y


def ssdc_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    reduce_weight: torch.Tensor,
    dilations: Sequence[int],
    groups: int,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the fused sSDC w.r.t. (x, weight, bias, reduce_weight, reduce_bias).

    The CPU kernel writes them in the inputs' dtype. The CUDA kernels accumulate grad x into a
    zeroed buffer of the accumulation type (float32; float64 for float64) and the parameter
    gradients in float64; all are cast here.
    """
    grad = grad.contiguous()
    geometry = _ssdc_geometry(x, weight, dilations, groups, negative_slope)
    ins = (_ptr(x), _ptr(weight), _ptr(bias), _ptr(reduce_weight), _ptr(grad))
    if x.device.type == "cuda":
        device_stream = _cuda(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        gx = torch.zeros(x.shape, dtype=acc, device=x.device)
        params = [torch.zeros(t.shape, dtype=torch.float64, device=x.device) for t in (weight, bias, reduce_weight, bias)]
        outs = (_ptr(gx), *(_ptr(t) for t in params))
        if ssdc_cuda_kernel(x, weight.shape[1]) == "tensorcore":
            floats = _C.ssdc_tc_workspace_floats(*geometry[:5], device_stream[0])
            work = torch.empty(max(int(floats), 1), dtype=torch.float32, device=x.device)
            _C.ssdc_tc_backward_cuda(*geometry, *ins, *outs, _ptr(work), int(floats), *device_stream)
        else:
            _C.ssdc_backward_cuda(*geometry, *ins, *outs, *device_stream)
        return tuple(t.to(x.dtype) for t in (gx, *params))  # type: ignore[return-value]
    outs = [torch.empty(t.shape, dtype=x.dtype) for t in (x, weight, bias, reduce_weight, bias)]
    _C.ssdc_backward_cpu(*geometry, *ins, *(_ptr(t) for t in outs), _threads())
    return tuple(outs)  # type: ignore[return-value]
