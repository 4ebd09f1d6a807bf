"""Model files: the one place that writes and reads them.

A model file is untrusted input: it travels between labs, and ``rdcnet predict --model x.pt`` is
the first thing a user runs on a file someone sent. Nothing in a model file is ever executed:

- checkpoints (``best.pt``, ``last.pt`` with its optimiser and random-generator state) hold plain
  data only -- dicts, lists, numbers, strings and tensors; configurations are stored as dicts,
  never as objects -- and are read with ``torch.load(weights_only=True)``, whose unpickler refuses
  every global outside torch's tensor types (so a pickle that would call ``os.system`` fails
  before anything runs);
- bioimage.io packages are read as YAML (``bioimageio.spec``) and their ``pytorch_state_dict``
  weights the same way; the architecture source file and the TorchScript weights they carry are
  never imported or loaded: the network is rebuilt from the package's ``config.rdcnet``.

A file that cannot be read this way gets one :class:`CheckpointError` (a ``ValueError``): "not an
rdcnet checkpoint, or one that would run code". Checkpoints written by earlier versions of rdcnet
hold the same plain data and load as before; a file that still needs the unsafe reader can be
converted once, by someone who trusts it, with :func:`convert_trusted`.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from ._files import atomic_write
from .model import RDCNet
from .postprocess import PostprocessConfig

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "load_model", "safe_torch_load", "convert_trusted"]

CHECKPOINT_VERSION = 1

#: Keys every rdcnet checkpoint has (``last.pt`` has more: see ``rdcnet.train``).
MODEL_KEYS = ("model_config", "state_dict")


class CheckpointError(ValueError):
    """A model file that is not an rdcnet checkpoint, is damaged, or would run code if loaded
    with pickle. ``path``: the file; the message is one line."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return (text[:limit] + "...") if len(text) > limit else text


def _refusal(exc: BaseException) -> Optional[str]:
    """What a weights-only load refused ("it asks for posix.system"), when that is why it failed."""
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it asks for {match.group(1)}"
    if "WeightsUnpickler error" in text:
        return "it holds pickle instructions beyond tensors and plain data"
    return None


def safe_torch_load(source, map_location="cpu", what: str = "model file", name=None):
    """``torch.load`` that never executes code from ``source`` (a path, bytes or a binary file):
    tensors and plain Python data only. Raises :class:`CheckpointError` for anything else."""
    name = name if name is not None else (source if isinstance(source, (str, Path)) else what)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            return torch.load(source, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OSError, zipfile.BadZipFile, UnicodeDecodeError, AssertionError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        refused = _refusal(exc)
        if refused is not None:
            raise CheckpointError(name, f"not an rdcnet {what}, or one that would run code when loaded ({refused}); "
                                        "nothing from it was executed. If it is an rdcnet "
                                        "checkpoint from a source you trust, convert it once with "
                                        "rdcnet.checkpoint.convert_trusted(old, new)") from None
        raise CheckpointError(name, f"not an rdcnet {what}, or a damaged one "
                                    f"({type(exc).__name__}: {_first_line(exc)})") from None


def save_checkpoint(path, model: RDCNet, train_config=None, **state) -> None:
    """Atomically save the model's weights with everything needed to rebuild and use it.
    ``train_config`` is a :class:`rdcnet.TrainConfig` (stored as a dict); ``state`` must be plain
    data and tensors (it is read back with the weights-only loader)."""
    post = train_config.postprocess if train_config is not None else PostprocessConfig()
    payload = {
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "postprocess": post.to_dict(),
        "state_dict": model.state_dict(),
        **state,
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path, map_location="cpu", required=MODEL_KEYS, what: str = "checkpoint") -> dict:
    """The raw contents of an rdcnet checkpoint (a dict), read without executing anything and
    checked to hold the ``required`` keys. :class:`CheckpointError` otherwise; ``what`` names the
    kind of file in its message (e.g. "resumable checkpoint" for ``last.pt``)."""
    from ._checks import check_path

    path = Path(check_path(path, "path"))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    ckpt = safe_torch_load(path, map_location=map_location, what=what)
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"not an rdcnet {what} (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"not an rdcnet {what} (no {', '.join(missing)})")
    return ckpt


def model_from_dict(ckpt: dict, path, device, fused=None, ssdc_path=None) -> RDCNet:
    """The model a checkpoint describes, with its weights; every field is validated by RDCNet."""
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(path, "not an rdcnet checkpoint (model_config and state_dict must be dicts)")
    try:
        model = RDCNet.from_config(ckpt["model_config"], fused=fused, ssdc_path=ssdc_path)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"its model does not match its weights or settings ({_first_line(exc)})") from None
    return model.to(device).eval()


def postprocess_from_dict(ckpt: dict, path) -> PostprocessConfig:
    stored = ckpt.get("postprocess", {})
    try:
        return PostprocessConfig(**(stored if isinstance(stored, dict) else {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"its decoding settings are invalid ({_first_line(exc)})") from None


def load_checkpoint(path, device="cpu", fused: Optional[bool] = None, ssdc_path: Optional[str] = None):
    """Rebuild a model from a checkpoint. Returns (model in eval mode, PostprocessConfig, raw dict).
    ``ssdc_path`` (or the older ``fused``) chooses how the model computes its sSDC (:mod:`rdcnet.ssdc`).
    Nothing in the file is executed (see the module's documentation)."""
    from ._checks import resolve_device

    device = resolve_device(device, "device")
    ckpt = read_checkpoint(path, map_location=device)
    return model_from_dict(ckpt, path, device, fused, ssdc_path), postprocess_from_dict(ckpt, path), ckpt


def load_model(path, device="cpu") -> Tuple[RDCNet, PostprocessConfig]:
    """(:class:`rdcnet.RDCNet` in eval mode, :class:`rdcnet.postprocess.PostprocessConfig`) from a
    checkpoint (``best.pt``) or a bioimage.io package (``.zip``) written by ``rdcnet export``."""
    if isinstance(path, (str, Path)) and str(path).lower().endswith(".zip"):
        from .export.bioimageio import load_bioimageio

        return load_bioimageio(path, device=device)
    model, post, _ = load_checkpoint(path, device=device)
    return model, post


def convert_trusted(source, target) -> Path:
    """Rewrite a checkpoint that only the unsafe (pickle) reader can open into one the safe reader
    accepts. **This runs whatever code ``source`` holds**: use it only on files you trust (e.g. your
    own, written by an old version). The contents are reduced to plain data and tensors."""
    ckpt = torch.load(Path(source), map_location="cpu", weights_only=False)  # the caller vouches for it

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, dict):
            return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if hasattr(value, "item") and callable(value.item):  # NumPy scalars
            return value.item()
        if hasattr(value, "to_dict"):  # configuration objects of old versions
            return plain(value.to_dict())
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(source, f"holds a {type(value).__name__}, which is not plain data; cannot convert")

    ckpt = plain(ckpt)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in MODEL_KEYS):
        raise CheckpointError(source, "not an rdcnet checkpoint (no model_config/state_dict)")
    atomic_write(Path(target), lambda tmp: torch.save(ckpt, tmp))
    safe_torch_load(Path(target), what="checkpoint")  # what we wrote must pass the safe reader
    return Path(target)
