"""The generalized U-Net of Guo et al. (XB-Net paper, CTC 2021, Fig. 1 and Sec. 4.4).

A U-Net whose parts can each be swapped: an optional entry flow, the down-sampling (max pooling or strided conv),
the up-sampling (transposed conv or pixel shuffle), an optional ASPP at the bottleneck, BatchNorm or GroupNorm,
and 5 or 6 stages. The defaults give the original U-Net (Ronneberger et al., MICCAI 2015) with BatchNorm and
"same" padding; the registered variant `unet_xb` makes every XB-Net choice except the residual dense blocks.

`padding="valid"` is the original U-Net exactly as published: unpadded 3x3 convolutions, so the output is smaller
than the input (572 -> 388 px with 5 stages) and each skip is center-cropped to the up-sampled map ("copy and
crop"). Every output pixel then sees its full receptive field, and frames of any size are predicted by
overlap-tile inference (`celltune.trainables.inference.predict_probabilities` does it for such models).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import OUT_CHANNELS, TargetKindName, register_model, register_variant
from celltune.trainables.layers.aspp import ASPP
from celltune.trainables.layers.conv import DoubleConv, EntryFlow
from celltune.trainables.layers.downsample import DOWNSAMPLE_KINDS, DownsampleKind, make_downsample
from celltune.trainables.layers.norm import NORM_KINDS, NormKind, make_norm
from celltune.trainables.layers.padding import check_size_multiple
from celltune.trainables.layers.upsample import UPSAMPLE_KINDS, UpsampleKind, make_upsample
from celltune.trainables.models._options import check_bool, check_choice, check_int

STAGES = (5, 6)
Padding = Literal["same", "valid"]
PADDINGS: tuple[str, ...] = ("same", "valid")


class ValidDoubleConv(nn.Sequential):
    """DoubleConv with unpadded 3x3 convolutions (Ronneberger et al. 2015): each drops one pixel per side.

    Same layer layout and parameter names as `DoubleConv`, only without the zero padding.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind = "batch") -> None:
        super().__init__(*(
            nn.Sequential(nn.Conv2d(c_in, out_channels, 3, bias=False), make_norm(norm, out_channels), nn.ReLU(True))
            for c_in in (in_channels, out_channels)
        ))


def _block(in_channels: int, out_channels: int, *, norm: NormKind, padding: Padding) -> nn.Module:
    block = ValidDoubleConv if padding == "valid" else DoubleConv
    return block(in_channels, out_channels, norm=norm)


def _crop_like(skip: Tensor, reference: Tensor) -> Tensor:
    """Center-crop `skip` to the spatial size of `reference` (a no-op for "same" padding)."""
    dy = (skip.shape[-2] - reference.shape[-2]) // 2
    dx = (skip.shape[-1] - reference.shape[-1]) // 2
    if dy == 0 and dx == 0:
        return skip
    return skip[..., dy : dy + reference.shape[-2], dx : dx + reference.shape[-1]]


def _valid_output_side(side: int, downsamplings: int) -> int | None:
    """Output side of the valid-padding U-Net for an input side, or None where a 2x2 pooling meets an odd side or
    a map vanishes. Each DoubleConv drops 4 px, pooling halves, up-sampling doubles."""
    size = side - 4
    for _ in range(downsamplings):
        if size < 1 or size % 2:
            return None
        size = size // 2 - 4
    for _ in range(downsamplings):
        if size < 1:
            return None
        size = 2 * size - 4
    return size if size >= 1 else None


@cache
def valid_geometry(stages: int) -> tuple[int, int]:
    """`(min_input_size, output_crop)` of the valid-padding U-Net: its smallest input side and the pixels it loses
    per side. Valid input sides are `min_input_size + k * 2 ** (stages - 1)`; 5 stages give (188, 92), so the
    paper's 572 px tile gives 388 px."""
    downsamplings = int(stages) - 1
    side = 1
    while (output := _valid_output_side(side, downsamplings)) is None:
        side += 1
    return side, (side - output) // 2


class DecoderStage(nn.Module):
    """Up-sample the deeper map, concatenate the (center-cropped) skip, then a DoubleConv down to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        *,
        up: UpsampleKind,
        norm: NormKind,
        padding: Padding = "same",
    ) -> None:
        super().__init__()
        self.up = make_upsample(up, in_channels, out_channels, norm=norm)
        self.block = _block(self.up.out_channels + skip_channels, out_channels, norm=norm, padding=padding)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        return self.block(torch.cat([x, _crop_like(skip, x)], dim=1))


class UNet(nn.Module):
    """Generalized U-Net mapping (B, in_channels, H, W) images to (B, out_channels, H, W) logits.

    Stage i (0-based) has `width * 2**i` channels; stage `stages - 1` is the bottleneck, so there are
    `stages - 1` down-samplings and H, W must be multiples of `size_multiple = 2 ** (stages - 1)`.
    With `padding="valid"` the output is `output_crop` pixels smaller on each side and H, W must be
    `min_input_size + k * size_multiple` (see `valid_geometry`).

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
        padding: "same" (zero padding, output size = input size) or "valid" (the original U-Net's unpadded
            convolutions; needs down="maxpool", no ASPP and no entry flow).

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
        padding: Padding = "same",
    ) -> None:
        super().__init__()
        check_choice("unet", "stages", stages, STAGES)
        check_int("unet", "width", width, multiple_of=8)
        check_choice("unet", "norm", norm, NORM_KINDS)
        check_choice("unet", "down", down, DOWNSAMPLE_KINDS)
        check_choice("unet", "up", up, UPSAMPLE_KINDS)
        check_bool("unet", "aspp", aspp)
        check_bool("unet", "entry_flow", entry_flow)
        check_valid_padding(padding, down=down, aspp=aspp, entry_flow=entry_flow)
        self.size_multiple = 2 ** (int(stages) - 1)
        self.padding = padding
        geometry = valid_geometry(stages) if padding == "valid" else (self.size_multiple, 0)
        self.min_input_size, self.output_crop = geometry
        widths = [int(width) * 2**i for i in range(int(stages))]

        self.entry = EntryFlow(in_channels, widths[0], norm=norm) if entry_flow else nn.Identity()
        first_in = widths[0] if entry_flow else in_channels
        encoder: list[nn.Module] = [_block(first_in, widths[0], norm=norm, padding=padding)]
        for prev, cur in zip(widths[:-1], widths[1:], strict=True):
            encoder.append(
                nn.Sequential(make_downsample(down, prev, norm=norm), _block(prev, cur, norm=norm, padding=padding))
            )
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck = ASPP(widths[-1], widths[-1] // 2, norm=norm) if aspp else nn.Identity()
        self.decoder = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], widths[i], up=up, norm=norm, padding=padding)
            for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "valid":
            _check_valid_input(x, self.min_input_size, self.size_multiple)
        else:
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


def check_valid_padding(padding: Any, *, down: Any, aspp: Any, entry_flow: Any) -> None:
    """Raise unless `padding` is known and, for "valid", the other options are the original U-Net's."""
    check_choice("unet", "padding", padding, PADDINGS)
    if padding == "valid" and (down != "maxpool" or aspp or entry_flow):
        raise UserInputError(
            f"unet: padding='valid' (the original U-Net) needs down='maxpool', aspp=false and entry_flow=false; "
            f"got down={down!r}, aspp={aspp!r}, entry_flow={entry_flow!r}"
        )


def _check_valid_input(x: Tensor, min_input_size: int, multiple: int) -> None:
    height, width = x.shape[-2:]
    if any(side < min_input_size or (side - min_input_size) % multiple for side in (height, width)):
        raise UserInputError(
            f"unet (padding='valid'): input of {height}x{width} pixels does not fit; each side must be "
            f"{min_input_size} + k * {multiple} (k >= 0); predict whole frames with "
            "celltune.trainables.inference.predict_probabilities (overlap-tile)"
        )


def _size_multiple(options: Mapping[str, Any]) -> int:
    check_choice("unet", "stages", options["stages"], STAGES)
    return 2 ** (int(options["stages"]) - 1)


def _valid_geometry(options: Mapping[str, Any]) -> tuple[int, int]:
    """(min_input_size, output_crop) for the resolved options; same padding gives (size multiple, 0)."""
    multiple = _size_multiple(options)
    check_valid_padding(options["padding"], down=options["down"], aspp=options["aspp"],
                        entry_flow=options["entry_flow"])
    return valid_geometry(options["stages"]) if options["padding"] == "valid" else (multiple, 0)


@register_model(
    size_multiple=_size_multiple,
    output_crop=lambda options: _valid_geometry(options)[1],
    min_input_size=lambda options: _valid_geometry(options)[0],
)
def unet(
    *,
    stages: int = 5,
    width: int = 64,
    norm: NormKind = "batch",
    down: DownsampleKind = "maxpool",
    up: UpsampleKind = "upconv",
    aspp: bool = False,
    entry_flow: bool = False,
    padding: Padding = "same",
    target_kind: TargetKindName = "tertiary",
) -> UNet:
    """Generalized U-Net; defaults give the original U-Net with BatchNorm and "same" padding, `padding="valid"`
    the published unpadded one. See `UNet` for the options."""
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
        padding=padding,
    )


# XB-Net's choices on plain U-Net blocks: isolates what the residual dense blocks add over `xbnet`.
register_variant(
    "unet_xb", "unet", width=32, norm="group", down="convstride", up="pixelshuffle", aspp=True, entry_flow=True
)
