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
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_msg(name, f"expected an integer, got {_describe(value)}"))
    value = int(value)
    if not minimum <= value <= maximum:
        upper = f" and <= {maximum}" if maximum < 2**62 else ""
        raise ValueError(_msg(name, f"expected an integer >= {minimum}{upper}, got {value}"))
    return value


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
