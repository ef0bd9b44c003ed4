"""Edge-weighted binary cross entropy of U-SE-ResNet (CTC 2021, MU-Ra-US): per-pixel BCE weighted by w^p,
with w the edge-distance weight and p = (epoch / 50)^5, uniform at the start and edge-focused late."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses.base import LossOutput, SegmentationLoss, weighted_mean
from celltune.trainables.losses.loss_registry import register_loss


def edge_power(epoch: float, epoch_scale: float = 50.0, exponent: float = 5.0) -> float:
    """p = (epoch / epoch_scale) ** exponent, the exponent applied to the edge weights at ``epoch``.

    Raises:
        UserInputError: negative or non-finite epoch.
    """
    try:
        value = float(epoch)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserInputError(f"epoch={epoch!r}: must be a finite number >= 0")
    return (value / epoch_scale) ** exponent


@register_loss("edge_bce", target_kind="mask_marker")
class EdgeWeightedBCE(SegmentationLoss):
    """sum(BCE * w^p) / sum(w^p) over all channels and (valid) pixels, p = (epoch / epoch_scale)^exponent.

    At epoch 0 (p = 0) every pixel weighs 1 (0^0 = 1), so the loss is the plain mean BCE; pixels at the
    largest edge distance (w = 0) drop out as soon as p > 0. Weight maps come from
    :func:`~celltune.trainables.losses.edge_weights.edge_distance_weights`.

    Args:
        epoch_scale: epoch at which p = 1 (50 in U-SE-ResNet).
        exponent: power of epoch / epoch_scale (5 in U-SE-ResNet).
        channel_names: names of the output channels for the per-channel terms.
        margin: pixels cropped off each side before the loss.

    Inputs: logits ``(B, K, H, W)``, target ``(B, K, H, W)`` 0/1, weight ``(B, 1 or K, H, W)`` in [0, 1],
    epoch (the current, possibly fractional, epoch).
    Terms: ``{"bce_<channel name>": ...}`` per channel, each normalized by its own summed weights.
    """

    needs_weight = True
    needs_epoch = True

    def __init__(
        self,
        *,
        epoch_scale: float = 50.0,
        exponent: float = 5.0,
        channel_names: Sequence[str] = ("mask", "marker"),
        margin: int = 0,
    ) -> None:
        super().__init__(margin=margin)
        for option, value in (("epoch_scale", epoch_scale), ("exponent", exponent)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise UserInputError(f"loss {self.name!r}: {option}={value!r} must be a finite number > 0")
        names = tuple(channel_names) if not isinstance(channel_names, str) else ()
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise UserInputError(f"loss {self.name!r}: channel_names={channel_names!r} must be distinct strings")
        self.epoch_scale = float(epoch_scale)
        self.exponent = float(exponent)
        self.channel_names = names

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        if weight is None or epoch is None:
            raise UserInputError(f"loss {self.name!r} needs a weight map and the epoch")
        channels = logits.shape[1]
        if channels != len(self.channel_names):
            raise UserInputError(
                f"loss {self.name!r}: logits have {channels} channels but channel_names={self.channel_names}"
            )
        if tuple(target.shape) != tuple(logits.shape):
            raise UserInputError(
                f"loss {self.name!r}: target shape {tuple(target.shape)} != logits shape {tuple(logits.shape)}"
            )
        if (
            weight.ndim != 4
            or weight.shape[1] not in (1, channels)
            or weight.shape[2:] != logits.shape[2:]
            or weight.shape[0] != logits.shape[0]
        ):
            raise UserInputError(
                f"loss {self.name!r}: weight shape {tuple(weight.shape)} must be (B, 1 or {channels}, H, W) "
                f"for logits {tuple(logits.shape)}"
            )
        power = edge_power(epoch, self.epoch_scale, self.exponent)
        focus = weight.float().pow(power).expand_as(logits)
        if valid is not None:
            focus = focus * valid.unsqueeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        terms = {f"bce_{name}": weighted_mean(bce[:, c], focus[:, c]) for c, name in enumerate(self.channel_names)}
        return LossOutput(total=weighted_mean(bce, focus), terms=terms)

    def extra_repr(self) -> str:
        return f"epoch_scale={self.epoch_scale}, exponent={self.exponent}, channels={self.channel_names}, " + (
            f"margin={self.margin}"
        )
