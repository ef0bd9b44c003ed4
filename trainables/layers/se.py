"""Squeeze-and-excitation (Hu et al., CVPR 2018)."""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """Rescale each channel of a (B, C, H, W) map by a gate computed from its global average.

    The two fully connected layers are 1x1 convolutions with bias named `fc1` and `fc2`, the layout of the
    common public SE-ResNet checkpoints (`layerX.Y.se.fc1.weight` of shape (C / r, C, 1, 1)), so such
    weights load unchanged.

    Args:
        channels: C.
        reduction: r, the hidden width is max(1, C // r) (16 in SE-ResNet).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
