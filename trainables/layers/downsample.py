"""2x down-sampling for U-Net encoders: max pooling or a strided 3x3 convolution."""

from __future__ import annotations

from typing import Literal

from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.layers.conv import ConvNormAct
from celltune.trainables.layers.norm import NormKind

DownsampleKind = Literal["maxpool", "convstride"]
DOWNSAMPLE_KINDS: tuple[str, ...] = ("maxpool", "convstride")


def make_downsample(kind: DownsampleKind, channels: int, *, norm: NormKind) -> nn.Module:
    """Halve H and W of a (B, C, H, W) map, keeping C.

    Args:
        kind: "maxpool" (2x2 max pooling, the original U-Net) or "convstride" (3x3 conv with stride 2, then
            norm and ReLU, a learned down-sampling as in XB-Net).
        channels: C.
        norm: norm after the strided conv.

    Raises:
        UserInputError: unknown `kind`.
    """
    if kind == "maxpool":
        return nn.MaxPool2d(2)
    if kind == "convstride":
        return ConvNormAct(channels, channels, 3, stride=2, norm=norm)
    raise UserInputError(f"down={kind!r} is not supported; choose one of {', '.join(DOWNSAMPLE_KINDS)}")
