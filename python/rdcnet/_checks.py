"""Checks of user-supplied settings shared by the Python API and the command line.

Each check takes the ``name`` to put in its message, so the same rule reports ``margin`` when
called from Python and ``--margin`` when called from the command line."""

from __future__ import annotations

import math
import numbers
from typing import Optional

INT32_MAX = 2**31 - 1


def _msg(name: Optional[str], text: str) -> str:
    return f"{name}: {text}" if name else text


def _describe(value) -> str:
    return repr(value) if isinstance(value, (str, float, int)) else f"{type(value).__name__} {value!r}"


def check_number(value, name: str, *, minimum: Optional[float] = None, positive: bool = False) -> float:
    """A finite real number (> 0 with ``positive``, >= ``minimum`` when given), as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_msg(name, f"expected a number, got {_describe(value)}"))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(_msg(name, f"expected a finite number, got {value}"))
    if positive and not value > 0:
        raise ValueError(_msg(name, f"expected a number > 0, got {value:g}"))
    if minimum is not None and value < minimum:
        raise ValueError(_msg(name, f"expected a number >= {minimum:g}, got {value:g}"))
    return value


def check_int(value, name: str, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    """An integer in [minimum, maximum] (a whole-number float is accepted)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        whole = float(value)
        if math.isfinite(whole) and whole.is_integer():  # 4.0 or numpy.float32(4) is the integer 4
            value = int(whole)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_msg(name, f"expected an integer, got {_describe(value)}"))
    value = int(value)
    if not minimum <= value <= maximum:
        upper = f" and <= {maximum}" if maximum < 2**62 else ""
        raise ValueError(_msg(name, f"expected an integer >= {minimum}{upper}, got {value}"))
    return value


def check_number_in(value, name: str, low: float, high: float, *, high_open: bool = False) -> float:
    """A finite number in [low, high] (or [low, high) with ``high_open``), as float."""
    value = check_number(value, name)
    if not (low <= value < high if high_open else low <= value <= high):
        raise ValueError(_msg(name, f"expected a number in [{low:g}, {high:g}{')' if high_open else ']'}, "
                                    f"got {value:g}"))
    return value


def check_bool(value, name: str) -> bool:
    """True or False (NumPy booleans too); 0/1 and strings are refused, they hide mistakes."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(_msg(name, f"expected True or False, got {_describe(value)}"))


def check_choice(value, name: str, choices) -> object:
    """One of ``choices`` (compared with ==; a str choice list refuses non-strings)."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(_msg(name, f"expected one of {', '.join(map(repr, choices))}, got {_describe(value)}"))
    return value


def check_path(value, name: str, optional: bool = False):
    """A filesystem path (str or os.PathLike), or None when ``optional``."""
    import os

    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return value
    raise TypeError(_msg(name, f"expected a path (str or pathlib.Path), got {_describe(value)}"))


# Spacings (physical pixel sizes) span what the ops accept: [1e-100, 1e100] (DESIGN.md).
SPACING_RANGE = (1e-100, 1e100)


def check_per_axis(value, ndim: Optional[int], name: str, *, kind: str = "int", minimum=1,
                   maximum=None) -> tuple:
    """One value per spatial axis, or one value for every axis: ``kind`` "int" (each an integer
    >= ``minimum``) or "spacing" (each a finite number in :data:`SPACING_RANGE`). ``ndim`` None
    accepts any number of values from 1 to 3. Returns a tuple (of ``ndim`` values when given)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (numbers.Real,)) and not isinstance(value, bool):
        value = (value,) * (ndim or 1)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or isinstance(value, dict):
        what = "integers" if kind == "int" else "numbers"
        raise TypeError(_msg(name, f"expected one or {ndim or 'up to 3'} {what} (one per spatial axis), "
                                   f"got {_describe(value)}"))
    value = tuple(value)
    if ndim is not None and len(value) == 1:
        value = value * ndim
    wanted = f"1 or {ndim}" if ndim is not None else "1 to 3"
    if (ndim is not None and len(value) != ndim) or not 1 <= len(value) <= 3:
        raise ValueError(_msg(name, f"expected {wanted} values (one per spatial axis), got {len(value)}: "
                                    f"{_describe(value)}"))
    if kind == "int":
        upper = INT32_MAX if maximum is None else maximum
        return tuple(check_int(v, name, minimum=minimum, maximum=upper) for v in value)
    low, high = SPACING_RANGE
    return tuple(check_number_in(v, name, low, high) for v in value)


def check_image(image, name: str = "image"):
    """A real-valued, non-empty array (NumPy, torch, zarr, dask or nested lists): its shape is
    returned. Strings, objects, complex numbers and empty axes are refused."""
    import numpy as np

    if image is None or isinstance(image, (str, bytes, dict, numbers.Number)):
        raise TypeError(_msg(name, f"expected an array, got {_describe(image)}"))
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        try:
            image = np.asarray(image)
        except (ValueError, TypeError) as exc:
            raise TypeError(_msg(name, f"expected an array, got {type(image).__name__} ({exc})")) from None
    dtype = image.dtype
    if str(dtype).startswith("torch."):  # torch dtypes: bfloat16 has no NumPy twin
        real = not (dtype.is_complex or str(dtype).startswith(("torch.q", "torch.float8")))
    else:
        real = np.dtype(dtype).kind in "biuf"
    if not real:
        raise TypeError(_msg(name, f"expected real numbers (bool, integer or float pixels), got dtype {dtype}"))
    shape = tuple(int(n) for n in image.shape)
    if not shape or min(shape) == 0:
        raise ValueError(_msg(name, f"expected an array with at least one pixel along every axis, got shape {shape}"))
    return shape


def resolve_device(name, what: str = "device"):
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a usable
    ``torch.device``; asking for CUDA where torch has none is a ``ValueError`` naming ``what``."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {_describe(name)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"{what}: {name!r} asked for, but this torch ({torch.__version__}) is built "
                             "without CUDA; use 'cpu' or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {name!r} asked for, but no CUDA GPU is available; use 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{what}: {name!r} asked for, but only {count} CUDA device(s) exist")
    return device
