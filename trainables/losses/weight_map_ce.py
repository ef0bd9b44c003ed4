"""U-Net weight-map cross entropy (Ronneberger et al., MICCAI 2015): CE weighted per pixel by a precomputed
map (class balance + emphasis on thin gaps between touching cells)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses.base import LossOutput, SegmentationLoss, weighted_mean
from celltune.trainables.losses.loss_registry import register_loss


@register_loss("weight_map_ce", target_kind="binary")
class WeightMapCrossEntropy(SegmentationLoss):
    """sum(w * CE) / sum(w) over (valid) pixels.

    Normalized by the summed weights rather than the pixel count, so the loss scale (and the effective
    learning rate) does not depend on the weight map's magnitude (e.g. w0 = 10 vs 5) or on the crop size;
    this is the same normalization as the class-weighted ``"ce"`` loss.

    Args:
        margin: pixels cropped off each side before the loss.

    Inputs: logits ``(B, C, H, W)`` (C = 2 for foreground/background), target ``(B, H, W)`` integer class ids,
    weight ``(B, H, W)`` or ``(B, 1, H, W)`` non-negative float.
    Terms: ``{"ce": ...}``.
    """

    needs_weight = True

    def __init__(self, *, margin: int = 0) -> None:
        super().__init__(margin=margin)

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        if weight is None:
            raise UserInputError(f"loss {self.name!r} needs a per-pixel weight map")
        self._check_class_target(logits, target)
        if weight.ndim == 4 and weight.shape[1] == 1:
            weight = weight[:, 0]
        if weight.shape != target.shape:
            raise UserInputError(
                f"loss {self.name!r}: weight shape {tuple(weight.shape)} does not match target {tuple(target.shape)}"
            )
        weight = weight.float()
        if valid is not None:
            weight = weight * valid
        ce = weighted_mean(F.cross_entropy(logits, target.long(), reduction="none"), weight)
        return LossOutput(total=ce, terms={"ce": ce})
