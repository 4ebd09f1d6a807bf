"""Data layer of rdcnet: file I/O, synthetic data sets, folder data sets, the image
normalisation, random crops and online augmentation.

Conventions: images for the model are channel-first ``(C, *spatial)`` float32 as returned by
:func:`normalize_image` (per channel, 1st percentile -> 0 and 99.8th -> 1, not clipped); labels
are ``int32 (*spatial)`` with 0 = background, > 0 = instance ids, -1 = undefined (ignored by
the loss; also the value of padding added by :func:`random_crop`).
"""

from .augment import (
    AugmentConfig,
    Augmenter,
    affine,
    elastic,
    flip,
    gaussian_blur,
    gaussian_noise,
    hsv_shift,
    intensity_clip,
    intensity_offset,
)
from .dataset import (PAD_LABEL, FolderDataset, count_nonfinite, nonfinite_pixels, normalize_image, random_crop,
                      to_channels_first)
from .io import IMAGE_SUFFIXES, read_image, read_labels, write_image, write_labels
from .synthetic import (
    DEFAULT_SPACING_3D,
    SYNTHETIC_KINDS,
    leaves_2d,
    nuclei_2d,
    nuclei_3d,
    write_synthetic_folder,
)

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "DEFAULT_SPACING_3D",
    "FolderDataset",
    "IMAGE_SUFFIXES",
    "PAD_LABEL",
    "count_nonfinite",
    "nonfinite_pixels",
    "SYNTHETIC_KINDS",
    "affine",
    "elastic",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "hsv_shift",
    "intensity_clip",
    "intensity_offset",
    "leaves_2d",
    "normalize_image",
    "nuclei_2d",
    "nuclei_3d",
    "random_crop",
    "read_image",
    "read_labels",
    "to_channels_first",
    "write_image",
    "write_labels",
    "write_synthetic_folder",
]
