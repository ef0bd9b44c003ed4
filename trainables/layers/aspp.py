"""Atrous spatial pyramid pooling with an identity skip, as in XB-Net's bottleneck (Guo et al., CTC 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from celltune.trainables.layers.conv import ConvNormAct
from celltune.trainables.layers.norm import NormKind, make_norm


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> norm -> ReLU, broadcast back to the input size.

    With `norm="batch"` the pooled map is (B, C, 1, 1), and BatchNorm cannot normalize a single value per
    channel when training on batches of one; that branch then uses a biased 1x1 conv and no norm instead.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        if norm == "batch":
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
            self.norm: nn.Module = nn.Identity()
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.norm = make_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.act(self.norm(self.conv(self.pool(x))))
        # Upsampling a 1x1 map is a broadcast, whatever the interpolation mode.
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """ASPP on a (B, C, H, W) map, returning (B, C, H, W).

    Branches of `branch_channels` each: a 1x1 conv, one 3x3 conv per dilation rate, and image pooling, each
    followed by norm and ReLU; their concatenation is projected back to C by a 1x1 conv and a norm, added to
    the input, then passed through a ReLU.

    Args:
        channels: input and output channels C (512 in XB-Net).
        branch_channels: channels per branch (256 in XB-Net).
        dilations: atrous rates of the 3x3 branches (6, 12, 18 as in DeepLab v3 and XB-Net).
        norm: "batch" or "group".
    """

    def __init__(
        self,
        channels: int,
        branch_channels: int,
        *,
        dilations: Sequence[int] = (6, 12, 18),
        norm: NormKind = "group",
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(channels, branch_channels, 1, norm=norm)]
        branches += [ConvNormAct(channels, branch_channels, 3, dilation=d, norm=norm) for d in dilations]
        branches.append(ImagePooling(channels, branch_channels, norm=norm))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(branch_channels * len(branches), channels, 1, norm=norm, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        features = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.act(self.project(features) + x)
