"""2x up-sampling for U-Net decoders: a learned transposed convolution or a parameter-free PixelShuffle."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.layers.norm import NormKind, make_norm

UpsampleKind = Literal["upconv", "pixelshuffle"]
UPSAMPLE_KINDS: tuple[str, ...] = ("upconv", "pixelshuffle")


class UpConv(nn.ConvTranspose2d):
    """2x2 transposed convolution with stride 2 (the original U-Net's up-convolution, with bias, no norm)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2, bias=True)


class PixelShuffleUp(nn.Module):
    """PixelShuffle(2) -> norm -> ReLU: (B, C, H, W) -> (B, C / 4, 2H, 2W), as in XB-Net's decoder.

    Rearranging channels into space costs no parameters; the norm and ReLU follow XB-Net.

    Raises:
        UserInputError: `in_channels` not a multiple of 4.
    """

    def __init__(self, in_channels: int, *, norm: NormKind = "group") -> None:
        super().__init__()
        if in_channels % 4:
            raise UserInputError(f"pixel-shuffle up-sampling: in_channels={in_channels} is not a multiple of 4")
        self.out_channels = in_channels // 4
        self.shuffle = nn.PixelShuffle(2)
        self.norm = make_norm(norm, self.out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.shuffle(x)))


def make_upsample(kind: UpsampleKind, in_channels: int, out_channels: int, *, norm: NormKind) -> nn.Module:
    """A 2x up-sampling module; read the channels it produces from its `out_channels` attribute.

    Args:
        kind: "upconv" (learned, gives `out_channels`) or "pixelshuffle" (gives in_channels / 4, ignores
            `out_channels`).
        in_channels: channels of the (B, C, H, W) input.
        out_channels: output channels of "upconv".
        norm: norm after the pixel shuffle.

    Raises:
        UserInputError: unknown `kind`.
    """
    if kind == "upconv":
        return UpConv(in_channels, out_channels)
    if kind == "pixelshuffle":
        return PixelShuffleUp(in_channels, norm=norm)
    raise UserInputError(f"up={kind!r} is not supported; choose one of {', '.join(UPSAMPLE_KINDS)}")
