"""Network outputs → instance labels, through ``rdcnet_ext.ops.embeddings_to_labels``.

Foreground is the argmax class (any class but 0); centres are vote maxima within a window of
half-size ``min_distance`` (default: the training margin, since with a perfect loss centres
are at least 2·margin apart); every foreground pixel takes the label of its nearest centre."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from rdcnet_ext import ops

from ._checks import check_int, check_number

__all__ = ["PostprocessConfig", "labels_from_output", "foreground", "check_postprocess_value"]

# What each decoding parameter accepts: (kind, lower bound, may be None). Distances are finite
# (the ops clip windows and balls to the image); counts fit the ops' int32 vote maps.
_RULES = {
    "margin": ("positive", None, False),
    "min_distance": ("positive", None, True),
    "min_votes": ("int", 0, False),
    "smooth_radius": ("int", 0, False),
    "max_distance": ("positive", None, True),
    "opening_radius": ("number", 0.0, True),
}


def check_postprocess_value(field: str, value, name: str = None):
    """``value`` checked against the rule of :class:`PostprocessConfig` field ``field``
    (``name`` goes into the message, e.g. a CLI flag; default: the field)."""
    kind, lower, optional = _RULES[field]
    name = field if name is None else name
    if value is None and optional:
        return None
    if kind == "int":
        return check_int(value, name, minimum=lower)
    return check_number(value, name, positive=kind == "positive", minimum=lower)


@dataclass
class PostprocessConfig:
    """Decoding parameters, in the embeddings' physical units where they are distances.

    margin: the ESJ margin the model was trained with.
    min_distance: half-size of the peak window (None: ``margin``).
    min_votes: minimum (smoothed) votes for a centre; rejects centres of a few stray pixels.
    smooth_radius: box half-size (pixels) summing votes before peak detection (0: none).
    max_distance: pixels farther than this from every centre stay background (None: no limit).
    opening_radius: label-wise opening radius (None: no opening; the paper uses 0.5 µm in 3D).
    """

    margin: float = 5.0
    min_distance: Optional[float] = None
    min_votes: int = 5
    smooth_radius: int = 1
    max_distance: Optional[float] = None
    opening_radius: Optional[float] = None

    def __post_init__(self):
        for field in _RULES:
            setattr(self, field, check_postprocess_value(field, getattr(self, field)))

    @property
    def peak_window(self) -> float:
        """The half-size of the peak window ``find_peaks`` uses: ``min_distance``, else ``margin``."""
        return self.margin if self.min_distance is None else self.min_distance

    def to_dict(self) -> dict:
        return asdict(self)


def foreground(probabilities: torch.Tensor) -> torch.Tensor:
    """The foreground of ``probabilities`` (n_classes, *S): pixels whose most probable class is not
    the background (class 0)."""
    return probabilities.argmax(0) != 0


def labels_from_output(embeddings: torch.Tensor, probabilities: torch.Tensor,
                       spacing: Sequence[float], config: PostprocessConfig = PostprocessConfig()) -> torch.Tensor:
    """Decode one image: ``embeddings`` (ndim, *S), ``probabilities`` (n_classes, *S) → int32
    labels (*S) on the same device (0 = background, 1..K instances)."""
    if embeddings.dim() != probabilities.dim() or embeddings.shape[1:] != probabilities.shape[1:]:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and probabilities {tuple(probabilities.shape)}: "
                         "expected (ndim, *S) and (n_classes, *S) over the same image")
    return ops.embeddings_to_labels(
        embeddings.detach().float().contiguous(), foreground(probabilities).contiguous(), float(config.peak_window),
        spacing=tuple(float(s) for s in spacing), min_votes=int(config.min_votes),
        smooth_radius=int(config.smooth_radius), max_distance=config.max_distance,
        opening_radius=config.opening_radius)

