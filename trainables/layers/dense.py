"""Residual dense block (ESRGAN's RDB as used by XB-Net, Guo et al., CTC 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.layers.conv import ConvNormAct
from celltune.trainables.layers.norm import NormKind


class ResidualDenseBlock(nn.Module):
    """Densely connected 3x3 layers fused back to the input width, with a scaled residual.

    Layer i (0-based) sees the concatenation of the input and the i growth outputs so far
    (C + i * g channels) and outputs g = C / 4 channels through Conv3x3-norm-ReLU. A fifth 3x3 conv with a
    norm and no activation fuses the C + 4g channels back to C; the output is `scale * fused + x`.

    Args:
        channels: C, channels of the (B, C, H, W) input and output; a multiple of `num_layers`.
        num_layers: growth layers (4 in XB-Net).
        scale: residual scaling (0.2, keeps early training stable).
        norm: "batch" or "group".

    Raises:
        UserInputError: `channels` not divisible by `num_layers`.
    """

    def __init__(self, channels: int, *, num_layers: int = 4, scale: float = 0.2, norm: NormKind = "group") -> None:
        super().__init__()
        if channels % num_layers:
            raise UserInputError(f"residual dense block: channels={channels} is not a multiple of {num_layers}")
        growth = channels // num_layers
        self.scale = scale
        self.layers = nn.ModuleList(ConvNormAct(channels + i * growth, growth, 3, norm=norm) for i in range(num_layers))
        self.fuse = ConvNormAct(channels + num_layers * growth, channels, 3, norm=norm, act=False)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return self.scale * self.fuse(torch.cat(features, dim=1)) + x
