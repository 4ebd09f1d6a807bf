"""Network outputs → instance labels, through ``rdcnet_ext.ops.embeddings_to_labels``.

Foreground is the argmax class (any class but 0), or, with ``foreground_threshold`` t, the
pixels whose foreground probability ``1 - P(background)`` exceeds t; centres are vote maxima
within a window of half-size ``min_distance`` (default: the training margin, since with a
perfect loss centres are at least 2·margin apart); every foreground pixel takes the label of its
nearest centre."""

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
    "foreground_threshold": ("fraction", None, True),
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
    if kind == "fraction":
        value = check_number(value, name)
        if not 0 < value < 1:
            raise ValueError(f"{name}: expected a probability strictly between 0 and 1, got {value:g}")
        return value
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
    foreground_threshold: a pixel is foreground when ``1 - P(background)`` exceeds it (None: the
        most probable class is not the background, as before this setting existed).
    tta: test-time augmentation (:func:`rdcnet.predict.predict_output`): average the outputs of
        the flipped and rotated image (training keeps it only where it helps on validation).
    """

    margin: float = 5.0
    min_distance: Optional[float] = None
    min_votes: int = 5
    smooth_radius: int = 1
    max_distance: Optional[float] = None
    opening_radius: Optional[float] = None
    foreground_threshold: Optional[float] = None
    tta: bool = False

    def __post_init__(self):
        for field in _RULES:
            setattr(self, field, check_postprocess_value(field, getattr(self, field)))
        if not isinstance(self.tta, bool):
            raise TypeError(f"tta: expected True or False, got {self.tta!r}")

    @property
    def peak_window(self) -> float:
        """The half-size of the peak window ``find_peaks`` uses: ``min_distance``, else ``margin``."""
        return self.margin if self.min_distance is None else self.min_distance

    def to_dict(self) -> dict:
        return asdict(self)


def foreground(probabilities: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
    """The foreground of ``probabilities`` (n_classes, *S): pixels whose most probable class is not
    the background (class 0) or, with ``threshold``, whose foreground probability
    ``1 - P(background)`` exceeds it (:attr:`PostprocessConfig.foreground_threshold`)."""
    if threshold is None:
        return probabilities.argmax(0) != 0
    return (1.0 - probabilities[0]) > float(threshold)


def labels_from_output(embeddings: torch.Tensor, probabilities: torch.Tensor,
                       spacing: Sequence[float], config: PostprocessConfig = PostprocessConfig()) -> torch.Tensor:
    """Decode one image: ``embeddings`` (ndim, *S), ``probabilities`` (n_classes, *S) → int32
    labels (*S) on the same device (0 = background, 1..K instances)."""
    if embeddings.dim() != probabilities.dim() or embeddings.shape[1:] != probabilities.shape[1:]:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and probabilities {tuple(probabilities.shape)}: "
                         "expected (ndim, *S) and (n_classes, *S) over the same image")
    return ops.embeddings_to_labels(
        embeddings.detach().float().contiguous(), foreground(probabilities, config.foreground_threshold).contiguous(),
        float(config.peak_window),
        spacing=tuple(float(s) for s in spacing), min_votes=int(config.min_votes),
        smooth_radius=int(config.smooth_radius), max_distance=config.max_distance,
        opening_radius=config.opening_radius)

