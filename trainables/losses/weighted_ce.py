"""Class-weighted cross entropy over the tertiary classes (XB-Net: background 1, boundary 10, cell 5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses.base import LossOutput, SegmentationLoss, check_class_weights, weighted_mean
from celltune.trainables.losses.loss_registry import register_loss

DEFAULT_CLASS_WEIGHTS = (1.0, 10.0, 5.0)


def class_weighted_ce(logits: Tensor, target: Tensor, class_weights: Tensor, valid: Tensor | None) -> Tensor:
    """sum(w[y] * CE) / sum(w[y]) over valid pixels: PyTorch's weighted ``reduction="mean"``, plus a mask."""
    per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    weights = class_weights.to(logits.device)[target.long()]
    if valid is not None:
        weights = weights * valid
    return weighted_mean(per_pixel, weights)


@register_loss("ce", target_kind="tertiary")
class WeightedCrossEntropy(SegmentationLoss):
    """Cross entropy with one weight per class, normalized by the summed weights of the counted pixels.

    The normalization equals ``F.cross_entropy(weight=..., reduction="mean")``, so the loss scale does not
    depend on crop size or on the class balance of a batch.

    Args:
        class_weights: one weight per class, default (1, 10, 5) for (background, boundary, cell).
        margin: pixels cropped off each side before the loss (the reflection padding of training crops).

    Inputs: logits ``(B, C, H, W)``, target ``(B, H, W)`` integer class ids.
    Terms: ``{"ce": ...}``.
    """

    def __init__(self, *, class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS, margin: int = 0) -> None:
        super().__init__(margin=margin)
        values = check_class_weights(self.name, class_weights)
        self.register_buffer("class_weights", torch.tensor(values, dtype=torch.float32), persistent=False)

    def _check(self, logits: Tensor, target: Tensor) -> None:
        self._check_class_target(logits, target)
        if logits.shape[1] != self.class_weights.numel():
            raise UserInputError(
                f"loss {self.name!r}: logits have {logits.shape[1]} classes but class_weights has "
                f"{self.class_weights.numel()} values"
            )

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        self._check(logits, target)
        ce = class_weighted_ce(logits, target, self.class_weights, valid)
        return LossOutput(total=ce, terms={"ce": ce})

    def extra_repr(self) -> str:
        return f"class_weights={tuple(self.class_weights.tolist())}, margin={self.margin}"
