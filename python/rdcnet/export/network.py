"""A TorchScript-compatible twin of :class:`rdcnet.RDCNet` that needs nothing but torch.

It holds the same parameters under the same names as ``RDCNet.state_dict()`` and computes the
same forward pass in inference mode (dropout off, unfused sSDC, whole image, origin 0), written
so that ``torch.jit.script`` compiles it. This file imports only torch: a bioimage.io package
ships it as the architecture source, so the weights load without rdcnet installed. The equality
with ``RDCNet`` is tested (tests/test_export.py); DESIGN.md, "The model", is the specification.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PortableRDCNet"]


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int, dilation: int,
          groups: int) -> torch.Tensor:
    if x.dim() == 4:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


class _SSDC(nn.Module):
    """Parameters as in ``rdcnet.model.SSDC``; the unfused chain of ``rdcnet_ext.reference.ssdc``."""

    def __init__(self, ndim: int, groups: int, channels_per_group: int, dilations: Sequence[int],
                 negative_slope: float):
        super().__init__()
        C, G, D = channels_per_group, groups, len(dilations)
        k = [3] * ndim
        self.weight = nn.Parameter(torch.zeros([G * C, C] + k))
        self.bias = nn.Parameter(torch.zeros(G * C))
        self.reduce_weight = nn.Parameter(torch.zeros([G * C, D * C] + [1] * ndim))
        self.reduce_bias = nn.Parameter(torch.zeros(G * C))
        self.groups = groups
        self.dilations: List[int] = [int(d) for d in dilations]
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        channels = x.shape[1] // self.groups
        spatial: List[int] = list(x.shape[2:])
        acts: List[torch.Tensor] = []
        for d in self.dilations:
            a = F.leaky_relu(_conv(x, self.weight, self.bias, 1, d, d, self.groups), self.negative_slope)
            acts.append(a.reshape([batch, self.groups, channels] + spatial))
        stacked = torch.stack(acts, dim=2).reshape([batch, self.groups * len(acts) * channels] + spatial)
        return _conv(stacked, self.reduce_weight, self.reduce_bias, 1, 0, 1, self.groups)


class _Block(nn.Module):
    def __init__(self, ndim: int, in_channels: int, groups: int, channels_per_group: int, dilations: Sequence[int],
                 negative_slope: float):
        super().__init__()
        width = groups * channels_per_group
        self.mix = (nn.Conv2d if ndim == 2 else nn.Conv3d)(in_channels + width, width, 1)
        self.ssdc = _SSDC(ndim, groups, channels_per_group, dilations, negative_slope)
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.mix(F.leaky_relu(torch.cat([x, y], dim=1), self.negative_slope))
        return self.ssdc(F.leaky_relu(h, self.negative_slope))


class PortableRDCNet(nn.Module):
    """RDCNet inference in plain, scriptable torch. Takes the keyword arguments of
    ``RDCNetConfig`` (``dropout`` is accepted and unused: inference only).

    ``forward(x)``: normalised images (B, in_channels, *S) → (embeddings (B, ndim, *S) in
    physical units, class probabilities (B, n_classes, *S)). With ``relative=True`` the first
    output is the offsets (embeddings minus each pixel's position index × spacing): the same
    for a pixel whatever tile of the image it is computed in, which tiling runtimes need."""

    def __init__(self, ndim: int = 2, in_channels: int = 1, n_classes: int = 2, factor: Sequence[int] = (4, 4),
                 downsampling_channels: int = 32, groups: int = 8, channels_per_group: int = 64,
                 dilations: Sequence[int] = (1, 2, 4, 8), iterations: int = 5, dropout: float = 0.0,
                 negative_slope: float = 0.3, spacing: Sequence[float] = (1.0, 1.0), relative: bool = False):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim: expected 2 or 3, got {ndim}")
        factor = [int(f) for f in factor]
        spacing = [float(s) for s in spacing]
        if len(factor) != ndim or len(spacing) != ndim:
            raise ValueError(f"factor and spacing: expected {ndim} values each, got {factor} and {spacing}")
        Conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        ConvT = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        width = groups * channels_per_group
        k_in = [max(3, f) for f in factor]
        self.down = Conv(in_channels, downsampling_channels, k_in, stride=factor,
                         padding=[(k - f + 1) // 2 for k, f in zip(k_in, factor)])
        self.block = _Block(ndim, downsampling_channels, groups, channels_per_group, dilations, negative_slope)
        self.k_out: List[int] = [max(3, 2 * f) for f in factor]
        self.up = ConvT(width, ndim + n_classes, self.k_out, stride=factor)
        self.ndim = ndim
        self.in_channels = in_channels
        self.width = width
        self.factor: List[int] = factor
        self.spacing: List[float] = spacing
        self.iterations = int(iterations)
        self.negative_slope = float(negative_slope)
        self.relative = bool(relative)

    def coordinates(self, spatial: List[int], device: torch.device) -> torch.Tensor:
        """(ndim, *spatial) physical pixel positions, index × spacing (as ``RDCNet.coordinates``)."""
        axes: List[torch.Tensor] = []
        for a in range(self.ndim):
            axes.append((torch.arange(spatial[a], device=device, dtype=torch.float32) + 0.0) * self.spacing[a])
        return torch.stack(torch.meshgrid(axes, indexing="ij"))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError("x: expected (B, in_channels, *spatial) with the model's channels and spatial axes")
        spatial: List[int] = list(x.shape[2:])
        pad: List[int] = []
        fits = True
        padded = False
        for a in range(self.ndim - 1, -1, -1):
            p = (-spatial[a]) % self.factor[a]
            pad += [0, p]
            fits = fits and p < spatial[a]
            padded = padded or p > 0
        if padded:
            x = F.pad(x, pad, mode="reflect" if fits else "replicate")
        feats = self.down(x)
        y = torch.zeros([feats.shape[0], self.width] + list(feats.shape[2:]), dtype=feats.dtype, device=feats.device)
        for _ in range(self.iterations):
            y = y + self.block(feats, y)
        out = self.up(F.leaky_relu(y, self.negative_slope))
        # The centred window of the un-padded transposed conv, cropped to the input (RDCNet._head).
        for a in range(self.ndim):
            start = (self.k_out[a] - self.factor[a]) // 2
            out = out.narrow(2 + a, start, spatial[a])
        if self.relative:  # offsets only: they do not depend on where a tile lies in the image
            return out[:, : self.ndim], torch.softmax(out[:, self.ndim:], dim=1)
        coords = self.coordinates(spatial, x.device).to(out.dtype)
        embeddings = out[:, : self.ndim] + coords
        probabilities = torch.softmax(out[:, self.ndim:], dim=1)
        return embeddings, probabilities
