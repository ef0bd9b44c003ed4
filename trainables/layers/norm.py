"""Normalization layers chosen by name, so architectures can switch between BatchNorm and GroupNorm."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from celltune.data_prep.common import UserInputError

NormKind = Literal["batch", "group"]
NORM_KINDS: tuple[str, ...] = ("batch", "group")
GROUP_NORM_GROUPS = 8


def check_norm(norm: str) -> None:
    """Raise `UserInputError` unless `norm` is one of `NORM_KINDS`."""
    if norm not in NORM_KINDS:
        raise UserInputError(f"norm={norm!r} is not supported; choose one of {', '.join(NORM_KINDS)}")


def group_count(channels: int, groups: int = GROUP_NORM_GROUPS) -> int:
    """Groups for a GroupNorm on `channels`: `groups`, or the largest divisor of both for small test widths.

    Every layer of the published widths has a multiple of 8 channels, so this only changes anything for the
    narrow networks used in tests (e.g. a 4-channel PixelShuffle output at width 8 gets 4 groups).
    """
    return math.gcd(channels, groups)


def make_norm(norm: NormKind, channels: int) -> nn.Module:
    """A 2D normalization layer.

    Args:
        norm: "batch" (BatchNorm2d) or "group" (GroupNorm with 8 groups, see `group_count`).
        channels: number of channels C of the (B, C, H, W) input.

    Raises:
        UserInputError: unknown `norm`.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(group_count(channels), channels)
