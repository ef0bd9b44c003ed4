"""XB-Net (Guo, Wang, Allebach, Solorio; Cell Tracking Challenge 2021), as published.

A U-Net with an entry flow, residual dense blocks in every encoder and decoder stage, learned strided-conv
down-sampling, an ASPP bottleneck with an identity skip, pixel-shuffle up-sampling with 1x1 bridges on the skips,
GroupNorm (8 groups) everywhere and no conv biases except the head. At the default width of 32 it has
11,375,683 parameters and about 78 GMac for one 512x512 image, the published figures.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from celltune.trainables.architectures import OUT_CHANNELS, TargetKindName, register_model
from celltune.trainables.layers.aspp import ASPP
from celltune.trainables.layers.conv import ConvNormAct, EntryFlow
from celltune.trainables.layers.dense import ResidualDenseBlock
from celltune.trainables.layers.padding import check_size_multiple
from celltune.trainables.layers.upsample import PixelShuffleUp
from celltune.trainables.models._options import check_int

SIZE_MULTIPLE = 16  # four down-samplings


class EncoderStage(nn.Sequential):
    """Residual dense block on C channels, then ReLU -> Conv3x3 stride 2 (C -> 2C) -> GN -> ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            ResidualDenseBlock(channels, norm="group"),
            nn.ReLU(inplace=True),
            ConvNormAct(channels, 2 * channels, 3, stride=2, norm="group"),
        )


class DecoderStage(nn.Module):
    """(B, 2C, H, W) deeper map and (B, C, 2H, 2W) skip -> (B, C, 2H, 2W).

    PixelShuffle(2) -> GN -> ReLU turns the 2C channels into C / 2; a 1x1 bridge (C -> C / 2, GN, ReLU) thins the
    skip; the concatenation (C channels) goes through a residual dense block and a ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = PixelShuffleUp(in_channels, norm="group")
        self.bridge = ConvNormAct(out_channels, out_channels // 2, 1, norm="group")
        self.block = ResidualDenseBlock(self.up.out_channels + out_channels // 2, norm="group")
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.act(self.block(torch.cat([self.up(x), self.bridge(skip)], dim=1)))


class XBNet(nn.Module):
    """XB-Net mapping (B, in_channels, H, W) images to (B, out_channels, H, W) logits, H and W multiples of 16.

    Channels `width * (1, 2, 4, 8, 16)` (32 ... 512 as published); skips come from the entry flow and the first
    three encoder stages; the ASPP branches have `8 * width` channels.

    Args:
        in_channels: image channels.
        out_channels: logit channels (3: background, boundary, cell).
        width: channels of the entry flow, a multiple of 8 (32 as published; smaller for tests and CPU runs).

    Raises:
        UserInputError: `width` not a positive multiple of 8.
    """

    size_multiple = SIZE_MULTIPLE

    def __init__(self, *, in_channels: int = 1, out_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        check_int("xbnet", "width", width, multiple_of=8)
        widths = [int(width) * 2**i for i in range(5)]
        self.entry = EntryFlow(in_channels, widths[0], norm="group")
        self.encoder = nn.ModuleList(EncoderStage(c) for c in widths[:-1])
        self.bottleneck = ASPP(widths[-1], widths[-1] // 2, dilations=(6, 12, 18), norm="group")
        self.decoder = nn.ModuleList(DecoderStage(widths[i + 1], widths[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], out_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        check_size_multiple(x, self.size_multiple, "xbnet")
        x = self.entry(x)
        skips = [x]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        x = self.bottleneck(skips.pop())
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


@register_model(size_multiple=SIZE_MULTIPLE)
def xbnet(*, width: int = 32, target_kind: TargetKindName = "tertiary") -> XBNet:
    """XB-Net as published (width 32, tertiary head); see `XBNet`. ``target_kind="mask_marker"`` swaps the head for
    U-SE-ResNet's two sigmoid channels (cell mask and marker, separated by watershed)."""
    return XBNet(in_channels=1, out_channels=OUT_CHANNELS[target_kind], width=width)
