"""The RDCNet model: a strided input conv, one recurrent block applied ``iterations`` times with
shared weights, a transposed output conv, a softmax class head and an additive
semi-convolutional embedding head in physical units (see DESIGN.md, "The model")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bool, check_choice, check_int, check_number_in, check_per_axis
from .ssdc import apply_ssdc, auto_ssdc_path, autocast_dtype, choose_ssdc_path, requested_path, ssdc_chain

__all__ = ["RDCNet", "RDCNetConfig", "RDCNetOutput", "SSDC", "ssdc_unfused", "pixel_coordinates"]


def pixel_coordinates(spatial: Sequence[int], spacing: Sequence[float], origin=None, device=None) -> torch.Tensor:
    """(ndim, *spatial) float32 physical positions of the pixels: (index + origin) × spacing
    (the positions the embeddings add to the offsets)."""
    ndim = len(spacing)
    origin = (0,) * ndim if origin is None else tuple(origin)
    if len(origin) != ndim:
        raise ValueError(f"origin: expected {ndim} pixel offsets, got {origin}")
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + float(o)) * float(s)
            for n, o, s in zip(spatial, origin, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class RDCNetOutput(NamedTuple):
    """One prediction: ``embeddings`` (B, ndim, *S) in physical units (pixel index × spacing plus
    the learned offsets), ``probabilities`` (B, n_classes, *S) after the softmax and the raw
    ``logits`` of the class head."""

    embeddings: torch.Tensor
    probabilities: torch.Tensor
    logits: torch.Tensor


ssdc_unfused = ssdc_chain  # the older name of the "chain" path of rdcnet.ssdc


class SSDC(nn.Module):
    """Shared stacked dilated convolution: per group one 3x3(x3) kernel applied at every dilation
    rate, each result through a LeakyReLU, then a grouped 1x1 reduction back to ``channels``.

    The parameters have the layouts of ``rdcnet_ext.ops.ssdc``, so one checkpoint serves every
    path. ``path`` says how it is computed (:mod:`rdcnet.ssdc`): ``"auto"`` (default) the way
    measured fastest for the input's device and dtype; ``"chain"``, ``"recompute"`` (framework
    convs, one dilation's activations at a time: saves memory) or ``"fused"`` (rdcnet_ext's
    kernel). ``fused=True/False`` is the older spelling of ``path="fused"/"chain"``."""

    def __init__(self, ndim: int, groups: int, channels_per_group: int, dilations: Sequence[int],
                 negative_slope: float = 0.3, fused: Optional[bool] = None, path: Optional[str] = None):
        super().__init__()
        self.ndim, self.groups, self.dilations = ndim, groups, tuple(int(d) for d in dilations)
        self.negative_slope = negative_slope
        self.path = requested_path(path, fused)
        C, G, D = channels_per_group, groups, len(self.dilations)
        k = (3,) * ndim
        self.weight = nn.Parameter(torch.empty(G * C, C, *k))
        self.bias = nn.Parameter(torch.empty(G * C))
        self.reduce_weight = nn.Parameter(torch.empty(G * C, D * C, *(1,) * ndim))
        self.reduce_bias = nn.Parameter(torch.empty(G * C))
        # Same initialisation as the equivalent torch convs (kaiming-uniform, a=sqrt(5)).
        for w, b in ((self.weight, self.bias), (self.reduce_weight, self.reduce_bias)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            fan_in = w[0].numel()
            nn.init.uniform_(b, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def path_for(self, x: torch.Tensor) -> str:
        """The path this module takes for input ``x`` (autocast included; ``"auto"`` is measured at
        the first call of each kind, :func:`rdcnet.ssdc.auto_ssdc_path`)."""
        if self.path == "auto":
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
            return auto_ssdc_path(x.device, autocast_dtype(x), self.groups, self.weight.shape[1], self.dilations,
                                  x.shape[0], x.shape[2:], needs_grad, self.negative_slope, input_dtype=x.dtype)
        return choose_ssdc_path(self.path, x.device.type, autocast_dtype(x))

    def use_fused(self, x: torch.Tensor) -> bool:
        return self.path_for(x) == "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_ssdc(x, self.weight, self.bias, self.reduce_weight, self.reduce_bias, self.dilations,
                          self.groups, self.negative_slope, self.path_for(x))


class RecurrentBlock(nn.Module):
    """f_theta of Y_i = Y_{i-1} + f_theta(concat(X, Y_{i-1})): spatial dropout → LeakyReLU →
    1x1 conv mixing all groups → LeakyReLU → sSDC."""

    def __init__(self, ndim, in_channels, groups, channels_per_group, dilations, dropout, negative_slope, ssdc_path):
        super().__init__()
        width = groups * channels_per_group
        self.dropout = (nn.Dropout2d if ndim == 2 else nn.Dropout3d)(dropout) if dropout > 0 else nn.Identity()
        self.mix = (nn.Conv2d if ndim == 2 else nn.Conv3d)(in_channels + width, width, 1)
        self.ssdc = SSDC(ndim, groups, channels_per_group, dilations, negative_slope, path=ssdc_path)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.cat([x, y], dim=1))
        h = self.mix(F.leaky_relu(h, self.negative_slope))
        return self.ssdc(F.leaky_relu(h, self.negative_slope))


@dataclass
class RDCNetConfig:
    """Everything needed to rebuild an RDCNet (stored in checkpoints)."""

    ndim: int = 2
    in_channels: int = 1
    n_classes: int = 2
    factor: Tuple[int, ...] = (4, 4)
    downsampling_channels: int = 32
    groups: int = 8
    channels_per_group: int = 64
    dilations: Tuple[int, ...] = (1, 2, 4, 8)
    iterations: int = 5
    dropout: float = 0.1
    negative_slope: float = 0.3
    spacing: Tuple[float, ...] = (1.0, 1.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class RDCNet(nn.Module):
    """Recurrent dilated convolutional network for instance segmentation (Ortiz et al. 2020).

    Args:
        ndim: 2 or 3 spatial axes.
        in_channels: image channels (1 for grey, 3 for RGB).
        n_classes: semantic classes including background (softmax head).
        factor: down-sampling factor per axis (int or tuple, e.g. ``(1, 8, 8)`` for anisotropic
            stacks); the input conv has kernel ``max(3, f)`` and stride ``f``.
        downsampling_channels: channels of the input conv (paper: 32).
        groups, channels_per_group: the recurrent state's layout (paper: 8 × 64).
        dilations: dilation rates of the sSDC.
        iterations: recurrent steps (weights shared across steps).
        dropout: spatial dropout rate at the block's input.
        negative_slope: LeakyReLU slope.
        spacing: physical pixel size per axis; embeddings are in these units.
        ssdc_path: how the sSDC is computed (:mod:`rdcnet.ssdc`): ``"auto"`` (default: the way
            measured fastest for the device and dtype), ``"chain"``, ``"recompute"`` (saves
            memory with framework convs) or ``"fused"`` (rdcnet_ext's kernel, saves memory).
        fused: the older switch: True = ``ssdc_path="fused"``, False = ``"chain"``.

    ``forward(x)`` takes (B, in_channels, *S) of any spatial size (padded to a multiple of the
    factor, cropped back) and returns an :class:`RDCNetOutput`.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, n_classes: int = 2,
                 factor: Union[int, Sequence[int]] = 4, downsampling_channels: int = 32, groups: int = 8,
                 channels_per_group: int = 64, dilations: Sequence[int] = (1, 2, 4, 8), iterations: int = 5,
                 dropout: float = 0.1, negative_slope: float = 0.3,
                 spacing: Optional[Union[float, Sequence[float]]] = None, fused: Optional[bool] = None,
                 ssdc_path: Optional[str] = None):
        super().__init__()
        ndim = check_choice(check_int(ndim, "ndim"), "ndim", (2, 3))
        in_channels, n_classes, groups, channels_per_group, iterations, downsampling_channels = (
            check_int(v, name, minimum=low) for name, v, low in (
                ("in_channels", in_channels, 1), ("n_classes", n_classes, 2), ("groups", groups, 1),
                ("channels_per_group", channels_per_group, 1), ("iterations", iterations, 1),
                ("downsampling_channels", downsampling_channels, 1)))
        if isinstance(dilations, (str, bytes)) or not hasattr(dilations, "__iter__"):
            raise TypeError(f"dilations: expected a sequence of positive integers, got {dilations!r}")
        dilations = tuple(check_int(d, "dilations", minimum=1) for d in dilations)
        if not dilations:
            raise ValueError("dilations: expected one or more positive integers, got none")
        dropout = check_number_in(dropout, "dropout", 0.0, 1.0, high_open=True)
        negative_slope = check_number_in(negative_slope, "negative_slope", 0.0, 1.0)
        factor = check_per_axis(factor, ndim, "factor", kind="int", minimum=1, maximum=4096)
        spacing = check_per_axis(1.0 if spacing is None else spacing, ndim, "spacing", kind="spacing")
        if fused is not None:
            fused = check_bool(fused, "fused")
        self.config = RDCNetConfig(ndim, in_channels, n_classes, factor, downsampling_channels, groups,
                                   channels_per_group, dilations, iterations, float(dropout),
                                   float(negative_slope), spacing)
        Conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        ConvT = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        width = groups * channels_per_group
        k_in = tuple(max(3, f) for f in factor)
        self.down = Conv(in_channels, downsampling_channels, k_in, stride=factor,
                         padding=tuple((k - f + 1) // 2 for k, f in zip(k_in, factor)))
        self.block = RecurrentBlock(ndim, downsampling_channels, groups, channels_per_group, dilations, dropout,
                                    negative_slope, requested_path(ssdc_path, fused))
        self._k_out = tuple(max(3, 2 * f) for f in factor)
        self.up = ConvT(width, ndim + n_classes, self._k_out, stride=factor)
        # Small initial offsets: an untrained model embeds every pixel at its own position.
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)
        self.register_buffer("spacing", torch.tensor(spacing, dtype=torch.float32), persistent=False)

    @classmethod
    def from_config(cls, config: Union[dict, RDCNetConfig], fused: Optional[bool] = None,
                    ssdc_path: Optional[str] = None) -> "RDCNet":
        cfg = config.to_dict() if isinstance(config, RDCNetConfig) else dict(config)
        return cls(**cfg, fused=fused, ssdc_path=ssdc_path)

    @property
    def ssdc_path(self) -> str:
        """How the sSDC is computed (:mod:`rdcnet.ssdc`); may be changed at any time, e.g. to
        ``"recompute"`` to predict a large 3D volume in less memory."""
        return self.block.ssdc.path

    @ssdc_path.setter
    def ssdc_path(self, path: str) -> None:
        self.block.ssdc.path = requested_path(path)

    def ssdc_path_for(self, batch: int, spatial: Sequence[int], device=None, dtype: Optional[torch.dtype] = None,
                      needs_grad: bool = False) -> str:
        """The way this model computes its sSDC for images of ``spatial`` pixels in batches of
        ``batch`` on ``device`` (default: its parameters') at compute ``dtype`` (default float32; the
        autocast dtype under autocast), for training (``needs_grad``) or inference: its ``ssdc_path``,
        or for ``"auto"`` the one measured fastest (timed now if this kind of call is new)."""
        cfg = self.config
        device = torch.device(device) if device is not None else next(self.parameters()).device
        dtype = dtype or torch.float32
        if self.ssdc_path != "auto":
            return choose_ssdc_path(self.ssdc_path, device.type, dtype)
        coarse = [-(-int(n) // f) for n, f in zip(spatial, cfg.factor)]  # the recurrent block's map
        return auto_ssdc_path(device, dtype, cfg.groups, cfg.channels_per_group, cfg.dilations, batch, coarse,
                              needs_grad, cfg.negative_slope, input_dtype=torch.float32)

    @property
    def ndim(self) -> int:
        return self.config.ndim

    def coordinates(self, spatial: Sequence[int], origin=None, device=None) -> torch.Tensor:
        """(ndim, *spatial) physical coordinates of the pixels: (index + origin) × spacing."""
        return pixel_coordinates(spatial, self.config.spacing, origin, device)

    def _head(self, y: torch.Tensor, spatial: Sequence[int], coords: torch.Tensor) -> RDCNetOutput:
        out = self.up(F.leaky_relu(y, self.config.negative_slope))
        # Transposed conv without padding: the output is (L-1)·f + k; its centred L·f window is
        # aligned with the input grid, then cropped to the unpadded input size.
        crop = tuple(slice((k - f) // 2, (k - f) // 2 + n) for k, f, n in zip(self._k_out, self.config.factor, spatial))
        out = out[(slice(None), slice(None)) + crop]
        offsets, logits = out[:, : self.ndim], out[:, self.ndim:]
        # Positions need at least float32: under autocast the offsets are bfloat16/float16, whose
        # steps at a coordinate of 1000 are 4-8 px (bf16) -- far coarser than a nucleus's margin.
        dtype = torch.promote_types(offsets.dtype, torch.float32)
        embeddings = offsets.to(dtype) + coords.to(dtype)
        return RDCNetOutput(embeddings, torch.softmax(logits.to(dtype), dim=1), logits)

    def forward(self, x: torch.Tensor, origin: Optional[Sequence[int]] = None, return_all: bool = False,
                iterations: Optional[int] = None) -> Union[RDCNetOutput, List[RDCNetOutput]]:
        """Args:
            x: (B, in_channels, *S) normalised images.
            origin: global pixel index of ``x[..., 0, 0]`` when ``x`` is a tile of a larger image,
                so embeddings stay consistent across tiles.
            return_all: return the outputs of every iteration (list), as in the paper's Fig. 1.
            iterations: run fewer (or more) recurrent steps than configured.
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(f"x: expected (B, {self.config.in_channels}, *{self.ndim} spatial axes), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"x: expected {self.config.in_channels} channels, got {x.shape[1]}")
        n_iter = self.config.iterations if iterations is None else check_int(iterations, "iterations", minimum=1)
        spatial = tuple(x.shape[2:])
        pad = []
        for n, f in reversed(list(zip(spatial, self.config.factor))):
            pad += [0, (-n) % f]
        if any(pad):
            x = F.pad(x, pad, mode="reflect" if all(p < n for p, n in zip(pad[1::2], reversed(spatial))) else "replicate")
        feats = self.down(x)
        y = feats.new_zeros((feats.shape[0], self.config.groups * self.config.channels_per_group, *feats.shape[2:]))
        coords = self.coordinates(spatial, origin, device=x.device)  # once, for every head call
        outputs = []
        for _ in range(n_iter):
            y = y + self.block(feats, y)
            if return_all:
                outputs.append(self._head(y, spatial, coords))
        return outputs if return_all else self._head(y, spatial, coords)
