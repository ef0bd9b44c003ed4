"""Convolution + normalization + ReLU, the building brick of every architecture here.

Convolutions use "same" padding (k // 2 * dilation), so a stride-1 layer keeps the spatial size. The padding is
computed in one place (`same_padding`) so a valid-convolution variant can be added as an option later.
"""

from __future__ import annotations

from torch import nn

from celltune.trainables.layers.norm import NormKind, make_norm


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the size of an odd-kernel, stride-1 convolution."""
    return kernel_size // 2 * dilation


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias, the norm supplies it) -> norm -> optional ReLU.

    Args:
        in_channels: channels of the (B, C_in, H, W) input.
        out_channels: channels of the output.
        kernel_size: odd kernel size (default 3).
        stride: 2 halves H and W (needs even H and W).
        dilation: atrous rate.
        norm: "batch" or "group".
        act: append a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: NormKind = "batch",
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=same_padding(kernel_size, dilation),
                dilation=dilation,
                bias=False,
            ),
            make_norm(norm, out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct layers, the U-Net stage block (Ronneberger et al. 2015, with a norm added).

    Args:
        in_channels: channels of the (B, C_in, H, W) input.
        out_channels: channels of both convolutions' outputs.
        norm: "batch" or "group".
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind = "batch") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, norm=norm),
        )


class EntryFlow(nn.Sequential):
    """XB-Net's entry flow: Conv7x7 -> norm -> ReLU -> Conv3x3 -> norm -> ReLU at full resolution.

    A large first kernel gives the first skip connection a wider receptive field than a 3x3 pair
    (Guo et al., CTC 2021).
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind = "group") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 7, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, norm=norm),
        )
