"""The generalized U-Net of Guo et al. (XB-Net paper, CTC 2021, Fig. 1 and Sec. 4.4).

A U-Net whose parts can each be swapped: an optional entry flow, the down-sampling (max pooling or strided conv),
the up-sampling (transposed conv or pixel shuffle), an optional ASPP at the bottleneck, BatchNorm or GroupNorm,
and 5 or 6 stages. The defaults give the original U-Net (Ronneberger et al., MICCAI 2015) with BatchNorm and
"same" padding; the registered variant `unet_xb` makes every XB-Net choice except the residual dense blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from celltune.trainables.layers.aspp import ASPP
from celltune.trainables.layers.conv import DoubleConv, EntryFlow
from celltune.trainables.layers.downsample import DOWNSAMPLE_KINDS, DownsampleKind, make_downsample
from celltune.trainables.layers.norm import NORM_KINDS, NormKind
from celltune.trainables.layers.padding import check_size_multiple
from celltune.trainables.layers.upsample import UPSAMPLE_KINDS, UpsampleKind, make_upsample
from celltune.trainables.models._options import check_bool, check_choice, check_int
from celltune.trainables.registry import OUT_CHANNELS, TargetKind, register_model, register_variant

STAGES = (5, 6)


class DecoderStage(nn.Module):
    """Up-sample the deeper map, concatenate the skip, then a DoubleConv down to `out_channels`."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, *, up: UpsampleKind, norm: NormKind
    ) -> None:
        super().__init__()
        self.up = make_upsample(up, in_channels, out_channels, norm=norm)
        self.block = DoubleConv(self.up.out_channels + skip_channels, out_channels, norm=norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Generalized U-Net mapping (B, in_channels, H, W) images to (B, out_channels, H, W) logits.

    Stage i (0-based) has `width * 2**i` channels; stage `stages - 1` is the bottleneck, so there are
    `stages - 1` down-samplings and H, W must be multiples of `size_multiple = 2 ** (stages - 1)`.

    Args:
        in_channels: image channels.
        out_channels: logit channels.
        stages: 5 (four down-samplings, the original) or 6.
        width: channels of the first stage (64 in the original U-Net, 32 in XB-Net); a multiple of 8.
        norm: "batch" or "group" (GroupNorm with 8 groups).
        down: "maxpool" or "convstride" (3x3 conv, stride 2).
        up: "upconv" (2x2 transposed conv to the skip's width) or "pixelshuffle" (to a quarter of the deeper
            map's channels, parameter-free).
        aspp: ASPP with an identity skip after the bottleneck block (branches of half the bottleneck width).
        entry_flow: XB-Net's Conv7x7-Conv3x3 entry flow before the first stage's block.

    Raises:
        UserInputError: an option outside the values above.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 3,
        stages: int = 5,
        width: int = 64,
        norm: NormKind = "batch",
        down: DownsampleKind = "maxpool",
        up: UpsampleKind = "upconv",
        aspp: bool = False,
        entry_flow: bool = False,
    ) -> None:
        super().__init__()
        check_choice("unet", "stages", stages, STAGES)
        check_int("unet", "width", width, multiple_of=8)
        check_choice("unet", "norm", norm, NORM_KINDS)
        check_choice("unet", "down", down, DOWNSAMPLE_KINDS)
        check_choice("unet", "up", up, UPSAMPLE_KINDS)
        check_bool("unet", "aspp", aspp)
        check_bool("unet", "entry_flow", entry_flow)
        self.size_multiple = 2 ** (int(stages) - 1)
        widths = [int(width) * 2**i for i in range(int(stages))]

        self.entry = EntryFlow(in_channels, widths[0], norm=norm) if entry_flow else nn.Identity()
        first_in = widths[0] if entry_flow else in_channels
        encoder: list[nn.Module] = [DoubleConv(first_in, widths[0], norm=norm)]
        for prev, cur in zip(widths[:-1], widths[1:], strict=True):
            encoder.append(nn.Sequential(make_downsample(down, prev, norm=norm), DoubleConv(prev, cur, norm=norm)))
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck = ASPP(widths[-1], widths[-1] // 2, norm=norm) if aspp else nn.Identity()
        self.decoder = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], widths[i], up=up, norm=norm)
            for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_size_multiple(x, self.size_multiple, "unet")
        x = self.entry(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


def _size_multiple(options: Mapping[str, Any]) -> int:
    check_choice("unet", "stages", options["stages"], STAGES)
    return 2 ** (int(options["stages"]) - 1)


@register_model(size_multiple=_size_multiple)
def unet(
    *,
    stages: int = 5,
    width: int = 64,
    norm: NormKind = "batch",
    down: DownsampleKind = "maxpool",
    up: UpsampleKind = "upconv",
    aspp: bool = False,
    entry_flow: bool = False,
    target_kind: TargetKind = "tertiary",
) -> UNet:
    """Generalized U-Net; defaults give the original U-Net with BatchNorm. See `UNet` for the options."""
    return UNet(
        in_channels=1,
        out_channels=OUT_CHANNELS[target_kind],
        stages=stages,
        width=width,
        norm=norm,
        down=down,
        up=up,
        aspp=aspp,
        entry_flow=entry_flow,
    )


# XB-Net's choices on plain U-Net blocks: isolates what the residual dense blocks add over `xbnet`.
register_variant(
    "unet_xb", "unet", width=32, norm="group", down="convstride", up="pixelshuffle", aspp=True, entry_flow=True
)
